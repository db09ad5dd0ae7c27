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
