"""The python_tests grader, its input layouts and the code splitter."""

import json
from pathlib import Path

import pytest

from steplabel.annotators.code_splitting import split_code_solution, statement_chunks
from steplabel.annotators.python_tests import (
    PythonTestsGrader,
    extract_program,
    from_humaneval,
    from_mbpp,
    harness_tests,
)
from steplabel.annotators.sandbox import SandboxPool, SandboxResult
from steplabel.annotators.splitting import get_splitter
from steplabel.pipelines.sources import RawItem, validate_item
from steplabel.schemas.graders import GoldRejected, Grade, PythonTestsGold
from steplabel.schemas.manifest import FieldMapping

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "humaneval_layout_small.jsonl"
FENCE = "```"


def solution(code: str, reasoning: str = "We add one.") -> str:
    return f"{reasoning}\n\n{FENCE}python\n{code}\n{FENCE}\n"


@pytest.fixture(scope="module")
def grader():
    pool = SandboxPool(size=2)
    yield PythonTestsGrader(timeout_s=1, memory_mb=256, pool=pool)
    pool.close()


GOLD = PythonTestsGold(tests="assert add_one(1) == 2\nassert add_one(-1) == 0\n")


# --- programs ---------------------------------------------------------------------------------

def test_extract_program_takes_the_last_closed_python_block():
    text = (f"{FENCE}python\nx = 1\n{FENCE}\ntext\n{FENCE}py\ny = 2\n{FENCE}\n"
            f"{FENCE}text\nnot code\n{FENCE}")
    assert extract_program(text) == "y = 2\n"
    assert extract_program(f"{FENCE}python\nx = 1\n{FENCE}\n{FENCE}python\ncut inside") == "x = 1\n"
    assert extract_program(f"{FENCE}python\ncut inside") is None
    assert extract_program("no code at all") is None
    assert extract_program(f"{FENCE}python\n  \n{FENCE}") is None
    assert extract_program(f"a\r\n{FENCE}python3\r\nz = 3\r\n{FENCE}\r\n") == "z = 3\n"


# --- verdicts ---------------------------------------------------------------------------------

def test_grade_is_a_grade_with_the_sandbox_outcome(grader):
    result = grader.grade(solution("def add_one(x):\n    return x + 1"), GOLD)
    assert isinstance(result, Grade)
    assert (result.verdict, result.reason, result.outcome) == ("correct", "tests_passed", "passed")
    assert result.is_correct and result.predicted.startswith("def add_one")
    assert result.isolation


@pytest.mark.parametrize("code, verdict, outcome, reason", [
    ("def add_one(x):\n    return x + 2", "incorrect", "failed", "assertion_failed:line 1"),
    ("def add_one(x):\n    return x.bad", "incorrect", "failed", "test_exception:AttributeError"),
    ("raise ValueError('no')", "incorrect", "failed", "program_exception:ValueError"),
    ("def add_one(x)\n    return x", "incorrect", "failed", "syntax_error"),
    ("def add_one(x):\n    while True:\n        pass", "incorrect", "timeout", "timeout:"),
    ("import sys\nsys.exit(0)", "incorrect", "failed", "exited_before_tests"),
    ("import os\nos._exit(0)", "incorrect", "failed", "exited_before_tests:status=0"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "incorrect", "killed",
     "killed:SIGSEGV"),
])
def test_verdicts_follow_the_table(grader, code, verdict, outcome, reason):
    result = grader.grade(solution(code), GOLD)
    assert (result.verdict, result.outcome) == (verdict, outcome), result
    assert result.reason.startswith(reason), result


def test_unknowns_are_never_incorrect(grader):
    cut = grader.grade(solution("def add_one(x):\n    return x + 2"), GOLD, truncated=True)
    assert (cut.verdict, cut.reason) == ("unknown", "truncated")
    none = grader.grade("I would write a function that adds one.", GOLD)
    assert (none.verdict, none.reason) == ("unknown", "no_program")
    unclosed = grader.grade(f"Here:\n{FENCE}python\ndef add_one(x):\n    return x + 1\n", GOLD)
    assert unclosed.verdict == "unknown"


def test_a_sandbox_that_cannot_run_is_unknown():
    class BrokenPool:
        def run(self, program, tests, limits):
            return SandboxResult("unknown", "sandbox_unavailable:no worker")

    broken = PythonTestsGrader(pool=BrokenPool())
    result = broken.grade(solution("def add_one(x):\n    return x + 1"), GOLD)
    assert (result.verdict, result.outcome) == ("unknown", "unknown")
    assert result.reason == "sandbox_unavailable:no worker"


def test_rollout_is_graded_by_the_program_the_completed_solution_ends_with(grader):
    prefix = f"First try:\n\n{FENCE}python\ndef add_one(x):\n    return x\n{FENCE}\n\nThat is wrong."
    rollout = "\n\nFixed:\n\n" + f"{FENCE}python\ndef add_one(x):\n    return x + 1\n{FENCE}"
    assert grader.grade(prefix + rollout, GOLD).verdict == "correct"
    assert grader.grade(prefix, GOLD).verdict == "incorrect"


# --- gold ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("record, reason", [
    ({"id": "a"}, "tests_missing"),
    ({"id": "a", "tests": "   \n"}, "tests_missing"),
    ({"id": "a", "tests": 7}, "tests_missing"),
    ({"id": "a", "tests": "assert f(1) == "}, "tests_do_not_compile"),
    ({"id": "a", "tests": "assert f(1)", "entry_point": "not a name"}, "entry_point_not_a_name"),
])
def test_bad_gold_is_a_dead_letter_reason(grader, record, reason):
    rejected = grader.parse_gold(record)
    assert isinstance(rejected, GoldRejected) and rejected.reason == reason
    if reason == "tests_do_not_compile":
        assert rejected.error.startswith("SyntaxError")


def test_tests_that_pass_on_an_empty_program_warn(grader):
    weak = grader.parse_gold({"id": "w", "tests": "assert True\n"})
    assert grader.validate_gold(weak) == "tests_pass_on_empty_program"
    uncalled = grader.parse_gold({"id": "u", "tests": "def check(c):\n    assert c(1) == 2\n"})
    assert grader.validate_gold(uncalled) == "tests_pass_on_empty_program"  # nothing calls it
    good = grader.parse_gold({"id": "g", "tests": GOLD.tests})
    assert grader.validate_gold(good) is None


def test_layouts_are_read_by_the_source(grader):
    record = json.loads(DATA.read_text().splitlines()[0])
    problem, dead = validate_item(RawItem("he", 0, json.dumps(record).encode()),
                                  fields=FieldMapping(), answer_format="plain",
                                  manifest_hash="h", grader=grader, layout="humaneval")
    assert dead is None and problem.problem_id == record["task_id"]
    assert problem.gold == PythonTestsGold(record["test"], record["entry_point"])
    assert record["prompt"].strip() in problem.question and problem.original
    mbpp = {"task_id": 7, "text": "Write f.", "test_list": ["assert f() == 1"]}
    problem, dead = validate_item(RawItem("mbpp", 0, mbpp), fields=FieldMapping(),
                                  answer_format="plain", manifest_hash="h", grader=grader,
                                  layout="mbpp")
    assert dead is None and problem.problem_id == "mbpp/7"
    assert problem.gold.tests == "assert f() == 1"
    _, dead = validate_item(RawItem("mbpp", 1, {"task_id": 8, "text": "x", "test_list": []}),
                            fields=FieldMapping(), answer_format="plain", manifest_hash="h",
                            grader=grader, layout="mbpp")
    assert (dead["problem_id"], dead["reason"]) == ("mbpp/8", "tests_missing")


def test_humaneval_check_is_called_with_the_entry_point():
    gold = PythonTestsGold("def check(candidate):\n    assert candidate(1) == 2\n", "add_one")
    assert harness_tests(gold).rstrip().endswith("check(add_one)")
    called = PythonTestsGold("def check(c):\n    assert c(1) == 2\ncheck(add_one)\n", "add_one")
    assert harness_tests(called) == called.tests


def test_humaneval_layout_canonical_solutions_are_correct(grader):
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert len(records) >= 4
    for record in records:
        plain = from_humaneval(record)
        assert plain["id"] == record["task_id"] and record["prompt"].strip() in plain["question"]
        gold = grader.parse_gold(plain)
        assert gold.entry_point == record["entry_point"]
        assert grader.validate_gold(gold) is None
        program = record["prompt"] + record["canonical_solution"]
        result = grader.grade(solution(program, "Reasoning."), gold)
        assert (result.verdict, result.reason) == ("correct", "tests_passed"), (plain["id"], result)
        wrong = record["prompt"] + "    return None\n"
        assert grader.grade(solution(wrong), gold).verdict == "incorrect", plain["id"]


def test_mbpp_layout(grader):
    record = {"task_id": 2, "text": "Write a function to find the shared elements of two lists.",
              "test_setup_code": "",
              "test_list": ["assert set(similar(([3, 4, 5], [5, 7, 4]))) == {4, 5}",
                            "assert similar(([1], [2])) == ()"],
              "challenge_test_list": []}
    plain = from_mbpp(record)
    assert plain["id"] == "mbpp/2" and plain["entry_point"] is None
    assert "similar(([1], [2]))" in plain["question"]
    gold = grader.parse_gold(plain)
    right = "def similar(pair):\n    return tuple(set(pair[0]) & set(pair[1]))"
    assert grader.grade(solution(right), gold).verdict == "correct"
    assert grader.grade(solution("def similar(pair):\n    return ()"), gold).verdict == "incorrect"
    assert from_mbpp({"task_id": 3, "text": "x", "test_list": []})["tests"] is None


# --- steps --------------------------------------------------------------------------------------

CODE_SOLUTION = (
    "We need the largest prefix value.\n\nKeep a running best.\n\n"
    f"{FENCE}python\n"
    "import math\n"
    "# helper, with its comment\n"
    "@functools.cache\n"
    "def g(x):\n\n    return x\n\n\n"
    "LIMIT = 3; OTHER = 4\n"
    "def f(x):\n    return g(x) + LIMIT  # trailing\n"
    "# the end\n"
    f"{FENCE}\n\nThat is all."
)


def test_code_steps_are_paragraphs_then_top_level_statements():
    splitter = get_splitter("python_statements")
    steps = splitter.split(CODE_SOLUTION)
    assert steps == [
        "We need the largest prefix value.",
        "Keep a running best.",
        f"{FENCE}python\nimport math",
        "# helper, with its comment\n@functools.cache\ndef g(x):\n\n    return x",
        "LIMIT = 3; OTHER = 4",
        f"def f(x):\n    return g(x) + LIMIT  # trailing\n# the end\n{FENCE}",
        "That is all.",
    ]
    joined = splitter.join(steps)
    assert splitter.split(joined) == steps  # splitting the joined steps is stable
    assert extract_program(joined) is not None
    # Every prefix that ends inside the program is an open fence over complete statements.
    for k in range(3, 6):
        prefix = splitter.join(steps[:k])
        program = prefix.split(f"{FENCE}python\n", 1)[1]
        compile(program, "<prefix>", "exec")


def test_code_steps_fall_back_to_blank_lines_when_the_program_does_not_parse():
    assert statement_chunks("def f(:\n    pass\n\nx = 1") == ["def f(:\n    pass", "x = 1"]
    assert split_code_solution("only words\n\nhere") == ["only words", "here"]
    one = get_splitter("python_statements").split(f"{FENCE}python\nx = 1\n{FENCE}")
    assert one == [f"{FENCE}python\nx = 1\n{FENCE}"]
