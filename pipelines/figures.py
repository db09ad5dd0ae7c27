"""A dataset's statistics, row counts and reconciliation as a Beam ``CombineFn``.

The pipeline folds every problem's rows (all outputs of one problem together, as
:class:`MergeProblemsFn` emits them) and every input dead letter into the same figures that
:func:`steplabel.dataset.stats.compute_stats` computes from finished shards, and writes them to
``_work/figures.json``; the launcher then only writes the small JSON files and ``COMPLETED``.
``steplabel inspect`` and ``compute_stats`` keep reading shards (for datasets of any origin).

The accumulator holds :class:`~steplabel.dataset.stats.LabelStats` (overall and per source)
and is pickled as plain data, so partial results merge across bundles and workers.
"""

from __future__ import annotations

import copy
import pickle

import apache_beam as beam

from steplabel.dataset import storage
from steplabel.dataset.directory import FIGURES_FILE, FIGURES_STATE
from steplabel.dataset.stats import COLUMNS, LabelStats, ProblemRows


def _add(into, value):
    """``into`` + ``value`` for nested counts (ints, lists of ints, dicts of either)."""
    if isinstance(value, dict):
        for key, item in value.items():
            into[key] = _add(into[key], item) if key in into else copy.deepcopy(item)
        return into
    if isinstance(value, list):
        return [_add(a, b) for a, b in zip(into, value)]
    return into + value


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def stats_state(stats: LabelStats) -> dict:
    return {name: _plain(value) for name, value in vars(stats).items()}


def stats_from_state(state: dict) -> LabelStats:
    stats = LabelStats()
    for name, value in state.items():
        setattr(stats, name, _add(getattr(stats, name), value))
    return stats


class Figures:
    """Overall and per-source :class:`LabelStats`, and the reconciliation counts."""

    def __init__(self) -> None:
        self.overall = LabelStats()
        self.per_source: dict[str, LabelStats] = {}
        self.labelled = 0  # problems with a labelled row or a labelling dead letter
        self.input_dead_letters = 0  # dead-letter rows of the validate stage

    def add(self, problem: ProblemRows) -> None:
        self.overall.add_problem(problem)
        source = problem.source
        if source not in self.per_source:
            self.per_source[source] = LabelStats()
        self.per_source[source].add_problem(problem)
        rows = problem.rows
        dead = rows.get("dead_letter", ())
        self.input_dead_letters += sum(1 for row in dead if row["stage"] == "validate")
        if problem.problem_id is not None and (
                any(rows.get(o) for o in ("trajectories", "rejected", "filtered",
                                          "omegaprm_states"))
                or any(row["stage"] != "validate" for row in dead)):
            self.labelled += 1

    def merge(self, other: "Figures") -> None:
        _add_stats(self.overall, other.overall)
        for source, stats in other.per_source.items():
            if source in self.per_source:
                _add_stats(self.per_source[source], stats)
            else:
                self.per_source[source] = stats
        self.labelled += other.labelled
        self.input_dead_letters += other.input_dead_letters

    def __getstate__(self) -> dict:
        return {"overall": stats_state(self.overall),
                "per_source": {k: stats_state(v) for k, v in self.per_source.items()},
                "labelled": self.labelled, "input_dead_letters": self.input_dead_letters}

    def __setstate__(self, state: dict) -> None:
        self.overall = stats_from_state(state["overall"])
        self.per_source = {k: stats_from_state(v) for k, v in state["per_source"].items()}
        self.labelled = state["labelled"]
        self.input_dead_letters = state["input_dead_letters"]

    def result(self) -> dict:
        overall = self.overall.summary()
        return {
            "stats": {
                "overall": overall,
                "per_source": {name: group.summary()
                               for name, group in sorted(self.per_source.items())},
                "grouping_exact": True,  # every problem's rows were folded together
            },
            "rows": overall["rows"],
            "problems_labelled_or_dead_lettered": self.labelled,
            "dead_letter_input_rows": self.input_dead_letters,
        }


def _add_stats(into: LabelStats, other: LabelStats) -> None:
    for name, value in stats_state(other).items():
        setattr(into, name, _add(getattr(into, name), value))


def problem_rows(problem_id: str | None, rows: dict[str, list[dict]]) -> ProblemRows:
    """One problem's rows, reduced to the columns the figures read."""
    problem = ProblemRows(problem_id)
    for output, items in rows.items():
        columns = COLUMNS[output]
        problem.rows[output].extend({c: row.get(c) for c in columns} for row in items)
    return problem


class DatasetFiguresFn(beam.CombineFn):
    """``(problem_id, {output: rows})`` -> the dataset's figures (see :meth:`Figures.result`);
    ``state``: the :class:`Figures` themselves, to be merged with other waves'."""

    def __init__(self, *, state: bool = False) -> None:
        self.state = state

    def create_accumulator(self) -> Figures:
        return Figures()

    def add_input(self, figures: Figures, element) -> Figures:
        problem_id, rows = element
        figures.add(problem_rows(problem_id, rows))
        return figures

    def merge_accumulators(self, accumulators) -> Figures:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for figures in accumulators:
            merged.merge(figures)
        return merged

    def extract_output(self, figures: Figures):
        return figures if self.state else figures.result()


def write_figures(figures: dict, out_dir: str) -> dict:
    storage.write_json_atomic(storage.join(out_dir, storage.WORK_DIR, FIGURES_FILE), figures)
    return figures


def write_figures_state(figures: Figures, folder: str) -> None:
    """One wave's figures, to be merged (:class:`~steplabel.pipelines.waves.AssembleShards`)."""
    storage.write_bytes_atomic(storage.join(folder, FIGURES_STATE), pickle.dumps(figures))
