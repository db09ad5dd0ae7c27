"""``steplabel show DATASET``: labelled trajectories and OmegaPRM searches, readable in a terminal.

For each trajectory: the question, the gold and final answers, then every step with its label
(``✓`` positive, ``✗`` negative, ``?`` not estimated, ``·`` no label: after the first error of
a kept trajectory), its Monte Carlo value and counts (correct / graded rollouts, unknown and
cut-off rollouts apart), the first error each annotator named (Monte Carlo, OmegaPRM, the
judge with its votes) and why consensus kept or rejected it. Kept trajectories show their final
labels; rejected ones have none, so they show the Monte Carlo labels.

Filters: ``--kept`` / ``--rejected`` (default: both, alternating), ``--reason`` (consensus
reason, e.g. ``disagree``), ``--problem ID``, ``--first-error N`` (the first error of the labels
shown: 0-based step index, -1 for "no error"), ``--limit`` (default 5). ``--omegaprm`` shows
OmegaPRM's binary searches instead: the searched solution piece by piece, the Monte Carlo value
of every prefix the tree estimated along it (the search's probes, and states of earlier
searches it reused), and the first error found. ``--critiques`` shows kept critiques instead
(``--all-critiques``: rejected ones too, with why): each beside its trajectory, every step with
the critic's verdict next to the trusted label it was checked against, then the critique's text.
``--json`` prints the same examples as JSON.

Rows are streamed from the Parquet shards and read defensively: a column a dataset does not
have (an older or newer schema) is shown as absent, never an error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import textwrap
from typing import Iterable, Iterator

from steplabel.annotators.code_splitting import code_step_flags
from steplabel.annotators.registry import ANNOTATORS
from steplabel.annotators.consensus import CONSENSUS_REASONS, REJECT_REASONS
from steplabel.dataset import storage

POSITIVE, NEGATIVE, UNKNOWN, UNLABELLED = "✓", "✗", "?", "·"
KEPT, REJECTED = "trajectories", "rejected"
DEFAULT_LIMIT = 5
#: What ``--reason`` accepts: every consensus reason and every rejection reason.
SHOW_REASONS = tuple(dict.fromkeys(CONSENSUS_REASONS + REJECT_REASONS))


class ShowError(RuntimeError):
    """The directory holds nothing to show."""


# ---------------------------------------------------------------------------------------------
# Examples: what is shown, as plain data (text, JSON and the HTML report render these)


def _at(values, index: int):
    """``values[index]``, or None when the list is absent or shorter."""
    if values is None or index >= len(values):
        return None
    return values[index]


def label_first_error(labels) -> int | None:
    """The first error of a label list: index of the first False, -1 when none is, None when
    an unknown label comes first or there are no labels."""
    if labels is None:
        return None
    for index, label in enumerate(labels):
        if label is None:
            return None
        if not label:
            return index
    return -1


#: The annotators with a first-error column on trajectory rows, in stage order.
FIRST_ERRORS = [spec for spec in ANNOTATORS.values() if spec.first_error_column]


def first_error_marks(example: dict) -> dict[int, list[str]]:
    """Step index -> the annotators (short names) whose first error it is."""
    marks: dict[int, list[str]] = {}
    for spec in FIRST_ERRORS:
        value = example[spec.first_error_column]
        if value is not None and value >= 0:
            marks.setdefault(value, []).append(spec.mark)
    return marks


def first_error_texts(example: dict, text, details: dict | None = None) -> list[str]:
    """``"<annotator> <first error>"`` per annotator, in stage order; ``text`` formats an
    index, ``details`` (annotator name -> example -> str) adds to one. An optional first
    error (OmegaPRM's: null where it did not search this trajectory) is left out when null."""
    parts = []
    for spec in FIRST_ERRORS:
        value = example[spec.first_error_column]
        if value is None and spec.first_error_optional:
            continue
        detail = (details or {}).get(spec.name)
        parts.append(f"{spec.title} {text(value)}{detail(example) if detail else ''}")
    return parts


def trajectory_example(row: dict, output: str) -> dict:
    """One trajectory row (``trajectories`` or ``rejected``) as an example to show."""
    steps = list(row.get("steps") or [])
    final = row.get("labels")
    mc_labels = row.get("hard_labels")
    if final is not None:
        labels, labels_from = final, "final"
    elif mc_labels is not None:
        labels, labels_from = mc_labels, "monte_carlo"
    else:
        labels, labels_from = None, None
    shown = []
    code = code_step_flags(steps)
    for index, text in enumerate(steps):
        label = _at(labels, index)
        # Kept labels end at the first error: a missing entry after it is "no label", not
        # "not estimated".
        ended = labels_from == "final" and labels is not None and index >= len(labels)
        shown.append({
            "index": index,
            "text": text,
            "code": code[index],  # a step of a program: shown verbatim, monospaced
            "label": label,
            "label_state": ("no_label" if ended else "unknown" if label is None
                            else "positive" if label else "negative"),
            "mc_value": _at(row.get("mc_values"), index),
            "mc_n_correct": _at(row.get("mc_n_correct"), index),
            "mc_n_total": _at(row.get("mc_n_total"), index),
            "mc_n_unknown": _at(row.get("mc_n_unknown"), index),
            "mc_n_truncated": _at(row.get("mc_n_truncated"), index),
        })
    return {
        "output": output,
        "kept": output == KEPT,
        "problem_id": row.get("problem_id"),
        "solution_index": row.get("solution_index"),
        "source": row.get("source"),
        "question": row.get("question"),
        "gold_answer": row.get("gold_answer"),
        "final_answer": row.get("final_answer"),
        "final_answer_correct": row.get("final_answer_correct"),
        "outcome_reason": row.get("outcome_reason"),
        "policy_truncated": row.get("policy_truncated"),
        "labels_from": labels_from,
        "label_source": row.get("label_source"),
        "first_error": label_first_error(labels),
        **{spec.first_error_column: row.get(spec.first_error_column)
           for spec in FIRST_ERRORS},
        "judge_votes": row.get("judge_votes"),
        "judge_agreement": row.get("judge_agreement"),
        "judge_parse_reasons": row.get("judge_parse_reasons"),
        "judge_verdicts": [verdict_text(r) for r in row["judge_replies"]]
        if row.get("judge_replies") is not None else None,
        "consensus_keep": row.get("consensus_keep"),
        "consensus_reason": row.get("consensus_reason"),
        "steps": shown,
    }


def _matches(example: dict, *, reason: str | None, problem: str | None,
             first_error: int | None) -> bool:
    if reason is not None and example["consensus_reason"] != reason:
        return False
    if problem is not None and example["problem_id"] != problem:
        return False
    if first_error is not None and example["first_error"] != first_error:
        return False
    return True


def _examples(dataset_dir: str, output: str, **filters) -> Iterator[dict]:
    for row in storage.iter_rows(dataset_dir, output, batch_size=256):
        example = trajectory_example(row, output)
        if _matches(example, **filters):
            yield example


def select_trajectories(dataset_dir: str, *, kept: bool | None = None,
                        reason: str | None = None, problem: str | None = None,
                        first_error: int | None = None,
                        limit: int | None = DEFAULT_LIMIT) -> list[dict]:
    """Trajectories matching the filters, at most ``limit`` (None: all). ``kept``: True for
    kept ones only, False for rejected ones only, None for both, alternating kept and
    rejected so that a short list shows both."""
    filters = dict(reason=reason, problem=problem, first_error=first_error)
    if kept is True:
        found: Iterable[dict] = _examples(dataset_dir, KEPT, **filters)
    elif kept is False:
        found = _examples(dataset_dir, REJECTED, **filters)
    else:
        pairs = itertools.zip_longest(_examples(dataset_dir, KEPT, **filters),
                                      _examples(dataset_dir, REJECTED, **filters))
        found = (example for pair in pairs for example in pair if example is not None)
    return list(itertools.islice(found, limit))


def sample_trajectories(dataset_dir: str, output: str, count: int, *,
                        scan: int | None = None) -> list[dict]:
    """Up to ``count`` examples of one output, varied: the first ``scan`` rows (default
    ``20 * count``) are grouped by consensus reason and by whether the labels shown have an
    error (none, an error, unknown), and the groups are taken from in turn."""
    groups: dict[tuple, list[dict]] = {}
    for example in itertools.islice(_examples(dataset_dir, output, reason=None, problem=None,
                                              first_error=None), scan or 20 * count):
        error = example["first_error"]
        kind = "unknown" if error is None else "none" if error < 0 else "error"
        groups.setdefault((example["consensus_reason"] or "", kind), []).append(example)
    chosen: list[dict] = []
    queues = [groups[key] for key in sorted(groups)]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def critiqued_name(example: dict) -> str:
    """What a critique verified: ``solution i`` (a policy sample) or ``OmegaPRM rollout <id>``
    (one of OmegaPRM's searched rollouts)."""
    if example.get("omegaprm_rollout_id") is not None:
        return f"OmegaPRM rollout {example['omegaprm_rollout_id']}"
    return f"solution {example['solution_index']}"


def critique_example(row: dict, trajectory: dict | None) -> dict:
    """One ``critiques`` row beside its trajectory (a :func:`trajectory_example`, None when the
    dataset has no row for it): per step the critic's verdict and the trusted label."""
    steps = list(row.get("steps") or [])
    verdicts, trusted = row.get("step_verdicts"), row.get("trusted_labels")
    return {
        "problem_id": row.get("problem_id"),
        "solution_index": row.get("solution_index"),
        "omegaprm_rollout_id": row.get("omegaprm_rollout_id"),
        "question": row.get("question"),
        "sample_index": row.get("sample_index"),
        "kept": bool(row.get("kept")),
        "reason": row.get("reason"),
        "parse_reason": row.get("parse_reason"),
        "finish_reason": row.get("finish_reason"),
        "critique_first_error": row.get("critique_first_error"),
        "trusted_first_error": row.get("trusted_first_error"),
        "trusted_source": row.get("trusted_source"),
        "critic_model": row.get("critic_model"),
        "critique": row.get("critique"),
        "steps": [{"index": i, "text": text, "verdict": _at(verdicts, i),
                   "trusted": _at(trusted, i)} for i, text in enumerate(steps)],
        "trajectory": trajectory,
    }


def select_critiques(dataset_dir: str, *, kept_only: bool = True, problem: str | None = None,
                     limit: int | None = DEFAULT_LIMIT) -> list[dict]:
    """Critiques (kept ones only unless ``kept_only`` is false), at most ``limit``, each with
    its trajectory (kept or rejected) read from the dataset. A critique of one of OmegaPRM's
    searched rollouts (``omegaprm_rollout_id`` set) has no trajectory row: None."""
    rows = (row for row in storage.iter_rows(dataset_dir, "critiques", batch_size=256)
            if (row.get("kept") or not kept_only)
            and (problem is None or row.get("problem_id") == problem))
    chosen = list(itertools.islice(rows, limit))
    wanted = {(r["problem_id"], r["solution_index"]) for r in chosen
              if r.get("omegaprm_rollout_id") is None}
    trajectories: dict = {}
    for output in (KEPT, REJECTED):
        if not storage.output_files(dataset_dir, output):
            continue
        for row in storage.iter_rows(dataset_dir, output, batch_size=256):
            key = (row.get("problem_id"), row.get("solution_index"))
            if key in wanted and key not in trajectories:
                trajectories[key] = trajectory_example(row, output)
    return [critique_example(r, None if r.get("omegaprm_rollout_id") is not None
                             else trajectories.get((r["problem_id"], r["solution_index"])))
            for r in chosen]


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text or "")


def search_example(search: dict, states: list[dict]) -> dict:
    """One OmegaPRM search row with the Monte Carlo values along its solution: for every
    prefix of its pieces, the tree state with that prefix (matched on the text without
    whitespace, as the separator between pieces is the splitter's), if the tree has one."""
    pieces = list(search.get("pieces") or [])
    by_prefix: dict[str, dict] = {}
    for state in states:
        by_prefix.setdefault(_squeeze(state.get("prefix")), state)
    root = next((s for s in states if s.get("parent_id") is None), None)
    probes = set()  # node ids on the path that a binary search estimated (kind "probe")
    shown, prefix = [], ""
    first_error = search.get("first_error")
    for index, piece in enumerate(pieces):
        prefix += piece
        state = by_prefix.get(_squeeze(prefix))
        if state is not None and state.get("record_type") == "probe":
            probes.add(state.get("node_id"))
        shown.append({
            "index": index,
            "text": piece,
            "state": state.get("node_id") if state else None,
            "state_kind": state.get("record_type") if state else None,
            "mc_value": state.get("mc_value") if state else None,
            "n_correct": state.get("n_correct") if state else None,
            "n_total": state.get("n_total") if state else None,
            "n_unknown": state.get("n_unknown") if state else None,
            "n_truncated": state.get("n_truncated") if state else None,
            # the state's hard label (MC > 0, or under a budget the posterior's decision), its
            # 90% interval and why it is unknown (schema 1.4; None on older datasets)
            "hard_label": state.get("hard_label") if state else None,
            "interval": ((state["mc_interval_low"], state["mc_interval_high"])
                         if state and state.get("mc_interval_low") is not None else None),
            "label_reason": state.get("mc_label_reason") if state else None,
            "first_error": first_error is not None and index == first_error,
            "before_start": index < (search.get("start_index") or 0),
        })
    return {
        "problem_id": search.get("problem_id"),
        "tree_id": search.get("tree_id"),
        "search_index": search.get("search_index"),
        "start_node": search.get("start_node"),
        "rollout_id": search.get("rollout_id"),
        "start_index": search.get("start_index"),
        "first_error": first_error,
        "reason": search.get("reason"),
        "rollouts_used": search.get("rollouts_used"),
        "question": root.get("question") if root else None,
        "gold_answer": root.get("gold_answer") if root else None,
        "root_mc_value": root.get("mc_value") if root else None,
        "probes_on_path": len(probes),
        "pieces": shown,
    }


def select_searches(dataset_dir: str, *, problem: str | None = None,
                    first_error: int | None = None,
                    limit: int | None = DEFAULT_LIMIT) -> list[dict]:
    """OmegaPRM searches matching the filters (at most ``limit``), each with its tree's
    Monte Carlo values along the searched solution."""
    chosen = []
    for search in storage.iter_rows(dataset_dir, "omegaprm_searches", batch_size=256):
        if problem is not None and search.get("problem_id") != problem:
            continue
        if first_error is not None and search.get("first_error") != first_error:
            continue
        chosen.append(search)
        if limit is not None and len(chosen) >= limit:
            break
    trees = {s.get("problem_id") for s in chosen}
    states: dict[str, list[dict]] = {tree: [] for tree in trees}
    if chosen:
        for state in storage.iter_rows(dataset_dir, "omegaprm_states", batch_size=1024):
            if state.get("problem_id") in states:
                states[state["problem_id"]].append(state)
    return [search_example(s, states[s.get("problem_id")]) for s in chosen]


# ---------------------------------------------------------------------------------------------
# Text


class Style:
    """ANSI colours when the output is a terminal (and ``NO_COLOR`` is not set)."""

    CODES = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *names: str) -> str:
        if not self.enabled or not names:
            return text
        codes = ";".join(self.CODES[n] for n in names)
        return f"\033[{codes}m{text}\033[0m"


SYMBOLS = {"positive": (POSITIVE, "green"), "negative": (NEGATIVE, "red"),
           "unknown": (UNKNOWN, "yellow"), "no_label": (UNLABELLED, "dim")}


def _index(value) -> str:
    if value is None:
        return "unknown"
    return "none" if value < 0 else str(value)


def _counts(correct, total, unknown, truncated) -> str:
    if total is None and correct is None:
        return ""
    text = f"{correct if correct is not None else '?'}/{total if total is not None else '?'}"
    extra = []
    if unknown:
        extra.append(f"{unknown} unknown")
    if truncated:
        extra.append(f"{truncated} cut off")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _value(value) -> str:
    return "  - " if value is None else f"{value:.2f}"


def _wrap(text: str, *, first: str, indent: int, width: int) -> list[str]:
    lines = []
    body_width = max(20, width - indent)
    for n, paragraph in enumerate((text or "").splitlines() or [""]):
        wrapped = textwrap.wrap(paragraph, body_width) or [""]
        lines.extend(wrapped)
    out = [first + lines[0]]
    out += [" " * indent + line for line in lines[1:]]
    return out


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
#: Longest verdict text shown as it is; longer ones are shortened with an ellipsis.
VERDICT_CHARS = 12


def verdict_text(reply: str | None) -> str:
    """What a judge reply gives as its verdict, for display: the last ``\\boxed{...}``'s content,
    else a short reply as it is (a reply forced into the box by ``response_prefix`` holds only
    the verdict); "" for a long reply without a box."""
    if not reply:
        return ""
    boxes = _BOXED.findall(reply)
    text = boxes[-1].strip() if boxes else reply.strip().rstrip("}").strip()
    if not boxes and (len(text) > VERDICT_CHARS or "\n" in text):
        return ""
    return text if len(text) <= VERDICT_CHARS else text[:VERDICT_CHARS - 1] + "…"


def _votes(example: dict, style: Style) -> str:
    """Each vote with how it was read: ``0 ✓, k ✗ verdict_not_integer, ✗ no_verdict``."""
    reasons = example.get("judge_parse_reasons") or []
    verdicts = example.get("judge_verdicts") or []
    shown = []
    for n, vote in enumerate(example["judge_votes"]):
        reason = reasons[n] if n < len(reasons) else None
        if vote is not None and reason in (None, "ok"):
            shown.append(f"{vote} {style('✓', 'green')}")
            continue
        text = verdicts[n] if n < len(verdicts) else ""
        shown.append(" ".join(p for p in (text, style("✗", "red"), reason or "unknown") if p))
    return ", ".join(shown)


def _code_lines(text: str, *, first: str, indent: int) -> list[str]:
    """A code step as it was written: every line kept whole (no wrapping, which would break
    its indentation), indented under the step's prefix, the code's own indentation after it."""
    lines = text.split("\n")
    return [first + lines[0]] + [" " * indent + line for line in lines[1:]]


def render_trajectory(example: dict, *, style: Style, width: int) -> str:
    status = (style("kept", "green", "bold") if example["kept"]
              else style("rejected", "red", "bold"))
    head = (f"── {example['problem_id']} · solution {example['solution_index']} · {status}: "
            f"{example['consensus_reason'] or 'no consensus'} ")
    lines = [head + "─" * max(3, width - len(_plain(head)))]
    lines += _wrap(example["question"] or "", first="question: ", indent=10, width=width)
    correct = example["final_answer_correct"]
    verdict = ("correct" if correct else "unknown" if correct is None else "incorrect")
    reason = f": {example['outcome_reason']}" if example["outcome_reason"] else ""
    final = example["final_answer"]
    lines.append(f"gold answer: {example['gold_answer']} · final answer: "
                 f"{'—' if final is None else final} ({verdict}{reason})"
                 + (" · cut off at max_tokens" if example["policy_truncated"] else ""))
    source = {"final": "final labels", "monte_carlo": "Monte Carlo labels (not kept)"}.get(
        example["labels_from"], "no labels")
    lines.append(f"{source}; first error: {_index(example['first_error'])}")
    marks = first_error_marks(example)
    counts = [_counts(s["mc_n_correct"], s["mc_n_total"], s["mc_n_unknown"],
                      s["mc_n_truncated"]) for s in example["steps"]]
    count_width = max([len(c) for c in counts] + [5])
    for step, count in zip(example["steps"], counts):
        symbol, colour = SYMBOLS[step["label_state"]]
        prefix = (f"  {style(symbol, colour)} {step['index']:>2}  MC {_value(step['mc_value'])} "
                  f"{count:<{count_width}}  ")
        indent = len(_plain(prefix))
        text = step["text"]
        mark = ("  " + style("◀ first error: " + ", ".join(marks[step["index"]]), "bold")
                if step["index"] in marks else "")
        if step.get("code"):
            lines += _code_lines(text + mark, first=prefix, indent=indent)
        else:
            lines += _wrap(text + mark, first=prefix, indent=indent, width=width)
    def judge_detail(example: dict) -> str:
        votes = example["judge_votes"]
        if votes is None:  # each vote is a step index, -1 for "no error"
            return ""
        agreement = example["judge_agreement"]
        return (f" (votes {_votes(example, style)}"
                + (f"; agreement {agreement:.2f}" if agreement is not None else "") + ")")

    lines.append("first errors: " + " · ".join(
        first_error_texts(example, _index, {"judge": judge_detail})))
    lines.append(f"consensus: {'kept' if example['kept'] else 'rejected'} "
                 f"({example['consensus_reason'] or 'no reason recorded'})"
                 + (f"; labels from {example['label_source']}"
                    if example["kept"] and example["label_source"] else ""))
    return "\n".join(lines)


VERDICTS = {True: (POSITIVE, "green"), False: (NEGATIVE, "red"), None: (UNLABELLED, "dim")}


def render_critique(example: dict, *, style: Style, width: int) -> str:
    """The trajectory (as :func:`render_trajectory`), then the critique beside its steps: the
    critic's verdict and the trusted label of each step, then the critique's text."""
    parts = []
    if example["trajectory"] is not None:
        parts.append(render_trajectory(example["trajectory"], style=style, width=width))
    status = (style("kept", "green", "bold") if example["kept"]
              else style(f"not kept: {example['reason']}", "red", "bold"))
    head = (f"── critique {example['sample_index']} of {example['problem_id']} · "
            f"{critiqued_name(example)} · {status} ")
    lines = [head + "─" * max(3, width - len(_plain(head)))]
    if example["trajectory"] is None and example.get("question"):
        lines += _wrap(example["question"], first="question: ", indent=10, width=width)
    lines.append(f"critic {example['critic_model']}: first error "
                 f"{_index(example['critique_first_error'])}; trusted "
                 f"({example['trusted_source']}): {_index(example['trusted_first_error'])}")
    lines.append("  critic trusted  step")
    for step in example["steps"]:
        verdict = style(*VERDICTS[step["verdict"]])
        trusted = style(*VERDICTS[step["trusted"]])
        prefix = f"     {verdict}       {trusted}  {step['index']:>2}  "
        lines += _wrap(step["text"], first=prefix, indent=len(_plain(prefix)), width=width)
    lines += _wrap(example["critique"] or "", first="critique: ", indent=10, width=width)
    parts.append("\n".join(lines))
    return "\n".join(parts)


def render_search(example: dict, *, style: Style, width: int) -> str:
    head = (f"── OmegaPRM search {example['search_index']} of {example['problem_id']} "
            f"(from {example['start_node']}, rollout {example['rollout_id']}) ")
    lines = [head + "─" * max(3, width - len(head))]
    if example["question"]:
        lines += _wrap(example["question"], first="question: ", indent=10, width=width)
    root = example["root_mc_value"]
    lines.append(f"gold answer: {example['gold_answer']} · MC of the question "
                 f"{_value(root).strip()} · first error: {_index(example['first_error'])}"
                 + (f" ({example['reason']})" if example["reason"] else "")
                 + f" · {example['rollouts_used']} rollouts")
    for piece in example["pieces"]:
        value = piece["mc_value"]
        label = piece.get("hard_label")
        if label is None and value is not None and piece.get("label_reason") is None:
            label = value > 0  # a state row without a hard label: MC > 0, as the tree reads it
        if piece["first_error"]:
            symbol = style(NEGATIVE, "red")
        elif value is None:
            symbol = style(UNLABELLED, "dim")
        elif label is None:  # the budget left it undecided
            symbol = style(UNKNOWN, "yellow")
        else:
            symbol = style(POSITIVE, "green") if label else style(NEGATIVE, "red")
        count = _counts(piece["n_correct"], piece["n_total"], piece["n_unknown"],
                        piece["n_truncated"])
        kind = piece["state_kind"] or ""
        if piece.get("label_reason"):
            kind += f" ({piece['label_reason']})"
        interval = piece.get("interval")
        bounds = f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
        prefix = (f"  {symbol} {piece['index']:>2}  MC {_value(value)} {bounds:<12} {count:<8} "
                  f"{kind:<10} ")
        text = piece["text"] + ("  " + style("◀ first error", "bold")
                                if piece["first_error"] else "")
        lines += _wrap(text, first=prefix, indent=len(_plain(prefix)), width=width)
    return "\n".join(lines)


_ANSI = re.compile(r"\033\[[0-9;]*m")


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


LEGEND = (f"{POSITIVE} positive  {NEGATIVE} negative  {UNKNOWN} not estimated  "
          f"{UNLABELLED} no label (after the first error); MC value and counts: correct / "
          "graded rollouts from the step's prefix; indices are 0-based")
CRITIQUE_LEGEND = (f"critic / trusted: {POSITIVE} correct  {NEGATIVE} incorrect  {UNLABELLED} "
                   "no verdict (after the first error: not checked); indices are 0-based")
SEARCH_LEGEND = (f"{POSITIVE} MC > 0 (a completion from this prefix is correct)  {NEGATIVE} "
                 f"MC = 0, or the first error found  {UNLABELLED} prefix not estimated by the "
                 f"tree  {UNKNOWN} left undecided by the adaptive budget (which decides {POSITIVE}"
                 f" and {NEGATIVE} then); [low, high]: the 90% credible interval of the "
                 "prefix's success rate; probe: estimated by a binary search")


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a steplabel dataset directory")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--kept", action="store_true", help="kept trajectories only")
    which.add_argument("--rejected", action="store_true", help="rejected trajectories only")
    which.add_argument("--omegaprm", action="store_true",
                       help="OmegaPRM searches (probes and their MC values) instead")
    which.add_argument("--critiques", action="store_true",
                       help="kept critiques beside their trajectories instead")
    which.add_argument("--all-critiques", action="store_true",
                       help="every critique (kept or not, with why) beside its trajectory")

    parser.add_argument("--reason", choices=SHOW_REASONS, metavar="REASON",
                        help=f"consensus reason, one of {', '.join(SHOW_REASONS)}")
    parser.add_argument("--problem", metavar="ID", help="one problem id")
    parser.add_argument("--first-error", type=int, metavar="N",
                        help="first error of the labels shown (0-based step index; -1: none)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"at most this many examples (default {DEFAULT_LIMIT}; 0: all)")
    parser.add_argument("--json", action="store_true", help="print the examples as JSON")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour the labels (auto: on a terminal, unless NO_COLOR is set)")


def run(args: argparse.Namespace) -> int:
    critiques = getattr(args, "critiques", False) or getattr(args, "all_critiques", False)
    if critiques and not storage.output_files(args.dataset, "critiques"):
        print(f"steplabel show: error: {args.dataset} holds no critiques (run the job with a "
              "critic: section)", file=sys.stderr)
        return 2
    if not any(storage.output_files(args.dataset, o) for o in (KEPT, REJECTED,
                                                                "omegaprm_searches")):
        print(f"steplabel show: error: {args.dataset} holds no trajectories or OmegaPRM "
              "searches", file=sys.stderr)
        return 2
    limit = args.limit or None
    if critiques:
        if args.reason or args.first_error is not None:
            print("steplabel show: error: --reason and --first-error filter trajectories, "
                  "not critiques", file=sys.stderr)
            return 2
        examples = select_critiques(args.dataset, kept_only=not args.all_critiques,
                                    problem=args.problem, limit=limit)
    elif args.omegaprm:
        if args.reason:
            print("steplabel show: error: --reason filters trajectories, not OmegaPRM "
                  "searches", file=sys.stderr)
            return 2
        examples = select_searches(args.dataset, problem=args.problem,
                                   first_error=args.first_error, limit=limit)
    else:
        kept = True if args.kept else False if args.rejected else None
        examples = select_trajectories(args.dataset, kept=kept, reason=args.reason,
                                       problem=args.problem, first_error=args.first_error,
                                       limit=limit)
    if args.json:
        print(json.dumps(examples, indent=2, ensure_ascii=False, default=str))
        return 0
    if not examples:
        print("steplabel show: nothing matches these filters", file=sys.stderr)
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                       and not os.environ.get("NO_COLOR"))
    style = Style(color)
    width = min(120, shutil.get_terminal_size((100, 24)).columns)
    render = (render_critique if critiques else render_search if args.omegaprm
              else render_trajectory)
    print("\n\n".join(render(e, style=style, width=width) for e in examples))
    legend = (f"{LEGEND}\n{CRITIQUE_LEGEND}" if critiques
              else SEARCH_LEGEND if args.omegaprm else LEGEND)
    print("\n" + style(legend, "dim"))
    return 0
