"""``steplabel evaluate`` with the real vLLM engine and the embedded model, on 3 items.

The model is loaded once (one evaluation run for the module); rollouts are few and short so the
module stays under ~2 minutes on a small CPU machine.
"""

import json
from pathlib import Path

import pytest

from steplabel.pipelines.evaluate import read_rows, run_evaluation
from steplabel.pipelines.evaluate_spec import make_spec
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.engine

DATA = Path(__file__).parent / "data"
#: A correct solution, one with a planted wrong step, and one without a gold answer.
ITEM_IDS = ("arith-00", "arith-01", "arith-19")

MANIFEST = {
    "name": "evaluate-engine-test",
    "seed": 7,
    "source": {"kind": "jsonl", "path": "unused.jsonl"},  # evaluate reads --gold instead
    "models": {"policy": {"kind": "vllm", "model": "embedded", "dtype": "float32",
                          "max_model_len": 1024}},
    "monte_carlo": {"rollouts": 2, "sampling": {"temperature": 0.8, "max_tokens": 32}},
    "omegaprm": {"rollouts": 2, "sampling": {"temperature": 0.8, "max_tokens": 32}},
    "judge": {"response_prefix": "The earliest wrong paragraph is \\boxed{",
              "sampling": {"temperature": 0.0, "max_tokens": 4, "stop": ["}"]}},
    "runner": {"num_shards": 1, "max_in_flight": 8},
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate_engine")
    records = [r for r in json.loads((DATA / "processbench_arith20.json").read_text())
               if r["id"] in ITEM_IDS]
    gold = base / "arith3.json"
    gold.write_text(json.dumps(records))
    spec = make_spec(manifest_from_dict(MANIFEST), gold_files=[str(gold)],
                     annotators="mc,omegaprm,judge,consensus")
    out = str(base / "out")
    return spec, out, run_evaluation(spec, out_dir=out)


def test_evaluation_completes_with_the_embedded_model(evaluated):
    _, out, result = evaluated
    assert (Path(out) / "COMPLETED").exists()
    items = result.report["items"]
    assert (items["evaluated"], items["dead_letter"], items["without_gold_answer"]) == (3, 0, 1)
    rows = read_rows(out, "predictions")
    assert len(rows) == 3 * 4
    by_key = {(r["item_id"], r["annotator"]): r for r in rows}
    for item_id in ("arith-00", "arith-01"):
        mc = by_key[(item_id, "mc")]
        # at most k per given step but the last (labelled by its own answer), no resampling
        assert 0 < mc["cost"]["rollouts"] <= 2 * (mc["num_steps"] - 1)
        assert mc["model_id"] and mc["status"] in ("predicted", "unknown")
        details = json.loads(mc["details"])
        assert len(details["values"]) == mc["num_steps"]
    assert by_key[("arith-19", "mc")]["status"] == "skipped"
    assert by_key[("arith-19", "judge")]["cost"]["requests"] == 1
    # The forced verdict form stops at its closing brace (re-appended before parsing): a
    # reply that stopped there is never lost as cut off.
    for item_id in ITEM_IDS:
        judge = json.loads(by_key[(item_id, "judge")]["details"])
        for reply, finish, reason in zip(judge["replies"], judge["finish_reasons"],
                                         judge["parse_reasons"]):
            assert reason != "truncated" or finish == "length"
            if finish == "stop":
                assert reply.endswith("}")
    # OmegaPRM searches only the wrong solution (arith-01); the right one costs nothing
    assert by_key[("arith-00", "omegaprm")]["cost"]["rollouts"] == 0
    assert by_key[("arith-01", "omegaprm")]["cost"]["rollouts"] > 0


def test_report_has_every_figure_in_range(evaluated):
    _, _, result = evaluated
    for name, block in result.report["annotators"].items():
        (source,) = block["per_source"].values()
        for figure in ("error_acc", "correct_acc", "f1"):
            assert source[figure] is None or 0.0 <= source[figure] <= 100.0
            assert block["average"][figure] == source[figure]
    assert result.report["annotators"]["judge"]["cost"]["generated_tokens"] > 0
