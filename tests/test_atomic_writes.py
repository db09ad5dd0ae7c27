"""Writes are atomic: no partial shard is ever visible under its final name, and an interrupted
write (a writer that raises, or a process killed mid-write) leaves only a ``.inprogress-*``
temporary file, which every reader ignores and the finalize step deletes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from accounting import assert_reconciled
from steplabel.dataset import storage
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parent.parent


def trajectory_rows(count: int, *, text: str = "x") -> list[dict]:
    return [{"problem_id": f"p{i}", "source": "s", "solution_index": 0, "question": text,
             "gold_answer": "1", "solution": text, "steps": [text]} for i in range(count)]


class _FailingFile:
    """A file whose write stores half the bytes, then fails (a full disk, a lost mount)."""

    def __init__(self, path, mode):
        self._handle = open(path, mode)

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def test_a_writer_that_fails_mid_write_leaves_no_file_under_the_final_name(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(storage, "open", _FailingFile, raising=False)
    with pytest.raises(OSError, match="No space left"):
        storage.write_shard(str(tmp_path), "trajectories", 0, 1, trajectory_rows(50))
    final = tmp_path / "trajectories" / storage.shard_name(0, 1)
    assert not final.exists()
    leftovers = storage.temp_files(str(tmp_path))
    assert len(leftovers) == 1 and Path(leftovers[0]).stat().st_size > 0
    assert storage.output_files(str(tmp_path), "trajectories") == []
    assert list(storage.iter_rows(str(tmp_path), "trajectories")) == []
    assert storage.count_rows(str(tmp_path), "trajectories") == 0


def test_a_failed_rewrite_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "stats.json")
    storage.write_json_atomic(path, {"version": 1})
    monkeypatch.setattr(storage, "open", _FailingFile, raising=False)
    with pytest.raises(OSError):
        storage.write_json_atomic(path, {"version": 2, "padding": "y" * 10_000})
    assert storage.read_json(path) == {"version": 1}


def test_a_corrupt_checkpoint_is_recomputed_not_trusted(tmp_path):
    from steplabel.pipelines.checkpoints import (
        load_stage_checkpoint,
        save_stage_checkpoint,
        stage_checkpoint_files,
    )

    save_stage_checkpoint(str(tmp_path), "sample", "p1", {"n": 1})
    assert load_stage_checkpoint(str(tmp_path), "sample", "p1") == {"n": 1}
    (segment,) = stage_checkpoint_files(str(tmp_path), "sample")
    Path(segment).write_bytes(b'"p1"\t{"n": 1, "re\n')  # garbled by a crash
    assert load_stage_checkpoint(str(tmp_path), "sample", "p1") is None
    Path(segment).write_bytes(b'"p1"\t{"n": 1}')  # cut off before its newline
    assert load_stage_checkpoint(str(tmp_path), "sample", "p1") is None


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from steplabel.dataset import storage

    class SlowFile:
        # Writes 4 KiB at a time, slowly: the process is killed in the middle.
        def __init__(self, path, mode):
            self._handle = open(path, mode)
        def write(self, data):
            for start in range(0, len(data), 4096):
                self._handle.write(data[start:start + 4096])
                self._handle.flush()
                time.sleep(0.05)
        def fileno(self):
            return self._handle.fileno()
        def flush(self):
            self._handle.flush()
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self._handle.close()

    storage.open = SlowFile
    rows = [{"problem_id": f"p{i}", "source": "s", "solution_index": 0, "question": str(i) * 50,
             "gold_answer": "1", "solution": "s" * 200, "steps": ["s"]} for i in range(2000)]
    storage.write_shard(sys.argv[1], "trajectories", 0, 1, rows)
""")


def test_a_process_killed_mid_write_leaves_nothing_a_reader_takes_for_data(tmp_path):
    out = tmp_path / "dataset"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)],
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            partial = list((out / "trajectories").glob(f"{storage.TMP_MARK}*")) \
                if (out / "trajectories").exists() else []
            if partial and partial[0].stat().st_size > 8192:
                break
            assert writer.poll() is None, writer.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.02)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    final = out / "trajectories" / storage.shard_name(0, 1)
    assert not final.exists()
    (partial,) = storage.temp_files(str(out))
    assert Path(partial).name.startswith(storage.TMP_MARK)
    # Readers: steplabel's, pyarrow's dataset discovery and a plain glob all skip it.
    assert storage.output_files(str(out), "trajectories") == []
    assert storage.count_rows(str(out), "trajectories") == 0
    assert pads.dataset(str(out / "trajectories"), format="parquet").files == []
    assert list((out / "trajectories").glob("*.parquet")) == []
    assert storage.remove_temp_files(str(out)) == [partial]
    assert not Path(partial).exists()


def test_readers_never_see_a_partial_file_while_it_is_rewritten(tmp_path):
    path = str(tmp_path / "info.json")
    size = 2 << 20
    payloads = [bytes([65 + i]) * size for i in range(6)]
    storage.write_bytes_atomic(path, payloads[0])
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    problems: list[str] = []

    def read_forever():
        while not stop.is_set():
            try:
                data = storage.read_bytes(path)
            except FileNotFoundError:
                problems.append("missing")
                continue
            seen.append((len(data), len(set(data))))
            if len(data) != size or len(set(data)) != 1:
                problems.append(f"partial: {len(data)} bytes, {len(set(data))} distinct")

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for _ in range(4):
            for payload in payloads:
                storage.write_bytes_atomic(path, payload)
    finally:
        stop.set()
        reader.join(30)
    assert seen and not problems, problems[:5]
    assert storage.temp_files(str(tmp_path)) == []


# --------------------------------------------------------------------------------------------
# A whole job: leftovers of killed writers are ignored while it runs and gone when it finishes


def test_finalize_removes_leftovers_of_interrupted_writes(tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + 1?",
                                          "answer": str(i + 1)}) + "\n" for i in range(4)))
    manifest = manifest_from_dict({
        "name": "atomic", "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
        "policy": {"samples": 2}, "monte_carlo": {"rollouts": 2},
        "runner": {"num_shards": 2},
    })
    out = tmp_path / "out"
    first = run_job(manifest, out_dir=str(out))
    # An interrupted second attempt: COMPLETED never written, writers killed mid-write.
    (out / storage.COMPLETED).unlink()
    shard = out / "trajectories" / storage.shard_name(0, 2)
    planted = [
        out / "trajectories" / f"{storage.TMP_MARK}dead-{shard.name}",
        out / "dead_letter" / f"{storage.TMP_MARK}dead-{storage.shard_name(1, 2)}",
        out / f"{storage.TMP_MARK}dead-info.json",
    ]
    from steplabel.pipelines.checkpoints import stage_checkpoint_files

    checkpoint = Path(stage_checkpoint_files(str(out), "sample")[0])
    planted.append(checkpoint.parent / f"{storage.TMP_MARK}dead-{checkpoint.name}")
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(shard.read_bytes()[:100])  # a cut-off Parquet file
    assert storage.count_rows(str(out), "trajectories") == first.info["rows"]["trajectories"]

    second = run_job(manifest, out_dir=str(out))
    assert_reconciled(second, str(out), rows_in=4)  # includes: no temporary file is left
    assert second.stats["temp_files_removed"] == len(planted)
    assert second.info["rows"] == first.info["rows"]
    assert not any(path.exists() for path in planted)
    leftover = [p for p in out.rglob("*") if storage.TMP_MARK in p.name]
    assert leftover == []
