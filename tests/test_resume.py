"""A job killed with SIGKILL in each model stage and rerun ends with the same dataset as an
uninterrupted run, and computes no finished key of any stage again."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from killing import steplabel
from steplabel.dataset import storage
from steplabel.pipelines.checkpoints import stage_checkpoint_counts
from steplabel.schemas.records import OUTPUTS

pytestmark = pytest.mark.pipeline

PROBLEMS = 16
SAMPLES = 2


def write_job(tmp_path: Path, *, omegaprm: bool) -> Path:
    source = tmp_path / "problems.jsonl"
    with open(source, "w") as handle:
        for i in range(PROBLEMS):
            handle.write(json.dumps({"id": f"p{i:02d}", "question": f"What is {i} + 3?",
                                     "answer": str(i + 3)}) + "\n")
    manifest = {
        "name": "resume",
        "seed": 11,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": "killing:killing_engine"}},
        "policy": {"samples": SAMPLES},
        "monte_carlo": {"rollouts": 4},
        "judge": {},
        "consensus": {},
        "runner": {"max_in_flight": 2, "num_shards": 3},
    }
    if omegaprm:
        manifest["omegaprm"] = {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 2}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def dataset(out: Path) -> dict:
    """Every output's rows, in shard order (prefix-cache hits, which depend on what else the
    engine served before, are not in rows)."""
    tables = {}
    for output in OUTPUTS:
        rows = []
        for path in storage.output_files(str(out), output):
            rows += pq.read_table(path).to_pylist()
        tables[output] = ([Path(p).name for p in storage.output_files(str(out), output)], rows)
    return tables


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Uninterrupted runs, with and without OmegaPRM."""
    runs = {}
    for omegaprm in (True, False):
        base = tmp_path_factory.mktemp(f"clean-{omegaprm}")
        manifest = write_job(base, omegaprm=omegaprm)
        done = steplabel(manifest, base / "out")
        assert done.returncode == 0, done.stdout.decode()[-3000:]
        runs[omegaprm] = (manifest, dataset(base / "out"),
                          json.loads((base / "out" / "stats.json").read_text())["counters"])
    return runs


#: (where the kill lands, request that triggers it, OmegaPRM on, stage caught mid-way)
KILLS = [
    ("sampling", "start:9", True, "sample"),
    # Sampling and OmegaPRM read the same problems and run fused, a problem at a time: by the
    # 20th "start" request (policy samples and OmegaPRM pre-filters) both are mid-way.
    ("omegaprm", "start:20", True, "omegaprm"),
    ("monte_carlo", "continue:12", False, "monte_carlo"),
    ("judge", "judge:12", False, "judge"),
]


@pytest.mark.parametrize("where,kill_at,omegaprm,stage", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_in_a_stage_then_rerun_equals_uninterrupted_run(tmp_path, clean, where,
                                                                 kill_at, omegaprm, stage):
    manifest, reference, reference_counters = clean[omegaprm]  # the same manifest (hash)
    out = tmp_path / "killed"
    killed = steplabel(manifest, out, kill_at=kill_at)
    assert killed.returncode == -9, killed.stdout.decode()[-3000:]
    assert not (out / "COMPLETED").exists()
    finished = stage_checkpoint_counts(str(out))
    # Killed while the stage ran: some of its keys finished, not all.
    keys = {"sample": PROBLEMS, "omegaprm": PROBLEMS, "monte_carlo": PROBLEMS * SAMPLES,
            "judge": PROBLEMS * SAMPLES}
    assert 1 <= finished[stage] < keys[stage], finished
    if stage in ("sample", "omegaprm"):
        assert finished["monte_carlo"] == finished["judge"] == 0
    else:
        assert finished["sample"] == PROBLEMS

    rerun = steplabel(manifest, out)
    assert rerun.returncode == 0, rerun.stdout.decode()[-3000:]
    counters = json.loads((out / "stats.json").read_text())["counters"]
    # Every key finished before the kill is replayed, none computed again.
    for name, count in finished.items():
        assert counters.get(f"stage_{name}_resumed", 0) == count, name
    assert counters["problems_resumed"] == finished["sample"]
    assert counters.get("problems_labelled", 0) == PROBLEMS - finished["sample"]

    assert dataset(out) == reference
    content = {k: v for k, v in counters.items()
               if not k.startswith(("stage_", "engine_", "problems_")) and "cached" not in k}
    assert content == {k: v for k, v in reference_counters.items()
                       if not k.startswith(("stage_", "engine_", "problems_"))
                       and "cached" not in k}
    assert not list(out.rglob("*.inprogress-*"))
