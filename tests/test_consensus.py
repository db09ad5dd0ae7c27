"""Consensus filter: the full truth table and the hard labels of kept trajectories."""

from __future__ import annotations

import itertools

import pytest

from steplabel.annotators.consensus import (
    CONSENSUS_REASONS,
    ConsensusDecision,
    consensus,
    consensus_labels,
)

pytestmark = pytest.mark.unit

INDICES = [None, -1, 0, 1, 3]


def _expected(mc, judge):
    if mc is None:
        return False, "mc_unknown"
    if judge is None:
        return False, "judge_unknown"
    return (True, "agree") if mc == judge else (False, "disagree")


@pytest.mark.parametrize("mc, judge", list(itertools.product(INDICES, INDICES)))
def test_truth_table(mc, judge):
    decision = consensus(mc, judge)
    keep, reason = _expected(mc, judge)
    assert decision == ConsensusDecision(keep, reason, mc, judge)
    assert decision.reason in CONSENSUS_REASONS
    assert decision.first_error == (mc if keep else None)


def test_truth_table_named_cases():
    # Spelled out, so the table above is not the only statement of the rule.
    assert consensus(-1, -1).keep and consensus(-1, -1).reason == "agree"
    assert consensus(-1, -1).first_error == -1
    assert consensus(2, 2).first_error == 2
    assert consensus(0, -1).reason == "disagree"
    assert consensus(-1, 0).reason == "disagree"
    assert consensus(1, 2).reason == "disagree"
    assert consensus(None, 2).reason == "mc_unknown"
    assert consensus(None, None).reason == "mc_unknown"
    assert consensus(2, None).reason == "judge_unknown"
    assert consensus(-1, None).reason == "judge_unknown"
    assert not any(consensus(a, b).keep for a, b in [(None, None), (None, -1), (-1, None), (0, 1)])


@pytest.mark.parametrize("bad", [-2, 1.0, True, "1"])
def test_consensus_rejects_non_indices(bad):
    with pytest.raises(ValueError, match="mc_first_error"):
        consensus(bad, 0)
    with pytest.raises(ValueError, match="judge_first_error"):
        consensus(0, bad)


@pytest.mark.parametrize(
    "first_error, num_steps, labels",
    [
        (-1, 4, [True, True, True, True]),
        (-1, 1, [True]),
        (-1, 0, []),
        (0, 4, [False]),
        (2, 4, [True, True, False]),
        (3, 4, [True, True, True, False]),
    ],
)
def test_consensus_labels(first_error, num_steps, labels):
    assert consensus_labels(first_error, num_steps) == labels


def test_consensus_labels_stop_at_first_error():
    for num_steps in range(1, 9):
        for e in range(num_steps):
            labels = consensus_labels(e, num_steps)
            assert len(labels) == e + 1
            assert labels[-1] is False and all(labels[:-1])


@pytest.mark.parametrize("first_error, num_steps", [(4, 4), (-2, 4), (0, 0), (0, -1), (True, 3)])
def test_consensus_labels_rejects_out_of_range(first_error, num_steps):
    with pytest.raises(ValueError):
        consensus_labels(first_error, num_steps)
