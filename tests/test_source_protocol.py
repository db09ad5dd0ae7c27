"""The ``Source`` protocol: every source kind reads (in the driver and by Beam on the workers,
the same records), counts its rows, fingerprints its input and writes a sample of it."""

import hashlib
import json

import apache_beam as beam
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from steplabel.pipelines.sources import (
    SOURCE_KINDS,
    DatasetsSource,
    JsonlSource,
    ParquetSource,
    ReadProblems,
    RowCountError,
    Source,
    open_source,
)
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

RECORDS = [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}
           for i in range(6)]


def config(kind: str, path, **extra):
    return manifest_from_dict({"name": "s", "source": {"kind": kind, "path": str(path),
                                                       "name": "src", **extra}}).source


@pytest.fixture
def files(tmp_path):
    """The same six records as JSONL (with a blank line), Parquet and a datasets folder."""
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS[:3]) + "\n\n"
                                      + "\n".join(json.dumps(r) for r in RECORDS[3:]) + "\n")
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p.parquet")
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    return {"jsonl": tmp_path / "p.jsonl", "parquet": tmp_path / "p.parquet",
            "hf": tmp_path / "ds"}


def as_record(data) -> dict:
    return json.loads(data) if isinstance(data, bytes) else dict(data)


def test_every_kind_has_a_class_that_meets_the_protocol(files):
    assert set(SOURCE_KINDS) == {"jsonl", "parquet", "hf"}
    expected = {"jsonl": JsonlSource, "parquet": ParquetSource, "hf": DatasetsSource}
    for kind, path in files.items():
        source = open_source(config(kind, path))
        assert type(source) is expected[kind] and source.kind == kind
        assert isinstance(source, Source)
        source.check()  # the input exists


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_reads_the_same_records_in_the_driver_and_on_workers(files, kind):
    source = open_source(config(kind, files[kind]))
    local = source.read_local()
    assert [as_record(item.data) for item in local] == RECORDS
    assert {item.source for item in local} == {"src"}
    with TestPipeline() as p:
        read = p | ReadProblems(source.config, hf_range_rows=4)
        assert_that(read | beam.Map(lambda item: json.dumps(as_record(item.data),
                                                            sort_keys=True)),
                    equal_to([json.dumps(r, sort_keys=True) for r in RECORDS]))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_limit_reads_the_first_records(files, kind):
    source = open_source(config(kind, files[kind], limit=4))
    assert [as_record(i.data) for i in source.read_local()] == RECORDS[:4]
    with TestPipeline() as p:
        read = p | ReadProblems(source.config)
        assert_that(read | beam.Map(lambda item: as_record(item.data)["id"]),
                    equal_to(["p0", "p1", "p2", "p3"]))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_counts_rows_exactly_and_cheaply(files, kind):
    assert open_source(config(kind, files[kind])).count_rows() == 6  # blank lines not rows
    assert open_source(config(kind, files[kind], limit=2)).count_rows() == 2
    assert open_source(config(kind, files[kind])).estimate_rows() == 6
    assert open_source(config(kind, files[kind], limit=2)).estimate_rows() == 2


def test_estimate_is_none_where_counting_is_not_cheap(files):
    assert open_source(config("jsonl", files["jsonl"])).estimate_rows(max_bytes=10) is None
    assert open_source(config("hf", files["jsonl"])).estimate_rows() is None  # would convert
    remote = config("jsonl", "gs://bucket/p.jsonl")
    assert open_source(remote).estimate_rows() is None


def test_hub_dataset_cannot_be_counted_offline_and_says_so():
    hub = manifest_from_dict({"name": "s", "source": {
        "kind": "hf", "dataset": "no-such-org/no-such-dataset", "revision": "abc"}}).source
    source = open_source(hub)
    source.check()  # pinned by its revision: nothing to check on the launcher
    assert source.fingerprint() == {} and source.estimate_rows() is None
    with pytest.raises(RowCountError, match="cannot count the rows of the datasets source"):
        source.count_rows()


def test_missing_input_is_a_clear_error(tmp_path):
    for kind in ("jsonl", "parquet"):
        with pytest.raises(FileNotFoundError, match="matches no file"):
            open_source(config(kind, tmp_path / "nope.*")).check()


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_fingerprint_is_the_sha256_of_each_local_file(files, kind):
    path = files[kind]
    assert open_source(config(kind, path)).fingerprint() == {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    glob = str(path.parent / f"*.{kind}")
    assert list(open_source(config(kind, glob)).fingerprint()) == [str(path)]


def test_fingerprint_of_a_datasets_folder_covers_its_files_and_changes_with_them(files):
    source = open_source(config("hf", files["hf"]))
    pins = source.fingerprint()
    assert sorted(pins) == sorted(str(f) for f in files["hf"].rglob("*") if f.is_file())
    (files["hf"] / "extra.txt").write_text("x")
    assert source.fingerprint() != pins


def test_remote_files_are_pinned_by_what_their_filesystem_reports(files, monkeypatch):
    from steplabel.pipelines import sources

    # The pin rule on Beam's local filesystem, whose checksum is only the size: mtime added.
    path = files["jsonl"]
    size = path.stat().st_size
    [(name, pin)] = sources.remote_fingerprints(str(path)).items()
    assert name == str(path) and pin.startswith(f"checksum:{size};size:{size};mtime:")
    # A remote path (any scheme) is pinned that way, never downloaded and hashed.
    seen = []
    monkeypatch.setattr(sources, "remote_fingerprints",
                        lambda pattern: seen.append(pattern) or {pattern: "checksum:x"})
    for kind in ("jsonl", "parquet", "hf"):
        assert open_source(config(kind, "gs://bucket/p.*")).fingerprint() == {
            "gs://bucket/p.*": "checksum:x"}
    assert seen == ["gs://bucket/p.*"] * 3


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_sample_writes_the_records_at_the_indices(files, kind, tmp_path):
    source = open_source(config(kind, files[kind], limit=5))
    folder = tmp_path / f"sample-{kind}"
    folder.mkdir()
    sampled = source.sample([0, 2, 4], folder)
    assert sampled.limit is None and sampled.source_name == "src"
    assert sampled.kind == ("parquet" if kind == "hf" else kind)
    again = open_source(sampled)
    assert [as_record(i.data) for i in again.read_local()] == [RECORDS[i] for i in (0, 2, 4)]
    assert again.count_rows() == 3
