"""The one generation protocol that annotators see.

An engine takes a :class:`GenerationRequest` (prompt text, ``n``, seed, sampling settings) and
returns a :class:`GenerationResult` (``n`` texts with their generated-token counts and finish
reasons, plus prompt-token and prefix-cache counts). Everything is asynchronous so that many
problems can be in flight at once against one engine: continuous batching does the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable


class EngineError(RuntimeError):
    """A generation request failed for good (after any retries the engine makes)."""


class ContextLengthError(EngineError):
    """The prompt does not fit in the model's context window."""


class EngineDiedError(RuntimeError):
    """The engine itself is gone (its process died): no request can succeed any more.

    Deliberately *not* an :class:`EngineError`. An ``EngineError`` is one request's failure and
    sends its problem to the dead letter; a dead engine is not the problem's fault, and treating
    it so would flood the dead letter with every remaining problem. The job stops instead, with
    this message; finished problems are checkpointed, and rerunning the same command resumes.
    """


@dataclass(frozen=True)
class GenerationRequest:
    """One sampling request.

    ``seed`` makes the request reproducible: the same prompt, seed and settings give the same
    texts (exactly in float32 on vLLM CPU). ``stop`` strings are not included in the texts.
    ``choices``, when given, constrains every sample to be exactly one of these strings
    (constrained decoding: vLLM's structured outputs ``choice``); the engine still chooses.
    ``regex``, when given, constrains every sample to match this regular expression (vLLM's
    structured outputs ``regex``): a finished sample matches it whole, one cut off at
    ``max_tokens`` is a prefix of a match. At most one of ``choices`` and ``regex``.
    """

    prompt: str
    n: int = 1
    seed: int | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    regex: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise ValueError(f"prompt must be a non-empty string, got {self.prompt!r:.40}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "choices", tuple(self.choices))
        if any(not isinstance(c, str) or not c for c in self.choices):
            raise ValueError(f"choices must be non-empty strings, got {self.choices!r:.80}")
        if self.regex is not None:
            if not isinstance(self.regex, str) or not self.regex or "\x00" in self.regex:
                raise ValueError(f"regex must be a non-empty string without NUL, got "
                                 f"{self.regex!r:.80}")
            if self.choices:
                raise ValueError("choices and regex are exclusive: give at most one")
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None


@dataclass(frozen=True)
class GenerationResult:
    """The ``n`` samples of one request.

    ``generated_tokens[i]`` counts the tokens of ``texts[i]``; ``finish_reasons[i]`` is
    ``"stop"`` (EOS or a stop string) or ``"length"`` (hit ``max_tokens``).
    ``prompt_tokens`` is the prompt's length in tokens and ``cached_prompt_tokens`` how many of
    them were served from the prefix cache (0 when the engine cannot tell). The cache count
    depends on what the engine served before, so it is a run metric, never a row value.
    """

    texts: tuple[str, ...]
    generated_tokens: tuple[int, ...]
    finish_reasons: tuple[str, ...]
    prompt_tokens: int
    cached_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        if not (len(self.texts) == len(self.generated_tokens) == len(self.finish_reasons)):
            raise ValueError("texts, generated_tokens and finish_reasons must have equal length")

    @property
    def total_generated_tokens(self) -> int:
        return sum(self.generated_tokens)


@dataclass
class CostMeter:
    """Accumulates what the requests made for one record cost: requests, rollouts, prompt and
    generated tokens. These follow from the manifest alone (the prompts, ``n``, the seeded
    texts), so they go on the record's row (:class:`steplabel.schemas.rows.Cost`).

    Prefix-cache hits (``GenerationResult.cached_prompt_tokens``) are deliberately not here:
    they depend on the order the engine saw requests in (``max_in_flight``, waves, runner), so
    they are a measurement of the run, counted per engine role by the pipeline
    (``pipelines/label.py``) into the run's metrics, never into a row.
    """

    requests: int = 0
    rollouts: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def add(self, result: GenerationResult) -> None:
        self.requests += 1
        self.rollouts += len(result.texts)
        self.prompt_tokens += result.prompt_tokens
        self.generated_tokens += result.total_generated_tokens

    def merge(self, other: "CostMeter") -> None:
        self.requests += other.requests
        self.rollouts += other.rollouts
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens

    def as_dict(self) -> dict[str, int]:
        """The row's cost record (the fields of :class:`steplabel.schemas.rows.Cost`)."""
        return {
            "requests": self.requests,
            "rollouts": self.rollouts,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
        }


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@runtime_checkable
class GenerationEngine(Protocol):
    """What annotators may use of a model. Implementations: vLLM, OpenAI-compatible, fakes."""

    #: Model identity recorded in provenance (name or path, and revision/hash when known).
    model_id: str

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Sample ``request.n`` continuations of ``request.prompt``."""
        ...

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        """Render chat messages to a prompt string with the model's own chat template."""
        ...

    def token_pieces(self, text: str) -> list[str]:
        """Split ``text`` into consecutive pieces, one per token, that concatenate to ``text``."""
        ...


@dataclass(frozen=True)
class EngineInfo:
    """Provenance of an engine, recorded on every record it helped produce."""

    kind: str
    model_id: str
    weights_sha256: str | None = None
    engine_version: str | None = None
    settings: dict = field(default_factory=dict)
