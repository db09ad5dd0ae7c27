"""Typed row records of every output, from which the Arrow schemas come.

One frozen dataclass per row kind; every field names its Arrow type (:func:`column`), so the
schema is the dataclass (:func:`schema_of`) and Parquet never infers one from data. Stages build
rows with these constructors (a misspelt or missing field fails at construction) and hand
:func:`as_row` dicts to Beam and the sink.

Sentinels: a first-error index is ``-1`` when every step is correct and null when unknown.
Label lists hold null where a label is unknown (all rollouts ungradable) or truncated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


def column(arrow_type: pa.DataType, *, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field stored as ``arrow_type``."""
    if default is dataclasses.MISSING:
        return field(metadata={"arrow": arrow_type})
    return field(default=default, metadata={"arrow": arrow_type})


def schema_of(record: type) -> pa.Schema:
    """The Arrow schema of a row dataclass: its fields, in order, with their declared types."""
    return pa.schema([(f.name, f.metadata["arrow"]) for f in dataclasses.fields(record)])


def struct_of(record: type) -> pa.DataType:
    return pa.struct(list(schema_of(record)))


def as_row(record) -> dict:
    """A row dict (nested records as dicts) for Beam, checkpoints and ``to_table``."""
    return dataclasses.asdict(record)


_STR, _I32, _I64, _F64, _BOOL = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()


@dataclass(frozen=True)
class Cost:
    """What a stage spent on one row's work: only what the manifest determines (requests,
    rollouts, prompt and generated tokens), so that a row is the same on every run.

    Scheduling-dependent measurements (prefix-cache hits, formerly ``cached_tokens`` here,
    before schema 1.2) are the run's, in ``run_metrics.json`` and ``stats.json``'s ``run``.
    """

    requests: int = column(_I64, default=0)
    rollouts: int = column(_I64, default=0)
    prompt_tokens: int = column(_I64, default=0)
    generated_tokens: int = column(_I64, default=0)


COST = struct_of(Cost)
#: The cost record's fields, in order (what stats sums); the token counts among them.
COST_FIELDS = tuple(f.name for f in dataclasses.fields(Cost))
COST_TOKEN_FIELDS = tuple(name for name in COST_FIELDS if name.endswith("_tokens"))


@dataclass(frozen=True)
class Provenance:
    """Where a trajectory row came from (seqio's ``PROVENANCE_KEYS`` in one place)."""

    steplabel_version: str = column(_STR)
    manifest_hash: str = column(_STR)
    run_seed: int = column(_I64)
    policy_model: str = column(_STR)
    policy_weights_sha256: str | None = column(_STR)
    completer_model: str | None = column(_STR)
    completer_weights_sha256: str | None = column(_STR)
    judge_model: str | None = column(_STR)
    judge_weights_sha256: str | None = column(_STR)
    engine_version: str | None = column(_STR)
    policy_sampling: str = column(_STR)  # JSON
    mc_sampling: str | None = column(_STR)  # JSON
    judge_sampling: str | None = column(_STR)  # JSON
    policy_seed: int | None = column(_I64)
    splitter: str = column(_STR)  # JSON {"name", "params"}
    policy_template_id: str = column(_STR)
    policy_template_sha256: str = column(_STR)
    judge_template_id: str | None = column(_STR)
    judge_template_sha256: str | None = column(_STR)
    annotators: str = column(_STR)  # JSON {name: version/settings}
    grader_version: str = column(_STR)


PROVENANCE = struct_of(Provenance)


@dataclass(frozen=True)
class Trajectory:
    """One policy sample with its labels (``trajectories``: kept; ``rejected``: not kept)."""

    problem_id: str = column(_STR)
    source: str = column(_STR)
    solution_index: int = column(_I32)
    question: str = column(_STR)
    gold_answer: str = column(_STR)
    solution: str = column(_STR)
    steps: list = column(pa.list_(_STR))
    final_answer: str | None = column(_STR, default=None)
    final_answer_correct: bool | None = column(_BOOL, default=None)  # null: outcome unknown
    outcome_reason: str | None = column(_STR, default=None)
    # the policy hit max_tokens: rejected, unlabelled
    policy_truncated: bool = column(_BOOL, default=False)
    # Monte Carlo (Math-Shepherd): per-step raw counts, values and labels
    mc_n_correct: list | None = column(pa.list_(_I32), default=None)
    mc_n_total: list | None = column(pa.list_(_I32), default=None)  # correct + incorrect
    mc_n_unknown: list | None = column(pa.list_(_I32), default=None)  # outside the total
    # cut off at max_tokens (unknown by default)
    mc_n_truncated: list | None = column(pa.list_(_I32), default=None)
    mc_values: list | None = column(pa.list_(_F64), default=None)
    hard_labels: list | None = column(pa.list_(_BOOL), default=None)
    soft_labels: list | None = column(pa.list_(_F64), default=None)
    mc_first_error: int | None = column(_I32, default=None)
    # The Beta posterior of each step's success rate (annotators/posterior.py, schema 1.3):
    # its mean (the posterior soft label), its 90% equal-tailed credible interval, and
    # P(rate > max(tau, min_success)); null where the step has no known rollout. The final step
    # is its graded answer: mean = bounds = 1 or 0. Filled under fixed k too (from the counts
    # and the prior).
    mc_posterior_mean: list | None = column(pa.list_(_F64), default=None)
    mc_interval_low: list | None = column(pa.list_(_F64), default=None)
    mc_interval_high: list | None = column(pa.list_(_F64), default=None)
    mc_p_above: list | None = column(pa.list_(_F64), default=None)
    # rollouts sampled from each step's prefix (0 for the final step and steps not estimated)
    mc_rollouts_spent: list | None = column(pa.list_(_I32), default=None)
    # why a step's hard label is null when it has known rollouts: "undecided" (the adaptive
    # budget's max_rollouts did not decide it); null otherwise
    mc_label_reasons: list | None = column(pa.list_(_STR), default=None)
    # OmegaPRM binary search on this trajectory (when it is run on policy samples)
    omegaprm_first_error: int | None = column(_I32, default=None)
    # LLM judge
    judge_first_error: int | None = column(_I32, default=None)
    judge_agreement: float | None = column(_F64, default=None)
    judge_votes: list | None = column(pa.list_(_I32), default=None)
    judge_replies: list | None = column(pa.list_(_STR), default=None)
    judge_parse_reasons: list | None = column(pa.list_(_STR), default=None)
    # why the verdict is what it is: ok, no_quorum, or the votes' most common parse reason
    judge_reason: str | None = column(_STR, default=None)
    # "length": cut off at max_tokens
    judge_finish_reasons: list | None = column(pa.list_(_STR), default=None)
    # Consensus
    consensus_keep: bool | None = column(_BOOL, default=None)
    consensus_reason: str | None = column(_STR, default=None)
    # final hard labels up to and including the error
    labels: list | None = column(pa.list_(_BOOL), default=None)
    label_source: str | None = column(_STR, default=None)
    cost_policy: dict | None = column(COST, default=None)
    cost_mc: dict | None = column(COST, default=None)
    cost_judge: dict | None = column(COST, default=None)
    provenance: dict | None = column(PROVENANCE, default=None)


@dataclass(frozen=True)
class OmegaPRMState:
    record_type: str = column(_STR)  # root | probe | completion
    problem_id: str = column(_STR)
    question: str = column(_STR)
    gold_answer: str = column(_STR)
    tree_id: str = column(_STR)
    node_id: str = column(_STR)
    # Tree states: the longest known-good (MC > 0) state whose prefix is a proper prefix of
    # this one; null at the root. after_error rows: the longest MC = 0 prefix they extend.
    parent_id: str | None = column(_STR)
    after_error: bool = column(_BOOL)  # extends an MC = 0 prefix: estimated, but off the tree
    depth: int = column(_I32)  # prefix length in pieces
    prefix: str = column(_STR)  # the solution prefix of this state
    action: str = column(_STR)  # text added to the parent's prefix
    action_pieces: int = column(_I32)  # >= 1
    single_step: bool = column(_BOOL)  # the action is exactly one piece (step)
    mc_value: float | None = column(_F64)  # null: no known rollout (never 0 for lack of one)
    hard_label: bool | None = column(_BOOL)
    n_correct: int = column(_I32)
    n_total: int = column(_I32)  # known rollouts: correct + incorrect
    n_unknown: int = column(_I32)
    n_truncated: int = column(_I32)  # cut off at max_tokens (unknown by default)
    # The Beta posterior of the state's success rate (schema 1.4), as a trajectory step's: its
    # mean, its 90% equal-tailed credible interval and P(rate > min_success), from the counts
    # and omegaprm.prior; null without a known rollout. A completion is its own graded answer:
    # mean = bounds = p_above = 1. Filled under fixed k too.
    mc_posterior_mean: float | None = column(_F64)
    mc_interval_low: float | None = column(_F64)
    mc_interval_high: float | None = column(_F64)
    mc_p_above: float | None = column(_F64)
    # rollouts sampled from this state's prefix (the pre-filter's at the root; 0: completion)
    mc_rollouts_spent: int = column(_I32)
    # why hard_label is null with known rollouts: "undecided" (the adaptive budget's
    # max_rollouts did not decide the probe); null otherwise
    mc_label_reason: str | None = column(_STR)
    rollout_of: str | None = column(_STR)  # completion: the state whose rollout it is
    manifest_hash: str = column(_STR)
    completer_model: str | None = column(_STR)


@dataclass(frozen=True)
class OmegaPRMPair:
    problem_id: str = column(_STR)
    tree_id: str = column(_STR)
    parent_id: str | None = column(_STR)
    prefix: str = column(_STR)
    node_a: str = column(_STR)
    node_b: str = column(_STR)
    action_a: str = column(_STR)
    action_b: str = column(_STR)
    mc_a: float | None = column(_F64)
    mc_b: float | None = column(_F64)
    preference_a: float | None = column(_F64)  # P(a preferred to b) = (1 + p - q) / 2
    single_step: bool = column(_BOOL)  # both actions are one piece (the paper's pairwise data)
    manifest_hash: str = column(_STR)


@dataclass(frozen=True)
class OmegaPRMSearch:
    problem_id: str = column(_STR)
    tree_id: str = column(_STR)
    search_index: int = column(_I32)
    start_node: str = column(_STR)
    rollout_id: str = column(_STR)
    pieces: list = column(pa.list_(_STR))  # the searched solution, cut into pieces
    start_index: int = column(_I32)  # pieces of the start state's prefix (searched after it)
    first_error: int | None = column(_I32)  # piece index of the first error; -1 none; null unknown
    reason: str = column(_STR)  # located | probe_unknown (no known rollout) | empty_range
    rollouts_used: int = column(_I32)
    rollouts_truncated: int = column(_I32)  # of rollouts_used, cut off at max_tokens
    manifest_hash: str = column(_STR)


@dataclass(frozen=True)
class Filtered:
    """A problem some stage set aside, with why (``no_usable_solution``, a pre-filter)."""

    problem_id: str = column(_STR)
    source: str = column(_STR)
    question: str = column(_STR)
    gold_answer: str = column(_STR)
    stage: str = column(_STR)
    reason: str = column(_STR)
    n_correct: int = column(_I32)
    n_total: int = column(_I32)
    n_unknown: int = column(_I32)
    n_truncated: int = column(_I32)  # of the pre-filter rollouts, cut off at max_tokens
    cost: dict = column(COST)
    manifest_hash: str = column(_STR)


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be read or labelled, with the reason and the original."""

    stage: str = column(_STR)
    reason: str = column(_STR)
    error: str = column(_STR)
    problem_id: str | None = column(_STR)  # null when the record had none we could read
    source: str | None = column(_STR)
    original: str | None = column(_STR)  # the original record, as JSON or as escaped text
    manifest_hash: str = column(_STR)


def dead_letter(*, stage: str, reason: str, error: str, manifest_hash: str,
                problem_id: str | None = None, source: str | None = None,
                original: str | None = None) -> dict:
    """A dead-letter row (the one constructor every stage uses): ``stage`` is where the record
    fell out (``read``, ``validate``, ``label``, ``evaluate``), ``reason`` the named drop
    counter (``dead_letter_<reason>``), ``error`` what went wrong, ``manifest_hash`` the job's
    (``evaluate``: its evaluation hash)."""
    return as_row(DeadLetter(stage=stage, reason=reason, error=error, problem_id=problem_id,
                             source=source, original=original, manifest_hash=manifest_hash))


# ---------------------------------------------------------------------------------------------
# The trajectory columns each annotator fills (a stage's ``Labels.fields``)


@dataclass(frozen=True)
class MonteCarloColumns:
    """What Monte Carlo fills of a trajectory row (the ``mc_*`` columns, the per-step labels
    and its cost); each field is the :class:`Trajectory` column of that name."""

    mc_n_correct: list
    mc_n_total: list
    mc_n_unknown: list
    mc_n_truncated: list
    mc_values: list
    hard_labels: list
    soft_labels: list
    mc_first_error: int | None
    mc_posterior_mean: list
    mc_interval_low: list
    mc_interval_high: list
    mc_p_above: list
    mc_rollouts_spent: list
    mc_label_reasons: list
    cost_mc: dict


@dataclass(frozen=True)
class JudgeColumns:
    """What the LLM judge fills of a trajectory row; each field is the :class:`Trajectory`
    column of that name."""

    judge_first_error: int | None
    judge_agreement: float | None
    judge_votes: list
    judge_replies: list
    judge_parse_reasons: list
    judge_reason: str
    judge_finish_reasons: list
    cost_judge: dict


def columns_of(record: type) -> tuple[str, ...]:
    """The trajectory columns an annotator's columns record fills."""
    return tuple(f.name for f in dataclasses.fields(record))
