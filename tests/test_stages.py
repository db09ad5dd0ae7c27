"""The staged Beam graph (pipelines/stages.py) writes the dataset the per-problem labeller
writes: every row, in shard order, and every counter, on scripted engines with faults."""

import json
from pathlib import Path

import pytest

from steplabel.pipelines import job, storage
from steplabel.pipelines.graph import build_staged_pipeline
from steplabel.schemas.records import OUTPUTS

from test_label_truth import manifest as faulty_manifest
from test_label_truth import write_planted
from test_pipeline import BAD_LINES, manifest_for, write_problems

pytestmark = pytest.mark.pipeline

#: Counters that measure time or name the graph's own stages (not labelling content).
TIMING = ("engine_busy_ms", "engine_sample_ms", "engine_start_ms")


def legacy_builder():
    """The per-problem graph (one ParDo labels a whole problem)."""
    return getattr(job, "build_problem_pipeline", None) or job.build_pipeline


def dataset(out: str) -> dict:
    tables = {}
    for output in OUTPUTS:
        rows = []
        for row in storage.iter_rows(out, output):
            for key, value in row.items():
                if key.startswith("cost") and isinstance(value, dict):
                    value.pop("cached_tokens", None)  # depends on what the engine served before
            rows.append(json.dumps(row, sort_keys=True, default=str))
        tables[output] = ([Path(p).name for p in storage.output_files(out, output)], rows)
    return tables


def content_counters(counters: dict) -> dict:
    return {k: v for k, v in counters.items()
            if k not in TIMING and not k.startswith(("stage_", "engine_fit_"))
            and k != "omegaprm_cached_tokens"}


def run_both(manifest, base: Path, monkeypatch):
    builder = legacy_builder()
    monkeypatch.setattr(job, "build_pipeline", builder)
    old = job.run_job(manifest, out_dir=str(base / "per_problem"))
    monkeypatch.setattr(job, "build_pipeline", build_staged_pipeline)
    new = job.run_job(manifest, out_dir=str(base / "staged"))
    return old, new


def assert_same(old, new, base: Path) -> None:
    assert dataset(str(base / "staged")) == dataset(str(base / "per_problem"))
    assert content_counters(new.stats["counters"]) == content_counters(old.stats["counters"])
    assert new.stats["reconciliation"] == old.stats["reconciliation"]
    assert new.info["rows"] == old.info["rows"]


def test_staged_graph_equals_per_problem_labeller_with_bad_input(tmp_path, monkeypatch):
    source = write_problems(tmp_path / "p.jsonl", 6, BAD_LINES)
    old, new = run_both(manifest_for(source), tmp_path, monkeypatch)
    assert_same(old, new, tmp_path)
    counters = new.stats["counters"]
    assert counters["stage_sample_computed"] == 5
    assert counters["stage_monte_carlo_computed"] == counters["stage_judge_computed"]


@pytest.mark.parametrize("factory,overrides", [
    ("realistic", {}),
    ("all_rollouts_cut_off", {}),
    ("reanswering_continuations", {"omegaprm": None}),
    ("realistic", {"consensus": None, "judge": None}),
    ("realistic", {"consensus": None, "monte_carlo": None}),
])
def test_staged_graph_equals_per_problem_labeller_with_faulty_policies(
        tmp_path, monkeypatch, factory, overrides):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    write_planted(tmp_path / "planted.jsonl", 6)
    manifest = faulty_manifest(tmp_path / "planted.jsonl", factory, **overrides)
    old, new = run_both(manifest, tmp_path, monkeypatch)
    assert_same(old, new, tmp_path)


def test_prompt_too_long_dead_letters_the_whole_problem(tmp_path, monkeypatch):
    """A context-length refusal in any stage replaces the problem's rows by one dead letter,
    with the same reason and counter as the per-problem labeller."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    with open(tmp_path / "p.jsonl", "w") as handle:
        for i in range(4):
            words = " ".join(["word"] * (40 * i))
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + 2? {words}",
                                     "answer": str(i + 2)}) + "\n")
    manifest = manifest_for(tmp_path / "p.jsonl", models={"policy": {
        "kind": "custom", "factory": "fakes:arithmetic_engine_with_faults",
        "max_model_len": 110}})
    old, new = run_both(manifest, tmp_path, monkeypatch)
    assert_same(old, new, tmp_path)
    assert new.stats["counters"].get("dead_letter_prompt_too_long", 0) >= 1


def test_figures_folded_in_the_pipeline_equal_the_figures_read_from_shards(tmp_path,
                                                                           monkeypatch):
    """stats.json comes from the pipeline's CombineFn; reading the finished shards gives the
    same statistics, row counts and reconciliation."""
    from steplabel.pipelines.stats import accounted_problems, compute_stats

    source = write_problems(tmp_path / "p.jsonl", 8, BAD_LINES)
    manifest = manifest_for(source, runner={"num_shards": 3})
    out = str(tmp_path / "out")
    result = job.run_job(manifest, out_dir=out)
    figures = json.loads((tmp_path / "out" / "_work" / "figures.json").read_text())
    from_shards = compute_stats(out)
    stats = {k: v for k, v in result.stats.items()
             if k not in ("reconciliation", "counters", "warnings", "temp_files_removed")}
    assert stats == from_shards == figures["stats"]
    assert result.info["rows"] == {name: storage.count_rows(out, name) for name in OUTPUTS}
    seen = accounted_problems(out)
    reconciliation = result.stats["reconciliation"]
    assert reconciliation["dead_letter_input_rows"] == seen["dead_letter_input_rows"] > 0
    assert reconciliation["problems_labelled_or_dead_lettered"] == len(set().union(
        seen["trajectories"], seen["rejected"], seen["filtered"], seen["omegaprm_states"],
        seen["dead_letter_label"]))
    assert reconciliation["ok"]
