"""Waves: the local runner labels a large input a bounded slice at a time.

Beam's FnApiRunner (the local runner) keeps every PCollection that crosses a stage boundary in
memory until the pipeline ends, so one pipeline over 100,000 problems needs memory in proportion
to them. Locally, ``steplabel run`` therefore cuts the problems into waves of about
``runner.wave_size`` problems and runs the staged graph once per wave, one after another in the
same process (engines stay loaded). A problem's wave is fixed by its id: the first 32 bits of
``sha256(problem_id)`` scaled to the number of waves, so that waves are contiguous ranges of the
order in which shards hold their problems (:func:`steplabel.pipelines.sink.problem_order`).
Rows without a problem id (some input dead letters) go to wave 0, where that order puts them.

First :class:`SplitInput` (a pipeline of its own) reads the source once and writes each record
into its wave's input folder; each wave then reads only its own records. Each wave writes its
rows as part files under ``_work/waves/<count>/<index>/`` (the dataset's layout and shard
names), its figures' accumulator and its input count; stage checkpoints are shared by every
wave, so a killed job resumes where it was. Then :class:`AssembleShards` (one
more small pipeline) appends each shard's parts in wave order, row group by row group
(``sink.ROW_GROUP_ROWS`` rows each, as every shard is written), so the shards are byte for byte
those one pipeline writes; and it folds the waves' figures and input counts into the files the
launcher finalizes from. Memory is then bounded by a wave, not by the input.

Other runners (portable, Flink, Dataflow) run one pipeline: their shuffles are not held in the
launcher's memory.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import uuid
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from steplabel.annotators.graders import Grader
from steplabel.dataset import storage
from steplabel.dataset.directory import (
    FIGURES_FILE,
    FIGURES_STATE,
    INPUT_PREFIX,
    ROWS_IN_FILE,
    WAVES_DIR,
)
from steplabel.pipelines.figures import Figures
from steplabel.pipelines.sink import write_row_groups
from steplabel.pipelines.sources import ReadProblems, validate_item
from steplabel.schemas.records import OUTPUT_DIRS, OUTPUTS


@dataclass(frozen=True)
class Wave:
    """Wave ``index`` of ``count``."""

    index: int
    count: int

    def holds(self, problem_id) -> bool:
        return wave_of(problem_id, self.count) == self.index


def wave_of(problem_id, count: int) -> int:
    """The wave of a problem id (None or empty: wave 0), monotone in ``sha256(problem_id)``."""
    if count <= 1 or not problem_id:
        return 0
    digest = hashlib.sha256(str(problem_id).encode("utf-8")).digest()
    return (int.from_bytes(digest[:4], "big") * count) >> 32


def wave_count(runner, estimated_problems: int | None) -> int:
    """How many waves a job runs in: several only on the local runner, when the input's size is
    known on the launcher (``estimate_rows``) and larger than ``runner.wave_size``."""
    if runner.runner != "local" or not runner.wave_size or not estimated_problems:
        return 1
    return max(1, math.ceil(estimated_problems / runner.wave_size))


def wave_dir(out_dir: str, wave: Wave) -> str:
    """Where wave ``wave`` writes its parts, figures and input count."""
    return storage.join(out_dir, storage.WORK_DIR, WAVES_DIR, str(wave.count),
                        f"{wave.index:05d}")


def split_dir(out_dir: str, count: int) -> str:
    """Where :class:`SplitInput` writes the input records of ``count`` waves."""
    return storage.join(out_dir, storage.WORK_DIR, WAVES_DIR, str(count), "input")


def wave_input_dir(out_dir: str, wave: Wave) -> str:
    """Where :class:`SplitInput` writes wave ``wave``'s input records."""
    return storage.join(split_dir(out_dir, wave.count), f"{wave.index:05d}")


# ---------------------------------------------------------------------------------------------
# The input, split once into the waves' records

#: Records a split worker holds before it writes them out (one pickled chunk file per wave).
CHUNK_RECORDS = 2000


class _WriteWaveChunksFn(beam.DoFn):
    """Raw items -> chunk files of pickled items under each item's wave's input folder;
    yields the number of items written per chunk."""

    def __init__(self, *, fields, answer_format: str, manifest_hash: str, grader: Grader,
                 out_dir: str, count: int, layout: str = "plain") -> None:
        self.fields = fields
        self.layout = layout
        self.answer_format = answer_format
        self.manifest_hash = manifest_hash
        self.grader = grader
        self.out_dir = out_dir
        self.count = count

    def start_bundle(self) -> None:
        self._chunks: dict[int, list] = {}
        self._held = 0

    def process(self, item):
        problem, dead = validate_item(item, fields=self.fields, answer_format=self.answer_format,
                                      manifest_hash=self.manifest_hash, grader=self.grader,
                                      layout=self.layout)
        index = wave_of(problem.problem_id if dead is None else dead.get("problem_id"),
                        self.count)
        self._chunks.setdefault(index, []).append(item)
        self._held += 1
        if self._held >= CHUNK_RECORDS:  # memory: at most CHUNK_RECORDS records, all waves
            yield from self._flush_all()

    def finish_bundle(self):
        for written in self._flush_all():
            yield GlobalWindows.windowed_value(written)

    def _flush_all(self):
        for index in sorted(self._chunks):
            if self._chunks[index]:
                yield self._flush(index)
        self._held = 0

    def _flush(self, index: int) -> int:
        items, self._chunks[index] = self._chunks[index], []
        folder = wave_input_dir(self.out_dir, Wave(index, self.count))
        storage.write_bytes_atomic(storage.join(folder, f"{uuid.uuid4().hex}.pkl"),
                                   pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL),
                                   durable=False)
        return len(items)


class SplitInput(beam.PTransform):
    """Read the source once (Beam IO on the workers) and write each record into its wave's
    input folder (:func:`wave_input_dir`), so that each wave reads its own records, not the
    whole input again. Only counts cross stage boundaries: nothing of the input is held.
    ``plan`` (:class:`~steplabel.pipelines.launch.LaunchPlan`): the source and its path, the
    grader that finds each record's problem id, the wave count; ``out_dir``: the dataset."""

    def __init__(self, plan, *, out_dir: str) -> None:
        super().__init__()
        source = plan.manifest.source
        self.read = ReadProblems(source, path=plan.source_path)
        self.write = _WriteWaveChunksFn(
            fields=source.fields, answer_format=source.answer_format,
            manifest_hash=plan.manifest.hash, grader=plan.grader, out_dir=out_dir,
            count=plan.waves, layout=source.layout)

    def expand(self, pbegin):
        return (pbegin
                | "ReadProblems" >> self.read
                | "WriteWaveInputs" >> beam.ParDo(self.write)
                | "RecordsSplit" >> beam.CombineGlobally(sum))


def _read_chunk(path: str):
    yield from pickle.loads(storage.read_bytes(path))


class ReadWaveInput(beam.PTransform):
    """A wave's input records, as :class:`SplitInput` wrote them."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, pbegin):
        return (pbegin
                | "WaveInput" >> beam.Create([self.folder])
                | "ListChunks" >> beam.FlatMap(
                    lambda folder: storage.list_files(storage.join(folder, "*.pkl")))
                | "SpreadChunks" >> beam.Reshuffle()
                | "ReadChunks" >> beam.FlatMap(_read_chunk))


# ---------------------------------------------------------------------------------------------
# Shards appended from parts, in the row groups of sink.write_row_groups


def _shard_keys(count: int, num_shards: int):
    for output in OUTPUTS:
        for index in range(num_shards):
            yield output, "", index
    for index in range(num_shards):
        yield "dead_letter", INPUT_PREFIX, index


def assemble_shard(key: tuple[str, str, int], *, out_dir: str, count: int,
                   num_shards: int) -> tuple[str, int]:
    """Append shard ``key``'s parts of every wave, in wave order, into the dataset's shard;
    returns ``(output, rows)`` (no parts: no shard, 0)."""
    output, prefix, index = key
    name = storage.shard_name(index, num_shards, prefix)
    parts = [storage.join(wave_dir(out_dir, Wave(w, count)), OUTPUT_DIRS[output], name)
             for w in range(count)]
    parts = [part for part in parts if storage.exists(part)]
    if not parts:
        return output, 0
    rows = 0

    def tables():
        nonlocal rows
        for part in parts:
            table = storage.open_parquet(part).read()
            rows += table.num_rows
            yield table.cast(schema)

    schema = OUTPUTS[output]
    data = write_row_groups(tables(), schema)
    storage.write_bytes_atomic(storage.join(out_dir, OUTPUT_DIRS[output], name), data)
    return output, rows


def _read_state(path: str):
    return pickle.loads(storage.read_bytes(path))


class AssembleShards(beam.PTransform):
    """The waves' parts -> the dataset's shards, ``_work/figures.json`` and
    ``_work/rows_in.json`` (the files one pipeline writes)."""

    def __init__(self, out_dir: str, *, count: int, num_shards: int) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.count = count
        self.num_shards = num_shards

    def expand(self, pbegin):
        out_dir, count, num_shards = self.out_dir, self.count, self.num_shards
        written = (pbegin
                   | "ShardKeys" >> beam.Create(list(_shard_keys(count, num_shards)))
                   | "Spread" >> beam.Reshuffle()
                   | "AppendParts" >> beam.Map(assemble_shard, out_dir=out_dir, count=count,
                                               num_shards=num_shards))
        waves = pbegin | "Waves" >> beam.Create([wave_dir(out_dir, Wave(w, count))
                                                 for w in range(count)])

        def fold(states):
            merged = Figures()
            for state in states:
                merged.merge(state)
            return merged

        def write_figures(merged):
            storage.write_json_atomic(
                storage.join(out_dir, storage.WORK_DIR, FIGURES_FILE), merged.result())

        (waves
         | "ReadFigures" >> beam.Map(lambda d: _read_state(storage.join(d, FIGURES_STATE)))
         | "FoldFigures" >> beam.CombineGlobally(fold)
         | "WriteFigures" >> beam.Map(write_figures))

        def write_rows_in(total):
            storage.write_json_atomic(
                storage.join(out_dir, storage.WORK_DIR, ROWS_IN_FILE), {"rows_in": total})

        (waves
         | "ReadRowsIn" >> beam.Map(
             lambda d: storage.read_json(storage.join(d, ROWS_IN_FILE))["rows_in"])
         | "SumRowsIn" >> beam.CombineGlobally(sum)
         | "WriteRowsIn" >> beam.Map(write_rows_in))
        return written
