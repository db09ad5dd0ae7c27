"""Hosting engines for synchronous callers (Beam DoFns, tests, the CLI).

An :class:`EngineHost` owns one event loop on a daemon thread and the engines created in it.
Synchronous code submits coroutines with :meth:`EngineHost.submit` (a concurrent future) or
:meth:`EngineHost.run` (blocking); coroutines from many callers interleave in the one loop, so
one engine serves many problems at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from steplabel.schemas.config import EngineConfig

T = TypeVar("T")


async def create_engine(config: EngineConfig):
    """Build the engine ``config.kind`` names, inside the running event loop."""
    if config.kind == "vllm":
        from steplabel.engines.vllm_engine import VLLMEngine

        return await VLLMEngine.start(config)
    if config.kind == "openai":
        from steplabel.engines.openai_engine import OpenAICompletionsEngine

        return OpenAICompletionsEngine(config)
    if config.kind == "custom":
        import importlib
        import inspect

        module_name, _, attr = (config.factory or "").partition(":")
        engine = getattr(importlib.import_module(module_name), attr)(config)
        return await engine if inspect.isawaitable(engine) else engine
    raise ValueError(f"engine kind must be vllm, openai or custom, got {config.kind!r}")


class EngineHost:
    """An event loop on its own thread, with engines keyed by their config."""

    def __init__(self, name: str = "steplabel-engines") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._engines: dict[EngineConfig, Any] = {}
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def engine(self, config: EngineConfig, factory: Callable[[EngineConfig], Awaitable[Any]] | None = None):
        """The engine for ``config``, created on first use (one per distinct config)."""
        with self._lock:
            if config not in self._engines:
                self._engines[config] = self.run((factory or create_engine)(config))
            return self._engines[config]

    def add_engine(self, config: EngineConfig, engine: Any) -> None:
        with self._lock:
            self._engines[config] = engine

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        async def in_loop(function):
            function()

        for engine in engines:
            shutdown = getattr(engine, "shutdown", None)
            if shutdown is not None:
                try:
                    self.run(in_loop(shutdown), timeout=60)
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            aclose = getattr(engine, "aclose", None)
            if aclose is not None:
                try:
                    self.run(aclose(), timeout=10)
                except Exception:  # noqa: BLE001
                    pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
