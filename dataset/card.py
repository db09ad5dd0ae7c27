"""The dataset card: ``README.md`` in every dataset directory, loadable with ``datasets``.

Its YAML header has one ``configs`` entry per output that has rows (``trajectories``, the
default, ``rejected``, ``omegaprm_states``, ``omegaprm_pairs``, ``omegaprm_searches``,
``filtered``, ``dead_letter``, ``critiques``), each mapping a ``train`` split to that output's Parquet shards,
so that ``datasets.load_dataset(DIR, "rejected")`` loads one output with its own schema, and the
folder can be uploaded to a dataset hub as it is. Only Parquet shards of the outputs are
listed: checkpoints (``_work/``), logs (``logs/``) and JSON files are not data files.

The body says in prose what the dataset is, how it was made (models, annotators, seed, code and
package versions, from ``manifest.lock.json``), its label statistics (``stats.json``), how to
load each output, and the manifest itself.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from steplabel.dataset import storage
from steplabel.dataset.identity import CONTENT_HASH
from steplabel.dataset.stats import add_omegaprm_cost
from steplabel.schemas.records import OUTPUT_DIRS, OUTPUTS

CARD = "README.md"
DEFAULT_CONFIG = "trajectories"

DESCRIPTIONS = {
    "trajectories": "kept trajectories: the question, the policy's solution split into steps, "
                    "per-step Monte Carlo counts and values, hard and soft labels, the first "
                    "error each annotator named, the final labels (up to and including the "
                    "first error), cost and provenance",
    "rejected": "trajectories consensus did not keep, with every annotator's first error and "
                "the reason",
    "omegaprm_states": "OmegaPRM tree states: a solution prefix, its Monte Carlo value, "
                       "counts and posterior (mean, 90% interval, P(rate > min_success))",
    "omegaprm_pairs": "sibling preference pairs of OmegaPRM trees",
    "omegaprm_searches": "OmegaPRM binary searches: the searched solution in pieces and the "
                         "first error found",
    "filtered": "questions dropped before labelling (OmegaPRM pre-filter: all correct or all "
                "wrong; no usable solution), with counts",
    "dead_letter": "bad input records and failed problems: stage, reason, error and the "
                   "original record",
    "critiques": "a critic model's step-by-step verifications of trajectories (one row per "
                 "sample): each step's verdict, the trusted labels they were checked against, "
                 "kept or why not, cost and provenance; `steplabel export DIR --format sft` "
                 "turns the kept ones into SFT data for a generative verifier",
}


def card_configs(out_dir: str) -> list[dict]:
    """The ``configs`` header: one entry per output that has Parquet shards."""
    configs = []
    for output in OUTPUTS:
        if not storage.output_files(out_dir, output):
            continue
        entry: dict[str, Any] = {"config_name": output,
                                 "data_files": [{"split": "train",
                                                 "path": f"{OUTPUT_DIRS[output]}/*.parquet"}]}
        if output == DEFAULT_CONFIG:
            entry["default"] = True
        configs.append(entry)
    return configs


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _pairs(mapping: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"


def _statistics(stats: dict) -> list[str]:
    s = stats.get("overall") or {}
    if not s:
        return ["No statistics were recorded."]
    steps = s.get("steps", {})
    consensus = s.get("consensus", {})
    mc = s.get("mc_values", {})
    prefilter = s.get("prefilter", {})
    per_label = s.get("cost_per_label", {})
    lines = [
        f"- Problems: {s.get('problems')}; trajectories kept {consensus.get('kept')} of "
        f"{consensus.get('evaluated')} ({_pct(consensus.get('keep_rate'))}); reject reasons: "
        f"{_pairs(consensus.get('reject_reasons', {}))}.",
        f"- Steps: {steps.get('all')} in all trajectories, {steps.get('kept')} in kept ones, "
        f"{steps.get('labelled')} labelled ({steps.get('positive')} positive, "
        f"{steps.get('negative')} negative); positive-step rate "
        f"{_pct(s.get('positive_step_rate'))}.",
        f"- First error of kept trajectories (step index, `none`: every step correct): "
        f"{_pairs(s.get('first_error_histogram', {}))}.",
        f"- Monte Carlo values: {mc.get('count')} estimated, exactly 0: "
        f"{_pct(mc.get('share_exact_0'))}, exactly 1: {_pct(mc.get('share_exact_1'))}.",
        f"- OmegaPRM pre-filter: dropped {prefilter.get('dropped')} of "
        f"{prefilter.get('checked')} questions ({_pct(prefilter.get('drop_rate'))}).",
        f"- Dead letters: {_pairs(s.get('dead_letter', {}))}.",
        f"- Cost per kept step label: {per_label.get('rollouts')} rollouts, "
        f"{per_label.get('generated_tokens')} generated tokens.",
    ]
    critiques = s.get("critiques") or {}
    if critiques.get("critiques"):
        lines.append(
            f"- Critiques: {critiques.get('kept')} of {critiques.get('critiques')} kept "
            f"({_pct(critiques.get('keep_rate'))}), on {critiques.get('solutions_with_kept')} "
            f"of {critiques.get('solutions')} critiqued trajectories; not kept: "
            f"{_pairs(critiques.get('not_kept_reasons', {}))}; "
            f"{critiques.get('tokens_per_kept')} tokens spent per kept critique.")
    cache = ((stats.get("run") or {}).get("prefix_cache") or {}).get("all") or {}
    if cache.get("prompt_tokens"):
        lines.append(f"- Prefix cache (a measurement of the run that wrote this, not of the "
                     f"data): {cache.get('cached_tokens')} of {cache.get('prompt_tokens')} "
                     f"prompt tokens ({_pct(cache.get('cached_share'))}).")
    if "cost" in s and "cost_per_label" in s:  # OmegaPRM's cost is in the run's counters
        with_omegaprm = add_omegaprm_cost(s, stats.get("counters") or {})[
            "cost_per_label"].get("with_omegaprm")
        if with_omegaprm:
            lines.append(f"- Cost per kept step label with OmegaPRM: "
                         f"{with_omegaprm['rollouts']} rollouts, "
                         f"{with_omegaprm['generated_tokens']} generated tokens.")
    reconciliation = stats.get("reconciliation") or {}
    if reconciliation:
        lines.append(f"- Every input row accounted for: {reconciliation.get('ok')} "
                     f"({reconciliation.get('accounted')} of "
                     f"{reconciliation.get('problems_in')}: labelled, filtered or dead "
                     "letter).")
    for warning in stats.get("warnings") or ():
        lines.append(f"- Warning: {warning}")
    return lines


def _provenance(lock: dict) -> list[str]:
    if not lock:
        return ["No `manifest.lock.json` was recorded."]
    lines = []
    models = lock.get("models") or {}
    roles = [r for r in ("policy", "completer", "judge") if r in models]
    for role, model in ((r, models[r]) for r in roles + sorted(set(models) - set(roles))):
        engine = model.get("engine") or {}
        digest = model.get("weights_sha256")
        lines.append(f"- {role}: `{model.get('model')}` ({model.get('kind')}, "
                     f"{model.get('dtype')}) on {engine.get('name')} "
                     f"{engine.get('version') or ''}".rstrip()
                     + (f", weights SHA-256 `{digest[:16]}…`" if digest else "") + ".")
    sampling = lock.get("sampling") or {}
    if sampling:
        lines.append(f"- Run seed {sampling.get('run_seed')}; every request's seed derives "
                     "from it and the data's identity, so a rerun reproduces the text.")
    annotators = (lock.get("annotators") or {}).get("versions") or {}
    if annotators:
        lines.append(f"- Annotator versions: {_pairs(annotators)}.")
    templates = lock.get("prompt_templates") or {}
    if templates:
        lines.append("- Prompt templates: " + ", ".join(
            f"`{name}` (SHA-256 `{digest[:12]}…`)" for name, digest in templates.items()) + ".")
    code = lock.get("code") or {}
    if code:
        lines.append(f"- steplabel {code.get('steplabel')}, commit `{code.get('git_commit')}`"
                     + (" (with uncommitted changes)" if code.get("git_dirty") else "") + ".")
    packages = {k: v for k, v in (lock.get("packages") or {}).items() if v}
    if packages:
        lines.append(f"- Packages: {_pairs(packages)}.")
    lines.append("- `manifest.lock.json` holds all of it, with the SHA-256 of every input file "
                 "and model file: `steplabel regenerate DIR/manifest.lock.json --out NEW "
                 "--verify DIR` makes the dataset again and compares it row by row.")
    return lines


def _identity(info: dict, lock: dict) -> list[str]:
    """The content hash, what it covers, and whether a rerun gives the same bytes."""
    lines = []
    digest = info.get(CONTENT_HASH)
    if digest:
        lines.append(f"Content hash `{digest}`: SHA-256 over the sorted relative paths of the "
                     "output shards (`*part-*.parquet`) and each file's SHA-256, one "
                     "`path<TAB>sha256` line per shard. Two copies with this hash hold the "
                     "same data; `info.json`, `stats.json`, `run_metrics.json`, the lock, "
                     "this card and `logs/` are not part of it.")
    else:
        lines.append("No content hash was recorded (written before steplabel recorded one).")
    determinism = (lock or {}).get("determinism") or {}
    engines = determinism.get("engines") or {}
    if determinism.get("deterministic") is True:
        lines.append("")
        lines.append("Reproducible: every engine is deterministic (float32, a seed per "
                     "request), so running the manifest again gives byte-identical shards "
                     "and this hash, whatever `max_in_flight`, wave size or runner.")
    elif engines:
        lines.append("")
        lines.append("Not every engine is known to be deterministic, so a rerun may differ:")
        for role, entry in engines.items():
            state = {True: "deterministic", False: "not deterministic",
                     None: "unknown"}[entry.get("deterministic")]
            lines.append(f"- {role} (`{entry.get('model')}`): {state}: {entry.get('reason')}.")
        if determinism.get("may_differ"):
            lines.append("- Columns that may differ: " + (
                "every column (the policy's solutions may differ)"
                if determinism["may_differ"] == ["*"] else
                ", ".join(f"`{c}`" for c in determinism["may_differ"])) + ".")
        declared = determinism.get("nondeterministic_columns") or []
        lines.append("- Declared non-deterministic by the manifest (`regenerate --verify` "
                     "accepts differences there): " + (", ".join(f"`{c}`" for c in declared)
                                                       if declared else "none") + ".")
    return lines


def _as_written(data: dict) -> dict:
    """``data`` as its JSON file reads back (keys sorted): the card is the same whether it is
    written by the job or again later from the files."""
    return json.loads(json.dumps(data or {}, sort_keys=True, default=str))


def render_card(out_dir: str, *, info: dict, stats: dict, lock: dict) -> str:
    """The card's text (YAML header, then Markdown)."""
    info, stats, lock = _as_written(info), _as_written(stats), _as_written(lock)
    configs = card_configs(out_dir)
    name = info.get("name") or "steplabel dataset"
    header = yaml.safe_dump({"pretty_name": f"{name} (steplabel step labels)",
                             "tags": ["process-reward-model", "step-level-labels", "steplabel"],
                             "configs": configs}, sort_keys=False, allow_unicode=True)
    rows = info.get("rows") or {}
    table = ["| config | rows | what |", "| --- | --- | --- |"]
    for config in configs:
        output = config["config_name"]
        table.append(f"| `{output}`{' (default)' if config.get('default') else ''} | "
                     f"{rows.get(output, '?')} | {DESCRIPTIONS.get(output, '')} |")
    empty = [o for o in OUTPUTS if o not in {c["config_name"] for c in configs}]
    manifest = yaml.safe_dump((lock or {}).get("manifest") or {}, sort_keys=False,
                              allow_unicode=True)
    body = [
        f"# {name}",
        "",
        "Step-labelled reasoning data for training process reward models, made by "
        "steplabel from the job manifest below: a policy model "
        "sampled solutions, each was split into steps, and the steps were labelled by "
        "Monte Carlo completions from every step prefix (Math-Shepherd hard and soft labels), "
        "OmegaPRM's binary search for the first error, and an LLM judge; trajectories where "
        "Monte Carlo and the judge agree were kept (consensus filtering), the others are in "
        "`rejected`.",
        "",
        "Unknown is a value here: a label is null when it could not be estimated (no "
        "rollout could be graded, or every one was cut off), never a guessed false; a "
        "first-error index is -1 when every step is correct and null when unknown.",
        "",
        "## Outputs",
        "",
        *table,
        "",
        ("Outputs without rows (no config): " + ", ".join(f"`{o}`" for o in empty) + "."
         if empty else "Every output has rows."),
        "",
        "```python",
        "import datasets",
        "",
        'kept = datasets.load_dataset("PATH/TO/THIS/FOLDER", "trajectories", split="train")',
        'rejected = datasets.load_dataset("PATH/TO/THIS/FOLDER", "rejected", split="train")',
        "```",
        "",
        "`steplabel show DIR` prints labelled examples; `steplabel inspect DIR --html "
        "report.html` writes the statistics with plots and browsable examples.",
        "",
        "## Label statistics",
        "",
        *_statistics(stats),
        "",
        "## How it was made",
        "",
        *_provenance(lock),
        "",
        "## Identity",
        "",
        *_identity(info, lock),
        "",
        "## Manifest",
        "",
        "```yaml",
        manifest.rstrip(),
        "```",
        "",
        f"Schema version {info.get('schema_version')}; manifest hash "
        f"`{info.get('manifest_hash')}`. Files: `info.json` (row counts), `stats.json` (all "
        "statistics), `run_metrics.json` (what the run measured: prefix-cache hits, engine time), "
        "`manifest.lock.json` (provenance), `COMPLETED` (written last). "
        "`_work/` (checkpoints for resuming) and `logs/` are not part of the data.",
        "",
    ]
    return f"---\n{header}---\n\n" + "\n".join(body)


def write_dataset_card(out_dir: str, *, info: dict, stats: dict, lock: dict) -> str:
    """Write ``DIR/README.md`` atomically; returns its path."""
    path = storage.join(out_dir, CARD)
    storage.write_bytes_atomic(path, render_card(out_dir, info=info, stats=stats,
                                                 lock=lock).encode("utf-8"))
    return path


def card_header(text: str) -> dict:
    """The YAML header of a card's text (for tests and tools)."""
    if not text.startswith("---\n"):
        return {}
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]) or {}


def rewrite_card(out_dir: str) -> str:
    """(Re)write the card of a finished dataset from its ``info.json``, ``stats.json`` and
    ``manifest.lock.json`` (datasets written before cards existed)."""
    read = storage.read_json_if_exists
    return write_dataset_card(out_dir, info=read(storage.join(out_dir, "info.json"), {}),
                              stats=read(storage.join(out_dir, "stats.json"), {}),
                              lock=read(storage.join(out_dir, "manifest.lock.json"), {}))
