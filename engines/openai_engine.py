"""Any OpenAI-compatible ``/v1/completions`` endpoint, for example a fleet of vLLM servers.

The engine sends one HTTP request per :class:`GenerationRequest` (``n`` samples in one call) and
retries only the failures that a later attempt can cure:

- retried (transient): connection refused or reset, read errors, no complete answer within
  ``request_timeout_s``, a 200 whose body is cut short or is not JSON, HTTP 408, 429 and 5xx.
  When the attempts run out: :class:`EngineError` naming the last cause and the attempt count.
- raised at once (permanent): a 400 saying the prompt is too long (:class:`ContextLengthError`);
  any other HTTP status, such as 400, 401, 404 or 422, and a 200 whose JSON is not a completion
  (:class:`EngineError` quoting the endpoint's message).

Backoff is exponential with full jitter (tenacity's ``wait_random_exponential``): before retry
``k`` the engine sleeps a random time in ``[0, min(retry_max_wait_s, 2**(k-1) s)]``, or the
server's ``Retry-After`` when that is longer, never more than ``retry_max_wait_s``. A request
makes at most ``max_retries + 1`` attempts. Every retry is logged with its reason and counted
in :attr:`OpenAICompletionsEngine.counters`.

Token counts. The completions API reports ``usage.completion_tokens`` for the whole request
only, not per sample. With ``n == 1`` that total is exact. With ``n > 1`` the total (still exact)
is apportioned to the samples: in proportion to each text's length under the local tokenizer
when ``EngineConfig.tokenizer`` is set, else evenly (the counts then differ by at most 1 and
say nothing about which sample is longer). A server that reports no usage at all is counted
with the local tokenizer, or refused with :class:`EngineError` when there is none (costs are
never silently zero). ``usage.prompt_tokens_details.cached_tokens`` gives the prefix-cache hits
when the server reports it (vLLM with ``--enable-prompt-tokens-details``), else 0.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from steplabel.engines.base import (
    ChatMessage,
    ContextLengthError,
    EngineError,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
)
from steplabel.engines.tokens import tokenizer_pieces
from steplabel.schemas.config import ConfigError, EngineConfig

log = logging.getLogger(__name__)

#: Upper end of the jitter window before the first retry, in seconds; it doubles per retry
#: until it reaches ``EngineConfig.retry_max_wait_s``.
FIRST_BACKOFF_WINDOW_S = 1.0

#: HTTP statuses worth another attempt: request timeout, rate limit, and every server error.
_RETRYABLE_STATUSES = frozenset({408, 429})

#: How servers word "the prompt does not fit": vLLM ("This model's maximum context length is
#: 2048 tokens...", "The prompt (total length 3000) is too long to fit into the model (context
#: length 2048)", "Input prompt (N tokens) is too long...") and OpenAI ("context_length_exceeded").
_CONTEXT_LENGTH_RE = re.compile(
    r"context[ _]length|maximum context|prompt[^.]{0,60}too long|input[^.]{0,60}too long"
    r"|too many tokens",
    re.IGNORECASE,
)

#: Longest excerpt of an error body quoted in an exception message.
_MAX_QUOTED_CHARS = 500


@dataclass
class EngineCounters:
    """What the engine did, for benchmarks and fault-injection reports.

    ``attempts`` counts HTTP requests sent, ``retries`` the attempts that followed a transient
    failure, ``failures`` the requests that raised (after retries, or at once for permanent
    errors), ``backoff_s`` the total time slept between attempts (seconds). ``retry_reasons``
    counts retries by cause (``"timeout"``, ``"connection"``, ``"http 503"``, ...).
    """

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    successes: int = 0
    failures: int = 0
    backoff_s: float = 0.0
    retry_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _TransientFailure(Exception):
    """One attempt failed in a way that another attempt may not (internal; never escapes)."""

    def __init__(self, reason: str, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Completion:
    """A validated completions response, samples in ``index`` order."""

    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int


class OpenAICompletionsEngine:
    """The ``openai`` engine: an OpenAI-compatible completions endpoint over HTTP.

    ``config.base_url`` may name the server (``http://host:8000``), its API root
    (``http://host:8000/v1``) or the endpoint itself (``.../v1/completions``). The API key, if
    any, is read from the environment variable named by ``config.api_key_env`` when the engine
    is built; it is never part of the config. ``config.tokenizer`` (a local Hugging Face
    tokenizer folder, or a model id already in the local cache) is needed only by
    :meth:`apply_chat_template`, :meth:`token_pieces` and :meth:`count_tokens`, and improves the
    per-sample token counts; it is loaded on first use.

    At most ``config.max_concurrency`` HTTP requests are in flight at once; requests sleeping in
    backoff do not hold a slot. The HTTP client belongs to the event loop of the first
    :meth:`generate` call: use the engine from one loop (``EngineHost`` does), or from
    successive loops one after another, each ending with :meth:`aclose` (``async with engine:``);
    a call from a second loop while the first still runs raises :class:`EngineError`.
    """

    def __init__(self, config: EngineConfig) -> None:
        if not config.base_url:
            raise ConfigError(
                f"base_url is required for the openai engine, got {config.base_url!r}"
            )
        self.config = config
        self.model_id = config.model
        self.endpoint = completions_url(config.base_url)
        self.counters = EngineCounters()
        self._headers = {"Accept": "application/json"}
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
            if not api_key:
                raise ConfigError(
                    f"api_key_env names the environment variable {config.api_key_env!r}, "
                    "which is not set or empty"
                )
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------
    # Protocol

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Sample ``request.n`` completions; :class:`EngineError` when that fails for good."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": request.prompt,
            "n": request.n,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.choices:  # vLLM's OpenAI-compatible server: constrained decoding
            body["structured_outputs"] = {"choice": list(request.choices)}
        elif request.regex is not None:
            body["structured_outputs"] = {"regex": request.regex}
        if request.seed is not None:
            body["seed"] = request.seed
        self.counters.requests += 1
        try:
            completion = await self._post_with_retries(body, n=request.n)
            result = self._to_result(completion, request)
        except EngineError:
            self.counters.failures += 1
            raise
        self.counters.successes += 1
        return result

    def apply_chat_template(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` with the local tokenizer's chat template."""
        return self._require_tokenizer("apply_chat_template").apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def token_pieces(self, text: str) -> list[str]:
        """Cut ``text`` where its tokens start (local tokenizer); the pieces join to ``text``."""
        return tokenizer_pieces(self._require_tokenizer("token_pieces"), text)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` under the local tokenizer (no special tokens)."""
        tokenizer = self._require_tokenizer("count_tokens")
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def info(self) -> EngineInfo:
        return EngineInfo(
            kind="openai",
            model_id=self.model_id,
            engine_version=f"httpx {httpx.__version__}",
            settings={"endpoint": self.endpoint, "tokenizer": self.config.tokenizer},
        )

    async def aclose(self) -> None:
        """Close the HTTP connections. A later :meth:`generate` opens new ones."""
        client, loop = self._client, self._loop
        self._client, self._semaphore, self._loop = None, None, None
        if client is None or loop is None:
            return
        if loop is asyncio.get_running_loop():
            await client.aclose()
        elif loop.is_running():
            # The client belongs to another thread's loop: close it there.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.aclose(), loop))
        # Otherwise its loop has ended, and its connections can no longer be closed cleanly.

    async def __aenter__(self) -> "OpenAICompletionsEngine":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------
    # HTTP

    def _client_for_running_loop(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            if self._loop is not None and self._loop is not loop and self._loop.is_running():
                raise EngineError(
                    "the openai engine is in use by another running event loop; "
                    "share one loop (EngineHost) or build one engine per loop"
                )
            # A client from a finished loop holds connections nobody can use again: replace it
            # (close it with aclose() before its loop ends to release them cleanly).
            timeout = self.config.request_timeout_s
            limits = httpx.Limits(
                max_connections=self.config.max_concurrency,
                max_keepalive_connections=self.config.max_concurrency,
            )
            self._client = httpx.AsyncClient(
                headers=self._headers, timeout=httpx.Timeout(timeout), limits=limits
            )
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            self._loop = loop
        assert self._semaphore is not None
        return self._client, self._semaphore

    async def _post_with_retries(self, body: Mapping[str, Any], *, n: int) -> _Completion:
        max_attempts = self.config.max_retries + 1
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TransientFailure),
            stop=stop_after_attempt(max_attempts),
            wait=self._backoff_s,
            before_sleep=self._log_retry,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    return await self._post_once(body, n=n)
        except _TransientFailure as exc:
            raise EngineError(
                f"completions request to {self.endpoint} failed after {attempts} attempt(s) "
                f"(max_retries={self.config.max_retries}); last cause: {exc}"
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post_once(self, body: Mapping[str, Any], *, n: int) -> _Completion:
        client, semaphore = self._client_for_running_loop()
        timeout = self.config.request_timeout_s
        async with semaphore:
            self.counters.attempts += 1
            try:
                # httpx's timeout bounds each network operation; this bounds the whole attempt,
                # so a server that trickles bytes cannot hold a slot forever.
                response = await asyncio.wait_for(client.post(self.endpoint, json=body), timeout)
            except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
                raise _TransientFailure(
                    "timeout", f"no complete answer within {timeout:g} s ({type(exc).__name__})"
                ) from exc
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.DecodingError) as exc:
                raise _TransientFailure("connection", f"{type(exc).__name__}: {exc}") from exc
            except httpx.HTTPError as exc:  # bad URL scheme, proxy misconfiguration, ...
                raise EngineError(
                    f"completions request to {self.endpoint} failed: {type(exc).__name__}: {exc}"
                ) from exc

        status = response.status_code
        if status in _RETRYABLE_STATUSES or status >= 500:
            raise _TransientFailure(
                f"http {status}",
                _error_message(response),
                retry_after_s=_retry_after_s(response.headers.get("Retry-After")),
            )
        if not 200 <= status < 300:
            message = _error_message(response)
            if status == 400 and _CONTEXT_LENGTH_RE.search(message):
                raise ContextLengthError(f"{self.endpoint} answered HTTP 400: {message}")
            raise EngineError(f"{self.endpoint} answered HTTP {status}: {message}")
        try:
            payload = json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _TransientFailure(
                "invalid JSON",
                f"HTTP {status} body is not JSON ({exc}): {_excerpt(response.content)}",
            ) from exc
        return self._parse(payload, n=n)

    def _parse(self, payload: Any, *, n: int) -> _Completion:
        """Validate a completions response; a wrong shape is a permanent error."""

        def bad(what: str) -> EngineError:
            return EngineError(
                f"{self.endpoint} answered with an invalid completion ({what}): "
                f"{_excerpt(json.dumps(payload))}"
            )

        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise bad("no 'choices' list")
        choices = payload["choices"]
        if len(choices) != n or not all(isinstance(c, dict) for c in choices):
            raise bad(f"expected {n} choice objects, got {len(choices)}")
        indexed = []
        for position, choice in enumerate(choices):
            index = choice.get("index", position)
            if not isinstance(choice.get("text"), str) or not isinstance(index, int):
                raise bad(f"choice {position} lacks a text or an integer index")
            indexed.append((index, choice))
        indexed.sort(key=lambda item: item[0])
        if [index for index, _ in indexed] != list(range(n)):
            raise bad(f"choice indexes are not 0..{n - 1}")

        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return _Completion(
            texts=tuple(choice["text"] for _, choice in indexed),
            finish_reasons=tuple(
                str(choice.get("finish_reason") or "unknown") for _, choice in indexed
            ),
            prompt_tokens=_count_or_none(usage.get("prompt_tokens")),
            completion_tokens=_count_or_none(usage.get("completion_tokens")),
            cached_tokens=_count_or_none(cached) or 0,
        )

    def _backoff_s(self, retry_state: RetryCallState) -> float:
        """Full-jitter exponential backoff, stretched to ``Retry-After``, capped by the config."""
        cap = self.config.retry_max_wait_s
        jittered = wait_random_exponential(multiplier=FIRST_BACKOFF_WINDOW_S, max=cap)(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _TransientFailure) and exc.retry_after_s is not None:
            jittered = max(jittered, min(exc.retry_after_s, cap))
        return min(jittered, cap)

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        reason = exc.reason if isinstance(exc, _TransientFailure) else type(exc).__name__
        sleep_s = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self.counters.retries += 1
        self.counters.backoff_s += sleep_s
        reasons = self.counters.retry_reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        log.warning(
            "completions request to %s: attempt %d/%d failed (%s); retrying in %.2f s",
            self.endpoint,
            retry_state.attempt_number,
            self.config.max_retries + 1,
            exc,
            sleep_s,
        )

    # ----------------------------------------------------------------------------------------
    # Results and tokenizer

    def _to_result(self, completion: _Completion, request: GenerationRequest) -> GenerationResult:
        prompt_tokens = completion.prompt_tokens
        total = completion.completion_tokens
        if prompt_tokens is None or total is None:
            # Every vLLM server reports usage; a server that does not leaves us the tokenizer.
            if self.config.tokenizer is None:
                raise EngineError(
                    f"{self.endpoint} reported no usage token counts and no local tokenizer is "
                    "configured (engine.tokenizer) to count them"
                )
            if prompt_tokens is None:
                prompt_tokens = self.count_tokens(request.prompt)
            generated = tuple(self.count_tokens(text) for text in completion.texts)
        elif len(completion.texts) == 1:
            generated = (total,)
        elif self.config.tokenizer is not None:
            # Every sample generated at least one token (its EOS, at worst).
            weights = [max(1, self.count_tokens(text)) for text in completion.texts]
            generated = tuple(apportion(total, weights))
        else:
            generated = tuple(apportion(total, [1] * len(completion.texts)))
        return GenerationResult(
            texts=completion.texts,
            generated_tokens=generated,
            finish_reasons=completion.finish_reasons,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=min(completion.cached_tokens, prompt_tokens),
        )

    def _require_tokenizer(self, caller: str) -> Any:
        if self._tokenizer is not None:
            return self._tokenizer
        path = self.config.tokenizer
        if not path:
            raise ConfigError(
                f"tokenizer is not set, got None: the openai engine needs a local Hugging Face "
                f"tokenizer folder (engine.tokenizer) for {caller}"
            )
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                started = time.perf_counter()
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                except (OSError, ValueError) as exc:
                    raise ConfigError(
                        f"tokenizer could not be loaded from local files, got {path!r}: {exc}"
                    ) from exc
                log.info("tokenizer %s loaded in %.2f s", path, time.perf_counter() - started)
        return self._tokenizer


def completions_url(base_url: str) -> str:
    """The completions endpoint for a server URL, an API root (``.../v1``) or the endpoint."""
    url = base_url.rstrip("/")
    if url.endswith("/completions"):
        return url
    if url.endswith("/v1"):
        return f"{url}/completions"
    return f"{url}/v1/completions"


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split the integer ``total`` in proportion to non-negative ``weights`` (largest remainder).

    The parts sum to ``total`` exactly; ties go to the earlier index. All-zero weights split
    evenly.
    """
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    weight_sum = sum(weights)
    parts = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _count_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _excerpt(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    if len(text) > _MAX_QUOTED_CHARS:
        return text[:_MAX_QUOTED_CHARS] + f"... ({len(text)} chars)"
    return text or "<empty body>"


def _error_message(response: httpx.Response) -> str:
    """The endpoint's message: OpenAI/vLLM ``error.message``, FastAPI ``detail``, or the body."""
    try:
        payload = json.loads(response.content)
    except ValueError:
        return _excerpt(response.content)
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
            code = error.get("code")
            # OpenAI puts "context_length_exceeded" in the code, not always in the message.
            if isinstance(code, str) and code not in message:
                return f"{message} [{code}]"
            return message
        for key in ("error", "message", "detail"):
            if isinstance(payload.get(key), str):
                return _excerpt(payload[key])
        if "detail" in payload:
            return _excerpt(json.dumps(payload["detail"]))
    return _excerpt(response.content)


def _retry_after_s(header: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
