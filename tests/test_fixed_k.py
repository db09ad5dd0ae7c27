"""Fixed k is what today's manifests mean (#26): the posterior columns are added, nothing else
moves. The rows of a scripted job over the columns schema 1.2 had, and the hashes of the job
manifests in ``jobs/``, are pinned to what the code before the adaptive budget produced."""

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from steplabel.annotators.posterior import CREDIBLE_LEVEL, posterior
from steplabel.dataset import storage
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import load_manifest
from test_pipeline import manifest_for, write_problems

#: The columns schema 1.3 added to trajectory rows.
POSTERIOR_COLUMNS = {"mc_posterior_mean", "mc_interval_low", "mc_interval_high", "mc_p_above",
                     "mc_rollouts_spent", "mc_label_reasons"}
#: The trajectory columns of schema 1.2 (before #26): the digest reads only these, so columns
#: that #26 or another change adds do not move it.
TRAJECTORY_1_2 = [
    "problem_id", "source", "solution_index", "question", "gold_answer", "solution", "steps",
    "final_answer", "final_answer_correct", "outcome_reason", "policy_truncated",
    "mc_n_correct", "mc_n_total", "mc_n_unknown", "mc_n_truncated", "mc_values", "hard_labels",
    "soft_labels", "mc_first_error", "omegaprm_first_error", "judge_first_error",
    "judge_agreement", "judge_votes", "judge_replies", "judge_parse_reasons", "judge_reason",
    "judge_finish_reasons", "consensus_keep", "consensus_reason", "labels", "label_source",
    "cost_policy", "cost_mc", "cost_judge"]
#: The columns schema 1.4 added to OmegaPRM state rows.
STATE_POSTERIOR_COLUMNS = {"mc_posterior_mean", "mc_interval_low", "mc_interval_high",
                           "mc_p_above", "mc_rollouts_spent", "mc_label_reason"}
#: Left out of the digest: they name the run's temporary source path (through the manifest
#: hash) and the code version (``provenance``, not in the list above either); and the columns
#: schema 1.4 added to OmegaPRM states (the digests are of the rows before them).
UNPINNED = {"provenance", "manifest_hash", *STATE_POSTERIOR_COLUMNS}
OUTPUTS = ["trajectories", "rejected", "omegaprm_states", "omegaprm_pairs", "omegaprm_searches",
           "filtered", "dead_letter"]
EMPTY = hashlib.sha256(b"").hexdigest()[:16]

#: Digests of every output of the scripted job (6 problems, seed 3; sorted canonical JSON of
#: the rows without the posterior and unpinned columns), as the code at d698ef8 (main before
#: the adaptive budget was merged) wrote them.
BEFORE = {
    "default": {"trajectories": "b7c143bae8326216", "rejected": "c43f27b36abd9c83"},
    "fixed": {"trajectories": "3b24668b7429a875", "rejected": "c43f27b36abd9c83"},
    "tau_0.5": {"trajectories": "7765592de6735146", "rejected": "02e2cd4b17b09baf"},
}
OMEGAPRM_BEFORE = {"omegaprm_states": "32af9225d827df0c", "omegaprm_pairs": EMPTY,
                   "omegaprm_searches": "e8af00633eaa8625", "filtered": EMPTY,
                   "dead_letter": EMPTY}
SETTINGS = {"default": {"rollouts": 4},
            "fixed": {"rollouts": 4, "stopping": "fixed"},
            "tau_0.5": {"rollouts": 4, "hard_threshold": 0.5}}

#: The job manifests' hashes with the source path relative to the repository (the hash holds
#: the resolved path): equal at d698ef8 and now, so their datasets keep their identity.
JOB_HASHES = {
    # The demo changed on purpose in #23 (one-step additions, a constrained judge).
    "demo": "df296d1aef3acd83f4cd78b4abb0ba16909b89c8316e36312e388b50f3e489eb",
    "gsm8k": "298dc2fdb009c12a1827dd1bd3a7ab07d8abb6e05251e8a278b3215e0f66d887",
    "math500": "9f15633de64e2db8e16c70a5c2d266c6ec5cbda1aabe208c538ad274e0934d8c",
}


def digests(out: Path) -> dict[str, str]:
    found = {}
    for output in OUTPUTS:
        if output in ("trajectories", "rejected"):
            rows = [json.dumps({k: row[k] for k in TRAJECTORY_1_2}, sort_keys=True)
                    for row in storage.iter_rows(str(out), output)]
        else:
            rows = [json.dumps({k: v for k, v in row.items() if k not in UNPINNED},
                               sort_keys=True)
                    for row in storage.iter_rows(str(out), output)]
        found[output] = hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16]
    return found


@pytest.fixture(scope="module", params=list(SETTINGS))
def fixed_k_job(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"fixed-k-{request.param}")
    source = write_problems(base / "problems.jsonl", 6)
    manifest = manifest_for(source, monte_carlo=SETTINGS[request.param])
    run_job(manifest, out_dir=str(base / "out"))
    return request.param, manifest, base / "out"


@pytest.mark.pipeline
def test_fixed_k_rows_are_what_they_were_before_the_posterior(fixed_k_job):
    name, manifest, out = fixed_k_job
    assert manifest.monte_carlo.budget is None
    assert digests(out) == {**BEFORE[name], **OMEGAPRM_BEFORE}


@pytest.mark.pipeline
def test_fixed_k_rows_carry_the_posterior_of_their_counts(fixed_k_job):
    """Under fixed k the posterior comes from the counts and the prior: Beta(1 + correct,
    1 + incorrect) per estimated step; no step is undecided; the final step is its answer."""
    _, manifest, out = fixed_k_job
    config = manifest.monte_carlo
    rows = [r for output in ("trajectories", "rejected") for r in storage.iter_rows(str(out),
                                                                                     output)]
    estimated = 0
    for row in rows:
        assert POSTERIOR_COLUMNS <= set(row)
        if row["mc_n_total"] is None:  # not labelled (e.g. policy cut off)
            continue
        assert row["mc_label_reasons"] == [None] * len(row["steps"])
        last = len(row["steps"]) - 1
        for t, (c, n, u) in enumerate(zip(row["mc_n_correct"], row["mc_n_total"],
                                          row["mc_n_unknown"])):
            spent = row["mc_rollouts_spent"][t]
            if t == last:
                assert spent == 0
                if n:  # the graded answer: certain
                    value = c / n
                    assert (row["mc_posterior_mean"][t], row["mc_interval_low"][t],
                            row["mc_interval_high"][t]) == (value, value, value)
                continue
            assert spent == n + u and spent <= config.rollouts
            if n == 0:
                assert row["mc_posterior_mean"][t] is None
                continue
            estimated += 1
            expected = posterior(c, n - c, prior=config.prior, threshold=config.threshold,
                                 level=CREDIBLE_LEVEL)
            assert row["mc_posterior_mean"][t] == pytest.approx((1 + c) / (2 + n))
            assert row["mc_interval_low"][t] == expected.low
            assert row["mc_interval_high"][t] == expected.high
            assert row["mc_p_above"][t] == expected.p_above
    assert estimated > 0


@pytest.mark.unit
def test_job_manifest_hashes_are_unchanged(repo_root):
    for name, expected in JOB_HASHES.items():
        manifest = load_manifest(repo_root / "jobs" / f"{name}.yaml")
        relative = os.path.relpath(manifest.source.path, repo_root)
        manifest = replace(manifest, source=replace(manifest.source, path=relative))
        assert manifest.hash == expected, name
        assert manifest.monte_carlo.budget is None
        assert not {"prior", "min_success", "budget"} & set(manifest.to_dict()["monte_carlo"])


@pytest.mark.unit
def test_demo_budget_is_the_demo_with_a_budget(repo_root):
    demo = load_manifest(repo_root / "jobs" / "demo.yaml").to_dict()
    budget = load_manifest(repo_root / "jobs" / "demo_budget.yaml").to_dict()
    assert budget["monte_carlo"].pop("budget") == {"min_rollouts": 2, "max_rollouts": 8,
                                                   "confidence": 0.8}
    assert budget.pop("name") == "demo-budget" and demo.pop("name") == "demo"
    assert budget == demo


@pytest.mark.pipeline
def test_omegaprm_state_rows_carry_the_posterior_of_their_counts(fixed_k_job):
    """Schema 1.4: OmegaPRM state rows carry the posterior of their counts under the omegaprm
    prior, asked about its min_success; a completion is its own answer; under fixed k nothing
    is undecided; stats counts the estimated states and their mean interval width."""
    _, manifest, out = fixed_k_job
    config = manifest.omegaprm
    states = list(storage.iter_rows(str(out), "omegaprm_states"))
    assert states and all(STATE_POSTERIOR_COLUMNS <= set(row) for row in states)
    widths = []
    for row in states:
        assert row["mc_label_reason"] is None
        if row["record_type"] == "completion":
            assert row["mc_rollouts_spent"] == 0
            assert (row["mc_posterior_mean"], row["mc_interval_low"], row["mc_interval_high"],
                    row["mc_p_above"]) == (1.0, 1.0, 1.0, 1.0)
            continue
        assert row["mc_rollouts_spent"] == row["n_total"] + row["n_unknown"] > 0
        if not row["n_total"]:
            assert row["mc_posterior_mean"] is None
            continue
        c, n = row["n_correct"], row["n_total"]
        expected = posterior(c, n - c, prior=config.prior, threshold=config.min_success)
        assert (row["mc_posterior_mean"], row["mc_interval_low"], row["mc_interval_high"],
                row["mc_p_above"]) == (expected.mean, expected.low, expected.high,
                                       expected.p_above)
        widths.append(expected.high - expected.low)
    omega = json.loads((out / "stats.json").read_text())["overall"]["omegaprm"]
    assert omega["estimated_states"] == len(widths) > 0
    assert omega["interval_width_mean"] == pytest.approx(sum(widths) / len(widths), abs=1e-6)
    assert omega["undecided_probes"] == 0
