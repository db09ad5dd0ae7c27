"""Typed, validated configuration, and a strict converter from plain mappings (YAML, CLI).

Dicts exist only at the boundary: :func:`from_mapping` turns them into frozen dataclasses once,
rejecting unknown keys and wrong types with an error that names the field path and the value,
e.g. ``models.policy.top_p must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the value."""


def _fail(path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{path or '<root>'}: {message}")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [arg for arg in args if arg is not type(None)]
        if len(alternatives) == 1:  # an optional section or value: its own error, not the union's
            return _convert(alternatives[0], value, path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        _fail(path, f"got {value!r:.60}, which matches none of the allowed types "
                    f"({'; '.join(errors)})")
    if origin is Literal:
        if value not in args:
            _fail(path, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            _fail(path, f"must be a mapping, got {type(value).__name__} {value!r:.60}")
        # A config family (``grader``: one config class per grader name) picks its member.
        variant = getattr(tp, "config_variant", None)
        if variant is not None:
            tp = variant(value, path)
        return from_mapping(tp, value, path=path)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            _fail(path, f"must be a list, got {type(value).__name__} {value!r:.60}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            _fail(path, f"must be a mapping, got {type(value).__name__} {value!r:.60}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(key_tp, k, f"{path}.{k}"): _convert(val_tp, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, f"must be a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            _fail(path, f"must be null, got {value!r}")
        return None
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def from_mapping(cls: type, data: Mapping[str, Any], *, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        _fail(
            path,
            f"unknown key(s) {', '.join(where + k for k in unknown)}; "
            f"allowed: {', '.join(sorted(fields))}",
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        _fail(path, f"missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # Validation inside __post_init__ names the field only; prefix the path.
        if path and not str(exc).startswith(path):
            raise ConfigError(f"{path}.{exc}") from None
        raise


#: ``dataclasses.field(metadata={OMIT_DEFAULT: True})``: :func:`to_mapping` omits the field while
#: it holds its default.
OMIT_DEFAULT = "omit_default"


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def to_mapping(obj: Any) -> Any:
    """The inverse of :func:`from_mapping`: plain dicts/lists, JSON- and YAML-ready."""
    if dataclasses.is_dataclass(obj):
        # A field marked OMIT_DEFAULT is left out at its default, so that adding an optional
        # setting keeps the canonical form (and the manifest hash) of manifests without it.
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get(OMIT_DEFAULT) and getattr(obj, f.name) == _default(f))}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def check(condition: bool, field_name: str, message: str, value: Any) -> None:
    """Raise ``ConfigError('<field> <message>, got <value>')`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{field_name} {message}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Engines and sampling


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one stage. ``stop`` strings end a sample and are not returned."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(0.0 <= self.temperature <= 5.0, "temperature", "must be in [0, 5]", self.temperature)
        check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]", self.top_p)
        check(self.max_tokens >= 1, "max_tokens", "must be >= 1", self.max_tokens)


@dataclass(frozen=True)
class EngineConfig:
    """Which model to load and how.

    ``kind``: ``vllm`` (in-process), ``openai`` (an OpenAI-compatible completions endpoint), or
    ``custom`` (``factory`` names a ``module:callable`` that builds an engine from this config:
    the plug-in point for other backends and for scripted engines in tests and benchmarks).
    ``model`` is ``"embedded"`` (the bundled SmolLM2-135M-Instruct), a local folder, or a model
    id already in the local Hugging Face cache. CPU-only settings (``kv_cache_space_gib``,
    ``cpu_threads_bind``) are applied automatically on machines without a GPU unless set here.
    """

    kind: Literal["vllm", "openai", "custom"] = "vllm"
    model: str = "embedded"
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    max_model_len: int = 2048
    enable_prefix_caching: bool = True
    enforce_eager: bool | None = None
    kv_cache_space_gib: float | None = None
    cpu_threads_bind: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    #: KV-cache block size in tokens, the grain of prefix caching. None: 32 on CPU (vLLM's CPU
    #: default of 128 caches a 120-token question not at all), vLLM's default on GPUs.
    block_size: int | None = None
    #: Fraction of each GPU's memory this engine may take, in (0, 1]. None: automatic, 0.9
    #: (vLLM's default) for a model alone on its GPUs, and that 0.9 shared among the vLLM models
    #: that run in one worker process (:func:`share_gpu_memory`).
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    #: Engine replicas, one per ``tensor_parallel_size`` GPUs (vLLM data parallelism inside one
    #: engine). ``"auto"``: every GPU the worker sees // ``tensor_parallel_size``; 1 without GPUs.
    data_parallel_size: int | Literal["auto"] = "auto"
    # openai engine
    base_url: str | None = None
    api_key_env: str | None = None
    tokenizer: str | None = None
    request_timeout_s: float = 120.0
    max_retries: int = 6
    retry_max_wait_s: float = 30.0
    max_concurrency: int = 64
    # custom engine: "module:callable" taking this config and returning an engine
    factory: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.model), "model", "must be non-empty", self.model)
        check(self.max_model_len >= 64, "max_model_len", "must be >= 64", self.max_model_len)
        if self.kv_cache_space_gib is not None:
            check(self.kv_cache_space_gib > 0, "kv_cache_space_gib", "must be > 0",
                  self.kv_cache_space_gib)
        if self.gpu_memory_utilization is not None:
            check(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                  "must be in (0, 1] (or null: automatic)", self.gpu_memory_utilization)
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1",
              self.tensor_parallel_size)
        if self.data_parallel_size != "auto":
            check(self.data_parallel_size >= 1, "data_parallel_size", "must be >= 1 or 'auto'",
                  self.data_parallel_size)
        if self.max_num_seqs is not None:
            check(self.max_num_seqs >= 1, "max_num_seqs", "must be >= 1", self.max_num_seqs)
        if self.block_size is not None:
            check(self.block_size in (16, 32, 64, 128, 256), "block_size",
                  "must be one of 16, 32, 64, 128, 256", self.block_size)
        if self.max_num_batched_tokens is not None:
            check(self.max_num_batched_tokens >= self.max_model_len, "max_num_batched_tokens",
                  "must be >= max_model_len (chunked prefill is off)", self.max_num_batched_tokens)
        check(self.request_timeout_s > 0, "request_timeout_s", "must be > 0",
              self.request_timeout_s)
        check(self.max_retries >= 0, "max_retries", "must be >= 0", self.max_retries)
        check(self.retry_max_wait_s > 0, "retry_max_wait_s", "must be > 0", self.retry_max_wait_s)
        check(self.max_concurrency >= 1, "max_concurrency", "must be >= 1", self.max_concurrency)
        if self.kind == "custom":
            check(bool(self.factory) and ":" in (self.factory or ""), "factory",
                  "must be 'module:callable' when kind is 'custom'", self.factory)
        if self.kind == "openai":
            check(bool(self.base_url), "base_url", "is required when kind is 'openai'",
                  self.base_url)


# --------------------------------------------------------------------------------------------
# Engines on GPUs: replicas per worker, memory per model

#: What one vLLM engine takes of each of its GPUs when nothing is set (vLLM's own default).
#: Models sharing a GPU share this budget: it leaves room for each engine process's CUDA context.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
#: The least share of a GPU an automatically sized engine gets (weights and a KV cache must fit).
MIN_GPU_MEMORY_SHARE = 0.05


def looks_like_local_path(model: str) -> bool:
    """A model (or tokenizer) name that can only be a local path: absolute, ``~``, ``./``,
    ``../``, or more than one ``/`` (a hub id is ``owner/name``)."""
    return (model.startswith(("/", "~", "./", "../", ".\\")) or model in (".", "..")
            or model.count("/") > 1 or "\\" in model)


def data_parallel_size_for(config: EngineConfig, gpus: int) -> int:
    """Engine replicas ``config`` runs on a worker that sees ``gpus`` GPUs (0: none, CPU).

    ``"auto"``: one replica per ``tensor_parallel_size`` GPUs (``gpus // tp``), 1 without
    GPUs and for engines that are not ``vllm``. An explicit size that needs more GPUs than the
    worker sees is refused, so is a ``tensor_parallel_size`` larger than the GPUs seen."""
    if config.kind != "vllm":
        return 1
    tp = config.tensor_parallel_size
    if gpus <= 0:
        if config.data_parallel_size not in ("auto", 1):
            raise ConfigError(f"data_parallel_size {config.data_parallel_size} needs GPUs, but "
                              "this worker sees none; use 'auto' or 1")
        return 1
    if tp > gpus:
        raise ConfigError(f"tensor_parallel_size {tp} needs {tp} GPUs, but this worker sees "
                          f"{gpus}")
    if config.data_parallel_size == "auto":
        return gpus // tp
    needed = config.data_parallel_size * tp
    if needed > gpus:
        raise ConfigError(
            f"data_parallel_size {config.data_parallel_size} x tensor_parallel_size {tp} needs "
            f"{needed} GPUs, but this worker sees {gpus}; use 'auto' (one replica per "
            f"{tp} GPU(s)) or a smaller size")
    return config.data_parallel_size


def share_gpu_memory(configs: Mapping[str, EngineConfig], *,
                     pools: Mapping[str, str] | None = None) -> dict[str, EngineConfig]:
    """Per role, its engine config with ``gpu_memory_utilization`` set.

    Roles in one *pool* (``pools[role]``; roles without an entry share the default pool) run
    in one worker process, and every vLLM engine there starts on the same GPUs (data parallel
    replica ``r`` of each takes GPUs ``r*tp ...``), so the distinct vLLM configs of a pool share
    each GPU. Explicit values are kept; the automatic ones (``None``) split what the explicit
    ones leave of :data:`DEFAULT_GPU_MEMORY_UTILIZATION` equally. A model alone in its pool
    gets the whole default. Refused with a :class:`ConfigError`: explicit values of models
    sharing a pool that sum to more than the default budget, or an automatic share below
    :data:`MIN_GPU_MEMORY_SHARE`. Roles naming one config keep naming one (resolved) config.
    """
    pools = pools or {}
    by_pool: dict[str, list[EngineConfig]] = {}
    for role, config in configs.items():
        members = by_pool.setdefault(pools.get(role, ""), [])
        if config.kind == "vllm" and config not in members:
            members.append(config)
    resolved: dict[tuple[str, EngineConfig], EngineConfig] = {}
    for pool, members in by_pool.items():
        shares = _pool_shares(members, pool, configs, pools)
        for config, share in zip(members, shares):
            resolved[(pool, config)] = dataclasses.replace(config, gpu_memory_utilization=share)
    return {role: resolved.get((pools.get(role, ""), config), config)
            for role, config in configs.items()}


def _pool_shares(members: list[EngineConfig], pool: str, configs: Mapping[str, EngineConfig],
                 pools: Mapping[str, str]) -> list[float]:
    budget = DEFAULT_GPU_MEMORY_UTILIZATION
    if len(members) == 1:
        return [members[0].gpu_memory_utilization or budget]

    def names(config: EngineConfig) -> str:
        roles = [r for r, c in configs.items() if c == config and pools.get(r, "") == pool]
        return "/".join(roles) + f" ({config.model})"

    explicit = [c for c in members if c.gpu_memory_utilization is not None]
    automatic = [c for c in members if c.gpu_memory_utilization is None]
    taken = sum(c.gpu_memory_utilization for c in explicit)
    where = f" in worker pool {pool!r}" if pool else ""
    if taken > budget + 1e-9:
        listed = " + ".join(f"{names(c)} {c.gpu_memory_utilization}" for c in explicit)
        raise ConfigError(
            f"models.*.gpu_memory_utilization: {len(members)} vLLM models share each GPU of one "
            f"worker{where}, and {listed} = {taken:.3g} is more than one engine's budget "
            f"{budget}; lower them, or leave them unset (null) to share {budget} automatically")
    if not automatic:
        return [c.gpu_memory_utilization for c in members]
    share = int((budget - taken) / len(automatic) * 1000) / 1000  # rounded down: never over
    if share < MIN_GPU_MEMORY_SHARE:
        raise ConfigError(
            f"models.*.gpu_memory_utilization: {len(members)} vLLM models share each GPU of one "
            f"worker{where}; the explicit values ({taken:.3g}) leave {share:.3g} each to "
            f"{', '.join(names(c) for c in automatic)}, less than {MIN_GPU_MEMORY_SHARE}")
    return [c.gpu_memory_utilization if c.gpu_memory_utilization is not None else share
            for c in members]
