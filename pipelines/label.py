"""The Beam stage that labels problems: engines hosted once per worker, many problems in flight.

:class:`LabelProblemsFn` keeps up to ``max_in_flight`` problems running at once on the worker's
engine host (one event loop thread, one engine per model), so the engine's continuous batching
always has work from many problems. Finished problems are checkpointed before their rows are
emitted; on a rerun, checkpointed problems are replayed instead of recomputed.

The per-item work is pluggable: ``make_labeler(manifest, engines)`` builds, once per worker, an
object whose ``async label(item)`` returns a :class:`~steplabel.annotators.job.ProblemOutputs`,
and ``key_of(item)`` names an item's checkpoint. The defaults label problems
(:class:`~steplabel.annotators.job.ProblemLabeler`); ``steplabel evaluate`` plugs in its
first-error predictor.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import sys
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from steplabel.annotators.job import Engines, ProblemLabeler
from steplabel.pipelines import storage

log = logging.getLogger(__name__)


class MeteredEngine:
    """An engine that counts what it served (for live progress); otherwise transparent."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.model_id = engine.model_id
        self.rollouts = 0
        self.generated_tokens = 0

    async def generate(self, request):
        result = await self._engine.generate(request)
        self.rollouts += len(result.texts)
        self.generated_tokens += result.total_generated_tokens
        return result

    def __getattr__(self, name):
        return getattr(self._engine, name)


def problem_labeler(manifest, engines: Engines) -> ProblemLabeler:
    """The default ``make_labeler``: the ``run`` job's per-problem workflow."""
    return ProblemLabeler(manifest, engines)


def problem_key(problem) -> str:
    """The default ``key_of``: a problem's checkpoint is named by its id."""
    return problem.problem_id


class _WorkerEngines:
    """What one worker process shares across bundles and threads: engines and the labeler."""

    def __init__(self, manifest, make_labeler=problem_labeler) -> None:
        from steplabel.engines.host import EngineHost

        self.host = EngineHost()
        models = manifest.models
        metered: dict[int, MeteredEngine] = {}

        def engine(config):
            raw = self.host.engine(config)
            return metered.setdefault(id(raw), MeteredEngine(raw))

        self.engines = Engines(policy=engine(models.policy),
                               completer=engine(models.completer_model),
                               judge=engine(models.judge_model))
        self.metered = list(metered.values())
        self._reported: dict[str, int] = {}
        self._reported_lock = threading.Lock()
        self.labeler = make_labeler(manifest, self.engines)

    def served(self) -> tuple[int, int]:
        return (sum(e.rollouts for e in self.metered),
                sum(e.generated_tokens for e in self.metered))

    def engine_counter_deltas(self) -> dict[str, int]:
        """What the engines that keep :class:`~steplabel.engines.openai_engine.EngineCounters`
        (``counters``) did since the last call: ``engine_requests``, ``engine_attempts``,
        ``engine_retries``, ``engine_failures`` and ``engine_retry_<reason>``, for Beam counters
        (stats.json)."""
        totals: dict[str, int] = {}
        for engine in self.metered:
            counters = getattr(engine, "counters", None)
            if counters is None:
                continue
            for name in ("requests", "attempts", "retries", "failures"):
                totals[f"engine_{name}"] = totals.get(f"engine_{name}", 0) + getattr(
                    counters, name, 0)
            for reason, count in getattr(counters, "retry_reasons", {}).items():
                key = "engine_retry_" + re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")
                totals[key] = totals.get(key, 0) + count
        with self._reported_lock:
            deltas = {k: v - self._reported.get(k, 0) for k, v in totals.items()}
            self._reported = totals
        return {k: v for k, v in deltas.items() if v}


class Progress:
    """Problems done of total, rollouts/s, tokens/s and ETA, printed to stderr at most every
    ``interval_s`` seconds."""

    def __init__(self, total: int | None, *, interval_s: float = 5.0, stream=None,
                 served=None) -> None:
        self.total = total
        self.served = served  # () -> (rollouts, generated tokens) served by the engines so far
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.last_print = 0.0
        self.done = self.resumed = self.rollouts = self.tokens = 0
        self._lock = threading.Lock()

    def update(self, *, resumed: bool = False, force: bool = False) -> None:
        with self._lock:
            self.done += not force
            self.resumed += resumed and not force
            if self.served is not None:
                self.rollouts, self.tokens = self.served()
            now = time.monotonic()
            finished = self.total is not None and self.done >= self.total
            if now - self.last_print >= self.interval_s or finished or force:
                self.last_print = now
                print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-6, (now or time.monotonic()) - self.started)
        computed = self.done - self.resumed
        rate = computed / elapsed
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", ETA {max(0.0, (self.total - self.done) / rate):.0f}s"
        return (f"[steplabel] problems {self.done}{total} ({self.resumed} resumed), "
                f"{self.rollouts / elapsed:.1f} rollouts/s, {self.tokens / elapsed:.0f} "
                f"tokens/s, {elapsed:.1f}s elapsed{eta}")


_PROGRESS: dict[str, Progress] = {}

#: After a problem raised (a dead engine, a bug): how long the other in-flight problems get to
#: finish and be checkpointed before the bundle fails, in seconds.
SETTLE_TIMEOUT_S = 30.0


class LabelProblemsFn(beam.DoFn):
    """Problems in; tagged rows out (one tag per output of :mod:`steplabel.schemas.records`).

    ``make_labeler`` and ``key_of`` (module-level callables, so the DoFn pickles) replace the
    per-item work and the checkpoint key; the labeler's outputs name the tags.
    """

    def __init__(self, manifest, *, out_dir: str, max_in_flight: int,
                 total: int | None = None, engines_handle: shared.Shared | None = None,
                 make_labeler=problem_labeler, key_of=problem_key) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self.max_in_flight = max_in_flight
        self.total = total
        self.make_labeler = make_labeler
        self.key_of = key_of
        self._handle = engines_handle or shared.Shared()

    def setup(self) -> None:
        manifest, make_labeler = self.manifest, self.make_labeler
        self._worker = self._handle.acquire(lambda: _WorkerEngines(manifest, make_labeler),
                                            tag=manifest.hash)
        self._progress = _PROGRESS.setdefault(
            f"{self.out_dir}|{manifest.hash}", Progress(self.total, served=self._worker.served))

    def start_bundle(self) -> None:
        self._pending: dict[concurrent.futures.Future, str] = {}

    def _emit(self, problem_id: str, rows: dict, counters: dict, *, resumed: bool):
        for name, value in counters.items():
            Metrics.counter("steplabel", name).inc(value)
        self._count_engine_work()
        Metrics.counter("steplabel", "problems_resumed" if resumed else "problems_labelled").inc()
        self._progress.update(resumed=resumed)
        for output, output_rows in rows.items():
            for row in output_rows:
                yield output, row

    def _finished(self, future: concurrent.futures.Future, problem_id: str):
        outputs = future.result()  # engine failures are already dead-letter rows
        rows = {k: list(v) for k, v in outputs.rows.items()}
        counters = dict(outputs.counters)
        storage.save_checkpoint(self.out_dir, problem_id, rows, counters)
        yield from self._emit(problem_id, rows, counters, resumed=False)

    def _count_engine_work(self) -> None:
        for name, value in self._worker.engine_counter_deltas().items():
            Metrics.counter("steplabel", name).inc(value)

    def _drain(self, *, until: int):
        while len(self._pending) > until:
            done, _ = concurrent.futures.wait(self._pending, timeout=self._progress.interval_s,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:  # long problems: still show that the engines are working
                self._progress.update(force=True)
                continue
            failed = None
            for future in sorted(done, key=lambda f: self._pending[f]):
                problem_id = self._pending.pop(future)
                if future.exception() is not None:
                    failed = failed or future
                    continue
                yield from self._finished(future, problem_id)
            if failed is not None:
                self._fail(failed)

    def _fail(self, failed: concurrent.futures.Future) -> None:
        """A problem's labelling raised instead of returning rows: not a per-problem engine
        failure (those are dead-letter rows already) but a dead engine
        (:class:`~steplabel.engines.base.EngineDiedError`) or a bug. Fail loudly, never
        dead-letter: first checkpoint every other in-flight problem that still finishes (with a
        dead engine they fail at once), so that the rerun loses no finished work; then raise."""
        pending, self._pending = self._pending, {}
        done, not_done = concurrent.futures.wait(pending, timeout=SETTLE_TIMEOUT_S)
        saved = 0
        for future in done:
            if future.exception() is None:
                outputs = future.result()
                storage.save_checkpoint(self.out_dir, pending[future],
                                        {k: list(v) for k, v in outputs.rows.items()},
                                        dict(outputs.counters))
                saved += 1
        for future in not_done:
            future.cancel()
        error = failed.exception()
        log.error("labelling stopped: %s: %s (%d in-flight problems checkpointed, %d cancelled)",
                  type(error).__name__, error, saved, len(not_done))
        raise error

    def process(self, problem):
        key = self.key_of(problem)
        checkpoint = storage.load_checkpoint(self.out_dir, key)
        if checkpoint is not None:
            for output, row in self._emit(key, checkpoint["rows"],
                                          checkpoint.get("counters", {}), resumed=True):
                yield beam.pvalue.TaggedOutput(output, row)
            return
        future = self._worker.host.submit(self._worker.labeler.label(problem))
        self._pending[future] = key
        for output, row in self._drain(until=self.max_in_flight - 1):
            yield beam.pvalue.TaggedOutput(output, row)

    def finish_bundle(self):
        for output, row in self._drain(until=0):
            yield beam.pvalue.TaggedOutput(output, GlobalWindows.windowed_value(row))
        self._count_engine_work()
