"""The constrained judge (``judge.constrain_verdict``), the engines' ``choices`` and the demo's
data and answer reading (issue #23)."""

import json

import pytest

from fakes import ScriptedEngine
from steplabel.annotators.grading import extract_final_answer, grade
from steplabel.annotators.judge import LLMJudge, judge_version, verdict_choices
from steplabel.demo_data import generate_addition_problems, write_problems
from steplabel.engines.base import GenerationRequest
from steplabel.schemas.annotators import JudgeConfig, JudgeSampling
from steplabel.schemas.config import ConfigError, to_mapping

pytestmark = pytest.mark.unit

PREFIX = "The earliest wrong paragraph is \\boxed{"


def constrained(**overrides) -> JudgeConfig:
    values = dict(votes=3, response_prefix=PREFIX, constrain_verdict=True,
                  sampling=JudgeSampling(temperature=0.8, max_tokens=4, stop=("}",)))
    values.update(overrides)
    return JudgeConfig(**values)


def test_verdict_choices_are_every_valid_index_and_the_closing_brace():
    assert verdict_choices(3) == ("-1}", "0}", "1}", "2}")
    with pytest.raises(ValueError):
        verdict_choices(0)


def test_constraint_needs_the_forced_verdict_form():
    with pytest.raises(ConfigError, match="constrain_verdict"):
        JudgeConfig(constrain_verdict=True)
    with pytest.raises(ConfigError, match="constrain_verdict"):
        JudgeConfig(constrain_verdict=True, response_prefix="\\boxed{2} is my answer")
    with pytest.raises(ConfigError, match="constrain_verdict"):
        JudgeConfig(constrain_verdict="yes", response_prefix=PREFIX)


def test_constraint_off_leaves_the_canonical_form_and_the_version_alone():
    # Manifests written before the option keep their hash; the version says when it is on.
    assert "constrain_verdict" not in to_mapping(JudgeConfig())
    assert to_mapping(constrained())["constrain_verdict"] is True
    assert judge_version(JudgeConfig()) + ";choice" == judge_version(constrained())


def test_request_carries_the_choices_only_when_constrained():
    engine = ScriptedEngine(lambda request, index: "1}")
    on = LLMJudge(engine, constrained(), run_seed=1).request_for(
        problem_id="p", solution_index=0, question="q", steps=["a", "b"])
    off = LLMJudge(engine, constrained(constrain_verdict=False), run_seed=1).request_for(
        problem_id="p", solution_index=0, question="q", steps=["a", "b"])
    assert on.choices == ("-1}", "0}", "1}") and off.choices == ()
    assert (on.prompt, on.seed, on.n) == (off.prompt, off.seed, off.n)


def test_a_constrained_judge_reads_every_vote():
    # Unconstrained, a small model writes \boxed{k} and \boxed{14}: unreadable votes. The
    # scripted engine constrains like vLLM's structured outputs: every sample is a choice.
    replies = ["k}", "14}", "1}"]
    engine = ScriptedEngine(lambda request, index: replies[index])

    async def judge(config):
        return await LLMJudge(engine, config, run_seed=3).judge(
            problem_id="p", solution_index=0, question="q", steps=["a", "b", "c"])

    import asyncio
    free = asyncio.run(judge(constrained(constrain_verdict=False)))
    assert free.parse_reasons == ["verdict_not_integer", "out_of_range", "ok"]
    bound = asyncio.run(judge(constrained()))
    assert bound.parse_reasons == ["ok", "ok", "ok"]
    assert all(-1 <= vote <= 2 for vote in bound.votes)
    assert bound.votes[2] == 1  # a valid verdict is kept as written


def test_generation_request_refuses_empty_choices():
    with pytest.raises(ValueError, match="choices"):
        GenerationRequest(prompt="x", choices=("",))
    assert GenerationRequest(prompt="x", choices=["a", "b"]).choices == ("a", "b")


@pytest.mark.parametrize("text, answer", [
    ("Step 1: 6 + 3 = 9\nFinal answer: 9", "9"),
    ("Step 1: ok\nFinal Answer: 12 apples.", "12 apples"),
    ("The answer is: 9", "9"),
    ("the final answer is 7.", "7"),
    ("final answer 3", None),  # no colon, no "is": not a statement of the answer
])
def test_final_answer_lines_are_read(text, answer):
    assert extract_final_answer(text) == answer


def test_final_answer_line_is_graded_like_the_answer_is():
    assert grade("Step 1: 6 + 3 = 9\nFinal answer: 9", "9").verdict == "correct"
    assert grade("Step 1: 6 + 3 = 10\nFinal answer: 10", "9").verdict == "incorrect"


def test_addition_problems_are_small_sums_and_deterministic(tmp_path):
    problems = generate_addition_problems(24, seed=0)
    assert problems == generate_addition_problems(24, seed=0)
    for problem in problems:
        numbers = [int(w) for w in problem["question"].split() if w.isdigit()]
        assert len(numbers) == 2 and all(1 <= n <= 9 for n in numbers)
        assert problem["answer"] == str(sum(numbers))
    path = tmp_path / "addition.jsonl"
    assert write_problems(str(path), count=5, kind="addition") == 5
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()][0] == "add-0000"


def test_the_shipped_demo_data_is_what_demo_data_writes(tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "jobs" / "data" / "addition.jsonl"
    path = tmp_path / "a.jsonl"
    write_problems(str(path), kind="addition")
    assert path.read_text() == shipped.read_text()
