"""The demo with a critic section (jobs/demo_critic.yaml) end to end on the embedded model:
every consensus-kept trajectory gets its critiques, each kept or rejected with a reason; the
export and the figures follow. A 135M critic rarely writes a kept critique: the path is tested,
not its quality. Run by the coordinator only (engine tier)."""

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from steplabel.annotators.critic import (
    DISAGREES_PREFIX,
    PARSE_REASONS,
    REASON_KEPT,
    REASON_NOT_KEPT_QUOTA,
    UNUSABLE_PREFIX,
    critique_form_regex,
)
from steplabel.dataset import storage
from steplabel.dataset.export import ExportError, ExportOptions, export_dataset
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import load_manifest

pytestmark = pytest.mark.engine

DEMO_CRITIC = Path(__file__).resolve().parents[1] / "jobs" / "demo_critic.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # The demo's first 6 problems (of 12): its consensus keeps trajectories there too, and
    # the engine tier stays within CI's budget.
    manifest = load_manifest(DEMO_CRITIC)
    manifest = dataclasses.replace(manifest, source=dataclasses.replace(manifest.source, limit=6))
    out = tmp_path_factory.mktemp("demo-critic") / "out"
    return manifest, out, run_job(manifest, out_dir=str(out))


def test_every_trusted_trajectory_is_critiqued_with_a_reason(demo):
    manifest, out, result = demo
    assert (out / "COMPLETED").exists() and result.stats["reconciliation"]["ok"]
    kept = {(r["problem_id"], r["solution_index"])
            for r in storage.iter_rows(str(out), "trajectories")}
    critiques = list(storage.iter_rows(str(out), "critiques"))
    by_solution = Counter((r["problem_id"], r["solution_index"]) for r in critiques)
    dead = [r for r in storage.iter_rows(str(out), "dead_letter") if r["stage"] == "critic"]
    critiqued_or_dead = set(by_solution) | {(r["problem_id"],
                                             json.loads(r["original"])["solution_index"])
                                            for r in dead}
    assert critiqued_or_dead == kept  # only_trusted: exactly the consensus-kept ones
    assert set(by_solution.values()) <= {manifest.critic.samples}
    for row in critiques:
        reason = row["reason"]
        assert (reason in (REASON_KEPT, REASON_NOT_KEPT_QUOTA)
                or reason.startswith(DISAGREES_PREFIX)
                or reason[len(UNUSABLE_PREFIX):] in PARSE_REASONS), reason
        assert row["kept"] == (reason == REASON_KEPT)
        assert row["trusted_source"] == "consensus" and row["trusted_first_error"] is not None
        assert row["critic_model"] and row["cost"]["rollouts"] == 1
        if manifest.critic.constrain_form:  # vLLM's structured outputs held the form
            pattern = critique_form_regex(len(row["steps"]), manifest.critic.max_step_chars)
            if row["finish_reason"] == "stop":
                assert re.fullmatch(pattern, row["critique"]), row["critique"]
                assert row["parse_reason"] in ("ok", "contradiction"), row["parse_reason"]
            else:
                assert row["parse_reason"] == "truncated"
    counters = result.stats["counters"]
    rejected = [r for r in storage.iter_rows(str(out), "rejected")
                if not r["policy_truncated"]]
    assert counters.get("critic_solutions_skipped", 0) == len(rejected)
    assert counters.get("critic_rollouts_not_spent", 0) == 2 * len(rejected)
    figures = result.stats["overall"]["critiques"]
    assert figures["critiques"] == len(critiques)
    assert figures["kept"] == sum(r["kept"] for r in critiques)
    print("critic demo:", json.dumps({k: figures[k] for k in (
        "critiques", "kept", "keep_rate", "not_kept_reasons", "parse_reasons",
        "tokens_per_kept", "generated_tokens_per_kept")}), "skipped:",
        counters.get("critic_solutions_skipped", 0))


def test_the_sft_export_holds_the_kept_critiques(demo, tmp_path):
    _, out, result = demo
    kept = result.stats["overall"]["critiques"]["kept"]
    if not kept:
        with pytest.raises(ExportError, match="no kept critique"):
            export_dataset(str(out), out_dir=str(tmp_path / "sft"),
                           options=ExportOptions(format="sft"))
        return
    info = export_dataset(str(out), out_dir=str(tmp_path / "sft"),
                          options=ExportOptions(format="sft"))
    assert info["counts"]["examples"] == kept
