"""The evaluation report: every annotator's scores per source and averaged, with counts and
cost (:func:`build_report`), and its Markdown (:func:`render_report_markdown`)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from steplabel.annotators.evaluation.items import GOLD_OK
from steplabel.annotators.evaluation.metrics import (
    average_scores,
    first_error_scores,
    percent,
    step_negative_scores,
)
from steplabel.annotators.evaluation.predict import (
    STATUS_PREDICTED,
    STATUS_SKIPPED,
    STATUS_UNKNOWN,
    add_costs,
)


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
            "coverage": percent(n_predicted, len(mine)),
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
        *[f"- warning: {warning}" for warning in report.get("warnings") or []],
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
