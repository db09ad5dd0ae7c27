"""Evaluating annotators as first-error predictors against human labels (ProcessBench).

Pure logic, no Beam: reading human-labelled solutions, joining gold answers, running the chosen
annotators on the given steps, and scoring the predictions exactly as ProcessBench does
(METHODS.md §5.2). :mod:`steplabel.pipelines.evaluate` wires this into a Beam job.

**Index convention** (ProcessBench, 0-indexed): a first-error index lies in ``-1..M-1`` for a
solution of ``M`` steps; ``-1`` means every step is correct; ``None`` means unknown.

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
``plain``, ``gsm8k`` (``#### N``) or ``boxed`` (:func:`steplabel.annotators.grading.parse_gold`).

**Gold answers from a separate file** (ProcessBench has none): an answers file (JSON list or
JSONL) of records with ``answer`` and ``id`` and/or ``problem`` (or ``question``). An item without a
usable answer of its own gets the answer whose ``id`` equals its id, else the answer whose problem
text equals its problem text exactly (surrounding whitespace ignored). Ids or problem texts that
the answers file maps to two different answers join nothing (``ambiguous_answer``).

**Annotators** (``mc``, ``omegaprm``, ``judge``, ``consensus``) run on the given steps: nothing is
resampled or re-split. Monte Carlo, OmegaPRM and consensus need a gold answer; on an item without
a usable one only the judge runs, and the others record ``skipped``.

**Metrics** (:func:`first_error_scores`, ProcessBench §4.1 and ``run_eval_prm_trl.py``): per
source file, ``error_acc`` is the percentage of items with ``label != -1`` whose predicted index
equals the label; ``correct_acc`` the percentage of items with ``label == -1`` predicted ``-1``;
``f1 = 2 * error_acc * correct_acc / (error_acc + correct_acc)``. Every annotator is scored on
the same items, all the evaluated items: an item it could not score, unknown (an unparseable
critic answer, no quorum, consensus disagreement) or skipped (no gold answer), counts as a wrong
prediction, as ProcessBench's script counts a ``None`` prediction; ``coverage`` is the share of
items with a predicted index. Items dead-lettered (unreadable records, failed requests) are
left out for every annotator alike and counted in the report. Edge cases: no
erroneous items makes ``error_acc`` None, no correct items makes ``correct_acc`` None, and either
makes ``f1`` None; both accuracies 0 gives ``f1 = 0`` (the limit of the harmonic mean, where the
reference script would divide by zero). The average over source files is the mean of each figure
over the files where it is not None (ProcessBench's headline is the mean of the subset F1s).
All rates are percentages in [0, 100], as ProcessBench reports them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from steplabel.annotators.consensus import consensus
from steplabel.annotators.grading import Grade, check_answer_readable, grade, parse_gold
from steplabel.annotators.judge import JudgeConfig, LLMJudge
from steplabel.annotators.monte_carlo import MonteCarloAnnotator, MonteCarloConfig
from steplabel.annotators.omegaprm import (
    ANNOTATOR_NAME as OMEGAPRM_NAME,
    ANNOTATOR_VERSION as OMEGAPRM_VERSION,
    OmegaPRMConfig,
    locate_first_error,
)
from steplabel.annotators.prompts import build_solution_prompt, load_template
from steplabel.annotators.splitting import Splitter, get_splitter
from steplabel.schemas.config import ConfigError

GoldFormat = Literal["processbench", "step_ratings", "prm800k"]
FORMAT_PROCESSBENCH: GoldFormat = "processbench"
FORMAT_STEP_RATINGS: GoldFormat = "step_ratings"
FORMAT_PRM800K: GoldFormat = "prm800k"

#: The splitter whose separator joins a format's steps into a solution text.
JOIN_SPLITTERS: dict[str, str] = {FORMAT_PROCESSBENCH: "paragraphs", FORMAT_STEP_RATINGS: "lines",
                                  FORMAT_PRM800K: "lines"}

#: ``label.finish_reason`` values of a PRM800K release record.
PRM800K_FINISH_REASONS = ("found_error", "solution", "bad_problem", "give_up")

#: Annotator names, in the order they are reported.
ANNOTATORS = ("mc", "omegaprm", "judge", "consensus")
#: Annotators that grade rollouts against the gold answer.
NEEDS_GOLD = frozenset({"mc", "omegaprm", "consensus"})
#: Annotators another one is computed from.
DEPENDENCIES: dict[str, tuple[str, ...]] = {"consensus": ("mc", "judge")}

#: Prediction statuses: a known index, an unknown one (counts as wrong), or not run (not scored).
STATUS_PREDICTED = "predicted"
STATUS_UNKNOWN = "unknown"
STATUS_SKIPPED = "skipped"

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


class GoldFileError(ValueError):
    """A gold or answers file cannot be read at all (missing, not UTF-8, not JSON)."""


# --------------------------------------------------------------------------------------------
# Gold items


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


def _original_text(record: Any) -> str:
    if isinstance(record, str):
        return record
    try:
        return json.dumps(record, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(record)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def label_from_ratings(ratings: Sequence[int | None]) -> int:
    """The first-error index of per-step ratings: the first -1, or -1 when there is none.

    Ratings 0 (neutral) and +1 (positive) both count as not negative.
    """
    for index, rating in enumerate(ratings):
        if rating == -1:
            return index
    return -1


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
        if not _is_int(rating) or rating not in (-1, 0, 1):
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
    original = _original_text(record)

    def reject(reason: str, error: str, item_id: str | None = None) -> GoldReject:
        return GoldReject(source, position, reason, f"record {position}: {error}", item_id,
                          original)

    if not isinstance(record, dict):
        return reject("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("question"), dict) or isinstance(record.get("label"), dict):
        return parse_prm800k_record(record, source=source, position=position)
    raw_id = record.get("id")
    if raw_id is None:
        return reject("missing_id", "field 'id' is missing")
    if not (isinstance(raw_id, str) or _is_int(raw_id)):
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
        if not _is_int(given) or not -1 <= given < len(steps):
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
    raw_answer = record.get(answer_field)
    if raw_answer is not None:
        gold_answer = _parse_answer(raw_answer, answer_format)
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
    if rating is not None and (not _is_int(rating) or rating not in (-1, 0, 1)):
        return None
    return completion["text"], rating


def parse_prm800k_record(record: dict, *, source: str, position: int) -> GoldItem | GoldReject:
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
    original = _original_text(record)
    raw_id = record.get("id")
    item_id = str(raw_id) if isinstance(raw_id, str) and raw_id.strip() or _is_int(raw_id) \
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
            if not _is_int(chosen) or not 0 <= chosen < len(parsed):
                return reject("bad_steps", f"{where}.chosen_completion must index its "
                              f"{len(parsed)} completions, got {chosen!r:.60}")
            text, rating = parsed[chosen]
        elif human is not None:
            text = human.get("text") if isinstance(human, dict) else human
            if not isinstance(text, str):
                return reject("bad_steps", f"{where}.human_completion must be a string or an "
                              "object with a string 'text'")
            given = human.get("rating") if isinstance(human, dict) else None
            rating = given if _is_int(given) and given in (-1, 0, 1) else 1
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

    raw_answer = question.get("ground_truth_answer")
    gold_answer = _parse_answer(raw_answer, "plain") if raw_answer is not None else None
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


def _parse_answer(value: Any, answer_format: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return parse_gold(str(value), answer_format)  # type: ignore[arg-type]


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


def _read_text(path: str | Path, *, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldFileError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise GoldFileError(f"{what} {path} is not UTF-8: {exc}") from None
    except IsADirectoryError:
        raise GoldFileError(f"{what} {path} is a directory, not a file") from None


def source_name(path: str | Path) -> str:
    """The source name of a gold file: its file name without the extension."""
    return Path(path).stem


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


def load_gold_file(
    path: str | Path,
    *,
    source: str | None = None,
    answer_field: str = "answer",
    answer_format: str = "plain",
) -> tuple[list[GoldItem], list[GoldReject]]:
    """Read one gold file (JSON list or JSONL); ``source`` defaults to the file's stem."""
    text = _read_text(path, what="gold file")
    return parse_gold_text(text, source=source or source_name(path), answer_field=answer_field,
                           answer_format=answer_format)


# --------------------------------------------------------------------------------------------
# Gold answers from a separate file


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
        answer = _parse_answer(record.get(answer_field), answer_format)
        raw_id = record.get("id")
        key_id = str(raw_id) if isinstance(raw_id, str) or _is_int(raw_id) else None
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


def load_answers_file(path: str | Path, *, answer_field: str = "answer",
                      answer_format: str = "plain") -> AnswerTable:
    """Read an answers file (JSON list or JSONL) into an :class:`AnswerTable`; malformed JSONL
    lines count as unusable."""
    decoded = decode_records(_read_text(path, what="answers file"), what=f"answers file {path}")
    table = answer_table((record for _, record, error in decoded if error is None),
                         answer_field=answer_field, answer_format=answer_format)
    malformed = sum(1 for _, _, error in decoded if error is not None)
    return replace(table, unusable=table.unusable + malformed)


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


# --------------------------------------------------------------------------------------------
# Predicting first errors


def resolve_annotators(names: str | Sequence[str]) -> tuple[str, ...]:
    """The annotators to run, in report order: the named ones plus what they are computed from
    (``consensus`` adds ``mc`` and ``judge``). ``names`` is a list or a comma-separated string;
    an unknown or empty name raises :class:`ConfigError`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    chosen = set()
    for name in names:
        if name not in ANNOTATORS:
            raise ConfigError(f"annotators must be a comma-separated list of "
                              f"{', '.join(ANNOTATORS)}, got {name!r}")
        chosen.add(name)
        chosen.update(DEPENDENCIES.get(name, ()))
    if not chosen:
        raise ConfigError("annotators must name at least one of " + ", ".join(ANNOTATORS))
    return tuple(a for a in ANNOTATORS if a in chosen)


@dataclass(frozen=True)
class EvaluationSettings:
    """What the annotators need besides engines (taken from the job manifest).

    - ``run_seed``: every request's seed derives from it and the item's ``problem_id``.
    - ``policy_template``: the prompt template the completer continues a prefix under (the
      completer sees the solution as if it had written it; no ``response_prefix`` is added,
      since the given steps are the whole solution).
    - ``monte_carlo`` / ``omegaprm`` / ``judge``: the annotators' settings; each is required
      when its annotator runs (:meth:`check`). OmegaPRM uses ``rollouts`` and ``sampling``.
    - ``omegaprm_final_answer``: how OmegaPRM learns whether the solution's final answer is
      right (it only searches wrong solutions; a right one predicts -1 at no cost):
      ``grade`` (default) grades the joined steps against the gold answer as the labelling job
      does, falling back to the record's ``final_answer_correct`` when the grader cannot
      decide; ``item`` trusts the record's field and grades only when it is absent.
    """

    run_seed: int
    policy_template: str = "policy_steps_v1"
    monte_carlo: MonteCarloConfig | None = None
    omegaprm: OmegaPRMConfig | None = None
    judge: JudgeConfig | None = None
    omegaprm_final_answer: Literal["grade", "item"] = "grade"

    def __post_init__(self) -> None:
        if not _is_int(self.run_seed) or self.run_seed < 0:
            raise ConfigError(f"run_seed must be an integer >= 0, got {self.run_seed!r}")
        if self.omegaprm_final_answer not in ("grade", "item"):
            raise ConfigError("omegaprm_final_answer must be one of 'grade', 'item', got "
                              f"{self.omegaprm_final_answer!r}")

    @classmethod
    def from_manifest(cls, manifest, *, omegaprm_final_answer: str = "grade"
                      ) -> "EvaluationSettings":
        return cls(run_seed=manifest.seed, policy_template=manifest.policy.template,
                   monte_carlo=manifest.monte_carlo, omegaprm=manifest.omegaprm,
                   judge=manifest.judge,
                   omegaprm_final_answer=omegaprm_final_answer)  # type: ignore[arg-type]

    def check(self, annotators: Sequence[str]) -> None:
        """Raise :class:`ConfigError` naming the missing manifest section of an annotator."""
        sections = {"mc": ("monte_carlo", self.monte_carlo),
                    "omegaprm": ("omegaprm", self.omegaprm), "judge": ("judge", self.judge)}
        for name in annotators:
            if name in sections and sections[name][1] is None:
                raise ConfigError(f"annotator {name} needs a {sections[name][0]} section in "
                                  f"the manifest (e.g. '{sections[name][0]}: {{}}' for the "
                                  "defaults)")


def annotator_versions(judge_parser: str = "processbench") -> dict[str, str]:
    """The name/version of the algorithm behind each evaluated annotator; the judge's names
    the configured parser's version and the voting rule's."""
    from steplabel.annotators.judge import JUDGE_PARSER_VERSION, JUDGE_VOTE_VERSION
    from steplabel.annotators.monte_carlo import ANNOTATOR_NAME, ANNOTATOR_VERSION

    return {
        "mc": f"{ANNOTATOR_NAME}/{ANNOTATOR_VERSION}",
        "omegaprm": f"{OMEGAPRM_NAME}/{OMEGAPRM_VERSION}:locate_first_error",
        "judge": f"llm_judge/2;{JUDGE_PARSER_VERSION[judge_parser]};{JUDGE_VOTE_VERSION}",
        "consensus": "consensus/1",
    }


def _zero_cost() -> dict[str, int]:
    return {"requests": 0, "rollouts": 0, "prompt_tokens": 0, "generated_tokens": 0}


def add_costs(*costs: Mapping[str, int] | None) -> dict[str, int]:
    """Field-wise sum of cost dicts (``requests``, ``rollouts``, token counts); None is zero."""
    total = _zero_cost()
    for cost in costs:
        for key in total:
            total[key] += int((cost or {}).get(key) or 0)
    return total


@dataclass(frozen=True)
class AnnotatorPrediction:
    """One annotator's first-error prediction for one item.

    - ``status``: ``predicted`` (``first_error`` in ``-1..M-1``), ``unknown`` (``first_error``
      None; scored as wrong) or ``skipped`` (not run, e.g. no gold answer; not scored).
    - ``reason``: why (``ok``, a parse or search reason, a consensus reason, ``no_gold_answer``).
    - ``cost``: requests, rollouts and tokens this annotator spent on the item. Consensus
      spends nothing of its own; its cost is Monte Carlo's plus the judge's.
    - ``model_id``: the model that served it (None when skipped or for consensus).
    - ``details``: annotator-specific evidence (MC values, OmegaPRM probes, judge replies).
    """

    annotator: str
    status: str
    first_error: int | None
    reason: str
    cost: dict[str, int]
    model_id: str | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ItemPrediction:
    """Every chosen annotator's prediction for one item, and the gold answer status it ran
    under (``unreadable_answer`` when the grader cannot read the joined answer)."""

    item: GoldItem
    gold_status: str
    predictions: dict[str, AnnotatorPrediction]


def _known(index: int | None) -> str:
    return STATUS_PREDICTED if index is not None else STATUS_UNKNOWN


async def _predict_mc(item: GoldItem, *, engine, settings: EvaluationSettings,
                      splitter: Splitter, prompt, gold_answer: str,
                      grader: Callable[[str, str | None], Grade]) -> AnnotatorPrediction:
    annotator = MonteCarloAnnotator(engine, settings.monte_carlo, run_seed=settings.run_seed,
                                    grader=grader)
    result = await annotator.annotate(problem_id=item.problem_id, solution_index=0,
                                      prompt=prompt, steps=list(item.steps), splitter=splitter,
                                      gold_answer=gold_answer)
    index = result.first_error_index
    return AnnotatorPrediction(
        annotator="mc", status=_known(index), first_error=index,
        reason="ok" if index is not None else "step_value_unknown", cost=result.cost,
        model_id=result.model_id,
        details={"k": result.k, "values": result.values, "n_correct": result.n_correct,
                 "n_total": result.n_total, "n_unknown": result.n_unknown,
                 "hard_labels": result.hard_labels})


async def _predict_omegaprm(item: GoldItem, *, engine, settings: EvaluationSettings,
                            splitter: Splitter, prompt, gold_answer: str,
                            grader: Callable[[str, str | None], Grade]) -> AnnotatorPrediction:
    config = settings.omegaprm
    assert config is not None
    model_id = getattr(engine, "model_id", None)
    details: dict[str, Any] = {"final_answer_correct_item": item.final_answer_correct}
    if settings.omegaprm_final_answer == "item" and item.final_answer_correct is not None:
        final_answer_correct, origin = item.final_answer_correct, "item"
    else:
        graded = await asyncio.to_thread(grader, splitter.join(list(item.steps)), gold_answer)
        details.update(graded_verdict=graded.verdict, graded_reason=graded.reason)
        if graded.verdict != "unknown":
            final_answer_correct, origin = graded.verdict == "correct", "grader"
        elif item.final_answer_correct is not None:
            final_answer_correct, origin = item.final_answer_correct, "item_fallback"
        else:
            return AnnotatorPrediction("omegaprm", STATUS_UNKNOWN, None, "final_answer_unknown",
                                       _zero_cost(), model_id, details)
    details.update(final_answer_correct=final_answer_correct, final_answer_origin=origin)
    search = await locate_first_error(
        engine, prompt=prompt, pieces=list(item.steps), gold_answer=gold_answer,
        run_seed=settings.run_seed, problem_id=item.problem_id, solution_index=0,
        splitter=splitter, rollouts=config.rollouts, sampling=config.sampling,
        final_answer_correct=final_answer_correct, grader=grader,
        truncated=config.truncated)
    details.update(probe_lengths=search.probe_lengths, probe_values=search.probe_values,
                   rollouts=search.rollouts)
    index = search.first_error_index
    return AnnotatorPrediction("omegaprm", _known(index), index, search.reason, search.cost,
                               model_id, details)


async def _predict_judge(item: GoldItem, *, engine,
                         settings: EvaluationSettings) -> AnnotatorPrediction:
    judge = LLMJudge(engine, settings.judge, run_seed=settings.run_seed)
    verdict = await judge.judge(problem_id=item.problem_id, solution_index=0,
                                question=item.problem, steps=list(item.steps))
    index = verdict.first_error_index
    return AnnotatorPrediction(
        "judge", _known(index), index, verdict.reason, verdict.cost, verdict.model_id,
        {"votes": verdict.votes, "agreement": verdict.agreement,
         "min_agreement": verdict.min_agreement, "parse_reasons": verdict.parse_reasons,
         "finish_reasons": verdict.finish_reasons, "replies": verdict.raw_replies,
         "template_id": verdict.template_id, "template_sha256": verdict.template_sha256,
         "parser": verdict.parser, "parser_version": verdict.parser_version})


def _skipped(name: str, reason: str) -> AnnotatorPrediction:
    return AnnotatorPrediction(name, STATUS_SKIPPED, None, reason, _zero_cost())


@dataclass(frozen=True)
class Engines:
    """The engines the evaluated annotators talk to: ``completer`` (Monte Carlo and OmegaPRM
    rollouts) and ``judge``; ``policy`` is carried for callers that hold one (evaluate samples
    nothing)."""

    policy: Any
    completer: Any
    judge: Any


def usable_gold_answer(item: GoldItem, annotators: Sequence[str], *,
                       answer_check: Callable[[str], str | None] = check_answer_readable
                       ) -> tuple[str | None, str]:
    """``(gold answer, gold status)`` the annotators run under: the item's answer, or None with
    status ``unreadable_answer`` when an annotator that needs it is chosen and the grader
    cannot read it (``answer_check`` returns a reason)."""
    gold_answer, gold_status = item.gold_answer, item.gold_status
    if gold_answer is not None and NEEDS_GOLD & set(annotators):
        if answer_check(gold_answer) is not None:
            gold_answer, gold_status = None, GOLD_UNREADABLE
    return gold_answer, gold_status


async def predict_with_completer(item: GoldItem, *, annotators: Sequence[str], engine,
                                 settings: EvaluationSettings, gold_answer: str | None,
                                 grader: Callable[[str, str | None], Grade] = grade
                                 ) -> dict[str, AnnotatorPrediction]:
    """The completer's predictions of ``item`` (``mc`` and ``omegaprm`` among ``annotators``,
    run concurrently); none without a usable ``gold_answer``. Engine failures propagate."""
    if gold_answer is None or not {"mc", "omegaprm"} & set(annotators):
        return {}
    prompt = build_solution_prompt(engine, load_template(settings.policy_template),
                                   item.problem, "")
    common = dict(engine=engine, settings=settings, splitter=get_splitter(item.splitter_name),
                  prompt=prompt, gold_answer=gold_answer, grader=grader)
    jobs: dict[str, Any] = {}
    if "mc" in annotators:
        jobs["mc"] = _predict_mc(item, **common)
    if "omegaprm" in annotators:
        jobs["omegaprm"] = _predict_omegaprm(item, **common)
    return dict(zip(jobs, await asyncio.gather(*jobs.values())))


async def predict_with_judge(item: GoldItem, *, engine, settings: EvaluationSettings
                             ) -> dict[str, AnnotatorPrediction]:
    """The judge's prediction of ``item``. Engine failures propagate."""
    return {"judge": await _predict_judge(item, engine=engine, settings=settings)}


def combine_predictions(item: GoldItem, *, annotators: Sequence[str], gold_answer: str | None,
                        gold_status: str, done: Mapping[str, AnnotatorPrediction]
                        ) -> ItemPrediction:
    """Every chosen annotator's prediction from what the engines predicted (``done``): Monte
    Carlo, OmegaPRM and consensus ``skipped`` without a usable gold answer, consensus from Monte
    Carlo's and the judge's indices."""
    predictions: dict[str, AnnotatorPrediction] = {}
    for name in annotators:
        if name in done:
            predictions[name] = done[name]
        elif name in NEEDS_GOLD and gold_answer is None:
            predictions[name] = _skipped(name, "no_gold_answer")
        elif name == "consensus":
            mc, judge = done["mc"], done["judge"]
            decision = consensus(mc.first_error, judge.first_error)
            predictions[name] = AnnotatorPrediction(
                "consensus", _known(decision.first_error), decision.first_error,
                decision.reason, add_costs(mc.cost, judge.cost), None,
                {"mc_first_error": mc.first_error, "judge_first_error": judge.first_error})
    return ItemPrediction(item=item, gold_status=gold_status, predictions=predictions)


async def predict_first_errors(
    item: GoldItem,
    *,
    annotators: Sequence[str],
    engines,
    settings: EvaluationSettings,
    grader: Callable[[str, str | None], Grade] = grade,
    answer_check: Callable[[str], str | None] = check_answer_readable,
) -> ItemPrediction:
    """Run the chosen annotators on ``item``'s steps as given and collect their predictions.

    ``engines`` has ``completer`` (Monte Carlo and OmegaPRM rollouts) and ``judge`` attributes
    (:class:`Engines`). The steps are joined with the separator of the item's format
    (:data:`JOIN_SPLITTERS`); nothing is resampled or re-split. Monte Carlo, OmegaPRM and the
    judge run concurrently. Without a usable gold answer (missing, unparseable, ambiguous, or
    one the grader cannot read, checked with ``answer_check``), Monte Carlo, OmegaPRM and
    consensus are ``skipped`` with reason ``no_gold_answer``.

    The evaluate job runs the same parts as separate stages (:func:`usable_gold_answer`,
    :func:`predict_with_completer`, :func:`predict_with_judge`, :func:`combine_predictions`).
    Engine failures (:class:`~steplabel.engines.base.EngineError`) propagate: the caller
    dead-letters the item.
    """
    chosen = resolve_annotators(annotators)
    settings.check(chosen)
    gold_answer, gold_status = await asyncio.to_thread(usable_gold_answer, item, chosen,
                                                       answer_check=answer_check)
    jobs = [predict_with_completer(item, annotators=chosen, engine=engines.completer,
                                   settings=settings, gold_answer=gold_answer, grader=grader)]
    if "judge" in chosen:
        jobs.append(predict_with_judge(item, engine=engines.judge, settings=settings))
    done: dict[str, AnnotatorPrediction] = {}
    for part in await asyncio.gather(*jobs):
        done.update(part)
    return combine_predictions(item, annotators=chosen, gold_answer=gold_answer,
                               gold_status=gold_status, done=done)


# --------------------------------------------------------------------------------------------
# The evaluate job's engine stages (one per engine role), checkpointed as JSON


@dataclass(frozen=True)
class StagePredictions:
    """What one engine stage predicted for one item: ``predictions`` by annotator, or the
    ``failure`` (:class:`~steplabel.annotators.stages.Failure`) of its requests, which
    dead-letters the item. Plain JSON values, so that a fresh result and its replayed
    checkpoint are equal."""

    predictions: dict = field(default_factory=dict)  # annotator -> AnnotatorPrediction
    failure: Any = None


def stage_predictions_to_json(result: StagePredictions) -> dict:
    return {"predictions": {name: asdict(p) for name, p in result.predictions.items()},
            "failure": asdict(result.failure) if result.failure is not None else None}


def stage_predictions_from_json(data: dict) -> StagePredictions:
    from steplabel.annotators.stages import Failure

    failure = data.get("failure")
    return StagePredictions(
        predictions={name: AnnotatorPrediction(**p) for name, p in data["predictions"].items()},
        failure=Failure(**failure) if failure else None)


def _plain_predictions(predictions: Mapping[str, AnnotatorPrediction]) -> StagePredictions:
    """Tuples to lists and other values to strings (as the predictions output stores
    ``details``), so that the result equals its checkpoint."""
    return stage_predictions_from_json(json.loads(json.dumps(
        stage_predictions_to_json(StagePredictions(dict(predictions))), default=str)))


async def _stage(work) -> StagePredictions:
    from steplabel.annotators.stages import failure_of
    from steplabel.engines.base import EngineError

    try:
        return _plain_predictions(await work)
    except EngineError as exc:  # a refused request; a dead engine is not one and propagates
        return StagePredictions(failure=failure_of(exc))


async def completer_stage(item: GoldItem, *, annotators: Sequence[str], engine,
                          settings: EvaluationSettings,
                          gold_answer: str | None) -> StagePredictions:
    """:func:`predict_with_completer` as a stage: engine refusals are the result's failure."""
    return await _stage(predict_with_completer(item, annotators=annotators, engine=engine,
                                               settings=settings, gold_answer=gold_answer))


async def judge_stage(item: GoldItem, *, engine, settings: EvaluationSettings
                      ) -> StagePredictions:
    """:func:`predict_with_judge` as a stage: engine refusals are the result's failure."""
    return await _stage(predict_with_judge(item, engine=engine, settings=settings))


# --------------------------------------------------------------------------------------------
# Metrics


def _percent(hits: int, total: int) -> float | None:
    return 100.0 * hits / total if total else None


def harmonic_f1(error_acc: float | None, correct_acc: float | None) -> float | None:
    """``2ab / (a + b)``; None when either is None; 0.0 when both are 0."""
    if error_acc is None or correct_acc is None:
        return None
    if error_acc + correct_acc == 0:
        return 0.0
    return 2.0 * error_acc * correct_acc / (error_acc + correct_acc)


@dataclass(frozen=True)
class FirstErrorScores:
    """ProcessBench scores of one annotator on one set of items (percentages in [0, 100]).

    - ``n_error`` items with ``label != -1``, ``error_hits`` of them predicted exactly;
      ``error_acc = 100 * error_hits / n_error``, None when ``n_error == 0``.
    - ``n_correct`` items with ``label == -1``, ``correct_hits`` of them predicted -1;
      ``correct_acc``, None when ``n_correct == 0``.
    - ``f1``: :func:`harmonic_f1` of the two.
    - ``n_unknown``: items the annotator ran on but predicted None; ``n_skipped``: items it did
      not run on (no gold answer). Both are scored as wrong. ``coverage``: percentage of items
      with a predicted index; ``known_acc``: exact-match percentage among those (for
      consensus, the accuracy of the kept labels).
    """

    n_items: int
    n_error: int
    n_correct: int
    error_hits: int
    correct_hits: int
    n_unknown: int
    error_acc: float | None
    correct_acc: float | None
    f1: float | None
    coverage: float | None
    known_acc: float | None
    n_skipped: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def first_error_scores(pairs: Iterable[tuple[int, int | None] | tuple[int, int | None, bool]]
                       ) -> FirstErrorScores:
    """Score ``(label, predicted)`` pairs exactly as ProcessBench does (module docstring).

    ``label`` is an integer >= -1; ``predicted`` is an integer >= -1 or None (no prediction,
    scored as wrong). An optional third element ``skipped`` (True: the annotator did not run on
    the item) counts the item in ``n_skipped`` instead of ``n_unknown``; either way it is wrong.
    """
    n_error = n_correct = error_hits = correct_hits = n_unknown = n_skipped = known_hits = 0
    for pair in pairs:
        label, predicted = pair[0], pair[1]
        skipped = bool(pair[2]) if len(pair) > 2 else False
        if not _is_int(label) or label < -1:
            raise ValueError(f"label must be an integer >= -1, got {label!r}")
        if skipped:
            predicted = None
        hit = predicted is not None and predicted == label
        n_skipped += skipped
        n_unknown += predicted is None and not skipped
        known_hits += hit
        if label == -1:
            n_correct += 1
            correct_hits += hit
        else:
            n_error += 1
            error_hits += hit
    n_items = n_error + n_correct
    n_known = n_items - n_unknown - n_skipped
    error_acc, correct_acc = _percent(error_hits, n_error), _percent(correct_hits, n_correct)
    return FirstErrorScores(
        n_items=n_items, n_error=n_error, n_correct=n_correct, error_hits=error_hits,
        correct_hits=correct_hits, n_unknown=n_unknown, error_acc=error_acc,
        correct_acc=correct_acc, f1=harmonic_f1(error_acc, correct_acc),
        coverage=_percent(n_known, n_items), known_acc=_percent(known_hits, n_known),
        n_skipped=n_skipped)


def average_scores(scores: Iterable[Mapping[str, Any] | FirstErrorScores]) -> dict:
    """Mean ``error_acc``, ``correct_acc`` and ``f1`` over sources, each over the sources
    where it is not None (None when it is None everywhere), with the number of sources each
    mean covers (``sources_error_acc`` ...)."""
    rows = [s.as_dict() if isinstance(s, FirstErrorScores) else dict(s) for s in scores]
    average: dict[str, Any] = {}
    for name in ("error_acc", "correct_acc", "f1"):
        values = [r[name] for r in rows if r.get(name) is not None]
        average[name] = sum(values) / len(values) if values else None
        average[f"sources_{name}"] = len(values)
    return average


def predicted_negatives(first_error: int | None, num_steps: int) -> list[bool | None]:
    """Per-step "negative" predictions implied by a first-error index (ProcessBench reading).

    ``-1``: every step not negative. ``e``: steps before ``e`` not negative, step ``e``
    negative, later steps unlabelled (None), since after the first error their correctness is
    not claimed. None (unknown): every step unlabelled.
    """
    if first_error is None:
        return [None] * num_steps
    if first_error == -1:
        return [False] * num_steps
    if not 0 <= first_error < num_steps:
        raise ValueError(f"first_error must be in -1..{num_steps - 1}, got {first_error!r}")
    return [False] * first_error + [True] + [None] * (num_steps - first_error - 1)


@dataclass(frozen=True)
class StepScores:
    """Step-level precision and recall of negatives (percentages), over the steps that have
    both a gold rating and a predicted label (``steps_compared``).

    A gold step is negative when rated -1 (0 and +1 are not negative); a predicted label
    comes from :func:`predicted_negatives`. ``precision = tp / (tp + fp)``,
    ``recall = tp / (tp + fn)``, each None when its denominator is 0.
    """

    steps_compared: int
    true_negatives_found: int  # tp: predicted negative, rated -1
    false_alarms: int  # fp: predicted negative, rated 0 or +1
    missed_negatives: int  # fn: predicted not negative, rated -1
    precision: float | None
    recall: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def step_negative_scores(pairs: Iterable[tuple[Sequence[int | None], int | None]]) -> StepScores:
    """Score ``(ratings, predicted_first_error)`` pairs at step level (see :class:`StepScores`)."""
    compared = tp = fp = fn = 0
    for ratings, predicted in pairs:
        for rating, negative in zip(ratings, predicted_negatives(predicted, len(ratings))):
            if rating is None or negative is None:
                continue
            compared += 1
            gold_negative = rating == -1
            tp += negative and gold_negative
            fp += negative and not gold_negative
            fn += (not negative) and gold_negative
    return StepScores(compared, tp, fp, fn, _percent(tp, tp + fp), _percent(tp, tp + fn))


# --------------------------------------------------------------------------------------------
# The report


def build_report(
    prediction_rows: Iterable[Mapping[str, Any]],
    *,
    annotators: Sequence[str],
    dead_letters: Iterable[Mapping[str, Any]] = (),
    evaluation: Mapping[str, Any] | None = None,
) -> dict:
    """The evaluation report from prediction rows (one per item and annotator).

    Each row needs ``problem_id``, ``source``, ``annotator``, ``status``,
    ``predicted_first_error``, ``label``, ``ratings`` (None for ProcessBench items),
    ``gold_status`` and ``cost``. ``dead_letters`` are the items that could not be evaluated
    (``source`` and ``reason``).

    Every annotator is scored on every evaluated item (an item that has a row of any annotator):
    skipped and unknown predictions count as wrong, and an item with no row of an annotator
    counts for it as skipped (``no_prediction_row``), so that all annotators share one
    denominator per source. Layout::

        {"evaluation": {...}, "items": {counts, per source},
         "annotators": {name: {"per_source": {source: scores, step scores, counts, cost},
                               "average": {error_acc, correct_acc, f1, step_precision,
                                           step_recall, and the sources each mean covers},
                               "items", "items_predicted", "items_unknown", "items_skipped",
                               "coverage", "cost": {totals and per item run}}}}
    """
    rows = list(prediction_rows)
    dead = list(dead_letters)
    items: dict[str, dict] = {}
    for row in rows:
        items.setdefault(row["problem_id"], row)
    sources = sorted({r["source"] for r in items.values()}
                     | {d.get("source") or "unknown" for d in dead})

    def item_counts(source: str | None) -> dict:
        chosen = [r for r in items.values() if source is None or r["source"] == source]
        dropped = [d for d in dead if source is None or (d.get("source") or "unknown") == source]
        without = Counter(r["gold_status"] for r in chosen if r["gold_status"] != GOLD_OK)
        return {
            "evaluated": len(chosen),
            "erroneous": sum(1 for r in chosen if r["label"] != -1),
            "correct": sum(1 for r in chosen if r["label"] == -1),
            "with_step_ratings": sum(1 for r in chosen if r.get("ratings") is not None),
            "without_gold_answer": sum(without.values()),
            "without_gold_answer_reasons": dict(sorted(without.items())),
            "dead_letter": len(dropped),
            "dead_letter_reasons": dict(sorted(Counter(d["reason"] for d in dropped).items())),
        }

    report_items = item_counts(None)
    report_items["per_source"] = {s: item_counts(s) for s in sources}

    per_annotator: dict[str, dict] = {}
    for name in annotators:
        by_item = {r["problem_id"]: r for r in rows if r["annotator"] == name}
        mine = [by_item.get(pid) or {**first, "annotator": name, "status": STATUS_SKIPPED,
                                     "reason": "no_prediction_row",
                                     "predicted_first_error": None, "cost": None}
                for pid, first in items.items()]
        per_source: dict[str, dict] = {}
        for source in sources:
            here = [r for r in mine if r["source"] == source]
            scores = first_error_scores(
                (r["label"], r["predicted_first_error"], r["status"] == STATUS_SKIPPED)
                for r in here)
            ran = [r for r in here if r["status"] != STATUS_SKIPPED]
            rated = [r for r in ran if r.get("ratings") is not None]
            entry = scores.as_dict()
            entry["skipped"] = scores.n_skipped
            entry["skipped_reasons"] = dict(sorted(Counter(
                r["reason"] for r in here if r["status"] == STATUS_SKIPPED).items()))
            entry["unknown_reasons"] = dict(sorted(Counter(
                r["reason"] for r in ran if r["status"] == STATUS_UNKNOWN).items()))
            entry["step"] = (step_negative_scores(
                (r["ratings"], r["predicted_first_error"]) for r in rated).as_dict()
                if rated else None)
            entry["cost"] = add_costs(*(r.get("cost") for r in here))
            per_source[source] = entry
        n_run = sum(1 for r in mine if r["status"] != STATUS_SKIPPED)
        n_predicted = sum(1 for r in mine if r["status"] == STATUS_PREDICTED)
        total_cost = add_costs(*(r.get("cost") for r in mine))
        average = average_scores(per_source[s] for s in sources)
        for figure in ("precision", "recall"):
            values = [e["step"][figure] for e in per_source.values()
                      if e["step"] and e["step"][figure] is not None]
            average[f"step_{figure}"] = sum(values) / len(values) if values else None
            average[f"sources_step_{figure}"] = len(values)
        per_annotator[name] = {
            "per_source": per_source,
            "average": average,
            "items": len(mine),
            "items_scored": len(mine),  # every evaluated item, for every annotator
            "items_predicted": n_predicted,
            "items_unknown": n_run - n_predicted,
            "items_skipped": len(mine) - n_run,
            "coverage": _percent(n_predicted, len(mine)),
            "cost": {**total_cost,
                     "rollouts_per_item": total_cost["rollouts"] / n_run if n_run else None,
                     "generated_tokens_per_item":
                         total_cost["generated_tokens"] / n_run if n_run else None},
        }
    return {
        "report_version": 2,
        "evaluation": dict(evaluation or {}),
        "items": report_items,
        "annotators": per_annotator,
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _reasons(counts: Mapping[str, int]) -> str:
    return " (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")" if counts else ""


def render_report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: item counts, then one table of scores per annotator and source
    with the average row, then step-level scores where there are per-step ratings."""
    ev = report.get("evaluation", {})
    items = report["items"]
    lines = [f"# Evaluation: {ev.get('name', 'steplabel evaluate')}", ""]
    if ev:
        lines.append(f"- annotators: {', '.join(ev.get('annotators', []))}")
        for role, model in (ev.get("models") or {}).items():
            lines.append(f"- {role} model: {model}")
        lines.append(f"- evaluation hash: {str(ev.get('hash', ''))[:16]}")
    lines += [
        f"- items evaluated: {items['evaluated']} ({items['erroneous']} with an error, "
        f"{items['correct']} correct); dead letter: {items['dead_letter']}"
        + _reasons(items["dead_letter_reasons"]),
        f"- items without a gold answer (only the judge runs; the others count them as "
        f"wrong): {items['without_gold_answer']}"
        + _reasons(items["without_gold_answer_reasons"]),
        "",
        "ProcessBench scores in percent, every annotator on the same items: error_acc on items "
        "with an error (exact first-error index), correct_acc on correct items, F1 their "
        "harmonic mean. An item an annotator could not score (unknown, or skipped: not run "
        "without a gold answer) counts as a wrong prediction; coverage is the share of items "
        "it predicted an index for. n/a where a source has no such items.",
        "",
        "| annotator | source | scored (err/corr) | error_acc | correct_acc | F1 | coverage | "
        "unknown | skipped | kept acc | rollouts | gen. tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    step_lines = []
    for name, block in report["annotators"].items():
        for source, s in block["per_source"].items():
            lines.append(
                f"| {name} | {source} | {s['n_items']} ({s['n_error']}/{s['n_correct']}) | "
                f"{_fmt(s['error_acc'])} | {_fmt(s['correct_acc'])} | {_fmt(s['f1'])} | "
                f"{_fmt(s['coverage'])} | {s['n_unknown']} | {s['skipped']} | "
                f"{_fmt(s['known_acc'])} | "
                f"{s['cost']['rollouts']} | {s['cost']['generated_tokens']} |")
            if s.get("step"):
                st = s["step"]
                step_lines.append(
                    f"| {name} | {source} | {st['steps_compared']} | "
                    f"{_fmt(st['precision'])} | {_fmt(st['recall'])} |")
        avg = block["average"]
        cost = block["cost"]
        if step_lines and step_lines[-1].startswith(f"| {name} |"):
            step_lines.append(f"| {name} | **average** | | {_fmt(avg['step_precision'])} | "
                              f"{_fmt(avg['step_recall'])} |")
        lines.append(
            f"| {name} | **average** | {block['items_scored']} | {_fmt(avg['error_acc'])} | "
            f"{_fmt(avg['correct_acc'])} | **{_fmt(avg['f1'])}** | {_fmt(block['coverage'])} "
            f"| {block['items_unknown']} | {block['items_skipped']} | | {cost['rollouts']} | "
            f"{cost['generated_tokens']} |")
    if step_lines:
        lines += ["", "Step level, per-step ratings only (negative = rated -1): precision and "
                  "recall of the predicted negative steps, in percent.", "",
                  "| annotator | source | steps compared | precision (neg) | recall (neg) |",
                  "|---|---|---|---|---|", *step_lines]
    lines += ["", "kept acc: exact-match accuracy among known predictions (for consensus, the "
              "accuracy of the labels it keeps). Consensus costs what Monte Carlo and the judge "
              "cost together."]
    return "\n".join(lines) + "\n"
