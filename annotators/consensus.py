"""Consensus filtering of Monte Carlo labels with an LLM judge [QL §3.1.3, §4.1].

A trajectory is kept only when the Monte Carlo first-error index and the judge's first-error
index are the same, "no error" included (``-1 == -1`` counts as agreement). Kept trajectories
get hard labels up to and including the first error (:func:`consensus_labels`); the rest are
rejected with both indices and a reason, and go to a side output rather than being lost.

Index convention: ``-1`` = no error, ``0..M-1`` = the earliest wrong step, ``None`` = unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

REASON_AGREE = "agree"
REASON_DISAGREE = "disagree"
REASON_MC_UNKNOWN = "mc_unknown"
REASON_JUDGE_UNKNOWN = "judge_unknown"
#: Consensus-guided Monte Carlo stopped once the judge's first error could no longer be matched
#: (the final answer's grade or a step's label rules it out); MC's own first error is unknown.
REASON_CANNOT_AGREE = "cannot_agree"
#: Every reason :func:`consensus` can give; all but ``agree`` are drop reasons.
CONSENSUS_REASONS = (REASON_AGREE, REASON_DISAGREE, REASON_MC_UNKNOWN, REASON_JUDGE_UNKNOWN,
                     REASON_CANNOT_AGREE)
#: A rejection before consensus: the policy's sample was cut off at ``max_tokens``, so it has no
#: final answer of its own and none of its steps is labelled (nothing is rolled out from it).
REASON_POLICY_TRUNCATED = "policy_truncated"
#: Every reason a ``rejected`` row can carry.
REJECT_REASONS = (REASON_POLICY_TRUNCATED,) + CONSENSUS_REASONS[1:]


@dataclass(frozen=True)
class ConsensusDecision:
    """Whether to keep a trajectory, and why.

    ``keep`` is True exactly when ``reason == "agree"``; then ``first_error`` is the agreed
    index (``-1..M-1``), else None. Both inputs are kept for the rejected-rows output.
    """

    keep: bool
    reason: str
    mc_first_error: int | None
    judge_first_error: int | None

    @property
    def first_error(self) -> int | None:
        return self.mc_first_error if self.keep else None


def _check_index(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"{name} must be None or an integer >= -1, got {value!r}")


def consensus(mc_first_error: int | None, judge_first_error: int | None, *,
              mc_stopped: str | None = None) -> ConsensusDecision:
    """Keep when both indices are known and equal (``-1 == -1`` included).

    ``mc_stopped``: why consensus-guided Monte Carlo stopped early (``judge_unknown``,
    ``cannot_agree``; see ``MonteCarloResult.stopped``); it is the reason then, since MC's index
    was left unknown on purpose. Otherwise the reasons, checked in this order:

    - ``mc_unknown``: the Monte Carlo index is None, whatever the judge says. This also covers
      "both unknown": the kept labels come from Monte Carlo, so a missing MC index is the
      reason the row cannot be used; a judge verdict could not rescue it.
    - ``judge_unknown``: the MC index is known but the judge's is None.
    - ``agree`` (kept) or ``disagree`` (rejected).

    Indices are None or integers >= -1; anything else raises ValueError (a bug upstream, not a
    label). The step count is not checked here: both annotators validated against it.
    """
    _check_index("mc_first_error", mc_first_error)
    _check_index("judge_first_error", judge_first_error)
    if mc_stopped is not None:
        if mc_stopped not in (REASON_JUDGE_UNKNOWN, REASON_CANNOT_AGREE):
            raise ValueError(f"mc_stopped must be judge_unknown or cannot_agree, got "
                             f"{mc_stopped!r}")
        reason = mc_stopped
    elif mc_first_error is None:
        reason = REASON_MC_UNKNOWN
    elif judge_first_error is None:
        reason = REASON_JUDGE_UNKNOWN
    elif mc_first_error == judge_first_error:
        reason = REASON_AGREE
    else:
        reason = REASON_DISAGREE
    return ConsensusDecision(
        keep=reason == REASON_AGREE,
        reason=reason,
        mc_first_error=mc_first_error,
        judge_first_error=judge_first_error,
    )


def consensus_labels(first_error: int, num_steps: int) -> list[bool]:
    """Hard step labels for a kept trajectory, as in Qwen's recipe [QL §4.1].

    ``first_error == -1``: all ``num_steps`` steps are correct, ``[True] * num_steps``.
    ``first_error == e`` in ``0..num_steps-1``: ``[True] * e + [False]``; steps after the first
    error get no label at all, since their correctness is ambiguous [PB §3.1; QL §2.1].

    Raises ValueError when ``num_steps < 0`` or ``first_error`` is not in ``-1..num_steps-1``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    if (isinstance(first_error, bool) or not isinstance(first_error, int)
            or not -1 <= first_error < num_steps):
        raise ValueError(
            f"first_error must be an integer in -1..{num_steps - 1}, got {first_error!r}"
        )
    if first_error == -1:
        return [True] * num_steps
    return [True] * first_error + [False]
