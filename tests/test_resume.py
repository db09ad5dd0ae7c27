"""A job killed with SIGKILL and rerun ends with the same dataset as an uninterrupted run, and
does not recompute the problems it had finished."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from steplabel.pipelines import storage
from steplabel.schemas.records import OUTPUTS

pytestmark = pytest.mark.pipeline

TESTS_DIR = Path(__file__).resolve().parent
PROBLEMS = 16


def write_job(tmp_path: Path) -> Path:
    source = tmp_path / "problems.jsonl"
    with open(source, "w") as handle:
        for i in range(PROBLEMS):
            handle.write(json.dumps({"id": f"p{i:02d}", "question": f"What is {i} + 3?",
                                     "answer": str(i + 3)}) + "\n")
    manifest = {
        "name": "resume",
        "seed": 11,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": "fakes:slow_arithmetic_engine"}},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 4},
        "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 2},
        "judge": {},
        "consensus": {},
        "runner": {"max_in_flight": 2, "num_shards": 3},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def steplabel(manifest: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    return subprocess.Popen([sys.executable, "-m", "steplabel", "run", str(manifest),
                             "--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def checkpoints(out: Path) -> int:
    return len(list((out / "_work" / "checkpoints").glob("*/*.json")))


def dataset(out: Path) -> dict:
    """Every output's rows, in shard order, without the prefix-cache counts (those depend on
    what else the engine served before, not on the data)."""
    tables = {}
    for output in OUTPUTS:
        rows = []
        for path in storage.output_files(str(out), output):
            for row in pq.read_table(path).to_pylist():
                for key in ("cost_policy", "cost_mc", "cost_judge", "cost"):
                    if isinstance(row.get(key), dict):
                        row[key].pop("cached_tokens")
                rows.append(row)
        tables[output] = ([Path(p).name for p in storage.output_files(str(out), output)], rows)
    return tables


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    manifest = write_job(tmp_path)
    killed = tmp_path / "killed"
    proc = steplabel(manifest, killed)
    deadline = time.monotonic() + 120
    while checkpoints(killed) < 4:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    finished_before = checkpoints(killed)
    assert 4 <= finished_before < PROBLEMS
    assert not (killed / "COMPLETED").exists()

    rerun = steplabel(manifest, killed)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output[-3000:]
    stats = json.loads((killed / "stats.json").read_text())
    assert stats["counters"]["problems_resumed"] >= finished_before
    assert stats["counters"]["problems_labelled"] == PROBLEMS - stats["counters"][
        "problems_resumed"]

    clean = tmp_path / "clean"
    uninterrupted = steplabel(manifest, clean)
    output = uninterrupted.communicate(timeout=300)[0].decode()
    assert uninterrupted.returncode == 0, output[-3000:]

    assert dataset(killed) == dataset(clean)
    assert not list(killed.rglob("*.inprogress-*"))
