"""The critic's constrained form (``critic.constrain_form``, issue #25): the per-solution regular
expression, the engines' ``regex``, the scripted engine that honours it as a constrained model
would, and the critiques it gives (usable unless cut off)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import regex as partial_regex
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import ScriptedEngine, constrain_to_regex
from steplabel.annotators.critic import (
    CRITIC_FORM_VERSION,
    Critic,
    CriticConfig,
    CriticSampling,
    TrustedLabels,
    critic_version,
    critique_form_regex,
    parse_critique,
)
from steplabel.engines.base import GenerationRequest
from steplabel.schemas.config import ConfigError, from_mapping, to_mapping
from test_critic import QUESTION, STEPS

pytestmark = pytest.mark.unit


def form(verdicts: list[bool], texts: list[str] | None = None) -> str:
    """A critique in the forced form: one line per verdict, in step order."""
    texts = texts or ["I redo it."] * len(verdicts)
    return "\n".join(f"Paragraph {i}: {text}\\boxed{{{'correct' if v else 'incorrect'}}}"
                     for i, (v, text) in enumerate(zip(verdicts, texts)))


def matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def is_prefix_of_a_match(pattern: str, text: str) -> bool:
    # The third-party regex module's partial matching: an independent check of the fake.
    return partial_regex.fullmatch(pattern, text, partial=True) is not None


# --------------------------------------------------------------------------------------------
# The regular expression


@pytest.mark.parametrize("verdicts", [
    [True, True, True],     # no error: every step, the last one correct
    [False],                # an error at step 0: the critique ends there
    [True, False],          # at step 1
    [True, True, False],    # at the last step
])
def test_form_matches_well_formed_critiques(verdicts):
    pattern = critique_form_regex(3, 40)
    text = form(verdicts)
    assert matches(pattern, text)
    parse = parse_critique(text, "stop", 3)
    first_error = verdicts.index(False) if False in verdicts else -1
    assert (parse.reason, parse.first_error) == ("ok", first_error)
    assert parse.step_verdicts == tuple(verdicts) + (None,) * (3 - len(verdicts))


def test_form_ends_at_the_first_incorrect_verdict():
    pattern = critique_form_regex(3, 40)
    assert not matches(pattern, form([False, True]))
    assert not matches(pattern, form([True, False, True]))
    assert not matches(pattern, form([False]) + "\nAll steps are correct.")
    assert not matches(pattern, form([True, True, True]) + "\n")


@pytest.mark.parametrize("text", [
    form([True, True]),                                               # stops before the last
    "Paragraph 0: ok \\boxed{correct}\nParagraph 2: ok \\boxed{correct}",  # skips a step
    "Paragraph 1: ok \\boxed{correct}",                               # skips step 0
    "Paragraph 0: ok \\boxed{correct}\nParagraph 0: again \\boxed{correct}",  # two for step 0
    "Paragraph 0: ok \\boxed{correct}\nParagraph 1: ok \\boxed{correct}\n"
    "Paragraph 2: ok \\boxed{correct}\nParagraph 3: ok \\boxed{correct}",  # a step too many
    "Paragraph 0: ok \\boxed{Correct}\nParagraph 1: ok \\boxed{incorrect}",  # letter case
    "Paragraph 0: ok\n\\boxed{correct}\nParagraph 1: no \\boxed{incorrect}",  # a newline
    "Paragraph 0: ok \\boxed{8} \\boxed{correct}\nParagraph 1: no \\boxed{incorrect}",  # a box
    "ok \\boxed{correct}\nok \\boxed{correct}\nok \\boxed{correct}",  # no headers
    "",
])
def test_form_refuses_a_critique_out_of_form(text):
    assert not matches(critique_form_regex(3, 40), text)


def test_form_caps_each_verification():
    pattern = critique_form_regex(2, 10)
    assert matches(pattern, form([True, False], ["x" * 10, ""]))
    assert not matches(pattern, form([True, False], ["x" * 11, ""]))
    assert matches(pattern, form([False], ["{$3 + 4 = 7$}, not 8"[:10]]))


@pytest.mark.parametrize("steps, cap", [(0, 10), (True, 10), (2, 0), (2, 2.5)])
def test_form_refuses_bad_arguments(steps, cap):
    with pytest.raises(ValueError):
        critique_form_regex(steps, cap)


def test_form_grows_linearly_with_the_steps():
    lengths = [len(critique_form_regex(m, 200)) for m in (10, 20, 40)]
    assert lengths[2] - lengths[1] == pytest.approx(2 * (lengths[1] - lengths[0]), rel=0.05)


_FREE_TEXT = st.text(alphabet="abcdefgh 0123456789+=.,:$()", max_size=30)


@settings(max_examples=150, deadline=None)
@given(num_steps=st.integers(1, 6), data=st.data())
def test_every_whole_match_parses_as_usable_with_its_verdicts(num_steps, data):
    first_error = data.draw(st.integers(-1, num_steps - 1))
    count = num_steps if first_error == -1 else first_error + 1
    verdicts = [i != first_error for i in range(count)]
    texts = data.draw(st.lists(_FREE_TEXT, min_size=count, max_size=count))
    text = form(verdicts, texts)
    assert matches(critique_form_regex(num_steps, 30), text)
    parse = parse_critique(text, "stop", num_steps)
    assert parse.reason == "ok" and parse.first_error == first_error
    assert parse.step_verdicts == tuple(verdicts) + (None,) * (num_steps - count)


def test_vllm_structured_output_backend_reads_the_form():
    # xgrammar is vLLM's default structured-output backend: the pattern compiles, and its
    # grammar accepts exactly the critiques Python's re does.
    xgrammar = pytest.importorskip("xgrammar")
    testing = pytest.importorskip("xgrammar.testing")
    accepts = getattr(testing, "_is_grammar_accept_string", None)
    pattern = critique_form_regex(3, 20)
    grammar = xgrammar.Grammar.from_regex(pattern)
    if accepts is None:
        pytest.skip("this xgrammar has no string acceptance helper")
    for text in [form([True, False]), form([True, True, True]), form([False]),
                 form([False, True]), form([True, True]),
                 "Paragraph 0: ok \\boxed{correct}\nParagraph 2: ok \\boxed{correct}"]:
        assert accepts(grammar, text) == matches(pattern, text), text


# --------------------------------------------------------------------------------------------
# The request and the engines


def test_the_vllm_engine_gives_the_form_time_to_compile(monkeypatch):
    from steplabel.engines.vllm_engine import (
        REGEX_COMPILATION_TIMEOUT_S,
        structured_output_environment,
    )

    monkeypatch.delenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", raising=False)
    assert structured_output_environment() == {
        "VLLM_REGEX_COMPILATION_TIMEOUT_S": str(REGEX_COMPILATION_TIMEOUT_S)}
    assert REGEX_COMPILATION_TIMEOUT_S > 5  # vLLM's own default is too short for the form
    monkeypatch.setenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", "9")
    assert structured_output_environment() == {}  # the user's value wins


def test_generation_request_validates_the_regex():
    assert GenerationRequest(prompt="x", regex="a|b").regex == "a|b"
    assert GenerationRequest(prompt="x").regex is None
    with pytest.raises(ValueError, match="exclusive"):
        GenerationRequest(prompt="x", regex="a|b", choices=("a",))
    for bad in ("", "a\x00", "(unclosed", 3):
        with pytest.raises(ValueError, match="regex"):
            GenerationRequest(prompt="x", regex=bad)


PATTERN = critique_form_regex(3, 40)


@pytest.mark.parametrize("script, expected", [
    # in form: written as scripted
    (form([True, False]), form([True, False])),
    # words after the end of the form are never written
    (form([False]) + "\nAll steps are correct.", form([False])),
    # a skipped header: the form writes "Paragraph 0: " and the script goes on from there
    ("Paragraph 1: fine \\boxed{incorrect}", "Paragraph 0: 1: fine \\boxed{incorrect}"),
    # a capitalised verdict: the letters that do not fit are dropped until one does
    ("Paragraph 0: ok \\boxed{Incorrect}", "Paragraph 0: ok \\boxed{incorrect}"),
    # rambling: the cap ends the verification, and the script's next letter that fits
    # ("i" of "this") picks the verdict
    ("Let me think about this very carefully. " * 5,
     "Paragraph 0: Let me think about this very carefully. \\boxed{incorrect}"),
    # a script spent mid-form is finished by the shortest continuation: "incorrect" ends a
    # non-last step soonest, "correct" the last one
    ("Paragraph 0: ok", "Paragraph 0: ok\\boxed{incorrect}"),
    ("", "Paragraph 0: \\boxed{incorrect}"),
    (form([True, True]), form([True, True]) + "\nParagraph 2: \\boxed{correct}"),
])
def test_scripted_engine_bends_its_text_to_the_form(script, expected):
    assert constrain_to_regex(script, PATTERN) == expected
    assert matches(PATTERN, expected)


@settings(max_examples=100, deadline=None)
@given(script=st.text(alphabet="Pargph 0123:\\boxed{correct}incorrect\nabc", max_size=200),
       max_tokens=st.integers(1, 40))
def test_scripted_engine_always_writes_a_prefix_of_a_match(script, max_tokens):
    engine = ScriptedEngine(lambda request, i: script)
    request = GenerationRequest(prompt="p", max_tokens=max_tokens, regex=PATTERN)
    result = asyncio.run(engine.generate(request))
    (text,), (finish,) = result.texts, result.finish_reasons
    if finish == "stop":
        assert matches(PATTERN, text)
    else:
        assert finish == "length" and result.generated_tokens == (max_tokens,)
        assert is_prefix_of_a_match(PATTERN, text)


def test_a_constrained_critique_cut_at_max_tokens_is_a_partial_match_and_truncated():
    engine = ScriptedEngine(lambda request, i: "word " * 100)
    request = GenerationRequest(prompt="p", max_tokens=12, regex=critique_form_regex(3, 400))
    result = asyncio.run(engine.generate(request))
    assert result.finish_reasons == ("length",)
    assert is_prefix_of_a_match(request.regex, result.texts[0])
    assert not matches(request.regex, result.texts[0])
    assert parse_critique(result.texts[0], "length", 3).reason == "truncated"


# --------------------------------------------------------------------------------------------
# Config, provenance, the critic


def test_config_is_off_by_default_and_keeps_old_manifests_hash():
    config = CriticConfig()
    assert (config.constrain_form, config.max_step_chars) == (False, 200)
    mapping = to_mapping(config)
    assert "constrain_form" not in mapping and "max_step_chars" not in mapping
    assert "constrain_form" not in json.loads(config.sampling_json())
    assert CRITIC_FORM_VERSION not in critic_version(config) == critic_version()
    on = from_mapping(CriticConfig, {"constrain_form": True, "max_step_chars": 120})
    assert to_mapping(on)["constrain_form"] is True and to_mapping(on)["max_step_chars"] == 120
    recorded = json.loads(on.sampling_json())
    assert (recorded["constrain_form"], recorded["max_step_chars"]) == (True, 120)
    assert critic_version(on).endswith(";" + CRITIC_FORM_VERSION)


@pytest.mark.parametrize("mapping, field", [
    ({"constrain_form": "yes"}, "constrain_form"),
    ({"constrain_form": True, "max_step_chars": 0}, "max_step_chars"),
    ({"max_step_chars": 5000}, "max_step_chars"),
    ({"max_step_chars": 12.5}, "max_step_chars"),
])
def test_config_errors_name_the_field(mapping, field):
    with pytest.raises(ConfigError, match=field):
        from_mapping(CriticConfig, mapping, path="critic")


def critic(engine, **config) -> Critic:
    return Critic(engine, CriticConfig(**config), run_seed=7)


def test_the_request_carries_the_form_only_when_constrained():
    engine = ScriptedEngine(lambda request, i: "")
    kwargs = dict(problem_id="p", solution_index=0, question=QUESTION, steps=STEPS)
    assert critic(engine).request_for(**kwargs).regex is None
    on = critic(engine, constrain_form=True, max_step_chars=90).request_for(**kwargs)
    assert on.regex == critique_form_regex(len(STEPS), 90) and on.choices == ()


def test_constrained_critiques_of_faulty_scripts_are_usable_unless_cut_off():
    scripts = [
        form([True, False], ["3 apples, as given. ", "3 + 4 = 7, not 8. "]),  # right
        "Paragraph 0: fine \\boxed{correct}\nAll steps are correct.",  # out of form
        "Paragraph 1: 3 + 4 = 7. \\boxed{incorrect}",                   # skips step 0
        form([False]) + "\nAll steps are correct.",                    # would contradict
        "Let me think. " * 100,                # rambles past max_tokens in one paragraph
    ]
    engine = ScriptedEngine(lambda request, i: scripts[i])
    config = dict(samples=5, constrain_form=True, max_step_chars=400,
                  sampling=CriticSampling(max_tokens=30))
    result = asyncio.run(critic(engine, **config).critique(
        problem_id="p", solution_index=0, question=QUESTION, steps=STEPS,
        trusted=TrustedLabels(1, "consensus")))
    # the form goes on to paragraph 1, and the rest of the script is its verification
    assert result.texts[1] == ("Paragraph 0: fine \\boxed{correct}\nParagraph 1: ll steps "
                               "are correct.\\boxed{incorrect}")
    assert result.texts[2] == "Paragraph 0: 1: 3 + 4 = 7. \\boxed{incorrect}"
    assert result.texts[3] == form([False])
    assert [p.reason for p in result.parses] == ["ok", "ok", "ok", "ok", "truncated"]
    assert [c.reason for c in result.checks] == [
        "kept", "not_kept_quota", "disagrees_at_step_0", "disagrees_at_step_0",
        "unusable:truncated"]
    assert all(matches(engine.requests[0].regex, t) for t in result.texts[:4])
    assert is_prefix_of_a_match(engine.requests[0].regex, result.texts[4])
    assert json.loads(result.sampling_json)["constrain_form"] is True
    assert result.critic_version.endswith(CRITIC_FORM_VERSION)
