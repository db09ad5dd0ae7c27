"""Sources: JSONL, Parquet and Hugging Face ``datasets`` (local folders and files), with
field mapping and gold-answer formats."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steplabel.annotators.graders import get_grader
from steplabel.pipelines.job import run_job
from steplabel.pipelines.sources import read_local_items, validate_item
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

RECORDS = [{"uid": f"g{i}", "problem": f"What is {i} + 1?",
            "solution": f"{i} plus one is {i + 1}.\n#### {i + 1}"} for i in range(4)]
FIELDS = {"id": "uid", "question": "problem", "answer": "solution"}


def source(kind: str, path, **extra) -> dict:
    return {"kind": kind, "path": str(path), "fields": FIELDS, "answer_format": "gsm8k", **extra}


def check_items(src: dict, expected: int = 4) -> None:
    manifest = manifest_from_dict({"name": "s", "source": src})
    items = read_local_items(manifest.source)
    assert len(items) == expected
    problems = [validate_item(item, fields=manifest.source.fields, answer_format="gsm8k",
                              manifest_hash="h", grader=get_grader())[0] for item in items]
    assert [p.problem_id for p in problems] == [f"g{i}" for i in range(expected)]
    assert [p.gold_answer for p in problems] == [str(i + 1) for i in range(expected)]


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    check_items(source("hf", tmp_path / "ds"))


def test_hf_datasetdict_split(tmp_path):
    datasets.DatasetDict({"test": datasets.Dataset.from_list(RECORDS)}).save_to_disk(
        str(tmp_path / "dd"))
    check_items(source("hf", tmp_path / "dd", split="test"))


def test_hf_builder_on_local_json_and_limit(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    check_items(source("hf", path, limit=2), expected=2)


def test_parquet_source(tmp_path):
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p.parquet")
    check_items(source("parquet", tmp_path / "p.parquet"))


def test_hub_dataset_must_be_pinned():
    from steplabel.schemas.config import ConfigError

    with pytest.raises(ConfigError, match="revision"):
        manifest_from_dict({"name": "s", "source": {"kind": "hf", "dataset": "openai/gsm8k"}})


def test_job_from_hf_source(tmp_path):
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    manifest = manifest_from_dict({
        "name": "hf-job",
        "source": source("hf", tmp_path / "ds"),
        "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 2},
        "runner": {"num_shards": 1},
    })
    result = run_job(manifest, out_dir=str(tmp_path / "out"))
    assert result.stats["reconciliation"]["ok"]
    assert result.info["rows"]["trajectories"] == 8


def test_estimate_rows_where_it_is_cheap_on_the_launcher(tmp_path):
    from steplabel.pipelines.sources import estimate_rows

    def estimate(src: dict):
        return estimate_rows(manifest_from_dict({"name": "s", "source": src}).source)

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(RECORDS)}).save_to_disk(
        str(tmp_path / "dd"))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p.parquet")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    assert estimate(source("hf", tmp_path / "ds")) == 4  # save_to_disk folders: memory-mapped
    assert estimate(source("hf", tmp_path / "dd", split="test")) == 4
    assert estimate(source("hf", tmp_path / "ds", limit=3)) == 3
    assert estimate(source("hf", tmp_path / "dd", split="nope")) is None  # the job reports it
    assert estimate(source("hf", tmp_path / "data.jsonl")) is None  # datasets would convert it
    assert estimate(source("parquet", tmp_path / "p.parquet")) == 4
    assert estimate(source("jsonl", tmp_path / "data.jsonl")) == 4
