"""The ``run`` job's Beam graph: read, validate, the labelling stages, one sink.

::

    ReadProblems ─► CountRowsIn ─► _work/rows_in.json
                └─► ValidateProblems ─► problems ─► LabelStages ─► (output, row) ─► WriteShards
                                     │                          └► rows per problem ─┐
                                     └► input dead letters ─────────► WriteShards    │
                                                            └► rows per problem id ──┴► Figures
    Figures (a CombineFn: statistics, row counts, reconciliation) ─► _work/figures.json

See :mod:`steplabel.pipelines.stages` for the stages, :mod:`steplabel.pipelines.sink` for the
shards.
"""

from __future__ import annotations

import json

import apache_beam as beam

from steplabel.dataset import storage
from steplabel.dataset.directory import INPUT_PREFIX, ROWS_IN_FILE
from steplabel.pipelines.figures import DatasetFiguresFn, write_figures, write_figures_state
from steplabel.pipelines.sink import WriteShards
from steplabel.pipelines.sources import ReadProblems, ValidateProblems
from steplabel.pipelines.stages import LabelStages
from steplabel.pipelines.waves import ReadWaveInput, wave_dir, wave_input_dir


def _write_rows_in(count: int, folder: str) -> int:
    beam.metrics.Metrics.counter("steplabel", "rows_in").inc(count)
    storage.write_json_atomic(storage.join(folder, ROWS_IN_FILE), {"rows_in": count})
    return count


def read_problems(pipeline: beam.Pipeline, plan, *, out_dir: str, items=None,
                  wave_input: str | None = None):
    """Read the source on the workers, count the rows in (``_work/rows_in.json``) and validate
    with the plan's grader: ``(problems, input dead-letter rows)``. ``wave_input``: read one
    wave's records from where ``waves.SplitInput`` wrote them instead, and count them into the
    wave's folder, ``out_dir``."""
    source = plan.manifest.source
    if wave_input is None:
        raw = pipeline | "ReadProblems" >> ReadProblems(source, path=plan.source_path,
                                                        items=items)
        counted_in = storage.join(out_dir, storage.WORK_DIR)
    else:
        raw = pipeline | "ReadWaveInput" >> ReadWaveInput(wave_input)
        counted_in = out_dir
    (raw
     | "CountRowsIn" >> beam.combiners.Count.Globally()
     | "WriteRowsIn" >> beam.Map(_write_rows_in, counted_in))
    return raw | "ValidateProblems" >> ValidateProblems(
        fields=source.fields, answer_format=source.answer_format,
        manifest_hash=plan.manifest.hash, grader=plan.grader, layout=source.layout)


def _input_key(row: dict):
    """Input dead letters are folded per problem id as their shards group them; rows without
    an id one by one."""
    problem_id = row.get("problem_id")
    return (problem_id, "") if problem_id else (None, json.dumps(row, sort_keys=True)), row


def _input_problem_rows(key, rows):
    return key[0], {"dead_letter": sorted(rows, key=storage._sort_key)}


def build_staged_pipeline(pipeline: beam.Pipeline, plan, *, out_dir: str, items=None,
                          wave=None, pool=None, last_wave: bool = True):
    """Apply the whole job of ``plan`` (:class:`~steplabel.pipelines.launch.LaunchPlan`: the
    manifest, the source path, the problems expected for the progress display, the stages'
    accelerators, the grader) to ``pipeline``, writing the dataset directory ``out_dir``.
    Returns the written shards' ``(output, rows)``. ``items`` (tests): the raw items, instead
    of the source.

    ``wave`` (:class:`~steplabel.pipelines.waves.Wave`): label only that wave's problems and
    write its parts, figures and input count under its folder (``waves.wave_dir``) for
    :class:`~steplabel.pipelines.waves.AssembleShards`; ``pool``: the ``shared.Shared`` engine
    pool handle, the same for every wave (engines stay loaded); ``last_wave``: the progress
    display closes after it."""
    num_shards = plan.num_shards
    # Where this pipeline's rows, figures and input count go: the dataset, or the wave's folder.
    parts_dir = out_dir if wave is None else wave_dir(out_dir, wave)
    problems, invalid = read_problems(
        pipeline, plan, out_dir=parts_dir, items=items,
        wave_input=None if wave is None else wave_input_dir(out_dir, wave))
    stages = LabelStages(plan.manifest, out_dir=out_dir, total=plan.total,
                         accelerators=plan.accelerators, pool=pool, close_progress=last_wave)
    labelled = problems | "Label" >> stages
    written = labelled.rows | "Write" >> WriteShards(parts_dir, num_shards=num_shards,
                                                     provenance=stages.provenance)
    input_groups = (invalid
                    | "KeyInputByProblem" >> beam.Map(_input_key)
                    | "GroupInputByProblem" >> beam.GroupByKey()
                    | "InputProblemRows" >> beam.MapTuple(_input_problem_rows))
    ((labelled.problems, input_groups)
     | "AllProblemRows" >> beam.Flatten()
     | "Figures" >> beam.CombineGlobally(DatasetFiguresFn(state=wave is not None))
     | "WriteFigures" >> beam.Map(write_figures if wave is None else write_figures_state,
                                  parts_dir))
    written_input = (invalid
                     | "InputDeadLetters" >> beam.Map(lambda row: ("dead_letter", row))
                     | "WriteInputDeadLetters" >> WriteShards(parts_dir, num_shards=num_shards,
                                                              prefix=INPUT_PREFIX))
    return (written, written_input) | "Written" >> beam.Flatten()
