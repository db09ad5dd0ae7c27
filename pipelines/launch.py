"""What ``steplabel run`` derives from its manifest, once, before any pipeline is built: the
:class:`LaunchPlan`.

:func:`plan_launch` reads the manifest in one pass, in this order (the first problem found is
the error the user sees): the runner's Beam options; the stage context (splitter, prompt
template, grader), the runner profile's accelerators and the engine roles with their share of
GPU memory; whether this machine can host the engines; whether the runner's workers can reach
the input and the dataset; the source (its files exist, its size where that is cheap, hence
the number of waves) and the input files' hashes. The lock (:mod:`steplabel.pipelines.lock`)
is gathered from the plan in one pass when the finalize step first asks for it.

The launcher (:mod:`steplabel.pipelines.job`) then hands the plan, not the manifest, to the
graph (:mod:`steplabel.pipelines.graph`), the waves (:mod:`steplabel.pipelines.waves`) and the
finalize step (:mod:`steplabel.pipelines.finalize`); the stages read their own sections of the
manifest the plan carries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from steplabel.annotators.graders import Grader
from steplabel.annotators.stages import StageContext
from steplabel.engines.parallel import visible_gpu_count
from steplabel.pipelines.lock import build_lock
from steplabel.pipelines.runners import runner_settings, stage_accelerators
from steplabel.pipelines.sources import open_source
from steplabel.pipelines.waves import wave_count
from steplabel.schemas.config import ConfigError, looks_like_local_path


class JobError(RuntimeError):
    """The job cannot start or did not finish; the message says why and what to do."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the launcher derived from a manifest, computed once (the dataset directory
    is not part of it: it travels beside the plan).

    ``context``: the stage context (the splitter, the policy template and the grader every
    stage uses); ``accelerators``: role -> the runner profile's accelerator
    (:func:`~steplabel.pipelines.runners.stage_accelerators`); ``source_path``: the source's
    local path made absolute (None: the manifest's, or a hub dataset); ``total``: input records
    when cheap to count on the launcher (None: unknown); ``waves``: pipelines the local runner
    labels the input in (1: one pipeline); ``options``: the Beam options of every pipeline of
    the job; ``inputs``: the input files' hashes (``run.json``, the lock)."""

    context: StageContext
    accelerators: dict[str, str]
    source_path: str | None = None
    total: int | None = None
    waves: int = 1
    options: PipelineOptions | None = None
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def manifest(self):
        return self.context.manifest

    @property
    def grader(self) -> Grader:
        """The job's grader: input validation reads each record's gold with it."""
        return self.context.grader

    @property
    def num_shards(self) -> int:
        return self.manifest.runner.num_shards

    @functools.cached_property
    def lock(self) -> dict:
        """``manifest.lock.json`` (:func:`~steplabel.pipelines.lock.build_lock`), gathered in
        one pass when first asked for: by the finalize step, after the pipelines ran (hashing a
        local model's files is no work to do before a job that may yet be refused)."""
        return build_lock(self.context, inputs=self.inputs)


def graph_plan(manifest) -> LaunchPlan:
    """The parts of a plan the graph reads, without the launcher's checks (tests and benchmarks
    that build the staged graph from a manifest)."""
    return LaunchPlan(StageContext(manifest), accelerators=stage_accelerators(manifest.runner))


def plan_launch(manifest, *, out_dir: str, beam_args: list[str] | None = None) -> LaunchPlan:
    """The launch plan of ``manifest`` for a job that writes ``out_dir``; ``beam_args``:
    Beam options from the command line (they win over the profile's and the manifest's).
    Raises :class:`JobError` (or the source's own error) when the job cannot start."""
    check_out_path(out_dir)
    check_model_paths(manifest)
    runner = manifest.runner
    settings = runner_settings(runner)
    args = settings.args + list(beam_args or [])
    options = PipelineOptions(args)
    try:
        context = StageContext(manifest)
        roles = context.roles(pools=settings.accelerators)
    except ConfigError as exc:
        raise JobError(str(exc)) from None
    check_engine_copies(runner, roles, workers=worker_processes(runner, options))
    check_runner_paths(manifest, out_dir)
    source_path = local_absolute(manifest.source.path) if manifest.source.path else None
    source = open_source(manifest.source, source_path)
    source.check()
    total = source.estimate_rows()
    # The input files as the manifest names them (relative paths stay relative in the lock).
    inputs = open_source(manifest.source).fingerprint()
    waves = wave_count(runner, total)
    if waves > 1:
        # Beam's construction-time type inference is half of building a wave's graph, and the
        # graph is built once per wave; the rows' schemas are checked where they are written.
        options = PipelineOptions([*args, "--no_pipeline_type_check"])
    return LaunchPlan(context, accelerators=settings.accelerators, source_path=source_path,
                      total=total, waves=waves, options=options, inputs=inputs)


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
    for role in ("policy", "completer", "judge", "critic"):
        config = getattr(models, role, None)
        if config is None or config.kind != "vllm" or config.model == "embedded":
            continue
        path = Path(config.model).expanduser()
        if looks_like_local_path(config.model) and not path.is_dir():
            state = "is not a folder" if path.exists() else "does not exist"
            raise JobError(f"models.{role}.model {config.model} {state}: give the folder of a "
                           "model (config.json and weights), a hub id (owner/name) or embedded")


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


def accelerator_count() -> int:
    """GPUs on this machine (``CUDA_VISIBLE_DEVICES`` applies); 0 on a machine without any."""
    return visible_gpu_count()


def worker_processes(runner, options: PipelineOptions) -> int:
    """SDK worker processes on this machine that each host their own engines: the local
    runner's in multi_processing mode, the portable runner's (its job service runs here)."""
    if runner.runner == "local" and runner.direct_running_mode == "multi_processing":
        return runner.direct_num_workers
    if runner.runner == "portable":
        return options.view_as(DirectOptions).direct_num_workers or 1
    return 1


def check_engine_copies(runner, roles: dict[str, Any], *, workers: int) -> None:
    """Before the job starts: no more than one worker process on this machine hosts vLLM
    engines (``roles``: the engine config per role, whose vLLM models already fit one worker
    process's GPU memory, per worker pool of the runner's ``stage_accelerators``).

    One worker process takes every GPU of its machine: each vLLM engine runs one replica per
    ``tensor_parallel_size`` GPUs (``data_parallel_size: auto``). Beam's worker processes are not
    pinned to devices, so a second one would load its engines on the same GPUs (or, without
    GPUs, on the same cores)."""
    uses_vllm = any(config.kind == "vllm" for config in roles.values())
    if uses_vllm and workers > 1:
        gpus = accelerator_count()
        setting = ("runner.direct_num_workers is {n} in multi_processing mode"
                   if runner.runner == "local" else
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
