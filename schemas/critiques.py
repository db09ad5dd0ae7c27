"""The ``critiques/`` output: one row per sampled critique, kept or not, with why.

A critique is a critic model's step-by-step verification of one trajectory (ThinkPRM's form:
each step's verification ends with ``\\boxed{correct}`` or ``\\boxed{incorrect}``;
``annotators/critic.py`` gives the parse and verification rules). Rows are built with the
:class:`Critique` constructor (a misspelt or missing field fails at construction); the Arrow
schema is the dataclass (:data:`CRITIQUE_SCHEMA`), as for every row kind in ``schemas/rows.py``.

Index conventions (ProcessBench, 0-indexed): a first-error index is ``-1`` when every step is
correct and null when unknown. ``step_verdicts`` holds one entry per step: true (judged
correct), false (judged incorrect) or null (no verdict: a step after the critique's first
incorrect one that it did not verify); the whole list is null when the critique is unusable.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from steplabel.schemas.rows import COST, column, schema_of

_STR, _I32, _I64, _BOOL = pa.string(), pa.int32(), pa.int64(), pa.bool_()


@dataclass(frozen=True)
class Critique:
    """One sampled critique of one trajectory (a row of ``critiques/``).

    - ``problem_id``, ``solution_index``: the trajectory; ``sample_index``: which of the
      critic's samples (0-based; the request's ``n`` samples share its seed).
      ``omegaprm_rollout_id``: null for a policy sample (``solution_index`` is its sample
      index); for one of OmegaPRM's searched rollouts (``critic.trust: omegaprm``), its
      ``omegaprm_searches.rollout_id``, and ``solution_index`` is that search's
      ``search_index``.
    - ``question``, ``steps``: what was critiqued; ``tagged_steps``: the steps exactly as the
      critic saw them (``<paragraph_i>`` blocks).
    - ``critique``: the generated text as returned (stop strings are not part of it);
      ``finish_reason``: ``stop`` or ``length`` (cut off at ``max_tokens``: unusable).
    - ``parse_reason``: ``ok`` or why the critique is unusable (``truncated``,
      ``missing_verdict``, ``two_verdicts_for_step``, ``contradiction``, ...).
    - ``step_verdicts``: per step, true/false/null (module docstring); null when unusable.
    - ``critique_first_error``: the first step the critique calls incorrect, ``-1`` when it
      calls every step correct, null when unusable.
    - ``trusted_first_error``, ``trusted_labels``, ``trusted_source``: the labels the verdicts
      were checked against (``trusted_labels``: true up to the first error, then false; nothing
      after it), and which annotator gave them (``consensus``, ``monte_carlo``, ``omegaprm``;
      ``none`` when there were none). Null first error: not verified.
    - ``agrees``: the verdicts agree with the trusted labels (null: unusable, or no trusted
      labels); ``kept``: the critique is kept as training data; ``reason``: ``kept``, or why
      not (``unusable:<parse_reason>``, ``disagrees_at_step_<k>``, ``not_kept_quota``,
      ``no_trusted_labels``).
    - ``seed``: the request's sampling seed; ``cost``: :class:`~steplabel.schemas.rows.Cost`.
      One request samples all of a solution's critiques: its ``requests`` (1) and
      ``prompt_tokens`` are charged to the row of sample 0, each row has ``rollouts`` 1 and its
      own ``generated_tokens``, so the rows of a solution sum to what the request spent.
    - Provenance: ``critic_model``, ``critic_version`` (parser and verification rules),
      ``template_id`` and ``template_sha256``, ``critic_sampling`` (JSON), ``manifest_hash``.
    """

    problem_id: str = column(_STR)
    solution_index: int = column(_I32)
    sample_index: int = column(_I32)
    question: str = column(_STR)
    steps: list = column(pa.list_(_STR))
    tagged_steps: str = column(_STR)
    critique: str = column(_STR)
    finish_reason: str = column(_STR)
    parse_reason: str = column(_STR)
    step_verdicts: list | None = column(pa.list_(_BOOL))
    critique_first_error: int | None = column(_I32)
    trusted_first_error: int | None = column(_I32)
    trusted_labels: list | None = column(pa.list_(_BOOL))
    trusted_source: str = column(_STR)
    agrees: bool | None = column(_BOOL)
    kept: bool = column(_BOOL)
    reason: str = column(_STR)
    seed: int = column(_I64)
    cost: dict = column(COST)
    critic_model: str = column(_STR)
    critic_version: str = column(_STR)
    template_id: str = column(_STR)
    template_sha256: str = column(_STR)
    critic_sampling: str = column(_STR)  # JSON
    manifest_hash: str = column(_STR)
    omegaprm_rollout_id: str | None = column(_STR, default=None)


CRITIQUE_SCHEMA = schema_of(Critique)
