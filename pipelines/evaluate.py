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

It is a Beam job like ``run``: read (driver) → predict (:class:`LabelProblemsFn` with an
:class:`EvaluationLabeler`: engines hosted once per worker, many items in flight, one
checkpoint per finished item under ``_work/`` so that a rerun resumes) → Parquet shards →
report (driver). Bad records and items whose requests fail go to ``dead_letter/``.

From the manifest, evaluate uses ``seed``, ``models`` (``completer``, default the policy, for
Monte Carlo and OmegaPRM rollouts; ``judge``), ``policy.template`` (the prompt the completer
continues under), ``monte_carlo``, ``omegaprm`` (``rollouts``, ``sampling``), ``judge`` and
``runner``. Its ``source`` is not used (the gold files are the input) and may be left out; the
steps are joined with the separator of their format, not the manifest's ``splitter``.

Output directory::

    predictions/part-*.parquet   one row per item and annotator (schema PREDICTION)
    dead_letter/part-*.parquet   unreadable records and failed items, with the reason
    report.json  report.md       the figures (also printed), info.json, COMPLETED (last)
    _work/run.json, _work/checkpoints/   resume state
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from steplabel.annotators.evaluation import (
    ANNOTATORS,
    STATUS_SKIPPED,
    EvaluationSettings,
    GoldFileError,
    GoldItem,
    GoldReject,
    ItemPrediction,
    annotator_versions,
    build_report,
    join_gold_answers,
    load_answers_file,
    load_gold_file,
    predict_first_errors,
    render_report_markdown,
    resolve_annotators,
    source_name,
)
from steplabel.annotators.job import ProblemOutputs
from steplabel.engines.base import ContextLengthError, EngineError
from steplabel.pipelines import storage
from steplabel.pipelines.label import LabelProblemsFn
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


def _sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EvaluationSpec:
    """Everything that decides the predictions, hashed into :attr:`hash`.

    Gold and answers files are identified by source name and content hash (not by path), so a
    moved file still resumes and an edited one is refused. ``runner`` settings and the unused
    ``source`` are not part of the hash.
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
        if not Path(path).is_file():
            raise GoldFileError(f"{path} does not exist or is not a file")
        hashes[path] = _sha256_file(path)
    return EvaluationSpec(manifest=manifest, annotators=chosen, gold_files=named,
                          answers_file=answers_file, answer_field=answer_field,
                          answer_format=answer_format,
                          omegaprm_final_answer=omegaprm_final_answer, input_hashes=hashes)


def read_gold(spec: EvaluationSpec) -> tuple[list[GoldItem], list[GoldReject]]:
    """All gold items (answers joined) and rejects of the spec's files, in file order."""
    items: list[GoldItem] = []
    rejects: list[GoldReject] = []
    for name, path in spec.gold_files.items():
        got, bad = load_gold_file(path, source=name, answer_field=spec.answer_field,
                                  answer_format=spec.answer_format)
        items.extend(got)
        rejects.extend(bad)
    if spec.answers_file:
        table = load_answers_file(spec.answers_file, answer_field=spec.answer_field,
                                  answer_format=spec.answer_format)
        if table.unusable:
            log.warning("answers file %s: %d records without a usable answer, id or problem",
                        spec.answers_file, table.unusable)
        items = join_gold_answers(items, table)
    return items, rejects


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


class EvaluationLabeler:
    """The ``make_labeler`` of the evaluate job: predicts one gold item's first errors.

    Built once per worker by :class:`LabelProblemsFn` (``functools.partial`` binds the options,
    so it pickles). Holds no per-item state; many items run concurrently on the shared engines.
    Engine failures become a dead-letter row for the item (``engine_error``,
    ``prompt_too_long``).
    """

    def __init__(self, manifest: JobManifest, engines, *, annotators: tuple[str, ...],
                 evaluation_hash: str, omegaprm_final_answer: str = "grade") -> None:
        self.engines = engines
        self.annotators = annotators
        self.evaluation_hash = evaluation_hash
        self.settings = EvaluationSettings.from_manifest(
            manifest, omegaprm_final_answer=omegaprm_final_answer)
        self.settings.check(annotators)

    def _dead_letter(self, item: GoldItem, reason: str, error: str) -> dict:
        return {"stage": "evaluate", "reason": reason, "error": error,
                "problem_id": item.problem_id, "source": item.source,
                "original": item.original, "manifest_hash": self.evaluation_hash}

    async def label(self, item: GoldItem) -> ProblemOutputs:
        out = ProblemOutputs()
        try:
            prediction = await predict_first_errors(item, annotators=self.annotators,
                                                    engines=self.engines,
                                                    settings=self.settings)
        except ContextLengthError as exc:
            out.add(DEAD_LETTER, self._dead_letter(item, "prompt_too_long", str(exc)))
            out.count("dead_letter_prompt_too_long")
            return out
        except EngineError as exc:
            out.add(DEAD_LETTER, self._dead_letter(item, "engine_error", str(exc)))
            out.count("dead_letter_engine_error")
            return out
        judge = self.settings.judge
        for row in prediction_rows(prediction, evaluation_hash=self.evaluation_hash,
                                   run_seed=self.settings.run_seed,
                                   judge_parser=judge.parser if judge else "processbench"):
            out.add(PREDICTIONS, row)
            out.count(f"predictions_{row['annotator']}_{row['status']}")
        if prediction.gold_status != "ok":
            out.count("items_without_gold_answer")
        return out


# --------------------------------------------------------------------------------------------
# Beam wiring


def _shard_path(out_dir: str, output: str, index: int, num_shards: int) -> str:
    return storage.join(out_dir, output, storage.shard_name(index, num_shards))


def write_output_shard(out_dir: str, output: str, index: int, num_shards: int,
                       rows) -> tuple[str, int]:
    """Write one shard of ``predictions`` (PREDICTION) or ``dead_letter`` (records'
    DEAD_LETTER) atomically, rows in a deterministic order; return ``(path, rows)``."""
    if output == DEAD_LETTER:
        return storage.write_shard(out_dir, DEAD_LETTER, index, num_shards, rows)
    ordered = sorted(rows, key=lambda r: (r["problem_id"], ANNOTATORS.index(r["annotator"])))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ordered, schema=PREDICTION), buffer,
                   compression="zstd")
    path = _shard_path(out_dir, output, index, num_shards)
    storage.write_bytes_atomic(path, buffer.getvalue())
    return path, len(ordered)


class WriteEvaluationOutputs(beam.PTransform):
    """``(output, row)`` pairs into deterministic Parquet shards of each output."""

    def __init__(self, out_dir: str, *, num_shards: int) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.num_shards = num_shards

    def expand(self, tagged_rows):
        out_dir, num_shards = self.out_dir, self.num_shards
        return (
            tagged_rows
            | "KeyByShard" >> beam.Map(
                lambda kv: ((kv[0], storage.shard_of(kv[1], num_shards)), kv[1]))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.MapTuple(
                lambda key, rows: write_output_shard(out_dir, key[0], key[1], num_shards, rows))
        )


def build_evaluation_pipeline(pipeline: beam.Pipeline, spec: EvaluationSpec, *, out_dir: str,
                              items: list[GoldItem], reject_rows: list[dict]):
    """Apply the evaluate job to ``pipeline``; returns the PCollection of written shards."""
    manifest = spec.manifest
    make_labeler = functools.partial(EvaluationLabeler, annotators=spec.annotators,
                                     evaluation_hash=spec.hash,
                                     omegaprm_final_answer=spec.omegaprm_final_answer)
    predicted = (
        pipeline
        | "CreateGoldItems" >> beam.Create(items, reshuffle=False)
        | "PredictFirstErrors" >> beam.ParDo(LabelProblemsFn(
            manifest, out_dir=out_dir, max_in_flight=manifest.runner.max_in_flight,
            total=len(items), make_labeler=make_labeler)).with_outputs(*OUTPUTS)
    )
    tagged = [predicted[name] | f"Tag_{name}" >> beam.Map(lambda row, name=name: (name, row))
              for name in OUTPUTS]
    tagged.append(pipeline | "CreateReadRejects" >> beam.Create(
        [(DEAD_LETTER, row) for row in reject_rows], reshuffle=False))
    return (tagged | "MergeOutputs" >> beam.Flatten()
            | "WriteOutputs" >> WriteEvaluationOutputs(out_dir,
                                                       num_shards=manifest.runner.num_shards))


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
    from apache_beam.io.filesystems import FileSystems

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
    storage.write_json_atomic(run_file, {"name": spec.name, "evaluation_hash": spec.hash,
                                         "spec": spec.to_dict()})


def run_evaluation(spec: EvaluationSpec, *, out_dir: str, overwrite: bool = False,
                   manifest_path: str | None = None) -> EvaluationResult:
    """Run the evaluate job to completion, then write the report and mark the directory."""
    from steplabel.pipelines.frame import run_framed
    from steplabel.pipelines.job import pipeline_options

    items, rejects = read_gold(spec)
    manifest = spec.manifest
    framed = run_framed(
        manifest, options=pipeline_options(manifest),
        prepare=lambda: prepare_evaluation_dir(out_dir, spec, overwrite=overwrite),
        build=lambda pipeline: build_evaluation_pipeline(
            pipeline, spec, out_dir=out_dir, items=items,
            reject_rows=[reject_row(r, evaluation_hash=spec.hash) for r in rejects]),
        finalize=lambda counters: _finalize_evaluation(
            spec, out_dir=out_dir, counters=counters, read=len(items) + len(rejects),
            manifest_path=manifest_path))
    report, markdown, info = framed.result
    return EvaluationResult(out_dir, report, markdown, info, framed.seconds)


def _finalize_evaluation(spec: EvaluationSpec, *, out_dir: str, counters: dict[str, int],
                         read: int, manifest_path: str | None) -> tuple[dict, str, dict]:
    """The report, its Markdown and info.json from the finished shards; COMPLETED when every
    record read is accounted for."""
    manifest = spec.manifest
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
