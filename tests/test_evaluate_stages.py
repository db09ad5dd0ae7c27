"""``steplabel evaluate`` on the staged machinery: its rows equal the pure predictor's, each engine
stage checkpoints its items, and a dead engine stops the job loudly and resumes without loss."""

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from fakes import DIE_AFTER_ENV
from steplabel.annotators.evaluation.answers import join_gold_answers
from steplabel.annotators.evaluation.predict import (
    Engines,
    EvaluationSettings,
    predict_first_errors,
)
from steplabel.engines.host import create_engine
from steplabel.pipelines.evaluate import EvaluationError, read_rows, run_evaluation
from steplabel.pipelines.evaluate_graph import prediction_rows
from steplabel.pipelines.evaluate_spec import load_evaluation_manifest, make_spec
from steplabel.pipelines.gold_files import load_answers_file, load_gold_file
from steplabel.pipelines.checkpoints import stage_checkpoint_counts

pytestmark = pytest.mark.pipeline

DATA = Path(__file__).parent / "data"
GOLD = [str(DATA / "processbench_small.json"), str(DATA / "step_ratings_small.jsonl")]
ANSWERS = str(DATA / "answers_small.jsonl")
ITEMS = 8  # readable items of the two gold files (5 + 3)


def spec_for(tmp_path: Path, *, policy: dict | None = None,
             annotators: str = "mc,omegaprm,judge,consensus", **changes):
    manifest = {
        "name": "staged-eval", "seed": 11,
        "models": {"policy": policy or {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
        "monte_carlo": {"rollouts": 4}, "omegaprm": {"rollouts": 4}, "judge": {},
        "runner": {"num_shards": 2, "max_in_flight": 2}, **changes,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return make_spec(load_evaluation_manifest(path), gold_files=GOLD, annotators=annotators,
                     answers_file=ANSWERS)


def gold_items(spec) -> list:
    """The spec's gold items, answers joined, read here (the job reads them on its workers)."""
    items = [item for name, path in spec.gold_files.items()
             for item in load_gold_file(path, source=name)[0]]
    return join_gold_answers(items, load_answers_file(spec.answers_file))


def comparable(row: dict) -> str:
    row = {**row, "cost": {k: v for k, v in row["cost"].items() if k != "cached_tokens"}}
    return json.dumps(row, sort_keys=True, default=str)


def without_cached_tokens(value):
    """Prefix-cache hits depend on what an engine served before (a resumed run's engine served
    less): everything else must be equal."""
    if isinstance(value, dict):
        return {k: without_cached_tokens(v) for k, v in value.items() if k != "cached_tokens"}
    return value


def test_staged_predictions_equal_the_pure_predictor(tmp_path):
    """Completer and judge stages, joined by item, write the rows ``predict_first_errors``
    gives for each item on fresh engines (the stages split it, nothing else)."""
    spec = spec_for(tmp_path)
    out = str(tmp_path / "out")
    result = run_evaluation(spec, out_dir=out)
    items = gold_items(spec)
    manifest = spec.manifest
    settings = EvaluationSettings.from_manifest(manifest)

    async def predict_all():
        engine = await create_engine(manifest.models.policy)
        engines = Engines(policy=engine, completer=engine, judge=engine)
        return [await predict_first_errors(item, annotators=spec.annotators, engines=engines,
                                           settings=settings) for item in items]

    expected = [row for prediction in asyncio.run(predict_all())
                for row in prediction_rows(prediction, evaluation_hash=spec.hash,
                                           run_seed=manifest.seed)]
    assert len(expected) == ITEMS * 4
    assert sorted(map(comparable, read_rows(out, "predictions"))) == sorted(
        map(comparable, expected))
    counters = result.info["counters"]
    # One completer key per item with a usable gold answer (one has none), one judge key each.
    assert counters["stage_evaluate_rollouts_computed"] == ITEMS - 1
    assert counters["stage_evaluate_judge_computed"] == ITEMS
    assert stage_checkpoint_counts(out)["evaluate_rollouts"] == ITEMS - 1
    assert counters["problems_labelled"] == ITEMS


def test_judge_only_starts_no_completer_stage(tmp_path):
    spec = spec_for(tmp_path, annotators="judge")
    out = str(tmp_path / "out")
    result = run_evaluation(spec, out_dir=out)
    counts = stage_checkpoint_counts(out)
    assert counts["evaluate_judge"] == ITEMS and counts["evaluate_rollouts"] == 0
    assert result.report["items"]["reconciled"]


def test_a_dead_engine_stops_the_evaluation_and_a_rerun_resumes(tmp_path, monkeypatch):
    faulty = {"kind": "custom", "factory": "fakes:arithmetic_engine_with_faults"}
    spec = spec_for(tmp_path, policy=faulty, annotators="judge")
    out = tmp_path / "out"
    monkeypatch.setenv(DIE_AFTER_ENV, "4")  # three judge requests succeed, then it is gone
    with pytest.raises(EvaluationError, match=r"an engine died: .*Finished items per stage "
                                              r"\(evaluate_judge 3\) are checkpointed"):
        run_evaluation(spec, out_dir=str(out))
    assert not (out / "COMPLETED").exists()
    assert read_rows(str(out), "predictions") == []  # nothing written, no dead-letter flood
    assert not [r for r in read_rows(str(out), "dead_letter") if r["stage"] == "evaluate"]

    monkeypatch.delenv(DIE_AFTER_ENV)
    resumed = run_evaluation(spec, out_dir=str(out))
    counters = resumed.info["counters"]
    assert counters["stage_evaluate_judge_resumed"] == 3
    assert counters["stage_evaluate_judge_computed"] == ITEMS - 3
    assert counters["problems_resumed"] == 3 and counters["problems_labelled"] == ITEMS - 3
    clean = run_evaluation(spec, out_dir=str(tmp_path / "clean"))
    assert without_cached_tokens(resumed.report["annotators"]) == without_cached_tokens(
        clean.report["annotators"])
    assert sorted(map(comparable, read_rows(str(out), "predictions"))) == sorted(
        map(comparable, read_rows(str(tmp_path / "clean"), "predictions")))
