"""Parsing gold files: the records of a gold file's text as :class:`~.items.GoldItem` or
:class:`~.items.GoldReject` (pure: the text comes from the caller, which reads the file;
:mod:`steplabel.pipelines.gold_files`).

**Gold formats.** A gold file is a JSON list of records or JSONL (one record per line). Each
record is one of:

- *ProcessBench*: ``id``, ``problem``, ``steps`` (list of strings), ``label`` (the earliest wrong
  step, or -1), optionally ``final_answer_correct`` (bool) and ``generator``. The steps are
  paragraphs and are joined with the ``paragraphs`` splitter's separator (a blank line).
- *Per-step ratings* (PRM800K style, simplified): ``id``, ``problem``, ``steps``, ``ratings`` (one
  per step: -1 negative, 0 neutral, +1 positive, as PRM800K rates), optionally
  ``final_answer_correct`` and ``generator``. The label is the index of the first -1 rating, -1
  when there is none; ratings 0 and +1 both count as not negative, as Qwen maps PRM800K
  (METHODS.md §3.1). PRM800K stops rating at the first error, so a rating may be null, but only
  after the first -1 (a null before it would leave the label unknown). The steps are lines and
  are joined with the ``lines`` splitter's separator (a newline). A record with both ``label``
  and ``ratings`` must have them agree.

- *PRM800K release* (``phase1_*.jsonl`` / ``phase2_*.jsonl`` of openai/prm800k, read as users
  have them; :func:`parse_prm800k_record`): ``question.problem``,
  ``question.ground_truth_answer`` (the gold answer, read as ``plain``),
  ``question.pre_generated_steps`` (phase 2), ``label.steps[]`` with ``completions[]``
  (``text``, ``rating``), ``chosen_completion`` and ``human_completion``, and
  ``label.finish_reason``. The record has no id; its id is ``prm800k-<line>`` (0-based among
  the file's records). Steps are lines (joined with a newline).

Either kind may carry its gold final answer in a field (``answer`` by default), in the format
``plain``, ``gsm8k`` (``#### N``) or ``boxed`` (:func:`steplabel.annotators.grading.parse_gold`);
for a ``python_tests`` job (answer format ``python_tests``) the gold is the record's test source
(``tests`` by default, with ``entry_point``; :func:`~.items.record_answer`), and PRM800K
records, which are math, have none.
"""

from __future__ import annotations

import json
from typing import Any

from steplabel.annotators.evaluation.items import (
    FORMAT_PRM800K,
    FORMAT_PROCESSBENCH,
    FORMAT_STEP_RATINGS,
    ANSWER_FORMAT_TESTS,
    GOLD_MISSING,
    GOLD_OK,
    GOLD_UNPARSEABLE,
    ORIGIN_GOLD_FILE,
    PRM800K_FINISH_REASONS,
    GoldItem,
    GoldReject,
    is_int,
    label_from_ratings,
    original_text,
    parse_answer,
    record_answer,
)


class GoldFileError(ValueError):
    """A gold or answers file cannot be read at all (missing, not UTF-8, not JSON)."""


def _check_ratings(ratings: Any, num_steps: int) -> tuple[tuple[int | None, ...] | None, str, str]:
    """``(ratings, "", "")`` when valid, else ``(None, reason, error)``."""
    if isinstance(ratings, str) or not isinstance(ratings, list):
        return None, "bad_ratings", f"ratings must be a list, got {type(ratings).__name__}"
    if len(ratings) != num_steps:
        return None, "bad_ratings", (f"ratings must have one entry per step ({num_steps}), "
                                     f"got {len(ratings)}")
    seen_negative = False
    for index, rating in enumerate(ratings):
        if rating is None:
            if not seen_negative:
                return None, "unrated_step_before_error", (
                    f"ratings[{index}] is null before any -1 rating, so the label is unknown")
            continue
        if not is_int(rating) or rating not in (-1, 0, 1):
            return None, "bad_ratings", f"ratings[{index}] must be -1, 0, 1 or null, got {rating!r}"
        seen_negative = seen_negative or rating == -1
    return tuple(ratings), "", ""


def parse_gold_record(
    record: Any,
    *,
    source: str,
    position: int,
    answer_field: str = "answer",
    answer_format: str = "plain",
) -> GoldItem | GoldReject:
    """One gold record (already decoded from JSON) as a :class:`GoldItem`, or a
    :class:`GoldReject` saying what is wrong with it. See the module docstring for the formats.

    A missing or unparseable answer is not a reject: the item is evaluated by the judge only.
    """
    original = original_text(record)

    def reject(reason: str, error: str, item_id: str | None = None) -> GoldReject:
        return GoldReject(source, position, reason, f"record {position}: {error}", item_id,
                          original)

    if not isinstance(record, dict):
        return reject("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("question"), dict) or isinstance(record.get("label"), dict):
        return parse_prm800k_record(record, source=source, position=position,
                                    answer_format=answer_format)
    raw_id = record.get("id")
    if raw_id is None:
        return reject("missing_id", "field 'id' is missing")
    if not (isinstance(raw_id, str) or is_int(raw_id)):
        return reject("bad_id_type", f"field 'id' must be a string or integer, got {raw_id!r:.60}")
    item_id = str(raw_id)
    if not item_id.strip():
        return reject("empty_id", "field 'id' is empty")

    problem = record.get("problem")
    if problem is None:
        return reject("missing_problem", "field 'problem' is missing", item_id)
    if not isinstance(problem, str):
        return reject("bad_problem_type", f"field 'problem' must be a string, got "
                      f"{type(problem).__name__}", item_id)
    if not problem.strip():
        return reject("empty_problem", "field 'problem' is empty", item_id)

    steps = record.get("steps")
    if steps is None:
        return reject("missing_steps", "field 'steps' is missing", item_id)
    if isinstance(steps, str) or not isinstance(steps, list):
        return reject("bad_steps", f"field 'steps' must be a list of strings, got "
                      f"{type(steps).__name__}", item_id)
    if not steps:
        return reject("empty_steps", "field 'steps' is an empty list", item_id)
    for index, step in enumerate(steps):
        if not isinstance(step, str):
            return reject("bad_steps", f"steps[{index}] must be a string, got "
                          f"{type(step).__name__}", item_id)
        if not step.strip():
            return reject("empty_step", f"steps[{index}] is empty", item_id)

    has_label, has_ratings = "label" in record, "ratings" in record
    if not has_label and not has_ratings:
        return reject("missing_label", "needs 'label' (ProcessBench) or 'ratings' (per step)",
                      item_id)
    ratings = None
    if has_ratings:
        ratings, reason, error = _check_ratings(record["ratings"], len(steps))
        if ratings is None:
            return reject(reason, error, item_id)
        gold_format: str = FORMAT_STEP_RATINGS
        label = label_from_ratings(ratings)
    else:
        gold_format = FORMAT_PROCESSBENCH
    if has_label:
        given = record["label"]
        if not is_int(given) or not -1 <= given < len(steps):
            return reject("bad_label", f"label must be an integer in -1..{len(steps) - 1}, "
                          f"got {given!r:.60}", item_id)
        if has_ratings and given != label:
            where = f"step {label}" if label >= 0 else "no step"
            return reject("label_ratings_conflict", f"label {given} disagrees with the ratings, "
                          f"which rate {where} as the first -1", item_id)
        label = given

    final_answer_correct = record.get("final_answer_correct")
    if final_answer_correct is not None and not isinstance(final_answer_correct, bool):
        return reject("bad_final_answer_correct", "final_answer_correct must be true, false or "
                      f"null, got {final_answer_correct!r:.60}", item_id)
    generator = record.get("generator")
    generator = generator if isinstance(generator, str) else None

    gold_answer, gold_status, origin = None, GOLD_MISSING, None
    present, answer = record_answer(record, answer_field, answer_format)
    if present:
        gold_answer = answer
        gold_status = GOLD_OK if gold_answer is not None else GOLD_UNPARSEABLE
        origin = ORIGIN_GOLD_FILE if gold_answer is not None else None

    return GoldItem(
        problem_id=f"{source}/{item_id}",
        item_id=item_id,
        source=source,
        gold_format=gold_format,
        problem=problem,
        steps=tuple(steps),
        label=label,
        ratings=ratings,
        final_answer_correct=final_answer_correct,
        gold_answer=gold_answer,
        gold_status=gold_status,
        answer_origin=origin,
        generator=generator,
        original=original,
    )


def _prm800k_completion(completion: Any) -> tuple[str, int | None] | None:
    """``(text, rating)`` of a completion object, None when it is malformed."""
    if not isinstance(completion, dict) or not isinstance(completion.get("text"), str):
        return None
    rating = completion.get("rating")
    if rating is not None and (not is_int(rating) or rating not in (-1, 0, 1)):
        return None
    return completion["text"], rating


def parse_prm800k_record(record: dict, *, source: str, position: int,
                         answer_format: str = "plain") -> GoldItem | GoldReject:
    """One record of the PRM800K release (layout of the openai/prm800k README) as a
    :class:`GoldItem` with per-step ratings, or a :class:`GoldReject` saying why not.

    **The solution** is the labelled trajectory, rebuilt as the README says: step ``i`` is
    ``completions[chosen_completion].text``, or ``human_completion`` when
    ``chosen_completion`` is null (phase 1: the labeler rejected every completion and wrote
    a step; its text is the string, or the ``text`` of an object). A step with both null ends
    the labelling: it must be the last one; it is the trajectory's own step there, the
    completion whose text is ``pre_generated_steps[i]`` (phase 2), else the first completion
    (the model's own step is listed first). In phase 2 the labelled steps are a prefix of
    ``pre_generated_steps``; when an error was found, the rest of the pre-generated solution
    follows, unrated, so that the annotators see the whole solution the model wrote.

    **The label** follows the PRM800K / ProcessBench convention: the first step whose rating on
    the trajectory is -1, else -1. Ratings 0 (neutral) and +1 count as not negative (as Qwen
    maps PRM800K); a human-written step is +1 (the README: the labeler writes "their own +1
    step"; an object's own ``rating`` wins when it has one); ``flagged`` is ignored; the
    ratings of alternative completions are not used. A null rating before the first -1 leaves
    the label unknown (``unrated_step_before_error``).

    **finish_reason**: ``found_error`` must have a -1 on the trajectory
    (``found_error_without_negative``); ``solution`` marks ``final_answer_correct`` true (the
    labeler reached a step that concluded in the correct answer); ``give_up`` is usable only
    if an error was found before it (``gave_up_before_error``); ``bad_problem`` is rejected.

    Quality-control and screening records are kept like any other (each is one labeler's
    labels; the same solution may appear once per labeler).
    """
    original = original_text(record)
    raw_id = record.get("id")
    item_id = str(raw_id) if isinstance(raw_id, str) and raw_id.strip() or is_int(raw_id) \
        else f"prm800k-{position}"

    def reject(reason: str, error: str) -> GoldReject:
        return GoldReject(source, position, reason, f"record {position}: {error}", item_id,
                          original)

    question, label = record.get("question"), record.get("label")
    if not isinstance(question, dict):
        return reject("missing_question", "PRM800K record without a 'question' object")
    if not isinstance(label, dict):
        return reject("missing_label", "PRM800K record without a 'label' object")
    problem = question.get("problem")
    if problem is None:
        return reject("missing_problem", "field 'question.problem' is missing")
    if not isinstance(problem, str):
        return reject("bad_problem_type", "field 'question.problem' must be a string, got "
                      f"{type(problem).__name__}")
    if not problem.strip():
        return reject("empty_problem", "field 'question.problem' is empty")
    finish = label.get("finish_reason")
    if finish not in PRM800K_FINISH_REASONS:
        return reject("bad_finish_reason", "label.finish_reason must be one of "
                      f"{', '.join(PRM800K_FINISH_REASONS)}, got {finish!r:.60}")
    if finish == "bad_problem":
        return reject("bad_problem", "the labeler reported the problem as broken "
                      "(finish_reason bad_problem)")
    raw_steps = label.get("steps")
    if raw_steps is None:
        return reject("missing_steps", "field 'label.steps' is missing")
    if isinstance(raw_steps, str) or not isinstance(raw_steps, list):
        return reject("bad_steps", f"label.steps must be a list, got {type(raw_steps).__name__}")
    if not raw_steps:
        return reject("empty_steps", "label.steps is an empty list")
    pre = question.get("pre_generated_steps")
    if not (isinstance(pre, list) and pre and all(isinstance(t, str) for t in pre)):
        pre = None

    texts: list[str] = []
    ratings: list[int | None] = []
    for i, step in enumerate(raw_steps):
        where = f"label.steps[{i}]"
        if not isinstance(step, dict):
            return reject("bad_steps", f"{where} must be an object, got {type(step).__name__}")
        completions = step.get("completions")
        if completions is None:
            completions = []
        if isinstance(completions, str) or not isinstance(completions, list):
            return reject("bad_steps", f"{where}.completions must be a list")
        parsed = [_prm800k_completion(c) for c in completions]
        if any(c is None for c in parsed):
            bad = parsed.index(None)
            return reject("bad_steps", f"{where}.completions[{bad}] must have a string 'text' "
                          "and a rating of -1, 0, 1 or null")
        chosen, human = step.get("chosen_completion"), step.get("human_completion")
        if chosen is not None:
            if not is_int(chosen) or not 0 <= chosen < len(parsed):
                return reject("bad_steps", f"{where}.chosen_completion must index its "
                              f"{len(parsed)} completions, got {chosen!r:.60}")
            text, rating = parsed[chosen]
        elif human is not None:
            text = human.get("text") if isinstance(human, dict) else human
            if not isinstance(text, str):
                return reject("bad_steps", f"{where}.human_completion must be a string or an "
                              "object with a string 'text'")
            given = human.get("rating") if isinstance(human, dict) else None
            rating = given if is_int(given) and given in (-1, 0, 1) else 1
        else:
            if i != len(raw_steps) - 1:
                return reject("unchosen_step_before_end", f"{where} has neither a chosen nor "
                              "a human completion, but the trajectory goes on after it")
            if not parsed:
                return reject("bad_steps", f"{where} has no completions")
            own = [c for c in parsed if pre is not None and i < len(pre) and c[0] == pre[i]]
            text, rating = own[0] if own else parsed[0]
        if not text.strip():
            return reject("empty_step", f"{where} is empty")
        texts.append(text)
        ratings.append(rating)

    first_error = label_from_ratings(ratings)
    rated_until = first_error if first_error != -1 else len(ratings)
    unrated = [i for i in range(rated_until) if ratings[i] is None]
    if unrated:
        return reject("unrated_step_before_error", f"label.steps[{unrated[0]}] has no rating "
                      "before any -1 rating, so the label is unknown")
    if finish == "found_error" and first_error == -1:
        return reject("found_error_without_negative", "finish_reason is found_error but no "
                      "step of the trajectory is rated -1")
    if finish == "give_up" and first_error == -1:
        return reject("gave_up_before_error", "the labeler gave up before finding an error, "
                      "so the first error is unknown")
    if (first_error != -1 and pre is not None and len(pre) > len(texts)
            and pre[:len(texts)] == texts):
        ratings += [None] * (len(pre) - len(texts))
        texts = list(pre)
    if any(not t.strip() for t in texts):
        return reject("empty_step", "question.pre_generated_steps holds an empty step")

    # A math answer: no gold for a code job (its grader would run it as tests).
    raw_answer = (question.get("ground_truth_answer")
                  if answer_format != ANSWER_FORMAT_TESTS else None)
    gold_answer = parse_answer(raw_answer, "plain") if raw_answer is not None else None
    gold_status = (GOLD_OK if gold_answer is not None
                   else GOLD_MISSING if raw_answer is None else GOLD_UNPARSEABLE)
    generation = record.get("generation")
    return GoldItem(
        problem_id=f"{source}/{item_id}",
        item_id=item_id,
        source=source,
        gold_format=FORMAT_PRM800K,
        problem=problem,
        steps=tuple(texts),
        label=first_error,
        ratings=tuple(ratings),
        final_answer_correct=True if finish == "solution" else None,
        gold_answer=gold_answer,
        gold_status=gold_status,
        answer_origin=ORIGIN_GOLD_FILE if gold_answer is not None else None,
        generator="prm800k-phase1" if generation is None else "prm800k-phase2",
        original=original,
    )


def decode_records(text: str, *, what: str) -> list[tuple[int, Any, str | None]]:
    """The records of a JSON list or JSONL text: ``(position, record, error)`` each.

    A JSON list must parse as a whole (else :class:`GoldFileError`). In JSONL, a line that is not
    JSON gives ``(position, line, error)`` so that it can be dead-lettered; blank lines are
    skipped.
    """
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise GoldFileError(f"{what} is not valid JSON: {exc}") from None
        return [(i, record, None) for i, record in enumerate(records)]
    decoded = []
    for line in stripped.splitlines():
        if not line.strip():
            continue
        position = len(decoded)
        try:
            decoded.append((position, json.loads(line), None))
        except json.JSONDecodeError as exc:
            decoded.append((position, line, f"malformed JSON: {exc}"))
    return decoded


def parse_gold_text(
    text: str,
    *,
    source: str,
    answer_field: str = "answer",
    answer_format: str = "plain",
) -> tuple[list[GoldItem], list[GoldReject]]:
    """All items and rejects of one gold file's text (see :func:`parse_gold_record`).

    Duplicate ids: copies with the same problem, steps and labels are one item (the first copy
    is kept, the others are rejected as ``duplicate_id``); copies that differ are all rejected as
    ``conflicting_duplicate_id``, since there is no telling which one is right.
    """
    items: list[GoldItem] = []
    rejects: list[GoldReject] = []
    for position, record, error in decode_records(text, what=f"gold file {source}"):
        if error is not None:
            rejects.append(GoldReject(source, position, "malformed_json",
                                      f"record {position}: {error}", None, record))
            continue
        parsed = parse_gold_record(record, source=source, position=position,
                                   answer_field=answer_field, answer_format=answer_format)
        (items if isinstance(parsed, GoldItem) else rejects).append(parsed)

    by_id: dict[str, list[GoldItem]] = {}
    for item in items:
        by_id.setdefault(item.item_id, []).append(item)
    kept: list[GoldItem] = []
    for item in items:
        copies = by_id[item.item_id]
        if len(copies) == 1:
            kept.append(item)
            continue
        if item is not copies[0]:
            continue  # handled with the first copy
        content = {(c.problem, c.steps, c.label, c.ratings, c.gold_answer) for c in copies}
        same = len(content) == 1
        if same:
            kept.append(item)
        for copy in copies[1:] if same else copies:
            reason = "duplicate_id" if same else "conflicting_duplicate_id"
            rejects.append(GoldReject(
                source, -1, reason,
                f"id {copy.item_id!r} appears {len(copies)} times"
                + ("" if same else " with different content"), copy.item_id, copy.original))
    return kept, rejects
