"""``steplabel evaluate --annotators ...,critic``: the critic as a first-error predictor (the
first step its critiques call incorrect, voted over its samples), through the evaluate job."""

import json
import shutil

import pytest

from steplabel.annotators.critic import critic_version
from steplabel.pipelines.evaluate import read_rows, run_evaluation
from steplabel.pipelines.evaluate_spec import make_spec
from steplabel.pipelines.checkpoints import stage_checkpoint_counts
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import manifest_from_dict
from test_evaluate_job import ANSWERS, GOLD, MANIFEST

pytestmark = pytest.mark.pipeline

CRITIC = {"kind": "custom", "factory": "fakes:critic_engine"}


def spec_with_critic(critic: dict, annotators: str = "judge,critic"):
    data = {**MANIFEST, "source": {"kind": "jsonl", "path": "unused.jsonl"},
            "models": {**MANIFEST["models"], "critic": CRITIC},
            "critic": {"trust": "monte_carlo", "sampling": {"max_tokens": 64}, **critic}}
    return make_spec(manifest_from_dict(data), gold_files=list(GOLD), annotators=annotators,
                     answers_file=ANSWERS)


@pytest.fixture(scope="module")
def voted(tmp_path_factory):
    """Seven samples a solution (two truthful, one wrong, four unusable: fakes.CRITIC_SCRIPT),
    a quorum of a quarter of them: the truthful reading wins on every item."""
    spec = spec_with_critic({"samples": 7, "min_agreement": 0.25})
    out = str(tmp_path_factory.mktemp("critic-eval") / "out")
    return spec, out, run_evaluation(spec, out_dir=out)


def test_the_critic_is_scored_against_the_gold_labels(voted):
    _, out, result = voted
    rows = [r for r in read_rows(out, "predictions") if r["annotator"] == "critic"]
    assert len(rows) == 8  # every evaluated item
    for row in rows:
        assert row["status"] == "predicted" and row["reason"] == "ok"
        assert row["predicted_first_error"] == row["label"] and row["exact_match"]
        assert row["annotator_version"] == critic_version()
        assert row["model_id"] == "scripted-critic"
        details = json.loads(row["details"])
        assert details["parse_reasons"] == ["ok", "truncated", "missing_verdict",
                                            "contradiction", "ok", "ok",
                                            "two_verdicts_for_step"]
        assert details["agreement"] == pytest.approx(2 / 7)
        assert row["cost"]["requests"] == 1 and row["cost"]["rollouts"] == 7
    critic = result.report["annotators"]["critic"]
    assert json.dumps(critic)  # a block of its own in the report
    assert "judge" in result.report["annotators"]


def test_without_a_quorum_the_critic_is_unknown_not_wrong(tmp_path):
    spec = spec_with_critic({"samples": 7}, annotators="critic")  # strict majority of 7
    out = str(tmp_path / "out")
    run_evaluation(spec, out_dir=out)
    rows = read_rows(out, "predictions")
    assert {r["annotator"] for r in rows} == {"critic"}
    assert all(r["status"] == "unknown" and r["predicted_first_error"] is None
               and r["reason"] == "no_quorum" for r in rows)


def test_the_critic_stage_resumes(voted, tmp_path):
    spec, out, first = voted
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "COMPLETED").unlink()
    for shard in (copy / "predictions").glob("*.parquet"):
        shard.unlink()
    assert stage_checkpoint_counts(str(copy))["evaluate_critic"] == 8
    again = run_evaluation(spec, out_dir=str(copy))
    assert again.info["counters"].get("problems_resumed") == 8
    assert again.report["annotators"] == first.report["annotators"]


def test_the_critic_needs_its_section():
    data = {**MANIFEST, "source": {"kind": "jsonl", "path": "unused.jsonl"}}
    with pytest.raises(ConfigError, match="critic"):
        make_spec(manifest_from_dict(data), gold_files=list(GOLD), annotators="critic",
                  answers_file=ANSWERS)
    with pytest.raises(ConfigError, match="critic.trust"):
        manifest_from_dict({**data, "critic": {}})  # consensus is not enabled
