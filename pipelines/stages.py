"""The labelling stages as Beam stages: one DoFn per model stage, rows through Beam.

::

    problems ─► SampleSolutions [policy] ─► solutions KV((problem_id, i), Solution)
             └► OmegaPRM [completer] ─────► pieces KV(problem_id, Piece)
    solutions (usable) ─ Reshuffle ─► Judge [judge] ─► KV((problem_id, i), Labels) ─┐
                                   └─────────── CoGroupByKey (consensus-guided) ◄─┘
                                                   └► MonteCarlo [completer] ─► KV(.., Labels)
    CoGroupByKey(solutions, mc, verdicts) ─► AssembleTrajectories (consensus) ─► pieces
                   └► CritiqueTasks (trusted labels) ─ Reshuffle ─► Critic [critic] ─► pieces
    GroupByKey(pieces by problem) ─► MergeProblems ─► (output, row), counters

**Critic** (issue #25, ``critic:``): after consensus, on the assembled trajectories, keyed by
(problem_id, i): trajectories without trusted labels are skipped under ``critic.only_trusted``
and counted (``critic_solutions_skipped``, ``critic_rollouts_not_spent``); the others' critiques
go to ``critiques/``.

**Engines.** A model stage is one :class:`EngineStageFn` subclass. Its engine comes from an
:class:`EnginePool` that one ``shared.Shared`` handle keeps per worker process, keyed by the
model's ``EngineConfig``: stages naming the same model share one engine on one machine. The
engine starts the first time a key needs work (a fully checkpointed stage never starts it).
Many keys are in flight at once on the pool's event loop (futures drained as they finish,
bounded by ``runner.max_in_flight`` problems; per-solution stages multiply it by
``policy.samples``, and Monte Carlo with decided stopping by k too), so the engine's continuous batching stays fed inside each stage: Beam's
FnApiRunner runs fused stages one after another. With consensus, Monte Carlo follows the judge
(``monte_carlo.consensus_guided``: no rollouts where consensus cannot keep the labels), joined by
key; without it, MonteCarlo and Judge read one ``Reshuffle`` and fuse, so one worker keeps both
kinds of request in flight.

**Placement.** Each model stage, and each role's ``IdentifyEngines`` step (it starts the role's
engine), declares ``with_resource_hints(accelerator=...)`` when the runner names an accelerator
for its role (``stage_accelerators``; one helper for ``run`` and ``evaluate``:
``runners.declare_engine_resources``): on Dataflow, steps with
different hints are not fused, and *right fitting* gives each its own worker pool, e.g. the
judge on larger GPUs (``type:nvidia-a100-80gb;count:1;install-nvidia-driver``) and sampling and
Monte Carlo on L4s. The ``Reshuffle`` between engine stages lets each scale on its own.

**Resume.** Every model stage checkpoints each finished key under ``_work/<stage>/`` on the
output filesystem (Beam ``FileSystems``), appended to a segment file per bundle
(:class:`SegmentWriter`); the stage reads the segments once at setup (:class:`StageCheckpoints`)
and replays a finished key instead of recomputing it. A dead engine (``EngineDiedError``) is
dropped from the pool (the retried bundle builds a new one) after the other in-flight keys
that still finish are checkpointed; then the bundle fails.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from steplabel.annotators import stages as st
from steplabel.annotators.registry import (
    ANNOTATORS,
    CRITIC,
    JUDGE,
    MONTE_CARLO,
    OMEGAPRM,
    AnnotatorSpec,
)
from steplabel.dataset import storage
from steplabel.pipelines.runners import declare_engine_resources
from steplabel.pipelines import logs
from steplabel.pipelines.shuffle import PackedCoGroupByKey, PackedGroupByKey, PackedReshuffle
from steplabel.schemas.graders import GOLD_TYPES, gold_to_json

log = logging.getLogger(__name__)

#: After a key's work raised (a dead engine, a bug): how long the other in-flight keys get to
#: finish and be checkpointed before the bundle fails, in seconds.
SETTLE_TIMEOUT_S = 30.0

#: The engine stages of ``steplabel evaluate`` (:mod:`steplabel.pipelines.evaluate`): Monte
#: Carlo and OmegaPRM predictions on the completer, the judge's on the judge.
EVALUATE_ROLLOUTS, EVALUATE_JUDGE = "evaluate_rollouts", "evaluate_judge"
EVALUATE_CRITIC = "evaluate_critic"

#: Where each model stage checkpoints its finished keys, under the dataset's ``_work``.
STAGE_DIRS = {st.SAMPLE: "sample", st.MONTE_CARLO: "monte_carlo", st.OMEGAPRM: "omegaprm",
              st.JUDGE: "judge", st.CRITIC: "critic", EVALUATE_ROLLOUTS: EVALUATE_ROLLOUTS,
              EVALUATE_JUDGE: EVALUATE_JUDGE, EVALUATE_CRITIC: EVALUATE_CRITIC}
ENGINES_DIR = "engines"


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
    by the job's stages on a worker (:meth:`EnginePool.checkpoints`).
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


# ---------------------------------------------------------------------------------------------
# Engines: one pool per worker process


class EnginePool:
    """The engines of one worker process, keyed by ``EngineConfig``, on one event loop.

    Engines start on first use (:meth:`engine`); :meth:`discard` drops a dead one, so that the
    next use (the retried bundle) starts a new one. One ``MeteredEngine`` per (config, role)
    counts what each role asked for; the raw engine is shared by every role naming its config.
    """

    def __init__(self) -> None:
        from steplabel.engines.host import EngineHost
        from steplabel.pipelines.label import EngineClock

        self.host = EngineHost()
        self.clock = EngineClock()
        self._raw: dict = {}
        self._metered: dict = {}
        self._lock = threading.Lock()
        self._reported: dict[str, int] = {}
        self._retired: list = []  # engines discarded (dead): their counters still count
        self._checkpoints: dict[tuple[str, str], StageCheckpoints] = {}

    def checkpoints(self, out_dir: str, stage: str) -> StageCheckpoints:
        """The finished keys of ``stage``, shared by this job's stages on this worker (from
        one pipeline to the next: the local runner's waves), brought up to date."""
        with self._lock:
            found = self._checkpoints.setdefault((out_dir, stage),
                                                 StageCheckpoints(out_dir, stage))
        return found.refresh()

    def engine(self, config, role: str):
        from steplabel.engines.host import create_engine
        from steplabel.pipelines.label import MeteredEngine

        with self._lock:
            raw = self._raw.get(config)
            if raw is None:
                with logs.engine_starting(_engine_description(config, role),
                                          status_line=not _bars_on_screen()):
                    raw = self.host.run(create_engine(config))
                self._raw[config] = raw
            metered = self._metered.get((config, role))
            if metered is None or metered._engine is not raw:
                metered = MeteredEngine(raw, role=role, clock=self.clock)
                self._metered[(config, role)] = metered
            return metered

    def is_current(self, config, engine) -> bool:
        with self._lock:
            return self._raw.get(config) is getattr(engine, "_engine", engine)

    def discard(self, config) -> None:
        """Drop ``config``'s engine (it died): shut it down, best effort."""
        with self._lock:
            raw = self._raw.pop(config, None)
        if raw is None:
            return
        self._retired.append(raw)

        async def in_loop(function):
            function()

        shutdown = getattr(raw, "shutdown", None)
        if shutdown is not None:
            try:
                self.host.run(in_loop(shutdown), timeout=60)
            except Exception:  # noqa: BLE001 - a dead engine may fail to shut down
                log.warning("a dead engine did not shut down cleanly", exc_info=True)

    def submit(self, coroutine) -> concurrent.futures.Future:
        return self.host.submit(coroutine)

    def served(self) -> tuple[int, int]:
        """(rollouts, generated tokens) served so far, every role."""
        with self._lock:
            metered = list(self._metered.values())
        return (sum(e.rollouts for e in metered), sum(e.generated_tokens for e in metered))

    def stage_requests(self) -> dict[str, int]:
        """Requests served so far by role: ``policy``, ``completer``, ``judge``."""
        with self._lock:
            metered = list(self._metered.values())
        counts: dict[str, int] = {}
        for engine in metered:
            counts[engine.role] = counts.get(engine.role, 0) + engine.requests
        return counts

    def progress(self, out_dir: str, manifest, total: int | None):
        """This worker's live progress display of the job (one per dataset and manifest)."""
        from steplabel.pipelines.label import _PROGRESS, Progress

        with self._lock:
            return _PROGRESS.setdefault(
                f"{out_dir}|{manifest.hash}",
                Progress(total, served=self.served, stages=self.stage_requests))

    def engine_counter_deltas(self) -> dict[str, int]:
        """What the engines did since the last call (see
        :func:`~steplabel.pipelines.label.engine_counter_totals`): engine requests, retries,
        failures and busy time, for Beam counters."""
        with self._lock:
            engines = [*self._retired, *self._raw.values()]
        from steplabel.pipelines.label import engine_counter_totals

        totals = engine_counter_totals(engines, self.clock)
        with self._lock:
            deltas = {k: v - self._reported.get(k, 0) for k, v in totals.items()}
            self._reported = totals
        return {k: v for k, v in deltas.items() if v}


def expected_requests(manifest, total: int | None) -> dict[str, int]:
    """Requests the labelling job makes by role, where known before it runs (``total``: input
    rows): one policy request per problem, and one judge request per sampled solution; fewer
    when input rows are dead letters or solutions are cut off at max_tokens (not judged).
    Monte Carlo's depend on the solutions' steps."""
    if not total:
        return {}
    expected = {"policy": total}
    if manifest.judge is not None and manifest.policy is not None:
        expected["judge"] = total * manifest.policy.samples
    return expected


def _engine_description(config, role: str) -> str:
    """``the vllm engine (model embedded; first needed by policy)``: what is starting, for
    the terminal (roles naming the same config share the engine)."""
    what = {"vllm": f"model {config.model}", "custom": f"factory {config.factory}",
            "openai": f"model {config.model} at {config.base_url}"}
    return (f"the {config.kind} engine ({what.get(config.kind, config.model)}; first needed "
            f"by {role})")


def _bars_on_screen() -> bool:
    """Whether a progress display of this process has bars on the terminal (a status line
    would then take one of their rows)."""
    from steplabel.pipelines.label import _PROGRESS

    return any(progress._bars for progress in list(_PROGRESS.values()))


def _acquire_pool(handle: shared.Shared) -> EnginePool:
    return handle.acquire(EnginePool, tag="steplabel-engine-pool")


# ---------------------------------------------------------------------------------------------
# A model stage


class EngineStageFn(beam.DoFn):
    """One model stage: keys in, results out, many keys in flight against one engine.

    Subclasses name the ``stage`` and the engine ``role`` and define :meth:`key`,
    :meth:`bind` (engine -> what :meth:`work` needs, built once per engine), :meth:`work`
    (a coroutine whose result is a record, checkpointed as JSON), :meth:`decode` (checkpoint
    -> record) and :meth:`emit` (element, record -> outputs).
    """

    stage = ""
    role = ""

    def __init__(self, manifest, *, out_dir: str, pool: shared.Shared,
                 max_in_flight: int, total: int | None = None,
                 placement: dict[str, str] | None = None) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self.max_in_flight = max_in_flight
        self.total = total
        self._pool_handle = pool
        # role -> worker pool (the runner's stage_accelerators): roles on one pool share its
        # GPUs' memory; a role on a pool of its own gets all of it.
        self.placement = dict(placement or {})

    # -- per stage ------------------------------------------------------------------------

    def key(self, element) -> str:
        raise NotImplementedError

    def bind(self, engine):
        return engine

    def work(self, bound, element):
        raise NotImplementedError

    def encode(self, result):
        """The checkpoint of ``result``: JSON data, or a dataclass record (written field by
        field, without ``dataclasses.asdict``'s deep copy)."""
        return result

    def decode(self, data: dict):
        raise NotImplementedError

    def emit(self, element, result, *, resumed: bool):
        raise NotImplementedError

    # -- machinery ------------------------------------------------------------------------

    def engine_config(self):
        """The engine config of this stage's role, its share of GPU memory set."""
        return self.ctx.roles(self.placement or None)[self.role]

    def setup(self) -> None:
        self.ctx = st.StageContext(self.manifest)
        self._config = self.engine_config()
        self._pool = _acquire_pool(self._pool_handle)
        self._progress = self._pool.progress(self.out_dir, self.manifest, self.total)
        self._checkpoints = self._pool.checkpoints(self.out_dir, self.stage)
        self._engine = self._bound = None

    def _bind(self):
        """The engine-bound helpers, starting the engine if this worker has none (first use,
        or the last one died)."""
        if self._engine is None or not self._pool.is_current(self._config, self._engine):
            self._engine = self._pool.engine(self._config, self.role)
            self._bound = self.bind(self._engine)
        return self._bound

    def start_bundle(self) -> None:
        self._pending: dict[concurrent.futures.Future, tuple[str, object]] = {}
        self._checkpoints.refresh(if_needed=True)  # a retry after a failure
        self._writer = SegmentWriter(self._checkpoints)

    def process(self, element):
        key = self.key(element)
        data = self._checkpoints.load(key)
        if data is not None:
            Metrics.counter("steplabel", f"stage_{self.stage}_resumed").inc()
            yield from self.emit(element, self.decode(data), resumed=True)
            return
        future = self._pool.submit(self.work(self._bind(), element))
        self._pending[future] = (key, element)
        yield from self._drain(until=self.max_in_flight - 1)

    def finish_bundle(self):
        for output in self._drain(until=0):
            yield GlobalWindows.windowed_value(output)
        self._writer.close()
        self._count_engine_work()

    def _count_engine_work(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            for name, value in pool.engine_counter_deltas().items():
                Metrics.counter("steplabel", name).inc(value)

    def _finished(self, future, key: str, element):
        result = future.result()
        self._writer.add(key, self.encode(result))
        Metrics.counter("steplabel", f"stage_{self.stage}_computed").inc()
        yield from self.emit(element, result, resumed=False)

    def _drain(self, *, until: int):
        while len(self._pending) > until:
            done, _ = concurrent.futures.wait(self._pending, timeout=self._progress.poll_s,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:  # long keys: still show that the engines are working
                self._progress.update(force=True)
                self._writer.flush_if_due()
                continue
            failed = None
            for future in sorted(done, key=lambda f: self._pending[f][0]):
                key, element = self._pending.pop(future)
                if future.exception() is not None:
                    failed = failed or future
                    continue
                yield from self._finished(future, key, element)
            if failed is not None:
                self._fail(failed)

    def _fail(self, failed: concurrent.futures.Future) -> None:
        """A key's work raised instead of returning a result: a dead engine or a bug, never a
        request error (those are results). Checkpoint every other in-flight key that still
        finishes, drop a dead engine from the pool (a retry builds a new one), raise."""
        from steplabel.engines.base import EngineDiedError

        pending, self._pending = self._pending, {}
        done, not_done = concurrent.futures.wait(pending, timeout=SETTLE_TIMEOUT_S)
        saved = 0
        for future in done:
            if future.exception() is None:
                key, _ = pending[future]
                self._writer.add(key, self.encode(future.result()))
                saved += 1
        for future in not_done:
            future.cancel()
        self._writer.close()
        self._checkpoints.failed()
        error = failed.exception()
        if isinstance(error, EngineDiedError):
            self._pool.discard(self._config)
            self._engine = self._bound = None
        self._count_engine_work()
        log.error("stage %s stopped: %s: %s (%d in-flight keys checkpointed, %d cancelled)",
                  self.stage, type(error).__name__, error, saved, len(not_done))
        raise error


class SampleSolutionsFn(EngineStageFn):
    """Problem -> (problem, :class:`~steplabel.annotators.stages.Sampled`) on the policy."""

    stage, role = st.SAMPLE, "policy"

    def key(self, problem) -> str:
        return problem.problem_id

    def work(self, engine, problem):
        return st.sample_solutions(self.ctx, engine, problem)

    def decode(self, data):
        return st.sampled_from_json(data)

    def emit(self, problem, sampled, *, resumed: bool):
        Metrics.counter("steplabel", "problems_resumed" if resumed else "problems_labelled").inc()
        yield problem, sampled, resumed


class MonteCarloFn(EngineStageFn):
    """(solution, judge :class:`Labels` or None) -> ((problem_id, i), Monte Carlo
    :class:`Labels`) on the completer (the verdict guides the rollouts under
    ``consensus_guided``)."""

    stage, role = MONTE_CARLO.name, MONTE_CARLO.role
    #: The annotators whose labels its input joins (the judge's verdict guides it).
    reads = (JUDGE.name,)

    @staticmethod
    def inputs(stages: "LabelStages", usable, labels: dict):
        """(solution, judge verdict or None): joined with the judge's labels under
        ``consensus_guided`` (no rollouts where consensus cannot keep the labels; the join is
        the shuffle between the two engine stages), else None."""
        if not stages.ctx.mc_config.consensus_guided:
            return usable | "Unguided" >> beam.Map(lambda s: (s, None))
        return ({"solution": usable | "KeyUsable" >> beam.Map(lambda s: (s.key, s)),
                 "judge": labels[JUDGE.name]}
                | "JoinVerdicts" >> PackedCoGroupByKey()
                | "GuidedSolutions" >> beam.MapTuple(
                    lambda _, g: (list(g["solution"])[0], next(iter(g["judge"]), None))))

    @staticmethod
    def in_flight(stages: "LabelStages") -> int:
        """Decided stopping sends a solution's rollouts in small waves (1, 1, 2, ...), one step
        at a time under first-error-only: k times more solutions in flight keep about as many
        samples at the engine as fixed k would, so waves do not starve its batches."""
        config = stages.ctx.mc_config
        return stages.per_solution * (config.rollouts if config.stopping == "decided" else 1)

    def key(self, element) -> str:
        solution, _ = element
        return json.dumps([solution.problem_id, solution.index])

    def bind(self, engine):
        return engine, self.ctx.mc_annotator(engine)

    def work(self, bound, element):
        engine, annotator = bound
        solution, verdict = element
        # The completer continues prefixes in its own chat template (it may be another model).
        prompt = self.ctx.solution_prompt(engine, solution.question)
        return st.monte_carlo_labels(self.ctx, annotator, prompt, solution, verdict)

    def decode(self, data):
        return st.labels_from_json(data)

    def emit(self, element, labels, *, resumed: bool):
        yield element[0].key, labels


class JudgeFn(EngineStageFn):
    """Solution -> ((problem_id, i), judge :class:`Labels`) on the judge."""

    stage, role = JUDGE.name, JUDGE.role
    reads = ()

    @staticmethod
    def inputs(stages: "LabelStages", usable, labels: dict):
        return usable

    @staticmethod
    def in_flight(stages: "LabelStages") -> int:
        return stages.per_solution

    def key(self, solution) -> str:
        return json.dumps([solution.problem_id, solution.index])

    def bind(self, engine):
        return self.ctx.judge(engine)

    def work(self, judge, solution):
        return st.judge_labels(judge, solution)

    def decode(self, data):
        return st.labels_from_json(data)

    def emit(self, solution, labels, *, resumed: bool):
        yield solution.key, labels


class OmegaPRMFn(EngineStageFn):
    """Problem -> (problem_id, OmegaPRM :class:`Piece`) on the completer."""

    stage, role = OMEGAPRM.name, OMEGAPRM.role

    def key(self, problem) -> str:
        return problem.problem_id

    def bind(self, engine):
        return engine, self.ctx.omegaprm_annotator(engine), st.engine_identity(engine)[0]

    def work(self, bound, problem):
        engine, annotator, model_id = bound
        prompt = self.ctx.solution_prompt(engine, problem.question)
        return st.omegaprm_rows(self.ctx, annotator, prompt, problem, completer_model=model_id)

    def decode(self, data):
        return st.piece_from_json(data)

    def emit(self, problem, piece, *, resumed: bool):
        yield problem.problem_id, piece


class CriticFn(EngineStageFn):
    """:class:`~steplabel.schemas.stages.CritiqueTask` (an assembled trajectory with its
    trusted labels) -> (problem_id, ("piece", critiques :class:`Piece`)) on the critic."""

    stage, role = CRITIC.name, CRITIC.role

    @staticmethod
    def in_flight(stages: "LabelStages") -> int:
        return stages.per_solution

    def key(self, task) -> str:
        return json.dumps([task.problem_id, task.solution_index])

    def bind(self, engine):
        return self.ctx.critic(engine)

    def work(self, critic, task):
        return st.critique_piece(self.ctx, critic, task)

    def decode(self, data):
        return st.piece_from_json(data)

    def emit(self, task, piece, *, resumed: bool):
        yield task.problem_id, ("piece", piece)


#: The Beam stage of each annotator (:data:`~steplabel.annotators.registry.ANNOTATORS`).
#: A ``per: solution`` stage reads solutions (``inputs``: usable solutions, possibly joined
#: with the labels of the annotators it ``reads``) and emits ``((problem_id, i), Labels)``;
#: a ``per: problem`` stage reads problems and emits ``(problem_id, Piece)``; an
#: ``after_consensus`` stage reads :class:`CritiqueTask` s of the assembled trajectories and
#: emits ``(problem_id, ("piece", Piece))``.
ANNOTATOR_STAGES: dict[str, type[EngineStageFn]] = {
    MONTE_CARLO.name: MonteCarloFn, OMEGAPRM.name: OmegaPRMFn, JUDGE.name: JudgeFn,
    CRITIC.name: CriticFn}


class IdentifyEnginesFn(beam.DoFn):
    """An impulse -> (role, (model id, weights SHA-256, engine version)) of the engine of
    ``role``, for provenance.

    Read from ``_work/engines/<role>.json`` when an earlier attempt recorded it (a resumed job
    starts no engine for it); otherwise from the engine (started in the shared pool, where the
    stages find it) and recorded. It starts an engine, so it declares the role's resources as
    the role's stages do (:class:`IdentifyEngines`)."""

    def __init__(self, manifest, *, role: str, out_dir: str, pool: shared.Shared,
                 placement: dict[str, str] | None = None) -> None:
        self.manifest = manifest
        self.role = role
        self.out_dir = out_dir
        self._pool_handle = pool
        self.placement = dict(placement or {})

    def process(self, _impulse):
        role = self.role
        # The same placement as the stages': the same config, so the same pooled engine.
        config = st.StageContext(self.manifest).roles(self.placement or None)[role]
        path = storage.join(self.out_dir, storage.WORK_DIR, ENGINES_DIR, f"{role}.json")
        config_key = hashlib.sha256(repr(config).encode("utf-8")).hexdigest()
        known = storage.read_json_if_exists(path)
        if known is not None and known.get("config") == config_key:
            yield role, tuple(known["identity"])
            return
        engine = _acquire_pool(self._pool_handle).engine(config, role)
        identity = st.engine_identity(engine)
        storage.write_json_atomic(path, {"config": config_key, "identity": list(identity)})
        yield role, identity


class IdentifyEngines(beam.PTransform):
    """Pipeline begin -> (role, identity) of each of ``roles``' engines: one
    :class:`IdentifyEnginesFn` per role, each with the role's resource hints
    (:func:`~steplabel.pipelines.runners.declare_engine_resources`), so that an engine is
    identified on the worker pool its stages run on."""

    def __init__(self, manifest, *, roles, out_dir: str, pool: shared.Shared,
                 accelerators: dict[str, str] | None = None) -> None:
        super().__init__()
        self.manifest = manifest
        self.roles = tuple(roles)
        self.out_dir = out_dir
        self.pool = pool
        self.accelerators = dict(accelerators or {})

    def expand(self, begin):
        found = []
        for role in self.roles:
            fn = IdentifyEnginesFn(self.manifest, role=role, out_dir=self.out_dir,
                                   pool=self.pool, placement=self.accelerators)
            found.append(begin
                         | f"Impulse[{role}]" >> beam.Impulse()
                         | f"Identify[{role}]" >> declare_engine_resources(
                             beam.ParDo(fn), role=role, accelerators=self.accelerators))
        return tuple(found) | "Identities" >> beam.Flatten()


class AssembleTrajectoriesFn(beam.DoFn):
    """(key, {solution, monte_carlo, judge}) -> (problem_id, ("piece", Piece)): consensus and
    the row (consensus combines exactly these two annotators' labels)."""

    def __init__(self, manifest) -> None:
        self.manifest = manifest

    def setup(self) -> None:
        self.ctx = st.StageContext(self.manifest)

    def process(self, item):
        (problem_id, _), grouped = item
        solutions = list(grouped["solution"])
        labels = {name: next(iter(grouped[name]), None) for name in grouped
                  if name != "solution"}
        # The job's provenance, the same on every row, is added by the sink (WriteShards): rows
        # carry only their own part (the policy seed) through the shuffles.
        piece = st.assemble_trajectory(self.ctx, solutions[0], labels.get(MONTE_CARLO.name),
                                       labels.get(JUDGE.name), {})
        yield problem_id, ("piece", piece)


def figure_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A problem's rows, reduced to the columns the dataset's figures read."""
    from steplabel.dataset.stats import COLUMNS

    return {output: [{c: row.get(c) for c in COLUMNS[output]} for row in items]
            for output, items in rows.items()}


class MergeProblemsFn(beam.DoFn):
    """(problem_id, [("problem", Problem) | ("piece", Piece)]) -> (output, row); the problem's
    counters become Beam counters, and all its rows go together to the ``problems`` output
    (``(problem_id, {output: rows})``, for the dataset's figures)."""

    PROBLEMS = "problems"

    def __init__(self, manifest, *, out_dir: str, pool: shared.Shared,
                 total: int | None = None, close_progress: bool = True) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self.total = total
        self._pool_handle = pool
        self.close_progress = close_progress

    def setup(self) -> None:
        self.ctx = st.StageContext(self.manifest)
        self._progress = _acquire_pool(self._pool_handle).progress(self.out_dir, self.manifest,
                                                                   self.total)
        self._progress.expect(expected_requests(self.manifest, self.total))

    def process(self, item):
        problem_id, parts = item
        problem, resumed = next(value for kind, value in parts if kind == "problem")
        pieces = [value for kind, value in parts if kind == "piece"]
        rows, counters = st.merge_problem(self.ctx, problem_id, pieces, source=problem.source,
                                          original=problem.original)
        for name, value in counters.items():
            Metrics.counter("steplabel", name).inc(value)
        self._progress.update(resumed=resumed)
        for output in sorted(rows):
            for row in rows[output]:
                yield output, row
        # The figures read a few columns: only those cross to the Figures combiner.
        yield beam.pvalue.TaggedOutput(self.PROBLEMS, (problem_id, figure_rows(rows)))

    def teardown(self) -> None:
        # The last stage of the labelling is over: the final progress line, bars closed.
        progress = getattr(self, "_progress", None)
        if progress is not None and self.close_progress:
            progress.close()


class LabelStages(beam.PTransform):
    """Validated problems -> ``(output, row)`` for every output of the labelling stages (the
    main output) and ``problems``: ``(problem_id, {output: rows})`` per problem."""

    def __init__(self, manifest, *, out_dir: str, total: int | None = None,
                 accelerators: dict[str, str] | None = None, pool: shared.Shared | None = None,
                 close_progress: bool = True) -> None:
        super().__init__()
        self.manifest = manifest
        self.out_dir = out_dir
        self.total = total
        self.accelerators = dict(accelerators or {})
        self.pool = pool
        self.close_progress = close_progress

    def _specs(self, per: str) -> list[AnnotatorSpec]:
        """The annotators with a stage per ``per``: those the manifest runs for ``problem``;
        all for ``solution`` (each is a tag of the join; an annotator reading others' labels
        comes after them)."""
        specs = [spec for spec in ANNOTATORS.values()
                 if spec.per == per and not spec.after_consensus]
        if per == "problem":
            return [spec for spec in specs if spec.config(self.manifest) is not None]
        ordered: list[AnnotatorSpec] = []
        while len(ordered) < len(specs):
            ready = [spec for spec in specs if spec not in ordered and all(
                name in [o.name for o in ordered]
                for name in ANNOTATOR_STAGES[spec.name].reads)]
            if not ready:
                raise ValueError("annotator stages read each other's labels in a circle")
            ordered += ready[:1]
        return ordered

    def _stage(self, fn: EngineStageFn):
        return declare_engine_resources(beam.ParDo(fn), role=fn.role,
                                        accelerators=self.accelerators)

    def _annotate(self, fn_class, stage_input, **options):
        spec = ANNOTATORS[fn_class.stage]
        return stage_input | spec.stage_label >> self._stage(fn_class(**options))

    def _after_consensus(self, spec: AnnotatorSpec, assembled, engine_stage: dict) -> list:
        """The pieces of an annotator that reads the assembled trajectories (the critic): its
        tasks, the skipped ones counted, the others through its engine stage."""
        config, label = spec.config(self.manifest), spec.stage_label
        tasks = assembled | f"{label}Tasks" >> beam.FlatMap(
            lambda item: st.critique_tasks(config, item[1][1]))
        skipped = (tasks
                   | f"{label}Skipped" >> beam.Filter(
                       lambda task: not st.needs_critique(config, task))
                   | f"{label}SkippedPiece" >> beam.Map(lambda task: (
                       task.problem_id, ("piece", st.skipped_critique_piece(config, task)))))
        chosen = (tasks
                  | f"{label}Chosen" >> beam.Filter(lambda task: st.needs_critique(config, task))
                  | f"Spread{label}Tasks" >> PackedReshuffle())
        fn_class = ANNOTATOR_STAGES[spec.name]
        return [skipped, self._annotate(fn_class, chosen, **engine_stage,
                                        max_in_flight=fn_class.in_flight(self))]

    def expand(self, problems):
        m = self.manifest
        # One pool per worker process: one engine per model config (the caller's handle keeps
        # engines loaded from one pipeline to the next, e.g. the local runner's waves).
        pool = self.pool or shared.Shared()
        common = dict(manifest=m, out_dir=self.out_dir, pool=pool)
        engine_stage = dict(common, total=self.total, placement=self.accelerators)
        per_problem = m.runner.max_in_flight
        self.per_solution = m.runner.max_in_flight * m.policy.samples
        self.ctx = ctx = st.StageContext(m)
        roles = sorted(ctx.roles())
        identities = problems.pipeline | "IdentifyEngines" >> IdentifyEngines(
            m, roles=roles, out_dir=self.out_dir, pool=pool, accelerators=self.accelerators)

        sampled = problems | "SampleSolutions" >> self._stage(
            SampleSolutionsFn(**engine_stage, max_in_flight=per_problem))
        solutions = sampled | "Solutions" >> beam.FlatMap(lambda ps: ps[1].solutions)
        parts = [
            sampled | "ProblemOf" >> beam.Map(
                lambda ps: (ps[0].problem_id, ("problem", (ps[0], ps[2])))),
            sampled | "SamplingPiece" >> beam.Map(
                lambda ps: (ps[0].problem_id, ("piece", st.sampled_piece(ps[1])))),
        ]
        for spec in self._specs("problem"):  # their own rows, per problem
            parts.append(self._annotate(ANNOTATOR_STAGES[spec.name], problems, **engine_stage,
                                        max_in_flight=per_problem)
                         | f"{spec.stage_label}Piece" >> beam.MapTuple(
                             lambda pid, piece: (pid, ("piece", piece))))
        usable = (solutions
                  | "Usable" >> beam.Filter(lambda s: not s.truncated)
                  | "SpreadSolutions" >> PackedReshuffle())
        joined = {"solution": solutions | "KeySolutions" >> beam.Map(lambda s: (s.key, s))}
        labels: dict = {}  # name -> KV((problem_id, i), Labels), every per-solution annotator
        for spec in self._specs("solution"):
            fn_class = ANNOTATOR_STAGES[spec.name]
            if spec.config(m) is None:
                labels[spec.name] = problems.pipeline | f"No{spec.stage_label}" >> beam.Create([])
                continue
            labels[spec.name] = self._annotate(
                fn_class, fn_class.inputs(self, usable, labels), **engine_stage,
                max_in_flight=fn_class.in_flight(self))
        joined.update(labels)
        assembled = (joined
                     | "JoinSolutionLabels" >> PackedCoGroupByKey()
                     | "AssembleTrajectories" >> beam.ParDo(AssembleTrajectoriesFn(m)))
        parts.append(assembled)
        for spec in ANNOTATORS.values():  # after consensus: they read the assembled rows
            if spec.after_consensus and spec.config(m) is not None:
                parts.extend(self._after_consensus(spec, assembled, engine_stage))
        # The provenance every trajectory row shares, for the sink (see AssembleTrajectoriesFn).
        self.provenance = (identities
                           | "EngineIdentities" >> beam.combiners.ToDict()
                           | "Provenance" >> beam.Map(
                               lambda found: st.StageContext(m).provenance(found)))
        return (tuple(parts)
                | "GroupByProblem" >> PackedGroupByKey()
                | "MergeProblems" >> beam.ParDo(MergeProblemsFn(
                    **common, total=self.total, close_progress=self.close_progress))
                .with_outputs(MergeProblemsFn.PROBLEMS, main="rows"))
