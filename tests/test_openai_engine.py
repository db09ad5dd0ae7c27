"""The ``openai`` engine against a local flaky completions server: parsing, retries, limits."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from steplabel.engines.base import (
    ChatMessage,
    ContextLengthError,
    EngineError,
    GenerationEngine,
    GenerationRequest,
)
from steplabel.engines.openai_engine import OpenAICompletionsEngine, apportion, completions_url
from steplabel.schemas.config import ConfigError, EngineConfig

from flaky_server import (  # noqa: E402 - tests/ is on sys.path under pytest's rootdir
    CONTEXT_LENGTH_MESSAGE,
    ERROR_RESPONSES,
    Fault,
    FlakyCompletionsServer,
    expected_choice,
)

pytestmark = pytest.mark.unit

#: Client timeout in these tests; Fault.HANG waits longer than this.
TIMEOUT_S = 0.3

TRANSIENT_FAULTS = [
    Fault.RESET,
    Fault.HANG,
    Fault.RATE_LIMIT,
    Fault.SERVER_ERROR,
    Fault.UNAVAILABLE,
    Fault.TRUNCATED,
    Fault.TRUNCATED_UNFRAMED,
    Fault.INVALID_JSON,
]


@pytest.fixture
def server():
    with FlakyCompletionsServer(hang_s=3 * TIMEOUT_S) as srv:
        yield srv


def make_engine(server: FlakyCompletionsServer, **overrides) -> OpenAICompletionsEngine:
    settings = dict(
        kind="openai",
        model="flaky-model",
        base_url=server.url,
        request_timeout_s=TIMEOUT_S,
        max_retries=3,
        retry_max_wait_s=0.01,
        max_concurrency=8,
    )
    settings.update(overrides)
    return OpenAICompletionsEngine(EngineConfig(**settings))


def generate_all(engine: OpenAICompletionsEngine, *requests: GenerationRequest) -> list:
    """Run the requests concurrently in a fresh event loop; close the engine afterwards."""

    async def main():
        try:
            return await asyncio.gather(*(engine.generate(r) for r in requests))
        finally:
            await engine.aclose()

    return asyncio.run(main())


def expected(request: GenerationRequest) -> list[tuple[str, int, str]]:
    return [
        expected_choice(request.prompt, seed=request.seed, index=i,
                        max_tokens=request.max_tokens, stop=request.stop)
        for i in range(request.n)
    ]


# --------------------------------------------------------------------------------------------
# Success path


def test_engine_satisfies_the_protocol(server):
    engine = make_engine(server, model="flaky-model")
    assert isinstance(engine, GenerationEngine)
    assert engine.model_id == "flaky-model"
    assert engine.info().kind == "openai"


def test_parses_choices_in_index_order_and_sends_every_sampling_field():
    with FlakyCompletionsServer(reverse_choices=True) as server:
        request = GenerationRequest(prompt="Solve 2 + 2 .", n=3, seed=7, max_tokens=6,
                                    temperature=0.9, top_p=0.95, stop=("\n\n",))
        (result,) = generate_all(make_engine(server), request)
        sent = server.requests[0]

    want = expected(request)
    assert result.texts == tuple(text for text, _, _ in want)
    assert result.finish_reasons == tuple(finish for _, _, finish in want)
    assert result.prompt_tokens == 5
    assert result.total_generated_tokens == sum(tokens for _, tokens, _ in want)
    assert sent == {"model": "flaky-model", "prompt": "Solve 2 + 2 .", "n": 3, "max_tokens": 6,
                    "temperature": 0.9, "top_p": 0.95, "stop": ["\n\n"], "seed": 7}


def test_single_sample_token_count_is_exact_and_unset_fields_are_omitted(server):
    request = GenerationRequest(prompt="What is 3 times 4 ?", max_tokens=4)
    (result,) = generate_all(make_engine(server), request)
    ((text, tokens, finish),) = expected(request)
    assert result.texts == (text,)
    assert result.generated_tokens == (tokens,)
    assert result.finish_reasons == (finish,)
    assert "seed" not in server.requests[0] and "stop" not in server.requests[0]


def test_choices_are_sent_as_structured_outputs(server):
    # vLLM's OpenAI-compatible server constrains the samples to the choices.
    request = GenerationRequest(prompt="Which step is wrong ?", max_tokens=2,
                                choices=("-1}", "0}"))
    generate_all(make_engine(server), request)
    assert server.requests[0]["structured_outputs"] == {"choice": ["-1}", "0}"]}


def test_regex_is_sent_as_structured_outputs(server):
    # vLLM's OpenAI-compatible server (CompletionRequest.structured_outputs.regex).
    pattern = r"Paragraph 0: [^\n\\]{0,20}\\boxed\{(correct|incorrect)\}"
    request = GenerationRequest(prompt="Verify the paragraphs .", max_tokens=8, regex=pattern)
    generate_all(make_engine(server), request)
    assert server.requests[0]["structured_outputs"] == {"regex": pattern}


def test_same_seed_same_texts(server):
    a = GenerationRequest(prompt="Compute 7 squared .", n=2, seed=11, max_tokens=8)
    b = GenerationRequest(prompt="Compute 7 squared .", n=2, seed=12, max_tokens=8)
    first, second, other = generate_all(make_engine(server), a, a, b)
    assert first.texts == second.texts
    assert first.texts != other.texts


def test_without_tokenizer_the_total_is_split_evenly(server):
    request = GenerationRequest(prompt="Find x .", n=4, seed=3, max_tokens=10)
    (result,) = generate_all(make_engine(server), request)
    total = sum(tokens for _, tokens, _ in expected(request))
    assert result.total_generated_tokens == total
    assert max(result.generated_tokens) - min(result.generated_tokens) <= 1


def test_with_tokenizer_the_total_is_split_by_text_length(server, word_tokenizer):
    request = GenerationRequest(prompt="Find y .", n=4, seed=5, max_tokens=10)
    (result,) = generate_all(make_engine(server, tokenizer=word_tokenizer), request)
    # The test tokenizer counts words exactly as the server does, so the split is exact.
    assert result.generated_tokens == tuple(tokens for _, tokens, _ in expected(request))


def test_cached_tokens_are_parsed_from_prompt_tokens_details(server):
    shared = "A long shared question about a triangle with sides three four and five ."
    first = GenerationRequest(prompt=shared + " Step 1")
    second = GenerationRequest(prompt=shared + " Step 2")
    engine = make_engine(server)

    async def main():
        try:
            return await engine.generate(first), await engine.generate(second)
        finally:
            await engine.aclose()

    a, b = asyncio.run(main())
    assert a.cached_prompt_tokens == 0
    assert b.cached_prompt_tokens == len(shared.split()) + 1  # "Step" is shared too
    assert b.prompt_tokens == len(second.prompt.split())


def test_cached_tokens_default_to_zero_when_not_reported():
    with FlakyCompletionsServer(report_cached_tokens=False) as server:
        request = GenerationRequest(prompt="Same prompt twice .")
        _, again = generate_all(make_engine(server, max_concurrency=1), request, request)
    assert again.cached_prompt_tokens == 0


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/completions"])
def test_base_url_forms(server, suffix):
    root = server.url.removesuffix("/v1")
    assert completions_url(root + suffix) == root + "/v1/completions"
    (result,) = generate_all(make_engine(server, base_url=root + suffix),
                             GenerationRequest(prompt="Hi there"))
    assert result.texts


# --------------------------------------------------------------------------------------------
# Transient faults are retried


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS, ids=lambda f: f.value)
def test_each_transient_fault_is_retried_and_the_request_finishes(server, fault):
    server.schedule(fault, fault)
    engine = make_engine(server, max_retries=3)
    request = GenerationRequest(prompt="Add 5 and 6 .", n=2, seed=1)
    (result,) = generate_all(engine, request)

    assert result.texts == tuple(text for text, _, _ in expected(request))
    assert server.request_count == 3
    assert server.faults_injected[fault.value] == 2
    counters = engine.counters
    assert (counters.attempts, counters.retries, counters.failures) == (3, 2, 0)
    assert sum(counters.retry_reasons.values()) == 2


def test_every_transient_fault_in_one_request(server):
    server.schedule(*TRANSIENT_FAULTS)
    engine = make_engine(server, max_retries=len(TRANSIENT_FAULTS))
    (result,) = generate_all(engine, GenerationRequest(prompt="Many faults ."))
    assert result.texts
    assert server.request_count == len(TRANSIENT_FAULTS) + 1
    assert engine.counters.retries == len(TRANSIENT_FAULTS)
    assert set(engine.counters.retry_reasons) == {
        "connection", "timeout", "http 429", "http 500", "http 503", "invalid JSON"}


def test_each_retry_is_logged_with_its_reason(server, caplog):
    server.schedule(Fault.UNAVAILABLE)
    with caplog.at_level(logging.WARNING, logger="steplabel.engines.openai_engine"):
        generate_all(make_engine(server), GenerationRequest(prompt="Log me ."))
    (record,) = caplog.records
    assert "attempt 1/4 failed" in record.getMessage()
    assert "http 503" in record.getMessage() and "model is still loading" in record.getMessage()


def test_backoff_is_bounded_even_when_the_server_asks_for_longer():
    # The server asks for 30 s; the engine never sleeps longer than retry_max_wait_s.
    with FlakyCompletionsServer(retry_after="30") as server:
        server.schedule(Fault.RATE_LIMIT, Fault.RATE_LIMIT, Fault.RATE_LIMIT)
        engine = make_engine(server, max_retries=3, retry_max_wait_s=0.05)
        started = time.perf_counter()
        (result,) = generate_all(engine, GenerationRequest(prompt="Wait politely ."))
        elapsed = time.perf_counter() - started
    assert result.texts
    # Retry-After is honoured up to the cap, so each of the 3 sleeps is exactly the cap.
    assert engine.counters.backoff_s == pytest.approx(3 * 0.05)
    assert elapsed < 2.0


def test_jittered_backoff_stays_within_its_cap(server):
    server.schedule(*[Fault.SERVER_ERROR] * 6)
    engine = make_engine(server, max_retries=6, retry_max_wait_s=0.02)
    generate_all(engine, GenerationRequest(prompt="Jitter ."))
    assert engine.counters.retries == 6
    assert 0.0 <= engine.counters.backoff_s <= 6 * 0.02 + 1e-9


def test_a_request_that_keeps_failing_raises_after_max_retries_plus_one_attempts(server):
    server.fail_always(Fault.UNAVAILABLE, prompt_contains="doomed")
    engine = make_engine(server, max_retries=2)
    ok = GenerationRequest(prompt="A fine problem .")
    doomed = GenerationRequest(prompt="A doomed problem .")

    async def main():
        try:
            return await asyncio.gather(engine.generate(doomed), engine.generate(ok),
                                        return_exceptions=True)
        finally:
            await engine.aclose()

    failure, success = asyncio.run(main())
    assert isinstance(failure, EngineError) and not isinstance(failure, ContextLengthError)
    assert "after 3 attempt(s)" in str(failure)
    assert "http 503" in str(failure) and "model is still loading" in str(failure)
    assert success.texts  # the other problem finishes
    doomed_attempts = [r for r in server.requests if "doomed" in r["prompt"]]
    assert len(doomed_attempts) == 3
    assert (engine.counters.failures, engine.counters.successes) == (1, 1)


def test_timeouts_exhausting_retries_name_the_timeout(server):
    server.fail_always(Fault.HANG)
    engine = make_engine(server, max_retries=1)
    with pytest.raises(EngineError, match=r"after 2 attempt\(s\).*timeout"):
        generate_all(engine, GenerationRequest(prompt="Slow ."))


def test_an_unreachable_endpoint_fails_with_a_connection_cause():
    with FlakyCompletionsServer() as server:
        url = server.url
    engine = OpenAICompletionsEngine(EngineConfig(
        kind="openai", model="flaky-model", base_url=url, max_retries=1, retry_max_wait_s=0.01))
    with pytest.raises(EngineError, match=r"after 2 attempt\(s\).*connection"):
        generate_all(engine, GenerationRequest(prompt="Anyone there ?"))


# --------------------------------------------------------------------------------------------
# Permanent errors are raised at once


@pytest.mark.parametrize(
    "fault, status, message",
    [
        (Fault.BAD_REQUEST, 400, ERROR_RESPONSES[Fault.BAD_REQUEST][1]),
        (Fault.UNAUTHORIZED, 401, ERROR_RESPONSES[Fault.UNAUTHORIZED][1]),
        (Fault.NOT_FOUND, 404, ERROR_RESPONSES[Fault.NOT_FOUND][1]),
        (Fault.UNPROCESSABLE, 422, "Input should be a valid integer"),
        (Fault.WRONG_SHAPE, 200, "no 'choices' list"),
    ],
    ids=lambda v: getattr(v, "value", None),
)
def test_permanent_errors_raise_at_once_with_the_servers_message(server, fault, status, message):
    server.schedule(fault)
    engine = make_engine(server)
    with pytest.raises(EngineError) as info:
        generate_all(engine, GenerationRequest(prompt="Bad request ."))
    assert not isinstance(info.value, ContextLengthError)
    assert message in str(info.value)
    if status != 200:
        assert f"HTTP {status}" in str(info.value)
    assert server.request_count == 1
    assert (engine.counters.retries, engine.counters.failures) == (0, 1)


def test_context_length_400_raises_context_length_error(server):
    server.schedule(Fault.CONTEXT_LENGTH)
    engine = make_engine(server)
    with pytest.raises(ContextLengthError, match="maximum context length is 2048"):
        generate_all(engine, GenerationRequest(prompt="word " * 50))
    assert server.request_count == 1
    assert CONTEXT_LENGTH_MESSAGE.startswith("This model's maximum context length")


def test_unknown_model_is_a_404_from_the_server(server):
    with pytest.raises(EngineError, match="HTTP 404: The model `other-model` does not exist"):
        generate_all(make_engine(server, model="other-model"), GenerationRequest(prompt="Hi"))
    assert server.request_count == 1


# --------------------------------------------------------------------------------------------
# Concurrency, keys, lifecycle


def test_concurrency_cap_is_respected():
    with FlakyCompletionsServer(delay_s=0.1) as server:
        engine = make_engine(server, max_concurrency=3)
        requests = [GenerationRequest(prompt=f"Problem {i} .") for i in range(10)]
        results = generate_all(engine, *requests)
        assert len(results) == 10
        assert server.peak_in_flight == 3  # never more, and the cap is actually used


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("STEPLABEL_TEST_KEY", "sk-test-123")
    with FlakyCompletionsServer(api_key="sk-test-123") as server:
        (result,) = generate_all(make_engine(server, api_key_env="STEPLABEL_TEST_KEY"),
                                 GenerationRequest(prompt="Authorised ."))
        assert result.texts
        assert server.headers[0]["authorization"] == "Bearer sk-test-123"
        with pytest.raises(EngineError, match="HTTP 401: Unauthorized"):
            generate_all(make_engine(server), GenerationRequest(prompt="No key ."))


def test_missing_api_key_variable_is_a_config_error(server, monkeypatch):
    monkeypatch.delenv("STEPLABEL_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="STEPLABEL_TEST_KEY"):
        make_engine(server, api_key_env="STEPLABEL_TEST_KEY")


def test_engine_serves_successive_event_loops(server):
    engine = make_engine(server)
    request = GenerationRequest(prompt="Twice .", seed=2)

    async def once():
        async with engine:
            return await engine.generate(request)

    first, second = asyncio.run(once()), asyncio.run(once())
    assert first.texts == second.texts
    assert engine.counters.successes == 2


def test_a_second_running_loop_is_refused(server):
    engine = make_engine(server)
    request = GenerationRequest(prompt="Bound .")
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(engine.generate(request), other).result(timeout=5)
        with pytest.raises(EngineError, match="another running event loop"):
            asyncio.run(engine.generate(request))
        # aclose() from this thread closes the client in the loop that owns it.
        asyncio.run(engine.aclose())

        async def rebound():
            async with engine:
                return await engine.generate(request)

        assert asyncio.run(rebound()).texts  # a fresh client in this loop
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(timeout=5)
        other.close()


def test_counters_as_dict(server):
    server.schedule(Fault.SERVER_ERROR)
    engine = make_engine(server)
    generate_all(engine, GenerationRequest(prompt="Count ."))
    counts = engine.counters.as_dict()
    assert counts["requests"] == 1 and counts["attempts"] == 2 and counts["retries"] == 1
    assert counts["retry_reasons"] == {"http 500": 1}


def test_apportion_sums_to_the_total():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [2, 0, 5]) == [2, 0, 5]
    assert apportion(5, [0, 0]) == [3, 2]
    assert sum(apportion(101, [3, 7, 11, 13])) == 101


# --------------------------------------------------------------------------------------------
# Local tokenizer


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> str:
    """A tiny Hugging Face tokenizer folder: one token per whitespace-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from flaky_server import WORDS

    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    folder = tmp_path_factory.mktemp("word-tokenizer")
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_chat_template_and_token_pieces_use_the_local_tokenizer(server, word_tokenizer):
    engine = make_engine(server, tokenizer=word_tokenizer)
    prompt = engine.apply_chat_template(
        [ChatMessage("system", "Be brief."), ChatMessage("user", "2+2?")])
    assert prompt == "<|system|>\nBe brief.\n<|user|>\n2+2?\n<|assistant|>\n"
    text = "so the answer  is four\n"
    pieces = engine.token_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) == 5 and all(pieces)
    assert engine.count_tokens(text) == 5


def test_tokenizer_methods_need_a_configured_tokenizer(server):
    engine = make_engine(server)
    with pytest.raises(ConfigError, match="tokenizer is not set"):
        engine.apply_chat_template([ChatMessage("user", "hi")])
    with pytest.raises(ConfigError, match="tokenizer is not set"):
        engine.token_pieces("hi")


def test_a_missing_tokenizer_folder_is_a_clear_error(server, tmp_path):
    engine = make_engine(server, tokenizer=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="could not be loaded from local files"):
        engine.token_pieces("hi")
