"""The command line as a user runs it, in a subprocess: ``--json`` alone on stdout, library
noise in the dataset's log file, a clean stderr (scripted engines that are as loud as vLLM;
tests/test_cli_engine.py does the same with the real vLLM engine)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from noisy_engine import NOISE

pytestmark = pytest.mark.pipeline

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
NOISY = {"kind": "custom", "factory": "noisy_engine:noisy_arithmetic_engine"}


def steplabel(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("NO_COLOR", None)
    return subprocess.run([sys.executable, "-m", "steplabel", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean(stderr: str) -> None:
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr
    assert f"{NOISE} library" not in stderr, stderr  # library records: the log file only


def write_job(base: Path, problems: int = 5) -> Path:
    with open(base / "problems.jsonl", "w") as handle:
        for i in range(problems):
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + {i + 2}?",
                                     "answer": str(2 * i + 2)}) + "\n")
        handle.write("{not json\n")
    manifest = {"name": "noisy", "seed": 3,
                "source": {"kind": "jsonl", "path": "problems.jsonl"},
                "models": {"policy": NOISY}, "policy": {"samples": 3},
                "monte_carlo": {"rollouts": 4},
                "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 2},
                "judge": {}, "consensus": {}, "runner": {"num_shards": 2}}
    path = base / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    write_job(base)
    done = steplabel("run", "job.yaml", "--out", "out", "--json", cwd=base)
    return base, done


def test_run_json_is_alone_on_stdout(ran):
    base, done = ran
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # nothing else on stdout: no banner, no child output
    assert result["completed"] is True and result["dataset"] == "out"
    assert result["info"]["rows"]["dead_letter"] == 1
    assert result["stats"]["reconciliation"]["ok"] is True
    assert result["log_file"] == os.path.join("out", "logs", "run.log")  # as --out was given


def test_a_clean_run_has_a_clean_stderr(ran):
    base, done = ran
    assert_clean(done.stderr)
    # Raw writes to descriptors 1 and 2 and a child's output cannot be routed by logging:
    # they land on stderr, never in the JSON.
    assert f"{NOISE} fd1 banner" in done.stderr and f"{NOISE} child stdout" in done.stderr
    assert "[steplabel] dataset written to out" in done.stderr
    assert "(engine and library logs: " in done.stderr
    # Not a terminal: the engine's start, then progress lines with the stages' expected totals
    assert ("[steplabel] starting the custom engine (factory noisy_engine:noisy_arithmetic_"
            "engine; first needed by ") in done.stderr
    # (6 input rows, one of them not JSON: 6 expected)
    assert re.search(r"sampled 5/6, steps labelled \d+, trajectories judged 15/18", done.stderr)


def test_library_logs_go_to_the_dataset_log_file(ran):
    base, _ = ran
    log = (base / "out" / "logs" / "run.log").read_text()
    assert f"{NOISE} library info" in log and f"{NOISE} library warning" in log
    assert "steplabel run started; arguments: run job.yaml --out out --json" in log
    assert "[steplabel] problems " in log  # the progress lines


def test_inspect_and_show_json_parse(ran):
    base, _ = ran
    done = steplabel("inspect", "out", "--json", cwd=base)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] is True
    assert_clean(done.stderr)
    done = steplabel("show", "out", "--json", "--limit", "3", cwd=base)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    done = steplabel("show", "out", "--omegaprm", "--json", "--limit", "2", cwd=base)
    assert [e["search_index"] for e in json.loads(done.stdout)] == [0, 1]


def test_inspect_text_has_no_log_noise(ran):
    base, _ = ran
    done = steplabel("inspect", "out", cwd=base)
    assert done.returncode == 0 and done.stdout.startswith("dataset: out")
    assert done.stderr == ""


def test_verbose_shows_library_logs_too(tmp_path):
    write_job(tmp_path, problems=2)
    done = steplabel("-v", "run", "job.yaml", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"WARNING noisylib.engine: {NOISE} library warning" in done.stderr
    assert f"{NOISE} library warning" in (tmp_path / "out" / "logs" / "run.log").read_text()


def test_evaluate_json_is_alone_on_stdout(tmp_path):
    manifest = {"name": "noisy-eval", "seed": 11, "models": {"policy": NOISY},
                "monte_carlo": {"rollouts": 4}, "omegaprm": {"rollouts": 4}, "judge": {},
                "runner": {"num_shards": 2, "max_in_flight": 4}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(manifest))
    done = steplabel("evaluate", "--gold", str(DATA / "processbench_small.json"),
                     "--answers", str(DATA / "answers_small.jsonl"), "--manifest", "eval.yaml",
                     "--out", "eval", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["items"]["reconciled"]
    assert_clean(done.stderr)
    log = (tmp_path / "eval" / "logs" / "evaluate.log").read_text()
    assert f"{NOISE} library warning" in log


def test_a_refused_out_dir_gets_no_log_file(tmp_path):
    write_job(tmp_path, problems=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("not a dataset")
    done = steplabel("run", "job.yaml", "--out", "busy", "--json", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "is not empty" in done.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_export_and_regenerate_json_parse(ran):
    base, _ = ran
    done = steplabel("export", "out", "--format", "trl", "--out", "exported", "--json",
                     cwd=base)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "trl"
    done = steplabel("regenerate", "out/manifest.lock.json", "--out", "again", "--verify",
                     "out", "--json", cwd=base)
    # Rows hold nothing that depends on what the engine served before: identical.
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["completed"] and result["verify"]["ok"]
    assert result["verify"]["content_hash"]["identical"]
    assert_clean(done.stderr)
    assert (base / "again" / "logs" / "regenerate.log").exists()
