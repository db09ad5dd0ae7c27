"""A small job end to end on the real vLLM engine with the embedded model."""

import json
from pathlib import Path

import pytest

from steplabel.dataset import storage
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    source = base / "problems.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in [
        {"id": "a", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
         "answer": "7"},
        {"id": "b", "question": "There are 9 birds on a tree and 5 fly away. How many are left?",
         "answer": "4"},
    ]) + "\n")
    manifest = manifest_from_dict({
        "name": "real-small",
        "seed": 5,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "vllm", "model": "embedded", "dtype": "float32",
                              "max_model_len": 1024}},
        "policy": {"samples": 2, "sampling": {"temperature": 0.8, "max_tokens": 64}},
        "monte_carlo": {"rollouts": 2, "sampling": {"temperature": 0.8, "max_tokens": 40}},
        "omegaprm": {"rollouts": 2, "prefilter_rollouts": 4, "search_limit": 1,
                     "sampling": {"temperature": 0.8, "max_tokens": 64}},
        "judge": {"response_prefix": "The earliest wrong paragraph is \\boxed{",
                  "sampling": {"temperature": 0.0, "max_tokens": 4, "stop": ["}"]}},
        "consensus": {},
        "runner": {"num_shards": 1},
    })
    out = base / "out"
    return manifest, out, run_job(manifest, out_dir=str(out))


def test_real_job_completes_and_accounts_for_every_problem(small_job):
    _, out, result = small_job
    assert (out / "COMPLETED").exists()
    assert result.stats["reconciliation"]["ok"]
    assert result.info["rows"]["trajectories"] + result.info["rows"]["rejected"] == 4


def test_real_job_records(small_job):
    manifest, out, _ = small_job
    rows = list(storage.iter_rows(str(out), "trajectories")) + list(
        storage.iter_rows(str(out), "rejected"))
    for row in rows:
        steps = row["steps"]
        assert steps and all(s.strip() for s in steps)
        assert row["cost_policy"]["generated_tokens"] > 0
        if row["policy_truncated"]:  # cut off at max_tokens: rejected, nothing spent on it
            assert row["consensus_reason"] == "policy_truncated" and row["mc_values"] is None
            assert row["cost_mc"]["rollouts"] == row["cost_judge"]["requests"] == 0
            continue
        assert len(row["mc_n_correct"]) == len(steps)
        last = len(steps) - 1
        for t, (correct, total, unknown, cut, value) in enumerate(zip(
                row["mc_n_correct"], row["mc_n_total"], row["mc_n_unknown"],
                row["mc_n_truncated"], row["mc_values"])):
            # No rollout from the complete solution: its own answer is its single "rollout".
            assert 0 <= correct <= total and total + unknown == (1 if t == last else 2)
            # No cut-off rollout became a 0: it is unknown, outside the value's denominator.
            assert cut <= unknown
            assert value == (correct / total if total else None)
        assert row["cost_mc"]["rollouts"] == 2 * last
        assert row["cost_judge"]["requests"] == 1
        assert len(row["provenance"]["policy_weights_sha256"]) == 64
        assert row["provenance"]["manifest_hash"] == manifest.hash
        assert row["consensus_reason"] in {"agree", "disagree", "mc_unknown", "judge_unknown",
                                           "cannot_agree", "policy_truncated"}
    lock = json.loads((out / "manifest.lock.json").read_text())
    assert len(lock["models"]["policy"]["weights_sha256"]) == 64
