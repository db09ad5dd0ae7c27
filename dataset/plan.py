"""``steplabel plan``: what a job will cost on its whole source, projected from a pilot.

The pilot is the job itself (:func:`~steplabel.pipelines.job.run_job`, same manifest) on a
seeded random sample of the source's rows (``--pilot N``), or a finished dataset read as it is
(``--from DATASET``). From it the planner takes, per source row, what each stage spent (policy
samples, Monte Carlo rollouts, OmegaPRM's pre-filter and searches, judge votes: rollouts, prompt
and generated tokens) and the engine's throughput (generated tokens per second of engine-busy
time, :class:`~steplabel.pipelines.label.EngineClock`), and projects to the source's row count:

- a stage's total is the pilot's mean per source row times the rows of the source, with a 95%
  interval ``mean ± 1.96 · sd / sqrt(n)`` (a normal approximation; with the finite-population
  correction ``sqrt((N - n) / (N - 1))`` when the pilot is a sample of this source, so a pilot
  of the whole source has no spread left);
- engine time is generated tokens / throughput (stages share one engine, so its time is split
  between them by generated tokens); wall time adds one engine start and the job's own overhead
  measured in the pilot (launch, writing, finalize), and divides engine time by
  ``--accelerators``; accelerator-hours are engine time plus one engine start per accelerator;
- the throughput is the pilot's, carried to the full job's concurrency: a pilot of n rows keeps
  fewer problems in flight than the job (``runner.max_in_flight``), and an engine makes more
  tokens per second with more samples per step. The engine's seconds per step ``a + c·b`` (``b``
  samples in flight) is fitted on the pilot's own requests, and the throughput scaled by
  ``(a / b_pilot + c) / (a / b_job + c)``, ``b_job`` = ``b_pilot`` times the ratio of problems
  in flight, at most the engine's ``max_num_seqs``. On the demo (12 rows, pilot of 4) the pilot
  measured 91 tokens/s, the fit said 126 at the job's concurrency, the job ran at 113.

The critic (issue #25) is priced from its ``critiques`` rows when the pilot ran it. A dataset made
without it (``--from``) has none: the critic's cost is then estimated per trajectory it would
critique (``critic.only_trusted``: those with trusted labels under ``critic.trust``) as one
request of ``critic.samples`` samples: the prompt once (the trajectory's question and solution,
its policy prompt and generated tokens, plus the template's text at 4 characters a token) and
``samples x max_tokens`` generated tokens, an upper bound (critiques usually stop earlier).
Under ``critic.trust: omegaprm`` the trajectories critiqued are OmegaPRM's searched rollouts
(``omegaprm_searches`` with a located first error, or every one without ``only_trusted``): the
prompt is then the problem's policy prompt (the question), the rollout's pieces at 4
characters a token and the template's text.

Rows of a source are counted cheaply (JSONL lines, Parquet footers, a ``datasets`` folder's
length) and ``source.limit`` caps them. Problems the pilot could not label (bad input, engine
errors) count as source rows that cost nothing recorded.

**The adaptive budget** (``monte_carlo.budget``): a pilot that ran the manifest's own Monte Carlo
settings (``--pilot``, or ``--from`` a dataset made with them) *measured* the budget's
rollouts, and the table projects them as it projects every cost. A pilot made with other
settings (``--from`` a fixed-k dataset) has the wrong rollouts; its Monte Carlo costs are then
*predicted* per problem from the pilot's step counts and the budget's rounds
(:func:`step_forecast`: each step's success rate from its pilot posterior, the budget's rounds
and stopping rule applied exactly) and scaled by predicted / measured: rollouts and generated
tokens by rollouts, prompt tokens by requests (one per round). Either way the plan shows
rollouts per step and the undecided share, measured and predicted side by side. Only the steps
the pilot estimated are forecast: where the budget's first error moves (first-error-only
Monte Carlo), the steps after it are estimated or not as in the pilot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from steplabel.annotators.critic import (
    TRUST_OMEGAPRM,
    TrustedLabels,
    needs_critique,
    trusted_labels,
)
from steplabel.annotators.monte_carlo import UNDECIDED, GradedRollouts, budget_step_decision
from steplabel.annotators.posterior import PriorFit, fit_prior
from steplabel.annotators.prompts import load_template
from steplabel.annotators.registry import ANNOTATORS, with_cost_on_rows
from steplabel.dataset import storage
from steplabel.dataset.stats import PREFILTER_STAGE, iter_problems
from steplabel.engines.vllm_engine import is_cpu_platform
from steplabel.pipelines import logs
from steplabel.pipelines.job import JobError, run_job
from steplabel.pipelines.sources import RowCountError, open_source
from steplabel.schemas.annotators import BetaPrior, MonteCarloConfig, RolloutBudget
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import load_manifest

#: Stages in display order: key -> label (policy sampling, then every annotator).
STAGES = {
    "policy": "policy sampling",
    **{name: spec.title for name, spec in ANNOTATORS.items()},
    "omegaprm": "OmegaPRM (incl. pre-filter)",  # its costs include the questions it dropped
}
#: Cost fields per stage, as rows carry them (prefix-cache hits are a run metric, not rows').
FIELDS = ("rollouts", "prompt_tokens", "generated_tokens")
#: Trajectory cost columns and the stage they belong to.
ROW_COSTS = {"cost_policy": "policy",
             **{spec.cost_column: spec.name for spec in with_cost_on_rows()}}
#: Two-sided 95% normal quantile.
Z95 = 1.959964
DEFAULT_PILOT = 24
#: Beside a kept pilot's dataset (``--pilot-out DIR``): which rows it sampled, its job time.
PILOT_FILE = "pilot.json"


class PlanError(RuntimeError):
    """The plan cannot be made; the message says why and what to pass instead."""


# ---------------------------------------------------------------------------------------------
# The source: rows, and a seeded sample of them


def count_source_rows(source) -> int:
    """Rows of the source, capped by ``source.limit``: non-empty lines of JSONL files (read,
    not parsed; any Beam filesystem, compressed by extension), Parquet footers, the length of
    a ``datasets`` folder or data file (a hub dataset needs the network)."""
    try:
        return open_source(source).count_rows()
    except RowCountError as exc:
        raise PlanError(f"{exc}; pass --source-rows N") from exc


def sample_indices(source_rows: int, size: int, seed: int) -> list[int]:
    """Which rows (0-based, in the source's read order) the pilot labels: ``size`` of them
    drawn without replacement with ``random.Random(seed)``, sorted; every row when the source
    has no more than ``size``."""
    if source_rows <= size:
        return list(range(source_rows))
    return sorted(random.Random(seed).sample(range(source_rows), size))


def write_pilot_source(manifest, indices: list[int], folder: Path):
    """Write the sampled rows to ``folder`` and return the manifest pointed at them: the same
    field mapping, answer format and source name (rows keep their ``source`` value), no limit.
    JSONL lines are copied byte for byte (bad lines stay bad); Parquet rows keep the first
    file's schema; a ``datasets`` source is written as Parquet by ``datasets`` itself
    (:meth:`~steplabel.pipelines.sources.Source.sample`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return replace(manifest, source=open_source(manifest.source).sample(indices, folder))


# ---------------------------------------------------------------------------------------------
# What each problem of a dataset cost


@dataclass
class PilotCosts:
    """Per source row of the pilot: ``values[row, stage, field]`` (rows that were not labelled
    are zeros). ``unknown`` names the (stage, field) cells the dataset does not record."""

    values: np.ndarray
    unknown: set = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _add(cell: np.ndarray, cost: dict | None) -> None:
    for j, name in enumerate(FIELDS):
        cell[j] += (cost or {}).get(name) or 0


#: Characters per token of the critic template's estimate (English prose, BPE tokenizers).
CHARS_PER_TOKEN = 4


def critic_estimate(row: dict, config) -> np.ndarray | None:
    """The critic's estimated cost of one trajectory row, ``FIELDS`` order, or None when it
    would not critique it (policy-truncated, or no trusted labels under ``only_trusted``)."""
    if row.get("policy_truncated"):
        return None
    trusted: TrustedLabels = trusted_labels(
        config.trust, mc_first_error=row.get("mc_first_error"),
        omegaprm_first_error=row.get("omegaprm_first_error"),
        consensus_keep=row.get("consensus_keep"))
    if not needs_critique(config, trusted):
        return None
    policy = row.get("cost_policy") or {}
    template = len(load_template(config.template_id).text) / CHARS_PER_TOKEN
    prompt = (policy.get("prompt_tokens") or 0) + (policy.get("generated_tokens") or 0) + template
    return np.array([config.samples, prompt, config.samples * config.sampling.max_tokens],
                    dtype=float)


def critic_search_estimate(search: dict, question_tokens: float, config) -> np.ndarray | None:
    """The critic's estimated cost of one ``omegaprm_searches`` row under ``trust: omegaprm``
    (``FIELDS`` order), or None when it would not critique it (another trust source, no
    pieces, or no located first error under ``only_trusted``). ``question_tokens``: the
    problem's policy prompt, in tokens (0 when the problem has no trajectory row)."""
    if config.trust != TRUST_OMEGAPRM or not search.get("pieces"):
        return None
    trusted = trusted_labels(config.trust, omegaprm_first_error=search.get("first_error"))
    if not needs_critique(config, trusted):
        return None
    template = len(load_template(config.template_id).text) / CHARS_PER_TOKEN
    steps = sum(len(piece) for piece in search["pieces"]) / CHARS_PER_TOKEN
    return np.array([config.samples, question_tokens + steps + template,
                     config.samples * config.sampling.max_tokens], dtype=float)


def problem_costs(dataset_dir: str, *, rows_in: int, counters: dict,
                  budget: BudgetForecast | None = None, critic=None) -> PilotCosts:
    """What each problem of a finished dataset spent, per stage, read as ``dataset.stats``
    reads it: trajectory rows carry ``cost_policy``/``cost_mc``/``cost_judge`` (rejected ones
    too), a problem with no usable solution carries its policy cost on its ``filtered`` row,
    OmegaPRM's rollouts are its states' counts (pre-filter at the root, k per probe) plus a
    dropped question's pre-filter cost. OmegaPRM's tokens are not on its rows: the job's
    counters (``omegaprm_*_tokens``) hold their total, which is split over the problems whose
    question was kept in proportion to their rollouts (dropped ones carry their own).
    ``budget``: the adaptive budget's forecast, fed every problem's trajectories (and, when it
    predicts, scaling their Monte Carlo costs)."""
    stage_index = {stage: i for i, stage in enumerate(STAGES)}
    omega = stage_index["omegaprm"]
    # ``critic`` (the manifest's critic config): estimate its cost where the dataset has none.
    estimate_critic = critic is not None and not storage.output_files(dataset_dir, "critiques")
    per_problem: list[np.ndarray] = []
    omega_kept: list[int] = []  # problems whose OmegaPRM tokens are not on a row
    for problem in iter_problems(dataset_dir):
        if problem.problem_id is None:
            continue
        cell = np.zeros((len(STAGES), len(FIELDS)))
        for output in ("trajectories", "rejected"):
            for row in problem.rows.get(output, ()):
                for column, stage in ROW_COSTS.items():
                    _add(cell[stage_index[stage]], row.get(column))
                if estimate_critic:
                    estimate = critic_estimate(row, critic)
                    if estimate is not None:
                        cell[stage_index["critic"]] += estimate
        if estimate_critic and critic.trust == TRUST_OMEGAPRM:
            policy = next((row.get("cost_policy") or {} for output in ("trajectories",
                                                                       "rejected")
                           for row in problem.rows.get(output, ())), {})
            for search in problem.rows.get("omegaprm_searches", ()):
                estimate = critic_search_estimate(search, policy.get("prompt_tokens") or 0,
                                                  critic)
                if estimate is not None:
                    cell[stage_index["critic"]] += estimate
        for row in problem.rows.get("critiques", ()):
            _add(cell[stage_index["critic"]], row.get("cost"))
        if budget is not None:
            rollouts, requests = budget.factors([*problem.rows.get("trajectories", ()),
                                                 *problem.rows.get("rejected", ())])
            mc = cell[stage_index["monte_carlo"]]
            mc *= [requests if name == "prompt_tokens" else rollouts for name in FIELDS]
        for row in problem.rows.get("filtered", ()):
            if row["stage"] == PREFILTER_STAGE:
                _add(cell[omega], row.get("cost"))
            elif row["stage"] == "policy":
                _add(cell[stage_index["policy"]], row.get("cost"))
        states = problem.rows.get("omegaprm_states", ())
        if states:
            cell[omega, FIELDS.index("rollouts")] += sum(
                (s["n_total"] or 0) + (s["n_unknown"] or 0) for s in states
                if s["record_type"] != "completion")
            omega_kept.append(len(per_problem))
        if cell.any() or states or problem.rows.get("trajectories") or problem.rows.get(
                "rejected") or problem.rows.get("filtered"):
            per_problem.append(cell)
    notes, unknown = [], set()
    if estimate_critic:
        notes.append(f"the critic did not run on {dataset_dir}: its cost is estimated as "
                     f"{critic.samples} samples x {critic.sampling.max_tokens} max_tokens (an "
                     "upper bound) and one prompt per trajectory it would critique")
    if len(per_problem) > rows_in:
        notes.append(f"{len(per_problem)} labelled problems but {rows_in} rows read: the "
                     "projection is per labelled problem")
        rows_in = len(per_problem)
    values = np.zeros((rows_in, len(STAGES), len(FIELDS)))
    if per_problem:
        values[: len(per_problem)] = np.stack(per_problem)
    if omega_kept:
        rollouts = values[omega_kept, omega, FIELDS.index("rollouts")]
        for name in ("prompt_tokens", "generated_tokens"):
            total = counters.get(f"omegaprm_{name}")
            if total is None:
                unknown.add(("omegaprm", name))
                continue
            on_rows = values[:, omega, FIELDS.index(name)].sum()  # dropped questions' rows
            left = max(0.0, total - on_rows)
            share = rollouts / rollouts.sum() if rollouts.sum() else np.full(
                len(omega_kept), 1 / len(omega_kept))
            values[omega_kept, omega, FIELDS.index(name)] += left * share
        if unknown:
            notes.append("the dataset has no omegaprm_*_tokens counters (written by an older "
                         "steplabel): OmegaPRM's tokens, and so the total time, are unknown")
    return PilotCosts(values, unknown, notes)


# ---------------------------------------------------------------------------------------------
# The adaptive budget's rollouts, from a pilot's step counts


@dataclass(frozen=True)
class StepForecast:
    """What the adaptive budget is expected to spend on one step: ``rollouts`` and
    ``requests`` (one per round), and ``undecided``, the probability that ``max_rollouts``
    leave its label undecided (some rollout known, no decision)."""

    rollouts: float
    requests: float
    undecided: float


def counts_as_rollouts(correct: int, incorrect: int, unknown: int) -> GradedRollouts:
    """Counts as the annotator's rollouts record, for its own stopping rule."""
    verdicts = ("correct",) * correct + ("incorrect",) * incorrect + ("unknown",) * unknown
    return GradedRollouts(seed=0, texts=(), generated_tokens=(), verdicts=verdicts, reasons=())


@lru_cache(maxsize=65536)
def step_forecast(n_correct: int, n_total: int, n_unknown: int, *, budget: RolloutBudget,
                  threshold: float, prior: BetaPrior = BetaPrior(),
                  population: BetaPrior | None = None) -> StepForecast:
    """The budget's expected cost on a step whose pilot rollouts were ``n_correct`` correct of
    ``n_total`` known, ``n_unknown`` unknown.

    The step's success rate is not known: it follows the pilot's posterior ``Beta(a +
    n_correct, b + n_total - n_correct)`` from ``population`` (the prior the pilot's steps
    say their rates come from: :func:`~steplabel.annotators.posterior.fit_prior`; None: the
    manifest's ``prior``), so its new rollouts come out as a Pólya urn (each known rollout
    correct with probability ``(a + c + c') / (a + b + n + c' + f')`` after ``c'`` correct and
    ``f'`` incorrect new ones); each is unknown with the pilot's unknown share. The rounds
    (:meth:`RolloutBudget.next_round`) and the stopping rule (the annotator's
    :func:`~steplabel.annotators.monte_carlo.budget_step_decision`, with the manifest's
    ``prior``) are applied exactly to every count the rounds can reach: at most ``(max + 1)
    (max + 2) / 2`` states.

    Why the population and not the manifest's prior: a pilot step that succeeded once in one
    rollout (decided stopping) or 4 times in 4 has, under the uniform prior, a fair chance of
    a rate near the threshold, and the urn then draws failures the step never shows when its
    rate is really 1 (or, past an error, 0): on a scripted job whose rates are exactly 0 or 1
    the uniform urn predicted 2.45 rollouts a step where the budget spent 2.00.
    """
    seen = n_total + n_unknown
    known = n_total / seen if seen else 1.0  # no pilot rollout: no sign of unknowns
    urn = prior if population is None else population
    a, b = urn.a + n_correct, urn.b + n_total - n_correct
    states: dict[tuple[int, int], float] = {(0, 0): 1.0}  # new (correct, incorrect) -> prob.
    sampled, rollouts, requests, undecided = 0, 0.0, 0.0, 0.0
    while states:
        size = budget.next_round(sampled)
        reach = sum(states.values())
        requests += reach
        rollouts += size * reach
        for _ in range(size):
            after: dict[tuple[int, int], float] = defaultdict(float)
            for (c, f), prob in states.items():
                if known < 1.0:
                    after[(c, f)] += prob * (1.0 - known)
                if known > 0.0:
                    success = (a + c) / (a + b + c + f)
                    after[(c + 1, f)] += prob * known * success
                    after[(c, f + 1)] += prob * known * (1.0 - success)
            states = after
        sampled += size
        going: dict[tuple[int, int], float] = {}
        for (c, f), prob in states.items():
            decision = budget_step_decision(counts_as_rollouts(c, f, sampled - c - f),
                                            budget=budget, threshold=threshold, prior=prior)
            if decision is UNDECIDED:
                going[(c, f)] = prob
            elif decision is None and c + f > 0:
                undecided += prob
        states = going
    return StepForecast(rollouts=rollouts, requests=requests, undecided=undecided)


def estimated_steps(row: dict) -> list[tuple[int, int, int, int]]:
    """``(n_correct, n_total, n_unknown, rollouts)`` of each step of a trajectory row that was
    estimated from rollouts (``mc_rollouts_spent``; rows before schema 1.3: every step but the
    final one with a count)."""
    correct, total = row.get("mc_n_correct") or [], row.get("mc_n_total") or []
    unknown = row.get("mc_n_unknown") or []
    spent = row.get("mc_rollouts_spent")
    if spent is None:
        spent = [(n or 0) + (u or 0) for n, u in zip(total[:-1], unknown[:-1])]
    return [(correct[t] or 0, total[t] or 0, unknown[t] or 0, n)
            for t, n in enumerate(spent) if n and t < min(len(correct), len(total), len(unknown))]


def pilot_step_counts(dataset_dir: str) -> list[tuple[int, int]]:
    """``(correct, incorrect)`` of every step a dataset estimated from rollouts (kept and
    rejected trajectories; the final step, its graded answer, is not an estimate)."""
    columns = ["mc_n_correct", "mc_n_total", "mc_n_unknown", "mc_rollouts_spent"]
    counts = []
    for output in ("trajectories", "rejected"):
        for row in storage.iter_rows(dataset_dir, output, columns=columns):
            counts += [(c, n - c) for c, n, _, _ in estimated_steps(row)]
    return counts


def prior_fit_summary(fit: PriorFit | None) -> dict | None:
    if fit is None:
        return None
    return {"a": fit.prior.a, "b": fit.prior.b, "steps": fit.steps,
            "mean": round(fit.prior.a / (fit.prior.a + fit.prior.b), 4),
            "log_likelihood": round(fit.log_likelihood, 4), "at_bound": fit.at_bound}


def prior_lines(fit: dict) -> list[str]:
    """The fitted prior as text, with the manifest lines that use it."""
    bound = (" (a parameter is at the fit's bound: the pilot's rates sit at 0 or 1, or are "
             "all alike)" if fit["at_bound"] else "")
    return [f"  Monte Carlo prior fitted to the pilot's {fit['steps']} estimated steps "
            f"(Beta-Binomial maximum likelihood): Beta({fit['a']:g}, {fit['b']:g}), mean "
            f"{fit['mean']:.3f}{bound}; to label with it, put in the manifest:",
            "    monte_carlo:",
            f"      prior: {{a: {fit['a']:g}, b: {fit['b']:g}}}"]


class BudgetForecast:
    """The adaptive budget's rollouts on a pilot's trajectories: measured (what the pilot
    spent per estimated step, and its undecided steps) and predicted (:func:`step_forecast`
    of every estimated step, its rate drawn from ``population``: the prior fitted to the
    pilot's counts). ``predict``: the pilot was made with other Monte Carlo settings,
    so its Monte Carlo costs are scaled to the prediction (:meth:`factors`)."""

    def __init__(self, config: MonteCarloConfig, *, predict: bool,
                 population: BetaPrior | None = None) -> None:
        if config.budget is None:
            raise ValueError("a budget forecast needs monte_carlo.budget")
        self.config, self.predict, self.population = config, predict, population
        self.steps = 0
        self.measured_rollouts = self.measured_undecided = 0
        self.predicted_rollouts = self.predicted_undecided = 0.0

    def factors(self, rows: list[dict]) -> tuple[float, float]:
        """One problem's trajectory rows: folds them in, and returns ``(rollouts, requests)``:
        what to multiply its measured Monte Carlo rollouts (and generated tokens) and its
        requests (and prompt tokens) by to get the budget's."""
        measured = predicted = measured_requests = predicted_requests = 0.0
        for row in rows:
            reasons = row.get("mc_label_reasons") or []
            self.measured_undecided += sum(1 for r in reasons if r == "undecided")
            measured_requests += ((row.get("cost_mc") or {}).get("requests") or 0)
            for correct, total, unknown, spent in estimated_steps(row):
                forecast = step_forecast(correct, total, unknown, budget=self.config.budget,
                                         threshold=self.config.threshold,
                                         prior=self.config.prior, population=self.population)
                self.steps += 1
                measured += spent
                predicted += forecast.rollouts
                predicted_requests += forecast.requests
                self.predicted_undecided += forecast.undecided
        self.measured_rollouts += int(measured)
        self.predicted_rollouts += predicted
        if not self.predict:
            return 1.0, 1.0
        return (predicted / measured if measured else 1.0,
                predicted_requests / measured_requests if measured_requests else 1.0)

    def summary(self) -> dict:
        budget = self.config.budget
        return {
            "budget": {"min_rollouts": budget.min_rollouts, "max_rollouts": budget.max_rollouts,
                       "confidence": budget.confidence},
            "costs": "predicted" if self.predict else "measured",
            "estimated_steps": self.steps,
            "pilot_rollouts_per_step": (round(self.measured_rollouts / self.steps, 4)
                                        if self.steps else None),
            "pilot_undecided_share": (None if self.predict or not self.steps
                                      else round(self.measured_undecided / self.steps, 4)),
            "predicted_rollouts_per_step": (round(self.predicted_rollouts / self.steps, 4)
                                            if self.steps else None),
            "predicted_undecided_share": (round(self.predicted_undecided / self.steps, 4)
                                          if self.steps else None),
            "population": (None if self.population is None
                           else [self.population.a, self.population.b]),
        }


# ---------------------------------------------------------------------------------------------
# Throughput


@dataclass(frozen=True)
class Throughput:
    """``tokens_per_s``: generated tokens per second of engine-busy time on one accelerator,
    at the full job's concurrency (``pilot_tokens_per_s`` is what the pilot measured at its
    own; ``concurrency`` says how one became the other); ``engine_start_s``: one engine start;
    ``overhead_s``: the job's time outside engine start and engine work (launch, idle gaps,
    writing, finalize), added once; ``samples_in_flight``: the pilot's mean number of samples
    in flight on the engine (None when not measured)."""

    tokens_per_s: float | None
    engine_start_s: float
    overhead_s: float
    source: str
    busy_s: float | None = None
    samples_in_flight: float | None = None
    pilot_tokens_per_s: float | None = None
    concurrency: dict | None = None


@dataclass(frozen=True)
class StepTimeFit:
    """Seconds per engine step ``a + c·b`` with ``b`` samples in flight, fitted on a pilot's
    requests (:class:`~steplabel.pipelines.label.EngineClock`); ``pilot_b``: the concurrency
    its tokens were generated at (token-weighted harmonic mean); ``weight``: decode steps in
    the fit."""

    a: float
    c: float
    pilot_b: float
    weight: int

    def seconds_per_token(self, b: float) -> float:
        """Each of ``b`` running samples gets one token per step."""
        return self.a / b + self.c


def step_time_fit(counters: dict) -> StepTimeFit | None:
    """Weighted least squares of ``y = a + c·b`` from the ``engine_fit_*`` counters; None
    without them or without spread in ``b``. A negative slope is read as ``c = 0`` (step time
    flat: throughput grows with every sample added), a negative intercept as ``a = 0`` (no
    gain from concurrency)."""
    w = counters.get("engine_fit_w") or 0
    tokens, over_b = counters.get("engine_fit_tokens"), counters.get("engine_fit_tokens_over_b")
    if w <= 0 or not tokens or not over_b:
        return None
    sb, sy = counters["engine_fit_wb"] / 1e3, counters["engine_fit_wy"] / 1e6
    sbb, sby = counters["engine_fit_wbb"] / 1e6, counters["engine_fit_wby"] / 1e9
    spread = w * sbb - sb * sb
    if spread <= 1e-9 * w * sbb:
        return None
    c = (w * sby - sb * sy) / spread
    a = (sy - c * sb) / w
    if c < 0:
        a, c = sy / w, 0.0
    elif a < 0:
        a, c = 0.0, sby / sbb
    return StepTimeFit(a=a, c=c, pilot_b=tokens / (over_b / 1e3), weight=int(w))


def engine_sample_limit(manifest) -> int | None:
    """Samples a vLLM engine runs at once (``max_num_seqs``, else vLLM's default here: 64 on a
    CPU, 256 on a GPU); None for other engines (not known)."""
    config = manifest.models.completer_model
    if config.kind != "vllm":
        return None
    if config.max_num_seqs:
        return config.max_num_seqs
    try:
        return 64 if is_cpu_platform() else 256
    except ImportError:
        return None


def at_full_concurrency(tokens_per_s: float, fit: StepTimeFit | None, *, scale: float,
                        limit: int | None) -> tuple[float, dict | None]:
    """The pilot's throughput carried to the full job's concurrency: ``scale`` times the
    pilot's samples in flight (the job keeps ``scale`` times more problems in flight), at most
    ``limit`` running; by the ratio of the fitted seconds per token."""
    if fit is None or fit.pilot_b <= 0:
        return tokens_per_s, None

    def running(b: float) -> float:
        return min(b, limit) if limit else b

    pilot_b, full_b = running(fit.pilot_b), running(fit.pilot_b * scale)
    factor = fit.seconds_per_token(pilot_b) / fit.seconds_per_token(full_b)
    return tokens_per_s * factor, {
        "step_seconds_a": fit.a, "step_seconds_per_sample_c": fit.c,
        "fit_decode_steps": fit.weight, "problems_in_flight_scale": scale,
        "running_limit": limit, "pilot_samples": pilot_b, "full_samples": full_b,
        "throughput_factor": factor,
    }


def measured_throughput(counters: dict, generated_tokens: float | None, *,
                        job_seconds: float | None, scale: float = 1.0,
                        limit: int | None = None) -> Throughput:
    """From a pilot's counters (``engine_busy_ms``, ``engine_start_ms``, ``engine_workers``,
    ``engine_sample_ms``, ``engine_fit_*``: ``EngineClock.counters``), carried to the full
    job's concurrency (:func:`at_full_concurrency`)."""
    workers = counters.get("engine_workers") or 1
    busy_ms = counters.get("engine_busy_ms")
    start_s = (counters.get("engine_start_ms") or 0) / 1000 / workers
    if not busy_ms or not generated_tokens:
        pilot_tps = None
    else:
        pilot_tps = generated_tokens / (busy_ms / 1000)  # per worker: busy is summed
    tokens_per_s, concurrency = pilot_tps, None
    if pilot_tps is not None:
        tokens_per_s, concurrency = at_full_concurrency(
            pilot_tps, step_time_fit(counters), scale=scale, limit=limit)
    overhead = 0.0
    if job_seconds is not None and busy_ms is not None:
        overhead = max(0.0, job_seconds - start_s - busy_ms / 1000 / workers)
    in_flight = (counters["engine_sample_ms"] / busy_ms
                 if busy_ms and counters.get("engine_sample_ms") is not None else None)
    return Throughput(tokens_per_s, start_s, overhead, "pilot",
                      busy_s=busy_ms / 1000 if busy_ms is not None else None,
                      samples_in_flight=in_flight, pilot_tokens_per_s=pilot_tps,
                      concurrency=concurrency)


# ---------------------------------------------------------------------------------------------
# Projection


def project(values: np.ndarray, population: int, *, finite: bool) -> dict:
    """``{"projected", "low", "high"}`` of the total of ``values`` (one per pilot row) over
    ``population`` rows: the mean times ``population``, ± ``Z95 · sd / sqrt(n)`` times
    ``population`` (normal approximation; ``finite``: with the finite-population correction
    for a sample drawn without replacement from these rows). The low end is clipped at 0;
    with one pilot row there is no spread to measure and the bounds are None."""
    n = len(values)
    if n == 0:
        return {"projected": None, "low": None, "high": None}
    point = float(values.mean()) * population
    if finite and n >= population:
        return {"projected": point, "low": point, "high": point}
    if n < 2:
        return {"projected": point, "low": None, "high": None}
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(n) * population
    if finite and population > 1:
        half *= math.sqrt((population - n) / (population - 1))
    return {"projected": point, "low": max(0.0, point - half), "high": point + half}


def _scale(interval: dict, factor: float | None, add: float = 0.0) -> dict:
    if factor is None:
        return {k: None for k in interval}
    return {k: (None if v is None else v * factor + add) for k, v in interval.items()}


def make_plan(costs: PilotCosts, *, source_rows: int, throughput: Throughput,
              accelerators: int = 1, finite: bool = True, stages=tuple(STAGES)) -> dict:
    """The projection, JSON-ready (see the module docstring)."""
    values = costs.values
    n = values.shape[0]
    tps = throughput.tokens_per_s
    seconds_per_token = 1 / tps if tps else None
    out_stages = {}
    for i, stage in enumerate(STAGES):
        if stage not in stages:
            continue
        figures = {}
        for j, name in enumerate(FIELDS):
            figures[name] = (project(values[:, i, j], source_rows, finite=finite)
                             if (stage, name) not in costs.unknown else _scale(
                                 {"projected": 0, "low": 0, "high": 0}, None))
        figures["engine_s"] = _scale(figures["generated_tokens"], seconds_per_token)
        figures["accelerator_hours"] = _scale(figures["engine_s"], 1 / 3600)
        out_stages[stage] = figures
    keep = [i for i, stage in enumerate(STAGES) if stage in stages]
    total = {}
    for j, name in enumerate(FIELDS):
        if any((stage, name) in costs.unknown for stage in stages):
            total[name] = _scale({"projected": 0, "low": 0, "high": 0}, None)
        else:
            total[name] = project(values[:, keep, j].sum(axis=1), source_rows, finite=finite)
    engine = _scale(total["generated_tokens"], seconds_per_token)
    start = throughput.engine_start_s
    total["engine_s"] = engine
    total["accelerator_hours"] = _scale(engine, 1 / 3600, start * accelerators / 3600)
    total["wall_s"] = _scale(engine, 1 / accelerators, start + throughput.overhead_s)
    return {
        "source_rows": source_rows,
        "pilot_rows": n,
        "accelerators": accelerators,
        "throughput": {
            "source": throughput.source,
            "generated_tokens_per_s": tps,
            "pilot_generated_tokens_per_s": throughput.pilot_tokens_per_s,
            "concurrency": throughput.concurrency,
            "engine_start_s": start,
            "overhead_s": throughput.overhead_s,
            "pilot_engine_busy_s": throughput.busy_s,
            "pilot_samples_in_flight": throughput.samples_in_flight,
        },
        "interval": ("95%, normal approximation: mean ± 1.96·sd/sqrt(n) of the pilot's "
                     "per-row cost, times the source's rows"
                     + (", finite-population corrected" if finite else "")
                     + "; times carry the token spread only, not the throughput's own error"),
        "stages": out_stages,
        "total": total,
        "notes": list(costs.notes),
    }


# ---------------------------------------------------------------------------------------------
# Sandbox time (python_tests jobs)

#: Wall seconds of one sandbox run when the pilot measured none: a fork of a warm sandbox
#: worker with a small program and its tests (benchmarks/results/sandbox_throughput.json: 49
#: ms per run on one worker at load 12 on 2 cores; a bare ``python -c`` start was 121 ms).
DEFAULT_SANDBOX_S_PER_ROLLOUT = 0.05


#: The stages whose rollouts are graded (the judge's replies are not).
GRADED_STAGES = ("policy", "monte_carlo", "omegaprm")


def sandbox_time(counters: dict, *, costs: PilotCosts, plan: dict, workers: int = 2) -> dict:
    """Sandbox seconds of the whole job: seconds per graded rollout times the projected
    graded rollouts (policy samples, Monte Carlo, OmegaPRM; bounds summed). The seconds per graded
    rollout are measured from the pilot's counters (``sandbox_wall_ms`` over every rollout the
    pilot generated, so rollouts without a program or cut off count at their cost, none) or,
    when the pilot ran no program, :data:`DEFAULT_SANDBOX_S_PER_ROLLOUT` (every rollout one
    run). ``wall_s`` divides by the pool's ``workers`` per worker process; it overlaps engine
    time (grading runs beside generation), so the job's wall time does not add it, but on a
    CPU-only machine it takes cores from the engine."""
    graded = [s for s in GRADED_STAGES if s in plan["stages"]]
    index = [list(STAGES).index(s) for s in graded]
    pilot_rollouts = float(costs.values[:, index, FIELDS.index("rollouts")].sum())
    projected_rollouts = {key: (None if any(plan["stages"][s]["rollouts"][key] is None
                                            for s in graded)
                                else sum(plan["stages"][s]["rollouts"][key] for s in graded))
                          for key in ("projected", "low", "high")}
    wall_ms = counters.get("sandbox_wall_ms")
    if wall_ms and pilot_rollouts:
        per_rollout, source = wall_ms / 1000 / pilot_rollouts, "pilot"
    else:
        per_rollout, source = DEFAULT_SANDBOX_S_PER_ROLLOUT, "default"
    seconds = _scale(projected_rollouts, per_rollout)
    return {"s_per_graded_rollout": round(per_rollout, 6), "source": source,
            "graded_rollouts": projected_rollouts,
            "seconds": seconds, "wall_s": _scale(seconds, 1 / workers), "workers": workers}


# ---------------------------------------------------------------------------------------------
# Text


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    for limit, unit, suffix in ((1e12, 1e12, "T"), (1e9, 1e9, "G"), (1e6, 1e6, "M"),
                                (1e4, 1e3, "k")):
        if abs(value) >= limit:
            return f"{value / unit:.3g}{suffix}"
    return f"{value:.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _hours(hours: float | None) -> str:
    if hours is None:
        return "?"
    return f"{hours:.3g}"


def _cell(interval: dict, fmt) -> str:
    point, low, high = interval["projected"], interval["low"], interval["high"]
    if point is None:
        return "?"
    if low is None or high is None:
        return f"{fmt(point)} [?]"
    if fmt(low) == fmt(high):
        return fmt(point)
    return f"{fmt(point)} [{fmt(low)}-{fmt(high)}]"


def budget_line(budget: dict) -> str:
    """The adaptive budget's rollouts per step, measured by the pilot and predicted."""
    b = budget["budget"]
    head = (f"  Monte Carlo budget {b['min_rollouts']}..{b['max_rollouts']} @ "
            f"{b['confidence']}: ")
    if not budget["estimated_steps"]:
        return head + "no step estimated in the pilot"
    predicted = (f"{budget['predicted_rollouts_per_step']:.2f} rollouts per step, "
                 f"{_pct(budget['predicted_undecided_share'])} undecided predicted from the "
                 f"pilot's counts over {budget['estimated_steps']} steps")
    if budget["costs"] == "predicted":
        return (head + predicted + f" (the pilot spent {budget['pilot_rollouts_per_step']:.2f} "
                "under its own settings; the Monte Carlo row is the prediction)")
    return (head + f"{budget['pilot_rollouts_per_step']:.2f} rollouts per step, "
            f"{_pct(budget['pilot_undecided_share'])} undecided measured in the pilot "
            f"(the table's figures); {predicted}")


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def format_plan(plan: dict) -> str:
    columns = [("rollouts", "rollouts", _number), ("prompt tokens", "prompt_tokens", _number),
               ("generated tokens", "generated_tokens", _number),
               ("engine time", "engine_s", _duration),
               ("accel-hours", "accelerator_hours", _hours)]
    rows = [["stage"] + [title for title, _, _ in columns]]
    for stage, figures in plan["stages"].items():
        rows.append([STAGES[stage]] + [_cell(figures[key], fmt) for _, key, fmt in columns])
    rows.append(["total"] + [_cell(plan["total"][key], fmt) for _, key, fmt in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"[steplabel] plan for {plan['manifest']}: {plan['source_rows']} source rows, "
             f"projected from {plan['pilot']}"]
    for index, row in enumerate(rows):
        lines.append("  " + "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(row)))
        if index == 0 or index == len(rows) - 2:
            lines.append("  " + "  ".join("-" * w for w in widths))
    t, total = plan["throughput"], plan["total"]
    if plan.get("sandbox"):
        box = plan["sandbox"]
        lines.append(f"  sandbox (python_tests): {_cell(box['seconds'], _duration)} of program "
                     f"runs, {_cell(box['wall_s'], _duration)} on a pool of {box['workers']}; "
                     f"{box['s_per_graded_rollout'] * 1000:.0f} ms per graded rollout "
                     f"({'measured in the pilot' if box['source'] == 'pilot' else 'a default'}"
                     "), beside the engine's time")
    tps = t["generated_tokens_per_s"]
    if not tps:
        lines.append("  throughput: unknown (pass --tokens-per-s)")
    elif t["source"] != "pilot":
        lines.append(f"  throughput: {tps:.1f} generated tokens/s per accelerator, given "
                     "(--tokens-per-s)")
    else:
        in_flight = t.get("pilot_samples_in_flight")
        lines.append(
            f"  throughput: {tps:.1f} generated tokens/s per accelerator; the pilot measured "
            f"{t['pilot_generated_tokens_per_s']:.1f} over {t['pilot_engine_busy_s']:.1f}s of "
            "engine-busy time" + (f" with {in_flight:.1f} samples in flight on average"
                                  if in_flight is not None else ""))
        fit = t.get("concurrency")
        if fit:
            lines.append(
                f"  concurrency: the job keeps {fit['problems_in_flight_scale']:.2g}x the "
                f"pilot's problems in flight: tokens made at ~{fit['full_samples']:.0f} samples "
                f"in flight instead of ~{fit['pilot_samples']:.0f} (token-weighted)"
                + (f", engine limit {fit['running_limit']}" if fit["running_limit"] else "")
                + f"; step time {fit['step_seconds_a']:.3g}s + "
                f"{fit['step_seconds_per_sample_c']:.3g}s per sample (fitted on the pilot's "
                f"requests): throughput x{fit['throughput_factor']:.2f}")
    lines.append(f"  wall time on {plan['accelerators']} accelerator(s): "
                 f"{_cell(total['wall_s'], _duration)} (engine start {t['engine_start_s']:.1f}s"
                 f" once, job overhead {t['overhead_s']:.1f}s); accelerator-hours "
                 f"{_cell(total['accelerator_hours'], _hours)}")
    load = plan.get("pilot_load_average")
    if load and load.get("start") is not None and t["source"] == "pilot":
        lines.append(f"  machine load during the pilot: 1-min load average {load['start']:.1f} "
                     f"at start, {load['end']:.1f} at end, on {load['cpus']} CPUs (the "
                     "throughput is what the engine got of the machine then)")
    budget = plan.get("monte_carlo_budget")
    if budget:
        lines.append(budget_line(budget))
    if plan.get("monte_carlo_prior_fit"):
        lines += prior_lines(plan["monte_carlo_prior_fit"])
    lines.append(f"  [low-high]: {plan['interval']}")
    for note in plan["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="job manifest (YAML) to plan")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--pilot", type=int, default=DEFAULT_PILOT, metavar="N",
                     help="run the job on a seeded random sample of N source rows (default "
                     f"{DEFAULT_PILOT}; the whole source when it has no more)")
    how.add_argument("--from", dest="from_dataset", metavar="DATASET",
                     help="read a finished dataset's costs instead of running a pilot")
    parser.add_argument("--pilot-out", metavar="DIR",
                        help="keep the pilot (DIR/sample.*, DIR/dataset, DIR/logs) instead of "
                        "a temporary directory")
    parser.add_argument("--tokens-per-s", type=float, metavar="X",
                        help="generated tokens per second of one accelerator on the target "
                        "machine (default: measured in the pilot)")
    parser.add_argument("--engine-start-s", type=float, metavar="S",
                        help="seconds one engine takes to start on the target machine "
                        "(default: measured in the pilot)")
    parser.add_argument("--accelerators", type=int, default=1, metavar="N",
                        help="accelerators (engines) working at once (default 1)")
    parser.add_argument("--source-rows", type=int, metavar="N",
                        help="rows of the source, when they cannot be counted here")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON only")


def _check_args(args) -> None:
    if args.pilot is not None and args.pilot < 1:
        raise PlanError(f"--pilot must be >= 1, got {args.pilot}")
    if args.accelerators < 1:
        raise PlanError(f"--accelerators must be >= 1, got {args.accelerators}")
    if args.tokens_per_s is not None and not args.tokens_per_s > 0:
        raise PlanError(f"--tokens-per-s must be > 0, got {args.tokens_per_s}")
    if args.engine_start_s is not None and args.engine_start_s < 0:
        raise PlanError(f"--engine-start-s must be >= 0, got {args.engine_start_s}")
    if args.source_rows is not None and args.source_rows < 1:
        raise PlanError(f"--source-rows must be >= 1, got {args.source_rows}")
    if args.from_dataset and args.pilot_out:
        raise PlanError("--pilot-out keeps a pilot run; with --from nothing runs")


def _stage_settings(data: dict) -> dict:
    """A manifest's settings that decide what a problem costs (not where rows come from)."""
    return {k: v for k, v in data.items() if k not in ("name", "source", "runner")}


def _run_pilot(manifest, args, source_rows: int, root: Path):
    dataset = root / "dataset"
    if dataset.exists() and any(dataset.iterdir()):
        raise PlanError(f"{dataset} already holds a pilot: read it with --from {dataset}, or "
                        "choose an empty --pilot-out")
    indices = sample_indices(source_rows, args.pilot, manifest.seed)
    pilot_manifest = write_pilot_source(manifest, indices, root)
    logs.use_dataset_dir(str(root), "plan")  # engine logs there, not on the terminal
    print(f"[steplabel] plan: pilot of {len(indices)} of {source_rows} source rows "
          f"(seed {manifest.seed}) in {root}", file=sys.stderr)
    load_before = _load_average()
    result = run_job(pilot_manifest, out_dir=str(dataset))
    # What --from needs to make the same plan from a kept pilot again.
    record = {"source": manifest.to_dict()["source"], "source_rows": source_rows,
              "indices": indices, "job_seconds": result.seconds,
              "load_average": {"start": load_before, "end": _load_average(),
                               "cpus": os.cpu_count()}}
    (root / PILOT_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return str(dataset), result, record


def _load_average() -> float | None:
    """The machine's 1-minute load average (None where the platform has none): a pilot's
    throughput is what its engine got of a shared machine."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _kept_pilot(dataset: str, manifest) -> dict | None:
    """The record of a pilot of this manifest's source that ``--pilot-out`` kept beside
    ``dataset`` (None for any other dataset)."""
    if "://" in dataset:
        return None
    path = Path(dataset).resolve().parent / PILOT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("source") == manifest.to_dict()["source"] else None


def run(args) -> int:
    root = None
    keep_root = bool(getattr(args, "pilot_out", None))
    try:
        _check_args(args)
        manifest = load_manifest(args.manifest)
        source_rows = args.source_rows or count_source_rows(manifest.source)
        if source_rows < 1:
            raise PlanError(f"the source {manifest.source.path} has no rows")
        notes = []
        predict_budget = False  # the pilot runs this manifest: it measures the budget
        if args.from_dataset:
            dataset = args.from_dataset
            stats = storage.read_json_if_exists(storage.join(dataset, "stats.json"))
            if stats is None:
                raise PlanError(f"{dataset} has no stats.json: not a finished dataset")
            lock = storage.read_json_if_exists(storage.join(dataset, "manifest.lock.json"))
            made_with = (lock or {}).get("manifest") or {}
            if made_with and _stage_settings(made_with) != _stage_settings(manifest.to_dict()):
                differ = sorted(k for k in set(_stage_settings(made_with)) | set(
                    _stage_settings(manifest.to_dict())) if made_with.get(k)
                    != manifest.to_dict().get(k))
                notes.append(f"{dataset} was made with other settings ({', '.join(differ)}): "
                             "its costs may not be this manifest's")
            # A run of this very source, or a kept pilot of it: a sample without replacement
            # of these rows (a run of the whole source has no spread left).
            kept = _kept_pilot(dataset, manifest)
            finite = kept is not None or (
                bool(made_with) and made_with.get("source") == manifest.to_dict()["source"])
            job_seconds = kept["job_seconds"] if kept else None
            load = kept.get("load_average") if kept else None
            pilot_text = (f"the kept pilot {dataset}" if kept else f"the dataset {dataset}")
            predict_budget = made_with.get("monte_carlo") != manifest.to_dict().get(
                "monte_carlo")
        else:
            root = Path(args.pilot_out) if keep_root else Path(
                tempfile.mkdtemp(prefix="steplabel-plan-"))
            dataset, result, record = _run_pilot(manifest, args, source_rows, root)
            stats = result.stats
            load = record["load_average"]
            finite = True
            job_seconds = result.seconds
            pilot_text = f"a pilot of {stats['reconciliation']['problems_in']} rows"
        counters = stats.get("counters", {})
        rows_in = (stats.get("reconciliation") or {}).get("problems_in")
        if rows_in is None:
            raise PlanError(f"{dataset} does not record how many rows it read")
        fit = None
        if manifest.monte_carlo is not None:
            counts = pilot_step_counts(dataset)
            fit = fit_prior(counts) if any(c + f for c, f in counts) else None
        forecast = (BudgetForecast(manifest.monte_carlo, predict=predict_budget,
                                   population=None if fit is None else fit.prior)
                    if manifest.monte_carlo is not None and manifest.monte_carlo.budget
                    is not None else None)
        costs = problem_costs(dataset, rows_in=rows_in, counters=counters, budget=forecast,
                              critic=manifest.critic)
        if forecast is not None and forecast.predict:
            notes.append("the pilot was made with other Monte Carlo settings: the Monte Carlo "
                         "costs are the adaptive budget's, predicted from the pilot's step "
                         "counts and the budget's rounds")
        costs.notes[:0] = notes
        stages = [s for s in STAGES if s == "policy" or getattr(manifest, s) is not None]
        generated = None
        if not any((s, "generated_tokens") in costs.unknown for s in stages):
            index = [list(STAGES).index(s) for s in stages]
            generated = float(costs.values[:, index, FIELDS.index("generated_tokens")].sum())
        # The full job keeps more problems in flight than a small pilot: faster per token.
        in_flight = manifest.runner.max_in_flight
        scale = min(source_rows, in_flight) / max(1, min(rows_in, in_flight))
        throughput = measured_throughput(counters, generated, job_seconds=job_seconds,
                                         scale=scale, limit=engine_sample_limit(manifest))
        if args.tokens_per_s:
            throughput = replace(throughput, tokens_per_s=args.tokens_per_s, source="given",
                                 concurrency=None)
        if args.engine_start_s is not None:
            throughput = replace(throughput, engine_start_s=args.engine_start_s)
        if (throughput.source == "pilot" and throughput.concurrency is None and scale != 1
                and throughput.tokens_per_s is not None):
            costs.notes.append(
                f"the job keeps {scale:.2g}x the pilot's problems in flight, but the pilot "
                "has no step-time fit (engine_fit_* counters): its throughput is used as it "
                "is, and an engine is often faster with more in flight")
        if throughput.tokens_per_s is None:
            costs.notes.append("no throughput measured (no engine_busy_ms counter or no "
                               "tokens): pass --tokens-per-s for times")
        plan = make_plan(costs, source_rows=source_rows, throughput=throughput,
                         accelerators=args.accelerators, finite=finite, stages=stages)
        if manifest.grader.name == "python_tests":
            plan["sandbox"] = sandbox_time(counters, costs=costs, plan=plan)
        plan["manifest"] = args.manifest
        plan["pilot"] = pilot_text
        plan["pilot_dataset"] = dataset if (args.from_dataset or keep_root) else None
        plan["pilot_load_average"] = load
        plan["monte_carlo_budget"] = forecast.summary() if forecast is not None else None
        plan["monte_carlo_prior_fit"] = prior_fit_summary(fit)
    except (PlanError, ConfigError, JobError, FileNotFoundError) as exc:
        print(f"steplabel plan: error: {exc}", file=sys.stderr)
        if root is not None and not keep_root:
            print(f"steplabel plan: the pilot's files and logs are kept in {root}",
                  file=sys.stderr)
        return 2
    if root is not None and not keep_root:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(plan, indent=2, sort_keys=True))
    else:
        print(format_plan(plan))
    return 0
