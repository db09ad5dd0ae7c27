"""Engines: one pool per worker process, kept by one ``shared.Shared`` handle.

An :class:`EnginePool` holds the engines of a worker process, keyed by the model's
``EngineConfig``: stages naming the same model share one engine on one machine. The engine
starts the first time a key needs work (a fully checkpointed stage never starts it). The
stages (:mod:`steplabel.pipelines.stages`) reach the pool with :func:`_acquire_pool`.

:class:`IdentifyEngines` starts each role's engine in the pool (or reads what an earlier attempt
recorded under ``_work/engines/``) for the dataset's provenance.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import threading

import apache_beam as beam
from apache_beam.utils import shared

from steplabel.annotators import stages as st
from steplabel.dataset import storage
from steplabel.engines.host import EngineHost, create_engine
from steplabel.pipelines import logs
from steplabel.pipelines.checkpoints import StageCheckpoints
from steplabel.pipelines.label import (
    _PROGRESS,
    EngineClock,
    MeteredEngine,
    Progress,
    engine_counter_totals,
)
from steplabel.pipelines.runners import declare_engine_resources

log = logging.getLogger(__name__)

#: Where :class:`IdentifyEnginesFn` records each role's engine identity, under ``_work``.
ENGINES_DIR = "engines"


class EnginePool:
    """The engines of one worker process, keyed by ``EngineConfig``, on one event loop.

    Engines start on first use (:meth:`engine`); :meth:`discard` drops a dead one, so that the
    next use (the retried bundle) starts a new one. One ``MeteredEngine`` per (config, role)
    counts what each role asked for; the raw engine is shared by every role naming its config.
    """

    def __init__(self) -> None:
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
        totals = engine_counter_totals(engines, self.clock)
        with self._lock:
            deltas = {k: v - self._reported.get(k, 0) for k, v in totals.items()}
            self._reported = totals
        return {k: v for k, v in deltas.items() if v}


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
    return any(progress._bars for progress in list(_PROGRESS.values()))


def _acquire_pool(handle: shared.Shared) -> EnginePool:
    return handle.acquire(EnginePool, tag="steplabel-engine-pool")


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

