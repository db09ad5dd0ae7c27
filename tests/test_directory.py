"""The job directory ``run`` and ``evaluate`` share (:mod:`steplabel.dataset.directory`): the same
claim, refusals and clean-up on a local folder and on an object store (``memfs://``, Beam's
``FileSystems`` over an in-memory store without folders)."""

from __future__ import annotations

import pytest
from apache_beam.io.filesystems import FileSystems

import memfs
from steplabel.dataset import storage
from steplabel.dataset.directory import JobDirectory, JobKind, delete_tree, has_files

pytestmark = pytest.mark.unit


class Refused(RuntimeError):
    pass


KIND = JobKind(product="dataset", owner="manifest", stranger="a steplabel run of this manifest",
               hash_field="manifest_hash", error=Refused)
OTHER_KIND = JobKind(product="evaluation", owner="evaluation",
                     stranger="a steplabel evaluation", hash_field="evaluation_hash",
                     error=ValueError, differs=": settings or input files differ")


@pytest.fixture(params=["local", "remote"])
def out(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    memfs.clear()
    yield "memfs://bucket/out"
    memfs.clear()


def put(path: str, data: bytes = b"x") -> None:
    storage.write_bytes_atomic(path, data)


def record(hash_: str = "a" * 64, **inputs) -> dict:
    return {"name": "job", "manifest_hash": hash_, "inputs": dict(inputs)}


def test_a_new_directory_is_claimed_and_a_rerun_of_the_same_job_resumes(out):
    directory = JobDirectory(out)
    assert not has_files(out)
    directory.claim(KIND, record(f="1"), overwrite=False)
    assert storage.read_json(directory.run_file) == record(f="1")
    put(directory.work("stage", "ab", "key.json"))  # a checkpoint: kept by a rerun
    directory.claim(KIND, record(f="1"), overwrite=False)
    assert storage.exists(directory.work("stage", "ab", "key.json"))


def test_a_completed_directory_is_refused_unless_overwrite_which_deletes_everything(out):
    directory = JobDirectory(out)
    directory.claim(KIND, record(), overwrite=False)
    put(directory.join("trajectories", "stray.txt"))
    directory.mark_completed()
    with pytest.raises(Refused, match=f"^{out} already holds a COMPLETED dataset; pass "
                       "--overwrite to replace it, or choose another --out$"):
        directory.claim(KIND, record(), overwrite=False)
    directory.claim(KIND, record("b" * 64), overwrite=True)  # another manifest, too
    assert not directory.is_completed()
    assert not storage.exists(directory.join("trajectories", "stray.txt"))
    assert storage.read_json(directory.run_file)["manifest_hash"] == "b" * 64


def test_work_of_another_job_or_other_input_data_is_refused(out):
    directory = JobDirectory(out)
    directory.claim(KIND, record(f="1"), overwrite=False)
    with pytest.raises(Refused, match=r"holds work of this manifest on other input data \(f, g "
                       r"changed since\); resuming would mix datasets"):
        directory.claim(KIND, record(f="2", g="3"), overwrite=False)
    with pytest.raises(Refused, match=r"holds work of another manifest \('job', hash aaaaaaaaaaaa"
                       r"\) and this one is 'job' \(hash bbbbbbbbbbbb\); use an empty --out"):
        directory.claim(KIND, record("b" * 64, f="1"), overwrite=False)
    assert storage.read_json(directory.run_file) == record(f="1")  # untouched


def test_the_kind_words_the_refusals():
    directory = JobDirectory("memfs://bucket/eval")
    memfs.clear()
    directory.claim(OTHER_KIND, {"name": "e", "evaluation_hash": "c" * 64}, overwrite=False)
    with pytest.raises(ValueError, match=r"another evaluation \('e', hash cccccccccccc\) and "
                       r"this one is 'f' \(hash dddddddddddd\): settings or input files differ"):
        directory.claim(OTHER_KIND, {"name": "f", "evaluation_hash": "d" * 64},
                        overwrite=False)
    memfs.clear()


def test_a_directory_of_something_else_is_refused(out):
    put(storage.join(out, "notes", "todo.txt"))
    with pytest.raises(Refused, match=f"^{out} is not empty and is not a steplabel run of this "
                       "manifest; choose an empty --out, or pass --overwrite$"):
        JobDirectory(out).claim(KIND, record(), overwrite=False)
    JobDirectory(out).claim(KIND, record(), overwrite=True)
    assert not storage.exists(storage.join(out, "notes", "todo.txt"))


def test_scratch_files_of_an_earlier_attempt_are_removed(out):
    directory = JobDirectory(out)
    directory.claim(KIND, record(), overwrite=False)
    put(directory.work("rows_in.json"), b'{"rows_in": 3}')
    put(directory.work("figures.json"), b"{}")
    directory.claim(KIND, record(), overwrite=False, scratch=("rows_in.json", "missing.json"))
    assert not storage.exists(directory.work("rows_in.json"))
    assert storage.exists(directory.work("figures.json"))


def test_leftovers_are_temporary_files_and_shards_of_another_shard_count(out):
    directory = JobDirectory(out)
    keep = [directory.join("predictions", storage.shard_name(0, 2)),
            directory.join("dead_letter", storage.shard_name(1, 2, "input-")),
            directory.work("stage", "ab", "key.json")]
    stale = [directory.join("predictions", storage.shard_name(0, 4)),
             directory.join("dead_letter", storage.shard_name(3, 4, "input-"))]
    temps = [directory.join(f"{storage.TMP_MARK}1-info.json.tmp"),
             directory.join("predictions", f"{storage.TMP_MARK}2-part.parquet.tmp"),
             directory.work("stage", "ab", f"{storage.TMP_MARK}3-key.json.tmp")]
    for path in keep + stale:
        put(path)
    for path in temps:  # as a killed writer leaves them: written, never renamed
        with FileSystems.create(path) as handle:
            handle.write(b"half")
    assert directory.remove_leftovers(["predictions", "dead_letter"], 2) == sorted(temps)
    assert [storage.exists(p) for p in keep + stale + temps] == [True] * 3 + [False] * 5


def test_delete_tree_deletes_only_under_its_folder(out):
    put(storage.join(out, "a", "b", "c.txt"))
    put(storage.join(out + "-sibling", "d.txt"))
    delete_tree(storage.join(out, "a"))
    delete_tree(storage.join(out, "never-written"))  # a missing folder is fine
    assert not has_files(storage.join(out, "a"))
    assert storage.exists(storage.join(out + "-sibling", "d.txt"))
    assert storage.list_files(storage.join(out + "-sibling", "*")) == [
        storage.join(out + "-sibling", "d.txt")]
