"""Stage checkpoints as segments: a bundle's finished keys appended to one file of its own,
read once per stage, never lost to a killed process locally, and on an object store lost at most
the bounded buffer of a writer."""

import dataclasses
import json
from pathlib import Path

import pytest

import memfs
from steplabel.annotators import stages as st
from steplabel.pipelines import checkpoints as checkpoints_module
from steplabel.pipelines.checkpoints import (
    REMOTE_FLUSH_KEYS,
    SegmentWriter,
    StageCheckpoints,
    checkpoint_line,
    load_stage_checkpoint,
    stage_checkpoint_counts,
    stage_checkpoint_files,
)


@pytest.fixture
def bucket():
    memfs.clear()
    yield "memfs://bucket/out"
    memfs.clear()


@pytest.mark.unit
def test_a_finished_key_is_readable_before_its_segment_is_closed(tmp_path):
    """Locally each key reaches the OS as it finishes: a process killed now loses nothing."""
    out = str(tmp_path)
    writer = SegmentWriter(StageCheckpoints(out, st.SAMPLE))
    writer.add("p0", {"n": 0})
    writer.add("p1", {"n": 1})
    # not closed: as if the process were killed here
    assert load_stage_checkpoint(out, st.SAMPLE, "p1") == {"n": 1}
    assert stage_checkpoint_counts(out)["sample"] == 2
    assert len(stage_checkpoint_files(out, st.SAMPLE)) == 1  # one file for the bundle
    writer.close()


@pytest.mark.unit
def test_writers_never_share_a_segment_and_a_key_found_twice_counts_once(tmp_path):
    out = str(tmp_path)
    first, retry = (SegmentWriter(StageCheckpoints(out, st.JUDGE)) for _ in range(2))
    first.add('["p0", 0]', {"v": 1})
    retry.add('["p0", 0]', {"v": 1})  # a retried bundle finished it again
    retry.add('["p0", 1]', {"v": 2})
    first.close()
    retry.close()
    assert len(stage_checkpoint_files(out, st.JUDGE)) == 2
    assert stage_checkpoint_counts(out)["judge"] == 2


@pytest.mark.unit
def test_a_line_cut_off_by_a_kill_is_skipped_and_the_rest_read(tmp_path):
    out = str(tmp_path)
    writer = SegmentWriter(StageCheckpoints(out, st.SAMPLE))
    writer.add("p0", {"n": 0})
    writer.close()
    (segment,) = stage_checkpoint_files(out, st.SAMPLE)
    with open(segment, "ab") as handle:
        handle.write(checkpoint_line("p1", {"n": 1})[:-5])  # the kill landed mid-write
    checkpoints = StageCheckpoints(out, st.SAMPLE).refresh()
    assert checkpoints.keys() == {"p0"}
    assert checkpoints.load("p1") is None
    with open(segment, "ab") as handle:  # (no writer appends after a kill; a reader copes)
        handle.write(b"5}\n")
    assert checkpoints.refresh().load("p1") is None  # garbage: recomputed, never trusted
    assert checkpoints.load("p0") == {"n": 0}


@pytest.mark.unit
def test_refresh_reads_only_what_is_new(tmp_path, monkeypatch):
    out = str(tmp_path)
    checkpoints = StageCheckpoints(out, st.SAMPLE).refresh()
    other = SegmentWriter(StageCheckpoints(out, st.SAMPLE))  # another worker's
    other.add("p0", {"n": 0})
    assert checkpoints.refresh().keys() == {"p0"}
    reads = []
    real = checkpoints_module.FileSystems.open
    monkeypatch.setattr(checkpoints_module.FileSystems, "open",
                        lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    other.add("p1", {"n": 1})
    assert checkpoints.refresh().keys() == {"p0", "p1"}
    assert checkpoints.load("p0") == {"n": 0} and checkpoints.load("p1") == {"n": 1}
    # one open to read the appended line, one to replay both: none per key
    assert len(reads) == 2
    other.close()


@pytest.mark.unit
def test_own_segments_are_read_only_after_a_failure(tmp_path):
    """What this job attempt wrote is not sent to it again, except to a retried bundle."""
    out = str(tmp_path)
    checkpoints = StageCheckpoints(out, st.SAMPLE).refresh()
    writer = SegmentWriter(checkpoints)
    writer.add("p0", {"n": 0})
    writer.close()
    assert checkpoints.refresh(if_needed=True).load("p0") is None
    assert checkpoints.refresh().load("p0") is None
    checkpoints.failed()
    assert checkpoints.refresh(if_needed=True).load("p0") == {"n": 0}


@pytest.mark.unit
def test_a_deleted_dataset_forgets_its_keys(tmp_path):
    out = str(tmp_path)
    writer = SegmentWriter(StageCheckpoints(out, st.SAMPLE))
    writer.add("p0", {"n": 0})
    writer.close()
    checkpoints = StageCheckpoints(out, st.SAMPLE).refresh()
    assert checkpoints.load("p0") == {"n": 0}
    for path in stage_checkpoint_files(out, st.SAMPLE):
        Path(path).unlink()
    assert checkpoints.refresh().load("p0") is None


@pytest.mark.unit
def test_records_are_written_as_asdict_would_write_them():
    labels = st.Labels(fields={"mc_labels": [1, 0], "pair": (1, 2)}, counters={"a": 1},
                       failure=st.Failure("prompt_too_long", "too long"), stopped="agreed")
    line = checkpoint_line("k", labels)
    key, result = line.rstrip(b"\n").split(b"\t")
    assert json.loads(key) == "k"
    assert json.loads(result) == json.loads(json.dumps(dataclasses.asdict(labels)))
    assert st.labels_from_json(json.loads(result)) == dataclasses.replace(
        labels, fields={"mc_labels": [1, 0], "pair": [1, 2]})
    # a key or text with tabs and newlines stays on one line
    assert checkpoint_line('a\tb\n', {"t": "x\ny\tz"}).count(b"\n") == 1


@pytest.mark.unit
def test_an_object_store_gets_a_segment_object_per_batch(bucket, monkeypatch):
    """Objects cannot be appended to: a writer buffers keys and writes a new object every
    REMOTE_FLUSH_KEYS keys, after REMOTE_FLUSH_SECONDS, and when closed; a kill loses at most
    the buffer."""
    writer = SegmentWriter(StageCheckpoints(bucket, st.MONTE_CARLO))
    for i in range(REMOTE_FLUSH_KEYS - 1):
        writer.add(f"k{i}", {"i": i})
    assert stage_checkpoint_counts(bucket)["monte_carlo"] == 0  # buffered: a kill loses these
    writer.add("last", {"i": -1})
    assert stage_checkpoint_counts(bucket)["monte_carlo"] == REMOTE_FLUSH_KEYS
    writer.add("late", {"i": 99})
    writer.flush_if_due()
    assert stage_checkpoint_counts(bucket)["monte_carlo"] == REMOTE_FLUSH_KEYS
    monkeypatch.setattr(checkpoints_module, "REMOTE_FLUSH_SECONDS", 0.0)
    writer.flush_if_due()  # the stage polls: the oldest buffered key is due
    assert stage_checkpoint_counts(bucket)["monte_carlo"] == REMOTE_FLUSH_KEYS + 1
    writer.add("closing", {"i": 100})
    writer.close()
    files = stage_checkpoint_files(bucket, st.MONTE_CARLO)
    assert [f.rsplit("-", 1)[1] for f in files] == ["00000.jsonl", "00001.jsonl",
                                                     "00002.jsonl"]
    assert load_stage_checkpoint(bucket, st.MONTE_CARLO, "late") == {"i": 99}


@pytest.mark.pipeline
def test_a_job_on_an_object_store_resumes_from_its_segments(bucket):
    from apache_beam.io.filesystems import FileSystems

    from steplabel.pipelines.job import run_job
    from steplabel.schemas.manifest import manifest_from_dict

    source = f"{bucket}/problems.jsonl"
    with FileSystems.create(source) as handle:
        handle.write("".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + 2?",
                                         "answer": str(i + 2)}) + "\n"
                             for i in range(4)).encode())
    manifest = manifest_from_dict({
        "name": "segments", "source": {"kind": "jsonl", "path": source},
        "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
        "policy": {"samples": 2}, "monte_carlo": {"rollouts": 2}, "judge": {},
        "runner": {"num_shards": 1},
    })
    out = f"{bucket}/out"
    first = run_job(manifest, out_dir=out)
    finished = stage_checkpoint_counts(out)
    assert finished["sample"] == 4 and finished["monte_carlo"] == finished["judge"] == 8
    FileSystems.delete([f"{out}/COMPLETED"])  # as if the job had been killed before the end
    second = run_job(manifest, out_dir=out)
    counters = second.stats["counters"]
    assert counters["problems_resumed"] == 4
    for stage in ("sample", "monte_carlo", "judge"):
        assert counters[f"stage_{stage}_resumed"] == finished[stage]
        assert f"stage_{stage}_computed" not in counters
    assert second.info["rows"] == first.info["rows"]
