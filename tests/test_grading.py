import threading
import time

import pytest

from steplabel.annotators.grading import (
    compare_answers,
    extract_final_answer,
    grade,
    parse_gold,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so we get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{{2}+3}", "{2}+3"),
        ("Step 2: 3 + 4 = 7\nThe answer is: 7", "7"),
        ("The final answer is $18$.", "18"),
        ("Janet makes 18 dollars.\n#### 18", "18"),
        ("no answer here", None),
    ],
)
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


def test_parse_gold_formats():
    assert parse_gold("She pays 3 + 4 = 7.\n#### 7", "gsm8k") == "7"
    assert parse_gold("The sum is $\\boxed{\\frac{3}{4}}$.", "boxed") == "\\frac{3}{4}"
    assert parse_gold(" 42 ", "plain") == "42"
    assert parse_gold("no marker", "gsm8k") is None


def test_fraction_equals_decimal():
    result = grade("Thus \\boxed{0.5}", "\\frac{1}{2}")
    assert result.verdict == "correct", result


def test_boxed_fraction_gold_against_decimal_prediction():
    gold = parse_gold("\\boxed{\\frac{1}{2}}", "boxed")
    assert grade("The answer is: 0.5", gold).verdict == "correct"


def test_no_substring_matching():
    result = grade("The answer is: 10", "1")
    assert result.verdict == "incorrect"
    assert result.reason == "numeric_differ"


def test_numbers_with_commas_and_units():
    assert grade("The answer is: $1,000", "1000").verdict == "correct"
    assert grade("#### 18.00", "18").verdict == "correct"


def test_unparseable_gold_is_unknown_not_incorrect():
    result = grade("The answer is: 7", "\\frac{")
    assert result.verdict == "unknown"
    assert result.reason


def test_missing_gold_is_unknown():
    assert grade("The answer is: 7", None).verdict == "unknown"


def test_no_final_answer_is_incorrect_with_reason():
    result = grade("I am not sure.", "7")
    assert (result.verdict, result.reason) == ("incorrect", "no_final_answer")


def test_symbolic_equivalence():
    assert grade("\\boxed{x^2 + 2x + 1}", "(x+1)^2").verdict == "correct"
    assert grade("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}").verdict == "correct"


def test_pathological_expression_returns_within_bound():
    started = time.perf_counter()
    result = compare_answers("10^{10^{10^{10}}}", "10^{10^{10^{10}}}+1", timeout_s=2.0)
    elapsed = time.perf_counter() - started
    assert elapsed < 30  # bound (2 s) + one worker start; never unbounded
    assert result.verdict in {"unknown", "incorrect"}


def test_deeply_nested_and_enormous_answers_are_unknown():
    deep = "{" * 100 + "1" + "}" * 100
    assert grade(f"The answer is: {deep}", "1").reason == "prediction_answer_too_deep"
    huge = "1+" * 5000 + "1"
    assert grade("The answer is: 3", huge).reason == "gold_answer_too_long"


def test_grading_off_the_main_thread():
    results = []

    def work():
        results.append(grade("\\boxed{\\frac{2}{4}}", "0.5").verdict)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["correct"] * 3


@pytest.mark.unit
def test_prm800k_answer_heading_is_the_final_answer():
    """PRM800K's solutions end with "# Answer", a blank line, then the answer."""
    from steplabel.annotators.grading import extract_final_answer, grade

    text = "Step one.\n\nStep two gives 8.\n\n# Answer\n\n8"
    assert extract_final_answer(text) == "8"
    assert grade(text, "8").verdict == "correct"
    assert grade(text, "9").verdict == "incorrect"
    assert extract_final_answer("Markdown # Answers here\nno") is None


@pytest.mark.unit
def test_a_new_grader_process_start_up_is_not_charged_to_the_comparison():
    """Verdicts must not depend on machine load: importing sympy in a fresh worker took more
    than the 5 s comparison budget on a loaded machine, and a correct answer became unknown."""
    from steplabel.annotators.grading import MathVerifyPool

    pool = MathVerifyPool(size=1)
    try:
        # A budget far below the worker's import time, far above the comparison's CPU time.
        assert pool.compare("\\frac{1}{2}", "0.5", 0.5) == ("correct", "math_verify_equal")
    finally:
        pool.close()
