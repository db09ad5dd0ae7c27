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


def test_children_of_one_request_are_single_requests_with_seed_plus_index(host_engine):
    """What decided stopping rests on: vLLM seeds child i of a request with seed + i, so a
    rollout sampled alone (n = 1, seed + i) is the same text as in the batch of k."""
    host, engine = host_engine
    prompt = chat(engine, "Sam has 4 pens and buys 3 more. How many pens?") + "Step 1:"

    async def both():
        batch = await engine.generate(GenerationRequest(prompt=prompt, n=4, seed=900,
                                                        max_tokens=24, temperature=0.9))
        alone = await asyncio.gather(*[
            engine.generate(GenerationRequest(prompt=prompt, n=1, seed=900 + i, max_tokens=24,
                                              temperature=0.9)) for i in range(4)])
        waves = await asyncio.gather(
            engine.generate(GenerationRequest(prompt=prompt, n=1, seed=900, max_tokens=24,
                                              temperature=0.9)),
            engine.generate(GenerationRequest(prompt=prompt, n=3, seed=901, max_tokens=24,
                                              temperature=0.9)))
        return batch, alone, waves

    batch, alone, waves = host.run(both())
    assert len(set(batch.texts)) > 1
    assert tuple(r.texts[0] for r in alone) == batch.texts
    assert waves[0].texts + waves[1].texts == batch.texts


def test_decided_stopping_and_first_error_only_keep_the_labels_on_the_embedded_model(
        host_engine):
    """Issue 14: with the same seeds, fixed and decided stopping give identical hard labels and
    first errors, and first-error-only gives identical kept (consensus) labels."""
    from steplabel.annotators.consensus import consensus_labels
    from steplabel.annotators.monte_carlo import MonteCarloAnnotator, MonteCarloConfig
    from steplabel.annotators.prompts import build_solution_prompt, load_template
    from steplabel.annotators.splitting import get_splitter
    from steplabel.schemas.config import SamplingConfig

    host, engine = host_engine
    splitter = get_splitter("step_markers")
    template = load_template("policy_steps_v1")
    problems = [("Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
                ("There are 9 birds on a tree and 5 fly away. How many are left?", "4"),
                ("A box holds 6 eggs. How many eggs are in 3 boxes?", "18")]
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=48)

    async def solutions():
        out = []
        for p, (question, gold) in enumerate(problems):
            prompt = build_solution_prompt(engine, template, question, "Step 1:")
            sample = await engine.generate(GenerationRequest(
                prompt=prompt.for_sampling(), n=2, seed=40 + p, max_tokens=64, temperature=0.8))
            out += [(f"p{p}", i, prompt, splitter.split("Step 1:" + text), gold)
                    for i, text in enumerate(sample.texts)]
        return out

    cases = host.run(solutions())

    async def label_all(config, judges=None):
        # Every solution at once, as the job runs them: waves are sequential per solution only.
        annotator = MonteCarloAnnotator(engine, config, run_seed=11)
        guides = ([{"judge_first_error": j} for j in judges] if judges is not None
                  else [{}] * len(cases))
        out = await asyncio.gather(*(annotator.annotate(
            problem_id=pid, solution_index=i, prompt=prompt, steps=steps, splitter=splitter,
            gold_answer=gold, **guide) for (pid, i, prompt, steps, gold), guide
            in zip(cases, guides)))
        return out, sum(r.rollouts for r in out)

    def config(**kw):
        return MonteCarloConfig(rollouts=4, sampling=sampling, **kw)

    fixed, fixed_cost = host.run(label_all(config(stopping="fixed", first_error_only=False)))
    decided, decided_cost = host.run(label_all(config(stopping="decided",
                                                      first_error_only=False)))
    cut, cut_cost = host.run(label_all(config(stopping="decided", first_error_only=True)))
    for a, b, c in zip(fixed, decided, cut):
        assert a.hard_labels == b.hard_labels
        assert a.first_error_index == b.first_error_index == c.first_error_index
        if a.first_error_index is not None:
            assert consensus_labels(a.first_error_index, a.num_steps) == consensus_labels(
                c.first_error_index, c.num_steps)
    assert cut_cost <= decided_cost <= fixed_cost
    # Consensus-guided, with judge verdicts that agree with Monte Carlo on some solutions and
    # not on others (and one without a verdict): consensus keeps exactly the same labels.
    from steplabel.annotators.consensus import consensus

    judges = [None if n == 0 else a.first_error_index if n % 2 else (
        -1 if a.first_error_index != -1 else 0) for n, a in enumerate(fixed)]
    guided, guided_cost = host.run(label_all(config(stopping="decided", first_error_only=True,
                                                    consensus_guided=True), judges))
    kept = 0
    for a, g, judge in zip(fixed, guided, judges):
        want = consensus(a.first_error_index, judge)
        got = consensus(g.first_error_index, judge, mc_stopped=g.stopped)
        assert got.keep == want.keep
        if want.keep:
            kept += 1
            assert consensus_labels(got.first_error, g.num_steps) == consensus_labels(
                want.first_error, a.num_steps)
    assert guided_cost <= cut_cost
    assert guided[0].rollouts == 0 and guided[0].stopped == "judge_unknown"


def test_choices_constrain_every_sample_and_reproduce(host_engine):
    # The demo's judge: after the forced "\boxed{", only a valid verdict may follow.
    host, engine = host_engine
    prompt = chat(engine, "Which paragraph is wrong?") + "The earliest wrong paragraph is \\boxed{"
    choices = ("-1}", "0}", "1}", "2}")
    request = GenerationRequest(prompt=prompt, n=8, seed=9, max_tokens=4, temperature=0.8,
                                choices=choices)
    first = host.run(engine.generate(request))
    again = host.run(engine.generate(request))
    assert all(text in choices for text in first.texts), first.texts
    assert first.texts == again.texts


def test_regex_constrains_every_sample_to_the_critique_form(host_engine):
    # The demo's constrained critic (critic.constrain_form): a finished sample matches the
    # form whole, one cut off at max_tokens is a prefix of a match.
    import re

    import regex

    from steplabel.annotators.critic import critique_form_regex

    host, engine = host_engine
    prompt = chat(engine, "Verify: <paragraph_0>2 + 2 = 4</paragraph_0> "
                          "<paragraph_1>The answer is: 5</paragraph_1>")
    pattern = critique_form_regex(2, 60)
    request = GenerationRequest(prompt=prompt, n=4, seed=1, max_tokens=96, temperature=0.8,
                                regex=pattern)
    result = host.run(engine.generate(request))
    for text, finish in zip(result.texts, result.finish_reasons):
        if finish == "stop":
            assert re.fullmatch(pattern, text), text
        else:
            assert regex.fullmatch(pattern, text, partial=True), text
    assert host.run(engine.generate(request)).texts == result.texts
