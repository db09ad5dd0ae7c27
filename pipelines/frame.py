"""One frame for every Beam job of steplabel (``run``, ``evaluate``):

    prepare the directory → build the graph → run it → collect counters → finalize (which
    writes ``COMPLETED`` last, when the job reconciles)

Each job supplies its own steps; the frame owns the order, the runner, the timing and the
counters, so the two commands cannot drift apart.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

log = logging.getLogger(__name__)


def make_pipeline(runner: str, options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on ``runner`` (``runner.runner`` of a manifest: local, portable, ...)."""
    if runner == "local":
        # Beam's FnApiRunner directly: the DirectRunner would first try to download Prism.
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


@dataclass(frozen=True)
class Framed:
    """What :func:`run_framed` returns: the finalize step's result and the wall time."""

    result: Any
    seconds: float


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` from this process's own symbols; None elsewhere (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_memory() -> None:
    """Collect the finished pipeline's garbage and hand the freed heap back to the system
    (glibc keeps it otherwise), so that a job of many pipelines (the local runner's waves) peaks
    at one pipeline's memory rather than one pipeline's plus the heap the earlier ones left."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def pipeline_counters(result) -> dict[str, int]:
    """Beam counters of a finished pipeline, by name (committed values where the runner has
    them, else attempted), summed over namespaces and steps; empty when the runner reports
    none."""
    counters: dict[str, int] = {}
    try:
        for counter in result.metrics().query()["counters"]:
            name = counter.key.metric.name
            value = counter.committed if counter.committed is not None else counter.attempted
            counters[name] = counters.get(name, 0) + value
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        log.warning("the runner did not report metrics; the job's files have no Beam counters")
    return dict(sorted(counters.items()))


def run_framed(*, runner: str, options: PipelineOptions, prepare: Callable[[], None],
               build: Callable[[beam.Pipeline], Any] | list[Callable[[beam.Pipeline], Any]],
               finalize: Callable[[dict[str, int]], Any],
               on_failure: Callable[[BaseException], None] | None = None) -> Framed:
    """Run one job: ``prepare()`` the directory, ``build(pipeline)`` on ``runner`` (as
    :func:`make_pipeline` takes it) with ``options``, run it to the end, then
    ``finalize(counters)``. ``build`` may be a list: one pipeline each,
    in order (the local runner's waves, then their assembly), their counters summed. A pipeline
    failure goes to ``on_failure`` (which may raise a clearer error) and is re-raised."""
    started = time.perf_counter()
    prepare()
    counters: dict[str, int] = {}
    for step in build if isinstance(build, list) else [build]:
        pipeline = make_pipeline(runner, options)
        step(pipeline)
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as exc:
            if on_failure is not None:
                on_failure(exc)
            raise
        for name, value in pipeline_counters(result).items():
            counters[name] = counters.get(name, 0) + value
        del pipeline, result
        release_memory()
    finished = finalize(dict(sorted(counters.items())))
    return Framed(finished, time.perf_counter() - started)
