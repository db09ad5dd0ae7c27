"""Critic (#25): per-step verdict parsing with the faults of real critics (cut off, a step
skipped, two verdicts for one step, contradictions, capitalised verdicts, extra text),
verification against trusted labels and the per-solution quota, the seed rule, the evaluate
prediction, the critiques/ rows and the SFT export, end to end against a scripted engine."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import ScriptedEngine
from steplabel.annotators.critic import (
    DEFAULT_CRITIC_TEMPLATE,
    MAX_CRITIQUE_CHARS,
    NO_TRUSTED_LABELS,
    PARSE_REASONS,
    VERDICT_CORRECT,
    VERDICT_INCORRECT,
    Critic,
    CriticConfig,
    CriticSampling,
    CritiqueCheck,
    CritiqueParse,
    TrustedLabels,
    check_critique,
    critique_rows,
    needs_critique,
    parse_critique,
    predict_first_error,
    prompt_completion,
    sft_messages,
    trusted_labels,
    verification_request,
    verify_critiques,
)
from steplabel.annotators.judge import tag_steps
from steplabel.annotators.prompts import load_template
from steplabel.annotators.seeds import derive_seed
from steplabel.schemas.config import ConfigError, from_mapping
from steplabel.schemas.critiques import CRITIQUE_SCHEMA, Critique
from steplabel.schemas.rows import as_row

pytestmark = pytest.mark.unit

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = [
    "Step 1: Tom starts with 3 apples.",
    "Step 2: He buys 4 more, so he has 3 + 4 = 8 apples.",
    "Step 3: The answer is: 8",
]
M = len(STEPS)

# Critiques as a real critic writes them. The solution's error is in paragraph 1.
RIGHT = (
    "Paragraph 0: The problem says Tom starts with 3 apples, and the paragraph says so. "
    "\\boxed{correct}\n\n"
    "Paragraph 1: 3 + 4 = 7, not 8. The addition is wrong; it should be 7. "
    "\\boxed{incorrect}\n"
)
ALL_CORRECT = (
    "**Paragraph 0:** 3 apples, as given. \\boxed{correct}\n"
    "**Paragraph 1:** 3 + 4 = 8 is what it says; I accept it. \\boxed{correct}\n"
    "**Paragraph 2:** The answer follows. \\boxed{correct}\n"
)
WRONG_AT_0 = (
    "Paragraph 0: Tom starts with 4 apples, so this is wrong. \\boxed{incorrect}\n"
)
SKIPS_0 = (  # the header of paragraph 0 and its verdict are missing
    "Paragraph 1: 3 + 4 = 7, not 8. \\boxed{incorrect}\n"
)
TWO_FOR_0 = (
    "Paragraph 0: Looks fine. \\boxed{correct}\nHmm, wait, let me re-check. Actually it is "
    "fine. \\boxed{correct}\n"
    "Paragraph 1: 3 + 4 = 7. \\boxed{incorrect}\n"
)
CONTRADICTS = RIGHT + "\nOverall, all steps are correct.\n"


def scripted(*texts: str, model_id: str = "scripted-critic") -> ScriptedEngine:
    """A critic whose sample i writes ``texts[i % len(texts)]``."""
    return ScriptedEngine(lambda request, i: texts[i % len(texts)], model_id=model_id)


def run(coroutine):
    return asyncio.run(coroutine)


# --------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text, verdicts, first_error",
    [
        (RIGHT, (True, False, None), 1),
        (ALL_CORRECT, (True, True, True), -1),
        (WRONG_AT_0, (False, None, None), 0),
        # no headers: verdicts map to steps by count
        ("Fine. \\boxed{correct}\nWrong sum. \\boxed{incorrect}", (True, False, None), 1),
        ("\\boxed{correct}\\boxed{correct}\\boxed{correct}", (True, True, True), -1),
        ("Verdicts: \\boxed{correct}, \\boxed{correct}, \\boxed{incorrect}", (True, True, False),
         2),
        # capitalisation, spaces, a \text wrapper: still verdicts
        ("Paragraph 0: ok \\boxed{Correct}\nParagraph 1: \\boxed { CORRECT }\n"
         "Paragraph 2: \\boxed{\\text{correct}}", (True, True, True), -1),
        # markdown headers, extra text before, between and after; a quoted answer box ignored
        ("Let me verify each paragraph.\n\n### Paragraph 0\nGiven. \\boxed{correct}\n\n"
         "### Paragraph 1\nThe sum is 7, while the solution writes \\boxed{8}. "
         "\\boxed{incorrect}\n\nI hope this helps!", (True, False, None), 1),
        # a critic that goes on after the first incorrect step: recorded, never checked
        (RIGHT + "Paragraph 2: follows from paragraph 1. \\boxed{correct}\n", (True, False, True),
         1),
        # a verdict after the first error may skip steps: they stay None
        ("Paragraph 0: \\boxed{incorrect}\nParagraph 2: \\boxed{correct}", (False, None, True),
         0),
        # "Step k:" lines quoted from the solution are not headers (count mode)
        ("Step 1: Tom starts with 3 apples. Right. \\boxed{correct}\n"
         "Step 2: He buys 4 more, so he has 3 + 4 = 8 apples. No: 7. \\boxed{incorrect}",
         (True, False, None), 1),
        # a paragraph named mid-line is not a header
        ("Paragraph 0: as in paragraph 1: later. \\boxed{correct}\nParagraph 1: it is 7.\n"
         "\\boxed{incorrect}", (True, False, None), 1),
        # qualified claims are not contradictions
        (RIGHT + "Not all steps are correct.\nAll steps are correct up to paragraph 1.\n"
         "The steps before paragraph 1 are correct.", (True, False, None), 1),
        (ALL_CORRECT + "If the solution is incorrect, we would see it here. It is not.",
         (True, True, True), -1),
        (ALL_CORRECT + "The final answer of the solution is correct.\nIs the solution "
         "correct? Yes", (True, True, True), -1),
        # claims about one paragraph, or asked as a question, are not about the solution
        ("Paragraph 0: There are no errors. \\boxed{correct}\nParagraph 1: no errors were "
         "found in this step. 3 + 4 = 8? No, 7. \\boxed{incorrect}", (True, False, None), 1),
        (ALL_CORRECT + "Does the solution contain an error? I checked whether the solution "
         "contains an error: it has none.", (True, True, True), -1),
    ],
)
def test_parse_usable(text, verdicts, first_error):
    parse = parse_critique(text, "stop", M)
    assert parse == CritiqueParse(verdicts, first_error, "ok")
    assert parse.usable


@pytest.mark.parametrize(
    "text, finish, reason",
    [
        (RIGHT, "length", "truncated"),  # cut off, whatever it holds
        ("", "stop", "empty_reply"),
        ("  \n ", "stop", "empty_reply"),
        ("x" * (MAX_CRITIQUE_CHARS + 1), "stop", "reply_too_long"),
        ("Every paragraph looks right to me.", "stop", "no_verdict"),
        ("Paragraph 0: \\boxed{wrong}\nParagraph 1: \\boxed{8}", "stop", "no_verdict"),
        # a step skipped
        (SKIPS_0, "stop", "missing_verdict"),
        ("Paragraph 0: \\boxed{correct}\nParagraph 1: hmm.\nParagraph 2: \\boxed{correct}",
         "stop", "missing_verdict"),
        ("\\boxed{correct}\\boxed{correct}", "stop", "missing_verdict"),  # count: 2 of 3
        # two verdicts for one step
        (TWO_FOR_0, "stop", "two_verdicts_for_step"),
        ("Paragraph 0: \\boxed{correct}\nParagraph 1: \\boxed{correct}\n"
         "Paragraph 1: on second thought \\boxed{incorrect}", "stop", "two_verdicts_for_step"),
        # "Paragraph 1 says" is no header, so its verdict falls under "Paragraph 0:": unusable
        # rather than misread
        ("Paragraph 0: fine. \\boxed{correct}\nParagraph 1 says 8 but it is 7.\n"
         "\\boxed{incorrect}", "stop", "two_verdicts_for_step"),
        # more verdicts than steps
        ("\\boxed{correct}" * 4, "stop", "too_many_verdicts"),
        (ALL_CORRECT + "Paragraph 3: \\boxed{correct}", "stop", "too_many_verdicts"),
        # 1-based headers: paragraph 0 has no verdict, paragraph 3 does not exist
        ("Paragraph 1: \\boxed{correct}\nParagraph 2: \\boxed{correct}\n"
         "Paragraph 3: \\boxed{correct}", "stop", "too_many_verdicts"),
        # out of order
        ("Paragraph 1: \\boxed{correct}\nParagraph 0: \\boxed{correct}\n"
         "Paragraph 2: \\boxed{correct}", "stop", "verdicts_out_of_order"),
        # the instructions quoted back
        ("I will end each with \\boxed{correct} or \\boxed{incorrect}.\n" + ALL_CORRECT, "stop",
         "quotes_verdict_form"),
        ("Verdicts: \\boxed{Correct} / \\boxed{Incorrect}\nFine. \\boxed{correct}", "stop",
         "quotes_verdict_form"),
        # a verdict before the first header
        ("At a glance: \\boxed{correct}.\n" + ALL_CORRECT, "stop", "verdict_outside_step"),
        # contradictions
        (CONTRADICTS, "stop", "contradiction"),
        (RIGHT + "So the solution is correct.", "stop", "contradiction"),
        (RIGHT + "Is the solution correct? **Yes**", "stop", "contradiction"),
        (ALL_CORRECT + "Therefore the whole solution is wrong.", "stop", "contradiction"),
        (ALL_CORRECT + "Is the solution correct?\nNo", "stop", "contradiction"),
        (RIGHT + "The solution has no errors.", "stop", "contradiction"),
        (RIGHT + "There are no errors in the whole solution!", "stop", "contradiction"),
        (RIGHT + "No mistakes were found in the solution.", "stop", "contradiction"),
        (ALL_CORRECT + "Still, the solution contains an error somewhere.", "stop",
         "contradiction"),
    ],
)
def test_parse_unusable(text, finish, reason):
    assert parse_critique(text, finish, M) == CritiqueParse(None, None, reason)
    assert reason in PARSE_REASONS


FILLER = st.sampled_from([
    "", "I redo the arithmetic.", "This follows from the problem statement.",
    "Let me check the units.\nThey match.", "3 + 4 = 7.", "The solution writes \\boxed{8} here.",
])


@st.composite
def written_critiques(draw):
    """A critique of a random solution as a well-behaved critic writes it, with the verdicts
    it means: ``(text, num_steps, step_verdicts, first_error)``."""
    num_steps = draw(st.integers(1, 6))
    first_error = draw(st.integers(-1, num_steps - 1))
    headers = draw(st.booleans())
    verdicts: list = [True] * num_steps if first_error == -1 else \
        [True] * first_error + [False] + [None] * (num_steps - first_error - 1)
    # after the first error some critics go on: those verdicts are recorded as written
    if first_error >= 0 and draw(st.booleans()):
        for i in range(first_error + 1, num_steps):
            verdicts[i] = draw(st.booleans())
    parts = [draw(FILLER)]
    for i, verdict in enumerate(verdicts):
        if verdict is None:
            if headers:
                continue
            break  # by count, a verdict cannot be skipped
        word = draw(st.sampled_from(["correct", "Correct", "CORRECT"] if verdict
                                    else ["incorrect", "Incorrect"]))
        header = draw(st.sampled_from(["Paragraph {}:", "**Paragraph {}:**", "### Paragraph {}"]))
        parts.append((header.format(i) + "\n" if headers else "") + draw(FILLER)
                     + f" \\boxed{{{word}}}\n")
    if not headers:
        verdicts = [v if i <= max(j for j, v in enumerate(verdicts) if v is not None) else None
                    for i, v in enumerate(verdicts)]
    parts.append(draw(FILLER))
    return "\n".join(parts), num_steps, tuple(verdicts), first_error


@settings(max_examples=300, deadline=None)
@given(written_critiques())
def test_parse_reads_back_what_was_written(case):
    text, num_steps, verdicts, first_error = case
    assert parse_critique(text, "stop", num_steps) == CritiqueParse(verdicts, first_error, "ok")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}correct inParagraph0123:.\n*#")),
               max_size=300), st.integers(1, 5), st.sampled_from(["stop", "length"]))
def test_parse_never_raises_and_is_consistent(text, num_steps, finish):
    parse = parse_critique(text, finish, num_steps)
    assert parse.reason in PARSE_REASONS
    assert (parse.step_verdicts is not None) == (parse.first_error is not None) == parse.usable
    if parse.usable:
        assert len(parse.step_verdicts) == num_steps
        first = parse.first_error
        assert all(v is True for v in parse.step_verdicts[:num_steps if first == -1 else first])
        assert first == -1 or parse.step_verdicts[first] is False


def test_parse_refuses_a_bad_step_count():
    with pytest.raises(ValueError, match="num_steps"):
        parse_critique(RIGHT, "stop", 0)


def test_parse_is_linear_on_hostile_text():
    hostile = [
        "\\boxed{" * 20_000,
        ("\\boxed{" + "{" * 60) * 1_000,
        "Paragraph 1" + "-" * 100_000,
        ("\n" + "#" * 15 + " paragraph") * 5_000,
        "all steps are" + " " * 100_000,
        "is the solution correct?" + " \n" * 50_000,
    ]
    for text in hostile:
        started = time.perf_counter()
        parse_critique(text[:MAX_CRITIQUE_CHARS], "stop", M)
        assert time.perf_counter() - started < 1.0


# --------------------------------------------------------------------------------------------
# Verification


def usable(first_error: int) -> CritiqueParse:
    verdicts = [True] * M if first_error == -1 else [True] * first_error + [False] + \
        [None] * (M - first_error - 1)
    return CritiqueParse(tuple(verdicts), first_error, "ok")


@pytest.mark.parametrize(
    "critique_first, trusted_first, expected",
    [
        (1, 1, (True, "kept")),
        (-1, -1, (True, "kept")),
        (0, 0, (True, "kept")),
        (0, 1, (False, "disagrees_at_step_0")),  # a trusted-correct step called incorrect
        (2, 1, (False, "disagrees_at_step_1")),  # the trusted error called correct
        (-1, 1, (False, "disagrees_at_step_1")),
        (1, -1, (False, "disagrees_at_step_1")),
        (2, -1, (False, "disagrees_at_step_2")),
        (1, None, (None, "no_trusted_labels")),  # unknown is not "wrong"
    ],
)
def test_check_critique(critique_first, trusted_first, expected):
    assert check_critique(usable(critique_first), trusted_first, M) == expected


def test_check_unusable_keeps_its_parse_reason():
    parse = CritiqueParse(None, None, "truncated")
    assert check_critique(parse, 1, M) == (None, "unusable:truncated")
    assert check_critique(parse, None, M) == (None, "unusable:truncated")


def test_steps_after_the_first_error_are_not_checked():
    after = CritiqueParse((True, False, True), 1, "ok")
    assert check_critique(after, 1, M) == (True, "kept")


@pytest.mark.parametrize("bad", [3, -2, True, "1"])
def test_check_refuses_a_trusted_index_out_of_range(bad):
    with pytest.raises(ValueError, match="trusted_first_error"):
        check_critique(usable(1), bad, M)


def test_quota_keeps_the_lowest_sample_indices():
    parses = [CritiqueParse(None, None, "missing_verdict"), usable(0), usable(1), usable(1),
              usable(1)]
    checks = verify_critiques(parses, 1, num_steps=M, keep_per_solution=2)
    assert checks == [
        CritiqueCheck(None, False, "unusable:missing_verdict"),
        CritiqueCheck(False, False, "disagrees_at_step_0"),
        CritiqueCheck(True, True, "kept"),
        CritiqueCheck(True, True, "kept"),
        CritiqueCheck(True, False, "not_kept_quota"),
    ]
    one = verify_critiques(parses, 1, num_steps=M)
    assert [c.kept for c in one] == [False, False, True, False, False]
    with pytest.raises(ValueError, match="keep_per_solution"):
        verify_critiques(parses, 1, num_steps=M, keep_per_solution=0)


def test_trusted_labels_by_source():
    assert trusted_labels("consensus", mc_first_error=1, consensus_keep=True) == \
        TrustedLabels(1, "consensus")
    assert trusted_labels("consensus", mc_first_error=1, consensus_keep=False) == \
        TrustedLabels(None, "consensus")
    assert trusted_labels("consensus", mc_first_error=None, consensus_keep=None) == \
        TrustedLabels(None, "consensus")
    assert trusted_labels("monte_carlo", mc_first_error=-1, omegaprm_first_error=0) == \
        TrustedLabels(-1, "monte_carlo")
    assert trusted_labels("omegaprm", mc_first_error=-1, omegaprm_first_error=0) == \
        TrustedLabels(0, "omegaprm")
    assert TrustedLabels(1, "consensus").labels(M) == [True, False]
    assert TrustedLabels(-1, "consensus").labels(M) == [True, True, True]
    assert TrustedLabels(None, "consensus").labels(M) is None
    with pytest.raises(ValueError, match="trust"):
        trusted_labels("judge", mc_first_error=1)
    with pytest.raises(ValueError, match="Monte Carlo"):
        trusted_labels("consensus", mc_first_error=None, consensus_keep=True)


def test_only_trusted_skips_trajectories_without_trusted_labels():
    unknown, known = TrustedLabels(None, "consensus"), TrustedLabels(-1, "consensus")
    assert not needs_critique(CriticConfig(), unknown)
    assert needs_critique(CriticConfig(), known)
    assert needs_critique(CriticConfig(only_trusted=False), unknown)


# --------------------------------------------------------------------------------------------
# Evaluate prediction


def test_prediction_is_the_majority_of_all_samples():
    spoiled = CritiqueParse(None, None, "truncated")
    assert predict_first_error([usable(1), usable(1), usable(1), spoiled]).first_error == 1
    tie = predict_first_error([usable(1), usable(1), usable(-1), usable(-1)])
    assert (tie.first_error, tie.reason, tie.agreement) == (None, "no_quorum", 0.5)
    # two usable out of four do not decide
    assert predict_first_error([usable(0), usable(0), spoiled, spoiled]).reason == "no_quorum"
    plurality = predict_first_error([usable(0), usable(0), spoiled, spoiled],
                                    min_agreement=0.5)
    assert (plurality.first_error, plurality.reason) == (0, "ok")
    none = predict_first_error([spoiled, CritiqueParse(None, None, "missing_verdict"), spoiled])
    assert (none.first_error, none.reason, none.votes) == (None, "truncated", (None,) * 3)
    assert predict_first_error([usable(-1)]).first_error == -1  # one sample decides alone


# --------------------------------------------------------------------------------------------
# Config


def test_config_defaults_and_mapping():
    config = CriticConfig()
    assert (config.samples, config.template_id, config.trust, config.keep_per_solution,
            config.only_trusted) == (4, DEFAULT_CRITIC_TEMPLATE, "consensus", 1, True)
    assert config.sampling == CriticSampling() and config.sampling.temperature > 0
    built = from_mapping(CriticConfig, {"samples": 8, "trust": "omegaprm",
                                        "sampling": {"max_tokens": 2048}})
    assert (built.samples, built.trust, built.sampling.max_tokens,
            built.sampling.temperature) == (8, "omegaprm", 2048, 0.7)
    assert json.loads(built.sampling_json())["n"] == 8


@pytest.mark.parametrize(
    "mapping, field",
    [
        ({"samples": 0}, "samples"),
        ({"trust": "judge"}, "trust"),
        ({"keep_per_solution": 0}, "keep_per_solution"),
        ({"sampling": {"temperature": 0.0}}, "sampling.temperature"),
        ({"template_id": "judge_processbench_v1"}, "template_id"),  # asks for no verdicts
        ({"template_id": "../etc/passwd"}, "template_id"),
        ({"min_agreement": 1.5}, "min_agreement"),
        ({"sample": 4}, "sample"),
    ],
)
def test_config_errors_name_the_field(mapping, field):
    with pytest.raises(ConfigError, match=field):
        from_mapping(CriticConfig, mapping, path="critic")


def test_greedy_single_sample_is_allowed():
    config = CriticConfig(samples=1, sampling=CriticSampling(temperature=0.0))
    assert config.samples == 1


def test_template_asks_for_the_exact_verdicts():
    template = load_template(DEFAULT_CRITIC_TEMPLATE)
    shown = template.render(problem="P", tagged_steps="S")
    assert VERDICT_CORRECT in shown and VERDICT_INCORRECT in shown
    assert "Paragraph i:" in shown


# --------------------------------------------------------------------------------------------
# The critic end to end, against scripted critics


def critique(engine, trusted=TrustedLabels(1, "consensus"), *, config=None, run_seed=7,
             problem_id="p1", solution_index=2):
    critic = Critic(engine, config or CriticConfig(), run_seed=run_seed)
    return run(critic.critique(problem_id=problem_id, solution_index=solution_index,
                               question=QUESTION, steps=STEPS, trusted=trusted))


def test_scripted_critics_with_real_faults():
    long_cut = RIGHT.replace("The addition", "The addition " + "hmm " * 300)
    engine = scripted(long_cut, SKIPS_0, WRONG_AT_0, RIGHT, TWO_FOR_0, CONTRADICTS, RIGHT,
                      ALL_CORRECT)
    config = CriticConfig(samples=8, sampling=CriticSampling(max_tokens=200))
    result = critique(engine, config=config)
    assert [c.reason for c in result.checks] == [
        "unusable:truncated",
        "unusable:missing_verdict",
        "disagrees_at_step_0",
        "kept",
        "unusable:two_verdicts_for_step",
        "unusable:contradiction",
        "not_kept_quota",
        "disagrees_at_step_1",
    ]
    assert result.finish_reasons[0] == "length"
    assert [c.kept for c in result.checks].count(True) == result.kept == 1
    assert [c.agrees for c in result.checks] == [None, None, False, True, None, None, True,
                                                 False]
    assert result.parses[3].step_verdicts == (True, False, None)
    # one request, n = samples
    assert len(engine.requests) == 1 and engine.requests[0].n == 8
    # as an evaluate annotator: votes 0, 1, 1, -1 of 8 samples: no quorum
    assert result.prediction.votes == (None, None, 0, 1, None, None, 1, -1)
    assert result.prediction.reason == "no_quorum"


def test_no_trusted_labels_means_unverified_not_wrong():
    result = critique(scripted(RIGHT, WRONG_AT_0), NO_TRUSTED_LABELS)
    assert [c.reason for c in result.checks] == ["no_trusted_labels"] * 4
    assert not any(c.kept for c in result.checks)
    assert all(c.agrees is None for c in result.checks)
    assert result.prediction.first_error is None  # 2 of 4 each: no quorum
    details = result.evaluation_details()
    assert details["votes"] == [1, 0, 1, 0] and details["parse_reasons"] == ["ok"] * 4
    assert details["step_verdicts"][1] == [False, None, None]
    json.dumps(details)
    clean = critique(scripted(ALL_CORRECT), TrustedLabels(-1, "monte_carlo"))
    assert [c.reason for c in clean.checks] == ["kept"] + ["not_kept_quota"] * 3
    assert clean.prediction.first_error == -1


def test_seed_rule():
    engine = scripted(RIGHT)
    result = critique(engine, run_seed=7, problem_id="p1", solution_index=2)
    expected = derive_seed(7, "critic", "p1", 2)
    assert result.seed == expected == engine.requests[0].seed
    other = scripted(RIGHT)
    critique(other, run_seed=7, problem_id="p1", solution_index=3)
    critique(other, run_seed=8, problem_id="p1", solution_index=2)
    seeds = [r.seed for r in other.requests]
    assert len({expected, *seeds}) == 3
    # a rerun makes the same request
    again = scripted(RIGHT)
    critique(again, run_seed=7, problem_id="p1", solution_index=2)
    assert again.requests[0] == engine.requests[0]
    # the judge's seed for the same solution is a different stream
    assert expected != derive_seed(7, "judge", "p1", 2)


def test_request_carries_the_sampling_settings_and_prompt():
    config = CriticConfig(samples=2, sampling=CriticSampling(temperature=0.9, top_p=0.95,
                                                             max_tokens=333, stop=("</end>",)))
    engine = scripted(RIGHT)
    critique(engine, config=config)
    request = engine.requests[0]
    assert (request.n, request.temperature, request.top_p, request.max_tokens, request.stop) == \
        (2, 0.9, 0.95, 333, ("</end>",))
    assert tag_steps(STEPS) in request.prompt and QUESTION in request.prompt
    assert request.prompt.startswith("<|user|>") and request.prompt.endswith("<|assistant|>\n")


def test_rows_carry_everything_and_sum_to_the_cost():
    result = critique(scripted(RIGHT, WRONG_AT_0, RIGHT, "no verdict here"))
    rows = critique_rows(result, manifest_hash="abc")
    assert [r.sample_index for r in rows] == [0, 1, 2, 3]
    assert [r.reason for r in rows] == ["kept", "disagrees_at_step_0", "not_kept_quota",
                                        "unusable:no_verdict"]
    first = rows[0]
    assert (first.problem_id, first.solution_index, first.question, first.steps) == \
        ("p1", 2, QUESTION, STEPS)
    assert first.tagged_steps == tag_steps(STEPS)
    assert first.step_verdicts == [True, False, None] and first.critique_first_error == 1
    assert (first.trusted_first_error, first.trusted_labels, first.trusted_source) == \
        (1, [True, False], "consensus")
    assert rows[3].step_verdicts is None and rows[3].critique_first_error is None
    assert rows[3].parse_reason == "no_verdict"
    assert first.critic_model == "scripted-critic" and first.seed == result.seed
    template = load_template(DEFAULT_CRITIC_TEMPLATE)
    assert (first.template_id, first.template_sha256) == (template.id, template.sha256)
    assert "critic-parser/2" in first.critic_version and first.manifest_hash == "abc"
    # the rows sum to the request's cost; no cache hits recorded
    total = {k: sum(r.cost[k] for r in rows) for k in rows[0].cost}
    assert total == result.cost and "cached_tokens" not in total
    assert total["requests"] == 1 and total["rollouts"] == 4
    # the schema is the dataclass; rows convert without inference
    table = pa.Table.from_pylist([as_row(r) for r in rows], schema=CRITIQUE_SCHEMA)
    assert table.num_rows == 4 and table.schema == CRITIQUE_SCHEMA
    assert [f.name for f in dataclasses.fields(Critique)] == CRITIQUE_SCHEMA.names


# --------------------------------------------------------------------------------------------
# SFT export


def kept_row() -> dict:
    result = critique(scripted(RIGHT))
    return as_row(critique_rows(result, manifest_hash="abc")[0])


def test_sft_messages_pair_the_request_with_the_kept_critique():
    row = kept_row()
    example = sft_messages(row)
    user, assistant = example["messages"]
    assert user["role"] == "user" and assistant == {"role": "assistant", "content": RIGHT}
    # the user turn is exactly what the critic saw inside its chat template
    engine = scripted(RIGHT)
    critique(engine)
    assert f"<|user|>\n{user['content']}\n" in engine.requests[0].prompt
    assert prompt_completion(row) == {"prompt": user["content"], "completion": RIGHT}
    json.dumps(example)  # plain JSON


def test_export_refuses_rows_it_cannot_vouch_for():
    row = kept_row()
    with pytest.raises(ValueError, match="kept"):
        sft_messages({**row, "kept": False, "reason": "not_kept_quota"})
    with pytest.raises(ValueError, match="changed"):
        verification_request({**row, "template_sha256": "0" * 64})
    with pytest.raises(ValueError, match="tagged_steps"):
        prompt_completion({**row, "steps": STEPS[:2]})


# --------------------------------------------------------------------------------------------
# Layering


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layering():
    root = Path(__file__).resolve().parents[1]
    schema_imports = imported_modules(root / "schemas" / "critiques.py")
    assert all(not n.startswith("steplabel.") or n.startswith("steplabel.schemas.")
               for n in schema_imports)
    critic_imports = imported_modules(root / "annotators" / "critic.py")
    assert not any(n.startswith(("steplabel.pipelines", "steplabel.dataset", "apache_beam"))
                   for n in critic_imports)


def test_omegaprm_critique_tasks_are_its_searched_rollouts():
    # trust omegaprm: OmegaPRM's searched rollouts are the trajectories it labelled; a search
    # that located nothing has no trusted labels (never an error), an empty one is no task.
    from steplabel.annotators.stages import omegaprm_critique_tasks
    from steplabel.schemas.graders import MathGold
    from steplabel.schemas.stages import Piece, Problem

    problem = Problem(problem_id="p", question=QUESTION, gold=MathGold("7"), source="src")
    searches = [
        {"search_index": 0, "rollout_id": "p/0#3", "pieces": STEPS, "first_error": 1,
         "reason": "located"},
        {"search_index": 1, "rollout_id": "p/2#0", "pieces": STEPS[:2], "first_error": None,
         "reason": "probe_unknown"},
        {"search_index": 2, "rollout_id": "p/4#1", "pieces": [], "first_error": None,
         "reason": "empty_range"},
    ]
    piece = Piece(rank=(0,), rows={"omegaprm_searches": searches})
    config = CriticConfig(trust="omegaprm")
    located, unknown = omegaprm_critique_tasks(config, problem, piece)
    assert (located.solution_index, located.omegaprm_rollout_id, located.steps,
            located.trusted_first_error, located.trusted_source, located.question,
            located.source) == (0, "p/0#3", STEPS, 1, "omegaprm", QUESTION, "src")
    assert located.key == ("p", 0, "p/0#3")
    assert (unknown.trusted_first_error, unknown.omegaprm_rollout_id) == (None, "p/2#0")
    assert not needs_critique(config, TrustedLabels(unknown.trusted_first_error, "omegaprm"))
    assert omegaprm_critique_tasks(CriticConfig(), problem, piece) == []  # consensus
    assert omegaprm_critique_tasks(config, problem, Piece(rank=(0,))) == []


def test_an_omegaprm_rollout_has_its_own_seed_and_row_identity():
    engine = scripted(RIGHT)
    critic = Critic(engine, CriticConfig(samples=1, sampling=CriticSampling(temperature=0.0)),
                    run_seed=7)
    result = run(critic.critique(problem_id="p1", solution_index=2, question=QUESTION,
                                 steps=STEPS, trusted=TrustedLabels(1, "omegaprm"),
                                 omegaprm_rollout_id="p1/3#0"))
    assert result.seed == derive_seed(7, "critic", "p1", "p1/3#0") != derive_seed(
        7, "critic", "p1", 2)
    (row,) = critique_rows(result, manifest_hash="abc")
    assert (row.solution_index, row.omegaprm_rollout_id, row.reason) == (2, "p1/3#0", "kept")
    assert critique_rows(critique(scripted(RIGHT)), manifest_hash="abc")[0] \
        .omegaprm_rollout_id is None


@pytest.mark.parametrize("text, steps, reason", [
    # a step's words against its own box: contradiction
    ("Paragraph 0: This step is wrong. \\boxed{correct}\nParagraph 1: ok \\boxed{correct}", 2,
     "contradiction"),
    ("Paragraph 0: This step is wrong because 3 + 4 = 7. \\boxed{correct}", 1,
     "contradiction"),
    ("Paragraph 0: This paragraph is correct. \\boxed{incorrect}", 1, "contradiction"),
    ("Paragraph 0: This step contains an error: 3 + 4 = 7. \\boxed{correct}", 1,
     "contradiction"),
    ("Paragraph 0: This step has no errors. \\boxed{incorrect}", 1, "contradiction"),
    ("Fine. \\boxed{correct}\nThis paragraph is not correct. \\boxed{correct}", 2,
     "contradiction"),  # without headers: from the previous verdict to the box
    (RIGHT + "Paragraph 2: this step is incorrect. \\boxed{correct}", 3,
     "contradiction"),  # after the first error too: the text is kept as written
    # conservative: not whole clauses, qualified, other steps, agreeing words: ok
    ("Paragraph 0: This paragraph is correct up to the sum, which is wrong. "
     "\\boxed{incorrect}", 1, "ok"),
    ("Paragraph 0: I checked whether this step is wrong: it is not. \\boxed{correct}", 1,
     "ok"),
    ("Paragraph 0: This step is not wrong. \\boxed{correct}", 1, "ok"),
    ("Paragraph 0: This step contains an error: 3 + 4 = 7. \\boxed{incorrect}", 1, "ok"),
    ("Paragraph 0: The previous step is wrong. \\boxed{correct}", 1, "ok"),
    ("Paragraph 0: ok \\boxed{correct} This step is wrong.\nParagraph 1: This step is "
     "wrong. \\boxed{incorrect}", 2, "ok"),  # words after a box belong to no verification
])
def test_a_steps_words_against_its_own_box(text, steps, reason):
    assert parse_critique(text, "stop", steps).reason == reason
