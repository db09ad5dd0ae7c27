"""A dataset is a pure function of its manifest (issue #27).

The same manifest gives byte-identical output shards and the same content hash whatever
``max_in_flight``, wave size and worker scheduling, although the scripted engine's prefix-cache
hits (like vLLM's) depend on the order it saw requests in: those are the run's metrics
(``run_metrics.json``), never a row's. A dataset written before cost records lost
``cached_tokens`` still verifies against its regeneration, the moved column ignored and named;
columns the manifest declares non-deterministic are accepted, and only they.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steplabel.dataset import identity, storage
from steplabel.dataset.regenerate import compare_datasets
from steplabel.pipelines.cli import main
from steplabel.pipelines.finalize import run_metrics
from steplabel.pipelines.job import run_job
from steplabel.schemas import records
from steplabel.schemas.manifest import manifest_from_dict
from test_pipeline import BAD_LINES, manifest_for, write_problems

COST_COLUMNS = ("cost_policy", "cost_mc", "cost_judge", "cost")


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {relative: Path(path).read_bytes()
            for relative, path in identity.shard_files(str(out)).items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    base = tmp_path_factory.mktemp("determinism")
    return write_problems(base / "problems.jsonl", 10, BAD_LINES)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """One pipeline, one request in flight at a time."""
    out = tmp_path_factory.mktemp("reference") / "out"
    manifest = manifest_for(source, runner={"num_shards": 2, "max_in_flight": 1,
                                            "wave_size": 0})
    result = run_job(manifest, out_dir=str(out))
    assert result.stats["reconciliation"]["ok"]
    return out, result


# ---------------------------------------------------------------------------------------------
# Byte-identical shards


@pytest.mark.pipeline
@pytest.mark.parametrize("runner", [
    {"max_in_flight": 16, "wave_size": 4},  # 19 input rows: five waves
    {"max_in_flight": 3, "wave_size": 7, "direct_running_mode": "multi_processing",
     "direct_num_workers": 2},  # shards grouped and written by two worker processes
], ids=["waves", "two-workers"])
def test_same_manifest_same_bytes_whatever_the_scheduling(source, reference, runner, tmp_path,
                                                          monkeypatch):
    # Worker processes import the scripted engine's module themselves.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    reference_out, reference_result = reference
    manifest = manifest_for(source, runner={"num_shards": 2, **runner})
    out = tmp_path / "out"
    result = run_job(manifest, out_dir=str(out))
    assert result.stats["reconciliation"]["ok"]

    shards = shard_bytes(out)
    assert shards == shard_bytes(reference_out)
    assert any(name.startswith("trajectories/") for name in shards)
    assert result.info["content_hash"] == reference_result.info["content_hash"] == \
        identity.content_hash(str(out))
    # The scripted engine served prompts from its prefix cache: counted for the run, per role,
    # in run_metrics.json and stats.json's run section, and on no row.
    metrics = json.loads((out / identity.RUN_METRICS).read_text())
    assert metrics == json.loads((out / "stats.json").read_text())["run"]
    cache = metrics["prefix_cache"]
    assert set(cache) == {"policy", "completer", "judge", "all"}
    assert cache["all"]["cached_tokens"] > 0
    assert cache["all"]["prompt_tokens"] >= cache["all"]["cached_tokens"]
    for output in records.OUTPUTS:
        for row in storage.iter_rows(str(out), output):
            for column in COST_COLUMNS:
                if row.get(column) is not None:
                    assert set(row[column]) == {"requests", "rollouts", "prompt_tokens",
                                                "generated_tokens"}


@pytest.mark.pipeline
def test_content_hash_is_over_the_shards_only_in_a_defined_order(reference, tmp_path):
    out, result = reference
    lines = []
    for path in sorted(out.rglob("*part-*.parquet")):
        relative = path.relative_to(out).as_posix()
        if relative.startswith("_work/"):
            continue
        lines.append(f"{relative}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    expected = "sha256:" + hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    assert result.info["content_hash"] == expected
    assert json.loads((out / "info.json").read_text())["content_hash"] == expected
    assert expected in (out / "README.md").read_text()

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("stats.json", identity.RUN_METRICS, "README.md"):
        (copy / name).write_text("{}")
    shutil.rmtree(copy / "_work", ignore_errors=True)
    assert identity.content_hash(str(copy)) == expected  # logs, stats, metrics: not identity
    shard = sorted((copy / "trajectories").glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"\0")
    assert identity.content_hash(str(copy)) != expected


# ---------------------------------------------------------------------------------------------
# verify: hashes, old datasets, declared non-determinism


@pytest.mark.pipeline
def test_verify_prints_the_content_hash_of_both(reference, tmp_path, capsys):
    out, result = reference
    status = main(["regenerate", str(out / "manifest.lock.json"), "--out",
                   str(tmp_path / "again"), "--verify", str(out)])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    digest = result.info["content_hash"]
    assert f"content hash (regenerated): {digest}" in stdout
    assert f"content hash (reference):   {digest} (as its info.json records)" in stdout
    assert "content hashes identical" in stdout
    assert "every row identical" in stdout


def old_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as schema 1.1 had it: cost structs with ``cached_tokens`` last, and none of
    the columns schema 1.3 added (the posterior)."""
    old_cost = pa.struct([*records.COST, pa.field("cached_tokens", pa.int64())])
    return pa.schema([pa.field(f.name, old_cost) if f.type == records.COST else f
                      for f in schema if f.name not in identity.ADDED_COLUMNS])


def make_old_dataset(new: Path, old: Path) -> int:
    """A copy of ``new`` as the code before schema 1.2 wrote it: every cost struct with a
    ``cached_tokens`` count (arbitrary, as the order of requests made it), ``info.json``
    without a content hash. Returns how many cost structs got one."""
    shutil.copytree(new, old)
    structs = 0
    for output, schema in records.OUTPUTS.items():
        for path in storage.output_files(str(old), output):
            rows = pq.read_table(path).to_pylist()
            for i, row in enumerate(rows):
                for column in identity.ADDED_COLUMNS:
                    row.pop(column, None)
                for column in COST_COLUMNS:
                    if row.get(column) is not None:
                        row[column] = {**row[column], "cached_tokens": 7 * i + len(column)}
                        structs += 1
            pq.write_table(pa.Table.from_pylist(rows, schema=old_schema(schema)), path)
    info = json.loads((old / "info.json").read_text())
    info.pop("content_hash")
    info["schema_version"] = "1.1"
    (old / "info.json").write_text(json.dumps(info))
    return structs


@pytest.mark.pipeline
def test_an_old_dataset_verifies_with_the_moved_column_ignored_and_named(reference, tmp_path,
                                                                         capsys):
    out, result = reference
    old = tmp_path / "old"
    assert make_old_dataset(out, old) > 0
    assert pq.read_schema(next((old / "trajectories").glob("part-*.parquet"))).field(
        "cost_mc").type.get_field_index("cached_tokens") >= 0

    status = main(["regenerate", str(old / "manifest.lock.json"), "--out",
                   str(tmp_path / "again"), "--verify", str(old), "--verify-json",
                   str(tmp_path / "verify.json")])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stdout + stderr
    assert "ignored column cost_judge.cached_tokens" in stdout
    assert "since schema 1.2 they are run metrics" in stdout
    assert "ignored column mc_posterior_mean" in stdout and "added in schema 1.3" in stdout
    assert "DIFFERENCES FOUND" not in stdout
    assert "every row identical" in stdout and "ignoring moved columns" in stdout
    old_hash = identity.content_hash(str(old))
    assert f"content hash (regenerated): {result.info['content_hash']}" in stdout
    assert f"content hash (reference):   {old_hash}" in stdout
    assert "content hashes differ: the reference's rows hold the moved columns" in stdout
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["ok"] and not report["content_hash"]["identical"]
    assert report["content_hash"]["reference_recorded"] is None
    trajectories = next(o for o in report["outputs"] if o["output"] == "trajectories")
    assert trajectories["differing"] == 0 and trajectories["differing_columns"] == {}
    assert trajectories["moved_columns_ignored"]["cost_mc.cached_tokens"] == \
        trajectories["rows_reference"]
    # The regenerated dataset is the new one, byte for byte.
    assert shard_bytes(tmp_path / "again") == shard_bytes(out)


def change_a_judge_reply(dataset: Path) -> None:
    shard = sorted((dataset / "trajectories").glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["judge_replies"] = ["a different reply"] + (rows[0]["judge_replies"] or [])[1:]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)


@pytest.mark.pipeline
def test_declared_nondeterministic_columns_are_accepted_and_only_they(reference, tmp_path):
    out, result = reference
    other = tmp_path / "other"
    shutil.copytree(out, other)
    change_a_judge_reply(other)

    strict = compare_datasets(str(other), str(out))
    assert not strict.ok
    assert strict.reference_recorded == result.info["content_hash"] == strict.reference_hash
    assert strict.regenerated_hash != strict.reference_hash
    assert "column judge_replies: differs in 1 row(s)" in strict.render()

    lenient = compare_datasets(str(other), str(out), accept=("judge_*",))
    assert lenient.ok
    text = lenient.render()
    assert "column judge_replies: differs in 1 row(s), accepted" in text
    assert "1 differing only in declared non-deterministic columns" in text
    assert "content hashes differ: declared non-deterministic columns differ" in text
    # Declaring the judge's columns does not excuse a changed label.
    shard = sorted((other / "trajectories").glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["solution"] += " (changed)"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    assert not compare_datasets(str(other), str(out), accept=("judge_*",)).ok


@pytest.mark.pipeline
def test_an_undeclared_difference_names_the_engine_that_may_cause_it(reference, tmp_path):
    out, _ = reference
    other = tmp_path / "other"
    shutil.copytree(out, other)
    change_a_judge_reply(other)
    manifest = manifest_for(Path("problems.jsonl"), models={
        "policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"},
        "judge": {"kind": "vllm", "model": "embedded", "dtype": "bfloat16"}})
    text = compare_datasets(str(other), str(out),
                            determinism=identity.engine_determinism(manifest)).render()
    assert ("column judge_replies: differs in 1 row(s) (may differ: judge engine bfloat16: "
            "results depend on how requests are batched; the manifest does not declare it in "
            "nondeterministic_columns)") in text


# ---------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.unit
def test_engine_determinism_in_the_lock_says_which_engines_cannot_be_and_why():
    manifest = manifest_from_dict({
        "name": "mixed", "source": {"kind": "jsonl", "path": "x.jsonl"},
        "models": {"policy": {"kind": "vllm", "model": "embedded", "dtype": "float32"},
                   "completer": {"kind": "vllm", "model": "embedded", "dtype": "bfloat16"},
                   "judge": {"kind": "openai", "model": "m", "base_url": "http://h/v1"}},
        "monte_carlo": {}, "judge": {},
        "nondeterministic_columns": ["judge_*", "mc_*"]})
    determinism = identity.engine_determinism(manifest)
    assert determinism["deterministic"] is False
    engines = determinism["engines"]
    assert engines["policy"]["deterministic"] is True
    assert engines["completer"]["deterministic"] is False
    assert "bfloat16" in engines["completer"]["reason"]
    assert engines["judge"]["deterministic"] is False
    assert "seeds" in engines["judge"]["reason"]
    assert "judge_replies" not in determinism["may_differ"]  # patterns, not every column
    assert "judge_*" in determinism["may_differ"] and "mc_*" in determinism["may_differ"]
    assert determinism["nondeterministic_columns"] == ["judge_*", "mc_*"]
    # How a dataset is compared is not what it computes: the manifest hash ignores it.
    plain = manifest_from_dict({**manifest.to_dict(), "nondeterministic_columns": []})
    assert plain.hash == manifest.hash

    only_policy = manifest_from_dict({"name": "p", "source": {"kind": "jsonl", "path": "x"}})
    assert identity.engine_determinism(only_policy)["deterministic"] is True
    assert set(identity.engine_determinism(only_policy)["engines"]) == {"policy"}


@pytest.mark.unit
def test_column_patterns_and_moved_fields():
    assert identity.matches("cost_judge.generated_tokens", ("cost_judge",))
    assert identity.matches("cost_judge.generated_tokens", ("cost_judge.*",))
    assert identity.matches("judge_replies", ("judge_*",))
    assert not identity.matches("labels", ("judge_*",))
    assert identity.moved_field("cost_mc.cached_tokens") == "cached_tokens"
    assert identity.moved_field("cached_tokens") is None  # a top-level column never moved
    assert identity.moved_field("cost_mc.rollouts") is None


@pytest.mark.unit
def test_run_metrics_split_prefix_cache_hits_by_role():
    counters = {"engine_prompt_tokens_policy": 100, "engine_cached_tokens_policy": 40,
                "engine_prompt_tokens_judge": 50, "engine_cached_tokens_judge": 0,
                "engine_busy_ms": 1500, "stage_sample_resumed": 2, "policy_samples": 9}
    metrics = run_metrics(counters)
    assert metrics["prefix_cache"]["policy"] == {"prompt_tokens": 100, "cached_tokens": 40,
                                                 "cached_share": 0.4}
    assert metrics["prefix_cache"]["all"] == {"prompt_tokens": 150, "cached_tokens": 40,
                                              "cached_share": 0.266667}
    assert metrics["engine_busy_s"] == 1.5
    assert "policy_samples" not in metrics["counters"]  # the data's own counts stay in stats
    assert metrics["counters"]["stage_sample_resumed"] == 2
    assert run_metrics({})["prefix_cache"] == {
        "all": {"prompt_tokens": 0, "cached_tokens": 0, "cached_share": None}}


# ---------------------------------------------------------------------------------------------
# The embedded model (run by the coordinator: never with -m "not engine")


@pytest.mark.engine
def test_embedded_model_gives_byte_identical_shards_whatever_the_scheduling(tmp_path):
    """The real vLLM engine (float32, seeded), prefix caching on: two runs of one manifest,
    one request in flight and one pipeline against many in flight in waves, write the same
    bytes and the same content hash; only run_metrics.json may differ."""
    source = tmp_path / "problems.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in [
        {"id": "a", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
         "answer": "7"},
        {"id": "b", "question": "There are 9 birds on a tree and 5 fly away. How many are left?",
         "answer": "4"},
        {"id": "c", "question": "A box holds 6 pens. How many pens are in 2 boxes?",
         "answer": "12"},
    ]) + "\n")

    def manifest(runner: dict):
        return manifest_from_dict({
            "name": "embedded-determinism",
            "seed": 11,
            "source": {"kind": "jsonl", "path": str(source)},
            "models": {"policy": {"kind": "vllm", "model": "embedded", "dtype": "float32",
                                  "max_model_len": 1024}},
            "policy": {"samples": 2, "sampling": {"temperature": 0.8, "max_tokens": 48}},
            "monte_carlo": {"rollouts": 2, "sampling": {"temperature": 0.8, "max_tokens": 32}},
            "judge": {"response_prefix": "The earliest wrong paragraph is \\boxed{",
                      "sampling": {"temperature": 0.0, "max_tokens": 4, "stop": ["}"]}},
            "consensus": {},
            "runner": {"num_shards": 2, **runner},
        })

    one = run_job(manifest({"max_in_flight": 1, "wave_size": 0}), out_dir=str(tmp_path / "one"))
    many = run_job(manifest({"max_in_flight": 32, "wave_size": 2}),
                   out_dir=str(tmp_path / "many"))
    assert one.stats["reconciliation"]["ok"] and many.stats["reconciliation"]["ok"]
    assert one.info["rows"]["trajectories"] + one.info["rows"]["rejected"] > 0
    assert many.info["rows"] == one.info["rows"]
    assert shard_bytes(tmp_path / "many") == shard_bytes(tmp_path / "one")
    assert many.info["content_hash"] == one.info["content_hash"]
    lock = json.loads((tmp_path / "one" / "manifest.lock.json").read_text())
    assert lock["determinism"]["deterministic"] is True
    # vLLM's prefix cache served the shared prompt prefixes: measured, for the run only.
    cache = json.loads((tmp_path / "many" / identity.RUN_METRICS).read_text())["prefix_cache"]
    assert cache["all"]["cached_tokens"] > 0
