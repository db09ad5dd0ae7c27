"""The one sink: every output's rows into Parquet shards with fixed names and a fixed row order.

``(output, row)`` elements are keyed by (output, shard) — the shard from the row's problem id
(:func:`storage.shard_of`), ``runner.num_shards`` of them — grouped, and each group written as one
shard, atomically, through Beam ``FileSystems`` (any filesystem), with the output's explicit Arrow
schema. Rows are ordered by problem (``sha256(problem_id)``, the order ``stats`` merges on),
then by :func:`storage._sort_key`: the same rows give the same bytes on every runner, with any
number of workers, and after a resume. Input dead letters (no problem labelled) go to their own
``dead_letter/input-part-*`` shards.
"""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import pyarrow.parquet as pq

from steplabel.pipelines import storage
from steplabel.schemas.records import OUTPUT_DIRS, to_table

#: Shard-name prefix of input dead-letter rows (bad records, never labelled).
INPUT_PREFIX = "input-"


def problem_order(row: dict) -> str:
    """Where a row's problem goes in a shard: ``sha256(problem_id)`` (``stats`` relies on it)."""
    problem_id = row.get("problem_id")
    if not problem_id:
        return ""
    return hashlib.sha256(str(problem_id).encode("utf-8")).hexdigest()[:32]


def row_order(row: dict) -> tuple:
    return (problem_order(row), storage._sort_key(row))


def shard_bytes(output: str, rows, *, by_problem: bool = True) -> bytes:
    """One shard's Parquet bytes. ``by_problem``: rows in problem order (labelled outputs);
    otherwise by :func:`storage._sort_key` alone (input dead letters, as ``storage.write_shard``
    writes them)."""
    table = to_table(output, sorted(rows, key=row_order if by_problem else storage._sort_key))
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_shard(out_dir: str, key: tuple[str, str, int], rows, num_shards: int) -> tuple:
    output, prefix, index = key
    rows = list(rows)
    path = storage.join(out_dir, OUTPUT_DIRS[output],
                        storage.shard_name(index, num_shards, prefix))
    storage.write_bytes_atomic(path, shard_bytes(output, rows, by_problem=not prefix))
    return output, len(rows)


class WriteShards(beam.PTransform):
    """``(output, row)`` -> shards; yields ``(output, rows written)`` per shard."""

    def __init__(self, out_dir: str, *, num_shards: int, prefix: str = "") -> None:
        super().__init__()
        self.out_dir = out_dir
        self.num_shards = num_shards
        self.prefix = prefix

    def expand(self, rows):
        out_dir, num_shards, prefix = self.out_dir, self.num_shards, self.prefix
        return (
            rows
            | "KeyByShard" >> beam.MapTuple(
                lambda output, row: ((output, prefix, storage.shard_of(row, num_shards)), row))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.MapTuple(
                lambda key, group: write_shard(out_dir, key, group, num_shards))
        )
