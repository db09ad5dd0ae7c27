"""Finishing a dataset directory: info, statistics, the run's metrics, the lock, and COMPLETED
(written last).

The dataset's identity is its output shards (``info.json``'s ``content_hash``,
:func:`steplabel.dataset.identity.content_hash`). What the run measured that depends on
scheduling (prefix-cache hits, engine busy time, resumed work) goes to ``run_metrics.json`` and
``stats.json``'s ``run`` section (:func:`run_metrics`), which are not part of that identity.
The lock was gathered when the job was launched (:mod:`steplabel.pipelines.lock`); it is
written here, beside the files it pins.
"""

from __future__ import annotations

from steplabel.dataset import storage
from steplabel.dataset.card import write_dataset_card
from steplabel.dataset.directory import JobDirectory
from steplabel.dataset.identity import CONTENT_HASH, RUN_METRICS, content_hash
from steplabel.dataset.stats import (
    accounted_problems,
    compute_stats,
    gold_warnings,
    keep_rate_warnings,
    sandbox_outcomes,
    sandbox_warnings,
    truncation_warnings,
)
from steplabel.schemas.records import OUTPUT_DIRS, OUTPUTS, SCHEMA_VERSION


#: Counters that measure the run rather than the data: engine work and time, and what was
#: resumed from checkpoints instead of computed.
RUN_COUNTER_PREFIXES = ("engine_", "stage_", "problems_resumed", "problems_labelled",
                        "sandbox_wall_ms")


def run_metrics(counters: dict[str, int]) -> dict:
    """The run's own record (``run_metrics.json``, ``stats.json``'s ``run``): per engine role
    (``policy``, ``completer``, ``judge``) the prompt tokens this run served and how many came
    from the prefix cache, with their share (null without prompt tokens); and the counters of
    engine work, busy time and resumed stages. Work replayed from checkpoints is not counted.
    """
    roles = sorted(name[len("engine_prompt_tokens_"):] for name in counters
                   if name.startswith("engine_prompt_tokens_"))
    cache = {}
    for role in [*roles, "all"]:
        if role == "all":
            prompt = sum(cache[r]["prompt_tokens"] for r in roles)
            cached = sum(cache[r]["cached_tokens"] for r in roles)
        else:
            prompt = counters.get(f"engine_prompt_tokens_{role}", 0)
            cached = counters.get(f"engine_cached_tokens_{role}", 0)
        cache[role] = {"prompt_tokens": prompt, "cached_tokens": cached,
                       "cached_share": round(cached / prompt, 6) if prompt else None}
    return {
        "prefix_cache": cache,
        "engine_busy_s": counters.get("engine_busy_ms", 0) / 1000,
        "engine_start_s": counters.get("engine_start_ms", 0) / 1000,
        "counters": {name: value for name, value in sorted(counters.items())
                     if name.startswith(RUN_COUNTER_PREFIXES)},
    }


def finalize_dataset(out_dir: str, plan, *, problems_in: int | None,
                     counters: dict[str, int], figures: dict | None = None) -> tuple[dict, dict]:
    """Write stats.json, the lock, info.json and (reconciled) COMPLETED into ``out_dir``, the
    dataset of ``plan`` (:class:`~steplabel.pipelines.launch.LaunchPlan`, which holds the
    lock). ``figures``: the statistics, row counts and reconciliation counts the pipeline folded
    (``pipelines/figures.py``); without them they are read from the shards."""
    manifest = plan.manifest
    # The pipeline has finished, so no writer of this job is left: temporary files are what
    # killed or failed writes left behind (readers ignore them; a finished dataset has none).
    directory = JobDirectory(out_dir)
    leftovers = directory.remove_leftovers(OUTPUT_DIRS.values(), manifest.runner.num_shards)
    if figures is not None:
        rows = {name: figures["rows"].get(name, 0) for name in OUTPUTS}
        stats = dict(figures["stats"])
        labelled = figures["problems_labelled_or_dead_lettered"]
        input_rows = figures["dead_letter_input_rows"]
    else:
        rows = {name: storage.count_rows(out_dir, name) for name in OUTPUTS}
        stats = compute_stats(out_dir)
        seen = accounted_problems(out_dir)
        labelled = len(set().union(seen["trajectories"], seen["rejected"], seen["filtered"],
                                   seen["omegaprm_states"], seen["dead_letter_label"]))
        input_rows = seen["dead_letter_input_rows"]
    accounted = labelled + input_rows
    stats["reconciliation"] = {
        "problems_in": problems_in,
        "dead_letter_input_rows": input_rows,
        "problems_labelled_or_dead_lettered": labelled,
        "accounted": accounted,
        "ok": problems_in is None or accounted == problems_in,
    }
    stats["counters"] = dict(sorted(counters.items()))
    stats["warnings"] = (truncation_warnings(stats, manifest)
                         + keep_rate_warnings(stats, manifest) + gold_warnings(counters)
                         + sandbox_warnings(counters))
    if manifest.grader.name == "python_tests":
        stats["sandbox"] = sandbox_outcomes(counters)
    stats["temp_files_removed"] = len(leftovers)
    run = run_metrics(counters)
    stats["run"] = run
    info = {
        "schema_version": SCHEMA_VERSION,
        "name": manifest.name,
        "manifest_hash": manifest.hash,
        # The dataset's identity: its output shards (dataset/identity.py says how it is made).
        CONTENT_HASH: content_hash(out_dir),
        "rows": rows,
        "outputs": {name: OUTPUT_DIRS[name] for name in OUTPUTS},
        "num_shards": manifest.runner.num_shards,
    }
    storage.write_json_atomic(storage.join(out_dir, RUN_METRICS), run)
    storage.write_json_atomic(storage.join(out_dir, "stats.json"), stats)
    storage.write_json_atomic(storage.join(out_dir, "manifest.lock.json"), plan.lock)
    storage.write_json_atomic(storage.join(out_dir, "info.json"), info)
    write_dataset_card(out_dir, info=info, stats=stats, lock=plan.lock)  # README.md, for `datasets`
    if stats["reconciliation"]["ok"]:
        directory.mark_completed()
    return info, stats
