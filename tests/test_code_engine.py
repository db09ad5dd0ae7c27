"""The code job end to end on the real vLLM engine with the embedded model: 2 problems of the
generated code set, Monte Carlo, OmegaPRM, the judge and consensus through the python_tests
grader. A 135M model's programs mostly fail: the path is what is tested, not the labels."""

import json
from pathlib import Path

import pytest

from steplabel.dataset import storage
from steplabel.demo_data import generate_code_problems
from steplabel.pipelines.job import run_job
from steplabel.schemas.config import to_mapping
from steplabel.schemas.manifest import load_manifest, manifest_from_dict

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def code_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("code-real")
    source = base / "code.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in generate_code_problems(2)))
    demo = to_mapping(load_manifest(ROOT / "jobs" / "code_demo.yaml"))
    demo["source"] = {"kind": "jsonl", "path": str(source)}
    demo["runner"]["num_shards"] = 1
    manifest = manifest_from_dict(demo)
    out = base / "out"
    result = run_job(manifest, out_dir=str(out))
    return manifest, out, result


def test_code_job_completes_and_accounts_for_every_problem(code_job):
    manifest, out, result = code_job
    assert manifest.grader.name == "python_tests"
    assert manifest.splitter.name == "python_statements"
    assert (out / "COMPLETED").exists()
    assert result.stats["reconciliation"]["ok"]
    assert result.stats["reconciliation"]["problems_in"] == 2


def test_code_job_grades_in_the_sandbox_and_counts_outcomes(code_job):
    _, out, result = code_job
    sandbox = result.stats["sandbox"]
    assert set(sandbox["outcomes"]) == {"passed", "failed", "timeout", "killed", "unknown"}
    # every policy solution was graded: by a sandbox run, as having no program, or cut off
    rows = [*storage.iter_rows(str(out), "trajectories"), *storage.iter_rows(str(out), "rejected")]
    assert rows
    for row in rows:
        assert row["provenance"]["grader_version"] == "steplabel-python-tests/1"
        if row["policy_truncated"]:
            assert row["final_answer_correct"] is None
        elif row["outcome_reason"] == "no_program":
            assert row["final_answer_correct"] is None
        else:
            assert (row["final_answer_correct"] in (True, False)
                    or row["outcome_reason"].startswith("sandbox_")), row["outcome_reason"]
    runs = sandbox["runs"] + sandbox["no_program"]
    assert runs >= sum(1 for r in rows if not r["policy_truncated"])
    assert sandbox["outcomes"]["unknown"] == 0  # the sandbox itself ran every program
