"""A light launcher: workers read the input with Beam IO and count it; the job graph does not
grow with the input; remote inputs are pinned and counted; remote datasets are written,
refused and overwritten like local ones."""

import json
from pathlib import Path

import apache_beam as beam
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

import memfs
from steplabel.dataset import storage
from steplabel.pipelines.job import JobError, build_pipeline, run_job
from steplabel.pipelines.launch import check_runner_paths
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

SCRIPTED = {"kind": "custom", "factory": "fakes:arithmetic_engine"}


def records(count: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"What is {i} + 2?", "answer": str(i + 2)}
            for i in range(count)]


def write_source(kind: str, folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path = folder / "problems.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records(count)))
    elif kind == "parquet":
        path = folder / "problems.parquet"
        pq.write_table(pa.Table.from_pylist(records(count)), path)
    else:
        path = folder / "problems_ds"
        datasets.Dataset.from_list(records(count)).save_to_disk(str(path))
    return path


def manifest_for(kind: str, path, **source):
    return manifest_from_dict({
        "name": "launcher",
        "seed": 2,
        "source": {"kind": kind, "path": str(path), **source},
        "models": {"policy": SCRIPTED},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 2},
        "runner": {"num_shards": 2},
    })


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_job_graph_does_not_grow_with_the_input(tmp_path, kind):
    sizes = {}
    for count in (10, 5000):
        path = write_source(kind, tmp_path / f"n{count:05d}", count)
        pipeline = beam.Pipeline()
        build_pipeline(pipeline, manifest_for(kind, path), out_dir=str(tmp_path / "out"))
        sizes[count] = len(pipeline.to_runner_api().SerializeToString())
    # No record is in the graph: 4,990 more would add tens of KB at least. What differs is the
    # compressed size of pickled settings that hold the input's path and manifest hash (it
    # moved by exactly 100 bytes when a default setting changed).
    assert abs(sizes[5000] - sizes[10]) < 1000, sizes


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_rows_in_are_counted_in_the_pipeline(tmp_path, kind):
    path = write_source(kind, tmp_path / "in", 5)
    result = run_job(manifest_for(kind, path), out_dir=str(tmp_path / "out"))
    assert result.stats["reconciliation"]["problems_in"] == 5
    assert result.stats["reconciliation"]["ok"]
    assert result.stats["counters"]["rows_in"] == 5
    assert json.loads((tmp_path / "out" / "_work" / "rows_in.json").read_text()) == {
        "rows_in": 5}


def test_limit_takes_the_first_records_in_file_order(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(2)))
    (tmp_path / "b.jsonl").write_text(
        "\n" + "".join(json.dumps({**r, "id": "b" + r["id"]}) + "\n" for r in records(4)))
    result = run_job(manifest_for("jsonl", tmp_path / "*.jsonl", limit=3),
                     out_dir=str(tmp_path / "out"))
    assert result.stats["reconciliation"]["problems_in"] == 3
    ids = {row["problem_id"] for row in storage.iter_rows(str(tmp_path / "out"),
                                                           "trajectories")}
    ids |= {row["problem_id"] for row in storage.iter_rows(str(tmp_path / "out"), "rejected")}
    assert ids == {"p0", "p1", "bp0"}


def test_dead_letter_names_the_file_and_line(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_bytes(json.dumps(records(1)[0]).encode() + b"\n\n{broken\n")
    result = run_job(manifest_for("jsonl", path), out_dir=str(tmp_path / "out"))
    dead = list(storage.iter_rows(str(tmp_path / "out"), "dead_letter"))
    assert [(d["reason"], d["error"].split(":")[0]) for d in dead] == [
        ("malformed_json", "line 3 of problems.jsonl")]
    assert result.stats["reconciliation"]["problems_in"] == 2


def test_missing_input_is_an_error_before_the_job(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        run_job(manifest_for("jsonl", tmp_path / "nothing-*.jsonl"),
                out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.fixture
def bucket():
    memfs.clear()
    yield "memfs://bucket"
    memfs.clear()


def put(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def test_remote_input_and_dataset(bucket):
    source = f"{bucket}/in/problems.jsonl"
    put(source, "".join(json.dumps(r) + "\n" for r in records(4)).encode() + b"{bad\n")
    manifest = manifest_for("jsonl", source)
    out = f"{bucket}/out"
    result = run_job(manifest, out_dir=out)

    # counted in the pipeline: reconciliation no longer passes blindly for remote sources
    assert result.stats["reconciliation"]["problems_in"] == 5
    assert result.stats["reconciliation"]["ok"]
    assert FileSystems.exists(f"{out}/COMPLETED")
    assert storage.count_rows(out, "dead_letter") == 1
    # pinned by the filesystem's checksum and size
    lock = storage.read_json(f"{out}/manifest.lock.json")
    size = FileSystems.match([source])[0].metadata_list[0].size_in_bytes
    assert lock["inputs"] == {source: f"checksum:{FileSystems.checksum(source)};size:{size}"}

    # a finished remote dataset is refused, then replaced with --overwrite (stray files too)
    with pytest.raises(JobError, match="COMPLETED"):
        run_job(manifest, out_dir=out)
    put(f"{out}/trajectories/stray.txt", b"left over")
    again = run_job(manifest, out_dir=out, overwrite=True)
    assert again.info["rows"] == result.info["rows"]
    assert not FileSystems.exists(f"{out}/trajectories/stray.txt")
    assert again.stats["counters"].get("problems_resumed") is None  # nothing was replayed


def test_remote_resume_refused_when_the_input_changed(bucket):
    source = f"{bucket}/in/problems.jsonl"
    put(source, "".join(json.dumps(r) + "\n" for r in records(2)).encode())
    manifest = manifest_for("jsonl", source)
    run_job(manifest, out_dir=f"{bucket}/out")
    FileSystems.delete([f"{bucket}/out/COMPLETED"])
    put(source, "".join(json.dumps(r) + "\n" for r in records(3)).encode())
    with pytest.raises(JobError, match="other input data"):
        run_job(manifest, out_dir=f"{bucket}/out")


def test_remote_directory_of_something_else_is_refused(bucket):
    source = f"{bucket}/in/problems.jsonl"
    put(source, "".join(json.dumps(r) + "\n" for r in records(2)).encode())
    put(f"{bucket}/out/notes.txt", b"not a steplabel run")
    with pytest.raises(JobError, match="not empty"):
        run_job(manifest_for("jsonl", source), out_dir=f"{bucket}/out")


@pytest.mark.parametrize("runner", ["dataflow", "flink"])
def test_dataflow_and_flink_need_remote_paths(runner):
    manifest = manifest_for("jsonl", "gs://bucket/problems.jsonl").with_runner(runner=runner)
    with pytest.raises(JobError, match="--out out/x is local"):
        check_runner_paths(manifest, "out/x")
    check_runner_paths(manifest, "gs://bucket/out")
    local_input = manifest_for("jsonl", "problems.jsonl").with_runner(runner=runner)
    with pytest.raises(JobError, match="source.path problems.jsonl is local"):
        check_runner_paths(local_input, "gs://bucket/out")
