"""A job's directory: the names of its files, and the one object that claims it before a job,
clears what a killed or earlier attempt left, and marks it finished. ``steplabel run`` and
``steplabel evaluate`` share it, on a local folder and on any filesystem Beam supports
(``gs://``, ``s3://``, ...) alike: every listing and deletion goes through Beam's
``FileSystems``.

Layout (besides the outputs' shards, :mod:`steplabel.dataset.storage`)::

    COMPLETED                   written last, when the job reconciles
    _work/run.json              which job the directory belongs to (name, hash, inputs)
    _work/rows_in.json          input records the pipeline read (``run``)
    _work/figures.json          statistics the pipeline folded (``run``)
    _work/waves/<count>/...     the local runner's waves (:mod:`steplabel.pipelines.waves`)
    _work/<stage>/<xx>/...      model stages' finished keys (resume)

A claim (:meth:`JobDirectory.claim`) refuses a finished directory unless ``--overwrite``, a
directory of another job (another hash, or the same job on changed input files: resuming
would mix their results) and any other directory that is not empty; ``--overwrite`` deletes
the directory first, wherever it is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from apache_beam.io.filesystems import FileSystems

from steplabel.dataset import storage

#: Which job a directory belongs to, under ``_work``.
RUN_FILE = "run.json"
#: How many input records the pipeline read (``{"rows_in": N}``), under ``_work``.
ROWS_IN_FILE = "rows_in.json"
#: The statistics, row counts and reconciliation the pipeline folded, under ``_work``.
FIGURES_FILE = "figures.json"
#: A wave's figures accumulator (:class:`~steplabel.pipelines.figures.Figures`, pickled), in
#: the wave's folder.
FIGURES_STATE = "figures.pkl"
#: Where the local runner's waves write their parts, under ``_work``.
WAVES_DIR = "waves"
#: Shard-name prefix of input dead-letter rows (bad records, never labelled).
INPUT_PREFIX = "input-"


def is_remote(path: str) -> bool:
    return "://" in path


def remote_files(folder: str, limit: int | None = None) -> list[str]:
    """Every file under ``folder`` on a filesystem without folders (an object store):
    ``FileSystems.match`` of ``folder/**``; at most ``limit`` of them."""
    pattern = folder.rstrip("/") + "/**"
    result = FileSystems.match([pattern], limits=[limit] if limit else None)[0]
    return [m.path for m in result.metadata_list]


def has_files(folder: str) -> bool:
    """Whether ``folder`` holds anything (a missing folder holds nothing)."""
    if not is_remote(folder):
        return Path(folder).is_dir() and any(Path(folder).iterdir())
    return bool(remote_files(folder, limit=1))


def delete_tree(path: str) -> None:
    """Delete a folder on any filesystem: locally the folder, on object stores every object
    under the prefix (Beam ``FileSystems.match`` + ``delete``). A missing folder is fine."""
    if not is_remote(path):
        if Path(path).exists():
            shutil.rmtree(path)
        return
    files = remote_files(path)
    if files:
        FileSystems.delete(files)


@dataclass(frozen=True)
class JobKind:
    """How a kind of job records itself in ``_work/run.json`` and names its directory in the
    messages of a refused claim.

    ``product``: what a finished directory holds ("already holds a COMPLETED dataset");
    ``owner``: what the work belongs to ("holds work of another manifest"); ``stranger``: what a
    foreign directory is not ("is not empty and is not a steplabel run of this manifest");
    ``hash_field``: the field of ``run.json`` that identifies the job; ``differs``: said after
    the two hashes ("(hash …): settings or input files differ"); ``error``: the exception the
    job raises for a refused directory."""

    product: str
    owner: str
    stranger: str
    hash_field: str
    error: type[Exception]
    differs: str = ""


class JobDirectory:
    """The directory of one job at ``path`` (local or remote)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"JobDirectory({self.path!r})"

    # Names

    def join(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    def work(self, *parts: str) -> str:
        """A path under the directory's ``_work`` folder."""
        return storage.join(self.path, storage.WORK_DIR, *parts)

    @property
    def run_file(self) -> str:
        return self.work(RUN_FILE)

    @property
    def completed_file(self) -> str:
        return self.join(storage.COMPLETED)

    # State

    def is_completed(self) -> bool:
        return storage.exists(self.completed_file)

    def has_files(self) -> bool:
        return has_files(self.path)

    def delete(self) -> None:
        delete_tree(self.path)

    # Before the job

    def claim(self, kind: JobKind, record: dict, *, overwrite: bool,
              scratch: Iterable[str] = ()) -> None:
        """Make the directory this ``kind`` of job's: refuse a COMPLETED one (unless
        ``overwrite``), one holding another job's work (``record[kind.hash_field]`` differs, or
        the same hash on other ``record["inputs"]``) and any other non-empty one; with
        ``overwrite`` delete it first, wherever it is. Then delete an earlier attempt's
        ``scratch`` files (names under ``_work`` this run writes anew) and write ``record`` to
        ``_work/run.json``, which a rerun checks before it resumes from the checkpoints."""
        if self.is_completed() and not overwrite:
            raise kind.error(f"{self.path} already holds a COMPLETED {kind.product}; pass "
                             "--overwrite to replace it, or choose another --out")
        if overwrite:
            self.delete()
        previous = storage.read_json_if_exists(self.run_file)
        if previous is not None:
            self._check_previous(kind, previous, record)
        elif self.has_files():
            raise kind.error(f"{self.path} is not empty and is not {kind.stranger}; choose an "
                             "empty --out, or pass --overwrite")
        stale = [self.work(name) for name in scratch]
        stale = [path for path in stale if storage.exists(path)]
        if stale:
            FileSystems.delete(stale)
        storage.write_json_atomic(self.run_file, record)

    def _check_previous(self, kind: JobKind, previous: dict, record: dict) -> None:
        key = kind.hash_field
        same = previous.get(key) == record[key]
        inputs = record.get("inputs")
        if same and inputs is not None:
            before = previous.get("inputs", {})
            changed = sorted(k for k in set(inputs) | set(before)
                             if inputs.get(k) != before.get(k))
            if changed:
                raise kind.error(
                    f"{self.path} holds work of this {kind.owner} on other input data "
                    f"({', '.join(changed)} changed since); resuming would mix "
                    f"{kind.product}s: use an empty --out, or --overwrite")
        if not same:
            raise kind.error(
                f"{self.path} holds work of another {kind.owner} ({previous.get('name')!r}, "
                f"hash {str(previous.get(key) or '')[:12]}) and this one is "
                f"{record.get('name')!r} (hash {record[key][:12]}){kind.differs}; use an "
                "empty --out, or --overwrite")

    # After the job

    def temp_files(self, folders: Iterable[str]) -> list[str]:
        """Temporary files of writes that never finished (a killed or failed writer): in the
        root, in each of ``folders`` (the outputs'), in ``_work`` and its checkpoint folders
        (:func:`storage.temp_files`)."""
        return storage.temp_files(self.path, folders)

    def stale_shards(self, folders: Iterable[str], num_shards: int) -> list[str]:
        """Shards in ``folders`` of an earlier attempt with another number of shards."""
        suffix = f"-of-{num_shards:05d}.parquet"
        return [path for folder in folders
                for path in storage.list_files(self.join(folder, "*part-*.parquet"))
                if not path.endswith(suffix)]

    def remove_leftovers(self, folders: Iterable[str], num_shards: int) -> list[str]:
        """Delete :meth:`temp_files` and :meth:`stale_shards` (call only when no writer of
        this job can still be running, as the finalize steps do); returns the temporary files
        deleted."""
        folders = list(folders)
        leftovers = self.temp_files(folders)
        stale = self.stale_shards(folders, num_shards)
        if leftovers or stale:
            FileSystems.delete(leftovers + stale)
        return leftovers

    def mark_completed(self) -> None:
        """Write ``COMPLETED``: the last file of a finished job."""
        storage.write_bytes_atomic(self.completed_file, b"")
