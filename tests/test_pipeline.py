"""The Beam graph with a scripted engine: outputs, dead letters, reconciliation, resume."""

import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from steplabel.annotators.graders import get_grader
from steplabel.dataset import storage
from steplabel.pipelines.job import JobError, run_job
from steplabel.pipelines.sources import RawItem, ValidateProblems
from steplabel.schemas.manifest import FieldMapping, manifest_from_dict

pytestmark = pytest.mark.pipeline

SCRIPTED = {"kind": "custom", "factory": "fakes:arithmetic_engine"}


def write_problems(path: Path, count: int, extra_lines: list[bytes] = ()) -> Path:
    with open(path, "wb") as handle:
        for i in range(count):
            record = {"id": f"p{i}", "question": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)}
            handle.write(json.dumps(record).encode() + b"\n")
        for line in extra_lines:
            handle.write(line + b"\n")
    return path


def manifest_for(path: Path, **overrides):
    data = {
        "name": "scripted",
        "seed": 3,
        "source": {"kind": "jsonl", "path": str(path)},
        "models": {"policy": SCRIPTED},
        "policy": {"samples": 3},
        "monte_carlo": {"rollouts": 4},
        "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 3},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 2},
    }
    data.update(overrides)
    return manifest_from_dict(data)


BAD_LINES = [
    b"{not json",
    b'{"id": "m1", "question": "What is 1 + 1?"}',
    b'{"id": "e1", "question": "   ", "answer": "3"}',
    b'{"id": "t1", "question": ["a list"], "answer": "3"}',
    b'\xff\xfe{"id": "u1"}',
    b'{"id": "p0", "question": "What is 0 + 2?", "answer": "2"}',  # exact duplicate of p0
    b'{"id": "p1", "question": "What is 9 + 9?", "answer": "18"}',  # conflicting duplicate
    b'{"id": "g1", "question": "What is 1 + 1?", "answer": "\\\\frac{"}',
    b"[1, 2]",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("job")
    source = write_problems(base / "problems.jsonl", 6, BAD_LINES)
    manifest = manifest_for(source)
    out = str(base / "out")
    result = run_job(manifest, out_dir=out)
    return manifest, out, result


def rows(out: str, output: str) -> list[dict]:
    return list(storage.iter_rows(out, output))


def test_outputs_written_and_completed(finished):
    manifest, out, result = finished
    assert (Path(out) / "COMPLETED").exists()
    for name in ("info.json", "stats.json", "manifest.lock.json"):
        assert (Path(out) / name).exists()
    info = json.loads((Path(out) / "info.json").read_text())
    assert info["rows"]["trajectories"] + info["rows"]["rejected"] > 0
    assert info["rows"]["trajectories"] > 0 and info["rows"]["rejected"] > 0
    # deterministic shard names with the explicit schema
    for path in storage.output_files(out, "trajectories"):
        assert Path(path).name.startswith("part-") and Path(path).name.endswith("-of-00002.parquet")
        assert pq.read_schema(path).field("mc_first_error").type == "int32"


def test_dead_letters_have_reasons_and_originals(finished):
    _, out, _ = finished
    dead = rows(out, "dead_letter")
    reasons = sorted(r["reason"] for r in dead)
    assert reasons == sorted([
        "malformed_json", "missing_answer", "empty_question", "bad_question_type", "not_utf8",
        "duplicate_id", "conflicting_duplicate_id", "conflicting_duplicate_id",
        "unparseable_gold", "not_an_object",
    ])
    assert all(r["original"] for r in dead)
    assert all(r["stage"] == "validate" for r in dead)


def test_reconciliation_counts_every_problem(finished):
    _, out, result = finished
    rec = result.stats["reconciliation"]
    assert rec["problems_in"] == 6 + len(BAD_LINES)
    assert rec["ok"] and rec["accounted"] == rec["problems_in"]
    # p1 went to the dead letter with its conflicting copy; p0, p2..p5 were labelled
    labelled = {r["problem_id"] for r in rows(out, "trajectories") + rows(out, "rejected")}
    assert labelled == {"p0", "p2", "p3", "p4", "p5"}
    assert result.stats["counters"]["problems_labelled"] == 5


def test_labels_and_consensus(finished):
    _, out, _ = finished
    for row in rows(out, "trajectories"):
        assert row["consensus_keep"] is True
        assert row["mc_first_error"] == row["judge_first_error"]
        assert len(row["labels"]) == (row["mc_first_error"] + 1 if row["mc_first_error"] >= 0
                                      else len(row["steps"]))
        assert all(c <= t for c, t in zip(row["mc_n_correct"], row["mc_n_total"]))
        assert row["provenance"]["manifest_hash"]
        # at most k rollouts per step (fewer once a label is decided), none from the complete
        # solution
        assert 1 <= row["cost_mc"]["rollouts"] <= 4 * (len(row["steps"]) - 1)
    for row in rows(out, "rejected"):
        assert row["consensus_keep"] is False
        assert row["consensus_reason"] in {"disagree", "mc_unknown", "judge_unknown",
                                           "cannot_agree", "policy_truncated"}


def test_omegaprm_outputs(finished):
    _, out, _ = finished
    states = rows(out, "omegaprm_states")
    filtered = rows(out, "filtered")
    assert states or filtered
    for row in states:
        assert row["tree_id"] == row["problem_id"]
        assert row["n_correct"] <= row["n_total"]


def test_outputs_load_with_datasets(finished):
    import datasets

    _, out, _ = finished
    files = storage.output_files(out, "trajectories")
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(loaded) == json.loads((Path(out) / "info.json").read_text())["rows"]["trajectories"]


def test_completed_dataset_is_not_overwritten(finished):
    manifest, out, _ = finished
    with pytest.raises(JobError, match="COMPLETED"):
        run_job(manifest, out_dir=out)


def test_other_manifest_refused(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stray.txt").write_text("not a steplabel run")
    with pytest.raises(JobError, match="not empty"):
        run_job(manifest_for(source), out_dir=str(out))


def test_resume_replays_checkpoints_and_gives_same_dataset(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 4)
    manifest = manifest_for(source)
    first = run_job(manifest, out_dir=str(tmp_path / "a"))
    # simulate an interrupted run: checkpoints exist, the dataset was never finalized
    (tmp_path / "a" / "COMPLETED").unlink()
    second = run_job(manifest, out_dir=str(tmp_path / "a"))
    assert second.stats["counters"].get("problems_resumed") == 4
    assert "problems_labelled" not in second.stats["counters"]
    assert second.info["rows"] == first.info["rows"]
    other = manifest_for(source, seed=4)
    with pytest.raises(JobError, match="another manifest"):
        (tmp_path / "a" / "COMPLETED").unlink()
        run_job(other, out_dir=str(tmp_path / "a"))


def test_validate_transform_with_test_pipeline():
    items = [
        RawItem("s", 0, b'{"id": "a", "question": "What is 1 + 2?", "answer": "3"}'),
        RawItem("s", 1, b'{"id": "b", "question": "What is 2 + 2?"}'),
        RawItem("s", 2, {"id": "c", "question": "What is 5 + 5?", "answer": 10}),
    ]
    with TestPipeline() as p:
        problems, dead = (p | beam.Create(items) | ValidateProblems(
            fields=FieldMapping(), answer_format="plain", manifest_hash="h",
            grader=get_grader()))
        assert_that(problems | "Ids" >> beam.Map(lambda pr: (pr.problem_id, pr.gold_answer)),
                    equal_to([("a", "3"), ("c", "10")]), label="problems")
        assert_that(dead | "Reasons" >> beam.Map(lambda r: r["reason"]),
                    equal_to(["missing_answer"]), label="dead")


def test_resume_refused_when_input_changed(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 2)
    manifest = manifest_for(source)
    run_job(manifest, out_dir=str(tmp_path / "a"))
    (tmp_path / "a" / "COMPLETED").unlink()
    write_problems(source, 3)
    with pytest.raises(JobError, match="other input data"):
        run_job(manifest, out_dir=str(tmp_path / "a"))


def test_multi_processing_runner(tmp_path, monkeypatch):
    # Workers are subprocesses: they must import the scripted engine's module themselves.
    tests_dir = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", tests_dir)
    source = write_problems(tmp_path / "p.jsonl", 6)
    manifest = manifest_for(source, runner={"direct_running_mode": "multi_processing",
                                            "direct_num_workers": 2, "num_shards": 2})
    result = run_job(manifest, out_dir=str(tmp_path / "mp"))
    reference = run_job(manifest_for(source), out_dir=str(tmp_path / "ref"))
    assert result.stats["reconciliation"]["ok"]
    assert result.info["rows"] == reference.info["rows"]
