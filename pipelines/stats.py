"""Label statistics of a dataset directory, computed by streaming its Parquet shards.

Memory stays flat as the dataset grows: rows are read a record batch at a time and folded into
counters and fixed-size histograms. Each figure maps to a known failure mode of automatic labels
(METHODS.md §8): positive-step rate, first-error position, Monte Carlo value distribution,
judge-vs-MC confusion, consensus keep rate, pre-filter drops, dead-letter reasons, outcome-correct
trajectories that still carry a negative step, and cost per label.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from steplabel.pipelines import storage

TRAJECTORY_COLUMNS = [
    "problem_id", "source", "steps", "labels", "hard_labels", "mc_values", "mc_first_error",
    "judge_first_error", "consensus_keep", "consensus_reason", "final_answer_correct",
    "cost_policy", "cost_mc", "cost_judge",
]
MAX_POSITION = 20  # histogram buckets: 0..19 and "20+"


def _bucket(index: int) -> str:
    return str(index) if index < MAX_POSITION else f"{MAX_POSITION}+"


class _Group:
    def __init__(self) -> None:
        self.rows = self.steps = 0
        self.kept = self.rejected = 0
        self.labelled_steps = self.positive_steps = 0
        self.by_index = defaultdict(lambda: [0, 0])  # index -> [positive, labelled]
        self.first_error = Counter()
        self.mc_values = Counter()  # bucketed to tenths; exact 0 and 1 apart
        self.mc_value_count = 0
        self.confusion = Counter()
        self.reject_reasons = Counter()
        self.correct_outcome = self.correct_with_negative = 0
        self.cost = Counter()

    def add(self, row: dict, kept: bool) -> None:
        self.rows += 1
        self.steps += len(row["steps"] or ())
        self.kept += kept
        self.rejected += not kept
        if not kept:
            self.reject_reasons[row.get("consensus_reason") or "unknown"] += 1
        labels = row["labels"] if kept else None
        if labels:
            for index, label in enumerate(labels):
                if label is None:
                    continue
                self.labelled_steps += 1
                self.positive_steps += bool(label)
                cell = self.by_index[_bucket(index)]
                cell[0] += bool(label)
                cell[1] += 1
            first = next((i for i, label in enumerate(labels) if label is False), -1)
            self.first_error["none" if first == -1 else _bucket(first)] += 1
            if row.get("final_answer_correct"):
                self.correct_outcome += 1
                self.correct_with_negative += first != -1
        for value in row.get("mc_values") or ():
            if value is None:
                continue
            self.mc_value_count += 1
            key = "0" if value == 0 else "1" if value == 1 else f"{min(int(value * 10), 9) / 10:.1f}"
            self.mc_values[key] += 1
        mc, judge = row.get("mc_first_error"), row.get("judge_first_error")
        if row.get("mc_values") is not None or row.get("judge_first_error") is not None:
            self.confusion[f"{_fmt(mc)}|{_fmt(judge)}"] += 1
        for key in ("cost_policy", "cost_mc", "cost_judge"):
            for name, value in (row.get(key) or {}).items():
                self.cost[f"{key[5:]}_{name}"] += value or 0

    def summary(self) -> dict:
        mc_total = self.mc_value_count
        mc_tokens = self.cost["mc_prompt_tokens"]
        labels = max(1, self.labelled_steps)
        return {
            "rows": self.rows,
            "kept": self.kept,
            "rejected": self.rejected,
            "steps": self.steps,
            "labelled_steps": self.labelled_steps,
            "positive_step_rate": _ratio(self.positive_steps, self.labelled_steps),
            "positive_rate_by_step_index": {
                k: _ratio(v[0], v[1]) for k, v in sorted(self.by_index.items(), key=_index_key)
            },
            "first_error_histogram": dict(sorted(self.first_error.items(), key=_index_key)),
            "mc_value_distribution": dict(sorted(self.mc_values.items())),
            "mc_share_exact_0": _ratio(self.mc_values["0"], mc_total),
            "mc_share_exact_1": _ratio(self.mc_values["1"], mc_total),
            "judge_vs_mc_first_error": dict(sorted(self.confusion.items())),
            "consensus_keep_rate": _ratio(self.kept, self.rows),
            "reject_reasons": dict(sorted(self.reject_reasons.items())),
            "correct_outcome_with_negative_step": _ratio(self.correct_with_negative,
                                                         self.correct_outcome),
            "cost": dict(sorted(self.cost.items())),
            "cost_per_label": {
                "rollouts": _ratio(self.cost["mc_rollouts"] + self.cost["judge_rollouts"], labels),
                "generated_tokens": _ratio(
                    self.cost["mc_generated_tokens"] + self.cost["judge_generated_tokens"]
                    + self.cost["policy_generated_tokens"], labels),
                "mc_cached_share": _ratio(self.cost["mc_cached_tokens"], mc_tokens),
            },
        }


def _fmt(value) -> str:
    return "unknown" if value is None else str(value)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 6) if b else None


def _index_key(item) -> tuple:
    key = item[0]
    if key == "none":
        return (2, 0)
    if key.endswith("+"):
        return (1, 0)
    return (0, int(key))


def compute_stats(dataset_dir: str) -> dict:
    """The statistics of a dataset directory, overall and per source."""
    overall, per_source = _Group(), defaultdict(_Group)
    for output, kept in (("trajectories", True), ("rejected", False)):
        for row in storage.iter_rows(dataset_dir, output, columns=TRAJECTORY_COLUMNS):
            overall.add(row, kept)
            per_source[row["source"]].add(row, kept)
    filtered = Counter()
    filtered_problems = set()
    for row in storage.iter_rows(dataset_dir, "filtered",
                                 columns=["problem_id", "stage", "reason"]):
        filtered[f"{row['stage']}:{row['reason']}"] += 1
        filtered_problems.add(row["problem_id"])
    dead = Counter()
    for row in storage.iter_rows(dataset_dir, "dead_letter", columns=["stage", "reason"]):
        dead[f"{row['stage']}:{row['reason']}"] += 1
    omegaprm_states = Counter()
    for row in storage.iter_rows(dataset_dir, "omegaprm_states",
                                 columns=["record_type", "hard_label"]):
        omegaprm_states[f"{row['record_type']}:{_fmt(row['hard_label'])}"] += 1
    return {
        "overall": overall.summary(),
        "per_source": {name: group.summary() for name, group in sorted(per_source.items())},
        "filtered": dict(sorted(filtered.items())),
        "dead_letter": dict(sorted(dead.items())),
        "omegaprm_states": dict(sorted(omegaprm_states.items())),
    }


def accounted_problems(dataset_dir: str) -> dict[str, set]:
    """Distinct problem ids per output (for reconciliation)."""
    seen: dict[str, set] = {}
    for output in ("trajectories", "rejected", "filtered", "omegaprm_states"):
        seen[output] = {row["problem_id"] for row in
                        storage.iter_rows(dataset_dir, output, columns=["problem_id"])}
    dead_label, dead_input = set(), 0
    for row in storage.iter_rows(dataset_dir, "dead_letter", columns=["stage", "problem_id"]):
        if row["stage"] == "validate":
            dead_input += 1
        else:
            dead_label.add(row["problem_id"])
    seen["dead_letter_label"] = dead_label
    seen["dead_letter_input_rows"] = dead_input  # type: ignore[assignment]
    return seen
