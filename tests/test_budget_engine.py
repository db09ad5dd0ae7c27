"""The demo with the adaptive budget (``jobs/demo_budget.yaml``), small, end to end on the real
vLLM engine with the embedded model: rounds, the posterior rule, undecided steps, the
posterior columns, stats and the exports."""

import json
from dataclasses import replace

import pytest

from steplabel.annotators.monte_carlo import UNDECIDED, budget_step_decision
from steplabel.annotators.posterior import CREDIBLE_LEVEL, posterior
from steplabel.dataset import storage
from steplabel.dataset.export import ExportOptions, export_dataset
from steplabel.dataset.plan import counts_as_rollouts
from steplabel.dataset.stats import compute_stats
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import load_manifest
from steplabel.schemas.records import SCHEMA_VERSION

pytestmark = pytest.mark.engine


#: Problems of which the full demo (seeded by problem id, float32) keeps a trajectory among its
#: first 2 samples, so that the exports have kept rows to write; the first of the 4 is one it
#: keeps none of.
PROBLEMS = ("add-0000", "add-0005", "add-0007", "add-0008")


@pytest.fixture(scope="module")
def budget_job(repo_root, tmp_path_factory):
    demo = load_manifest(repo_root / "jobs" / "demo_budget.yaml")
    base = tmp_path_factory.mktemp("budget")
    source = base / "addition.jsonl"
    lines = (repo_root / "jobs" / "data" / "addition.jsonl").read_text().splitlines()
    source.write_text("".join(line + "\n" for line in lines
                              if json.loads(line)["id"] in PROBLEMS))
    # Smaller than the demo: 4 problems, 2 samples each, no OmegaPRM (its probes keep k).
    manifest = replace(demo, source=replace(demo.source, path=str(source), limit=None),
                       policy=replace(demo.policy, samples=2), omegaprm=None)
    out = base / "out"
    return manifest, out, run_job(manifest, out_dir=str(out))


def labelled_rows(out) -> list[dict]:
    return [r for output in ("trajectories", "rejected")
            for r in storage.iter_rows(str(out), output) if r["mc_n_total"] is not None]


def test_budget_job_completes_and_accounts_for_every_problem(budget_job):
    _, out, result = budget_job
    assert (out / "COMPLETED").exists()
    assert result.stats["reconciliation"]["ok"]
    assert result.info["schema_version"] == SCHEMA_VERSION  # 1.3 or later: posterior columns


def test_steps_follow_the_budget_rounds_and_the_posterior_rule(budget_job):
    manifest, out, result = budget_job
    config = manifest.monte_carlo
    budget = config.budget
    rounds, n = set(), 0
    while budget.next_round(n):
        n += budget.next_round(n)
        rounds.add(n)
    assert rounds == {2, 4, 6, 8}
    estimated = undecided = 0
    for row in labelled_rows(out):
        last = len(row["steps"]) - 1
        assert row["mc_rollouts_spent"][last] == 0
        for t in range(last):
            spent = row["mc_rollouts_spent"][t]
            c, n, u = row["mc_n_correct"][t], row["mc_n_total"][t], row["mc_n_unknown"][t]
            assert spent == n + u
            if spent == 0:  # not estimated (past the first error / the judge's)
                assert row["hard_labels"][t] is None and row["mc_label_reasons"][t] is None
                continue
            estimated += 1
            assert spent in rounds
            decision = budget_step_decision(counts_as_rollouts(c, n - c, u),
                                            budget=budget, threshold=config.threshold,
                                            prior=config.prior)
            assert decision is not UNDECIDED  # the rounds stopped only when they could
            assert row["hard_labels"][t] == decision
            if decision is None and n > 0:
                undecided += 1
                assert spent == budget.max_rollouts
                assert row["mc_label_reasons"][t] == "undecided"
            else:
                assert row["mc_label_reasons"][t] is None
            if n:
                expected = posterior(c, n - c, prior=config.prior, threshold=config.threshold,
                                     level=CREDIBLE_LEVEL)
                assert row["mc_posterior_mean"][t] == pytest.approx(expected.mean)
                assert row["mc_p_above"][t] == expected.p_above
    assert estimated > 0
    assert result.stats["counters"].get("mc_steps_undecided", 0) == undecided
    figures = compute_stats(str(out))["overall"]["mc_posterior"]
    assert figures["estimated_steps"] == estimated
    assert figures["undecided"]["count"] == undecided
    assert 2 <= figures["rollouts_per_step"]["mean"] <= 8


def test_budget_dataset_exports(budget_job, tmp_path):
    _, out, result = budget_job
    assert result.info["rows"]["trajectories"] > 0
    for fmt, labels in (("trl", "hard"), ("openrlhf", "posterior"), ("math-shepherd", "hard")):
        info = export_dataset(str(out), out_dir=str(tmp_path / f"{fmt}-{labels}"),
                              options=ExportOptions(format=fmt, labels=labels))
        assert info["counts"]["examples"] > 0
