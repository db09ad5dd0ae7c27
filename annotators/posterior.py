"""Beta posteriors of Monte Carlo step values, and the adaptive rollout budget's stopping rule.

A step's success rate ``p`` (the chance that a rollout from its prefix reaches the gold answer)
gets the posterior ``Beta(a + successes, b + failures)`` from the prior ``Beta(a, b)`` (uniform
``a = b = 1`` by default) and the step's graded rollouts. Unknown rollouts (cut off at
``max_tokens``, ungradable) are neither successes nor failures: they say nothing about ``p``.

From the posterior:

- the **posterior mean** ``(a + s) / (a + b + s + f)``, the soft label;
- an **equal-tailed credible interval** at :data:`CREDIBLE_LEVEL` (90%: the 5% and 95%
  quantiles);
- ``p_above = P(p > threshold)``, the probability that the hard label is positive.

**The threshold.** The hard label is ``p > tau``. Math-Shepherd's τ = 0 ("any rollout
correct") is never decided by a posterior: every Beta puts all its mass above 0. So a floor
``min_success`` says which success rates count as zero, and the posterior is asked about
``threshold = max(tau, min_success)``: a rate below the floor is a negative step at any τ.
The default floor is chosen on the planted benchmark (``benchmarks/adaptive_budget.py``;
:data:`DEFAULT_MIN_SUCCESS` says why).

**The stopping rule** (:func:`label_from`, applied per round by the Monte Carlo annotator and
OmegaPRM's probes): a step's hard label is decided positive when ``p_above >= confidence``
and at least one rollout was correct, negative when ``p_above <= 1 - confidence``; before
``min_rollouts`` rollouts nothing is decided; a step still undecided after ``max_rollouts``
is unknown with reason :data:`REASON_UNDECIDED`, never guessed. The "one correct rollout"
condition matters at small floors only: there the prior alone puts ``P(p > m)`` above the
confidence (uniform prior, m = 0.05, 2 failures: 0.95^3 = 0.86); on the planted benchmark
(τ = 0, floor 0.05, budget 2..24 at 0.85) the pure posterior rule decided every step after 2
rollouts with 40% of the labels wrong, against 7% for this rule.

**The futility rule** (``budget.futility``, off by default; :func:`futile`): a step whose
chance of being decided by ``max_rollouts`` (:func:`decide_chance`) is at most ``futility``
stops undecided at once.

**An informative prior** (:func:`fit_prior`): the Beta prior that maximises the marginal
likelihood of a pilot's step counts, which ``steplabel plan`` prints as ``monte_carlo.prior``
lines for the manifest (the dataset stays a function of its manifest) and uses for its
forecast of the budget.

The incomplete beta function comes from mpmath (arbitrary precision, a sympy dependency);
quantiles bisect it. Both are cached: counts are small integers, so a job meets few distinct
posteriors (a quantile costs ~35 evaluations, a few milliseconds, the first time).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import mpmath
import numpy as np

from steplabel.schemas.annotators import (  # the config records, re-exported here
    DEFAULT_MIN_SUCCESS,
    BetaPrior,
    RolloutBudget,
    threshold_of,
)

#: Level of the equal-tailed credible interval recorded per step (5% and 95% quantiles).
CREDIBLE_LEVEL = 0.9
#: Reason of a hard label left unknown because ``max_rollouts`` did not decide it.
REASON_UNDECIDED = "undecided"


_QUANTILE_TOLERANCE = 1e-10


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@lru_cache(maxsize=65536)
def beta_cdf(x: float, a: float, b: float) -> float:
    """``P(X <= x)`` for ``X ~ Beta(a, b)``: the regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The series converges fast below the mean; above it use I_x(a, b) = 1 - I_{1-x}(b, a).
    if x <= a / (a + b):
        return float(mpmath.betainc(a, b, 0, x, regularized=True))
    return 1.0 - float(mpmath.betainc(b, a, 0, 1.0 - x, regularized=True))


@lru_cache(maxsize=16384)
def beta_quantile(q: float, a: float, b: float) -> float:
    """The ``q``-quantile of ``Beta(a, b)`` for ``q`` in [0, 1] (bisection to 1e-10)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    low, high = 0.0, 1.0
    while high - low > _QUANTILE_TOLERANCE:
        mid = 0.5 * (low + high)
        if beta_cdf(mid, a, b) < q:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def prob_above(threshold: float, successes: int, failures: int, prior: BetaPrior) -> float:
    """``P(p > threshold)`` under the posterior ``Beta(a + successes, b + failures)``."""
    return 1.0 - beta_cdf(threshold, prior.a + successes, prior.b + failures)


@dataclass(frozen=True)
class StepPosterior:
    """The posterior of one step's success rate from its known rollouts.

    ``mean`` in (0, 1) is the soft label; ``low``/``high`` bound the equal-tailed credible
    interval at ``level``; ``p_above`` is ``P(p > threshold)``.
    """

    successes: int
    failures: int
    mean: float
    low: float
    high: float
    level: float
    threshold: float
    p_above: float


def posterior(successes: int, failures: int, *, prior: BetaPrior = BetaPrior(),
              threshold: float, level: float = CREDIBLE_LEVEL) -> StepPosterior:
    """The posterior of a step with ``successes`` correct and ``failures`` incorrect rollouts
    (unknown rollouts are not passed: they are neither)."""
    if successes < 0 or failures < 0:
        raise ValueError(f"counts must be >= 0, got {successes!r}, {failures!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    a, b = prior.a + successes, prior.b + failures
    tail = (1.0 - level) / 2
    return StepPosterior(
        successes=successes,
        failures=failures,
        mean=a / (a + b),
        low=beta_quantile(tail, a, b),
        high=beta_quantile(1.0 - tail, a, b),
        level=level,
        threshold=threshold,
        p_above=1.0 - beta_cdf(threshold, a, b),
    )


def label_from(p_above: float, confidence: float) -> bool | None:
    """The hard label ``p_above`` decides at ``confidence``: True, False or None (not yet)."""
    if p_above >= confidence:
        return True
    if 1.0 - p_above >= confidence:  # not p_above <= 1 - confidence: 1 - 0.9 < 0.1 in floats
        return False
    return None


def budget_label(successes: int, failures: int, *, threshold: float, prior: BetaPrior,
                 confidence: float) -> bool | None:
    """The hard label the budget's rule gives known counts (None: not decided): the posterior
    decides at ``confidence``, and a positive needs at least one correct rollout (the prior
    alone is no evidence; see the module docstring)."""
    label = label_from(prob_above(threshold, successes, failures, prior), confidence)
    return None if label is True and successes == 0 else label


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


@lru_cache(maxsize=65536)
def decide_chance(successes: int, failures: int, sampled: int, *, budget: RolloutBudget,
                  threshold: float, prior: BetaPrior) -> float:
    """The chance that the budget's later rounds decide a step that is undecided after
    ``sampled`` rollouts (``successes`` and ``failures`` of them known): every later rollout
    known, and correct with the probability the posterior gives it (a Pólya urn: a round of m
    brings j successes with the Beta-Binomial probability ``C(m, j) B(a' + j, b' + m - j) /
    B(a', b')``). Unknown rollouts would only lower it. 0.0 exactly when no outcome of the
    later rollouts decides the step (the futility rule's 0)."""
    size = budget.next_round(sampled)
    if size <= 0:
        return 0.0
    a, b = prior.a + successes, prior.b + failures
    chance = 0.0
    for j in range(size + 1):
        weight = math.exp(math.log(math.comb(size, j)) + _log_beta(a + j, b + size - j)
                          - _log_beta(a, b))
        s, f = successes + j, failures + size - j
        if budget_label(s, f, threshold=threshold, prior=prior,
                        confidence=budget.confidence) is not None:
            chance += weight
        else:
            chance += weight * decide_chance(s, f, sampled + size, budget=budget,
                                             threshold=threshold, prior=prior)
    return chance


def futile(successes: int, failures: int, sampled: int, *, budget: RolloutBudget,
           threshold: float, prior: BetaPrior) -> bool:
    """The futility rule (:attr:`RolloutBudget.futility`): an undecided step whose chance of
    being decided by ``max_rollouts`` is at most ``futility`` stops now, undecided."""
    if budget.futility is None or sampled >= budget.max_rollouts:
        return False
    return decide_chance(successes, failures, sampled, budget=budget, threshold=threshold,
                         prior=prior) <= budget.futility


# --------------------------------------------------------------------------------------------
# An informative prior fitted to a pilot's counts (empirical Bayes)

#: Bounds of a fitted prior's ``a`` and ``b``. Rates exactly 0 or 1 (a prefix past an error, a
#: step any continuation finishes) drive the maximum-likelihood fit towards ``a, b -> 0`` (point
#: masses at 0 and 1); the floor keeps the prior a proper Beta, and the ceiling stands for "all
#: steps share one rate" (a + b = 2000 is worth 2000 rollouts).
FIT_BOUNDS = (0.01, 1000.0)


@dataclass(frozen=True)
class PriorFit:
    """A Beta prior fitted to step counts by maximum marginal (Beta-Binomial) likelihood.

    ``prior``: the fit, ``a`` and ``b`` rounded to 3 significant digits (what a manifest
    holds); ``steps``: the steps with a known rollout it was fitted on; ``log_likelihood``: the
    log marginal likelihood of their rollouts at the fit; ``at_bound``: a parameter stopped at
    :data:`FIT_BOUNDS`; ``iterations`` of the fixed point."""

    prior: BetaPrior
    steps: int
    log_likelihood: float
    at_bound: bool
    iterations: int


def _rising_harmonic(counts: np.ndarray, x: float, top: int) -> np.ndarray:
    """``psi(x + n) - psi(x) = sum_{j < n} 1 / (x + j)`` for each integer ``n`` in ``counts``."""
    partial = np.concatenate(([0.0], np.cumsum(1.0 / (x + np.arange(top)))))
    return partial[counts]


def log_marginal(counts: Iterable[tuple[int, int]], prior: BetaPrior) -> float:
    """``sum log B(a + s, b + f) / B(a, b)`` over ``(successes, failures)`` pairs: the log
    likelihood of the steps' rollout sequences when each step's rate is drawn from the prior
    (the binomial coefficients are left out: they do not depend on the prior)."""
    a, b = prior.a, prior.b

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return sum(n * (log_beta(a + s, b + f) - log_beta(a, b))
               for (s, f), n in Counter(counts).items())


def fit_prior(counts: Iterable[tuple[int, int]], *, tolerance: float = 1e-10,
              max_iterations: int = 100000) -> PriorFit:
    """The Beta prior that maximises the marginal likelihood of steps' ``(successes,
    failures)`` counts (unknown rollouts left out, as in the posterior): empirical Bayes, the
    prior a pilot's steps say their rates are drawn from.

    Minka's fixed point for the Polya distribution ("Estimating a Dirichlet distribution",
    2000, eq. 55), monotone in the likelihood, from the uniform prior (1, 1):
    ``a <- a * sum_i [psi(a + s_i) - psi(a)] / sum_i [psi(a + b + n_i) - psi(a + b)]``, and
    ``b`` alike; with integer counts each digamma difference is a finite sum. The stopping rule
    of the pilot's rollouts (fixed k, decided, an adaptive budget) depends only on rollouts
    already seen, so it leaves the likelihood unchanged. Steps without a known rollout say
    nothing and are skipped. ``a`` and ``b`` are clipped to :data:`FIT_BOUNDS`.
    """
    pairs = [(int(s), int(f)) for s, f in counts]
    if any(s < 0 or f < 0 for s, f in pairs):
        raise ValueError("counts must be >= 0")
    pairs = [(s, f) for s, f in pairs if s + f > 0]
    if not pairs:
        raise ValueError("no step with a known rollout to fit a prior on")
    weighted = Counter(pairs)
    succ = np.array([s for s, _ in weighted], dtype=np.int64)
    fail = np.array([f for _, f in weighted], dtype=np.int64)
    n = succ + fail
    w = np.array(list(weighted.values()), dtype=float)
    low, high = FIT_BOUNDS
    a = b = 1.0
    top = int(n.max())
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        denominator = float(w @ _rising_harmonic(n, a + b, top))
        new_a = a * float(w @ _rising_harmonic(succ, a, top)) / denominator
        new_b = b * float(w @ _rising_harmonic(fail, b, top)) / denominator
        new_a, new_b = min(max(new_a, low), high), min(max(new_b, low), high)
        done = abs(new_a - a) <= tolerance * a and abs(new_b - b) <= tolerance * b
        a, b = new_a, new_b
        if done:
            break
    prior = BetaPrior(float(f"{a:.3g}"), float(f"{b:.3g}"))
    return PriorFit(prior=prior, steps=int(w.sum()),
                    log_likelihood=log_marginal(pairs, prior),
                    at_bound=any(x <= low or x >= high for x in (a, b)),
                    iterations=iterations)
