"""``steplabel evaluate`` with a light launcher: the workers read the gold and answers files
(Beam ``FileSystems``, local or remote) and count them; the job graph holds paths and hashes,
not records; a file the workers cannot read, or one edited after the launcher hashed it, is an
input error."""

import json
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.io.filesystems import FileSystems

import memfs
from steplabel.annotators.evaluation import answers, gold
from steplabel.annotators.evaluation.gold import GoldFileError
from steplabel.pipelines import cli, evaluate_graph, gold_files
from steplabel.pipelines.evaluate import read_rows, run_evaluation
from steplabel.pipelines.evaluate_graph import build_evaluation_pipeline
from steplabel.pipelines.evaluate_spec import load_evaluation_manifest, make_spec

pytestmark = pytest.mark.pipeline

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
GOLD = [str(DATA / "processbench_small.json"), str(DATA / "step_ratings_small.jsonl")]
ANSWERS = str(DATA / "answers_small.jsonl")

MANIFEST = {
    "name": "launcher-eval",
    "seed": 11,
    "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
    "monte_carlo": {"rollouts": 2},
    "omegaprm": {"rollouts": 2},
    "judge": {},
    "runner": {"num_shards": 2, "max_in_flight": 4},
}


def spec_for(tmp_path: Path, gold=GOLD, answers=ANSWERS, annotators="mc,judge", **changes):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({**MANIFEST, **changes}))
    return make_spec(load_evaluation_manifest(path), gold_files=list(gold),
                     annotators=annotators, answers_file=answers)


def processbench_records(count: int) -> list[dict]:
    return [{"id": f"g{i}", "generator": "made-up", "problem": f"What is {i} + 2?",
             "steps": [f"{i} + 2 = {i + 2}.", f"The answer is: {i + 2}"],
             "final_answer_correct": True, "label": -1} for i in range(count)]


def without_cached_tokens(value):
    """Prefix-cache hits depend on what an engine served before (two workers, two engines):
    everything else must be equal."""
    if isinstance(value, dict):
        return {k: without_cached_tokens(v) for k, v in value.items() if k != "cached_tokens"}
    return value


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The evaluation with the in-process runner, for comparison."""
    base = tmp_path_factory.mktemp("reference")
    return run_evaluation(spec_for(base), out_dir=str(base / "out"))


def test_job_graph_does_not_grow_with_the_gold_files(tmp_path):
    sizes = {}
    for count in (10, 2000):
        folder = tmp_path / f"n{count:05d}"
        folder.mkdir()
        gold = folder / "gold.json"
        gold.write_text(json.dumps(processbench_records(count)))
        answers = folder / "answers.jsonl"
        answers.write_text("".join(json.dumps({"id": f"g{i}", "answer": str(i + 2)}) + "\n"
                                   for i in range(count)))
        pipeline = beam.Pipeline()
        build_evaluation_pipeline(pipeline, spec_for(folder, gold=[str(gold)],
                                                     answers=str(answers)),
                                  out_dir=str(tmp_path / "out"))
        sizes[count] = len(pipeline.to_runner_api().SerializeToString())
    assert abs(sizes[2000] - sizes[10]) < 100, sizes  # no record is in the graph


def test_the_launcher_does_not_read_the_gold_files(tmp_path, monkeypatch, reference):
    """Every gold and answers reader fails in the launcher's process; the workers (subprocesses
    of the multi-processing runner, which import their own, unpatched modules) read the files
    and the evaluation gives the in-process runner's report. (``read_answers`` itself is left
    alone: the graph names it, so a patched one would be shipped to the workers.)"""
    def refuse(*args, **kwargs):
        raise AssertionError("the launcher read a gold or answers file")

    for module, name in ((evaluate_graph, "read_gold_file"), (gold_files, "read_gold_file"), (gold_files, "read_input_text"),
                         (gold_files, "parse_gold_text"), (gold_files, "answers_from_text"),
                         (gold_files, "load_gold_file"), (gold_files, "load_answers_file"),
                         (gold, "parse_gold_text"), (gold, "decode_records"),
                         (answers, "answers_from_text"), (answers, "decode_records")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the workers import the scripted engine
    spec = spec_for(tmp_path, runner={**MANIFEST["runner"],
                                      "direct_running_mode": "multi_processing",
                                      "direct_num_workers": 2})
    result = run_evaluation(spec, out_dir=str(tmp_path / "out"))
    assert result.report["items"]["reconciled"]
    assert result.report["items"] == reference.report["items"]
    assert without_cached_tokens(result.report["annotators"]) == without_cached_tokens(
        reference.report["annotators"])


def test_the_pipeline_counts_the_gold_records(tmp_path, reference):
    work = Path(reference.out_dir) / "_work" / "gold_read.json"
    # processbench_small: 5 items + 1 bad label; step_ratings_small: 3 items + 3 bad records
    assert json.loads(work.read_text()) == {"items": 8, "rejects": 4}
    assert reference.report["items"]["read"] == 12
    assert reference.info["records_read"] == 12


def test_a_gold_file_edited_after_the_launch_is_refused(tmp_path):
    gold = tmp_path / "processbench_small.json"
    gold.write_text(Path(GOLD[0]).read_text())
    spec = spec_for(tmp_path, gold=[str(gold)], answers=None)
    gold.write_text(Path(GOLD[0]).read_text().replace("We add 2", "We add two"))
    with pytest.raises(GoldFileError, match="changed after the evaluation started"):
        run_evaluation(spec, out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "COMPLETED").exists()


def test_an_unreadable_gold_file_is_an_input_error(tmp_path, capsys):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "x", "problem": "What is 1 + 1?"')
    code = cli.main(["evaluate", "--gold", str(broken), "--manifest", str(manifest),
                     "--annotators", "judge", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "steplabel: error: gold file broken is not valid JSON" in err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"id": "é"}\n'.encode("latin-1"))
    code = cli.main(["evaluate", "--gold", str(latin), "--manifest", str(manifest),
                     "--annotators", "judge", "--out", str(tmp_path / "out2")])
    assert code == 2 and f"gold file {latin} is not UTF-8" in capsys.readouterr().err


@pytest.fixture
def bucket():
    memfs.clear()
    yield "memfs://bucket"
    memfs.clear()


def test_remote_gold_and_answers_files(tmp_path, bucket, reference):
    remote = []
    for path in [*GOLD, ANSWERS]:
        target = f"{bucket}/gold/{Path(path).name}"
        with FileSystems.create(target) as handle:
            handle.write(Path(path).read_bytes())
        remote.append(target)
    spec = spec_for(tmp_path, gold=remote[:2], answers=remote[2])
    assert spec.hash == spec_for(tmp_path).hash  # the same content: the same evaluation
    result = run_evaluation(spec, out_dir=f"{bucket}/out")
    assert result.report["items"] == reference.report["items"]
    assert result.report["annotators"] == reference.report["annotators"]
    assert sorted(json.dumps(r, sort_keys=True) for r in read_rows(f"{bucket}/out",
                                                                   "predictions")) == sorted(
        json.dumps(r, sort_keys=True) for r in read_rows(reference.out_dir, "predictions"))
