"""ProcessBench's scores of first-error predictions, and step-level scores of negatives.

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

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from steplabel.annotators.evaluation.items import is_int


def percent(hits: int, total: int) -> float | None:
    """``100 * hits / total``; None when ``total`` is 0."""
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
    """Score ``(label, predicted)`` pairs exactly as ProcessBench does (see the module docstring).

    ``label`` is an integer >= -1; ``predicted`` is an integer >= -1 or None (no prediction,
    scored as wrong). An optional third element ``skipped`` (True: the annotator did not run on
    the item) counts the item in ``n_skipped`` instead of ``n_unknown``; either way it is wrong.
    """
    n_error = n_correct = error_hits = correct_hits = n_unknown = n_skipped = known_hits = 0
    for pair in pairs:
        label, predicted = pair[0], pair[1]
        skipped = bool(pair[2]) if len(pair) > 2 else False
        if not is_int(label) or label < -1:
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
    error_acc, correct_acc = percent(error_hits, n_error), percent(correct_hits, n_correct)
    return FirstErrorScores(
        n_items=n_items, n_error=n_error, n_correct=n_correct, error_hits=error_hits,
        correct_hits=correct_hits, n_unknown=n_unknown, error_acc=error_acc,
        correct_acc=correct_acc, f1=harmonic_f1(error_acc, correct_acc),
        coverage=percent(n_known, n_items), known_acc=percent(known_hits, n_known),
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
    return StepScores(compared, tp, fp, fn, percent(tp, tp + fp), percent(tp, tp + fn))
