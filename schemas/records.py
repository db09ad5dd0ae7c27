"""Explicit Arrow schemas of every output, never inferred from data.

Sentinels: a first-error index is ``-1`` when every step is correct and null when unknown.
Label lists hold null where a label is unknown (all rollouts ungradable) or truncated.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.0"

COST = pa.struct(
    [
        ("requests", pa.int64()),
        ("rollouts", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("generated_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
    ]
)

PROVENANCE = pa.struct(
    [
        ("steplabel_version", pa.string()),
        ("manifest_hash", pa.string()),
        ("run_seed", pa.int64()),
        ("policy_model", pa.string()),
        ("policy_weights_sha256", pa.string()),
        ("completer_model", pa.string()),
        ("completer_weights_sha256", pa.string()),
        ("judge_model", pa.string()),
        ("judge_weights_sha256", pa.string()),
        ("engine_version", pa.string()),
        ("policy_sampling", pa.string()),  # JSON
        ("mc_sampling", pa.string()),  # JSON
        ("judge_sampling", pa.string()),  # JSON
        ("policy_seed", pa.int64()),
        ("splitter", pa.string()),  # JSON {"name", "params"}
        ("policy_template_id", pa.string()),
        ("policy_template_sha256", pa.string()),
        ("judge_template_id", pa.string()),
        ("judge_template_sha256", pa.string()),
        ("annotators", pa.string()),  # JSON {name: version/settings}
        ("grader_version", pa.string()),
    ]
)

TRAJECTORY = pa.schema(
    [
        ("problem_id", pa.string()),
        ("source", pa.string()),
        ("solution_index", pa.int32()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("solution", pa.string()),
        ("steps", pa.list_(pa.string())),
        ("final_answer", pa.string()),
        ("final_answer_correct", pa.bool_()),  # null: outcome unknown
        ("outcome_reason", pa.string()),
        ("policy_truncated", pa.bool_()),  # the policy hit max_tokens: rejected, unlabelled
        # Monte Carlo (Math-Shepherd): per-step raw counts, values and labels
        ("mc_n_correct", pa.list_(pa.int32())),
        ("mc_n_total", pa.list_(pa.int32())),  # graded rollouts: correct + incorrect
        ("mc_n_unknown", pa.list_(pa.int32())),  # ungradable rollouts, outside the total
        ("mc_n_truncated", pa.list_(pa.int32())),  # cut off at max_tokens (unknown by default)
        ("mc_values", pa.list_(pa.float64())),
        ("hard_labels", pa.list_(pa.bool_())),
        ("soft_labels", pa.list_(pa.float64())),
        ("mc_first_error", pa.int32()),
        # OmegaPRM binary search on this trajectory (when it is run on policy samples)
        ("omegaprm_first_error", pa.int32()),
        # LLM judge
        ("judge_first_error", pa.int32()),
        ("judge_agreement", pa.float64()),
        ("judge_votes", pa.list_(pa.int32())),
        ("judge_replies", pa.list_(pa.string())),
        ("judge_parse_reasons", pa.list_(pa.string())),
        ("judge_finish_reasons", pa.list_(pa.string())),  # "length": cut off at max_tokens
        # Consensus
        ("consensus_keep", pa.bool_()),
        ("consensus_reason", pa.string()),
        ("labels", pa.list_(pa.bool_())),  # final hard labels up to and including the error
        ("label_source", pa.string()),
        ("cost_policy", COST),
        ("cost_mc", COST),
        ("cost_judge", COST),
        ("provenance", PROVENANCE),
    ]
)

OMEGAPRM_STATE = pa.schema(
    [
        ("record_type", pa.string()),  # root | probe | completion
        ("problem_id", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("tree_id", pa.string()),
        ("node_id", pa.string()),
        # Tree states: the longest known-good (MC > 0) state whose prefix is a proper prefix of
        # this one; null at the root. after_error rows: the longest MC = 0 prefix they extend.
        ("parent_id", pa.string()),
        ("after_error", pa.bool_()),  # extends an MC = 0 prefix: estimated, but off the tree
        ("depth", pa.int32()),  # prefix length in pieces
        ("prefix", pa.string()),  # the solution prefix of this state
        ("action", pa.string()),  # text added to the parent's prefix
        ("action_pieces", pa.int32()),  # >= 1
        ("single_step", pa.bool_()),  # the action is exactly one piece (step)
        ("mc_value", pa.float64()),  # null: no known rollout (never 0 for lack of one)
        ("hard_label", pa.bool_()),
        ("n_correct", pa.int32()),
        ("n_total", pa.int32()),  # known rollouts: correct + incorrect
        ("n_unknown", pa.int32()),
        ("n_truncated", pa.int32()),  # cut off at max_tokens (unknown by default)
        ("rollout_of", pa.string()),  # completion: the state whose rollout it is; else null
        ("manifest_hash", pa.string()),
        ("completer_model", pa.string()),
    ]
)

OMEGAPRM_PAIR = pa.schema(
    [
        ("problem_id", pa.string()),
        ("tree_id", pa.string()),
        ("parent_id", pa.string()),
        ("prefix", pa.string()),
        ("node_a", pa.string()),
        ("node_b", pa.string()),
        ("action_a", pa.string()),
        ("action_b", pa.string()),
        ("mc_a", pa.float64()),
        ("mc_b", pa.float64()),
        ("preference_a", pa.float64()),  # P(a preferred to b) = (1 + p - q) / 2
        ("single_step", pa.bool_()),  # both actions are one piece (the paper's pairwise data)
        ("manifest_hash", pa.string()),
    ]
)

OMEGAPRM_SEARCH = pa.schema(
    [
        ("problem_id", pa.string()),
        ("tree_id", pa.string()),
        ("search_index", pa.int32()),
        ("start_node", pa.string()),
        ("rollout_id", pa.string()),
        ("pieces", pa.list_(pa.string())),  # the searched solution, cut into pieces
        ("start_index", pa.int32()),  # pieces of the start state's prefix (searched after it)
        ("first_error", pa.int32()),  # piece index of the first error; -1 none; null unknown
        ("reason", pa.string()),  # located | probe_unknown (no known rollout) | empty_range
        ("rollouts_used", pa.int32()),
        ("rollouts_truncated", pa.int32()),  # of rollouts_used, cut off at max_tokens
        ("manifest_hash", pa.string()),
    ]
)

FILTERED = pa.schema(
    [
        ("problem_id", pa.string()),
        ("source", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("n_correct", pa.int32()),
        ("n_total", pa.int32()),
        ("n_unknown", pa.int32()),
        ("n_truncated", pa.int32()),  # of the pre-filter rollouts, cut off at max_tokens
        ("cost", COST),
        ("manifest_hash", pa.string()),
    ]
)

DEAD_LETTER = pa.schema(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("problem_id", pa.string()),  # null when the record had none we could read
        ("source", pa.string()),
        ("original", pa.string()),  # the original record, as JSON or as escaped text
        ("manifest_hash", pa.string()),
    ]
)

#: Output directory name -> schema.
OUTPUTS: dict[str, pa.Schema] = {
    "trajectories": TRAJECTORY,
    "rejected": TRAJECTORY,
    "omegaprm_states": OMEGAPRM_STATE,
    "omegaprm_pairs": OMEGAPRM_PAIR,
    "omegaprm_searches": OMEGAPRM_SEARCH,
    "filtered": FILTERED,
    "dead_letter": DEAD_LETTER,
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
}


def empty_cost() -> dict[str, int]:
    return {"requests": 0, "rollouts": 0, "prompt_tokens": 0, "generated_tokens": 0,
            "cached_tokens": 0}


def to_table(output: str, rows: list[dict]) -> pa.Table:
    """Rows to a table with the output's explicit schema; a mismatch raises at once."""
    return pa.Table.from_pylist(rows, schema=OUTPUTS[output])
