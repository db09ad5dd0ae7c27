"""The generated code problem set: deterministic, every reference solution passes its tests in
the sandbox, a wrong one fails, and no problem's tests pass on an empty program; the code jobs'
manifests read as python_tests jobs."""

import json
from pathlib import Path

import pytest

from steplabel.annotators.python_tests import PythonTestsGrader
from steplabel.annotators.sandbox import SandboxPool
from steplabel.demo_data import generate_code_problems, write_code_problems
from steplabel.schemas.graders import PythonTestsGold
from steplabel.schemas.manifest import load_manifest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
FENCE = "```"


@pytest.fixture(scope="module")
def grader():
    pool = SandboxPool(size=2)
    yield PythonTestsGrader(timeout_s=2, memory_mb=256, pool=pool)
    pool.close()


def test_code_set_is_deterministic_and_written_as_jsonl(tmp_path):
    assert generate_code_problems(8, seed=3) == generate_code_problems(8, seed=3)
    assert generate_code_problems(8, seed=3) != generate_code_problems(8, seed=4)
    path = tmp_path / "code.jsonl"
    assert write_code_problems(str(path), count=5) == 5
    assert len(path.read_text().splitlines()) == 5


def test_reference_solutions_pass_and_wrong_ones_fail(grader):
    for problem in generate_code_problems(16):
        gold = grader.parse_gold(problem)
        assert isinstance(gold, PythonTestsGold), problem["id"]
        assert grader.gold_warning(gold) is None, problem["id"]
        right = f"Reasoning.\n\n{FENCE}python\n{problem['canonical_solution']}{FENCE}\n"
        assert grader.grade(right, gold).verdict == "correct", problem["id"]
        wrong = f"{FENCE}python\ndef {problem['entry_point']}(x):\n    return None\n{FENCE}"
        assert grader.grade(wrong, gold).verdict == "incorrect", problem["id"]


def test_the_checked_in_set_is_the_generated_one():
    lines = (ROOT / "jobs" / "data" / "code.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == generate_code_problems(16)


@pytest.mark.parametrize("job", ["code_demo.yaml", "humaneval.yaml"])
def test_code_jobs_are_python_tests_jobs(job):
    manifest = load_manifest(ROOT / "jobs" / job)  # the data file need not exist
    assert manifest.grader.name == "python_tests"
    assert (manifest.splitter.name, manifest.policy.template, manifest.judge.template_id) == (
        "python_statements", "policy_code_v1", "judge_code_review_v1")
    if job == "humaneval.yaml":
        assert manifest.source.layout == "humaneval"
        assert manifest.source.path.endswith("shared/data/humaneval.jsonl")
