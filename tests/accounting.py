"""Reconciliation of a finished job, recounted from its shards (used by every reliability test).

The promise: every input row is accounted for exactly once, as a labelled problem (rows out:
trajectories, rejected, OmegaPRM states), a filtered problem (pre-filter drop, no usable
solution), or a dead-letter row (bad input at validation, or a problem whose labelling failed).
So ``rows in == problems out + filtered + dead letter``, and no problem is both labelled and
dead-lettered.
"""

from __future__ import annotations

from pathlib import Path

from steplabel.dataset import storage

LABELLED_OUTPUTS = ("trajectories", "rejected", "omegaprm_states")


def problem_ids(out: str, output: str) -> set[str]:
    return {row["problem_id"] for row in storage.iter_rows(out, output, columns=["problem_id"])}


def account(out: str) -> dict:
    """The accounting of a dataset directory, from its shards alone."""
    labelled = set().union(*(problem_ids(out, name) for name in LABELLED_OUTPUTS))
    filtered = problem_ids(out, "filtered") - labelled
    dead = list(storage.iter_rows(out, "dead_letter"))
    dead_input = [row for row in dead if row["stage"] == "validate"]
    dead_label = {row["problem_id"] for row in dead if row["stage"] != "validate"}
    return {
        "labelled": labelled,
        "filtered": filtered,
        "dead_input_rows": len(dead_input),
        "dead_label": dead_label,
        "dead_rows": dead,
        "accounted": len(labelled) + len(filtered) + len(dead_label) + len(dead_input),
    }


def assert_reconciled(result, out: str, *, rows_in: int) -> dict:
    """Assert that the job finished with every one of ``rows_in`` input rows accounted for,
    both in its own ``stats.json`` reconciliation and by an independent recount."""
    rec = result.stats["reconciliation"]
    assert rec["problems_in"] == rows_in, rec
    assert rec["ok"] and rec["accounted"] == rows_in, rec
    counted = account(out)
    assert counted["accounted"] == rows_in, {k: v for k, v in counted.items() if k != "dead_rows"}
    # A problem is labelled (or filtered) or dead-lettered, never both.
    assert not counted["dead_label"] & (counted["labelled"] | counted["filtered"])
    # Every dead-letter row says where and why, and keeps the original record.
    for row in counted["dead_rows"]:
        assert row["stage"] and row["reason"] and row["error"], row
        assert row["original"], row
    assert (Path(out) / storage.COMPLETED).exists()
    assert storage.temp_files(out) == []
    return counted


def dead_reasons(counted: dict, *, stage: str | None = None) -> list[str]:
    return sorted(row["reason"] for row in counted["dead_rows"]
                  if stage is None or row["stage"] == stage)
