"""Gold answers from a separate file (ProcessBench has none), joined to the items.

An answers file (JSON list or JSONL; the caller reads it, :func:`answers_from_text` parses
it) holds records with ``answer`` (a ``python_tests`` job's: ``tests`` and optional
``entry_point``) and ``id`` and/or ``problem`` (or ``question``). An item without a usable
answer of its own gets the answer whose ``id`` equals its id, else the answer whose problem
text equals its problem text exactly (surrounding whitespace ignored). Ids or problem texts that the answers file maps to two different answers join nothing
(``ambiguous_answer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from steplabel.annotators.evaluation.gold import decode_records
from steplabel.annotators.evaluation.items import (
    GOLD_AMBIGUOUS,
    GOLD_OK,
    ORIGIN_ANSWERS_BY_ID,
    ORIGIN_ANSWERS_BY_PROBLEM,
    GoldItem,
    is_int,
    record_answer,
)


@dataclass(frozen=True)
class AnswerTable:
    """Gold answers by id and by exact problem text (whitespace-stripped), already extracted.

    ``ambiguous_ids`` / ``ambiguous_problems`` map to two different answers and join nothing.
    ``unusable`` counts records without a parseable answer or without id and problem.
    """

    by_id: dict[str, str] = field(default_factory=dict)
    by_problem: dict[str, str] = field(default_factory=dict)
    ambiguous_ids: frozenset[str] = frozenset()
    ambiguous_problems: frozenset[str] = frozenset()
    unusable: int = 0

    def __len__(self) -> int:
        return len(self.by_id) + len(self.by_problem)


def answer_table(records: Iterable[Any], *, answer_field: str = "answer",
                 answer_format: str = "plain") -> AnswerTable:
    """Index answer records (``answer`` plus ``id`` and/or ``problem``/``question``)."""
    by_id: dict[str, str] = {}
    by_problem: dict[str, str] = {}
    bad_ids: set[str] = set()
    bad_problems: set[str] = set()
    unusable = 0
    for record in records:
        if not isinstance(record, dict):
            unusable += 1
            continue
        answer = record_answer(record, answer_field, answer_format)[1]
        raw_id = record.get("id")
        key_id = str(raw_id) if isinstance(raw_id, str) or is_int(raw_id) else None
        text = record.get("problem", record.get("question"))
        key_problem = text.strip() if isinstance(text, str) and text.strip() else None
        if answer is None or (key_id is None and key_problem is None):
            unusable += 1
            continue
        for key, table, bad in ((key_id, by_id, bad_ids), (key_problem, by_problem,
                                                            bad_problems)):
            if key is None:
                continue
            if key in table and table[key] != answer:
                bad.add(key)
            table.setdefault(key, answer)
    for key in bad_ids:
        del by_id[key]
    for key in bad_problems:
        del by_problem[key]
    return AnswerTable(by_id, by_problem, frozenset(bad_ids), frozenset(bad_problems), unusable)


def join_gold_answers(items: Iterable[GoldItem], table: AnswerTable) -> list[GoldItem]:
    """Give every item without a usable answer of its own the answer ``table`` has for it.

    By id first, then by exact problem text (surrounding whitespace ignored). An item the table
    knows only ambiguously stays without an answer, with status ``ambiguous_answer``. Items that
    already have an answer keep it: the gold file wins.
    """
    joined = []
    for item in items:
        if item.gold_status == GOLD_OK:
            joined.append(item)
            continue
        problem = item.problem.strip()
        if item.item_id in table.by_id:
            item = replace(item, gold_answer=table.by_id[item.item_id], gold_status=GOLD_OK,
                           answer_origin=ORIGIN_ANSWERS_BY_ID)
        elif problem in table.by_problem:
            item = replace(item, gold_answer=table.by_problem[problem], gold_status=GOLD_OK,
                           answer_origin=ORIGIN_ANSWERS_BY_PROBLEM)
        elif item.item_id in table.ambiguous_ids or problem in table.ambiguous_problems:
            item = replace(item, gold_status=GOLD_AMBIGUOUS)
        joined.append(item)
    return joined


def answers_from_text(text: str, *, what: str, answer_field: str = "answer",
                      answer_format: str = "plain") -> AnswerTable:
    """The :class:`AnswerTable` of an answers file's text (JSON list or JSONL); malformed JSONL
    lines count as unusable. ``what`` names the file in errors."""
    decoded = decode_records(text, what=what)
    table = answer_table((record for _, record, error in decoded if error is None),
                         answer_field=answer_field, answer_format=answer_format)
    malformed = sum(1 for _, _, error in decoded if error is not None)
    return replace(table, unusable=table.unusable + malformed)
