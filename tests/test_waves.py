"""The local runner's waves (``runner.wave_size``): a job labelled wave by wave writes the dataset
one pipeline writes, row for row and shard for shard, dead letters included (byte for byte with
an engine without a prefix cache: ``benchmarks/scale.py`` checks it); a wave killed mid-way
resumes with no finished key computed again."""

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from killing import steplabel
from steplabel.pipelines import sink, waves
from steplabel.pipelines.checkpoints import stage_checkpoint_counts
from steplabel.schemas.manifest import RunnerConfig
from steplabel.schemas.records import to_table

PROBLEMS = 14


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_waves_are_contiguous_ranges_of_the_shards_problem_order():
    ids = [f"p{i}" for i in range(400)]
    for count in (1, 2, 7):
        by_order = sorted(ids, key=lambda pid: sink.problem_order({"problem_id": pid}))
        assigned = [waves.wave_of(pid, count) for pid in by_order]
        assert assigned == sorted(assigned)  # monotone in the order shards hold problems
        assert set(assigned) == set(range(count))
    assert waves.wave_of(None, 5) == waves.wave_of("", 5) == 0  # rows without an id: first
    assert waves.Wave(0, 5).holds(None)


def test_wave_count_only_for_the_local_runner_and_a_known_size():
    local = RunnerConfig(wave_size=100)
    assert waves.wave_count(local, 1000) == 10
    assert waves.wave_count(local, 1001) == 11
    assert waves.wave_count(local, 100) == 1
    assert waves.wave_count(local, None) == 1  # size unknown on the launcher: one pipeline
    assert waves.wave_count(RunnerConfig(wave_size=0), 10**6) == 1
    assert waves.wave_count(RunnerConfig(runner="portable", profile="p", wave_size=100),
                            1000) == 1


def test_parts_appended_in_wave_order_are_the_one_pipeline_shard(monkeypatch):
    monkeypatch.setattr(sink, "ROW_GROUP_ROWS", 5)
    rng = random.Random(3)
    rows = [{"problem_id": f"p{i}", "stage": "validate", "reason": "missing_answer",
             "error": "x" * rng.randrange(1, 40), "source": "s", "original": str(i),
             "manifest_hash": "h"} for i in range(37)]
    whole = sink.shard_bytes("dead_letter", rows)
    ordered = sorted(rows, key=sink.row_order)
    cuts = sorted(rng.sample(range(1, len(ordered)), 4))
    tables = []
    for a, b in zip([0, *cuts], [*cuts, len(ordered)]):
        buffer = io.BytesIO()  # each part through a Parquet file, as the waves write them
        pq.write_table(to_table("dead_letter", ordered[a:b]), buffer)
        tables.append(pq.read_table(pa.BufferReader(buffer.getvalue())))
    schema = to_table("dead_letter", rows).schema
    assert sink.write_row_groups(tables, schema) == whole
    assert pq.ParquetFile(pa.BufferReader(whole)).metadata.num_row_groups == 8  # 37 rows / 5


# ---------------------------------------------------------------------------------------------
# Jobs


def write_job(folder: Path, *, wave_size: int) -> Path:
    """The job, its input in ``folder`` (the same folder, the same manifest hash)."""
    source = folder / "problems.jsonl"
    lines = [json.dumps({"id": f"p{i:02d}", "question": f"What is {i} + 4?",
                         "answer": str(i + 4)}) for i in range(PROBLEMS)]
    lines += [json.dumps({"id": "p03", "question": "What is 3 + 4?", "answer": "7"}),  # duplicate
              json.dumps({"id": "bad", "question": "What is 1 + 1?"}),  # no answer
              json.dumps({"question": "What is 2 + 2?"}),  # no id, no answer: wave 0
              "{not json"]
    source.write_text("\n".join(lines) + "\n")
    manifest = {
        "name": "waves",
        "seed": 5,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": "killing:killing_engine"}},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 4},
        "judge": {},
        "consensus": {},
        "runner": {"max_in_flight": 2, "num_shards": 3, "wave_size": wave_size},
    }
    path = folder / f"job-{wave_size}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def shard_rows(out: Path) -> dict[str, list]:
    """Every shard's rows in order (what an engine served from its prefix cache depends on
    the order of requests, which waves change: it is a run metric, on no row)."""
    shards = {}
    for path in sorted(out.rglob("*.parquet")):
        if "_work" in path.parts:
            continue
        shards[str(path.relative_to(out))] = pq.read_table(path).to_pylist()
    return shards


def content_counters(out: Path) -> dict:
    counters = json.loads((out / "stats.json").read_text())["counters"]
    return {k: v for k, v in counters.items()
            if not k.startswith(("stage_", "engine_", "problems_")) and "cached" not in k}


def stats_without_counters(out: Path) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    stats.pop("counters")
    stats.pop("run")  # the run's own measurements (busy time, prefix-cache hits)
    return stats


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The input's folder and the dataset of one pipeline (``wave_size: 0``)."""
    base = tmp_path_factory.mktemp("waves-job")
    done = steplabel(write_job(base, wave_size=0), base / "one-pipeline")
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    return base, base / "one-pipeline"


@pytest.mark.pipeline
def test_waves_write_the_dataset_one_pipeline_writes(tmp_path, job):
    base, one_pipeline = job
    manifest = write_job(base, wave_size=5)  # 18 records: 4 waves
    done = steplabel(manifest, tmp_path / "out")
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "_work" / "waves" / "4").iterdir()) == [
        "00000", "00001", "00002", "00003", "input"]
    shards = shard_rows(out)
    assert any(name.startswith("dead_letter/input-") for name in shards)
    assert shards == shard_rows(one_pipeline)
    assert stats_without_counters(out) == stats_without_counters(one_pipeline)
    assert content_counters(out) == content_counters(one_pipeline)
    reconciliation = json.loads((out / "stats.json").read_text())["reconciliation"]
    assert reconciliation["ok"] and reconciliation["problems_in"] == PROBLEMS + 4
    assert (out / "COMPLETED").exists()


@pytest.mark.pipeline
def test_sigkill_in_a_wave_then_rerun_redoes_no_finished_key(tmp_path, job):
    base, one_pipeline = job
    manifest = write_job(base, wave_size=5)
    out = tmp_path / "out"
    killed = steplabel(manifest, out, kill_at="start:9")  # sampling, waves in
    assert killed.returncode == -9, killed.stdout.decode()[-3000:]
    assert not (out / "COMPLETED").exists()
    finished = stage_checkpoint_counts(str(out))
    assert 1 <= finished["sample"] < PROBLEMS  # killed before the last wave sampled
    rerun = steplabel(manifest, out)
    assert rerun.returncode == 0, rerun.stdout.decode()[-3000:]
    counters = json.loads((out / "stats.json").read_text())["counters"]
    for name, count in finished.items():
        assert counters.get(f"stage_{name}_resumed", 0) == count, name
    assert shard_rows(out) == shard_rows(one_pipeline)
    assert content_counters(out) == content_counters(one_pipeline)


@pytest.mark.pipeline
def test_waves_on_a_datasets_folder(tmp_path):
    """A ``datasets`` folder's size is known on the launcher (memory-mapped), so the local
    runner labels it in waves too: the same shards as one pipeline."""
    import datasets

    from steplabel.pipelines.job import run_job
    from steplabel.schemas.manifest import manifest_from_dict

    records = [{"id": f"h{i:02d}", "question": f"What is {i} + 2?", "answer": str(i + 2)}
               for i in range(9)]
    records.append({"id": None, "question": "What is 2 + 2?", "answer": None})  # dead letter
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))

    def run(wave_size: int) -> Path:
        manifest = manifest_from_dict({
            "name": "hf-waves", "seed": 3,
            "source": {"kind": "hf", "path": str(tmp_path / "ds")},
            "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
            "policy": {"samples": 2},
            "monte_carlo": {"rollouts": 2},
            "runner": {"num_shards": 2, "wave_size": wave_size},
        })
        out = tmp_path / f"out-{wave_size}"
        result = run_job(manifest, out_dir=str(out))
        assert result.stats["reconciliation"]["ok"]
        return out

    one, several = run(0), run(4)
    assert sorted(p.name for p in (several / "_work" / "waves" / "3").iterdir()) == [
        "00000", "00001", "00002", "input"]
    assert shard_rows(several) == shard_rows(one)
    assert any(name.startswith("dead_letter/") for name in shard_rows(one))
