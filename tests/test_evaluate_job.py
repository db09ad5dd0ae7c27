"""``steplabel evaluate`` end to end with the scripted engine: report, predictions, resume."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from steplabel.annotators.evaluation.report import build_report
from steplabel.pipelines import cli
from steplabel.pipelines.evaluate import EvaluationError, read_rows, run_evaluation
from steplabel.pipelines.evaluate_spec import load_evaluation_manifest, make_spec
from steplabel.schemas.config import ConfigError
from steplabel.schemas.evaluation import PREDICTION

pytestmark = pytest.mark.pipeline

DATA = Path(__file__).parent / "data"
GOLD = [str(DATA / "processbench_small.json"), str(DATA / "step_ratings_small.jsonl")]
ANSWERS = str(DATA / "answers_small.jsonl")

MANIFEST = {
    "name": "scripted-eval",
    "seed": 11,
    "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
    "monte_carlo": {"rollouts": 4},
    "omegaprm": {"rollouts": 4},
    "judge": {},
    "runner": {"num_shards": 2, "max_in_flight": 4},
}


def write_manifest(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**MANIFEST, **changes}))
    return path


def spec_for(manifest_path: Path, gold=GOLD, answers=ANSWERS,
             annotators="mc,omegaprm,judge,consensus"):
    return make_spec(load_evaluation_manifest(manifest_path), gold_files=list(gold),
                     annotators=annotators, answers_file=answers)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    manifest = write_manifest(base / "eval.yaml")
    spec = spec_for(manifest)
    out = str(base / "out")
    return spec, out, run_evaluation(spec, out_dir=out)


def test_outputs_written_and_completed(finished):
    _, out, result = finished
    for name in ("report.json", "report.md", "info.json", "COMPLETED"):
        assert (Path(out) / name).exists()
    files = sorted((Path(out) / "predictions").glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000-of-00002.parquet",
                                       "part-00001-of-00002.parquet"]
    assert pq.read_schema(files[0]).equals(PREDICTION, check_metadata=False)
    assert json.loads((Path(out) / "report.json").read_text()) == result.report


def test_every_record_is_accounted_for(finished):
    _, out, result = finished
    items = result.report["items"]
    # processbench_small: 5 items + 1 bad label; step_ratings_small: 3 items + 3 bad records
    assert items["read"] == 12 and items["reconciled"]
    assert items["evaluated"] == 8 and items["dead_letter"] == 4
    assert items["dead_letter_reasons"] == {
        "bad_label": 1, "label_ratings_conflict": 1, "malformed_json": 1,
        "unrated_step_before_error": 1}
    dead = read_rows(out, "dead_letter")
    assert all(r["stage"] == "read" and r["original"] for r in dead)
    predictions = read_rows(out, "predictions")
    assert len(predictions) == 8 * 4  # every item, every annotator
    assert result.info["rows"] == {"predictions": 32, "dead_letter": 4}


def test_items_without_gold_answer_are_judged_only_and_count_as_wrong(finished):
    _, out, result = finished
    assert result.report["items"]["without_gold_answer"] == 1
    assert result.report["items"]["without_gold_answer_reasons"] == {"ambiguous_answer": 1}
    rows = {(r["item_id"], r["annotator"]): r for r in read_rows(out, "predictions")}
    assert rows[("pb-5", "judge")]["status"] == "predicted"
    for name in ("mc", "omegaprm", "consensus"):
        assert rows[("pb-5", name)]["status"] == "skipped"
        assert rows[("pb-5", name)]["exact_match"] is None
    assert rows[("pb-3", "mc")]["answer_origin"] == "answers_by_id"
    assert rows[("pb-4", "mc")]["answer_origin"] == "answers_by_problem"
    annotators = result.report["annotators"]
    mc = annotators["mc"]["per_source"]["processbench_small"]
    # Every annotator is scored on the same 5 items: the skipped one counts as a miss.
    assert mc["skipped"] == 1 and mc["n_items"] == 5
    assert {a["per_source"]["processbench_small"]["n_items"] for a in annotators.values()} == {5}
    assert mc["coverage"] <= 80.0 and annotators["mc"]["items_skipped"] == 1
    exact = [r for (item, name), r in rows.items() if name == "mc" and r["exact_match"]
             and r["source"] == "processbench_small"]
    assert mc["error_hits"] + mc["correct_hits"] == len(exact)  # the skipped item is no hit


def test_report_figures_follow_from_the_predictions(finished):
    spec, out, result = finished
    predictions = read_rows(out, "predictions")
    again = build_report(predictions, annotators=spec.annotators,
                         dead_letters=read_rows(out, "dead_letter"),
                         evaluation=result.report["evaluation"])
    assert again["annotators"] == result.report["annotators"]
    for row in predictions:
        if row["status"] != "skipped":
            assert row["exact_match"] == (row["predicted_first_error"] == row["label"])
    report = result.report["annotators"]
    assert set(report) == {"mc", "omegaprm", "judge", "consensus"}
    ratings = report["mc"]["per_source"]["step_ratings_small"]
    assert ratings["step"]["steps_compared"] > 0
    assert report["mc"]["per_source"]["processbench_small"]["step"] is None
    # the scripted completer keeps a wrong stated answer wrong: MC flags the last step
    mc_rows = [r for r in predictions if r["annotator"] == "mc" and r["status"] != "skipped"]
    for row in mc_rows:
        wrong = row["final_answer_correct"] is False or row["item_id"] in ("sr-2", "sr-3")
        assert row["predicted_first_error"] == (row["num_steps"] - 1 if wrong else -1)
    # k rollouts at most per step but the last (labelled by the solution's own answer)
    assert 0 < report["mc"]["cost"]["rollouts"] <= sum(4 * (r["num_steps"] - 1) for r in mc_rows)


def test_resume_replays_checkpoints(tmp_path, finished):
    spec, out, first = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "COMPLETED").unlink()
    for shard in (copy / "predictions").glob("*.parquet"):
        shard.unlink()  # an interrupted run: checkpoints only
    again = run_evaluation(spec, out_dir=str(copy))
    assert again.info["counters"].get("problems_resumed") == 8
    assert "problems_labelled" not in again.info["counters"]
    assert again.report["annotators"] == first.report["annotators"]
    assert (copy / "COMPLETED").exists()


def test_completed_and_foreign_directories_are_refused(tmp_path, finished):
    spec, out, _ = finished
    with pytest.raises(EvaluationError, match="COMPLETED"):
        run_evaluation(spec, out_dir=out)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "COMPLETED").unlink()
    other = spec_for(write_manifest(tmp_path / "other.yaml", seed=12))
    with pytest.raises(EvaluationError, match="another evaluation"):
        run_evaluation(other, out_dir=str(copy))
    changed_gold = tmp_path / "processbench_small.json"
    changed_gold.write_text(Path(GOLD[0]).read_text().replace("We add 2", "We add two"))
    edited = spec_for(write_manifest(tmp_path / "same.yaml"),
                      gold=[str(changed_gold), GOLD[1]])
    assert edited.hash != spec.hash
    with pytest.raises(EvaluationError, match="input files differ"):
        run_evaluation(edited, out_dir=str(copy))
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not an evaluation")
    with pytest.raises(EvaluationError, match="not empty"):
        run_evaluation(spec, out_dir=str(stray))


def test_engine_failure_goes_to_the_dead_letter(tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", models={
        "policy": {"kind": "custom", "factory": "test_evaluate_job:failing_engine"}})
    spec = spec_for(manifest, gold=[GOLD[0]], answers=None, annotators="judge")
    result = run_evaluation(spec, out_dir=str(tmp_path / "out"))
    assert result.report["items"]["dead_letter_reasons"] == {"bad_label": 1,
                                                             "engine_error": 5}
    assert result.report["items"]["reconciled"]
    dead = [r for r in read_rows(str(tmp_path / "out"), "dead_letter")
            if r["reason"] == "engine_error"]
    assert all(r["stage"] == "evaluate" and "refused" in r["error"] for r in dead)


def failing_engine(config):
    from fakes import ScriptedEngine
    from steplabel.engines.base import EngineError

    class Failing(ScriptedEngine):
        async def generate(self, request):
            raise EngineError("the server refused the request")

    return Failing(lambda request, index: "")


def test_configuration_errors_name_the_problem(tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml")
    no_mc = tmp_path / "no_mc.yaml"
    no_mc.write_text(yaml.safe_dump({k: v for k, v in MANIFEST.items() if k != "monte_carlo"}))
    with pytest.raises(ConfigError, match="monte_carlo section"):
        spec_for(no_mc, annotators="mc")
    with pytest.raises(ConfigError, match="same name"):
        spec_for(manifest, gold=[GOLD[0], GOLD[0]])
    with pytest.raises(ConfigError, match="annotators"):
        spec_for(manifest, annotators="mc,votes")


def test_cli_prints_the_report(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml")
    out = tmp_path / "cli"
    code = cli.main(["evaluate", "--gold", GOLD[0], "--answers", ANSWERS, "--manifest",
                     str(manifest), "--annotators", "judge,mc", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| judge | **average** |" in printed and "| mc | processbench_small |" in printed
    assert "items without a gold answer (only the judge runs; the others count them as " \
        "wrong): 1" in printed
    assert (out / "report.md").read_text() in printed
    code = cli.main(["evaluate", "--gold", GOLD[1], "--manifest", str(manifest),
                     "--annotators", "judge", "--out", str(tmp_path / "json"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and list(report["annotators"]) == ["judge"]
    assert cli.main(["evaluate", "--gold", str(tmp_path / "nope.json"), "--manifest",
                     str(manifest)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_prm800k_release_file_is_evaluated(tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml")
    gold = [str(DATA / "prm800k_phase2_small.jsonl"), str(DATA / "prm800k_phase1_small.jsonl")]
    spec = spec_for(manifest, gold=gold, answers=None, annotators="mc,judge")
    result = run_evaluation(spec, out_dir=str(tmp_path / "out"))
    items = result.report["items"]
    assert (items["read"], items["evaluated"], items["dead_letter"]) == (11, 7, 4)
    assert items["reconciled"] and items["with_step_ratings"] == 7
    assert items["dead_letter_reasons"] == {"bad_problem": 1, "bad_steps": 1,
                                            "gave_up_before_error": 1,
                                            "unrated_step_before_error": 1}
    assert items["without_gold_answer"] == 0  # question.ground_truth_answer
    rows = read_rows(str(tmp_path / "out"), "predictions")
    assert len(rows) == 7 * 2 and {r["gold_format"] for r in rows} == {"prm800k"}
    labels = {r["problem_id"]: r["label"] for r in rows}
    assert labels["prm800k_phase2_small/prm800k-0"] == 1
    assert labels["prm800k_phase1_small/prm800k-0"] == -1
    for name in ("mc", "judge"):
        block = result.report["annotators"][name]
        assert block["items"] == 7
        for source in ("prm800k_phase1_small", "prm800k_phase2_small"):
            assert block["per_source"][source]["step"]["steps_compared"] > 0
