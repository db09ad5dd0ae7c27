"""The python_tests grader through the full Beam job: a scripted model writes right, wrong,
hostile and cut-off programs; Monte Carlo, OmegaPRM, the judge and consensus run unchanged
through the grader seam; bad tests go to the dead letter, weak tests are a counted warning."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from code_fakes import TESTS
from steplabel.dataset import storage
from steplabel.dataset.export import ExportOptions, export_dataset
from steplabel.dataset.inspect import dataset_report, render_html, render_text
from steplabel.dataset.plan import (
    DEFAULT_SANDBOX_S_PER_ROLLOUT,
    Throughput,
    format_plan,
    make_plan,
    problem_costs,
    sandbox_time,
)
from steplabel.dataset.show import Style, render_trajectory, select_trajectories
from steplabel.dataset.stats import sandbox_warnings
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

CODE = {"kind": "custom", "factory": "code_fakes:code_engine"}
KINDS = ["right", "wrong", "firsterror", "loop", "forkbomb", "flood", "exit0", "socket",
         "allocate", "clobber", "readenv", "noprogram", "cutoff"]
BAD = [
    {"id": "bad-missing", "question": "[kind:right] Write add_one."},
    {"id": "bad-empty", "question": "[kind:right] Write add_one.", "tests": "  \n"},
    {"id": "bad-compile", "question": "[kind:right] Write add_one.", "tests": "assert add_one(1) =="},
]
WEAK = {"id": "weak", "question": "[kind:wrong] Write add_one(x).", "tests": "assert True\n"}


def code_manifest(path: Path, **overrides):
    data = {
        "name": "code-scripted",
        "seed": 5,
        "source": {"kind": "jsonl", "path": str(path)},
        "models": {"policy": CODE},
        "grader": {"name": "python_tests", "timeout_s": 1, "memory_mb": 256},
        "policy": {"samples": 1, "sampling": {"temperature": 0.8, "max_tokens": 200}},
        "monte_carlo": {"rollouts": 2, "stopping": "fixed", "first_error_only": False,
                        "consensus_guided": False,
                        "sampling": {"temperature": 0.8, "max_tokens": 200}},
        "omegaprm": {"rollouts": 2, "prefilter_rollouts": 2, "search_limit": 1,
                     "sampling": {"temperature": 0.8, "max_tokens": 200}},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 1},
    }
    data.update(overrides)
    return manifest_from_dict(data)


@pytest.fixture(scope="module")
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    yield server
    server.close()


@pytest.fixture(scope="module")
def victim(listener):
    """A file outside the sandbox that every user may write (only the sandbox protects it)."""
    directory = Path(f"/tmp/steplabel-code-victim-{listener.getsockname()[1]}")
    directory.mkdir()
    directory.chmod(0o777)
    path = directory / "precious.txt"
    path.write_text("keep me")
    path.chmod(0o666)
    yield path
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


@pytest.fixture(scope="module")
def code_job(tmp_path_factory, listener, victim):
    base = tmp_path_factory.mktemp("code")
    port = listener.getsockname()[1]
    path = base / "code.jsonl"
    with open(path, "w") as handle:
        for kind in KINDS:
            tag = f"{kind}:{port}" if kind in ("socket", "clobber") else kind
            handle.write(json.dumps({"id": kind, "question": f"[kind:{tag}] Write add_one(x).",
                                     "tests": TESTS}) + "\n")
        for record in [*BAD, WEAK]:
            handle.write(json.dumps(record) + "\n")
    manifest = code_manifest(path)
    out = str(base / "out")
    result = run_job(manifest, out_dir=out)
    return manifest, out, result


def by_id(out: str, output: str) -> dict[str, dict]:
    return {row["problem_id"]: row for row in storage.iter_rows(out, output)}


def test_python_tests_defaults_and_provenance(code_job):
    manifest, out, _ = code_job
    assert manifest.splitter.name == "python_statements"
    assert manifest.policy.template == "policy_code_v1"
    assert manifest.judge.template_id == "judge_code_review_v1"
    lock = json.loads((Path(out) / "manifest.lock.json").read_text())
    assert "steplabel-python-tests/1" in json.dumps(lock)
    row = by_id(out, "trajectories")["right"]
    assert row["provenance"]["grader_version"] == "steplabel-python-tests/1"
    assert json.loads(row["provenance"]["splitter"])["name"] == "python_statements"


def test_bad_tests_are_dead_letters_with_reasons(code_job):
    _, out, result = code_job
    dead = by_id(out, "dead_letter")
    assert {k: dead[k]["reason"] for k in dead} == {
        "bad-missing": "tests_missing", "bad-empty": "tests_missing",
        "bad-compile": "tests_do_not_compile"}
    assert all(dead[k]["stage"] == "validate" and dead[k]["original"] for k in dead)
    counters = result.stats["counters"]
    assert counters["dead_letter_tests_missing"] == 2
    assert counters["dead_letter_tests_do_not_compile"] == 1


def test_weak_tests_are_a_counted_warning(code_job):
    _, out, result = code_job
    assert result.stats["counters"]["gold_warning_tests_pass_on_empty_program"] == 1
    assert any("gold_warning_tests_pass_on_empty_program" in w for w in result.stats["warnings"])
    # still labelled: a wrong program passes 'assert True', so it is graded correct
    weak = {**by_id(out, "trajectories"), **by_id(out, "rejected")}["weak"]
    assert weak["final_answer_correct"] is True


def test_labels_of_right_wrong_and_hostile_programs(code_job):
    _, out, _ = code_job
    kept = by_id(out, "trajectories")
    # kind -> (final verdict, labels, outcome reason prefix); labels end at the first error
    expect = {
        "right": (True, [True, True, True], "tests_passed"),
        "wrong": (False, [False], "assertion_failed"),
        "firsterror": (False, [True, False], "assertion_failed"),
        "loop": (False, [False], "timeout:cpu_time_over_1s"),
        "flood": (False, [False], "output_over_8MB"),
        "exit0": (False, [False], "exited_before_tests:status=0"),
        "socket": (False, [False], "program_exception:OSError"),
        "forkbomb": (False, [False], "program_exception:BlockingIOError"),
        "allocate": (False, [False], "program_exception:MemoryError"),
        # right only because every write and delete outside failed, and the environment is
        # empty (steps: the reasoning, then one per top-level statement)
        "clobber": (True, [True] * 6, "tests_passed"),
        "readenv": (True, [True] * 3, "tests_passed"),
    }
    assert set(kept) == set(expect)
    for kind, (correct, labels, reason) in expect.items():
        row = kept[kind]
        assert row["final_answer_correct"] is correct, (kind, row["outcome_reason"])
        assert row["labels"] == labels, (kind, row["labels"], row["mc_values"])
        assert row["outcome_reason"].startswith(reason), (kind, row["outcome_reason"])
        assert row["consensus_reason"] == "agree"
    assert kept["firsterror"]["mc_values"][:2] == [0.5, 0.0]
    assert kept["firsterror"]["mc_first_error"] == kept["firsterror"]["judge_first_error"] == 1
    # the code steps are carried whole: the fence opens the first code step, closes the last
    assert kept["right"]["steps"][1].startswith("```python\n")
    assert kept["right"]["steps"][-1].endswith("\n```")


def test_cut_off_and_programless_solutions_are_unknown_never_wrong(code_job):
    _, out, _ = code_job
    rejected = by_id(out, "rejected")
    cut = rejected["cutoff"]
    assert cut["policy_truncated"] is True and cut["final_answer_correct"] is None
    assert cut["consensus_reason"] == "policy_truncated"
    none = rejected["noprogram"]
    assert none["final_answer_correct"] is None and none["outcome_reason"] == "no_program"
    assert none["labels"] is None and none["mc_values"] == [None, None]
    assert (none["mc_n_total"], none["mc_n_unknown"]) == ([0, 0], [2, 1])
    assert none["consensus_reason"] == "mc_unknown"
    assert set(rejected) == {"cutoff", "noprogram", "weak"}


def test_sandbox_outcomes_are_counted(code_job):
    _, out, result = code_job
    stats = result.stats
    counters = stats["counters"]
    kept = {**by_id(out, "trajectories"), **by_id(out, "rejected")}

    def runs(kind: str) -> int:  # the policy's grade, then its Monte Carlo rollouts
        row = kept[kind]
        return 1 + sum(row["mc_n_total"][:-1]) + sum(row["mc_n_unknown"][:-1])

    # OmegaPRM's pre-filter: 2 rollouts from the question, each the kind's whole solution
    # (firsterror's with its wrong helper), all alike: filtered (below) before any search.
    prefilter = 2
    # firsterror: rollouts from its reasoning alone are right on even indices (1 of 2)
    assert counters["sandbox_passed"] == sum(
        runs(kind) + prefilter for kind in ("right", "weak", "clobber", "readenv")) + 1 == 33
    assert counters["sandbox_failed"] == sum(
        runs(kind) + prefilter for kind in ("wrong", "firsterror", "forkbomb", "exit0",
                                            "socket", "allocate")) - 1 == 41
    assert counters["sandbox_timeout"] == runs("loop") + prefilter == 5
    assert counters["sandbox_killed"] == runs("flood") + prefilter == 9
    assert counters.get("sandbox_unknown", 0) == 0
    # no program: the policy's solution, its 2 rollouts, the pre-filter's 2
    assert counters["code_no_program"] == 5
    sandbox = stats["sandbox"]
    assert sandbox["outcomes"] == {"passed": 33, "failed": 41, "timeout": 5, "killed": 9,
                                   "unknown": 0}
    assert sandbox["runs"] == 88 and sandbox["no_program"] == 5
    assert sandbox["wall_s_per_run"] > 0
    assert counters["sandbox_wall_ms"] > 0 and "sandbox_wall_ms" in stats["run"]["counters"]
    filtered = by_id(out, "filtered")
    assert {k: r["reason"] for k, r in filtered.items()} == {
        **{k: "all_wrong" for k in ("wrong", "firsterror", "loop", "forkbomb", "flood",
                                    "exit0", "socket", "allocate")},
        **{k: "all_correct" for k in ("right", "weak", "clobber", "readenv")},
        "cutoff": "all_unknown", "noprogram": "all_unknown"}


def test_programs_the_sandbox_could_not_run_are_a_warning(code_job):
    _, _, result = code_job
    assert not any("sandbox could not run" in w for w in result.stats["warnings"])
    assert sandbox_warnings({"sandbox_passed": 1, "sandbox_failed": 2}) == []
    [warning] = sandbox_warnings({"sandbox_passed": 1, "sandbox_unknown": 3})
    assert warning.startswith("the sandbox could not run 3 of 4 programs (75%)")


def test_nothing_outside_changed(code_job, victim):
    assert victim.read_text() == "keep me"
    assert [p.name for p in victim.parent.iterdir()] == ["precious.txt"]


def test_nothing_reached_the_listener(code_job, listener):
    with pytest.raises(socket.timeout):
        connection, _ = listener.accept()
        connection.close()


def test_show_and_the_html_report_print_code_steps_as_written(code_job):
    _, out, _ = code_job
    [example] = select_trajectories(out, kept=True, problem="firsterror")
    assert [s["code"] for s in example["steps"]] == [False, True, True]
    text = render_trajectory(example, style=Style(False), width=60)
    lines = text.splitlines()
    # the function's body keeps its indentation, under the step's prefix
    body = next(line for line in lines if "return helper(x)" in line)
    header = next(line for line in lines if "def add_one(x):" in line)
    assert body.index("return") == header.index("def") + 4
    assert any(line.rstrip().endswith("```") for line in lines)
    page = render_html(dataset_report(out), {"trajectories": [example], "rejected": []})
    assert "<pre class='code'>def add_one(x):\n    return helper(x)\n```</pre>" in page
    assert "<pre class='code'>```python\ndef helper(x):\n    return x + 2</pre>" in page


def test_inspect_counts_sandbox_outcomes(code_job):
    _, out, _ = code_job
    report = dataset_report(out)
    assert report["sandbox"]["outcomes"]["timeout"] == 5
    assert ("sandbox: 88 programs run: passed 33, failed 41, timeout 5, killed 9, unknown 0; "
            "5 without a program") in render_text(report)
    page = render_html(report, {"trajectories": [], "rejected": []})
    assert ("<td class='k'>sandbox</td><td>88 programs run: passed 33, failed 41, timeout 5, killed 9, "
            "unknown 0; 5 without a program") in page


@pytest.mark.parametrize("fmt", ["trl", "openrlhf", "math-shepherd"])
def test_exports_carry_code_steps_unchanged(code_job, tmp_path, fmt):
    _, out, _ = code_job
    steps = by_id(out, "trajectories")["firsterror"]["steps"]
    export_dataset(out, out_dir=str(tmp_path / fmt), options=ExportOptions(format=fmt))
    exported = json.dumps([row for path in sorted((tmp_path / fmt).rglob("*.parquet"))
                           for row in pq.read_table(path).to_pylist()])
    for step in steps[:2]:  # kept labels end at the first error (step 1)
        assert json.dumps(step)[1:-1] in exported, (fmt, step)


def test_plan_prices_sandbox_time_from_the_pilot(code_job):
    _, out, result = code_job
    counters = result.stats["counters"]
    costs = problem_costs(out, rows_in=result.stats["reconciliation"]["problems_in"],
                          counters=counters)
    stages = ["policy", "monte_carlo", "omegaprm", "judge"]
    plan = make_plan(costs, source_rows=170, throughput=Throughput(None, 0.0, 0.0, "given"),
                     stages=stages)
    box = sandbox_time(counters, costs=costs, plan=plan)
    # graded rollouts of the pilot: 14 policy samples, 54 Monte Carlo, 28 OmegaPRM
    assert box["source"] == "pilot"
    assert box["s_per_graded_rollout"] == pytest.approx(
        counters["sandbox_wall_ms"] / 1000 / (14 + 54 + 28), abs=1e-6)
    # 170 source rows are 10x the pilot's 17: ten times the rollouts, ten times the seconds
    assert box["graded_rollouts"]["projected"] == pytest.approx(960)
    assert box["seconds"]["projected"] == pytest.approx(
        960 * counters["sandbox_wall_ms"] / 1000 / 96)
    assert box["wall_s"]["projected"] == pytest.approx(box["seconds"]["projected"] / 2)
    default = sandbox_time({}, costs=costs, plan=plan)
    assert default["source"] == "default"
    assert default["seconds"]["projected"] == pytest.approx(960 * DEFAULT_SANDBOX_S_PER_ROLLOUT)
    text = format_plan({**plan, "manifest": "m.yaml", "pilot": "a pilot", "sandbox": box})
    assert "sandbox (python_tests):" in text and "measured in the pilot" in text
