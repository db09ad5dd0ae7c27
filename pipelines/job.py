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

import apache_beam as beam
from apache_beam.utils import shared

from steplabel.annotators.sandbox import close_shared_pool
from steplabel.dataset import storage
from steplabel.dataset.directory import (
    FIGURES_FILE,
    ROWS_IN_FILE,
    JobDirectory,
    JobKind,
    delete_tree,
)
from steplabel.dataset.stats import top_reject_reasons
from steplabel.engines.base import EngineDiedError
from steplabel.pipelines.finalize import finalize_dataset
from steplabel.pipelines.frame import run_framed
from steplabel.pipelines.graph import build_staged_pipeline
from steplabel.pipelines.launch import (  # JobError and the checks: job's names too
    JobError,
    LaunchPlan,
    check_model_paths,
    check_out_path,
    graph_plan,
    local_absolute,
    plan_launch,
)
from steplabel.pipelines.checkpoints import stage_checkpoint_counts
from steplabel.pipelines.engine_pool import _acquire_pool
from steplabel.pipelines.waves import AssembleShards, SplitInput, Wave, split_dir, wave_dir

log = logging.getLogger(__name__)


#: A ``run``'s dataset directory: ``_work/run.json`` holds the manifest's name, hash and the
#: input files' hashes (``LaunchPlan.inputs``).
DATASET = JobKind(product="dataset", owner="manifest",
                  stranger="a steplabel run of this manifest", hash_field="manifest_hash",
                  error=JobError)


@dataclass(frozen=True)
class JobResult:
    out_dir: str
    info: dict
    stats: dict
    seconds: float


def build_pipeline(pipeline: beam.Pipeline, manifest, *, out_dir: str, items=None):
    """Apply the whole job of ``manifest`` to ``pipeline``, writing into ``out_dir``, without
    the launcher's checks (tests and benchmarks; ``items``: raw items instead of the source).
    ``run_job`` builds its graph from its launch plan instead."""
    return build_staged_pipeline(pipeline, graph_plan(manifest), out_dir=out_dir, items=items)


def prepare_out_dir(out_dir: str, plan: LaunchPlan, *, overwrite: bool) -> None:
    """Claim ``out_dir`` for the run of ``plan`` (:meth:`JobDirectory.claim`): refuse a
    finished dataset (unless ``overwrite``), a directory of another manifest or of other input
    data, and any other non-empty directory; clear an earlier attempt's input count and
    figures."""
    manifest = plan.manifest
    record = {"name": manifest.name, "manifest_hash": manifest.hash,
              "manifest": manifest.to_dict(), "inputs": plan.inputs}
    JobDirectory(out_dir).claim(DATASET, record, overwrite=overwrite,
                                scratch=(ROWS_IN_FILE, FIGURES_FILE))


def run_job(manifest, *, out_dir: str, overwrite: bool = False,
            beam_args: list[str] | None = None) -> JobResult:
    """Run the job to completion and finalize the dataset directory: the manifest becomes one
    launch plan (:func:`~steplabel.pipelines.launch.plan_launch`, which refuses a job that
    cannot start), and the plan is handed to the job frame of :mod:`steplabel.pipelines.frame`
    (shared with ``evaluate``): claim, the pipelines, finalize."""
    plan = plan_launch(manifest, out_dir=out_dir, beam_args=beam_args)
    target = local_absolute(out_dir)

    def whole(pipeline: beam.Pipeline) -> None:
        build_staged_pipeline(pipeline, plan, out_dir=target)

    steps, keep = whole, None
    if plan.waves > 1:  # the local runner, an input of more than runner.wave_size problems
        pool = shared.Shared()
        if plan.manifest.runner.direct_running_mode != "multi_processing":
            keep = _acquire_pool(pool)  # the workers run here: engines stay loaded between waves
        steps = wave_steps(plan, target, pool)
        log.info("labelling %s problems in %d waves of about %d", plan.total, plan.waves,
                 plan.manifest.runner.wave_size)
    try:
        framed = run_framed(
            runner=plan.manifest.runner.runner, options=plan.options,
            prepare=lambda: prepare_out_dir(out_dir, plan, overwrite=overwrite),
            build=steps,
            finalize=lambda counters: finalize_run(out_dir, plan, counters),
            on_failure=lambda exc: explain_failure(exc, out_dir))
    finally:
        del keep
        close_shared_pool()  # the sandbox workers of python_tests graders that ran here
    info, stats = framed.result
    return JobResult(out_dir, info, stats, framed.seconds)


def wave_steps(plan: LaunchPlan, out_dir: str, pool: shared.Shared) -> list:
    """The local runner's pipelines for ``plan.waves`` waves into ``out_dir``: split the input
    into the waves' records (after clearing an earlier attempt's split), label each wave (after
    clearing what an earlier attempt of it wrote; its stage checkpoints stay: finished keys are
    replayed), then assemble the shards. ``pool``: the engine pool every wave shares."""
    count = plan.waves

    def split(pipeline: beam.Pipeline) -> None:
        delete_tree(split_dir(out_dir, count))
        pipeline | "SplitInput" >> SplitInput(plan, out_dir=out_dir)

    def label(wave: Wave):
        def build(pipeline: beam.Pipeline) -> None:
            delete_tree(wave_dir(out_dir, wave))
            build_staged_pipeline(pipeline, plan, out_dir=out_dir, wave=wave, pool=pool,
                                  last_wave=wave.index == wave.count - 1)
        return build

    def assemble(pipeline: beam.Pipeline) -> None:
        pipeline | "Assemble" >> AssembleShards(out_dir, count=count,
                                                num_shards=plan.num_shards)

    return [split, *(label(Wave(index, count)) for index in range(count)), assemble]


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


def finalize_run(out_dir: str, plan: LaunchPlan, counters: dict[str, int]) -> tuple[dict, dict]:
    """The input count and the figures the pipeline wrote, then the dataset's small files
    and ``COMPLETED`` (:func:`~steplabel.pipelines.finalize.finalize_dataset`)."""
    directory = JobDirectory(out_dir)
    rows_in = storage.read_json_if_exists(directory.work(ROWS_IN_FILE))
    if rows_in is None:
        raise JobError(f"the pipeline finished without writing its input count "
                       f"({storage.WORK_DIR}/{ROWS_IN_FILE}); the dataset is not finalized")
    # The statistics and reconciliation counts the pipeline folded (a CombineFn).
    figures = storage.read_json_if_exists(directory.work(FIGURES_FILE))
    return finalize_dataset(out_dir, plan, problems_in=rows_in["rows_in"],
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
