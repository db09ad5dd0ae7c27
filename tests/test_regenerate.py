"""``steplabel regenerate``: rerun from the lock, verify row by row, refuse changed inputs."""

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from steplabel.dataset import storage
from steplabel.pipelines.cli import main
from steplabel.pipelines.job import run_job
from steplabel.dataset.regenerate import (
    check_environment,
    check_inputs,
    check_models,
    compare_datasets,
    differing_columns,
    keyed_rows,
    values_equal,
)
from steplabel.schemas.manifest import manifest_from_dict
from test_pipeline import BAD_LINES, manifest_for, write_problems

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small dataset made by a real run of the pipeline with the scripted engine."""
    base = tmp_path_factory.mktemp("regenerate")
    source = write_problems(base / "problems.jsonl", 6, BAD_LINES)
    out = base / "dataset"
    run_job(manifest_for(source), out_dir=str(out))
    return base, out


def test_regenerate_verify_reports_every_row_identical(dataset, tmp_path, capsys):
    _, out = dataset
    target = tmp_path / "again"
    status = main(["regenerate", str(out / "manifest.lock.json"), "--out", str(target),
                   "--verify", str(out)])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    assert (target / "COMPLETED").exists()
    assert "every row identical" in stdout
    info = json.loads((out / "info.json").read_text())
    for output, count in info["rows"].items():
        line = next(l for l in stdout.splitlines() if l.strip().startswith(output + " "))
        assert f"{count} vs {count} rows: {count} identical, 0 differing" in line
    # Same machine, same engine: the shard files are byte-identical too.
    for output in info["rows"]:
        for path in storage.output_files(str(out), output):
            twin = target / Path(path).relative_to(out)
            assert twin.read_bytes() == Path(path).read_bytes()


def _rewrite(path: Path, change) -> None:
    table = pq.read_table(path)
    rows = change(table.to_pylist())
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)


def test_verify_detects_a_tampered_shard(dataset, tmp_path, capsys):
    _, out = dataset
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    shard = sorted((tampered / "trajectories").glob("part-*.parquet"))[0]
    changed = {}

    def flip_first_label(rows):
        rows[0]["labels"] = [not rows[0]["labels"][0]] + rows[0]["labels"][1:]
        rows[0]["cost_mc"] = {**rows[0]["cost_mc"], "rollouts": rows[0]["cost_mc"]["rollouts"] + 1}
        changed.update(problem_id=rows[0]["problem_id"], solution_index=rows[0]["solution_index"])
        return rows

    _rewrite(shard, flip_first_label)
    _rewrite(sorted((tampered / "rejected").glob("part-*.parquet"))[0], lambda rows: rows[1:])

    status = main(["regenerate", str(out / "manifest.lock.json"), "--out",
                   str(tmp_path / "again"), "--verify", str(tampered),
                   "--verify-json", str(tmp_path / "verify.json")])
    stdout = capsys.readouterr().out
    assert status == 1
    assert "DIFFERENCES FOUND" in stdout
    assert "column labels: differs in 1 row(s)" in stdout
    assert "column cost_mc.rollouts: differs in 1 row(s)" in stdout
    assert f"problem_id={changed['problem_id']!r}" in stdout
    report = json.loads((tmp_path / "verify.json").read_text())
    outputs = {o["output"]: o for o in report["outputs"]}
    assert outputs["trajectories"]["differing"] == 1
    assert set(outputs["trajectories"]["differing_columns"]) == {"labels", "cost_mc.rollouts"}
    assert outputs["rejected"]["only_regenerated"] == 1 and outputs["rejected"]["differing"] == 0
    assert outputs["omegaprm_states"]["ok"] and not report["ok"]


def test_refuses_when_an_input_file_changed(dataset, tmp_path, capsys):
    base, out = dataset
    lock = json.loads((out / "manifest.lock.json").read_text())
    original = Path(lock["manifest"]["source"]["path"])
    copy = tmp_path / "problems.jsonl"
    shutil.copy(original, copy)
    lock["manifest"]["source"]["path"] = str(copy)
    lock["inputs"] = {str(copy): lock["inputs"][str(original)]}
    lock_path = tmp_path / "manifest.lock.json"
    lock_path.write_text(json.dumps(lock))
    with open(copy, "a", encoding="utf-8") as handle:
        handle.write('{"id": "new", "question": "What is 1 + 1?", "answer": "2"}\n')

    status = main(["regenerate", str(lock_path), "--out", str(tmp_path / "again")])
    stderr = capsys.readouterr().err
    assert status == 2
    assert f"input file {copy} changed" in stderr
    assert hashlib.sha256(copy.read_bytes()).hexdigest()[:12] in stderr
    assert not (tmp_path / "again").exists()  # nothing was run

    copy.unlink()
    status = main(["regenerate", str(lock_path), "--out", str(tmp_path / "again")])
    assert status == 2
    assert f"input file {copy} is missing" in capsys.readouterr().err


def test_refuses_to_verify_into_the_reference(dataset, capsys):
    _, out = dataset
    status = main(["regenerate", str(out / "manifest.lock.json"), "--out", str(out),
                   "--verify", str(out)])
    assert status == 2
    assert "same directory" in capsys.readouterr().err


def test_the_lock_pins_what_the_issue_lists(dataset):
    _, out = dataset
    lock = json.loads((out / "manifest.lock.json").read_text())
    manifest = manifest_from_dict(lock["manifest"])
    assert manifest.hash == lock["manifest_hash"]
    assert all(len(digest) == 64 for digest in lock["inputs"].values())
    assert set(lock["models"]) == {"policy", "completer", "judge"}
    assert all("engine" in entry for entry in lock["models"].values())
    assert set(lock["sampling"]["stages"]) == {"policy", "monte_carlo", "omegaprm", "judge"}
    assert lock["sampling"]["run_seed"] == manifest.seed
    assert lock["annotators"]["monte_carlo"]["rollouts"] == 4
    assert lock["annotators"]["versions"]["grader"]
    assert set(lock["prompt_templates"]) == {"policy_steps_v1", "judge_processbench_v1"}
    assert lock["packages"]["pyarrow"] and lock["code"]["steplabel"]
    assert "VLLM_BATCH_INVARIANT" in lock["environment"]


# ---------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.unit
def test_check_inputs_names_changed_missing_and_new_files():
    locked = {"a.jsonl": "1" * 64, "b.jsonl": "2" * 64}
    current = {"a.jsonl": "3" * 64, "c.jsonl": "4" * 64}
    problems = check_inputs(locked, current)
    assert problems == [
        "input file a.jsonl changed: sha256 111111111111 in the lock, 333333333333 now",
        "input file b.jsonl is missing (sha256 222222222222 in the lock)",
        "input file c.jsonl is new: the source matches a file the locked run did not read",
    ]
    assert check_inputs(locked, dict(locked)) == []


@pytest.mark.unit
def test_check_models_refuses_changed_weights_and_names_the_file(tmp_path):
    from steplabel.models import hash_model_dir, weights_digest

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "config.json").write_text("{}")
    manifest = manifest_from_dict({"name": "m", "source": {"kind": "jsonl", "path": "x.jsonl"},
                                   "models": {"policy": {"kind": "vllm", "model": str(folder)}}})
    entry = {"kind": "vllm", "model": str(folder), "weights_sha256": weights_digest(folder),
             "files": hash_model_dir(folder)}
    locked = {"policy": entry, "completer": entry, "judge": entry}
    assert check_models(locked, manifest) == ([], [])

    (folder / "model.safetensors").write_bytes(b"weights v2")
    refusals, _ = check_models(locked, manifest)
    assert len(refusals) == 3  # every role served by the folder
    assert all("weights sha256" in r and "model.safetensors" in r for r in refusals)
    assert all("config.json" not in r for r in refusals)


@pytest.mark.unit
def test_package_and_code_differences_warn():
    from steplabel.pipelines.lock import code_version, package_versions

    lock = {"packages": {**package_versions(), "pyarrow": "0.0.1"},
            "code": {**code_version(), "git_commit": "0" * 40, "git_dirty": False}}
    warnings = check_environment(lock)
    assert any(w.startswith("package pyarrow: 0.0.1 in the lock") for w in warnings)
    assert any(w.startswith(f"code commit {'0' * 40} in the lock") for w in warnings)


@pytest.mark.unit
def test_row_comparison_helpers():
    nan = float("nan")
    assert values_equal([1.0, nan], [1.0, nan])
    assert not values_equal(0.1 + 0.2, 0.3)  # bit-identity, no tolerance
    assert not values_equal(1, True)
    a = {"labels": [True], "cost": {"rollouts": 4, "cached_tokens": 3}, "x": None}
    b = {"labels": [True], "cost": {"rollouts": 4, "cached_tokens": 5}, "x": 1}
    assert differing_columns(a, b) == ["cost.cached_tokens", "x"]
    keyed = keyed_rows([{"k": "p"}, {"k": "p"}, {"k": "q"}], ("k",))
    assert list(keyed) == [("p",), ("p", 1), ("q",)]


def test_compare_datasets_against_itself(dataset):
    _, out = dataset
    comparison = compare_datasets(str(out), str(out))
    assert comparison.ok
    assert all(o.shards_byte_identical == o.shards for o in comparison.outputs)
