"""``steplabel run``: the Beam pipeline from a manifest to a finished dataset directory.

read → validate → label (the staged graph of :mod:`steplabel.pipelines.graph`: sample, split,
grade, Monte Carlo / OmegaPRM, judge, consensus, each model stage with many keys in flight) →
write Parquet shards → finalize (info, stats, lock, COMPLETED last). Resumable: every model
stage checkpoints its finished keys under ``_work/<stage>/``.

The launcher stays light: workers read the input (Beam IO) and count the records read
(``_work/rows_in.json``, a ``Count`` combiner's result), and reconciliation uses that count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.utils import shared

from steplabel.annotators.stages import StageContext
from steplabel.annotators.sandbox import close_shared_pool
from steplabel.dataset import storage
from steplabel.dataset.stats import top_reject_reasons
from steplabel.dataset.directory import (
    FIGURES_FILE,
    ROWS_IN_FILE,
    JobDirectory,
    JobKind,
    delete_tree,
)
from steplabel.engines.base import EngineDiedError
from steplabel.engines.parallel import visible_gpu_count
from steplabel.pipelines.finalize import finalize_dataset, input_hashes
from steplabel.pipelines.frame import pipeline_options, run_framed
from steplabel.pipelines.graph import build_staged_pipeline
from steplabel.pipelines.runners import stage_accelerators
from steplabel.pipelines.sources import check_source, estimate_rows
from steplabel.pipelines.stages import _acquire_pool, stage_checkpoint_counts
from steplabel.pipelines.waves import (
    AssembleShards,
    SplitInput,
    Wave,
    split_dir,
    wave_count,
    wave_dir,
)
from steplabel.schemas.config import ConfigError, looks_like_local_path

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot start or did not finish; the message says why and what to do."""


#: A ``run``'s dataset directory: ``_work/run.json`` holds the manifest's name, hash and the
#: input files' hashes (:func:`~steplabel.pipelines.finalize.input_hashes`).
DATASET = JobKind(product="dataset", owner="manifest",
                  stranger="a steplabel run of this manifest", hash_field="manifest_hash",
                  error=JobError)


@dataclass(frozen=True)
class JobResult:
    out_dir: str
    info: dict
    stats: dict
    seconds: float


def build_pipeline(pipeline: beam.Pipeline, manifest, *, out_dir: str, items=None,
                   total: int | None = None, source_path: str | None = None, wave=None,
                   pool=None, last_wave: bool = True):
    """Apply the whole job to ``pipeline``: the staged graph (:mod:`steplabel.pipelines.graph`,
    one Beam stage per model stage). ``source_path`` replaces the manifest's source path (the
    launcher passes local paths made absolute); ``wave``, ``pool``, ``last_wave``: one wave of
    the local runner (:mod:`steplabel.pipelines.waves`)."""
    return build_staged_pipeline(pipeline, manifest, out_dir=out_dir, items=items, total=total,
                                 source_path=source_path, wave=wave, pool=pool,
                                 last_wave=last_wave)


def check_runner_paths(manifest, out_dir: str) -> None:
    """Workers of Dataflow and Flink run on other machines: they can neither read local input
    nor write a local dataset (a portable job service on this machine may do both)."""
    runner = manifest.runner.runner
    if runner not in ("dataflow", "flink"):
        return
    if "://" not in out_dir:
        raise JobError(f"--out {out_dir} is local, but {runner} workers run on other machines: "
                       "use a remote dataset directory (gs://BUCKET/..., s3://..., hdfs://...)")
    path = manifest.source.path
    if path and "://" not in path:
        raise JobError(f"source.path {path} is local, but {runner} workers read the input: "
                       "copy it to remote storage and point source.path there")


def check_out_path(out_dir: str) -> None:
    """A local ``--out`` must be a directory or not exist yet (nor any file on its way)."""
    if "://" in out_dir:
        return
    path = Path(out_dir).expanduser()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == path else f"is inside {folder}, a file"
                raise JobError(f"--out {out_dir} {where}, not a directory: choose a directory "
                               "(it is created if it does not exist)")
            return


def check_model_paths(manifest) -> None:
    """A vLLM model given as a local path that does not exist is refused before the pipeline
    starts (workers of the local and portable runners share this machine's files)."""
    if manifest.runner.runner not in ("local", "portable"):
        return
    models = manifest.models
    for role in ("policy", "completer", "judge"):
        config = getattr(models, role, None)
        if config is None or config.kind != "vllm" or config.model == "embedded":
            continue
        path = Path(config.model).expanduser()
        if looks_like_local_path(config.model) and not path.is_dir():
            state = "is not a folder" if path.exists() else "does not exist"
            raise JobError(f"models.{role}.model {config.model} {state}: give the folder of a "
                           "model (config.json and weights), a hub id (owner/name) or embedded")


def prepare_out_dir(out_dir: str, manifest, *, overwrite: bool) -> None:
    """Claim ``out_dir`` for this run (:meth:`JobDirectory.claim`): refuse a finished dataset
    (unless ``overwrite``), a directory of another manifest or of other input data, and any
    other non-empty directory; clear an earlier attempt's input count and figures."""
    record = {"name": manifest.name, "manifest_hash": manifest.hash,
              "manifest": manifest.to_dict(), "inputs": input_hashes(manifest.source)}
    JobDirectory(out_dir).claim(DATASET, record, overwrite=overwrite,
                                scratch=(ROWS_IN_FILE, FIGURES_FILE))


def accelerator_count() -> int:
    """GPUs on this machine (``CUDA_VISIBLE_DEVICES`` applies); 0 on a machine without any."""
    return visible_gpu_count()


def worker_processes(manifest, options: PipelineOptions) -> int:
    """SDK worker processes on this machine that each host their own engines: the local
    runner's in multi_processing mode, the portable runner's (its job service runs here)."""
    runner = manifest.runner
    if runner.runner == "local" and runner.direct_running_mode == "multi_processing":
        return runner.direct_num_workers
    if runner.runner == "portable":
        return options.view_as(DirectOptions).direct_num_workers or 1
    return 1


def check_engine_copies(manifest, options: PipelineOptions | None = None) -> None:
    """Before the job starts: the vLLM models of one worker process fit its GPUs' memory
    (``share_gpu_memory``, per worker pool of the runner's ``stage_accelerators``), and no
    more than one worker process on this machine hosts vLLM engines.

    One worker process takes every GPU of its machine: each vLLM engine runs one replica per
    ``tensor_parallel_size`` GPUs (``data_parallel_size: auto``). Beam's worker processes are not
    pinned to devices, so a second one would load its engines on the same GPUs (or, without
    GPUs, on the same cores)."""
    options = options or pipeline_options(manifest)
    try:
        roles = StageContext(manifest).roles(pools=stage_accelerators(manifest.runner))
    except ConfigError as exc:
        raise JobError(str(exc)) from None
    uses_vllm = any(config.kind == "vllm" for config in roles.values())
    workers = worker_processes(manifest, options)
    if uses_vllm and workers > 1:
        gpus = accelerator_count()
        setting = ("runner.direct_num_workers is {n} in multi_processing mode"
                   if manifest.runner.runner == "local" else
                   "the portable runner has {n} SDK workers (direct_num_workers)")
        raise JobError(
            setting.format(n=workers) + ", but every worker process would load its own vLLM "
            f"engines on the same devices (this machine has {gpus or 'no'} GPU(s); worker "
            "processes are not pinned to GPUs). Use one worker: its engines use every GPU "
            "(models.*.data_parallel_size: auto, one engine replica per GPU) with many problems "
            "in flight; or the local runner's in_memory or multi_threading mode.")


def local_absolute(path: str) -> str:
    """Workers of the portable runner run in other folders: local paths they get are absolute."""
    return path if "://" in path else str(Path(path).resolve())


def run_job(manifest, *, out_dir: str, overwrite: bool = False,
            beam_args: list[str] | None = None) -> JobResult:
    """Run the job to completion and finalize the dataset directory (the job frame of
    :mod:`steplabel.pipelines.frame`, shared with ``evaluate``)."""
    check_out_path(out_dir)
    check_model_paths(manifest)
    options = pipeline_options(manifest, beam_args)
    check_engine_copies(manifest, options)
    check_runner_paths(manifest, out_dir)
    source_path = local_absolute(manifest.source.path) if manifest.source.path else None
    check_source(manifest.source, source_path)

    total = estimate_rows(manifest.source, source_path)
    count = wave_count(manifest.runner, total)
    target = local_absolute(out_dir)

    def build(pipeline: beam.Pipeline) -> None:
        build_pipeline(pipeline, manifest, out_dir=target, source_path=source_path, total=total)

    steps = build
    pool = keep = None
    if count > 1:  # the local runner, an input of more than runner.wave_size problems
        pool = shared.Shared()
        if manifest.runner.direct_running_mode != "multi_processing":
            keep = _acquire_pool(pool)  # the workers run here: engines stay loaded between waves
        # Beam's construction-time type inference is half of building a wave's graph, and the
        # graph is built once per wave; the rows' schemas are checked where they are written.
        options = pipeline_options(manifest, [*(beam_args or []), "--no_pipeline_type_check"])
        steps = [split_step(manifest, target, count, source_path=source_path)]
        steps += [wave_step(manifest, target, Wave(index, count), source_path=source_path,
                            total=total, pool=pool) for index in range(count)]
        steps.append(lambda pipeline: pipeline | "Assemble" >> AssembleShards(
            target, count=count, num_shards=manifest.runner.num_shards))
        log.info("labelling %s problems in %d waves of about %d", total, count,
                 manifest.runner.wave_size)
    try:
        framed = run_framed(
            manifest, options=options,
            prepare=lambda: prepare_out_dir(out_dir, manifest, overwrite=overwrite),
            build=steps,
            finalize=lambda counters: finalize_run(out_dir, manifest, counters),
            on_failure=lambda exc: explain_failure(exc, out_dir))
    finally:
        del keep
        close_shared_pool()  # the sandbox workers of python_tests graders that ran here
    info, stats = framed.result
    return JobResult(out_dir, info, stats, framed.seconds)


def split_step(manifest, out_dir: str, count: int, *, source_path: str | None):
    """Build the pipeline that splits the input into the waves' records (after clearing an
    earlier attempt's split)."""

    def build(pipeline: beam.Pipeline) -> None:
        delete_tree(split_dir(out_dir, count))
        pipeline | "SplitInput" >> SplitInput(manifest, out_dir=out_dir, count=count,
                                              source_path=source_path)

    return build


def wave_step(manifest, out_dir: str, wave, *, source_path: str | None, total: int | None,
              pool):
    """Build wave ``wave``'s pipeline, after clearing what an earlier attempt of it wrote (its
    stage checkpoints stay: finished keys are replayed)."""

    def build(pipeline: beam.Pipeline) -> None:
        delete_tree(wave_dir(out_dir, wave))
        build_pipeline(pipeline, manifest, out_dir=out_dir, source_path=source_path,
                       total=total, wave=wave, pool=pool, last_wave=wave.index == wave.count - 1)

    return build


def engine_died_message(exc: BaseException, out_dir: str, *, job: str, keys: str) -> str | None:
    """What to tell the user when a dead engine stopped ``job`` (``"job"``, ``"evaluation"``):
    the finished ``keys`` per stage and how to resume; None for any other failure."""
    if not engine_died(exc):
        return None
    finished = ", ".join(f"{stage} {count}" for stage, count
                         in stage_checkpoint_counts(out_dir).items() if count) or "none"
    return (f"the {job} stopped because an engine died: {_first_line(exc)}. Finished {keys} "
            f"per stage ({finished}) are checkpointed in "
            f"{storage.join(out_dir, storage.WORK_DIR)}; rerun the same command to resume "
            "(they are replayed, not recomputed).")


def explain_failure(exc: BaseException, out_dir: str) -> None:
    """A dead engine stops the job: say what is saved and how to resume (other failures are
    re-raised as they are)."""
    message = engine_died_message(exc, out_dir, job="job", keys="keys")
    if message is not None:
        raise JobError(message) from exc


def finalize_run(out_dir: str, manifest, counters: dict[str, int]) -> tuple[dict, dict]:
    """The input count and the figures the pipeline wrote, then the dataset's small files
    and ``COMPLETED`` (:func:`~steplabel.pipelines.finalize.finalize_dataset`)."""
    directory = JobDirectory(out_dir)
    rows_in = storage.read_json_if_exists(directory.work(ROWS_IN_FILE))
    if rows_in is None:
        raise JobError(f"the pipeline finished without writing its input count "
                       f"({storage.WORK_DIR}/{ROWS_IN_FILE}); the dataset is not finalized")
    # The statistics and reconciliation counts the pipeline folded (a CombineFn).
    figures = storage.read_json_if_exists(directory.work(FIGURES_FILE))
    return finalize_dataset(out_dir, manifest, problems_in=rows_in["rows_in"],
                            counters=counters, figures=figures)


def engine_died(exc: BaseException) -> bool:
    """Whether a pipeline failure is an engine's death (:class:`EngineDiedError`), found in the
    exception chain or, for runners that pass worker errors on as text, in the message."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EngineDiedError) or "EngineDiedError" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def describe(result: JobResult) -> str:
    """The end of a run on the terminal: rows written, the keep rate and the main reject
    reasons, and the reconciliation of problems in and out."""
    info = result.info
    rows = ", ".join(f"{k} {v}" for k, v in info["rows"].items() if v)
    lines = [f"[steplabel] finished in {result.seconds:.0f}s: {rows}"]
    consensus = (result.stats.get("overall") or {}).get("consensus") or {}
    if consensus.get("keep_rate") is not None:
        rejected = sum((consensus.get("reject_reasons") or {}).values())
        top = ", ".join(f"{reason} {count}" for reason, count in top_reject_reasons(consensus))
        lines.append(f"[steplabel] kept {consensus['kept']} of {consensus['evaluated']} "
                     f"trajectories through consensus ({consensus['keep_rate']:.1%}); rejected "
                     f"{rejected}" + (f", top reasons: {top}" if top else ""))
    reconciliation = result.stats.get("reconciliation") or {}
    if reconciliation:
        problems_in = reconciliation.get("problems_in")
        lines.append(f"[steplabel] problems: {'?' if problems_in is None else problems_in} in, "
                     f"{reconciliation['accounted']} accounted for "
                     f"({reconciliation['dead_letter_input_rows']} input rows dead-lettered)")
    return "\n".join(lines)
