"""The end of a run: the keep rate and the top reject reasons on the terminal, and a warning (on
the terminal and in stats.json) when the keep rate is under ``consensus.expected_keep_rate_min``."""

import json
from pathlib import Path

import pytest

from steplabel.dataset.inspect import dataset_report
from steplabel.dataset.stats import keep_rate_warnings, top_reject_reasons
from steplabel.pipelines.job import JobResult, describe, run_job
from steplabel.schemas.manifest import manifest_from_dict

SCRIPTED = {"kind": "custom", "factory": "fakes:arithmetic_engine"}


def manifest(tmp_path: Path, *, keep_rate_min: float):
    path = tmp_path / "problems.jsonl"
    with open(path, "w") as handle:
        for i in range(4):
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + {i + 2}?",
                                     "answer": str(2 * i + 2)}) + "\n")
    return manifest_from_dict({
        "name": "summary", "seed": 3, "source": {"kind": "jsonl", "path": str(path)},
        "models": {"policy": SCRIPTED}, "policy": {"samples": 3},
        "monte_carlo": {"rollouts": 4}, "judge": {},
        "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 2},
        "consensus": {"expected_keep_rate_min": keep_rate_min}, "runner": {"num_shards": 1}})


def stats_with(kept: int, evaluated: int, reasons: dict) -> dict:
    return {"overall": {"consensus": {
        "kept": kept, "evaluated": evaluated, "keep_rate": kept / evaluated if evaluated else None,
        "reject_reasons": reasons}},
        "reconciliation": {"problems_in": 12, "accounted": 12, "dead_letter_input_rows": 0}}


@pytest.mark.unit
def test_top_reject_reasons_largest_first_ties_by_name():
    consensus = {"reject_reasons": {"disagree": 3, "judge_unknown": 23, "mc_unknown": 3,
                                    "policy_truncated": 7}}
    assert top_reject_reasons(consensus) == [("judge_unknown", 23), ("policy_truncated", 7),
                                             ("disagree", 3)]
    assert top_reject_reasons({"reject_reasons": {}}) == []


@pytest.mark.unit
def test_keep_rate_under_the_minimum_warns_naming_the_main_reason(tmp_path):
    stats = stats_with(1, 29, {"judge_unknown": 23, "disagree": 5, "policy_truncated": 7})
    [warning] = keep_rate_warnings(stats, manifest(tmp_path, keep_rate_min=0.2))
    assert warning.startswith("keep rate 3.4% (1 of 29 trajectories through consensus) is "
                              "under consensus.expected_keep_rate_min 0.2")
    assert "most rejections are judge_unknown (23)" in warning
    assert "--reason judge_unknown" in warning


@pytest.mark.unit
def test_keep_rate_at_or_over_the_minimum_or_unknown_does_not_warn(tmp_path):
    config = manifest(tmp_path, keep_rate_min=0.2)
    assert keep_rate_warnings(stats_with(2, 10, {"disagree": 8}), config) == []
    assert keep_rate_warnings(stats_with(5, 10, {"disagree": 5}), config) == []
    assert keep_rate_warnings(stats_with(0, 0, {"policy_truncated": 3}), config) == []
    assert keep_rate_warnings(stats_with(0, 10, {"disagree": 10})) == []  # no manifest


@pytest.mark.unit
def test_describe_prints_keep_rate_top_reasons_and_reconciliation():
    stats = stats_with(1, 29, {"judge_unknown": 23, "disagree": 5, "policy_truncated": 7,
                               "mc_unknown": 1})
    result = JobResult("out", {"rows": {"trajectories": 1, "rejected": 36, "filtered": 0}},
                       stats, 61.4)
    assert describe(result).splitlines() == [
        "[steplabel] finished in 61s: trajectories 1, rejected 36",
        "[steplabel] kept 1 of 29 trajectories through consensus (3.4%); rejected 36, top "
        "reasons: judge_unknown 23, policy_truncated 7, disagree 5",
        "[steplabel] problems: 12 in, 12 accounted for (0 input rows dead-lettered)",
    ]


@pytest.mark.pipeline
def test_a_run_under_the_keep_rate_minimum_records_the_warning_and_omegaprm_cost(tmp_path):
    result = run_job(manifest(tmp_path, keep_rate_min=1.0), out_dir=str(tmp_path / "out"))
    consensus = result.stats["overall"]["consensus"]
    assert consensus["evaluated"] > 0 and consensus["keep_rate"] < 1.0
    written = json.loads((tmp_path / "out" / "stats.json").read_text())["warnings"]
    keep = [w for w in written if w.startswith("keep rate ")]
    assert keep == [w for w in result.stats["warnings"] if w.startswith("keep rate ")]
    assert len(keep) == 1 and "expected_keep_rate_min 1" in keep[0]
    assert "kept " in describe(result).splitlines()[1]
    # OmegaPRM's cost (the run's counters in stats.json) is a stage of inspect's cost figures
    counters = result.stats["counters"]
    cost = dataset_report(str(tmp_path / "out"))["overall"]["cost"]
    assert cost["omegaprm"]["generated_tokens"] == counters["omegaprm_generated_tokens"] > 0
    assert cost["omegaprm"]["rollouts"] == counters["omegaprm_rollouts"] > 0
