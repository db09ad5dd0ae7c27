"""``steplabel evaluate`` with the python_tests grader: code solutions with human first-error
labels, their tests as the gold, Monte Carlo and OmegaPRM grading rollouts in the sandbox.

The scripted code model (``tests/code_fakes.py``) completes a prefix with the rest of the
solution it belongs to, so each annotator's prediction is known in advance: a right solution
has no wrong step; ``firsterror``'s wrong helper (step 1) is the first step from which every
rollout fails; ``wrong``'s one-function program fails from the reasoning on (step 0: the
completer always writes the same wrong function after it).
"""

import json
from pathlib import Path

import pytest
import yaml

from code_fakes import TESTS, solution_text
from steplabel.annotators.evaluation.gold import parse_gold_record
from steplabel.annotators.evaluation.items import GOLD_MISSING, GOLD_OK, GOLD_UNPARSEABLE
from steplabel.annotators.splitting import get_splitter
from steplabel.pipelines.evaluate import read_rows, run_evaluation
from steplabel.pipelines.evaluate_spec import load_evaluation_manifest, make_spec
from steplabel.schemas.config import ConfigError

pytestmark = pytest.mark.pipeline

SPLITTER = get_splitter("python_statements")

MANIFEST = {
    "name": "scripted-code-eval",
    "seed": 5,
    "models": {"policy": {"kind": "custom", "factory": "code_fakes:code_engine"}},
    "grader": {"name": "python_tests", "timeout_s": 1, "memory_mb": 256},
    "monte_carlo": {"rollouts": 2},
    "omegaprm": {"rollouts": 2},
    "judge": {},
    "runner": {"num_shards": 1, "max_in_flight": 4},
}


def item(kind: str, label: int, **extra) -> dict:
    steps = [s.strip() for s in SPLITTER.split(solution_text(kind))]
    return {"id": kind, "problem": f"[kind:{kind}] Write add_one(x).", "steps": steps,
            "label": label, "tests": TESTS, **extra}


def gold_records() -> list[dict]:
    no_tests = item("right", -1)
    del no_tests["tests"]
    return [
        item("right", -1),
        item("firsterror", 1),
        item("wrong", 1),
        {**no_tests, "id": "no-tests"},
        {**item("right", -1), "id": "bad-tests", "tests": "assert add_one(1) ==\n"},
        {**item("wrong", 1), "id": "weak-tests", "tests": "assert True\n"},
    ]


def write_inputs(base: Path) -> tuple[Path, Path]:
    manifest = base / "code_eval.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    gold = base / "code_gold.json"
    gold.write_text(json.dumps(gold_records()))
    return manifest, gold


def test_code_items_read_their_tests_as_gold():
    records = {r["id"]: r for r in gold_records()}
    read = {name: parse_gold_record(records[name], source="g", position=0,
                                    answer_field="tests", answer_format="python_tests")
            for name in records}
    assert read["right"].gold_status == GOLD_OK and read["right"].gold_answer == TESTS
    assert read["no-tests"].gold_status == GOLD_MISSING
    assert read["bad-tests"].gold_status == GOLD_UNPARSEABLE
    # HumanEval's check(candidate) is called with the entry point, as the labelling job does.
    humaneval = parse_gold_record(
        {**records["right"], "tests": "def check(candidate):\n    assert candidate(1) == 2\n",
         "entry_point": "add_one"},
        source="g", position=0, answer_field="tests", answer_format="python_tests")
    assert humaneval.gold_answer.rstrip().endswith("check(add_one)")


def test_answer_formats_must_match_the_grader(tmp_path):
    manifest_path, gold = write_inputs(tmp_path)
    code = load_evaluation_manifest(manifest_path)
    spec = make_spec(code, gold_files=[str(gold)], annotators="mc")
    assert (spec.answer_field, spec.answer_format) == ("tests", "python_tests")
    with pytest.raises(ConfigError, match="reads a math answer, but the manifest's grader is "
                                          "python_tests"):
        make_spec(code, gold_files=[str(gold)], annotators="mc", answer_format="gsm8k")
    math_path = tmp_path / "math.yaml"
    math_path.write_text(yaml.safe_dump({k: v for k, v in MANIFEST.items() if k != "grader"}))
    with pytest.raises(ConfigError, match="python_tests needs a manifest with"):
        make_spec(load_evaluation_manifest(math_path), gold_files=[str(gold)],
                  annotators="mc", answer_format="python_tests")
    # The grader's job defaults apply to evaluate's manifest too.
    assert code.policy.template == "policy_code_v1"
    assert code.judge.template_id == "judge_code_review_v1"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("code_evaluate")
    manifest_path, gold = write_inputs(base)
    spec = make_spec(load_evaluation_manifest(manifest_path), gold_files=[str(gold)],
                     annotators="mc,omegaprm,judge,consensus")
    out = str(base / "out")
    result = run_evaluation(spec, out_dir=out)
    return out, result


def test_monte_carlo_and_omegaprm_grade_code_in_the_sandbox(evaluated):
    out, result = evaluated
    rows = {(r["item_id"], r["annotator"]): r for r in read_rows(out, "predictions")}
    predicted = {key: (r["status"], r["predicted_first_error"]) for key, r in rows.items()}
    for annotator in ("mc", "omegaprm", "judge", "consensus"):
        assert predicted[("right", annotator)] == ("predicted", -1), annotator
        assert predicted[("firsterror", annotator)] == ("predicted", 1), annotator
        assert predicted[("wrong", annotator)] == ("predicted", 0), annotator
    # Rollouts really ran: Monte Carlo's counts on firsterror (right from the reasoning on even
    # samples, never right once the wrong helper is written).
    details = json.loads(rows[("firsterror", "mc")]["details"])
    assert details["n_correct"][:2] == [1, 0] and details["n_unknown"][:2] == [0, 0], details
    omegaprm = json.loads(rows[("firsterror", "omegaprm")]["details"])
    assert omegaprm["graded_verdict"] == "incorrect"
    assert omegaprm["graded_reason"].startswith("assertion_failed")
    right = json.loads(rows[("right", "omegaprm")]["details"])
    assert (right["graded_verdict"], right["graded_reason"]) == ("correct", "tests_passed")


def test_items_without_usable_tests_are_judged_only(evaluated):
    out, result = evaluated
    rows = {(r["item_id"], r["annotator"]): r for r in read_rows(out, "predictions")}
    for name, status in (("no-tests", GOLD_MISSING), ("bad-tests", GOLD_UNPARSEABLE)):
        assert rows[(name, "judge")]["status"] == "predicted"
        for annotator in ("mc", "omegaprm", "consensus"):
            row = rows[(name, annotator)]
            assert (row["status"], row["reason"], row["gold_status"]) == (
                "skipped", "no_gold_answer", status), (name, annotator)
    assert rows[("right", "mc")]["gold_answer"] == TESTS
    assert result.report["items"]["evaluated"] == 6


def test_tests_that_pass_on_an_empty_program_are_a_warning(evaluated):
    out, result = evaluated
    rows = {(r["item_id"], r["annotator"]): r for r in read_rows(out, "predictions")}
    # evaluated as given: its wrong program passes 'assert True', so Monte Carlo sees no error
    assert rows[("weak-tests", "mc")]["predicted_first_error"] == -1
    assert result.info["counters"]["gold_warning_tests_pass_on_empty_program"] == 1
    [warning] = result.report["warnings"]
    assert warning.startswith("1 problem labelled although their tests pass on an empty "
                              "program")
    assert f"- warning: {warning}" in result.markdown
