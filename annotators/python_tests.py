"""The ``python_tests`` grader: a solution is correct when its program passes the problem's tests.

A problem carries Python test code instead of an answer: the plain record is
``{"id", "question", "tests", "entry_point"?}``, where ``tests`` is Python source whose asserts
must pass. :func:`from_humaneval` and :func:`from_mbpp` read those datasets' layouts into it.
A solution's program is its last fenced ```` ```python ```` block (a block that never closes is
no program: the text was cut inside it); a rollout's program is the one the completed solution
(prefix and rollout) ends with. The program runs in the sandbox (:mod:`.sandbox`), never here.

Verdicts follow the math grader's rule: only evidence about the program makes one.

============================================  =========  ===================================
what happened                                 verdict    reason (examples)
============================================  =========  ===================================
all tests returned                            correct    ``tests_passed``
an assert failed                              incorrect  ``assertion_failed:line 3: ...``
the program or the tests raised               incorrect  ``program_exception:TypeError: ...``
the program exited before the tests ran       incorrect  ``exited_before_tests:status=0``
past the CPU or wall time limit               incorrect  ``timeout:cpu_time_over_5s``
killed by a signal of its own doing           incorrect  ``killed:SIGSEGV``, ``killed:output_over_8MB``
cut off at ``max_tokens``                     unknown    ``truncated``
a finished solution with no program           unknown    ``no_program``
the sandbox could not run it                  unknown    ``sandbox_...``
============================================  =========  ===================================

A memory error under ``memory_mb`` is the program's exception (incorrect): the limit is part of
the problem as the manifest states it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Mapping

from steplabel.annotators.sandbox import SandboxLimits, SandboxPool, SandboxResult, shared_pool
from steplabel.schemas.graders import (
    GoldRejected,
    Grade,
    PythonTestsGold,
    PythonTestsGraderConfig,
)

GRADER_NAME = "python_tests"
GRADER_VERSION = "steplabel-python-tests/1"

# An opening fence names python (``python``, ``py``, ``python3``) and ends its line; the block
# ends at the next fence on a line of its own.
_FENCE_RE = re.compile(r"(?m)^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n(.*?)^[ \t]*```[ \t]*$",
                       re.DOTALL)


def extract_program(text: str) -> str | None:
    """The last closed ```` ```python ```` block of ``text``, or None when there is none (or it
    holds only whitespace)."""
    blocks = _FENCE_RE.findall(text.replace("\r\n", "\n"))
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1]


@dataclass(frozen=True)
class CodeGrade(Grade):
    """A :class:`Grade` with the sandbox's outcome (passed, failed, timeout, killed, unknown)
    and what isolated the run (``""`` when nothing ran)."""

    outcome: str = "unknown"
    isolation: str = ""
    #: Wall seconds the sandbox took (0 when nothing ran): ``plan`` prices sandbox time.
    wall_s: float = 0.0

    @property
    def ran(self) -> bool:
        """Whether the sandbox was asked to run a program (False: truncated, no program, no
        gold): what the ``sandbox_<outcome>`` counters count."""
        return self.reason not in _NOT_RUN


_NOT_RUN = frozenset({"truncated", "no_program", "gold_missing"})


def _calls_check(tree: ast.Module) -> tuple[bool, bool]:
    """(defines a top-level ``check``, calls ``check`` at top level)."""
    defines = any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body)
    calls = any(isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "check"
                for node in tree.body)
    return defines, calls


def harness_tests(gold: PythonTestsGold) -> str:
    """The test source the sandbox runs: HumanEval's tests define ``check(candidate)`` and never
    call it, so ``check(<entry_point>)`` is appended to such tests."""
    tree = ast.parse(gold.tests)
    defines, calls = _calls_check(tree)
    if defines and not calls and gold.entry_point:
        return f"{gold.tests.rstrip()}\n\ncheck({gold.entry_point})\n"
    return gold.tests


class PythonTestsGrader:
    """Grades a solution's program by running the problem's tests in the sandbox.

    Config (the manifest's ``grader: {name: python_tests, timeout_s: 5, memory_mb: 512}``):
    ``timeout_s`` CPU seconds and ``memory_mb`` of address space per run. The sandbox pool is
    the process's :func:`~.sandbox.shared_pool`, started on the first run (never at
    construction: the grader is pickled into Beam transforms) and closed when the process
    exits or :meth:`close` is called. ``pool`` (tests) replaces it."""

    name = GRADER_NAME
    version = GRADER_VERSION

    def __init__(self, config: PythonTestsGraderConfig | None = None, *,
                 timeout_s: float | None = None, memory_mb: int | None = None,
                 pool: SandboxPool | None = None) -> None:
        config = config or PythonTestsGraderConfig()
        if timeout_s is not None or memory_mb is not None:
            config = PythonTestsGraderConfig(
                timeout_s=config.timeout_s if timeout_s is None else timeout_s,
                memory_mb=config.memory_mb if memory_mb is None else memory_mb)
        self.config = config
        self.limits = SandboxLimits(timeout_s=config.timeout_s, memory_mb=config.memory_mb)
        self._pool = pool

    def __getstate__(self) -> dict:
        # A pool holds processes and locks: a pickled grader starts its own on arrival.
        return {**self.__dict__, "_pool": None}

    @property
    def pool(self) -> SandboxPool:
        if self._pool is None:
            self._pool = shared_pool()
        return self._pool

    def close(self) -> None:
        """Stop the idle sandbox workers (a later run starts new ones)."""
        if self._pool is not None:
            self._pool.close()

    def parse_gold(self, record: Mapping, *, fields=None,
                   answer_format: str = "plain") -> PythonTestsGold | GoldRejected:
        """The gold of a plain record (``tests``, optional ``entry_point``; the source's
        ``layout`` has already turned HumanEval and MBPP records into that), or why the record
        cannot be graded: ``tests_missing`` (no, empty or non-string ``tests``),
        ``tests_do_not_compile``, ``entry_point_not_a_name``. ``fields`` and ``answer_format``
        (the math grader's settings) are not used."""
        tests = record.get("tests")
        if not isinstance(tests, str) or not tests.strip():
            return GoldRejected("tests_missing", "field 'tests': missing, empty or not a string")
        try:
            compile(tests, "<tests>", "exec")
        except (SyntaxError, ValueError) as exc:
            return GoldRejected("tests_do_not_compile", f"{type(exc).__name__}: {exc}")
        entry_point = record.get("entry_point") or None
        if entry_point is not None and (not isinstance(entry_point, str)
                                        or not entry_point.isidentifier()):
            return GoldRejected("entry_point_not_a_name",
                                f"field 'entry_point': {entry_point!r} is not a Python name")
        return PythonTestsGold(tests=tests, entry_point=entry_point)

    def gold_warning(self, gold: PythonTestsGold) -> str | None:
        """A warning reason when the tests cannot tell right from wrong
        (``tests_pass_on_empty_program``), ``tests_not_checked`` when the sandbox could not
        run them, else None. Runs the tests once in the sandbox, on an empty program."""
        result = self.pool.run("", harness_tests(gold), self.limits)
        if result.outcome == "passed":
            return "tests_pass_on_empty_program"
        if result.outcome == "unknown":
            return "tests_not_checked"
        return None

    validate_gold = gold_warning

    def run(self, program: str, gold: PythonTestsGold) -> SandboxResult:
        return self.pool.run(program, harness_tests(gold), self.limits)

    def grade(self, solution: str, gold: PythonTestsGold | None, *,
              truncated: bool = False) -> CodeGrade:
        """Grade a solution (or a prefix and its rollout, joined) by its last program. ``gold``
        None grades unknown (``gold_missing``)."""
        if truncated:
            return CodeGrade("unknown", "truncated", None, None, outcome="unknown")
        if gold is None:
            return CodeGrade("unknown", "gold_missing", None, None, outcome="unknown")
        program = extract_program(solution)
        if program is None:
            return CodeGrade("unknown", "no_program", None, None, outcome="unknown")
        result = self.run(program, gold)
        return grade_from_result(result, program)


def grade_from_result(result: SandboxResult, program: str | None = None) -> CodeGrade:
    """The verdict of a sandbox run (the table in this module's docstring)."""
    if result.outcome == "passed":
        verdict, reason = "correct", result.reason
    elif result.outcome == "failed":
        verdict, reason = "incorrect", result.reason
    elif result.outcome == "timeout":
        verdict, reason = "incorrect", f"timeout:{result.reason}"
    elif result.outcome == "killed":
        verdict, reason = "incorrect", result.reason
    else:
        verdict, reason = "unknown", result.reason or "sandbox_unknown"
    return CodeGrade(verdict, reason, program, None, outcome=result.outcome,  # type: ignore[arg-type]
                     isolation=result.isolation, wall_s=result.wall_s)


# --------------------------------------------------------------------------------------------
# Input layouts


def from_plain(record: Mapping) -> dict:
    """A plain record as read (``id``, ``question``, ``tests``, optional ``entry_point``)."""
    return {"id": str(record.get("id", "")), "question": record.get("question", ""),
            "tests": record.get("tests"), "entry_point": record.get("entry_point") or None}


def from_humaneval(record: Mapping) -> dict:
    """A HumanEval record (``task_id``, ``prompt``, ``test``, ``entry_point``,
    ``canonical_solution``) as a plain record. The question asks for the whole function, in
    one fenced block; the tests are HumanEval's ``check`` (called by :func:`harness_tests`)."""
    prompt = record.get("prompt") or ""
    question = ("Complete the following Python function. Reason step by step, then give the "
                "complete function (with its imports) in one ```python block.\n\n"
                f"```python\n{prompt.rstrip()}\n```")
    return {"id": str(record.get("task_id", "")), "question": question,
            "tests": record.get("test"), "entry_point": record.get("entry_point") or None}


def from_mbpp(record: Mapping) -> dict:
    """An MBPP record (``task_id``, ``text``, ``test_list``, optional ``test_setup_code``,
    ``challenge_test_list``) as a plain record. As in the MBPP paper's prompt, the question
    shows the tests (they name the function to write)."""
    asserts = [t for t in (record.get("test_list") or []) if isinstance(t, str) and t.strip()]
    challenge = [t for t in (record.get("challenge_test_list") or [])
                 if isinstance(t, str) and t.strip()]
    setup = record.get("test_setup_code") or ""
    shown = "\n".join(asserts)
    question = (f"{record.get('text', '').strip()}\nYour code should pass these tests:\n\n"
                f"```python\n{shown}\n```\n\nReason step by step, then give the program in one "
                "```python block.")
    tests = "\n".join([setup.strip()] * bool(setup.strip()) + asserts + challenge)
    return {"id": f"mbpp/{record.get('task_id', '')}", "question": question,
            "tests": tests or None, "entry_point": None}


#: The input layouts a source may declare (``source.layout``): a function from a record in
#: that layout to a plain record (None: the record is plain already).
LAYOUTS = {"plain": None, "humaneval": from_humaneval, "mbpp": from_mbpp}
