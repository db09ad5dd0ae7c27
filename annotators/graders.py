"""Graders: what decides whether a finished solution is right, chosen in the manifest.

A grader reads its gold out of an input record when problems are validated
(:meth:`Grader.parse_gold`: the typed gold, or why the record cannot be graded against) and
grades finished solutions against it (:meth:`Grader.grade`). Sampling grades the policy's
solutions with it; Monte Carlo and OmegaPRM grade their rollouts with it; its ``name`` and
``version`` go into every row's provenance (``grader_version``) and the lock.

``grader: {name: math}`` (the default) is :class:`MathGrader`, the final answer against a gold
answer (:mod:`steplabel.annotators.grading`).

Adding a grader: its config and gold types in :mod:`steplabel.schemas.graders`, a module with a
class that satisfies :class:`Grader`, and one line in :data:`GRADERS`.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Mapping, Protocol

from steplabel.annotators import grading
from steplabel.annotators.python_tests import PythonTestsGrader
from steplabel.schemas.config import ConfigError
from steplabel.schemas.graders import (
    GRADER_CONFIGS,
    Gold,
    GoldRejected,
    Grade,
    GraderConfig,
    MathGold,
    MathGraderConfig,
)
from steplabel.schemas.manifest import FieldMapping


class Grader(Protocol):
    """Decides whether a finished solution is right.

    - ``name``: the manifest's ``grader.name``; ``version``: recorded in provenance and the lock,
      a string that names the grader and changes whenever a verdict could change.
    - ``parse_gold(record, fields=..., answer_format=...)``: the gold of one input record (a dict
      as read from the source; ``fields`` and ``answer_format`` are the source's settings), or a
      :class:`GoldRejected` whose reason names the dead-letter counter. It may take time (math
      checks that the answer is readable), never raises on bad data.
    - optional ``gold_warning(gold)``: a warning reason when a usable gold is weak (python_tests:
      tests that pass on an empty program), counted as ``gold_warning_<reason>``, else None.
    - ``grade(solution, gold)``: the verdict on a finished solution text (``correct``,
      ``incorrect`` or ``unknown``, always with a reason). Callers decide what a solution cut
      off at ``max_tokens`` counts as before calling (unknown by default: it is never graded).
      It may block (math runs math-verify in worker processes): callers run it in a thread.
      ``gold`` None grades unknown.

    A grader is built from its config once per stage and pickled into Beam transforms: keep
    construction cheap and start any worker processes (math-verify, a sandbox pool) lazily, on
    the first ``grade``.
    """

    name: str
    version: str
    config: GraderConfig

    def parse_gold(self, record: Mapping[str, Any], *, fields: FieldMapping,
                   answer_format: str) -> Gold | GoldRejected: ...

    def grade(self, solution: str, gold: Gold | None) -> Grade: ...


# --------------------------------------------------------------------------------------------
# math


def text_field(record: Mapping[str, Any], key: str, what: str) -> tuple[str | None, str | None]:
    """``(text, None)`` of a non-empty string (or number) field, else ``(None, reason)``:
    ``missing_<what>``, ``bad_<what>_type``, ``empty_<what>`` or ``not_utf8``."""
    if key not in record or record[key] is None:
        return None, f"missing_{what}"
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"bad_{what}_type"
    text = str(value)
    if not text.strip():
        return None, f"empty_{what}"
    try:
        # JSON's "\ud800" escape decodes to a lone surrogate: valid JSON, but not text that
        # UTF-8 (Parquet, the tokenizer, the checkpoint key) can hold.
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, "not_utf8"
    return text, None


class MathGrader:
    """The final answer against the gold answer: exact numbers, then math-verify (see
    :mod:`steplabel.annotators.grading`). The gold is the record's ``fields.answer``, read in
    the source's ``answer_format`` (plain, GSM8K ``#### N``, ``\\boxed{}``)."""

    name = "math"
    version = grading.GRADER_VERSION

    def __init__(self, config: MathGraderConfig | None = None) -> None:
        self.config = config or MathGraderConfig()

    def parse_gold(self, record: Mapping[str, Any], *, fields: FieldMapping,
                   answer_format: str) -> MathGold | GoldRejected:
        answer, problem = text_field(record, fields.answer, "answer")
        if problem:
            return GoldRejected(problem, f"field {fields.answer!r}: {problem.replace('_', ' ')}")
        gold = grading.parse_gold(answer, answer_format)
        if gold is None:
            return GoldRejected("unparseable_gold",
                                f"no {answer_format} answer found in {answer[:80]!r}")
        unreadable = grading.check_answer_readable(gold)
        if unreadable in ("answer_too_long", "answer_too_deep"):
            return GoldRejected("pathological_gold", f"gold answer {gold[:80]!r}: {unreadable}")
        if unreadable is not None:
            return GoldRejected("unparseable_gold", f"the grader cannot read the gold answer "
                                f"{gold[:80]!r} ({unreadable})")
        return MathGold(gold)

    def grade(self, solution: str, gold: MathGold | None) -> Grade:
        return grading.grade(solution, gold.answer if gold is not None else None)


# --------------------------------------------------------------------------------------------
# Registry

#: Grader name -> a factory taking that grader's config (``schemas.graders.GRADER_CONFIGS``).
GRADERS: dict[str, Callable[[Any], Grader]] = {"math": MathGrader,
                                               "python_tests": PythonTestsGrader}


# --------------------------------------------------------------------------------------------
# Outcome counters

#: Prefix of the counters of sandbox outcomes (``sandbox_passed``, ``sandbox_failed``,
#: ``sandbox_timeout``, ``sandbox_killed``, ``sandbox_unknown``).
OUTCOME_COUNTER_PREFIX = "sandbox_"
#: Counters of gold warnings (``gold_warning_<reason>``, a grader's ``gold_warning``): problems
#: labelled although their gold is weak (stats.json's ``warnings`` say so).
GOLD_WARNING_PREFIX = "gold_warning_"
#: Wall milliseconds of sandbox runs, summed.
SANDBOX_WALL_COUNTER = "sandbox_wall_ms"
_TALLY: ContextVar["OutcomeTally | None"] = ContextVar("grade_outcomes", default=None)


class OutcomeTally:
    """Outcomes of the grades given while it is open (:func:`outcome_tally`): a grade that
    carries an ``outcome`` and ran a program (python_tests) counts as ``sandbox_<outcome>``,
    one that ran nothing as ``code_<reason>`` (``code_no_program``); math grades carry no
    outcome and count nothing."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()  # rollouts of one key may be graded in several threads

    def add(self, grade: Any) -> None:
        outcome = getattr(grade, "outcome", None)
        if outcome is None:
            return
        # Nothing ran (no program, say): counted by its reason, not as a sandbox outcome.
        ran = getattr(grade, "ran", True)
        name = OUTCOME_COUNTER_PREFIX + outcome if ran else f"code_{grade.reason}"
        wall_ms = round(1000 * getattr(grade, "wall_s", 0.0)) if ran else 0
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            if ran:  # sandbox time, for plan's price (a measure of the run, not the data)
                self.counts[SANDBOX_WALL_COUNTER] = (self.counts.get(SANDBOX_WALL_COUNTER, 0)
                                                     + wall_ms)


@contextmanager
def outcome_tally() -> Iterator[OutcomeTally]:
    """Count the outcomes of the grades :func:`tallied` graders give in this context (an
    asyncio task and the threads it grades in: ``asyncio.to_thread`` copies the context)."""
    tally = OutcomeTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def tallied(grade: Callable[[str, Any], Grade]) -> Callable[[str, Any], Grade]:
    """``grade`` that also adds each grade to the open :func:`outcome_tally`, if any."""

    @functools.wraps(grade)
    def counted(solution: str, gold: Any) -> Grade:
        result = grade(solution, gold)
        tally = _TALLY.get()
        if tally is not None:
            tally.add(result)
        return result

    return counted


def get_grader(config: GraderConfig | None = None) -> Grader:
    """The grader a manifest's ``grader`` section names (None: the default, math)."""
    config = config if config is not None else MathGraderConfig()
    factory = GRADERS.get(config.name)
    if factory is None or config.name not in GRADER_CONFIGS:
        raise ConfigError(f"grader.name must be one of {', '.join(sorted(GRADERS))}, "
                          f"got {config.name!r}")
    return factory(config)
