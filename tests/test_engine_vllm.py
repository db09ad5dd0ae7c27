"""The real vLLM engine with the embedded model (loaded once for the module)."""

import asyncio

import pytest

from steplabel.engines.base import ChatMessage, GenerationRequest
from steplabel.engines.host import EngineHost
from steplabel.schemas.config import EngineConfig

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def host_engine():
    host = EngineHost()
    engine = host.engine(EngineConfig(kind="vllm", model="embedded", dtype="float32",
                                      max_model_len=1024))
    yield host, engine
    host.close()


def chat(engine, text: str) -> str:
    return engine.apply_chat_template([ChatMessage("user", text)])


def test_seeded_samples_reproduce(host_engine):
    host, engine = host_engine
    prompts = [chat(engine, f"What is {a} + {b}? Think step by step.") + "Step 1:"
               for a, b in ((2, 3), (7, 5), (11, 4))]

    async def sample_all(seed_offset: int):
        return await asyncio.gather(*[
            engine.generate(GenerationRequest(prompt=p, n=4, seed=100 + i + seed_offset,
                                              max_tokens=24, temperature=0.9))
            for i, p in enumerate(prompts)])

    first = host.run(sample_all(0))
    again = host.run(sample_all(0))
    other = host.run(sample_all(50))
    for a, b, c in zip(first, again, other):
        assert len(a.texts) == 4 and all(len(t) > 0 for t in a.texts)
        assert a.texts == b.texts  # same seed, same text, whatever else is in the batch
        assert a.texts != c.texts
        assert all(0 < n <= 24 for n in a.generated_tokens)
        assert set(a.finish_reasons) <= {"stop", "length"}
        assert a.prompt_tokens > 10


def test_shared_prefix_is_served_from_cache(host_engine):
    host, engine = host_engine
    context = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}."
                       for i in range(60))
    base = chat(engine, context + "\nWhich facts are about even numbers?")
    first = host.run(engine.generate(GenerationRequest(prompt=base + "Step 1:", max_tokens=4,
                                                       seed=1)))
    second = host.run(engine.generate(GenerationRequest(prompt=base + "Step 2: next", n=2,
                                                        max_tokens=4, seed=2)))
    assert first.prompt_tokens > 300
    assert second.cached_prompt_tokens > 0.5 * first.prompt_tokens


def test_token_pieces_join_to_text(host_engine):
    _, engine = host_engine
    text = "Step 1: 12 apples + 3 apples = 15 apples.\nThe answer is: 15"
    pieces = engine.token_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) > 10


def test_engine_info_pins_weights(host_engine):
    _, engine = host_engine
    info = engine.info()
    assert info.kind == "vllm"
    assert info.weights_sha256 and len(info.weights_sha256) == 64
    assert info.engine_version.startswith("vllm ")
