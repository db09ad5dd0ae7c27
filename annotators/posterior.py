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

The incomplete beta function comes from mpmath (arbitrary precision, a sympy dependency);
quantiles bisect it. Both are cached: counts are small integers, so a job meets few distinct
posteriors (a quantile costs ~35 evaluations, a few milliseconds, the first time).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mpmath

from steplabel.schemas.config import check

#: Level of the equal-tailed credible interval recorded per step (5% and 95% quantiles).
CREDIBLE_LEVEL = 0.9
#: Reason of a hard label left unknown because ``max_rollouts`` did not decide it.
REASON_UNDECIDED = "undecided"
#: Default floor: success rates below 20% count as zero (a negative step). Chosen on the planted
#: benchmark (benchmarks/results/adaptive_budget.md, tau = 0 with 25% zero-rate steps): deciding
#: a zero step negative takes ln(1/(1-c)) / -ln(1-m) - 1 failures in a row (c = 0.85: 36 at
#: m = 0.05, 17 at 0.1, 11 at 0.15, 8 at 0.2), so at fixed k = 8's cost floors 0.05 and 0.1
#: leave too many steps undecided or overspend (distance to the targets 3.6 and 1.2); 0.2 came
#: closest (1.06). It is also what today's k = 8 labels can certify: 0 correct of 8 puts
#: P(p > 0.2) at 0.13 under a uniform prior. A smaller floor is a manifest setting, at the
#: price in rollouts the table shows.
DEFAULT_MIN_SUCCESS = 0.2

_QUANTILE_TOLERANCE = 1e-10


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class BetaPrior:
    """The prior ``Beta(a, b)`` of a step's success rate; ``a, b > 0`` (pseudo-counts of
    successes and failures). Uniform (1, 1) by default; Jeffreys is (0.5, 0.5)."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        check(_is_number(self.a) and self.a > 0, "a", "must be a number > 0", self.a)
        check(_is_number(self.b) and self.b > 0, "b", "must be a number > 0", self.b)


@dataclass(frozen=True)
class RolloutBudget:
    """The adaptive budget (``monte_carlo.budget``): rollouts in rounds until the hard label is
    decided at ``confidence``.

    - ``min_rollouts`` >= 1: the first round; nothing is decided before it.
    - ``max_rollouts`` >= ``min_rollouts``: a step still undecided then is unknown
      (``undecided``).
    - ``confidence`` in (0.5, 1): decide positive at ``P(p > threshold) >= confidence``,
      negative at ``<= 1 - confidence``.

    Each later round adds a quarter of the rollouts sampled so far, at least ``min_rollouts``
    and at most up to the max: 4, 8, 12, 16, 20, 25, 31, 32 for 4..32 (on the planted
    benchmark, quarter rounds spent ~5% fewer rollouts than half rounds for the same labels).
    """

    min_rollouts: int = 4
    max_rollouts: int = 32
    confidence: float = 0.9

    def __post_init__(self) -> None:
        check(isinstance(self.min_rollouts, int) and not isinstance(self.min_rollouts, bool)
              and self.min_rollouts >= 1, "min_rollouts", "must be an integer >= 1",
              self.min_rollouts)
        check(isinstance(self.max_rollouts, int) and not isinstance(self.max_rollouts, bool)
              and self.max_rollouts >= self.min_rollouts, "max_rollouts",
              f"must be an integer >= min_rollouts = {self.min_rollouts}", self.max_rollouts)
        check(_is_number(self.confidence) and 0.5 < self.confidence < 1.0, "confidence",
              "must be in (0.5, 1)", self.confidence)

    def next_round(self, sampled: int) -> int:
        """Rollouts of the next round after ``sampled`` (0 before the first); 0 at the max."""
        if sampled <= 0:
            return self.min_rollouts
        return max(0, min(self.max_rollouts - sampled, max(self.min_rollouts, sampled // 4)))


def threshold_of(tau: float, min_success: float) -> float:
    """The success rate the posterior is asked about: ``max(tau, min_success)``."""
    return max(float(tau), float(min_success))


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
