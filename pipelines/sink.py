"""The one sink: every output's rows into Parquet shards with fixed names and a fixed row order.

``(output, row)`` elements are keyed by (output, shard) — the shard from the row's problem id
(:func:`storage.shard_of`), ``runner.num_shards`` of them — grouped, and each group written as one
shard, atomically, through Beam ``FileSystems`` (any filesystem), with the output's explicit Arrow
schema, in row groups of :data:`ROW_GROUP_ROWS` rows. Rows are ordered
by problem (``sha256(problem_id)``, the order ``stats`` merges on; rows without a problem id
first), then by :func:`storage._sort_key`: the same rows give the same bytes on every runner,
with any number of workers, after a resume, and when the local runner labels the input in waves
(:mod:`steplabel.pipelines.waves` appends the waves' parts in this order). Input dead letters (no
problem labelled) go to their own ``dead_letter/input-part-*`` shards. Values cross the
shuffle packed (:mod:`steplabel.pipelines.shuffle`).
"""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from steplabel.dataset import storage
from steplabel.pipelines.shuffle import PackedGroupByKey
from steplabel.schemas.records import OUTPUT_DIRS, to_table

#: Rows per Parquet row group in every shard (single pipeline and assembled from waves alike).
ROW_GROUP_ROWS = 4096


def problem_order(row: dict) -> str:
    """Where a row's problem goes in a shard: ``sha256(problem_id)`` (``stats`` relies on it)."""
    problem_id = row.get("problem_id")
    if not problem_id:
        return ""
    return hashlib.sha256(str(problem_id).encode("utf-8")).hexdigest()[:32]


def row_order(row: dict) -> tuple:
    return (problem_order(row), storage._sort_key(row))


def write_row_groups(tables, schema: pa.Schema) -> bytes:
    """Parquet bytes of ``tables`` (in order) in row groups of ``ROW_GROUP_ROWS`` rows: the
    same bytes as one ``write_table`` of their concatenation, holding one row group at a
    time."""
    buffer = io.BytesIO()
    wrote = False
    with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
        pending = schema.empty_table()
        for table in tables:
            pending = pa.concat_tables([pending, table])
            while pending.num_rows >= ROW_GROUP_ROWS:
                writer.write_table(pending.slice(0, ROW_GROUP_ROWS).combine_chunks())
                pending = pending.slice(ROW_GROUP_ROWS)
                wrote = True
        if pending.num_rows or not wrote:
            writer.write_table(pending.combine_chunks())
    return buffer.getvalue()


def table_bytes(table: pa.Table) -> bytes:
    """One shard's Parquet bytes from its (sorted) table."""
    return write_row_groups([table], table.schema)


def shard_bytes(output: str, rows, schema=None) -> bytes:
    """One shard's Parquet bytes, rows in :func:`row_order`; ``schema``: of an output that is
    not one of the dataset's (``records.OUTPUTS``)."""
    ordered = sorted(rows, key=row_order)
    table = (pa.Table.from_pylist(ordered, schema=schema) if schema is not None
             else to_table(output, ordered))
    return table_bytes(table)


def with_provenance(row: dict, provenance: dict) -> dict:
    """A trajectory row with the job's provenance (rows carry only their own part, the policy
    seed, through the pipeline)."""
    return {**row, "provenance": {**provenance, **(row.get("provenance") or {})}}


def write_shard(out_dir: str, key: tuple[str, str, int], rows, num_shards: int,
                provenance: dict | None = None, schemas: dict | None = None) -> tuple:
    """One shard of ``key`` = (output, prefix, index); ``schemas``: outputs other than the
    dataset's, by name, each written under ``<out_dir>/<name>/``."""
    output, prefix, index = key
    rows = list(rows)
    if provenance is not None and output in ("trajectories", "rejected"):
        rows = [with_provenance(row, provenance) for row in rows]
    schema = (schemas or {}).get(output)
    folder = output if schema is not None else OUTPUT_DIRS[output]
    path = storage.join(out_dir, folder, storage.shard_name(index, num_shards, prefix))
    storage.write_bytes_atomic(path, shard_bytes(output, rows, schema))
    return output, len(rows)


class WriteShards(beam.PTransform):
    """``(output, row)`` -> shards; yields ``(output, rows written)`` per shard. ``provenance``:
    a PCollection of one dict, the job's provenance, added to every trajectory row;
    ``schemas``: outputs that are not the dataset's, by name (written under that folder)."""

    def __init__(self, out_dir: str, *, num_shards: int, prefix: str = "",
                 provenance=None, schemas: dict | None = None) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.num_shards = num_shards
        self.prefix = prefix
        self.provenance = provenance
        self.schemas = dict(schemas or {})  # outputs of another job (evaluate's predictions)

    def expand(self, rows):
        out_dir, num_shards, prefix, schemas = (self.out_dir, self.num_shards, self.prefix,
                                                self.schemas)
        return (
            rows
            | "KeyByShard" >> beam.MapTuple(
                lambda output, row: ((output, prefix, storage.shard_of(row, num_shards)), row))
            | "GroupShards" >> PackedGroupByKey()
            | "WriteShard" >> beam.MapTuple(
                lambda key, group, provenance=None: write_shard(out_dir, key, group, num_shards,
                                                                provenance, schemas),
                *([beam.pvalue.AsSingleton(self.provenance)] if self.provenance is not None
                  else []))
        )
