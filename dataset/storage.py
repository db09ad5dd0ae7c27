"""Output directory layout, atomic writes and Parquet shards.

Everything goes through Beam's ``FileSystems``, so a dataset directory may be local or on any
filesystem Beam supports (``gs://`` on Dataflow). Writes are atomic: a file is written under a
temporary name in its final folder (``.inprogress-*.tmp``, never matched by readers: hidden, and
without the final extension, so not even a ``*.parquet`` glob picks it up) and renamed,
so no partial shard is ever visible under its final name.

Layout of a dataset directory::

    trajectories/part-00000-of-00004.parquet   kept trajectories
    rejected/…  omegaprm/{states,pairs,searches}/…  filtered/…  dead_letter/…
    stats.json  manifest.lock.json  info.json  COMPLETED (written last)
    run_metrics.json               the run's own measurements (prefix-cache hits, busy time):
                                   not part of the dataset's identity (``dataset/identity.py``)
    _work/run.json                 the manifest hash this directory belongs to
    _work/<stage>/<uuid>.jsonl     every model stage's finished keys, a segment per bundle
                                   (resume; :mod:`steplabel.pipelines.checkpoints`)
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from steplabel.schemas.records import OUTPUT_DIRS, to_table

COMPLETED = "COMPLETED"
WORK_DIR = "_work"
TMP_MARK = ".inprogress-"


def join(*parts: str) -> str:
    if "://" in parts[0]:
        return posixpath.join(*parts)
    return FileSystems.join(*parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def write_bytes_atomic(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary name in the same folder (``.inprogress-<uuid>-<name>.tmp``,
    which readers never match), then are renamed. A writer killed or failing mid-write leaves only
    such a temporary file, which :func:`remove_temp_files` deletes when the job finishes.
    Locally the temporary file is flushed to disk before ``os.replace`` swaps it in atomically
    (there is no moment without a file); on object stores the old object is deleted first,
    since their rename is a copy. ``durable=False`` skips the flush to disk: the file still
    survives the process being killed (it is in the page cache), only not a machine crash; for
    files whose readers check them (checkpoints), which is what the profile asked for.
    """
    remote = "://" in path
    folder, name = posixpath.split(path) if remote else _split_local(path)
    tmp = join(folder, f"{TMP_MARK}{uuid.uuid4().hex}-{name}.tmp")
    if not remote:
        import os

        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        return
    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    with FileSystems.create(tmp) as handle:
        handle.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def _split_local(path: str) -> tuple[str, str]:
    import os

    return os.path.split(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def write_json_atomic(path: str, data) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def read_json(path: str):
    return json.loads(read_bytes(path))


def read_json_if_exists(path: str, default=None):
    return read_json(path) if exists(path) else default


def list_files(pattern: str) -> list[str]:
    """Files matching ``pattern``; temporary files of unfinished writes never match."""
    matches = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in matches if TMP_MARK not in posixpath.basename(m.path))


def temp_files(out_dir: str, outputs: Iterable[str] | None = None) -> list[str]:
    """Temporary files of writes that never finished (a killed or failed writer) anywhere a
    dataset directory is written: the root, every output folder (``outputs``: folders of
    another job's outputs), ``_work`` and its checkpoint folders (``_work/<stage>/<xx>``)."""
    outputs = OUTPUT_DIRS.values() if outputs is None else outputs
    folders = ["", *outputs, WORK_DIR, posixpath.join(WORK_DIR, "*"),
               posixpath.join(WORK_DIR, "*", "*")]  # _work/engines, _work/<stage>/<xx>
    patterns = [join(out_dir, folder, f"{TMP_MARK}*") if folder else join(out_dir, f"{TMP_MARK}*")
                for folder in folders]
    found = []
    for result in FileSystems.match(patterns):
        found.extend(m.path for m in result.metadata_list)
    return sorted(set(found))


def remove_temp_files(out_dir: str) -> list[str]:
    """Delete :func:`temp_files` (call only when no writer of this job can still be running,
    as the finalize step does); returns the deleted paths."""
    leftovers = temp_files(out_dir)
    if leftovers:
        FileSystems.delete(leftovers)
    return leftovers


# ---------------------------------------------------------------------------------------------
# Shards


def shard_of(row: dict, num_shards: int) -> int:
    key = str(row.get("problem_id") or row.get("original") or "")
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % num_shards


def _sort_key(row: dict) -> tuple:
    return (
        str(row.get("problem_id") or ""),
        row.get("solution_index") if row.get("solution_index") is not None else -1,
        str(row.get("node_id") or row.get("node_a") or ""),
        row.get("search_index") if row.get("search_index") is not None else -1,
        json.dumps(row, sort_keys=True, default=str),
    )


def shard_name(index: int, num_shards: int, prefix: str = "") -> str:
    return f"{prefix}part-{index:05d}-of-{num_shards:05d}.parquet"


def write_shard(out_dir: str, output: str, index: int, num_shards: int,
                rows: Iterable[dict], *, prefix: str = "") -> tuple[str, int]:
    """Write one shard (rows sorted deterministically) atomically; return (path, rows)."""
    ordered = sorted(rows, key=_sort_key)
    table = to_table(output, ordered)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    path = join(out_dir, OUTPUT_DIRS[output], shard_name(index, num_shards, prefix))
    write_bytes_atomic(path, buffer.getvalue())
    return path, len(ordered)


def output_files(dataset_dir: str, output: str) -> list[str]:
    return list_files(join(dataset_dir, OUTPUT_DIRS[output], "*part-*.parquet"))


def open_parquet(path: str) -> pq.ParquetFile:
    """A shard for reading: local files are read lazily by pyarrow; remote ones are fetched."""
    if "://" not in path:
        return pq.ParquetFile(path)
    with FileSystems.open(path) as handle:
        return pq.ParquetFile(pa.BufferReader(handle.read()))


def iter_rows(dataset_dir: str, output: str, columns: list[str] | None = None,
              batch_size: int = 1024):
    """Stream the rows of one output, a record batch at a time (memory stays flat)."""
    for path in output_files(dataset_dir, output):
        for batch in open_parquet(path).iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()


def count_rows(dataset_dir: str, output: str) -> int:
    """Rows of one output, from the shards' footers (locally no row data is read)."""
    return sum(open_parquet(path).metadata.num_rows for path in output_files(dataset_dir, output))
