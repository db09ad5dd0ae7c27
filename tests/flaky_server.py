"""A local OpenAI-compatible completions server that fails on command, for engine tests.

It listens on ``127.0.0.1`` at a free port, in a background thread, and answers
``POST /v1/completions`` like a vLLM server would, deterministically: the text of sample ``i``
is derived from the prompt, the seed and ``i`` (:func:`completion_text`), one whitespace-
separated word per "token". Faults are injected by a schedule::

    with FlakyCompletionsServer() as server:
        server.schedule(Fault.RESET, Fault.SERVER_ERROR)        # the next two requests fail
        server.fail_always(Fault.UNAVAILABLE, prompt_contains="doomed")
        ...
        server.request_count, server.faults_injected, server.peak_in_flight

        server.inject_randomly([Fault.RESET, Fault.RATE_LIMIT], rate=0.2, seed=0)

A request takes the first matching scheduled fault (scheduled faults are used in order, one per
request), else the matching ``fail_always`` fault, else (with ``inject_randomly``) a fault drawn
with probability ``rate``, else a good answer.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import json
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETIONS_PATH = "/v1/completions"

WORDS = (
    "so", "the", "answer", "is", "we", "add", "both", "sides", "then", "divide", "by", "two",
    "step", "next", "check", "result", "thus", "x", "equals", "four",
)

CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens "
    "(4000 in the messages, 96 in the completion). Please reduce the length of the messages or "
    "completion."
)


class Fault(str, enum.Enum):
    """What the server does instead of answering well."""

    #: Read the request, then drop the connection with a TCP reset.
    RESET = "reset"
    #: Wait ``hang_s`` (longer than the client's timeout) before answering.
    HANG = "hang"
    #: 429 Too Many Requests, with ``Retry-After`` when the server has ``retry_after`` set.
    RATE_LIMIT = "rate_limit"
    #: 500 Internal Server Error.
    SERVER_ERROR = "server_error"
    #: 503 Service Unavailable.
    UNAVAILABLE = "unavailable"
    #: 200 whose ``Content-Length`` promises the whole answer; half is sent, then close.
    TRUNCATED = "truncated"
    #: 200 without ``Content-Length``; half the answer, then close (the client sees cut JSON).
    TRUNCATED_UNFRAMED = "truncated_unframed"
    #: 200 with a well-framed body that is not JSON (a proxy's HTML page).
    INVALID_JSON = "invalid_json"
    #: 200 with JSON that is not a completion (no ``choices``).
    WRONG_SHAPE = "wrong_shape"
    #: 400 with vLLM's maximum-context-length message.
    CONTEXT_LENGTH = "context_length"
    #: 400 with another validation message.
    BAD_REQUEST = "bad_request"
    #: 401 Unauthorized.
    UNAUTHORIZED = "unauthorized"
    #: 404 Not Found (an unknown model).
    NOT_FOUND = "not_found"
    #: 422 with a FastAPI-style ``detail`` list.
    UNPROCESSABLE = "unprocessable"


#: The HTTP status and message of each fault that is an error response.
ERROR_RESPONSES: dict[Fault, tuple[int, str]] = {
    Fault.RATE_LIMIT: (429, "Too many requests: the server is at capacity, try again later"),
    Fault.SERVER_ERROR: (500, "Internal server error: the engine loop crashed"),
    Fault.UNAVAILABLE: (503, "Service unavailable: the model is still loading"),
    Fault.CONTEXT_LENGTH: (400, CONTEXT_LENGTH_MESSAGE),
    Fault.BAD_REQUEST: (400, "temperature must be non-negative, got -1.0"),
    Fault.UNAUTHORIZED: (401, "Unauthorized: invalid API key"),
    Fault.NOT_FOUND: (404, "The model `no-such-model` does not exist."),
}


def completion_text(prompt: str, *, seed: int | None, index: int, words: int) -> str:
    """The deterministic text of sample ``index``: ``words`` words from a hash of the inputs."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    return " ".join(WORDS[digest[k % len(digest)] % len(WORDS)] for k in range(words))


def sample_length(prompt: str, *, seed: int | None, index: int) -> int:
    """How many words sample ``index`` wants before it "stops" (3 to 10)."""
    digest = hashlib.sha256(f"len\x00{prompt}\x00{seed}\x00{index}".encode()).digest()
    return 3 + digest[0] % 8


def expected_choice(
    prompt: str, *, seed: int | None, index: int, max_tokens: int, stop: tuple[str, ...] = ()
) -> tuple[str, int, str]:
    """``(text, generated_tokens, finish_reason)`` the server answers for sample ``index``."""
    wanted = sample_length(prompt, seed=seed, index=index)
    words = min(wanted, max_tokens)
    text = completion_text(prompt, seed=seed, index=index, words=words)
    finish = "length" if wanted > max_tokens else "stop"
    for s in stop:
        if s and s in text:
            text = text.split(s, 1)[0]
            finish = "stop"
            words = len(text.split()) + 1  # the stop string's token was generated too
    return text, words, finish


class FlakyCompletionsServer:
    """The server; use it as a context manager or call :meth:`start` and :meth:`stop`.

    ``delay_s`` delays every good answer (to observe concurrency); ``hang_s`` is how long
    :attr:`Fault.HANG` waits; ``retry_after`` is the ``Retry-After`` value sent with 429s (None:
    no header); ``api_key`` makes the server answer 401 to requests without
    ``Authorization: Bearer <api_key>``; ``report_cached_tokens`` adds
    ``usage.prompt_tokens_details.cached_tokens`` (longest word prefix shared with an earlier
    prompt, as vLLM's prefix cache would); ``reverse_choices`` lists choices last index first.
    """

    def __init__(
        self,
        *,
        model: str = "flaky-model",
        delay_s: float = 0.0,
        hang_s: float = 2.0,
        retry_after: str | None = None,
        api_key: str | None = None,
        report_cached_tokens: bool = True,
        reverse_choices: bool = False,
    ) -> None:
        self.model = model
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.api_key = api_key
        self.report_cached_tokens = report_cached_tokens
        self.reverse_choices = reverse_choices

        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.peak_in_flight = 0

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scheduled: list[tuple[str | None, Fault]] = []
        self._always: list[tuple[str | None, Fault]] = []
        self._random: tuple[tuple[Fault, ...], float, random.Random] | None = None
        self._seen_prompts: list[list[str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------
    # Control

    @property
    def url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:50123/v1``."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def schedule(self, *faults: Fault, prompt_contains: str | None = None) -> None:
        """The next requests whose prompt contains ``prompt_contains`` get ``faults``, in order."""
        with self._lock:
            self._scheduled.extend((prompt_contains, Fault(f)) for f in faults)

    def fail_always(self, fault: Fault, *, prompt_contains: str | None = None) -> None:
        """Every request (whose prompt contains ``prompt_contains``) gets ``fault``."""
        with self._lock:
            self._always.append((prompt_contains, Fault(fault)))

    def inject_randomly(self, faults, *, rate: float, seed: int = 0) -> None:
        """Every other request gets one of ``faults`` (uniformly) with probability ``rate``,
        drawn from a generator seeded with ``seed``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        with self._lock:
            self._random = (tuple(Fault(f) for f in faults), rate, random.Random(seed))

    def clear_faults(self) -> None:
        with self._lock:
            self._scheduled.clear()
            self._always.clear()
            self._random = None

    def start(self) -> "FlakyCompletionsServer":
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="flaky-completions-server", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FlakyCompletionsServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # Behaviour (called from handler threads)

    def _admit(self, body: dict[str, Any], headers: dict[str, str]) -> Fault | None:
        """Record the request and pick its fault."""
        prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            fault = None
            for i, (needle, scheduled) in enumerate(self._scheduled):
                if needle is None or needle in prompt:
                    fault = scheduled
                    del self._scheduled[i]
                    break
            if fault is None:
                for needle, always in self._always:
                    if needle is None or needle in prompt:
                        fault = always
                        break
            if fault is None and self._random is not None:
                faults, rate, rng = self._random
                if faults and rng.random() < rate:
                    fault = rng.choice(faults)
            if fault is not None:
                self.faults_injected[fault.value] += 1
            return fault

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A good completions response (or a 400/404 for a bad request)."""
        prompt, n, max_tokens = body.get("prompt"), body.get("n", 1), body.get("max_tokens", 16)
        if not isinstance(prompt, str) or not prompt:
            return _error(400, "prompt must be a non-empty string")
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        if not isinstance(n, int) or n < 1 or not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, f"n and max_tokens must be positive integers, got {n}, {max_tokens}")
        seed = body.get("seed")
        stop = tuple(body.get("stop") or ())
        choices, completion_tokens = [], 0
        for i in range(n):
            text, tokens, finish = expected_choice(
                prompt, seed=seed, index=i, max_tokens=max_tokens, stop=stop
            )
            completion_tokens += tokens
            choices.append({"index": i, "text": text, "logprobs": None,
                            "finish_reason": finish, "stop_reason": None})
        if self.reverse_choices:
            choices.reverse()
        prompt_words = prompt.split()
        with self._lock:
            cached = max((_common_prefix(prompt_words, seen) for seen in self._seen_prompts),
                         default=0)
            self._seen_prompts.append(prompt_words)
        usage: dict[str, Any] = {
            "prompt_tokens": len(prompt_words),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_words) + completion_tokens,
            "prompt_tokens_details": (
                {"cached_tokens": cached} if self.report_cached_tokens else None
            ),
        }
        return 200, {
            "id": f"cmpl-{self.request_count}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    """vLLM's error body (OpenAI style)."""
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
             429: "RateLimitError", 500: "InternalServerError", 503: "ServiceUnavailableError"}
    return status, {"error": {"message": message, "type": kinds.get(status, "Error"),
                              "param": None, "code": status}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    # Headers and body go out in separate writes; without TCP_NODELAY, delayed ACKs add 40 ms.
    disable_nagle_algorithm = True
    server_state: FlakyCompletionsServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the fault closed or reset the socket already
            pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        if not isinstance(body, dict):
            body = {"_raw": body}
        fault = state._admit(body, {k.lower(): v for k, v in self.headers.items()})
        with state._lock:
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            self._respond(fault, body)
        except OSError:  # the client gave up (timeout) and closed its end
            self.close_connection = True
        finally:
            with state._lock:
                state.in_flight -= 1

    def _respond(self, fault: Fault | None, body: dict[str, Any]) -> None:
        state = self.server_state
        if self.path.rstrip("/") != COMPLETIONS_PATH:
            self._send_json(*_error(404, f"Not Found: {self.path}"))
            return
        authorization = self.headers.get("Authorization")
        if state.api_key is not None and authorization != f"Bearer {state.api_key}":
            fault = Fault.UNAUTHORIZED
        if fault is Fault.RESET:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if fault is Fault.HANG:
            state._stopping.wait(state.hang_s)
        elif fault in ERROR_RESPONSES:
            status, message = ERROR_RESPONSES[fault]
            extra = {}
            if fault is Fault.RATE_LIMIT and state.retry_after:
                extra["Retry-After"] = state.retry_after
            self._send_json(*_error(status, message), extra_headers=extra)
            return
        elif fault is Fault.UNPROCESSABLE:
            detail = [{"loc": ["body", "max_tokens"], "msg": "Input should be a valid integer",
                       "type": "int_parsing"}]
            self._send_json(422, {"detail": detail})
            return
        elif fault is Fault.INVALID_JSON:
            self._send_bytes(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        elif fault is Fault.WRONG_SHAPE:
            self._send_json(200, {"object": "text_completion", "result": "no choices here"})
            return

        if state.delay_s and fault is None:
            state._stopping.wait(state.delay_s)
        status, payload = state._answer(body)
        data = json.dumps(payload).encode()
        if fault is Fault.TRUNCATED:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif fault is Fault.TRUNCATED_UNFRAMED:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._send_bytes(status, data, "application/json")

    def _send_json(
        self, status: int, payload: Any, *, extra_headers: dict[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", extra_headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str,
                    extra_headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def write_word_tokenizer(folder) -> str:
    """A tiny Hugging Face tokenizer folder (one token per whitespace-separated word, a plain
    chat template) for the openai engine's local tokenizer; returns the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    tokenizer.save_pretrained(str(folder))
    return str(folder)
