"""``steplabel evaluate``: annotators as first-error predictors against human labels.

::

    steplabel evaluate --gold FILE [--gold FILE ...] [--answers FILE] --manifest MANIFEST \\
        --annotators mc,omegaprm,judge,consensus [--out DIR] [--json]

Reads human-labelled solutions (ProcessBench records, per-step ratings, or the PRM800K release
files as they are; see :mod:`steplabel.annotators.evaluation.gold`), joins gold answers, runs
every chosen annotator on the given steps with the manifest's models, and reports
ProcessBench's ``error_acc``, ``correct_acc`` and F1 per gold file and averaged (every
annotator on the same items: an item it could not score is a wrong prediction; its coverage is
reported), step-level precision and recall of negatives for per-step ratings, and the cost of
each annotator.

It is a Beam job like ``run``, in the same job frame
(:func:`~steplabel.pipelines.frame.run_framed`) and on the same stage machinery
(:class:`~steplabel.pipelines.stages.EngineStageFn`). The launcher only hashes the gold and
answers files (the hashes pin their content; :mod:`steplabel.pipelines.evaluate_spec`); the
workers read them, through Beam ``FileSystems`` (local or remote paths;
:mod:`steplabel.pipelines.gold_files`), so the job graph
(:mod:`steplabel.pipelines.evaluate_graph`) holds paths, not records. Then the launcher writes
the report, from the shards and ``_work/gold_read.json``.

Each engine stage keeps many items in flight on the worker's shared engine pool, checkpoints
every finished item under ``_work/<stage>/`` (a rerun replays it) and, when an engine dies,
drops it (the retried bundle starts a new one) and fails the bundle. Bad records and items
whose requests fail go to ``dead_letter/``.

From the manifest, evaluate uses ``seed``, ``models`` (``completer``, default the policy, for
Monte Carlo and OmegaPRM rollouts; ``judge``), ``policy.template`` (the prompt the completer
continues under), ``monte_carlo``, ``omegaprm`` (``rollouts``, ``sampling``), ``judge`` and
``runner``, and ``grader``: with ``python_tests`` an item's gold is its ``tests`` field (HumanEval's
``check`` called with ``entry_point``), and Monte Carlo and OmegaPRM run each completed
solution's program against it in the sandbox (the job's defaults apply: ``policy_code_v1``, the
judge's ``judge_code_review_v1``). Its ``source`` is not used (the gold files are the input) and
may be left out; the steps are joined with the separator of their format, not the manifest's
``splitter`` (a blank line, as ``python_statements`` joins code steps).

Output directory::

    predictions/part-*.parquet   one row per item and annotator (schemas.evaluation.Prediction)
    dead_letter/part-*.parquet   unreadable records and failed items, with the reason
    report.json  report.md       the figures (also printed), info.json, COMPLETED (last)
    _work/run.json, _work/evaluate_rollouts/, _work/evaluate_judge/   resume state
    _work/gold_read.json         gold records read (items and rejects), for the report
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from steplabel.annotators.evaluation.gold import GoldFileError
from steplabel.annotators.evaluation.items import ANSWER_FORMATS
from steplabel.annotators.evaluation.predict import ANNOTATORS, DEFAULT_ANNOTATORS
from steplabel.annotators.evaluation.report import build_report, render_report_markdown
from steplabel.dataset import storage
from steplabel.dataset.directory import JobDirectory, JobKind
from steplabel.dataset.stats import gold_warnings
from steplabel.pipelines.evaluate_graph import build_evaluation_pipeline
from steplabel.pipelines.evaluate_spec import (
    DEAD_LETTER,
    EVALUATION_VERSION,
    GOLD_READ_FILE,
    OUTPUTS,
    PREDICTIONS,
    EvaluationSpec,
    load_evaluation_manifest,
    make_spec,
)
from steplabel.pipelines.frame import run_framed
from steplabel.pipelines.job import engine_died_message
from steplabel.pipelines.launch import JobError, check_model_paths, check_out_path
from steplabel.pipelines.logs import use_dataset_dir
from steplabel.pipelines.runners import pipeline_options
from steplabel.schemas.config import ConfigError

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


class EvaluationError(RuntimeError):
    """The evaluation cannot start or did not finish; the message says why."""


#: An evaluation's directory: ``_work/run.json`` holds its name and hash (settings and input
#: files' hashes, :attr:`EvaluationSpec.hash`).
EVALUATION = JobKind(product="evaluation", owner="evaluation",
                     stranger="a steplabel evaluation", hash_field="evaluation_hash",
                     error=EvaluationError, differs=": settings or input files differ")


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


def prepare_evaluation_dir(out_dir: str, spec: EvaluationSpec, *, overwrite: bool) -> None:
    """Claim ``out_dir`` for this evaluation (:meth:`JobDirectory.claim`): refuse a COMPLETED
    evaluation (unless ``overwrite``), a directory holding another evaluation's work (another
    hash: other settings or changed gold/answers files, so resuming would mix results) and any
    other non-empty directory; clear an earlier attempt's gold count."""
    record = {"name": spec.name, "evaluation_hash": spec.hash, "spec": spec.to_dict()}
    JobDirectory(out_dir).claim(EVALUATION, record, overwrite=overwrite,
                                scratch=(GOLD_READ_FILE,))


def run_evaluation(spec: EvaluationSpec, *, out_dir: str, overwrite: bool = False,
                   manifest_path: str | None = None) -> EvaluationResult:
    """Run the evaluate job to completion, then write the report and mark the directory."""
    try:  # before anything starts: a file as --out, a model folder that is not there
        check_out_path(out_dir)
        check_model_paths(spec.manifest)
    except JobError as exc:
        raise EvaluationError(str(exc)) from None
    runner = spec.manifest.runner
    framed = run_framed(
        runner=runner.runner, options=pipeline_options(runner),
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
    directory = JobDirectory(out_dir)
    directory.remove_leftovers(OUTPUTS, manifest.runner.num_shards)
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
    report["warnings"] = gold_warnings(counters)  # python_tests: weak tests
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
        directory.mark_completed()
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
    parser.add_argument("--annotators", default=",".join(DEFAULT_ANNOTATORS),
                        help="comma-separated subset of " + ",".join(ANNOTATORS)
                        + " (default: all; consensus adds mc and judge)")
    parser.add_argument("--out", help="output directory (default: out/evaluate-<manifest name>)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--answer-field", default="answer",
                        help="field holding the gold answer in gold and answers files "
                        "(a python_tests manifest: the tests, field 'tests' by default)")
    parser.add_argument("--answer-format", default="plain", choices=list(ANSWER_FORMATS),
                        help="format of the gold answers (python_tests: implied by a "
                        "python_tests manifest)")
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
