"""``steplabel evaluate``: annotators as first-error predictors against human labels.

::

    steplabel evaluate --gold FILE [--gold FILE ...] [--answers FILE] --manifest MANIFEST \\
        --annotators mc,omegaprm,judge,consensus [--out DIR] [--json]

Reads human-labelled solutions (ProcessBench records, per-step ratings, or the PRM800K release
files as they are; see :mod:`steplabel.annotators.evaluation`), joins gold answers, runs every
chosen annotator on the given steps with the manifest's models, and reports ProcessBench's
``error_acc``, ``correct_acc`` and F1 per gold file and averaged (every annotator on the same
items: an item it could not score is a wrong prediction; its coverage is reported),
step-level precision and recall of negatives for per-step ratings, and the cost of each
annotator.

It is a Beam job like ``run``, in the same job frame
(:func:`~steplabel.pipelines.frame.run_framed`) and on the same stage machinery
(:class:`~steplabel.pipelines.stages.EngineStageFn`). The launcher only hashes the gold and
answers files (the hashes pin their content); the workers read them, through Beam
``FileSystems`` (local or remote paths), so the job graph holds paths, not records::

    gold file paths ─► ReadGold ◄── answers table (ReadAnswers; a side input)
                         ├► gold items ─────► ProgressTotal ─► SpreadItems ─► gold items (below)
                         │                       ▲ total (a side input)
                         ├► counts per file ─► CountGold ─► _work/gold_read.json
                         └► unreadable records ─► dead_letter

    gold items ─► CheckGoldAnswers ─┬► (gold answer usable) PredictWithCompleter [completer] ─┐
                                    ├► PredictWithJudge [judge] ─────────────────────────────┤
                                    └──────────────── CoGroupByKey ◄──────────────────────────┘
                                          └► AssemblePredictions ─► predictions, dead_letter
    then the report (launcher: from the shards and _work/gold_read.json)

Each engine stage keeps many items in flight on the worker's shared engine pool, checkpoints
every finished item under ``_work/<stage>/`` (a rerun replays it) and, when an engine dies,
drops it (the retried bundle starts a new one) and fails the bundle. Bad records and items
whose requests fail go to ``dead_letter/``.

From the manifest, evaluate uses ``seed``, ``models`` (``completer``, default the policy, for
Monte Carlo and OmegaPRM rollouts; ``judge``), ``policy.template`` (the prompt the completer
continues under), ``monte_carlo``, ``omegaprm`` (``rollouts``, ``sampling``), ``judge`` and
``runner``. Its ``source`` is not used (the gold files are the input) and may be left out; the
steps are joined with the separator of their format, not the manifest's ``splitter``.

Output directory::

    predictions/part-*.parquet   one row per item and annotator (schema PREDICTION)
    dead_letter/part-*.parquet   unreadable records and failed items, with the reason
    report.json  report.md       the figures (also printed), info.json, COMPLETED (last)
    _work/run.json, _work/evaluate_rollouts/, _work/evaluate_judge/   resume state
    _work/gold_read.json         gold records read (items and rejects), for the report
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils import shared
import pyarrow as pa
import pyarrow.parquet as pq

from steplabel.annotators.evaluation import (
    ANNOTATORS,
    STATUS_SKIPPED,
    AnswerTable,
    EvaluationSettings,
    GoldFileError,
    GoldItem,
    GoldReject,
    ItemPrediction,
    annotator_versions,
    answer_table,
    build_report,
    decode_records,
    join_gold_answers,
    StagePredictions,
    combine_predictions,
    completer_stage,
    judge_stage,
    parse_gold_text,
    render_report_markdown,
    resolve_annotators,
    source_name,
    stage_predictions_from_json,
    stage_predictions_to_json,
    usable_gold_answer,
)
from steplabel.dataset import storage
from steplabel.pipelines.sink import WriteShards
from steplabel.pipelines.stages import (
    EVALUATE_JUDGE,
    EVALUATE_ROLLOUTS,
    EngineStageFn,
    _acquire_pool,
)
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import JobManifest, manifest_from_dict, read_manifest_data
from steplabel.schemas.records import COST

log = logging.getLogger(__name__)

EVALUATION_VERSION = 1

#: Explicit schema of the predictions output: one row per (item, annotator).
PREDICTION = pa.schema(
    [
        ("problem_id", pa.string()),  # "<source>/<id>"
        ("item_id", pa.string()),
        ("source", pa.string()),  # the gold file's stem
        ("gold_format", pa.string()),  # processbench | step_ratings
        ("generator", pa.string()),
        ("problem", pa.string()),
        ("steps", pa.list_(pa.string())),
        ("num_steps", pa.int32()),
        ("label", pa.int32()),  # human first-error index, -1 = all steps correct
        ("ratings", pa.list_(pa.int8())),  # per-step -1/0/+1 (null after the first -1)
        ("final_answer_correct", pa.bool_()),
        ("gold_answer", pa.string()),  # null: no usable gold answer
        ("gold_status", pa.string()),  # ok | missing | unparseable_answer | ...
        ("answer_origin", pa.string()),  # gold_file | answers_by_id | answers_by_problem
        ("annotator", pa.string()),  # mc | omegaprm | judge | consensus
        ("annotator_version", pa.string()),
        ("status", pa.string()),  # predicted | unknown | skipped
        ("reason", pa.string()),
        ("predicted_first_error", pa.int32()),  # null: unknown or skipped
        ("exact_match", pa.bool_()),  # predicted == label; null when skipped
        ("cost", COST),
        ("model_id", pa.string()),
        ("details", pa.string()),  # JSON: the annotator's evidence
        ("evaluation_hash", pa.string()),
        ("run_seed", pa.int64()),
    ]
)

PREDICTIONS = "predictions"
DEAD_LETTER = "dead_letter"
OUTPUTS = (PREDICTIONS, DEAD_LETTER)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
#: Where the pipeline writes how many gold records it read (``{"items": N, "rejects": M}``).
GOLD_READ_FILE = "gold_read.json"

#: A manifest written only for evaluate may leave ``source`` out; this stands in for it.
_NO_SOURCE = {"kind": "jsonl", "path": "<steplabel evaluate --gold>", "name": "evaluate"}


class EvaluationError(RuntimeError):
    """The evaluation cannot start or did not finish; the message says why."""


# --------------------------------------------------------------------------------------------
# What is evaluated


def load_evaluation_manifest(path: str | Path) -> JobManifest:
    """A job manifest for evaluate: validated like ``run``'s, ``source`` optional."""
    data = read_manifest_data(path)
    if isinstance(data, dict) and "source" not in data:
        data = {**data, "source": dict(_NO_SOURCE)}
    return manifest_from_dict(data)


def _open_raw(path: str):
    """A file's bytes as stored, on any filesystem (no decompression by file name)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _is_file(path: str) -> bool:
    return FileSystems.exists(path) if "://" in path else Path(path).is_file()


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with _open_raw(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EvaluationSpec:
    """Everything that decides the predictions, hashed into :attr:`hash`.

    Gold and answers files are identified by source name and content hash (not by path), so a
    moved file still resumes and an edited one is refused. ``runner`` settings and the unused
    ``source`` are not part of the hash. The launcher reads the files only to hash them; the
    pipeline's workers read their records and check them against these hashes.
    """

    manifest: JobManifest
    annotators: tuple[str, ...]
    gold_files: dict[str, str]  # source name -> path
    answers_file: str | None = None
    answer_field: str = "answer"
    answer_format: str = "plain"
    omegaprm_final_answer: str = "grade"
    input_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"evaluate-{self.manifest.name}"

    def to_dict(self) -> dict[str, Any]:
        manifest = self.manifest.to_dict()
        manifest.pop("runner", None)
        manifest.pop("source", None)
        return {
            "evaluation_version": EVALUATION_VERSION,
            "manifest": manifest,
            "annotators": list(self.annotators),
            "gold_files": {name: self.input_hashes.get(path)
                           for name, path in sorted(self.gold_files.items())},
            "answers_file": self.input_hashes.get(self.answers_file)
            if self.answers_file else None,
            "answer_field": self.answer_field,
            "answer_format": self.answer_format,
            "omegaprm_final_answer": self.omegaprm_final_answer,
        }

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def make_spec(manifest: JobManifest, *, gold_files: list[str], annotators: str | list[str],
              answers_file: str | None = None, answer_field: str = "answer",
              answer_format: str = "plain", omegaprm_final_answer: str = "grade"
              ) -> EvaluationSpec:
    """Validate the inputs and build the spec; errors name the bad value."""
    chosen = resolve_annotators(annotators)
    settings = EvaluationSettings.from_manifest(manifest,
                                                omegaprm_final_answer=omegaprm_final_answer)
    settings.check(chosen)
    if answer_format not in ("plain", "gsm8k", "boxed"):
        raise ConfigError(f"answer format must be plain, gsm8k or boxed, got {answer_format!r}")
    if not gold_files:
        raise ConfigError("at least one --gold file is required")
    named: dict[str, str] = {}
    for path in gold_files:
        name = source_name(path)
        if name in named:
            raise ConfigError(f"gold files {named[name]} and {path} have the same name "
                              f"{name!r}; sources are reported by file name, rename one")
        named[name] = path
    hashes = {}
    for path in [*gold_files, *([answers_file] if answers_file else [])]:
        if not _is_file(path):
            raise GoldFileError(f"{path} does not exist or is not a file")
        hashes[path] = _sha256_file(path)
    return EvaluationSpec(manifest=manifest, annotators=chosen, gold_files=named,
                          answers_file=answers_file, answer_field=answer_field,
                          answer_format=answer_format,
                          omegaprm_final_answer=omegaprm_final_answer, input_hashes=hashes)


@dataclass(frozen=True)
class InputFile:
    """A gold or answers file as the pipeline gets it: its path (absolute when local, since
    workers may run in other folders), the content hash the spec pinned and, for a gold file,
    its source name."""

    path: str
    sha256: str
    source: str | None = None


def _input_path(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def gold_inputs(spec: EvaluationSpec) -> list[InputFile]:
    """The gold files the pipeline reads, in the spec's order (paths and hashes only)."""
    return [InputFile(_input_path(path), spec.input_hashes[path], name)
            for name, path in spec.gold_files.items()]


def answers_input(spec: EvaluationSpec) -> InputFile | None:
    if not spec.answers_file:
        return None
    return InputFile(_input_path(spec.answers_file), spec.input_hashes[spec.answers_file])


def read_input_text(file: InputFile, *, what: str) -> str:
    """A gold or answers file's text, read through Beam ``FileSystems`` (any filesystem);
    :class:`GoldFileError` when it cannot be read, is not UTF-8, or is not the content the
    spec pinned (edited after the launcher hashed it)."""
    try:
        with _open_raw(file.path) as handle:
            data = handle.read()
    except Exception as exc:  # noqa: BLE001 - every filesystem has its own errors
        raise GoldFileError(f"{what} {file.path} cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise GoldFileError(f"{what} {file.path} changed after the evaluation started (its "
                            "content is not what the launcher hashed); run the evaluation again")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GoldFileError(f"{what} {file.path} is not UTF-8: {exc}") from None


def read_gold_file(file: InputFile, *, answer_field: str = "answer",
                   answer_format: str = "plain") -> tuple[list[GoldItem], list[GoldReject]]:
    """One gold file's items and rejects (runs on workers)."""
    text = read_input_text(file, what="gold file")
    return parse_gold_text(text, source=file.source, answer_field=answer_field,
                           answer_format=answer_format)


def read_answers(file: InputFile, *, answer_field: str = "answer",
                 answer_format: str = "plain") -> AnswerTable:
    """The answers file's table (runs on a worker; malformed JSONL lines count as unusable)."""
    text = read_input_text(file, what="answers file")
    decoded = decode_records(text, what=f"answers file {file.path}")
    table = answer_table((record for _, record, error in decoded if error is None),
                         answer_field=answer_field, answer_format=answer_format)
    table = replace(table, unusable=table.unusable
                    + sum(1 for _, _, error in decoded if error is not None))
    if table.unusable:
        log.warning("answers file %s: %d records without a usable answer, id or problem",
                    file.path, table.unusable)
    return table


def reject_row(reject: GoldReject, *, evaluation_hash: str) -> dict:
    """A dead-letter row (schema ``records.DEAD_LETTER``) for a record that cannot be read."""
    return {
        "stage": "read",
        "reason": reject.reason,
        "error": reject.error,
        "problem_id": f"{reject.source}/{reject.item_id}" if reject.item_id else None,
        "source": reject.source,
        "original": reject.original,
        "manifest_hash": evaluation_hash,
    }


# --------------------------------------------------------------------------------------------
# The per-item work (runs on workers)


def prediction_rows(prediction: ItemPrediction, *, evaluation_hash: str,
                    run_seed: int, judge_parser: str = "processbench") -> list[dict]:
    """One PREDICTION row per annotator of an item."""
    item = prediction.item
    versions = annotator_versions(judge_parser)
    rows = []
    for name, p in prediction.predictions.items():
        rows.append({
            "problem_id": item.problem_id,
            "item_id": item.item_id,
            "source": item.source,
            "gold_format": item.gold_format,
            "generator": item.generator,
            "problem": item.problem,
            "steps": list(item.steps),
            "num_steps": item.num_steps,
            "label": item.label,
            "ratings": list(item.ratings) if item.ratings is not None else None,
            "final_answer_correct": item.final_answer_correct,
            "gold_answer": item.gold_answer if prediction.gold_status == "ok" else None,
            "gold_status": prediction.gold_status,
            "answer_origin": item.answer_origin,
            "annotator": name,
            "annotator_version": versions[name],
            "status": p.status,
            "reason": p.reason,
            "predicted_first_error": p.first_error,
            "exact_match": None if p.status == STATUS_SKIPPED else p.first_error == item.label,
            "cost": p.cost,
            "model_id": p.model_id,
            "details": json.dumps(p.details, sort_keys=True, default=str),
            "evaluation_hash": evaluation_hash,
            "run_seed": run_seed,
        })
    return rows


@dataclass(frozen=True)
class CheckedItem:
    """A gold item with the gold answer its annotators run under (``gold_answer`` None:
    Monte Carlo, OmegaPRM and consensus are skipped; ``gold_status`` says why)."""

    item: GoldItem
    gold_answer: str | None
    gold_status: str

    @property
    def key(self) -> str:
        return self.item.problem_id


def check_item(item: GoldItem, annotators: tuple[str, ...]) -> CheckedItem:
    gold_answer, gold_status = usable_gold_answer(item, annotators)
    return CheckedItem(item, gold_answer, gold_status)


def dead_letter_row(item: GoldItem, failure, *, evaluation_hash: str) -> dict:
    """A dead-letter row (schema ``records.DEAD_LETTER``) for an item whose requests failed."""
    return {"stage": "evaluate", "reason": failure.reason, "error": failure.error,
            "problem_id": item.problem_id, "source": item.source, "original": item.original,
            "manifest_hash": evaluation_hash}


def item_outputs(checked: CheckedItem, parts: list[StagePredictions], *,
                 annotators: tuple[str, ...], evaluation_hash: str, run_seed: int,
                 judge_parser: str = "processbench") -> tuple[dict[str, list[dict]],
                                                              dict[str, int]]:
    """One item's rows by output and its counters, from its engine stages' results
    (``parts``, completer before judge). A failed request in any stage (the first in that
    order) dead-letters the item (``engine_error``, ``prompt_too_long``)."""
    item = checked.item
    failure = next((p.failure for p in parts if p.failure is not None), None)
    if failure is not None:
        return ({DEAD_LETTER: [dead_letter_row(item, failure, evaluation_hash=evaluation_hash)]},
                {f"dead_letter_{failure.reason}": 1})
    done: dict[str, Any] = {}
    for part in parts:
        done.update(part.predictions)
    prediction = combine_predictions(item, annotators=annotators,
                                     gold_answer=checked.gold_answer,
                                     gold_status=checked.gold_status, done=done)
    rows = prediction_rows(prediction, evaluation_hash=evaluation_hash, run_seed=run_seed,
                           judge_parser=judge_parser)
    counters: dict[str, int] = {}
    for row in rows:
        name = f"predictions_{row['annotator']}_{row['status']}"
        counters[name] = counters.get(name, 0) + 1
    if prediction.gold_status != "ok":
        counters["items_without_gold_answer"] = 1
    return {PREDICTIONS: rows}, counters


# --------------------------------------------------------------------------------------------
# Beam wiring

#: Tagged outputs of :class:`ReadGoldFileFn` beside the items.
REJECTS, COUNTS = "rejects", "counts"


class ReadGoldFileFn(beam.DoFn):
    """A gold file (:class:`InputFile`) -> its items, gold answers joined from ``answers``
    (the answers table, a side input; None without an answers file); tagged ``rejects``: the
    dead-letter rows of its records that cannot be read; tagged ``counts``: how many of each
    (``{"items": n, "rejects": m}``). A file that cannot be read at all fails the job
    (:class:`GoldFileError`)."""

    def __init__(self, *, answer_field: str, answer_format: str, evaluation_hash: str) -> None:
        self.answer_field = answer_field
        self.answer_format = answer_format
        self.evaluation_hash = evaluation_hash

    def process(self, file: InputFile, answers: AnswerTable | None = None):
        items, rejects = read_gold_file(file, answer_field=self.answer_field,
                                        answer_format=self.answer_format)
        if answers is not None:
            items = join_gold_answers(items, answers)
        yield from items
        for reject in rejects:
            yield beam.pvalue.TaggedOutput(
                REJECTS, reject_row(reject, evaluation_hash=self.evaluation_hash))
        yield beam.pvalue.TaggedOutput(COUNTS, {"items": len(items), "rejects": len(rejects)})


def sum_counts(counts) -> dict[str, int]:
    total = {"items": 0, "rejects": 0}
    for part in counts:
        for name, value in part.items():
            total[name] += value
    return total


def write_gold_counts(counts: dict[str, int], out_dir: str) -> dict[str, int]:
    storage.write_json_atomic(storage.join(out_dir, storage.WORK_DIR, GOLD_READ_FILE), counts)
    return counts


class ProgressTotalFn(beam.DoFn):
    """Gold items pass through; the gold count (a side input) becomes the total of this
    worker's progress display, which the engine stages after ``SpreadItems`` then find (one
    display per dataset and manifest). Display only: a worker that runs no bundle of this step
    shows its items without a total."""

    def __init__(self, manifest, *, out_dir: str, pool: shared.Shared) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self._pool_handle = pool

    def setup(self) -> None:
        self._progress = None

    def process(self, item: GoldItem, counts: dict[str, int]):
        if self._progress is None:
            self._progress = _acquire_pool(self._pool_handle).progress(
                self.out_dir, self.manifest, counts["items"])
        yield item


def evaluation_roles(manifest: JobManifest, annotators: tuple[str, ...]) -> dict[str, Any]:
    """The engine config of each role the chosen annotators use (``completer`` for Monte Carlo
    and OmegaPRM, ``judge``), with each vLLM model's share of GPU memory set among these roles
    only: evaluate samples nothing, so the policy takes none."""
    from steplabel.schemas.config import share_gpu_memory

    roles = {}
    if {"mc", "omegaprm"} & set(annotators):
        roles["completer"] = manifest.models.completer_model
    if "judge" in annotators:
        roles["judge"] = manifest.models.judge_model
    return share_gpu_memory(roles)


class _PredictionStageFn(EngineStageFn):
    """An engine stage of the evaluate job: :class:`CheckedItem` -> (item key,
    (:class:`StagePredictions`, resumed)), checkpointed per item under ``_work/<stage>/``."""

    def __init__(self, manifest, *, annotators: tuple[str, ...], omegaprm_final_answer: str,
                 **kwargs) -> None:
        super().__init__(manifest, **kwargs)
        self.annotators = annotators
        self.omegaprm_final_answer = omegaprm_final_answer

    def engine_config(self):
        return evaluation_roles(self.manifest, self.annotators)[self.role]

    def setup(self) -> None:
        super().setup()
        self.settings = EvaluationSettings.from_manifest(
            self.manifest, omegaprm_final_answer=self.omegaprm_final_answer)

    def key(self, checked: CheckedItem) -> str:
        return checked.key

    def encode(self, result: StagePredictions) -> dict:
        return stage_predictions_to_json(result)

    def decode(self, data: dict) -> StagePredictions:
        return stage_predictions_from_json(data)

    def emit(self, checked: CheckedItem, result: StagePredictions, *, resumed: bool):
        yield checked.key, (result, resumed)


class PredictWithCompleterFn(_PredictionStageFn):
    """Monte Carlo and OmegaPRM predictions of items with a usable gold answer, on the
    completer."""

    stage, role = EVALUATE_ROLLOUTS, "completer"

    def work(self, engine, checked: CheckedItem):
        return completer_stage(checked.item, annotators=self.annotators, engine=engine,
                               settings=self.settings, gold_answer=checked.gold_answer)


class PredictWithJudgeFn(_PredictionStageFn):
    """The judge's predictions, on the judge."""

    stage, role = EVALUATE_JUDGE, "judge"

    def work(self, engine, checked: CheckedItem):
        return judge_stage(checked.item, engine=engine, settings=self.settings)


class AssemblePredictionsFn(beam.DoFn):
    """(item key, {checked, completer, judge}) -> ``(output, row)`` of the item; its counters
    become Beam counters, and the item counts in the progress display (``problems_resumed``
    when every engine stage replayed its checkpoint)."""

    def __init__(self, manifest, *, spec: "EvaluationSpec", out_dir: str,
                 pool: shared.Shared) -> None:
        self.manifest = manifest
        self.annotators = spec.annotators
        self.evaluation_hash = spec.hash
        self.out_dir = out_dir
        self._pool_handle = pool

    def setup(self) -> None:
        judge = self.manifest.judge
        self.judge_parser = judge.parser if judge else "processbench"
        # This worker's display, its total set by ProgressTotalFn (None where it did not run).
        self._progress = _acquire_pool(self._pool_handle).progress(self.out_dir, self.manifest,
                                                                   None)

    def process(self, element):
        _, grouped = element
        (checked,) = grouped["checked"]
        stages = [*grouped["completer"], *grouped["judge"]]
        rows, counters = item_outputs(checked, [part for part, _ in stages],
                                      annotators=self.annotators,
                                      evaluation_hash=self.evaluation_hash,
                                      run_seed=self.manifest.seed,
                                      judge_parser=self.judge_parser)
        # An item no engine stage worked on (no gold answer, no judge) is computed each run.
        resumed = bool(stages) and all(replayed for _, replayed in stages)
        counters["problems_resumed" if resumed else "problems_labelled"] = 1
        for name, value in counters.items():
            Metrics.counter("steplabel", name).inc(value)
        self._progress.update(resumed=resumed)
        for output in OUTPUTS:
            for row in rows.get(output, []):
                yield output, row

    def teardown(self) -> None:
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.close()


class PredictFirstErrors(beam.PTransform):
    """Gold items -> ``(output, row)`` of ``predictions`` and ``dead_letter``: a pure check of
    the gold answers, one engine stage per role the annotators use (completer, judge; both
    read the checked items, so one worker keeps both kinds of request in flight), joined by
    item. ``pool``: the ``shared.Shared`` handle of the worker's engine pool (one per worker
    process, as in the run job); a new one by default."""

    def __init__(self, spec: "EvaluationSpec", *, out_dir: str,
                 pool: shared.Shared | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.out_dir = out_dir
        self.pool = pool if pool is not None else shared.Shared()

    def expand(self, items):
        spec, m = self.spec, self.spec.manifest
        annotators = spec.annotators
        pool = self.pool
        stage = dict(manifest=m, annotators=annotators,
                     omegaprm_final_answer=spec.omegaprm_final_answer, out_dir=self.out_dir,
                     pool=pool, max_in_flight=m.runner.max_in_flight)
        checked = items | "CheckGoldAnswers" >> beam.Map(check_item, annotators)
        joined = {"checked": checked | "KeyItems" >> beam.Map(lambda c: (c.key, c))}
        if {"mc", "omegaprm"} & set(annotators):
            joined["completer"] = (
                checked
                | "WithGoldAnswer" >> beam.Filter(lambda c: c.gold_answer is not None)
                | "PredictWithCompleter" >> beam.ParDo(PredictWithCompleterFn(**stage)))
        else:
            joined["completer"] = items.pipeline | "NoCompleter" >> beam.Create([])
        if "judge" in annotators:
            joined["judge"] = checked | "PredictWithJudge" >> beam.ParDo(
                PredictWithJudgeFn(**stage))
        else:
            joined["judge"] = items.pipeline | "NoJudge" >> beam.Create([])
        return (joined
                | "JoinPredictions" >> beam.CoGroupByKey()
                | "AssemblePredictions" >> beam.ParDo(AssemblePredictionsFn(
                    m, spec=spec, out_dir=self.out_dir, pool=pool)))


def build_evaluation_pipeline(pipeline: beam.Pipeline, spec: EvaluationSpec, *, out_dir: str):
    """Apply the evaluate job to ``pipeline``; returns the PCollection of written shards.

    The graph holds the gold and answers files' paths and hashes, never their records: the
    workers read them (:class:`ReadGoldFileFn`; the answers table is a side input, read once),
    count what they read into ``_work/gold_read.json`` for the report, and spread the items
    over the workers before the engine stages."""
    extra = []
    answers = answers_input(spec)
    if answers is not None:
        table = (pipeline
                 | "AnswersFile" >> beam.Create([answers])
                 | "ReadAnswers" >> beam.Map(read_answers, answer_field=spec.answer_field,
                                             answer_format=spec.answer_format))
        extra.append(beam.pvalue.AsSingleton(table))
    read = (pipeline
            | "GoldFiles" >> beam.Create(gold_inputs(spec))
            | "ReadGold" >> beam.ParDo(
                ReadGoldFileFn(answer_field=spec.answer_field,
                               answer_format=spec.answer_format, evaluation_hash=spec.hash),
                *extra).with_outputs(REJECTS, COUNTS, main="items"))
    counts = (read[COUNTS]
              | "CountGold" >> beam.CombineGlobally(sum_counts)
              | "WriteGoldCounts" >> beam.Map(write_gold_counts, out_dir))
    pool = shared.Shared()  # one engine pool per worker process, as in the run job
    predicted = (
        read.items
        | "ProgressTotal" >> beam.ParDo(ProgressTotalFn(spec.manifest, out_dir=out_dir,
                                                        pool=pool),
                                        beam.pvalue.AsSingleton(counts))
        | "SpreadItems" >> beam.Reshuffle()
        | "PredictFirstErrors" >> PredictFirstErrors(spec, out_dir=out_dir, pool=pool)
    )
    rejected = read[REJECTS] | "ReadRejects" >> beam.Map(lambda row: (DEAD_LETTER, row))
    return ((predicted, rejected) | "MergeOutputs" >> beam.Flatten()
            | "WriteOutputs" >> WriteShards(out_dir, num_shards=spec.manifest.runner.num_shards,
                                            schemas={PREDICTIONS: PREDICTION}))


# --------------------------------------------------------------------------------------------
# Driver


@dataclass(frozen=True)
class EvaluationResult:
    out_dir: str
    report: dict
    markdown: str
    info: dict
    seconds: float


def output_files(out_dir: str, output: str) -> list[str]:
    return storage.list_files(storage.join(out_dir, output, "part-*.parquet"))


def read_rows(out_dir: str, output: str) -> list[dict]:
    rows: list[dict] = []
    for path in output_files(out_dir, output):
        rows.extend(pq.read_table(pa.BufferReader(storage.read_bytes(path))).to_pylist())
    return rows


def _remove_stale_shards(out_dir: str, num_shards: int) -> None:
    suffix = f"-of-{num_shards:05d}.parquet"
    stale = [p for output in OUTPUTS for p in output_files(out_dir, output)
             if not p.endswith(suffix)]
    if stale:
        FileSystems.delete(stale)


def prepare_evaluation_dir(out_dir: str, spec: EvaluationSpec, *, overwrite: bool) -> None:
    """Refuse a COMPLETED evaluation (unless ``overwrite``), a directory holding another
    evaluation's work (another hash: other settings or changed gold/answers files, so resuming
    would mix results) and any other non-empty directory; then record this evaluation in
    ``_work/run.json``, which a rerun checks before it resumes from the checkpoints."""
    import shutil

    run_file = storage.join(out_dir, storage.WORK_DIR, "run.json")
    if storage.exists(storage.join(out_dir, storage.COMPLETED)) and not overwrite:
        raise EvaluationError(f"{out_dir} already holds a COMPLETED evaluation; pass "
                              "--overwrite to replace it, or choose another --out")
    local = "://" not in out_dir
    if overwrite and local and Path(out_dir).exists():
        shutil.rmtree(out_dir)
    if storage.exists(run_file):
        previous = storage.read_json(run_file)
        if previous.get("evaluation_hash") != spec.hash:
            raise EvaluationError(
                f"{out_dir} holds work of another evaluation ({previous.get('name')!r}, hash "
                f"{str(previous.get('evaluation_hash'))[:12]}) and this one is {spec.name!r} "
                f"(hash {spec.hash[:12]}): settings or input files differ; use an empty "
                "--out, or --overwrite")
    elif local and Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise EvaluationError(f"{out_dir} is not empty and is not a steplabel evaluation; "
                              "choose an empty --out, or pass --overwrite")
    gold_read = storage.join(out_dir, storage.WORK_DIR, GOLD_READ_FILE)
    if storage.exists(gold_read):  # an earlier attempt's: this run writes its own
        FileSystems.delete([gold_read])
    storage.write_json_atomic(run_file, {"name": spec.name, "evaluation_hash": spec.hash,
                                         "spec": spec.to_dict()})


def run_evaluation(spec: EvaluationSpec, *, out_dir: str, overwrite: bool = False,
                   manifest_path: str | None = None) -> EvaluationResult:
    """Run the evaluate job to completion, then write the report and mark the directory."""
    from steplabel.pipelines.frame import run_framed
    from steplabel.pipelines.job import (
        JobError,
        check_model_paths,
        check_out_path,
        pipeline_options,
    )

    manifest = spec.manifest
    try:  # before anything starts: a file as --out, a model folder that is not there
        check_out_path(out_dir)
        check_model_paths(manifest)
    except JobError as exc:
        raise EvaluationError(str(exc)) from None
    framed = run_framed(
        manifest, options=pipeline_options(manifest),
        prepare=lambda: prepare_evaluation_dir(out_dir, spec, overwrite=overwrite),
        build=lambda pipeline: build_evaluation_pipeline(pipeline, spec, out_dir=out_dir),
        finalize=lambda counters: _finalize_evaluation(
            spec, out_dir=out_dir, counters=counters, manifest_path=manifest_path),
        on_failure=lambda exc: explain_failure(exc, out_dir))
    report, markdown, info = framed.result
    return EvaluationResult(out_dir, report, markdown, info, framed.seconds)


def gold_file_error(exc: BaseException) -> str | None:
    """The message of a :class:`GoldFileError` a worker raised (a gold or answers file that
    cannot be read), found in the exception chain or, for runners that pass worker errors on
    as text, in the message; None for any other failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, GoldFileError):
            return str(exc)
        found = re.search(r"GoldFileError: (.+)", str(exc))
        if found:
            return re.sub(r" \[while running '[^']*'\]$", "", found.group(1).strip())
        exc = exc.__cause__ or exc.__context__
    return None


def explain_failure(exc: BaseException, out_dir: str) -> None:
    """A dead engine stops the evaluation: say what is saved and how to resume. A gold or
    answers file the workers cannot read is a :class:`GoldFileError` again (bad input, as
    before the job). Other failures are re-raised as they are."""
    from steplabel.pipelines.job import engine_died_message

    message = engine_died_message(exc, out_dir, job="evaluation", keys="items")
    if message is not None:
        raise EvaluationError(message) from exc
    message = gold_file_error(exc)
    if message is not None:
        raise GoldFileError(message) from exc


def _finalize_evaluation(spec: EvaluationSpec, *, out_dir: str, counters: dict[str, int],
                         manifest_path: str | None) -> tuple[dict, str, dict]:
    """The report, its Markdown and info.json from the finished shards and the gold records
    the pipeline read (``_work/gold_read.json``); COMPLETED when every record read is
    accounted for."""
    manifest = spec.manifest
    gold_read = storage.read_json_if_exists(
        storage.join(out_dir, storage.WORK_DIR, GOLD_READ_FILE))
    if gold_read is None:
        raise EvaluationError(f"the pipeline finished without writing its gold count "
                              f"({storage.WORK_DIR}/{GOLD_READ_FILE}); the evaluation is not "
                              "finalized")
    read = gold_read["items"] + gold_read["rejects"]
    _remove_stale_shards(out_dir, manifest.runner.num_shards)
    predictions = read_rows(out_dir, PREDICTIONS)
    dead = read_rows(out_dir, DEAD_LETTER)
    models: dict[str, list[str]] = {}
    for row in predictions:
        if row["model_id"]:
            models.setdefault(row["annotator"], [])
            if row["model_id"] not in models[row["annotator"]]:
                models[row["annotator"]].append(row["model_id"])
    evaluation = {
        "name": spec.name,
        "hash": spec.hash,
        "manifest": manifest_path,
        "manifest_name": manifest.name,
        "run_seed": manifest.seed,
        "gold_files": dict(spec.gold_files),
        "answers_file": spec.answers_file,
        "annotators": list(spec.annotators),
        "models": {name: ", ".join(ids) for name, ids in models.items()},
        "omegaprm_final_answer": spec.omegaprm_final_answer,
    }
    report = build_report(predictions, annotators=spec.annotators, dead_letters=dead,
                          evaluation=evaluation)
    accounted = report["items"]["evaluated"] + report["items"]["dead_letter"]
    report["items"]["read"] = read
    report["items"]["reconciled"] = accounted == read
    markdown = render_report_markdown(report)
    info = {
        "evaluation_version": EVALUATION_VERSION,
        "name": spec.name,
        "evaluation_hash": spec.hash,
        "rows": {PREDICTIONS: len(predictions), DEAD_LETTER: len(dead)},
        "outputs": {name: name for name in OUTPUTS},
        "num_shards": manifest.runner.num_shards,
        "records_read": read,
        "counters": counters,
        "spec": spec.to_dict(),
    }
    storage.write_json_atomic(storage.join(out_dir, REPORT_JSON), report)
    storage.write_bytes_atomic(storage.join(out_dir, REPORT_MD), markdown.encode("utf-8"))
    storage.write_json_atomic(storage.join(out_dir, "info.json"), info)
    if report["items"]["reconciled"]:
        storage.write_bytes_atomic(storage.join(out_dir, storage.COMPLETED), b"")
    return report, markdown, info


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser) -> None:
    """The ``steplabel evaluate`` flags."""
    parser.add_argument("--gold", action="append", required=True, metavar="FILE",
                        help="human-labelled solutions: ProcessBench records, per-step "
                        "ratings, or a PRM800K release file (phase1/phase2 JSONL); JSON list "
                        "or JSONL (repeat for several sources)")
    parser.add_argument("--answers", metavar="FILE",
                        help="gold answers (JSON list or JSONL with answer and id and/or "
                        "problem), joined by id or by exact problem text")
    parser.add_argument("--manifest", required=True,
                        help="job manifest (YAML): models, annotator settings, runner")
    parser.add_argument("--annotators", default=",".join(ANNOTATORS),
                        help="comma-separated subset of " + ",".join(ANNOTATORS)
                        + " (default: all; consensus adds mc and judge)")
    parser.add_argument("--out", help="output directory (default: out/evaluate-<manifest name>)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--answer-field", default="answer",
                        help="field holding the gold answer in gold and answers files")
    parser.add_argument("--answer-format", default="plain", choices=["plain", "gsm8k", "boxed"],
                        help="format of the gold answers")
    parser.add_argument("--omegaprm-final-answer", default="grade", choices=["grade", "item"],
                        help="OmegaPRM learns whether a solution's final answer is right by "
                        "grading it (default) or from the record's final_answer_correct")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a COMPLETED evaluation or another evaluation's work")
    parser.add_argument("--max-in-flight", type=int, help="items in flight per worker")


def run(args) -> int:
    """Run ``steplabel evaluate``; 0 on success, 1 when items are unaccounted for, 2 on bad
    input or configuration."""
    try:
        manifest = load_evaluation_manifest(args.manifest)
        if args.max_in_flight:
            manifest = manifest.with_runner(max_in_flight=args.max_in_flight)
        spec = make_spec(manifest, gold_files=list(args.gold), annotators=args.annotators,
                         answers_file=args.answers, answer_field=args.answer_field,
                         answer_format=args.answer_format,
                         omegaprm_final_answer=args.omegaprm_final_answer)
        out = args.out or os.path.join("out", spec.name)
        from steplabel.pipelines.logs import use_dataset_dir

        use_dataset_dir(out, "evaluate")  # engine and library logs: OUT/logs/evaluate.log
        result = run_evaluation(spec, out_dir=out, overwrite=args.overwrite,
                                manifest_path=str(args.manifest))
    except (ConfigError, GoldFileError, EvaluationError) as exc:
        print(f"steplabel: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.report, indent=2, sort_keys=True))
    else:
        print(result.markdown, end="")
    print(f"[steplabel] evaluated in {result.seconds:.0f}s; predictions and report written to "
          f"{out}", file=sys.stderr if args.json else sys.stdout)
    if not result.report["items"]["reconciled"]:
        print("steplabel: error: records read and items accounted for differ; the evaluation "
              "is not marked COMPLETED", file=sys.stderr)
        return 1
    return 0
