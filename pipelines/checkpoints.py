"""Checkpoints per stage: a stage's finished keys as segments under ``_work/<stage>/``.

Every model stage (:class:`~steplabel.pipelines.stages.EngineStageFn`) checkpoints each
finished key on the output filesystem (Beam ``FileSystems``), appended to a segment file per
bundle (:class:`SegmentWriter`); the stage reads the segments once at setup
(:class:`StageCheckpoints`, shared by a worker's stages through
:meth:`~steplabel.pipelines.engine_pool.EnginePool.checkpoints`) and replays a finished key
instead of recomputing it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from steplabel.annotators import stages as st
from steplabel.dataset import storage
from steplabel.schemas.graders import GOLD_TYPES, gold_to_json

#: The engine stages of ``steplabel evaluate`` (:mod:`steplabel.pipelines.evaluate`): Monte
#: Carlo and OmegaPRM predictions on the completer, the judge's on the judge.
EVALUATE_ROLLOUTS, EVALUATE_JUDGE = "evaluate_rollouts", "evaluate_judge"
EVALUATE_CRITIC = "evaluate_critic"

#: Where each model stage checkpoints its finished keys, under the dataset's ``_work``.
STAGE_DIRS = {st.SAMPLE: "sample", st.MONTE_CARLO: "monte_carlo", st.OMEGAPRM: "omegaprm",
              st.JUDGE: "judge", st.CRITIC: "critic", EVALUATE_ROLLOUTS: EVALUATE_ROLLOUTS,
              EVALUATE_JUDGE: EVALUATE_JUDGE, EVALUATE_CRITIC: EVALUATE_CRITIC}


# ---------------------------------------------------------------------------------------------
# Checkpoints per stage: segments of finished keys
#
# A stage's finished keys are lines appended to segment files under ``_work/<stage>/``, one
# segment per writer (a DoFn instance's bundle), named by a random UUID so that concurrent
# workers and retried bundles never write the same file. A line is ``<key as JSON>\t<result as
# JSON>\n`` (JSON escapes tabs and newlines, so neither appears raw inside a part). Readers take
# only complete lines (a writer killed mid-line leaves an unterminated tail, skipped) whose key
# and result parse (bytes garbled by a machine crash are recomputed, never trusted). A key found
# twice (a bundle retried after its first attempt checkpointed it) has the same result: the
# first line read is kept.
#
# Flushing. Locally a segment is opened once in append mode and each finished key is written
# to the OS at once (one ``write``, no ``fsync``): a killed process loses no finished key; a
# machine crash may lose the last ones, which the rerun recomputes (same seeds, same result).
# Object stores (GCS, S3) cannot append to an object, and an object exists only once its upload
# is closed: there a writer buffers finished keys and writes them as a new object
# ``<uuid>-<part>.jsonl`` every ``REMOTE_FLUSH_KEYS`` keys, or when a key finishes or the stage
# polls ``REMOTE_FLUSH_SECONDS`` after the oldest buffered one, and at the end of every bundle
# and before a failed bundle raises. A killed worker loses at most those buffered keys: fewer
# than ``REMOTE_FLUSH_KEYS``, finished within the last ``REMOTE_FLUSH_SECONDS`` plus one progress
# poll (at most 5 s) while the stage waits on its engine (a stage waiting for input flushes at
# its next finished key or its bundle's end). That is safe: a bundle Beam commits has all its keys
# written (the writer closes in ``finish_bundle``), a lost key is only recomputed, and its seeds
# derive from its identity, so the rerun gets the same result.


#: Object stores: a writer's buffered keys become one segment object at this many keys...
REMOTE_FLUSH_KEYS = 64
#: ... or this many seconds after the oldest of them finished (checked as keys finish and as
#: the stage polls its in-flight keys).
REMOTE_FLUSH_SECONDS = 10.0
SEGMENT_SUFFIX = ".jsonl"


def stage_checkpoint_dir(out_dir: str, stage: str) -> str:
    return storage.join(out_dir, storage.WORK_DIR, STAGE_DIRS[stage])


def stage_checkpoint_files(out_dir: str, stage: str) -> list[str]:
    """The segment files of ``stage`` (sorted)."""
    return storage.list_files(storage.join(stage_checkpoint_dir(out_dir, stage),
                                           f"*{SEGMENT_SUFFIX}"))


GOLD_CLASSES = tuple(GOLD_TYPES.values())


def _record_fields(value):
    """``json.dumps``'s fallback: a dataclass record as its fields (nested records are reached
    by ``json`` itself; ``dataclasses.asdict`` would deep-copy every dict and list first). A
    grader's gold is written with the grader it belongs to (:func:`gold_to_json`), so that a
    replay reads it back as its own type."""
    if isinstance(value, GOLD_CLASSES):
        return gold_to_json(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return vars(value)
        except TypeError:  # a slotted dataclass
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def checkpoint_line(key: str, result) -> bytes:
    """One finished key as a segment line; ``result``: a JSON-able value or a record."""
    return b"%s\t%s\n" % (json.dumps(key).encode("ascii"),
                          json.dumps(result, separators=(",", ":"), default=_record_fields)
                          .encode("ascii"))


def _complete_lines(data: bytes, base: int):
    """(key, offset of its result, length) of each complete line of ``data`` read from
    offset ``base`` of a segment, and the number of bytes those lines span."""
    end = data.rfind(b"\n") + 1
    found = []
    pos = 0
    while pos < end:
        newline = data.index(b"\n", pos)
        tab = data.find(b"\t", pos, newline)
        if tab > pos:
            try:
                key = json.loads(data[pos:tab])
            except ValueError:
                key = None
            if isinstance(key, str):
                found.append((key, base + tab + 1, newline - tab - 1))
        pos = newline + 1
    return found, end


class StageCheckpoints:
    """The finished keys of one stage of one dataset: where each one's result is.

    :meth:`refresh` reads the segments not read yet (and what was appended to those read) with
    one listing of ``_work/<stage>/``; :meth:`load` reads one result from its segment (handles
    stay open: one open per segment, not per key). Segments this job attempt writes itself
    (:meth:`writing`) are skipped: their keys are not sent again, except to a bundle retried
    after a failure (:meth:`failed`: then they are read too). One instance per stage is shared
    by the job's stages on a worker
    (:meth:`~steplabel.pipelines.engine_pool.EnginePool.checkpoints`).
    """

    def __init__(self, out_dir: str, stage: str) -> None:
        self.folder = stage_checkpoint_dir(out_dir, stage)
        self._out_dir, self._stage = out_dir, stage
        self._lock = threading.Lock()
        self._own: set[str] = set()
        self._read_own = False
        self._dirty = True
        self._reset()

    def _reset(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            handle.close()
        self._index: dict[str, tuple[str, int, int]] = {}
        self._read: dict[str, int] = {}  # segment -> bytes of complete lines indexed
        self._handles: dict = {}

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._index)

    def writing(self, path: str) -> None:
        with self._lock:
            self._own.add(path)

    def failed(self) -> None:
        """A bundle of this stage failed: its retry replays what its first attempt finished."""
        with self._lock:
            self._read_own = self._dirty = True

    def refresh(self, *, if_needed: bool = False) -> "StageCheckpoints":
        if if_needed and not self._dirty:
            return self
        files = stage_checkpoint_files(self._out_dir, self._stage)
        with self._lock:
            self._dirty = False
            listed = set(files)
            if any(path not in listed for path in self._read):  # the dataset was deleted
                self._reset()
            for path in files:
                if path in self._own and not self._read_own:
                    continue
                start = self._read.get(path, 0)
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) \
                        as handle:
                    handle.seek(start)
                    data = handle.read()
                found, used = _complete_lines(data, start)
                for key, offset, length in found:
                    self._index.setdefault(key, (path, offset, length))
                self._read[path] = start + used
        return self

    def load(self, key: str):
        """``key``'s checkpointed result (JSON data), or None: not finished, or unreadable."""
        with self._lock:
            where = self._index.get(key)
            if where is None:
                return None
            path, offset, length = where
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = FileSystems.open(
                    path, compression_type=CompressionTypes.UNCOMPRESSED)
            handle.seek(offset)
            data = handle.read(length)
        try:
            return json.loads(data)
        except ValueError:
            return None


class SegmentWriter:
    """Appends finished keys of one stage to a segment of its own (see the flushing rule
    above); :meth:`close` at the end of each bundle."""

    def __init__(self, checkpoints: StageCheckpoints) -> None:
        self.checkpoints = checkpoints
        self.folder = checkpoints.folder
        self.remote = "://" in self.folder
        self.name = uuid.uuid4().hex
        self._handle = None
        self._buffer: list[bytes] = []
        self._oldest = 0.0
        self._parts = 0

    def add(self, key: str, result) -> None:
        line = checkpoint_line(key, result)
        if self.remote:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(line)
            self.flush_if_due()
            return
        if self._handle is None:
            path = storage.join(self.folder, f"{self.name}{SEGMENT_SUFFIX}")
            self.checkpoints.writing(path)
            os.makedirs(self.folder, exist_ok=True)
            self._handle = open(path, "ab")
        self._handle.write(line)
        self._handle.flush()  # to the OS: a killed process loses nothing

    def flush_if_due(self) -> None:
        if self._buffer and (len(self._buffer) >= REMOTE_FLUSH_KEYS
                             or time.monotonic() - self._oldest >= REMOTE_FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Object stores: the buffered keys as a new segment object."""
        if not self._buffer:
            return
        if self._parts == 0 and not FileSystems.exists(self.folder):
            FileSystems.mkdirs(self.folder)
        path = storage.join(self.folder, f"{self.name}-{self._parts:05d}{SEGMENT_SUFFIX}")
        self._parts += 1
        self.checkpoints.writing(path)
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) \
                as handle:
            handle.write(b"".join(self._buffer))
        self._buffer = []

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def save_stage_checkpoint(out_dir: str, stage: str, key: str, result) -> None:
    """Checkpoint one key in a segment of its own (tools and tests; stages use a
    :class:`SegmentWriter` per bundle)."""
    writer = SegmentWriter(StageCheckpoints(out_dir, stage))
    writer.add(key, result)
    writer.close()


def load_stage_checkpoint(out_dir: str, stage: str, key: str):
    """``key``'s checkpointed result, reading every segment of ``stage`` (tools and tests)."""
    return StageCheckpoints(out_dir, stage).refresh().load(key)


def stage_checkpoint_counts(out_dir: str) -> dict[str, int]:
    """Finished keys per model stage (for messages and tests)."""
    return {stage: len(StageCheckpoints(out_dir, stage).refresh()) for stage in STAGE_DIRS}
