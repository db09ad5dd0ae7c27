"""The staged Beam graph (pipelines/stages.py) writes what its stage functions say, wired right.

The reference is the stage functions of :mod:`steplabel.annotators.stages` composed directly,
problem after problem, on fresh scripted engines with the same seeds: the job's rows (every
output) and content counters must equal theirs. Scripted engines answer from the request's seed,
so no difference is allowed (prefix-cache hits, what an engine served before, are not on
rows: they are the run's metrics). Then
invariants and golden counts of a job with bad input, a resumed job, and the figures.
"""

import asyncio
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from steplabel.annotators import stages as st
from steplabel.annotators.graders import get_grader
from steplabel.engines.host import create_engine
from steplabel.dataset import storage
from steplabel.pipelines import job
from steplabel.pipelines.sources import read_local_items, validate_item
from steplabel.schemas.records import OUTPUTS

from test_label_truth import manifest as faulty_manifest
from test_label_truth import write_planted
from test_pipeline import BAD_LINES, manifest_for, write_problems

pytestmark = pytest.mark.pipeline

#: Counters that measure time, name the graph's own stages or count what the engines served
#: (not labelling content).
TIMING = ("engine_busy_ms", "engine_sample_ms", "engine_start_ms")


def comparable(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def job_rows(out: str) -> dict[str, list[str]]:
    """Every output's rows but the input dead letters (not the labelling's), sorted."""
    tables = {}
    for output in OUTPUTS:
        rows = [r for r in storage.iter_rows(out, output)
                if output != "dead_letter" or r["stage"] == "label"]
        tables[output] = sorted(comparable(r) for r in rows)
    return tables


def valid_problems(manifest) -> list[st.Problem]:
    """The problems the job labels: valid records, an id's exact copies once, conflicting
    copies none (as ``ValidateProblems`` resolves them)."""
    source = manifest.source
    by_id = defaultdict(list)
    for item in read_local_items(source):
        problem, _ = validate_item(item, fields=source.fields, answer_format=source.answer_format,
                                   manifest_hash=manifest.hash, grader=get_grader(manifest.grader))
        if problem is not None:
            by_id[problem.problem_id].append(problem)
    kept = []
    for copies in by_id.values():
        copies.sort(key=lambda p: (p.question, p.gold_answer, p.original))
        if len({(p.question, p.gold_answer) for p in copies}) == 1:
            kept.append(copies[0])
    return kept


async def label_directly(ctx: st.StageContext, engines: dict, provenance: dict,
                         problem: st.Problem):
    """One problem through the stage functions, in the graph's order (judge, then Monte Carlo
    with its verdict; Monte Carlo uses the verdict only when consensus-guided)."""
    m = ctx.manifest
    sampled = await st.sample_solutions(ctx, engines["policy"], problem)
    pieces = [st.sampled_piece(sampled)]
    if m.omegaprm is not None:
        completer = engines["completer"]
        pieces.append(await st.omegaprm_rows(
            ctx, ctx.omegaprm_annotator(completer),
            ctx.solution_prompt(completer, problem.question), problem,
            completer_model=st.engine_identity(completer)[0]))
    for solution in sampled.solutions:
        mc = verdict = None
        if not solution.truncated:
            if m.judge is not None:
                verdict = await st.judge_labels(ctx.judge(engines["judge"]), solution)
            if m.monte_carlo is not None:
                completer = engines["completer"]
                mc = await st.monte_carlo_labels(
                    ctx, ctx.mc_annotator(completer),
                    ctx.solution_prompt(completer, solution.question), solution, verdict)
        pieces.append(st.assemble_trajectory(ctx, solution, mc, verdict, provenance))
    return st.merge_problem(ctx, problem.problem_id, pieces, source=problem.source,
                            original=problem.original)


def reference(manifest) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Rows per output and counters of every valid problem, from the stage functions."""
    ctx = st.StageContext(manifest)

    async def run():
        configs = ctx.roles()
        engines, by_config = {}, {}
        for role, config in configs.items():
            if config not in by_config:
                by_config[config] = await create_engine(config)
            engines[role] = by_config[config]
        provenance = ctx.provenance({role: st.engine_identity(engine)
                                     for role, engine in engines.items()})
        return [await label_directly(ctx, engines, provenance, problem)
                for problem in valid_problems(manifest)]

    tables = {output: [] for output in OUTPUTS}
    counters: dict[str, int] = defaultdict(int)
    for rows, problem_counters in asyncio.run(run()):
        for output, output_rows in rows.items():
            tables[output].extend(comparable(r) for r in output_rows)
        for name, value in problem_counters.items():
            counters[name] += value
    return {k: sorted(v) for k, v in tables.items()}, dict(counters)


def assert_equals_reference(manifest, out: str, result) -> None:
    rows, counters = reference(manifest)
    assert job_rows(out) == rows
    for name, value in counters.items():
        assert result.stats["counters"].get(name, 0) == value, name
    assert result.stats["reconciliation"]["ok"]


def test_staged_job_with_bad_input_equals_the_stage_functions(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 6, BAD_LINES)
    manifest = manifest_for(source)
    out = str(tmp_path / "out")
    result = job.run_job(manifest, out_dir=out)
    assert_equals_reference(manifest, out, result)
    counters = result.stats["counters"]
    # p1 has a conflicting copy: five problems labelled, three solutions each.
    assert counters["stage_sample_computed"] == counters["problems_labelled"] == 5
    assert counters["stage_omegaprm_computed"] == 5
    labelled = result.info["rows"]["trajectories"] + result.info["rows"]["rejected"]
    assert labelled == 5 * 3
    assert counters["stage_monte_carlo_computed"] == counters["stage_judge_computed"] == labelled
    assert result.stats["reconciliation"]["problems_in"] == 6 + len(BAD_LINES)


@pytest.mark.parametrize("factory,overrides", [
    ("realistic", {}),
    ("all_rollouts_cut_off", {}),
    ("reanswering_continuations", {"omegaprm": None}),
    ("realistic", {"consensus": None, "judge": None}),
    ("realistic", {"consensus": None, "monte_carlo": None}),
])
def test_staged_job_with_faulty_policies_equals_the_stage_functions(
        tmp_path, monkeypatch, factory, overrides):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    write_planted(tmp_path / "planted.jsonl", 6)
    manifest = faulty_manifest(tmp_path / "planted.jsonl", factory, **overrides)
    out = str(tmp_path / "out")
    result = job.run_job(manifest, out_dir=out)
    assert_equals_reference(manifest, out, result)


def test_prompt_too_long_dead_letters_the_whole_problem(tmp_path, monkeypatch):
    """A context-length refusal in any stage replaces the problem's rows by one dead letter."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    with open(tmp_path / "p.jsonl", "w") as handle:
        for i in range(4):
            words = " ".join(["word"] * (40 * i))
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + 2? {words}",
                                     "answer": str(i + 2)}) + "\n")
    manifest = manifest_for(tmp_path / "p.jsonl", models={"policy": {
        "kind": "custom", "factory": "fakes:arithmetic_engine_with_faults",
        "max_model_len": 110}})
    out = str(tmp_path / "out")
    result = job.run_job(manifest, out_dir=out)
    assert_equals_reference(manifest, out, result)
    dead = [r for r in storage.iter_rows(out, "dead_letter") if r["stage"] == "label"]
    assert dead and {r["reason"] for r in dead} == {"prompt_too_long"}
    assert result.stats["counters"]["dead_letter_prompt_too_long"] == len(dead)
    for row in dead:  # nothing else of a dead-lettered problem is written
        for output in ("trajectories", "rejected", "filtered", "omegaprm_states"):
            assert not [r for r in storage.iter_rows(out, output)
                        if r["problem_id"] == row["problem_id"]]
    assert result.stats["reconciliation"]["ok"]


def test_a_rerun_replays_every_stage_and_writes_the_same_dataset(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 4)
    manifest = manifest_for(source)
    out = tmp_path / "out"
    first = job.run_job(manifest, out_dir=str(out))
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    (copy / storage.COMPLETED).unlink()
    for output in OUTPUTS:  # an interrupted run: stage checkpoints only
        shutil.rmtree(copy / output, ignore_errors=True)
    again = job.run_job(manifest, out_dir=str(copy))
    assert job_rows(str(copy)) == job_rows(str(out))
    counters = again.stats["counters"]
    for stage in ("sample", "omegaprm", "monte_carlo", "judge"):
        assert counters[f"stage_{stage}_resumed"] == first.stats["counters"][
            f"stage_{stage}_computed"] > 0
        assert f"stage_{stage}_computed" not in counters
    assert counters["problems_resumed"] == 4 and "problems_labelled" not in counters


def test_figures_folded_in_the_pipeline_equal_the_figures_read_from_shards(tmp_path):
    """stats.json comes from the pipeline's CombineFn; reading the finished shards gives the
    same statistics, row counts and reconciliation."""
    from steplabel.dataset.stats import accounted_problems, compute_stats

    source = write_problems(tmp_path / "p.jsonl", 8, BAD_LINES)
    manifest = manifest_for(source, runner={"num_shards": 3})
    out = str(tmp_path / "out")
    result = job.run_job(manifest, out_dir=out)
    figures = json.loads((tmp_path / "out" / "_work" / "figures.json").read_text())
    from_shards = compute_stats(out)
    stats = {k: v for k, v in result.stats.items()
             if k not in ("reconciliation", "counters", "warnings", "temp_files_removed",
                          "run")}
    assert stats == from_shards == figures["stats"]
    assert result.info["rows"] == {name: storage.count_rows(out, name) for name in OUTPUTS}
    seen = accounted_problems(out)
    reconciliation = result.stats["reconciliation"]
    assert reconciliation["dead_letter_input_rows"] == seen["dead_letter_input_rows"] > 0
    assert reconciliation["problems_labelled_or_dead_lettered"] == len(set().union(
        seen["trajectories"], seen["rejected"], seen["filtered"], seen["omegaprm_states"],
        seen["dead_letter_label"]))
    assert reconciliation["ok"]
