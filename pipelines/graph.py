"""The ``run`` job's Beam graph: read, validate, the labelling stages, one sink.

::

    ReadProblems ─► CountRowsIn ─► _work/rows_in.json
                └─► ValidateProblems ─► problems ─► LabelStages ─► (output, row) ─► WriteShards
                                     └► input dead letters ──────────────────────► WriteShards

See :mod:`steplabel.pipelines.stages` for the stages, :mod:`steplabel.pipelines.sink` for the
shards.
"""

from __future__ import annotations

import apache_beam as beam

from steplabel.pipelines.sink import INPUT_PREFIX, WriteShards
from steplabel.pipelines.stages import LabelStages


def build_staged_pipeline(pipeline: beam.Pipeline, manifest, *, out_dir: str, items=None,
                          total: int | None = None, source_path: str | None = None,
                          accelerators: dict[str, str] | None = None):
    """Apply the whole job to ``pipeline`` (same arguments as ``job.build_pipeline``;
    ``total``: problems expected, for the progress display). Returns the written shards'
    ``(output, rows)``."""
    from steplabel.pipelines.job import _write_rows_in
    from steplabel.pipelines.sources import ReadProblems, ValidateProblems

    from steplabel.pipelines.runners import stage_accelerators

    if accelerators is None:
        accelerators = stage_accelerators(manifest.runner)
    source = manifest.source
    num_shards = manifest.runner.num_shards
    raw = pipeline | "ReadProblems" >> ReadProblems(source, path=source_path, items=items)
    (raw
     | "CountRowsIn" >> beam.combiners.Count.Globally()
     | "WriteRowsIn" >> beam.Map(_write_rows_in, out_dir))
    problems, invalid = raw | "ValidateProblems" >> ValidateProblems(
        fields=source.fields, answer_format=source.answer_format, manifest_hash=manifest.hash)
    rows = problems | "Label" >> LabelStages(manifest, out_dir=out_dir, total=total,
                                             accelerators=accelerators)
    written = rows | "Write" >> WriteShards(out_dir, num_shards=num_shards)
    written_input = (invalid
                     | "InputDeadLetters" >> beam.Map(lambda row: ("dead_letter", row))
                     | "WriteInputDeadLetters" >> WriteShards(out_dir, num_shards=num_shards,
                                                              prefix=INPUT_PREFIX))
    return (written, written_input) | "Written" >> beam.Flatten()
