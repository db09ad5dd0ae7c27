"""Per-step Monte Carlo labels (Math-Shepherd; Qwen's truncated variant).

For every step prefix ``x_{1:t}`` of a solution, a completer samples ``k`` continuations in one
request (``n = k``, so the prefix is computed once and served from the prefix cache) and each
completed solution is graded against the gold answer. Per step we keep the raw counts:

- ``n_correct``: rollouts graded correct;
- ``n_total``: rollouts graded correct or incorrect (the denominator of the MC value);
- ``n_unknown``: rollouts the grader could not decide; counted apart, never in the denominator.

From the counts: soft label ``value = n_correct / n_total`` (None when ``n_total == 0``) and hard
label ``value > hard_threshold`` (τ = 0: "any rollout reaches the gold answer", Math-Shepherd HE).

Every step's request is in flight at once (``asyncio.gather``), and many solutions can be
annotated concurrently against one engine; nothing here serializes the engine.

:func:`sample_and_grade` is the shared primitive (one request, graded) that OmegaPRM reuses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from steplabel.annotators.grading import Grade, grade
from steplabel.annotators.posterior import (
    CREDIBLE_LEVEL,
    DEFAULT_MIN_SUCCESS,
    REASON_UNDECIDED,
    BetaPrior,
    RolloutBudget,
    StepPosterior,
    budget_label,
    futile,
    posterior,
)
from steplabel.annotators.prompts import SolutionPrompt
from steplabel.annotators.seeds import derive_seed
from steplabel.annotators.splitting import Splitter
from steplabel.engines.base import CostMeter, GenerationEngine, GenerationRequest
from steplabel.schemas.annotators import TRUNCATED_RULES, MonteCarloConfig
from steplabel.schemas.config import SamplingConfig

ANNOTATOR_NAME = "monte_carlo"
ANNOTATOR_VERSION = "4"  # 2: cut-off rollouts unknown, final step by its answer; 3: waves;
# 4: consensus-guided (no rollouts once the judge's first error cannot be matched); the
# adaptive budget and the posterior columns leave fixed-k labels unchanged, hence no new version

#: ``grader(completed_solution_text, gold) -> Grade``: the job's grader's ``grade``
#: (``annotators/graders.py``; ``gold`` is its typed gold), or :func:`grading.grade` (``gold``:
#: an extracted answer string) by default.
Grader = Callable[[str, Any], Grade]

#: The engines' finish reason of a sample cut off at ``max_tokens``.
FINISH_LENGTH = "length"
REASON_TRUNCATED = "truncated"


class _Unguided:
    def __repr__(self) -> str:
        return "UNGUIDED"


#: ``annotate(judge_first_error=...)`` when no judge verdict guides the rollouts.
UNGUIDED = _Unguided()
#: Why consensus-guided rollouts stopped (``MonteCarloResult.stopped``); also the consensus
#: reasons of those rejected rows.
REASON_JUDGE_UNKNOWN = "judge_unknown"
REASON_CANNOT_AGREE = "cannot_agree"


# --------------------------------------------------------------------------------------------
# Shared primitive: one request of n rollouts, graded


@dataclass(frozen=True)
class GradedRollouts:
    """The ``n`` rollouts of one request from one prefix, each graded.

    ``verdicts[i]`` is ``"correct"``, ``"incorrect"`` (finished with a wrong answer, or with
    none) or ``"unknown"`` (cut off by ``max_tokens`` under the default truncation rule, or the
    grader could not decide); ``reasons[i]`` says why (``"truncated"`` for a cut-off rollout).
    ``generated_tokens[i]`` is the length of ``texts[i]`` in tokens, as the engine counted them;
    ``finish_reasons[i]`` is the engine's (``"stop"`` or ``"length"``).
    """

    seed: int
    texts: tuple[str, ...]
    generated_tokens: tuple[int, ...]
    verdicts: tuple[str, ...]
    reasons: tuple[str, ...]
    finish_reasons: tuple[str, ...] = ()

    @property
    def n_correct(self) -> int:
        return self.verdicts.count("correct")

    @property
    def n_total(self) -> int:
        """Graded rollouts (correct + incorrect); unknowns are excluded."""
        return self.n_correct + self.verdicts.count("incorrect")

    @property
    def n_unknown(self) -> int:
        return self.verdicts.count("unknown")

    def extend(self, more: "GradedRollouts") -> "GradedRollouts":
        """These rollouts followed by ``more`` (the next wave of the same step)."""
        return GradedRollouts(
            seed=self.seed,
            texts=self.texts + more.texts,
            generated_tokens=self.generated_tokens + more.generated_tokens,
            verdicts=self.verdicts + more.verdicts,
            reasons=self.reasons + more.reasons,
            finish_reasons=self.finish_reasons + more.finish_reasons,
        )

    @property
    def n_truncated(self) -> int:
        """Rollouts the engine cut off at ``max_tokens`` (whatever their verdict)."""
        return self.finish_reasons.count(FINISH_LENGTH)

    @property
    def value(self) -> float | None:
        """MC value ``n_correct / n_total`` in [0, 1]; None when no rollout could be graded."""
        return self.n_correct / self.n_total if self.n_total else None


def sampling_request(prompt_text: str, *, n: int, seed: int,
                     sampling: SamplingConfig) -> GenerationRequest:
    """The generation request for ``n`` rollouts from ``prompt_text`` with ``sampling``."""
    return GenerationRequest(
        prompt=prompt_text,
        n=n,
        seed=seed,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=tuple(sampling.stop),
    )


async def sample_and_grade(
    engine: GenerationEngine,
    *,
    prompt_text: str,
    solution_prefix: str,
    n: int,
    seed: int,
    sampling: SamplingConfig,
    gold_answer: str | None,
    grader: Grader = grade,
    cost: CostMeter | None = None,
    truncated: str = "unknown",
) -> GradedRollouts:
    """Sample ``n`` rollouts from ``prompt_text`` in one request and grade each.

    ``truncated`` (one of :data:`TRUNCATED_RULES`) says how a rollout the engine cut off at
    ``max_tokens`` counts: ``"unknown"`` (reason ``"truncated"``, never graded) or
    ``"incorrect"``-style, i.e. graded as written.

    Each rollout is graded as the completed solution ``solution_prefix + text`` (the prefix the
    completer continued, its separator, then the rollout), so a rollout from a complete solution
    that adds nothing is graded by the solution's own final answer. Grading runs in a worker
    thread: the grader may block (math-verify runs in a subprocess) and must not stall the loop.
    """
    result = await engine.generate(sampling_request(prompt_text, n=n, seed=seed,
                                                    sampling=sampling))
    if truncated not in TRUNCATED_RULES:
        raise ValueError(f"truncated must be one of {TRUNCATED_RULES}, got {truncated!r}")
    if cost is not None:
        cost.add(result)
    finish = tuple(result.finish_reasons)
    cut = [truncated == "unknown" and f == FINISH_LENGTH for f in finish]
    grades = await asyncio.to_thread(
        lambda: [None if c else grader(solution_prefix + text, gold_answer)
                 for text, c in zip(result.texts, cut)]
    )
    return GradedRollouts(
        seed=seed,
        texts=tuple(result.texts),
        generated_tokens=tuple(result.generated_tokens),
        verdicts=tuple("unknown" if g is None else g.verdict for g in grades),
        reasons=tuple(REASON_TRUNCATED if g is None else g.reason for g in grades),
        finish_reasons=finish,
    )


# --------------------------------------------------------------------------------------------
# Result



@dataclass(frozen=True)
class MonteCarloResult:
    """Monte Carlo labels of one solution; plain fields, one entry per step in the list fields.

    - ``n_correct[t]``, ``n_total[t]`` (correct + incorrect), ``n_unknown[t]``: raw counts of
      the rollouts from prefix ``steps[:t+1]``; ``n_total[t] + n_unknown[t] == k``.
      ``n_truncated[t]``: how many of them the engine cut off at ``max_tokens`` (unknown under
      the default rule, so ``n_truncated[t] <= n_unknown[t]`` then).
      **The final step** is never rolled out from: a complete solution is labelled by its own
      graded final answer [MS §3.3], counted as its single rollout: ``(1, 1, 0)`` when the
      answer is correct, ``(0, 1, 0)`` when wrong (or missing), ``(0, 0, 1)`` when ungradable.
    - ``values[t]``: MC value ``n_correct / n_total`` in [0, 1], None when ``n_total == 0``.
      Always the raw estimate, also after a truncation.
    - ``soft_labels[t]``: ``values[t]``, or None after the truncation point.
    - ``hard_labels[t]``: ``values[t] > hard_threshold``; None when the value is None or after
      the truncation point.
    - ``first_error_index``: the first step whose hard label is False, ``-1`` when no step is
      negative, None (unknown) when a step with an unknown label comes before any negative.
    - ``truncated_after``: with truncation on, the index of the first hard-negative step (labels
      after it are None); None when truncation is off or no step is negative.
    - ``seeds[t]``: the request seed of step t; rollout ``i`` of step t is ``(seeds[t], i)``.
    - ``unknown_reasons[t]``: the grader's reasons for the unknown rollouts of step t.
    - ``rollouts``: rollouts sampled (at most k × (number of steps - 1)); ``cost``:
      ``CostMeter.as_dict()``. ``rollouts_saved_decided``: rollouts not sampled on estimated
      steps because their label was decided early; ``rollouts_saved_first_error``: k for every
      step not estimated because it lies after the first error. A step not estimated has counts
      ``0, 0, 0`` and value and labels None. ``rollouts_saved_consensus``: k for every step
      left unestimated by consensus guidance (past the judge's first error, or all of them
      when agreement was ruled out before any rollout).
    - ``stopped``: None, or why consensus-guided rollouts stopped before the first error was
      known: ``judge_unknown`` (the judge gave no verdict) or ``cannot_agree`` (the final
      answer's grade or a step's label rules the judge's first error out).
    - The posterior per step (:mod:`posterior`), ``Beta(a + n_correct, b + n_total -
      n_correct)``: ``posterior_mean[t]`` (the soft label), ``interval_low[t]`` /
      ``interval_high[t]`` (equal-tailed, at ``credible_level``), ``p_above[t]`` =
      ``P(p > posterior_threshold)``. None for a step with no known rollout (not estimated, or
      every rollout unknown). The final step is labelled by its graded answer, not estimated:
      its mean and bounds are its value (1 or 0) and ``p_above`` is 1 or 0.
    - ``rollouts_per_step[t]``: rollouts sampled from step t's prefix (0 for the final step and
      for steps not estimated).
    - ``label_reasons[t]``: ``undecided`` when the budget's ``max_rollouts`` left step t's hard
      label undecided (the label is None), else None.
    - ``k`` is ``budget.max_rollouts`` under a budget; the ``rollouts_saved_*`` fields count
      against it.
    """

    problem_id: str
    solution_index: int
    num_steps: int
    k: int
    hard_threshold: float
    n_correct: list[int]
    n_total: list[int]
    n_unknown: list[int]
    n_truncated: list[int]
    values: list[float | None]
    soft_labels: list[float | None]
    hard_labels: list[bool | None]
    first_error_index: int | None
    truncated_after: int | None
    seeds: list[int]
    unknown_reasons: list[list[str]]
    rollouts: int
    cost: dict[str, int]
    annotator: str
    model_id: str
    rollouts_saved_decided: int = 0
    rollouts_saved_first_error: int = 0
    rollouts_saved_consensus: int = 0
    stopped: str | None = None
    posterior_threshold: float = DEFAULT_MIN_SUCCESS
    credible_level: float = CREDIBLE_LEVEL
    posterior_mean: list[float | None] = field(default_factory=list)
    interval_low: list[float | None] = field(default_factory=list)
    interval_high: list[float | None] = field(default_factory=list)
    p_above: list[float | None] = field(default_factory=list)
    rollouts_per_step: list[int] = field(default_factory=list)
    label_reasons: list[str | None] = field(default_factory=list)


def first_error_from_labels(hard_labels: Sequence[bool | None]) -> int | None:
    """First index whose label is False; -1 if none is; None if a None label comes first."""
    for index, label in enumerate(hard_labels):
        if label is None:
            return None
        if not label:
            return index
    return -1


# --------------------------------------------------------------------------------------------
# Annotator


class MonteCarloAnnotator:
    """Labels every step of a solution by k completions from its prefix.

    Holds only the engine and settings, never per-problem state, so one instance may annotate
    many solutions concurrently.
    """

    def __init__(self, engine: GenerationEngine, config: MonteCarloConfig, *, run_seed: int,
                 grader: Grader = grade) -> None:
        if not isinstance(config, MonteCarloConfig):
            raise TypeError(f"config must be a MonteCarloConfig, got {type(config).__name__}")
        self.engine = engine
        self.config = config
        self.run_seed = run_seed
        self.grader = grader

    @property
    def name(self) -> str:
        return f"{ANNOTATOR_NAME}/{ANNOTATOR_VERSION}"

    def seed_for(self, *, problem_id: str, solution_index: int, step_index: int) -> int:
        """Request seed of the rollouts from prefix ``steps[:step_index + 1]``."""
        return derive_seed(self.run_seed, "mc", problem_id, solution_index, step_index)

    async def annotate(
        self,
        *,
        problem_id: str,
        solution_index: int,
        prompt: SolutionPrompt,
        steps: list[str],
        splitter: Splitter,
        gold_answer: str | None,
        final_verdict: str | None = None,
        judge_first_error: "int | None | _Unguided" = UNGUIDED,
    ) -> MonteCarloResult:
        """Estimate the MC value of every step prefix of ``steps`` but the last (k rollouts each).

        ``prompt`` is the *completer's* view of the problem (rendered with the completer's chat
        template); ``steps`` are the solution's steps as ``splitter`` produced them (the first
        includes the prompt's ``response_prefix``); ``gold_answer`` is already extracted (None:
        every rollout grades unknown). ``final_verdict`` is the grade of the solution's own final
        answer (``"correct"``, ``"incorrect"`` or ``"unknown"``; graded here when None): it
        labels the last step, from which nothing is rolled out. ``judge_first_error``: the
        judge's verdict on this solution (``-1`` no error, an index, None unknown), which the
        rollouts follow under ``consensus_guided``. Costs at most ``k * (len(steps) - 1)``
        rollouts (exactly that with ``stopping: fixed`` and ``first_error_only`` off).
        """
        if not steps:
            raise ValueError(f"steps must be non-empty (problem {problem_id!r}, "
                             f"solution {solution_index})")
        if final_verdict is None:
            solution = splitter.join(list(steps))
            final_verdict = (await asyncio.to_thread(self.grader, solution, gold_answer)).verdict
        if final_verdict not in ("correct", "incorrect", "unknown"):
            raise ValueError(f"final_verdict must be correct, incorrect or unknown, got "
                             f"{final_verdict!r}")
        cfg = self.config
        first_error_only = (cfg.first_error_only if cfg.first_error_only is not None
                            else cfg.truncate_after_first_error)
        guided = bool(cfg.consensus_guided) and judge_first_error is not UNGUIDED
        if cfg.consensus_guided and not guided:
            raise ValueError("consensus_guided Monte Carlo needs the judge's verdict "
                             "(judge_first_error)")
        cost = CostMeter()
        seeds = [self.seed_for(problem_id=problem_id, solution_index=solution_index,
                               step_index=t) for t in range(len(steps))]

        async def wave(t: int, start: int, size: int) -> GradedRollouts:
            # Rollouts start..start+size-1 of step t: seeds seeds[t] + i, as in one request.
            prefix = splitter.join(list(steps[: t + 1]))
            return await sample_and_grade(
                self.engine,
                prompt_text=prompt.for_continuation(prefix, splitter.separator),
                solution_prefix=prefix + splitter.separator,
                n=size,
                seed=seeds[t] + start,
                sampling=cfg.sampling,
                gold_answer=gold_answer,
                grader=self.grader,
                cost=cost,
                truncated=cfg.truncated,
            )

        estimable = len(steps) - 1  # no rollout from the complete solution
        # Steps that may be estimated; with guidance, none past the judge's first error.
        horizon, stopped = estimable, None
        if guided:
            first_error_only = True
            horizon, stopped = guided_horizon(judge_first_error, num_steps=len(steps),
                                              final_verdict=final_verdict)
        sampled: list[GradedRollouts | None] = [None] * estimable
        # Rounds: every step still needed gets its next wave; all of a round is in flight at
        # once. The schedule depends only on results, never on timing, so reruns repeat it.
        while True:
            decided = [step_label(cfg, sampled[t]) for t in range(estimable)]
            needed = range(horizon)
            if first_error_only:
                stop = next((t for t, d in enumerate(decided) if d is not True
                             and d is not UNDECIDED), None)
                needed = range(horizon if stop is None else min(stop, horizon))
            todo = [t for t in needed if decided[t] is UNDECIDED]
            if first_error_only:
                todo = todo[:FIRST_ERROR_WINDOW]
            if not todo:
                break
            done = [0 if sampled[t] is None else len(sampled[t].verdicts) for t in todo]
            if cfg.budget is not None:
                sizes = [cfg.budget.next_round(n) for n in done]
            else:
                sizes = [cfg.rollouts - n if cfg.stopping == "fixed"
                         else min(cfg.rollouts - n, max(1, n)) for n in done]
            results = await asyncio.gather(*(wave(t, n, size)
                                             for t, n, size in zip(todo, done, sizes)))
            for t, result in zip(todo, results):
                sampled[t] = result if sampled[t] is None else sampled[t].extend(result)

        estimated, final_needed = list(range(estimable)), True
        saved_consensus = 0
        if first_error_only:
            stop = next((t for t in range(horizon) if step_label(cfg, sampled[t]) is not True),
                        None)
            if stop is not None:
                estimated, final_needed = list(range(stop + 1)), False
            elif horizon < estimable or stopped is not None:
                # Guided: every step up to the horizon is positive, so the judge's first error
                # (the last of them) is not Monte Carlo's, or agreement was ruled out up front.
                estimated, final_needed = list(range(horizon)), False
                stopped = stopped or REASON_CANNOT_AGREE
                saved_consensus = cfg.max_rollouts * (estimable - horizon)
        not_estimated = GradedRollouts(seed=0, texts=(), generated_tokens=(), verdicts=(),
                                       reasons=(), finish_reasons=())
        estimates = [sampled[t] if t in estimated and sampled[t] is not None else not_estimated
                     for t in range(estimable)]
        k = cfg.max_rollouts
        saved_decided = sum(k - len(estimates[t].verdicts) for t in estimated)
        saved_first_error = sum(k - (0 if sampled[t] is None else len(
            sampled[t].verdicts)) for t in range(len(estimated), estimable)) - saved_consensus
        # The complete solution is its own (single) rollout; it is not estimated either when
        # an earlier step already decided the first error and nothing keeps labels after it.
        estimates.append(GradedRollouts(seed=seeds[-1], texts=("",), generated_tokens=(0,),
                                        verdicts=(final_verdict,), reasons=("final_answer",),
                                        finish_reasons=("stop",))
                         if final_needed else not_estimated)

        values = [e.value for e in estimates]
        hard: list[bool | None] = [None if v is None else v > cfg.hard_threshold for v in values]
        reasons: list[str | None] = [None] * len(steps)
        if cfg.budget is not None:
            # The posterior decides estimated steps; the final step keeps its graded answer.
            for t in estimated:
                label = step_label(cfg, estimates[t])
                hard[t] = None if label is UNDECIDED else label
                if label is None and estimates[t].n_total > 0:
                    reasons[t] = REASON_UNDECIDED
        posteriors = [step_posterior(e, cfg) for e in estimates[:-1]]
        soft: list[float | None] = list(values)
        first_error = first_error_from_labels(hard)
        truncated_after = None
        if final_needed and values[-1] is not None:  # the graded answer: certain, not estimated
            v, last = values[-1], estimates[-1]
            posteriors.append(StepPosterior(successes=last.n_correct,
                                            failures=last.n_total - last.n_correct,
                                            mean=v, low=v, high=v, level=CREDIBLE_LEVEL,
                                            threshold=cfg.threshold,
                                            p_above=1.0 if v > cfg.threshold else 0.0))
        else:
            posteriors.append(None)
        if cfg.truncate_after_first_error:
            first_negative = next((t for t, h in enumerate(hard) if h is False), None)
            if first_negative is not None:
                truncated_after = first_negative
                for t in range(first_negative + 1, len(steps)):
                    hard[t] = None
                    soft[t] = None

        return MonteCarloResult(
            problem_id=problem_id,
            solution_index=solution_index,
            num_steps=len(steps),
            k=k,
            hard_threshold=float(cfg.hard_threshold),
            n_correct=[e.n_correct for e in estimates],
            n_total=[e.n_total for e in estimates],
            n_unknown=[e.n_unknown for e in estimates],
            n_truncated=[e.n_truncated for e in estimates],
            values=values,
            soft_labels=soft,
            hard_labels=hard,
            first_error_index=first_error,
            truncated_after=truncated_after,
            seeds=seeds,
            unknown_reasons=[[r for v, r in zip(e.verdicts, e.reasons) if v == "unknown"]
                             for e in estimates],
            rollouts=cost.rollouts,
            cost=cost.as_dict(),
            annotator=self.name,
            model_id=getattr(self.engine, "model_id", "unknown"),
            rollouts_saved_decided=saved_decided,
            rollouts_saved_first_error=saved_first_error,
            rollouts_saved_consensus=saved_consensus,
            stopped=stopped,
            posterior_threshold=cfg.threshold,
            credible_level=CREDIBLE_LEVEL,
            posterior_mean=[None if p is None else p.mean for p in posteriors],
            interval_low=[None if p is None else p.low for p in posteriors],
            interval_high=[None if p is None else p.high for p in posteriors],
            p_above=[None if p is None else p.p_above for p in posteriors],
            rollouts_per_step=[len(e.verdicts) for e in estimates[:-1]] + [0],
            label_reasons=reasons,
        )


def step_posterior(sampled: GradedRollouts, cfg: MonteCarloConfig) -> StepPosterior | None:
    """The posterior of a step from its known rollouts; None when it has none."""
    if sampled.n_total == 0:
        return None
    return posterior(sampled.n_correct, sampled.n_total - sampled.n_correct, prior=cfg.prior,
                     threshold=cfg.threshold)


def guided_horizon(judge_first_error: int | None, *, num_steps: int,
                   final_verdict: str) -> tuple[int, str | None]:
    """How many steps (from the first) consensus-guided Monte Carlo may estimate, and why it
    estimates none when agreement is ruled out before any rollout.

    Agreement with a judge index ``j`` needs steps ``0..j-1`` positive and step ``j`` negative
    (``j = -1``: every step positive). The last step's label is the solution's own graded
    answer, so ``j = -1`` with a wrong or ungradable answer, and ``j`` = the last step with a
    right or ungradable one, cannot agree; no verdict cannot either.
    """
    estimable = num_steps - 1
    if judge_first_error is None:
        return 0, REASON_JUDGE_UNKNOWN
    final = {"correct": True, "incorrect": False}.get(final_verdict)
    j = judge_first_error
    if ((j == -1 and final is not True) or (j == num_steps - 1 and final is not False)
            or j >= num_steps or j < -1):
        return 0, REASON_CANNOT_AGREE
    return (estimable if j in (-1, num_steps - 1) else j + 1), None


#: With ``first_error_only``, how many undecided steps (the earliest) get a wave each round.
#: Measured on planted landscapes (benchmarks/annotation_cost.py, k = 8, M = 4/8/16): window 1
#: spends 9.2/12.8/24.1 rollouts per localization, 2 spends 12.4/17.0/27.5, 3 spends
#: 15.9/21.1/32.5. Window 1 makes a solution's rounds sequential; the engine stays busy with
#: more solutions and problems in flight (``runner.max_in_flight``), not with speculative work.
FIRST_ERROR_WINDOW = 1


class _Undecided:
    def __repr__(self) -> str:
        return "UNDECIDED"


#: :func:`step_decision` of a step whose label the remaining rollouts could still change.
UNDECIDED = _Undecided()


def step_decision(sampled: "GradedRollouts | None", *, k: int, tau: float):
    """The hard label that ``k`` rollouts will give a step, if the rollouts sampled so far
    already decide it: True / False, None (no rollout can be known: every one was unknown), or
    :data:`UNDECIDED`.

    With ``c`` correct of ``n`` known rollouts and ``r`` still to sample, the final value lies in
    ``[c / (n + r), (c + r) / (n + r)]`` (the rest all incorrect / all correct; the rest unknown
    gives ``c / n``, inside it); the label ``value > tau`` is decided when both ends agree and
    no unknown-only outcome (value None) is possible.
    """
    if sampled is None:
        return UNDECIDED if k > 0 else None
    c, n = sampled.n_correct, sampled.n_total
    r = k - len(sampled.verdicts)
    if r <= 0:
        return None if n == 0 else c / n > tau
    if n == 0:
        return UNDECIDED  # the rest could all be unknown (None) or known
    if c / (n + r) > tau:
        return True
    if (c + r) / (n + r) <= tau:
        return False
    return UNDECIDED


def budget_step_decision(sampled: "GradedRollouts | None", *, budget: RolloutBudget,
                         threshold: float, prior: BetaPrior):
    """The hard label of a step under the adaptive budget, as :func:`step_decision` reports it:
    True / False once ``P(p > threshold)`` is at least ``confidence`` / at most ``1 -
    confidence`` (and ``min_rollouts`` are sampled), None once ``max_rollouts`` are sampled and
    neither holds (unknown: ``undecided``, or no known rollout), else :data:`UNDECIDED`
    (sample another round). A positive needs at least one correct rollout: the prior alone is
    no evidence (see :mod:`posterior`). With ``budget.futility`` set, a step with known
    rollouts whose chance of being decided by ``max_rollouts`` is at most that is None
    (undecided) at once (:func:`~steplabel.annotators.posterior.futile`)."""
    sampled_n = 0 if sampled is None else len(sampled.verdicts)
    if sampled_n < budget.min_rollouts:
        return UNDECIDED
    assert sampled is not None
    c, f = sampled.n_correct, sampled.n_total - sampled.n_correct
    label = budget_label(c, f, threshold=threshold, prior=prior, confidence=budget.confidence)
    if label is not None:
        return label
    if sampled_n >= budget.max_rollouts:
        return None
    if c + f and futile(c, f, sampled_n, budget=budget, threshold=threshold, prior=prior):
        return None  # the futility rule: undecided now (a step with no known rollout goes on)
    return UNDECIDED


def step_label(config: MonteCarloConfig, sampled: "GradedRollouts | None"):
    """A step's hard-label decision under ``config``: :func:`step_decision` under fixed k,
    :func:`budget_step_decision` under an adaptive budget."""
    if config.budget is None:
        return step_decision(sampled, k=config.rollouts, tau=config.hard_threshold)
    return budget_step_decision(sampled, budget=config.budget, threshold=config.threshold,
                                prior=config.prior)
