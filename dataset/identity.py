"""What makes two datasets the same: their content hash, and what may differ between runs.

A dataset is a pure function of its manifest: the same manifest gives byte-identical output
shards on every run, every ``max_in_flight``, wave size and runner, given seeded requests on
deterministic engines (float32). Measurements that depend on scheduling (prefix-cache hits,
busy times, which worker served what) are the run's, in ``run_metrics.json`` and
``stats.json``'s ``run`` section, never in a row.

- :func:`content_hash`: the dataset's identity, one string. SHA-256 over the lines
  ``"<relative path>\\t<sha256 of the file>\\n"`` of every output shard (``*part-*.parquet``
  under each output's folder, :data:`~steplabel.schemas.records.OUTPUT_DIRS`), sorted by
  relative path (``/``-separated). Only the shards count: ``info.json``, ``stats.json``,
  ``run_metrics.json``, the lock, the card, ``logs/`` and ``_work/`` do not.
- :func:`engine_determinism`: per engine role, whether its texts are reproducible, and why not.
- :data:`MOVED_COLUMNS`: columns older schema versions had in rows that are run metrics now.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath

from apache_beam.io.filesystems import FileSystems

from steplabel.dataset import storage
from steplabel.schemas.records import OUTPUT_DIRS, OUTPUTS

#: The name of the hash in ``info.json`` (``sha256:`` + 64 hex digits).
CONTENT_HASH = "content_hash"
#: The run's own record at the dataset root: not part of the dataset's identity.
RUN_METRICS = "run_metrics.json"

#: Struct fields that rows of older schema versions held and that are run metrics now, with
#: why: ``regenerate --verify`` ignores them, and says so.
MOVED_COLUMNS = {
    "cached_tokens": "prefix-cache hits depend on the order the engine saw requests in; since "
                     "schema 1.2 they are run metrics (run_metrics.json), not row values",
}

#: Columns later schema versions added to rows, with why: ``regenerate --verify`` ignores them
#: where the reference dataset (written before them) does not have them, and says so.
ADDED_COLUMNS = {
    **{name: "added in schema 1.3 (the posterior of each step's Monte Carlo estimate) to "
             "trajectories, and in 1.4 to OmegaPRM states: a dataset written before has no "
             "such column"
       for name in ("mc_posterior_mean", "mc_interval_low", "mc_interval_high", "mc_p_above",
                    "mc_rollouts_spent")},
    "mc_label_reasons": "added in schema 1.3 (the posterior of each step's Monte Carlo "
                        "estimate): a dataset written before has no such column",
    "mc_label_reason": "added in schema 1.4 (the posterior of each OmegaPRM state): a dataset "
                       "written before has no such column",
    "omegaprm_rollout_id": "added in schema 1.4 (critiques of OmegaPRM's searched rollouts, "
                           "critic.trust omegaprm): a dataset written before has no such column",
}


def ignored_reason(column: str) -> str | None:
    """Why verify ignores ``column`` (a moved struct field or an added column), or None."""
    moved = moved_field(column)
    if moved:
        return MOVED_COLUMNS[moved]
    return ADDED_COLUMNS.get(column.split(".", 1)[0])


#: Columns an engine role's texts decide (fnmatch patterns over verify's column names): what
#: may differ when that role's engine is not deterministic. The completer also grows the
#: OmegaPRM trees, so with it every OmegaPRM output may differ.
ROLE_COLUMNS = {
    "policy": ("*",),  # the solutions themselves: every column follows from them
    "completer": ("mc_*", "hard_labels", "soft_labels", "omegaprm_*", "labels", "label_source",
                  "consensus_*", "cost_mc.*"),
    "judge": ("judge_*", "consensus_*", "labels", "label_source", "cost_judge.*"),
}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def shard_files(out_dir: str) -> dict[str, str]:
    """Every output shard of a dataset: relative path (``trajectories/part-00000-of-00002.
    parquet``) -> full path."""
    files = {}
    for output in OUTPUTS:
        for path in storage.output_files(out_dir, output):
            files[posixpath.join(OUTPUT_DIRS[output], posixpath.basename(path))] = path
    return files


def content_hash(out_dir: str) -> str:
    """``sha256:<hex>`` of the dataset's output shards (see the module docstring)."""
    digest = hashlib.sha256()
    files = shard_files(out_dir)
    for relative in sorted(files):
        digest.update(f"{relative}\t{file_sha256(files[relative])}\n".encode("utf-8"))
    return "sha256:" + digest.hexdigest()


def engine_roles(manifest) -> dict:
    """The engine config of every role the manifest uses."""
    roles = {"policy": manifest.models.policy}
    if manifest.monte_carlo is not None or manifest.omegaprm is not None:
        roles["completer"] = manifest.models.completer_model
    if manifest.judge is not None:
        roles["judge"] = manifest.models.judge_model
    return roles


def config_determinism(config) -> tuple[bool | None, str]:
    """Whether one engine gives the same texts for the same seeded request on every run
    (None: cannot tell), and why."""
    if config.kind == "openai":
        return False, (f"served over HTTP by {config.base_url}: the server may ignore request "
                       "seeds and batches requests with others")
    if config.kind == "custom":
        return None, (f"custom engine {config.factory}: reproducible only if it honours request "
                      "seeds (not checked)")
    if config.dtype == "float32":
        return True, "float32 with a seed per request: the same texts on every run"
    if config.dtype == "auto":
        return False, ("dtype auto (the model's own, often bfloat16): results depend on how "
                       "requests are batched")
    return False, f"{config.dtype}: results depend on how requests are batched"


def engine_determinism(manifest) -> dict:
    """For the lock, the card and verify: per role, ``deterministic`` (true, false, null:
    unknown) and ``reason``; ``deterministic`` overall (false if any role is not, null if any
    is unknown); the manifest's ``nondeterministic_columns``; and ``may_differ``: the columns
    that nondeterministic roles decide."""
    roles = {}
    for role, config in engine_roles(manifest).items():
        deterministic, reason = config_determinism(config)
        roles[role] = {"model": config.model, "kind": config.kind, "dtype": config.dtype,
                       "deterministic": deterministic, "reason": reason}
    flags = [r["deterministic"] for r in roles.values()]
    overall = False if False in flags else (None if None in flags else True)
    may_differ = sorted({pattern for role, entry in roles.items()
                         if entry["deterministic"] is False for pattern in ROLE_COLUMNS[role]})
    if "*" in may_differ:  # the policy's solutions: every column follows from them
        may_differ = ["*"]
    return {"deterministic": overall, "engines": roles, "may_differ": may_differ,
            "nondeterministic_columns": list(manifest.nondeterministic_columns)}


def matches(column: str, patterns) -> bool:
    """``column`` (``labels``, ``cost_mc.rollouts``) matches one of the fnmatch ``patterns``
    (a struct field also matches its struct's name)."""
    names = (column, column.split(".", 1)[0])
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def moved_field(column: str) -> str | None:
    """The moved struct field ``column`` names (``cost_judge.cached_tokens``), if any."""
    if "." not in column:
        return None
    sub = column.rsplit(".", 1)[1]
    return sub if sub in MOVED_COLUMNS else None
