"""Explicit Arrow schemas of every output, never inferred from data: each is derived from its
typed row record in :mod:`steplabel.schemas.rows`.

Sentinels: a first-error index is ``-1`` when every step is correct and null when unknown.
Label lists hold null where a label is unknown (all rollouts ungradable) or truncated.
"""

from __future__ import annotations

import pyarrow as pa

from steplabel.schemas import rows
from steplabel.schemas.critiques import CRITIQUE_SCHEMA

# 1.1: trajectories.judge_reason; 1.2: cost records without cached_tokens (a run metric now);
# 1.3: trajectories' per-step posterior (mc_posterior_mean, mc_interval_low/high, mc_p_above),
# mc_rollouts_spent and mc_label_reasons ("undecided"), and the critiques output; 1.4:
# critiques.omegaprm_rollout_id (a critique of one of OmegaPRM's searched rollouts) and OmegaPRM
# states' posterior (mc_posterior_mean, mc_interval_low/high, mc_p_above, mc_rollouts_spent,
# mc_label_reason)
SCHEMA_VERSION = "1.4"

# The schemas come from the typed row records (schemas/rows.py), field by field.
COST = rows.COST
PROVENANCE = rows.PROVENANCE
TRAJECTORY = rows.schema_of(rows.Trajectory)
OMEGAPRM_STATE = rows.schema_of(rows.OmegaPRMState)
OMEGAPRM_PAIR = rows.schema_of(rows.OmegaPRMPair)
OMEGAPRM_SEARCH = rows.schema_of(rows.OmegaPRMSearch)
FILTERED = rows.schema_of(rows.Filtered)
DEAD_LETTER = rows.schema_of(rows.DeadLetter)

#: Output directory name -> schema.
OUTPUTS: dict[str, pa.Schema] = {
    "trajectories": TRAJECTORY,
    "rejected": TRAJECTORY,
    "omegaprm_states": OMEGAPRM_STATE,
    "omegaprm_pairs": OMEGAPRM_PAIR,
    "omegaprm_searches": OMEGAPRM_SEARCH,
    "filtered": FILTERED,
    "dead_letter": DEAD_LETTER,
    "critiques": CRITIQUE_SCHEMA,
}

#: Where each output lives under the dataset directory.
OUTPUT_DIRS: dict[str, str] = {
    "trajectories": "trajectories",
    "rejected": "rejected",
    "omegaprm_states": "omegaprm/states",
    "omegaprm_pairs": "omegaprm/pairs",
    "omegaprm_searches": "omegaprm/searches",
    "filtered": "filtered",
    "dead_letter": "dead_letter",
    "critiques": "critiques",
}


def to_table(output: str, rows: list[dict]) -> pa.Table:
    """Rows to a table with the output's explicit schema; a mismatch raises at once."""
    return pa.Table.from_pylist(rows, schema=OUTPUTS[output])
