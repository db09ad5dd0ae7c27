"""The evaluated items: one human-labelled solution each (:class:`GoldItem`), or a record that
cannot be evaluated (:class:`GoldReject`), and the vocabulary of gold formats and gold-answer
statuses the other evaluation modules share.

**Index convention** (ProcessBench, 0-indexed): ``label`` lies in ``-1..M-1`` for a solution of
``M`` steps; ``-1`` means every step is correct.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from steplabel.annotators.grading import parse_gold
from steplabel.annotators.python_tests import PythonTestsGrader, harness_tests

#: The answer format of a ``python_tests`` job's items: the gold is test source (the record's
#: ``tests`` field by default, with its ``entry_point``), not a final answer.
ANSWER_FORMAT_TESTS = "python_tests"
#: The answer formats: a math final answer's three, and a code item's tests.
ANSWER_FORMATS = ("plain", "gsm8k", "boxed", ANSWER_FORMAT_TESTS)

GoldFormat = Literal["processbench", "step_ratings", "prm800k"]
FORMAT_PROCESSBENCH: GoldFormat = "processbench"
FORMAT_STEP_RATINGS: GoldFormat = "step_ratings"
FORMAT_PRM800K: GoldFormat = "prm800k"

#: The splitter whose separator joins a format's steps into a solution text.
JOIN_SPLITTERS: dict[str, str] = {FORMAT_PROCESSBENCH: "paragraphs", FORMAT_STEP_RATINGS: "lines",
                                  FORMAT_PRM800K: "lines"}

#: ``label.finish_reason`` values of a PRM800K release record.
PRM800K_FINISH_REASONS = ("found_error", "solution", "bad_problem", "give_up")

#: Gold-answer statuses of an item; only ``ok`` lets Monte Carlo, OmegaPRM and consensus run.
GOLD_OK = "ok"
GOLD_MISSING = "missing"
GOLD_UNPARSEABLE = "unparseable_answer"
GOLD_AMBIGUOUS = "ambiguous_answer"
GOLD_UNREADABLE = "unreadable_answer"

#: How an item got its gold answer.
ORIGIN_GOLD_FILE = "gold_file"
ORIGIN_ANSWERS_BY_ID = "answers_by_id"
ORIGIN_ANSWERS_BY_PROBLEM = "answers_by_problem"


@dataclass(frozen=True)
class GoldItem:
    """One human-labelled solution.

    - ``problem_id``: ``"<source>/<id>"``, unique across the gold files of one evaluation; it
      seeds every request and keys the checkpoint. ``item_id`` is the record's own ``id``.
    - ``source``: the gold file's name (its stem); metrics are reported per source.
    - ``steps``: the solution's steps as given; ``label``: first-error index in ``-1..M-1``.
    - ``ratings``: the per-step ratings (-1, 0, +1, or None after the first -1) of a
      ``step_ratings`` record; None for ProcessBench records.
    - ``final_answer_correct``: the record's field, None when absent.
    - ``gold_answer``: the extracted gold final answer, None when ``gold_status != "ok"``;
      ``answer_origin``: ``gold_file``, ``answers_by_id``, ``answers_by_problem`` or None.
    - ``original``: the record as JSON, for dead-letter rows.
    """

    problem_id: str
    item_id: str
    source: str
    gold_format: str
    problem: str
    steps: tuple[str, ...]
    label: int
    ratings: tuple[int | None, ...] | None = None
    final_answer_correct: bool | None = None
    gold_answer: str | None = None
    gold_status: str = GOLD_MISSING
    answer_origin: str | None = None
    generator: str | None = None
    original: str = ""

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def splitter_name(self) -> str:
        return JOIN_SPLITTERS[self.gold_format]


@dataclass(frozen=True)
class GoldReject:
    """A gold record that cannot be evaluated, with the reason (a named drop reason) and the
    original text. ``position`` is the record's 0-based index in its file."""

    source: str
    position: int
    reason: str
    error: str
    item_id: str | None
    original: str


def original_text(record: Any) -> str:
    if isinstance(record, str):
        return record
    try:
        return json.dumps(record, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(record)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def label_from_ratings(ratings: Sequence[int | None]) -> int:
    """The first-error index of per-step ratings: the first -1, or -1 when there is none.

    Ratings 0 (neutral) and +1 (positive) both count as not negative.
    """
    for index, rating in enumerate(ratings):
        if rating == -1:
            return index
    return -1


def parse_answer(value: Any, answer_format: str) -> str | None:
    """A gold answer field's value, extracted in ``answer_format`` (``plain``, ``gsm8k``,
    ``boxed``); None when it is not a string or number or holds no answer."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return parse_gold(str(value), answer_format)  # type: ignore[arg-type]


def record_answer(record: dict, answer_field: str, answer_format: str) -> tuple[bool, str | None]:
    """``(present, gold answer)`` of a gold or answers record: whether ``answer_field`` is
    there, and its value read in ``answer_format`` (None: unusable).

    With ``python_tests`` the gold is the field's test source (``tests`` by default), checked
    as the labelling job checks it (a string that compiles; ``entry_point``, when given, a
    Python name), with HumanEval's ``check(<entry_point>)`` call appended where the tests
    define ``check`` and never call it: a self-contained test program."""
    raw = record.get(answer_field)
    if raw is None:
        return False, None
    if answer_format != ANSWER_FORMAT_TESTS:
        return True, parse_answer(raw, answer_format)
    gold = PythonTestsGrader().parse_gold({"tests": raw, "entry_point": record.get("entry_point")})
    if not hasattr(gold, "tests"):  # a GoldRejected: missing, empty, does not compile
        return True, None
    return True, harness_tests(gold)
