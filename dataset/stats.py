"""Label statistics of a dataset directory, computed by streaming its Parquet shards.

Memory stays flat as the dataset grows: rows are read a record batch at a time, only the columns
a figure needs, and folded into counters and fixed-size histograms (step indices are bucketed to
``0..19`` and ``20+``). Each figure maps to a known failure mode of automatic labels
(METHODS.md §8): positive-step rate, labels by step index, first-error position, Monte Carlo
value distribution, judge-vs-MC confusion, consensus keep rate, pre-filter drops, dead-letter
reasons, outcome-correct trajectories that still carry a negative step, and cost per label.

Per-problem figures (problems, pre-filter drop rate, OmegaPRM cost per source) need every row
of a problem together. The writer makes that possible: all outputs are sharded by
``problem_id`` with the same hash and shard count, and within a shard every output lists the
problems in one common order (``storage.write_shard`` sorts by ``problem_id``; datasets of
earlier versions, written from per-problem checkpoints, list them in checkpoint-name order,
``sha256(problem_id)``). For each set of same-named shards the order is detected from
the ``problem_id`` column alone (:data:`PROBLEM_ORDERS`), then the shards are merged on it (a
k-way merge of sorted streams): each problem's rows are seen together, one problem in memory at
a time. If no known order holds, ``grouping_exact`` is False in the result and per-problem
counts may count one problem more than once; row-level figures are unaffected.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import itertools
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from steplabel.annotators.consensus import CONSENSUS_REASONS
from steplabel.annotators.graders import (
    GOLD_WARNING_PREFIX,
    OUTCOME_COUNTER_PREFIX,
    SANDBOX_WALL_COUNTER,
)
from steplabel.annotators.sandbox import OUTCOMES
from steplabel.annotators.registry import ANNOTATORS, with_cost_on_rows
from steplabel.dataset import storage
from steplabel.schemas.records import OUTPUTS
from steplabel.schemas.rows import COST_FIELDS

MAX_POSITION = 20  # step-index buckets: 0..19 and "20+"
NO_ERROR = "none"  # first-error histogram key of "every step correct"

#: The annotators whose first error is a column of every labelled trajectory row (OmegaPRM's
#: is set only where it searched that trajectory: no figure of its own).
FIRST_ERRORS = [spec for spec in ANNOTATORS.values()
                if spec.first_error_column and not spec.first_error_optional]
TRAJECTORY_COLUMNS = list(dict.fromkeys([
    "problem_id", "source", "steps", "labels", "mc_values", "consensus_keep",
    "consensus_reason", "final_answer_correct", "cost_policy", "policy_truncated",
    "mc_interval_low", "mc_interval_high", "mc_rollouts_spent", "mc_label_reasons",
    "mc_n_correct",  # with mc_n_total/mc_n_unknown: plan's budget forecast from a pilot
    *(spec.first_error_column for spec in FIRST_ERRORS),
    *(spec.cost_column for spec in with_cost_on_rows()),
    *(column for spec in ANNOTATORS.values() for column in spec.truncation_columns),
    "judge_parse_reasons",
]))
#: The columns each output is read with (the smallest set the figures need).
COLUMNS: dict[str, list[str]] = {
    "trajectories": TRAJECTORY_COLUMNS,
    "rejected": TRAJECTORY_COLUMNS,
    "omegaprm_states": ["problem_id", "record_type", "hard_label", "n_total", "n_unknown",
                        "n_truncated", "after_error", "mc_interval_low", "mc_interval_high",
                        "mc_label_reason"],
    "omegaprm_pairs": ["problem_id"],
    "omegaprm_searches": ["problem_id", "first_error", "pieces"],  # pieces: the critic's plan
    "filtered": ["problem_id", "source", "stage", "reason", "cost", "n_truncated"],
    "dead_letter": ["problem_id", "source", "stage", "reason"],
    "critiques": ["problem_id", "solution_index", "omegaprm_rollout_id", "finish_reason",
                  "parse_reason", "step_verdicts", "trusted_first_error", "agrees", "kept",
                  "reason", "cost"],
}
COST_STAGES = ("policy", *(spec.cost_key for spec in with_cost_on_rows()))
PREFILTER_STAGE = "omegaprm_prefilter"
#: Stages whose samples can be cut off at ``max_tokens``: policy solutions, Monte Carlo and
#: OmegaPRM rollouts (pre-filter of kept questions and probes), judge replies.
TRUNCATION_STAGES = ("policy", *ANNOTATORS)
#: Above this share of cut-off samples in a stage, a finished job warns and names the setting.
TRUNCATION_WARN_SHARE = 0.05
#: The manifest setting that bounds each stage's sample length.
TRUNCATION_SETTINGS = {
    "policy": ("policy", "policy.sampling.max_tokens"),
    **{name: (name, spec.max_tokens_setting) for name, spec in ANNOTATORS.items()},
}
#: What each stage's cut-off samples are, for the warning.
TRUNCATED_WHAT = {
    "policy": "policy solutions (rejected as policy_truncated)",
    **{name: spec.truncated_what for name, spec in ANNOTATORS.items()},
}
UNKNOWN_SOURCE = "unknown"


def step_bucket(index: int) -> str:
    """Histogram key of a step index: ``"0"``..``"19"``, then ``"20+"``."""
    return str(index) if index < MAX_POSITION else f"{MAX_POSITION}+"


def index_bucket(value: int | None) -> str:
    """Key of a first-error index: ``"unknown"`` (null), ``"-1"`` (no error), else a step bucket."""
    if value is None:
        return "unknown"
    return "-1" if value < 0 else step_bucket(value)


def mc_bucket(value: float) -> str:
    """MC value bucket: exact ``"0"`` and ``"1"`` apart, tenths in between (``"0.3-0.4"``
    holds 0.3 <= v < 0.4; ``"0.0-0.1"`` excludes 0 and ``"0.9-1.0"`` excludes 1)."""
    if value <= 0:
        return "0"
    if value >= 1:
        return "1"
    tenth = min(int(value * 10), 9)
    return f"{tenth / 10:.1f}-{(tenth + 1) / 10:.1f}"


MC_BUCKETS = ["0"] + [f"{t / 10:.1f}-{(t + 1) / 10:.1f}" for t in range(10)] + ["1"]
#: Interval-width buckets: tenths, ``"0.3-0.4"`` holds 0.3 <= w < 0.4 (``"0.9-1.0"`` holds 1).
WIDTH_BUCKETS = [f"{t / 10:.1f}-{(t + 1) / 10:.1f}" for t in range(10)]


def width_bucket(width: float) -> str:
    """Bucket of a credible interval's width in [0, 1] (:data:`WIDTH_BUCKETS`)."""
    return WIDTH_BUCKETS[max(0, min(int(width * 10), 9))]
INDEX_BUCKETS = ["-1"] + [step_bucket(i) for i in range(MAX_POSITION + 1)] + ["unknown"]


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` rounded to 6 places; None when the denominator is 0."""
    return round(numerator / denominator, 6) if denominator else None


def _bucket_order(key: str) -> tuple:
    """Sort key for step-index buckets: -1, 0..19, 20+, then none/unknown."""
    if key in ("-1",):
        return (0, -1)
    if key.isdigit():
        return (0, int(key))
    if key.endswith("+"):
        return (1, 0)
    return (2, key)


def _sorted_buckets(counter: dict) -> dict:
    return {k: counter[k] for k in sorted(counter, key=_bucket_order)}


# ---------------------------------------------------------------------------------------------
# Reading: one problem's rows at a time


@dataclass
class ProblemRows:
    """Every row of one problem id across outputs (only the :data:`COLUMNS` of each).

    ``problem_id`` is None for input rows that had no readable id (dead letters of ``validate``).
    """

    problem_id: str | None
    rows: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    @property
    def source(self) -> str:
        for output in ("trajectories", "rejected", "filtered", "dead_letter"):
            for row in self.rows.get(output, ()):
                if row.get("source"):
                    return row["source"]
        return UNKNOWN_SOURCE


def iter_file_rows(path: str, *, columns: list[str] | None = None,
                   batch_size: int = 1024) -> Iterator[dict]:
    """The rows of one Parquet file, a record batch at a time."""
    if "://" in path:
        with FileSystems.open(path) as handle:
            source = io.BytesIO(handle.read())
        parquet = pq.ParquetFile(source)
    else:
        parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        yield from batch.to_pylist()


def _shard_files(dataset_dir: str) -> dict[str, dict[str, str]]:
    """Shard file name -> {output: path}, over every output of the dataset."""
    shards: dict[str, dict[str, str]] = defaultdict(dict)
    for output in OUTPUTS:
        for path in storage.output_files(dataset_dir, output):
            shards[posixpath.basename(path)][output] = path
    return shards


def checkpoint_order(problem_id: str) -> str:
    """Where the shard writer of earlier versions put a problem: the name of its per-problem
    checkpoint file (``sha256(problem_id)``, 32 hex digits, ``.json``)."""
    return hashlib.sha256(problem_id.encode("utf-8")).hexdigest()[:32] + ".json"


#: The orders in which a shard may list its problems, tried in turn (empty ids sort first).
PROBLEM_ORDERS = {
    "checkpoint": lambda problem_id: checkpoint_order(problem_id) if problem_id else "",
    "problem_id": lambda problem_id: problem_id or "",
}


def _ordered_by(paths: Iterable[str], order) -> bool:
    """Whether every file lists its problems in ``order`` (reads the problem_id column only)."""
    for path in paths:
        previous = ""
        for row in iter_file_rows(path, columns=["problem_id"]):
            key = order(row["problem_id"])
            if key < previous:
                return False
            previous = key
    return True


class _OrderCheck:
    """Picks each shard set's order and passes rows through with their merge key; notes
    whether the order was ever broken."""

    def __init__(self) -> None:
        self.sorted = True

    def choose(self, paths: list[str]):
        for order in PROBLEM_ORDERS.values():
            if _ordered_by(paths, order):
                return order
        self.sorted = False
        return PROBLEM_ORDERS["checkpoint"]

    def wrap(self, rows: Iterable[dict], output: str, order) -> Iterator[tuple[str, str, dict]]:
        previous = ""
        for row in rows:
            key = order(row.get("problem_id"))
            if key < previous:
                self.sorted = False
            previous = key
            yield key, output, row


def iter_problems(dataset_dir: str, *, order: _OrderCheck | None = None) -> Iterator[ProblemRows]:
    """Every problem's rows together, streaming (see the module docstring).

    Dead-letter rows without a problem id come one per :class:`ProblemRows` (id None).
    """
    order = order or _OrderCheck()
    for _, files in sorted(_shard_files(dataset_dir).items()):
        shard_order = order.choose(list(files.values()))
        streams = [order.wrap(iter_file_rows(path, columns=COLUMNS[output]), output, shard_order)
                   for output, path in files.items()]
        merged = heapq.merge(*streams, key=lambda item: item[0])
        for merge_key, items in itertools.groupby(merged, key=lambda item: item[0]):
            if not merge_key:  # rows without a problem id: one group each
                for _, output, row in items:
                    problem = ProblemRows(None)
                    problem.rows[output].append(row)
                    yield problem
                continue
            problem = None
            for _, output, row in items:
                if problem is None:
                    problem = ProblemRows(row["problem_id"])
                problem.rows[output].append(row)
            yield problem


# ---------------------------------------------------------------------------------------------
# Folding


class LabelStats:
    """The figures of one group of problems (the whole dataset, or one source)."""

    def __init__(self) -> None:
        self.problems = 0
        self.rows = Counter()
        self.steps_all = self.steps_kept = 0
        self.labelled_steps = self.positive_steps = 0
        self.by_index: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [positive, negative]
        self.first_error = Counter()
        self.mc_values = Counter()
        # The posterior (#26), over steps estimated from rollouts (kept and rejected rows):
        # interval widths, steps left undecided by the budget, rollouts per step.
        self.estimated_steps = 0
        self.interval_width = Counter()
        self.width_sum = 0.0
        self.undecided_steps = 0
        self.rollouts_spent = Counter()
        self.confusion: dict[str, Counter] = defaultdict(Counter)
        self.both_known = self.agree = 0
        self.consensus_evaluated = self.consensus_kept = 0
        self.reject_reasons = Counter()
        #: judge votes (samples) by parse reason (``ok``, ``out_of_range``, ...)
        self.judge_parse = Counter()
        self.outcome = {name: [0, 0] for name in ("final_labels",
                                                  *(spec.name for spec in FIRST_ERRORS))}
        self.cost: dict[str, Counter] = {stage: Counter() for stage in COST_STAGES}
        self.cost["omegaprm_prefilter_dropped"] = Counter()
        self.prefilter_checked = self.prefilter_dropped = 0
        self.filtered = Counter()
        self.dead_letter = Counter()
        self.states = Counter()
        self.labelled_states = self.positive_states = self.omegaprm_rollouts = 0
        # OmegaPRM states' posterior (schema 1.4): probes the budget left undecided, and the
        # 90% interval widths of the root's and probes' estimates
        self.undecided_probes = self.estimated_states = 0
        self.state_width_sum = 0.0
        #: stage -> [generated samples, of which cut off at max_tokens]
        self.truncation = {stage: [0, 0] for stage in TRUNCATION_STAGES}
        # Critiques (issue #25): plain counts, so that the pipeline's figures merge them.
        self.critiques = self.critiques_kept = 0
        self.critique_solutions = self.critique_solutions_kept = 0
        self.critique_not_kept = Counter()
        self.critique_parse = Counter()
        #: step bucket -> [verdicts checked, agreeing with the trusted label]
        self.critique_by_position: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.critique_cost = Counter()

    # -- per problem -------------------------------------------------------------------------

    def add_problem(self, problem: ProblemRows) -> None:
        rows = problem.rows
        for output, items in rows.items():
            self.rows[output] += len(items)
        for row in rows.get("dead_letter", ()):
            self.dead_letter[f"{row['stage']}:{row['reason']}"] += 1
        labelled_here = any(rows.get(o) for o in ("trajectories", "rejected", "filtered",
                                                  "omegaprm_states"))
        label_dead = any(r["stage"] != "validate" for r in rows.get("dead_letter", ()))
        if problem.problem_id is not None and (labelled_here or label_dead):
            self.problems += 1
        for row in rows.get("trajectories", ()):
            self._add_trajectory(row, kept=True)
        for row in rows.get("rejected", ()):
            self._add_trajectory(row, kept=False)
        prefilter_drop = False
        for row in rows.get("filtered", ()):
            self.filtered[f"{row['stage']}:{row['reason']}"] += 1
            if row["stage"] == PREFILTER_STAGE:
                prefilter_drop = True
                cost = row.get("cost") or {}
                self.truncation["omegaprm"][0] += cost.get("rollouts") or 0
                self.truncation["omegaprm"][1] += row.get("n_truncated") or 0
                for name, value in (row.get("cost") or {}).items():
                    self.cost["omegaprm_prefilter_dropped"][name] += value or 0
        self._add_critiques(rows.get("critiques", ()))
        states = rows.get("omegaprm_states", ())
        if prefilter_drop or states:
            self.prefilter_checked += 1
            self.prefilter_dropped += prefilter_drop
        for row in states:
            if row.get("after_error"):  # not a tree state: a probe past the first error
                self.states["after_error"] += 1
            else:
                self.states[row["record_type"]] += 1
            if row["hard_label"] is not None and not row.get("after_error"):
                self.labelled_states += 1
                self.positive_states += bool(row["hard_label"])
            self.undecided_probes += row.get("mc_label_reason") == "undecided"
            low, high = row.get("mc_interval_low"), row.get("mc_interval_high")
            if row["record_type"] != "completion" and low is not None and high is not None:
                self.estimated_states += 1
                self.state_width_sum += high - low
            if row["record_type"] != "completion":  # completions have no rollouts of their own
                self.omegaprm_rollouts += (row["n_total"] or 0) + (row["n_unknown"] or 0)
                self.truncation["omegaprm"][0] += (row["n_total"] or 0) + (row["n_unknown"] or 0)
                self.truncation["omegaprm"][1] += row.get("n_truncated") or 0

    # -- per trajectory ----------------------------------------------------------------------

    def _add_trajectory(self, row: dict, *, kept: bool) -> None:
        steps = len(row["steps"] or ())
        self.steps_all += steps
        if kept:
            self.steps_kept += steps
        self.truncation["policy"][0] += 1
        self.truncation["policy"][1] += bool(row.get("policy_truncated"))
        for spec in ANNOTATORS.values():  # the samples each annotator recorded on the row
            if spec.truncation is not None:
                samples, cut = spec.truncation(row)
                self.truncation[spec.name][0] += samples
                self.truncation[spec.name][1] += cut
        self.judge_parse.update(row.get("judge_parse_reasons") or ())
        if row.get("consensus_reason") in CONSENSUS_REASONS:  # not rejected before consensus
            self.consensus_evaluated += 1
            self.consensus_kept += bool(row["consensus_keep"])
        if not kept:
            self.reject_reasons[row.get("consensus_reason") or "unknown"] += 1
        labels = row["labels"] if kept else None
        if labels:
            first = -1
            for index, label in enumerate(labels):
                if label is None:
                    continue
                self.labelled_steps += 1
                self.positive_steps += bool(label)
                self.by_index[step_bucket(index)][0 if label else 1] += 1
                if not label and first == -1:
                    first = index
            self.first_error[NO_ERROR if first == -1 else step_bucket(first)] += 1
            self._outcome("final_labels", row, first)
        for value in row.get("mc_values") or ():
            if value is not None:
                self.mc_values[mc_bucket(value)] += 1
        self._add_posterior(row)
        mc, judge = row.get("mc_first_error"), row.get("judge_first_error")
        if row.get("mc_values") is not None or judge is not None:
            self.confusion[index_bucket(mc)][index_bucket(judge)] += 1
            if mc is not None and judge is not None:
                self.both_known += 1
                self.agree += mc == judge
        for spec in FIRST_ERRORS:
            self._outcome(spec.name, row, row.get(spec.first_error_column))
        for stage in COST_STAGES:
            for name, value in (row.get(f"cost_{stage}") or {}).items():
                self.cost[stage][name] += value or 0

    def _add_posterior(self, row: dict) -> None:
        """A step estimated from rollouts (``mc_rollouts_spent > 0``; not the final step, which
        is its graded answer) counts its rollouts, its interval's width (when it has a known
        rollout) and whether the budget left it undecided. Rows before schema 1.3 have none."""
        spent = row.get("mc_rollouts_spent") or ()
        low, high = row.get("mc_interval_low") or (), row.get("mc_interval_high") or ()
        reasons = row.get("mc_label_reasons") or ()
        for index, rollouts in enumerate(spent):
            if not rollouts:
                continue
            self.estimated_steps += 1
            self.rollouts_spent[rollouts] += 1
            if index < len(reasons) and reasons[index] == "undecided":
                self.undecided_steps += 1
            bounds = (low[index], high[index]) if index < min(len(low), len(high)) else None
            if bounds is not None and None not in bounds:
                width = bounds[1] - bounds[0]
                self.interval_width[width_bucket(width)] += 1
                self.width_sum += width

    def posterior_summary(self) -> dict:
        """Interval widths, undecided steps and rollouts per estimated step (#26)."""
        widths = sum(self.interval_width.values())
        rollouts = sum(n * count for n, count in self.rollouts_spent.items())
        return {
            "estimated_steps": self.estimated_steps,
            "interval_width": {
                "count": widths,
                "mean": ratio(self.width_sum, widths),
                "histogram": {key: self.interval_width[key] for key in WIDTH_BUCKETS},
            },
            "undecided": {"count": self.undecided_steps,
                          "share": ratio(self.undecided_steps, self.estimated_steps)},
            "rollouts_per_step": {
                "mean": ratio(rollouts, self.estimated_steps),
                "histogram": {str(n): self.rollouts_spent[n] for n in sorted(self.rollouts_spent)},
            },
        }

    def _add_critiques(self, rows) -> None:
        """A problem's critiques (every row of a solution is in its problem). Agreement by
        step position counts, per step index, the usable critiques with a verdict on that
        step up to and including the trusted first error (every step when it is -1; steps
        after it are never checked), and those whose verdict is the trusted label."""
        solutions: dict[tuple, bool] = {}  # a policy sample, or an OmegaPRM rollout
        for row in rows:
            self.critiques += 1
            self.truncation["critic"][0] += 1
            self.truncation["critic"][1] += row.get("finish_reason") == "length"
            kept = bool(row.get("kept"))
            key = (row["solution_index"], row.get("omegaprm_rollout_id"))
            solutions[key] = solutions.get(key, False) or kept
            self.critique_parse[row.get("parse_reason") or "unknown"] += 1
            if kept:
                self.critiques_kept += 1
            else:
                self.critique_not_kept[row.get("reason") or "unknown"] += 1
            for name, value in (row.get("cost") or {}).items():
                self.critique_cost[name] += value or 0
            verdicts, trusted = row.get("step_verdicts"), row.get("trusted_first_error")
            if verdicts is None or trusted is None:
                continue
            checked = len(verdicts) if trusted < 0 else trusted + 1
            for index, verdict in enumerate(verdicts[:checked]):
                if verdict is not None:
                    cell = self.critique_by_position[step_bucket(index)]
                    cell[0] += 1
                    cell[1] += verdict == (index != trusted)
        self.critique_solutions += len(solutions)
        self.critique_solutions_kept += sum(solutions.values())

    def _critique_summary(self) -> dict:
        cost = {name: self.critique_cost[name] for name in COST_FIELDS}
        return {
            "critiques": self.critiques,
            "kept": self.critiques_kept,
            "keep_rate": ratio(self.critiques_kept, self.critiques),
            "solutions": self.critique_solutions,
            "solutions_with_kept": self.critique_solutions_kept,
            "not_kept_reasons": dict(sorted(self.critique_not_kept.items())),
            "parse_reasons": dict(sorted(self.critique_parse.items())),
            "agreement_by_step_position": {
                key: {"checked": checked, "agree": agree, "rate": ratio(agree, checked)}
                for key, (checked, agree) in sorted(self.critique_by_position.items(),
                                                    key=lambda kv: _bucket_order(kv[0]))},
            "cost": cost,
            "generated_tokens_per_kept": ratio(cost["generated_tokens"], self.critiques_kept),
            "tokens_per_kept": ratio(cost["prompt_tokens"] + cost["generated_tokens"],
                                     self.critiques_kept),
        }

    def _outcome(self, name: str, row: dict, first_error: int | None) -> None:
        if row.get("final_answer_correct") and first_error is not None:
            cell = self.outcome[name]
            cell[0] += 1
            cell[1] += first_error >= 0

    # -- result ------------------------------------------------------------------------------

    def summary(self) -> dict:
        """Plain, JSON-ready figures. Rates are None when their denominator is 0."""
        mc_count = sum(self.mc_values.values())
        cost = {stage: {name: counter[name] for name in COST_FIELDS}
                for stage, counter in self.cost.items()}
        spent = {name: sum(cost[stage][name] for stage in COST_STAGES) for name in COST_FIELDS}
        return {
            "problems": self.problems,
            "rows": {output: self.rows[output] for output in OUTPUTS},
            "steps": {
                "all": self.steps_all,
                "kept": self.steps_kept,
                "labelled": self.labelled_steps,
                "positive": self.positive_steps,
                "negative": self.labelled_steps - self.positive_steps,
            },
            "positive_step_rate": ratio(self.positive_steps, self.labelled_steps),
            "labels_by_step_index": {
                key: {"positive": pos, "negative": neg, "positive_rate": ratio(pos, pos + neg)}
                for key, (pos, neg) in sorted(self.by_index.items(),
                                              key=lambda kv: _bucket_order(kv[0]))
            },
            "first_error_histogram": _sorted_buckets(self.first_error),
            "mc_values": {
                "count": mc_count,
                "share_exact_0": ratio(self.mc_values["0"], mc_count),
                "share_exact_1": ratio(self.mc_values["1"], mc_count),
                "histogram": {key: self.mc_values[key] for key in MC_BUCKETS},
            },
            "mc_posterior": self.posterior_summary(),
            "judge_vs_mc_first_error": {
                "matrix": {mc: _sorted_buckets(row)
                           for mc, row in sorted(self.confusion.items(),
                                                 key=lambda kv: INDEX_BUCKETS.index(kv[0]))},
                "both_known": self.both_known,
                "agreement_rate": ratio(self.agree, self.both_known),
            },
            "consensus": {
                "evaluated": self.consensus_evaluated,
                "kept": self.consensus_kept,
                "keep_rate": ratio(self.consensus_kept, self.consensus_evaluated),
                "reject_reasons": dict(sorted(self.reject_reasons.items())),
            },
            "judge_parse_reasons": {
                "votes": sum(self.judge_parse.values()),
                "reasons": dict(sorted(self.judge_parse.items(),
                                       key=lambda item: (-item[1], item[0]))),
            },
            "truncation": {
                stage: {"samples": samples, "truncated": cut, "share": ratio(cut, samples)}
                for stage, (samples, cut) in self.truncation.items()
            },
            "prefilter": {
                "checked": self.prefilter_checked,
                "dropped": self.prefilter_dropped,
                "drop_rate": ratio(self.prefilter_dropped, self.prefilter_checked),
            },
            "filtered": dict(sorted(self.filtered.items())),
            "dead_letter": dict(sorted(self.dead_letter.items())),
            "correct_outcome_with_negative_step": {
                name: {"correct_outcome": correct, "with_negative_step": negative,
                       "rate": ratio(negative, correct)}
                for name, (correct, negative) in self.outcome.items()
            },
            "cost": cost,
            "cost_per_label": {
                "kept_step_labels": self.labelled_steps,
                "rollouts": ratio(spent["rollouts"], self.labelled_steps),
                "generated_tokens": ratio(spent["generated_tokens"], self.labelled_steps),
            },
            "omegaprm": {
                "states": dict(sorted(self.states.items())),
                "labelled_states": self.labelled_states,
                "positive_state_rate": ratio(self.positive_states, self.labelled_states),
                "rollouts": self.omegaprm_rollouts
                + self.cost["omegaprm_prefilter_dropped"]["rollouts"],
                "rollouts_per_state_label": ratio(
                    self.omegaprm_rollouts + self.cost["omegaprm_prefilter_dropped"]["rollouts"],
                    self.labelled_states),
                # the posterior (schema 1.4; none before): states estimated from a known
                # rollout (root and probes), their mean 90% interval width, undecided probes
                "estimated_states": self.estimated_states,
                "interval_width_mean": ratio(self.state_width_sum, self.estimated_states),
                "undecided_probes": self.undecided_probes,
            },
            "critiques": self._critique_summary(),
        }


def compute_stats(dataset_dir: str) -> dict:
    """The statistics of a dataset directory, overall and per source (streaming).

    Cost per label divides everything spent on trajectories (policy samples, Monte Carlo
    rollouts and judge calls, rejected trajectories included) by the kept step labels.
    OmegaPRM's cost is counted from its states (pre-filter rollouts at the root, k per probe)
    plus the pre-filter cost of dropped questions; its token counts are not recorded per row.
    """
    order = _OrderCheck()
    overall, per_source = LabelStats(), defaultdict(LabelStats)
    for problem in iter_problems(dataset_dir, order=order):
        overall.add_problem(problem)
        per_source[problem.source].add_problem(problem)
    return {
        "overall": overall.summary(),
        "per_source": {name: group.summary() for name, group in sorted(per_source.items())},
        "grouping_exact": order.sorted,
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


def truncation_warnings(stats: dict, manifest=None) -> list[str]:
    """One sentence per stage whose cut-off share passes :data:`TRUNCATION_WARN_SHARE`, naming
    the ``max_tokens`` setting to raise (with its value when ``manifest`` is given)."""
    warnings = []
    for stage, figures in (stats.get("overall", stats).get("truncation") or {}).items():
        share = figures.get("share")
        if share is None or share <= TRUNCATION_WARN_SHARE:
            continue
        section, setting = TRUNCATION_SETTINGS[stage]
        value = ""
        config = getattr(manifest, section, None) if manifest is not None else None
        if config is not None:
            value = f" (now {config.sampling.max_tokens})"
        what = TRUNCATED_WHAT[stage]
        warnings.append(f"{share:.0%} of {what} were cut off at max_tokens "
                        f"({figures['truncated']} of {figures['samples']}): raise "
                        f"{setting}{value}")
    return warnings


def top_reject_reasons(consensus: dict, limit: int = 3) -> list[tuple[str, int]]:
    """The ``limit`` most frequent reject reasons of a ``consensus`` summary, largest first
    (ties by name)."""
    reasons = consensus.get("reject_reasons") or {}
    return sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:limit]


def keep_rate_warnings(stats: dict, manifest=None) -> list[str]:
    """A sentence when the consensus keep rate is under the manifest's
    ``consensus.expected_keep_rate_min``, naming the main reject reason; none without a
    manifest, without consensus or before any trajectory reached consensus."""
    config = getattr(manifest, "consensus", None) if manifest is not None else None
    consensus = stats.get("overall", stats).get("consensus") or {}
    rate = consensus.get("keep_rate")
    if config is None or rate is None or rate >= config.expected_keep_rate_min:
        return []
    top = top_reject_reasons(consensus, limit=1)
    main = (f"; most rejections are {top[0][0]} ({top[0][1]}): see steplabel show DATASET "
            f"--rejected --reason {top[0][0]}") if top else ""
    return [f"keep rate {rate:.1%} ({consensus['kept']} of {consensus['evaluated']} "
            f"trajectories through consensus) is under consensus.expected_keep_rate_min "
            f"{config.expected_keep_rate_min:g}{main}"]


#: The run counters OmegaPRM's cost is read from (its rows carry no tokens: states share
#: rollouts), by :data:`COST_FIELDS` name.
OMEGAPRM_COST_COUNTERS = {"rollouts": "omegaprm_rollouts",
                          "prompt_tokens": "omegaprm_prompt_tokens",
                          "generated_tokens": "omegaprm_generated_tokens"}


def add_omegaprm_cost(summary: dict, counters: dict) -> dict:
    """``summary`` (a whole-dataset :meth:`LabelStats.summary`) with OmegaPRM's cost from the
    run's ``counters`` (stats.json's; applied where the figures are shown, ``inspect`` and the
    card, so that stats.json's own figures stay those the shards give): the stage
    ``omegaprm`` of ``cost`` (its pre-filter included, so the ``omegaprm_prefilter_dropped``
    stage is a part of it; ``requests`` None: not counted), and in ``cost_per_label`` the cost
    per kept step label by stage and ``with_omegaprm`` (all stages). Unchanged when the
    counters do not hold OmegaPRM's cost (no OmegaPRM stage, or a dataset written before they
    existed)."""
    if not all(name in counters for name in OMEGAPRM_COST_COUNTERS.values()):
        return summary
    omegaprm = {"requests": None, **{field: int(counters[name])
                                     for field, name in OMEGAPRM_COST_COUNTERS.items()}}
    cost = {**summary["cost"], "omegaprm": omegaprm}
    per_label = dict(summary["cost_per_label"])
    labels = per_label["kept_step_labels"]
    stages = (*COST_STAGES, "omegaprm")
    per_label["by_stage"] = {
        stage: {"rollouts": ratio(cost[stage]["rollouts"], labels),
                "generated_tokens": ratio(cost[stage]["generated_tokens"], labels)}
        for stage in stages}
    per_label["with_omegaprm"] = {
        name: ratio(sum(cost[stage][name] for stage in stages), labels)
        for name in ("rollouts", "generated_tokens")}
    return {**summary, "cost": cost, "cost_per_label": per_label}


#: What each gold warning means, for stats.json's ``warnings``.
GOLD_WARNING_TEXT = {
    "tests_pass_on_empty_program": "their tests pass on an empty program, so they cannot tell a "
                                   "right program from a wrong one",
    "tests_not_checked": "the sandbox could not run their tests on an empty program",
}


def gold_warnings(counters: dict[str, int]) -> list[str]:
    """One sentence per gold warning counted (``gold_warning_<reason>``)."""
    warnings = []
    for name, count in sorted(counters.items()):
        if name.startswith(GOLD_WARNING_PREFIX) and count:
            reason = name[len(GOLD_WARNING_PREFIX):]
            what = GOLD_WARNING_TEXT.get(reason, reason.replace("_", " "))
            warnings.append(f"{count} problem{'s' * (count != 1)} labelled although {what} "
                            f"({name})")
    return warnings


def sandbox_warnings(counters: dict[str, int]) -> list[str]:
    """A sentence when the sandbox could not run some programs (``sandbox_unknown``): their
    grades are unknown, never incorrect, but a job where that is common labels little (a
    worker that cannot start: an interpreter the user cannot run, say)."""
    unknown = counters.get(OUTCOME_COUNTER_PREFIX + "unknown", 0)
    if not unknown:
        return []
    runs = sum(counters.get(OUTCOME_COUNTER_PREFIX + o, 0) for o in OUTCOMES)
    return [f"the sandbox could not run {unknown} of {runs} programs ({unknown / runs:.0%}); "
            "they are graded unknown, never incorrect (counter sandbox_unknown; a solution's "
            "outcome_reason names the cause)"]


def sandbox_outcomes(counters: dict[str, int]) -> dict:
    """stats.json's ``sandbox`` section (python_tests jobs): programs run per outcome
    (``passed``, ``failed``, ``timeout``, ``killed``, ``unknown``; every outcome present, 0 when
    none), ``runs``, graded texts with no program (``no_program``), and the sandbox's mean
    wall seconds per run (None without runs: a measure of this run, for ``plan``)."""
    outcomes = {o: counters.get(OUTCOME_COUNTER_PREFIX + o, 0) for o in OUTCOMES}
    runs = sum(outcomes.values())
    wall_ms = counters.get(SANDBOX_WALL_COUNTER, 0)
    return {"outcomes": outcomes, "runs": runs,
            "no_program": counters.get("code_no_program", 0),
            "wall_s_per_run": round(wall_ms / 1000 / runs, 4) if runs else None}
