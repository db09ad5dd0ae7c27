"""``steplabel export DATASET --format trl|openrlhf|math-shepherd|sft|thinkprm --out DIR``:
training formats.

Formats (every row also carries ``problem_id``, ``solution_index`` and ``source``):

- ``trl``: TRL's stepwise supervision (``PRMTrainer``): ``prompt`` (the question),
  ``completions`` (the steps), ``labels`` (one bool per step). Binary: a step the adaptive
  budget left ``undecided`` has no label and ends its example before it (rule 2 below; counted
  as ``cut_at_undecided`` and said in the summary line). TRL joins the steps with its
  ``step_separator`` and puts each label on the separator's last token; ``export.json`` gives
  the separator that matches the dataset's splitter (``"\\n"`` for ``step_markers``/``lines``,
  ``"\\n\\n"`` for ``paragraphs``).
- ``openrlhf``: OpenRLHF's process reward dataset: ``input`` is the question, a newline, then
  each step followed by `` <placeholder>`` (steps joined by newlines); ``value`` holds one label
  per placeholder, ``"+"``/``"-"`` with ``--labels hard`` (train with ``--reward_tokens + -``)
  or the step's Monte Carlo value in [0, 1] with ``--labels soft``, or with ``--labels
  posterior`` the mean of the step's Beta posterior (the soft label of #26, from the counts and
  the manifest's prior) plus a column ``weight``: one confidence per step, ``1 - (high - low)``
  of the step's 90% credible interval, in [0, 1] (0.50 to 0.72 after 8 rollouts under a
  uniform prior; 1 for the final step, which is its graded answer). OpenRLHF reads
  ``input``/``value`` and ignores ``weight``; a trainer that weights its loss per step reads
  it. Given ``--tokenizer``, the
  placeholder must be one token, and it must still be one token inside every input (a
  placeholder that merges with its neighbours would shift the labels): the export refuses a
  multi-token placeholder and skips, with a count, an input where the in-context check fails.
- ``math-shepherd``: ``input`` is the question, a space, then ``Step k: … ки`` per step (steps
  joined by newlines; a step that already starts with a ``Step k:`` marker keeps it); ``label``
  is the same text with each ``ки`` replaced by ``+`` or ``-`` (HF ``peiyi9979/Math-Shepherd``).

Critiques (``critiques`` output, issue #25), only the kept ones (rows are one sampled critique
each; a kept one agrees with the trusted labels, ``annotators/critic.py``):

- ``sft``: TRL's conversational format for ``SFTTrainer``: ``messages`` is the verification
  request the critic saw (the user's turn, re-rendered from the row's question, steps and
  template, and refused, counted, when the template's text has changed since) and the kept
  critique as the assistant's turn; plus ``problem_id``, ``solution_index`` and
  ``sample_index``. Parquet, as the formats above.
- ``thinkprm``: ThinkPRM-style prompt/completion pairs as JSONL (``DIR/data/*.jsonl``, one
  object a line): ``prompt`` is the same verification request as plain text (no chat template),
  ``completion`` the critique, with the same ids.

Which steps are exported, one rule for every label source (consensus, Monte Carlo only, judge
only; the ``label_source`` column says which): only kept trajectories (the ``trajectories``
output) with labels, and

1. **cut after the first error** (default): the example ends with the first step labelled
   negative, as in Qwen's recipe and PRM800K/ProcessBench (steps after the first wrong one have
   no trustworthy label). ``--keep-after-first-error`` keeps the labels after it, as
   Math-Shepherd's released data does (it labels every step by its own rollouts);
2. **cut before the first unknown** (always): a step with no label (not estimated, e.g. every
   rollout from it was cut off, or the adaptive budget left it ``undecided``) ends the example
   before it, so every exported step has a label; an unknown is never exported as a negative.
   An example left with no labelled step is skipped.

Every skip and cut is counted in ``export.json``. Rejected trajectories (consensus
disagreements, policy samples cut off at ``max_tokens``) are never exported.

Output: ``DIR/data/part-*.parquet`` (one shard per trajectory shard, explicit schema, written
atomically and streamed a record batch at a time) and ``DIR/export.json``; load with
``datasets.load_dataset("parquet", data_files="DIR/data/*.parquet")``.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from steplabel.annotators import critic
from steplabel.annotators.splitting import get_splitter
from steplabel.dataset import storage
from steplabel.dataset.stats import iter_file_rows
from steplabel.schemas.config import looks_like_local_path

FORMATS = ("trl", "openrlhf", "math-shepherd", "sft", "thinkprm")
#: The formats made from kept critiques (the ``critiques`` output), not from trajectories.
CRITIQUE_FORMATS = ("sft", "thinkprm")
LABEL_KINDS = ("hard", "soft", "posterior")
#: What ``--labels posterior``'s ``weight`` column is (also written to ``export.json``).
POSTERIOR_WEIGHT = "1 - width of the step's 90% credible interval (Beta posterior)"
#: ``mc_label_reasons`` of a step the adaptive budget left without a hard label.
REASON_UNDECIDED = "undecided"
MATH_SHEPHERD_TAG = "ки"
DEFAULT_PLACEHOLDER = MATH_SHEPHERD_TAG
DATA_DIR = "data"
BATCH_ROWS = 1024
_STEP_MARKER = re.compile(r"(?i)^\s*step\s*\d+\s*[:.)]")

_IDS = [("problem_id", pa.string()), ("solution_index", pa.int32()), ("source", pa.string())]
SCHEMAS: dict[tuple[str, str], pa.Schema] = {
    ("trl", "hard"): pa.schema([("prompt", pa.string()), ("completions", pa.list_(pa.string())),
                                ("labels", pa.list_(pa.bool_())), *_IDS]),
    ("openrlhf", "hard"): pa.schema([("input", pa.string()), ("value", pa.list_(pa.string())),
                                     *_IDS]),
    ("openrlhf", "soft"): pa.schema([("input", pa.string()), ("value", pa.list_(pa.float64())),
                                     *_IDS]),
    ("openrlhf", "posterior"): pa.schema([("input", pa.string()),
                                          ("value", pa.list_(pa.float64())),
                                          ("weight", pa.list_(pa.float64())), *_IDS]),
    ("math-shepherd", "hard"): pa.schema([("input", pa.string()), ("label", pa.string()),
                                          *_IDS]),
    ("sft", "hard"): pa.schema([
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("problem_id", pa.string()), ("solution_index", pa.int32()),
        ("sample_index", pa.int32())]),
    ("thinkprm", "hard"): pa.schema([
        ("prompt", pa.string()), ("completion", pa.string()), ("problem_id", pa.string()),
        ("solution_index", pa.int32()), ("sample_index", pa.int32())]),
}
#: The ``critiques`` columns the critique formats read.
CRITIQUE_COLUMNS = ["problem_id", "solution_index", "sample_index", "question", "steps",
                    "tagged_steps", "critique", "kept", "reason", "template_id",
                    "template_sha256"]
SOURCE_COLUMNS = ["problem_id", "solution_index", "source", "question", "steps", "labels",
                  "soft_labels", "provenance", "mc_posterior_mean", "mc_interval_low",
                  "mc_interval_high", "mc_label_reasons"]


class ExportError(RuntimeError):
    """The export cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class LabelledExample:
    """A kept trajectory cut to its labelled steps: ``len(steps) == len(labels)``.

    ``soft`` holds the Monte Carlo values of the same steps, or None when any is missing;
    ``posterior`` the posterior means and ``weight`` ``1 - interval width`` of the same steps,
    or None when any is missing (datasets before schema 1.3 have none).
    """

    problem_id: str
    solution_index: int
    source: str
    question: str
    steps: list[str]
    labels: list[bool]
    soft: list[float] | None
    posterior: list[float] | None = None
    weight: list[float] | None = None


def _per_step(values: list | None, n: int) -> list[float] | None:
    """The first ``n`` values as floats, or None when there are fewer or any is missing."""
    values = (values or [])[:n]
    if len(values) == n and all(v is not None for v in values):
        return [float(v) for v in values]
    return None


def labelled_example(row: dict, counts: Counter, *,
                     keep_after_first_error: bool = False) -> LabelledExample | None:
    """The exportable part of a trajectory row, or None (with the reason counted); see the
    module's rule: cut after the first error (unless ``keep_after_first_error``) and before
    the first unknown label."""
    labels, steps = row.get("labels"), row.get("steps") or []
    if not labels:
        counts["skipped_no_labels"] += 1
        return None
    known = []
    reasons = row.get("mc_label_reasons") or []
    for index, label in enumerate(labels):
        if label is None:
            undecided = index < len(reasons) and reasons[index] == REASON_UNDECIDED
            counts["cut_at_undecided" if undecided else "cut_at_unknown_label"] += 1
            break
        known.append(bool(label))
        if not label and not keep_after_first_error:
            if len(known) < len(labels):
                counts["cut_after_first_error"] += 1
            break
    if not known:
        counts["skipped_no_labels"] += 1
        return None
    if len(known) > len(steps):
        counts["skipped_more_labels_than_steps"] += 1
        return None
    counts["steps_dropped_after_last_label"] += len(steps) - len(known)
    n = len(known)
    soft = _per_step(row.get("soft_labels"), n)
    posterior = _per_step(row.get("mc_posterior_mean"), n)
    low, high = _per_step(row.get("mc_interval_low"), n), _per_step(row.get("mc_interval_high"), n)
    weight = ([1.0 - (h - lo) for lo, h in zip(low, high)]
              if posterior is not None and low is not None and high is not None else None)
    return LabelledExample(row["problem_id"], row["solution_index"], row["source"],
                           row["question"], list(steps[:n]), known, soft,
                           posterior if weight is not None else None, weight)


# ---------------------------------------------------------------------------------------------
# Formats


def _ids(example: LabelledExample) -> dict:
    return {"problem_id": example.problem_id, "solution_index": example.solution_index,
            "source": example.source}


def trl_row(example: LabelledExample) -> dict:
    return {"prompt": example.question, "completions": example.steps, "labels": example.labels,
            **_ids(example)}


def openrlhf_input(question: str, steps: list[str], placeholder: str) -> str:
    return question + "\n" + "\n".join(f"{step} {placeholder}" for step in steps)


def openrlhf_row(example: LabelledExample, *, placeholder: str, labels: str) -> dict:
    """``labels``: ``hard`` (+/-), ``soft`` (Monte Carlo values) or ``posterior`` (posterior
    means, with the per-step ``weight``)."""
    text = openrlhf_input(example.question, example.steps, placeholder)
    if labels == "posterior":
        return {"input": text, "value": example.posterior, "weight": example.weight,
                **_ids(example)}
    value = (["+" if label else "-" for label in example.labels] if labels == "hard"
             else example.soft)
    return {"input": text, "value": value, **_ids(example)}


def math_shepherd_steps(steps: list[str]) -> list[str]:
    """Steps with their ``Step k:`` marker (kept when the step already has one)."""
    return [step if _STEP_MARKER.match(step) else f"Step {k}: {step}"
            for k, step in enumerate(steps, start=1)]


def math_shepherd_row(example: LabelledExample) -> dict:
    marked = math_shepherd_steps(example.steps)
    tagged = [f"{step} {MATH_SHEPHERD_TAG}" for step in marked]
    graded = [f"{step} {'+' if label else '-'}" for step, label in zip(marked, example.labels)]
    return {"input": example.question + " " + "\n".join(tagged),
            "label": example.question + " " + "\n".join(graded), **_ids(example)}


class PlaceholderCheck:
    """Checks that a placeholder is one token of ``tokenizer``, alone and inside inputs."""

    def __init__(self, tokenizer, placeholder: str) -> None:
        ids = tokenizer.encode(placeholder, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ExportError(
                f"placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer "
                f"({pieces}); OpenRLHF needs a single token: pass --placeholder with one "
                "(a special or added token is safest)")
        self.tokenizer = tokenizer
        self.token_id = ids[0]

    def fits(self, text: str, expected: int) -> bool:
        """True when ``text`` tokenizes with exactly ``expected`` placeholder tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return sum(1 for i in ids if i == self.token_id) == expected


def load_tokenizer(path: str):
    """A tokenizer from a local folder or a hub id; a local path that is not a folder is an
    error of its own (the hub's "Repo id must use alphanumeric chars" would say nothing)."""
    folder = Path(path).expanduser()
    if looks_like_local_path(path) or folder.exists():
        if not folder.is_dir():
            state = "is not a folder" if folder.exists() else "does not exist"
            raise ExportError(f"--tokenizer {path} {state}: give a tokenizer's folder "
                              "(tokenizer.json or tokenizer_config.json) or a hub id (owner/name)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load a tokenizer from {path}: {exc}") from None


@dataclass(frozen=True)
class ExportOptions:
    format: str
    labels: str = "hard"
    placeholder: str = DEFAULT_PLACEHOLDER
    tokenizer: str | None = None
    keep_after_first_error: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.labels not in LABEL_KINDS:
            raise ExportError(f"labels must be one of {', '.join(LABEL_KINDS)}, got "
                              f"{self.labels!r}")
        if self.format in CRITIQUE_FORMATS and (self.labels != "hard"
                                                or self.keep_after_first_error):
            raise ExportError(f"--labels and --keep-after-first-error do not apply to "
                              f"--format {self.format} (critiques, not step labels)")
        if (self.format, self.labels) not in SCHEMAS:
            raise ExportError(f"--labels {self.labels} is not available for {self.format} "
                              "(soft labels: openrlhf only; TRL and Math-Shepherd take hard "
                              "labels)")
        if self.format != "openrlhf" and (self.tokenizer or
                                          self.placeholder != DEFAULT_PLACEHOLDER):
            raise ExportError("--placeholder and --tokenizer apply to --format openrlhf only")
        if not self.placeholder or self.placeholder != self.placeholder.strip():
            raise ExportError(f"placeholder must be non-empty without surrounding spaces, got "
                              f"{self.placeholder!r}")


class Exporter:
    """Turns labelled examples into rows of one format, counting what it skips."""

    def __init__(self, options: ExportOptions, counts: Counter) -> None:
        self.options = options
        self.counts = counts
        self.check = (PlaceholderCheck(load_tokenizer(options.tokenizer), options.placeholder)
                      if options.format == "openrlhf" and options.tokenizer else None)

    def row(self, example: LabelledExample) -> dict | None:
        o = self.options
        if o.format == "trl":
            return trl_row(example)
        if o.format == "math-shepherd":
            if _contains(example, MATH_SHEPHERD_TAG):
                self.counts["skipped_step_tag_in_text"] += 1
                return None
            return math_shepherd_row(example)
        if o.labels == "soft" and example.soft is None:
            self.counts["skipped_no_soft_labels"] += 1
            return None
        if o.labels == "posterior" and example.posterior is None:
            self.counts["skipped_no_posterior"] += 1
            return None
        if _contains(example, o.placeholder):
            self.counts["skipped_placeholder_in_text"] += 1
            return None
        row = openrlhf_row(example, placeholder=o.placeholder, labels=o.labels)
        if self.check is not None and not self.check.fits(row["input"], len(example.labels)):
            self.counts["skipped_placeholder_not_one_token_in_context"] += 1
            return None
        return row


def _contains(example: LabelledExample, marker: str) -> bool:
    return marker in example.question or any(marker in step for step in example.steps)


# ---------------------------------------------------------------------------------------------
# Writing


def _write_shard(path: str, schema: pa.Schema, rows: Iterator[dict]) -> int:
    """Stream rows into one Parquet file, atomically (temp name, then rename). Returns rows;
    writes nothing when there are none."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    folder, name = posixpath.split(path) if "://" in path else _split(path)
    tmp = storage.join(folder, f"{storage.TMP_MARK}{uuid.uuid4().hex}-{name}")
    written, writer, handle, batch = 0, None, None, []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                if writer is None:
                    handle = FileSystems.create(tmp)
                    writer = pq.ParquetWriter(handle, schema, compression="zstd")
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                written += len(batch)
                batch = []
        if batch:
            if writer is None:
                handle = FileSystems.create(tmp)
                writer = pq.ParquetWriter(handle, schema, compression="zstd")
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            written += len(batch)
    finally:
        if writer is not None:
            writer.close()
        if handle is not None:
            handle.close()
    if written:
        if storage.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    return written


def _split(path: str) -> tuple[str, str]:
    import os

    return os.path.split(os.path.abspath(path))


def _prepare_out(out_dir: str, *, overwrite: bool) -> None:
    from pathlib import Path

    if "://" in out_dir:
        if storage.list_files(storage.join(out_dir, "*")) and not overwrite:
            raise ExportError(f"{out_dir} is not empty; pass --overwrite to replace it")
        return
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} is not empty; pass --overwrite to replace it")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def step_separator(dataset_dir: str) -> str | None:
    """The separator of the splitter that made the dataset (TRL's ``step_separator``)."""
    for row in storage.iter_rows(dataset_dir, "trajectories", columns=["provenance"]):
        splitter = json.loads((row["provenance"] or {}).get("splitter") or "{}")
        try:
            return get_splitter(splitter.get("name", "")).separator
        except ValueError:
            return None
    return None


def critique_example(row: dict, fmt: str, counts: Counter) -> dict | None:
    """One ``critiques`` row as an example of ``fmt`` (``sft`` or ``thinkprm``), or None with
    the reason counted: not kept, or its template changed since (the request it saw cannot be
    re-rendered)."""
    if not row.get("kept"):
        counts["skipped_not_kept"] += 1
        return None
    try:
        example = (critic.sft_messages(row) if fmt == "sft"
                   else critic.prompt_completion(row))
    except ValueError:
        counts["skipped_request_not_reproducible"] += 1
        return None
    return {**example, "problem_id": row["problem_id"],
            "solution_index": row["solution_index"], "sample_index": row["sample_index"]}


def _write_jsonl(path: str, rows: Iterator[dict]) -> int:
    """Rows as JSON lines in one file, written atomically; nothing when there are none."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if lines:
        storage.write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return len(lines)


def export_critiques(dataset_dir: str, *, out_dir: str, options: ExportOptions,
                     overwrite: bool = False) -> dict:
    """Export the kept critiques of a dataset (``sft`` or ``thinkprm``); returns the
    ``export.json`` dict."""
    files = storage.output_files(dataset_dir, "critiques")
    if not files:
        raise ExportError(f"{dataset_dir} holds no critiques shards (run the job with a "
                          "critic: section)")
    counts: Counter = Counter()
    _prepare_out(out_dir, overwrite=overwrite)
    schema = SCHEMAS[(options.format, "hard")]

    def rows_of(path: str) -> Iterator[dict]:
        for row in iter_file_rows(path, columns=CRITIQUE_COLUMNS):
            counts["critiques_read"] += 1
            out = critique_example(row, options.format, counts)
            if out is not None:
                counts["examples"] += 1
                yield out

    written = []
    for path in files:
        name = posixpath.basename(path)
        if options.format == "thinkprm":
            target = storage.join(out_dir, DATA_DIR, name.replace(".parquet", ".jsonl"))
            count = _write_jsonl(target, rows_of(path))
        else:
            target = storage.join(out_dir, DATA_DIR, name)
            count = _write_shard(target, schema, rows_of(path))
        if count:
            written.append(target)
    if not written:
        raise ExportError(f"no kept critique in {dataset_dir} ({_describe_counts(counts)})")
    return _write_export_manifest(
        dataset_dir, out_dir, schema, written, counts,
        loader="json" if options.format == "thinkprm" else "parquet",
        format=options.format, trl_step_separator=None)


def export_dataset(dataset_dir: str, *, out_dir: str, options: ExportOptions,
                   overwrite: bool = False) -> dict:
    """Export the kept, labelled trajectories of a dataset (or, for ``sft`` and ``thinkprm``,
    its kept critiques); returns the ``export.json`` dict."""
    if options.format in CRITIQUE_FORMATS:
        return export_critiques(dataset_dir, out_dir=out_dir, options=options,
                                overwrite=overwrite)
    files = storage.output_files(dataset_dir, "trajectories")
    if not files:
        raise ExportError(f"{dataset_dir} holds no trajectories shards")
    counts: Counter = Counter()
    exporter = Exporter(options, counts)  # loads the tokenizer before anything is written
    _prepare_out(out_dir, overwrite=overwrite)
    schema = SCHEMAS[(options.format, options.labels)]

    def rows_of(path: str) -> Iterator[dict]:
        for row in iter_file_rows(path, columns=SOURCE_COLUMNS):
            counts["trajectories_read"] += 1
            example = labelled_example(
                row, counts, keep_after_first_error=options.keep_after_first_error)
            out = exporter.row(example) if example is not None else None
            if out is not None:
                counts["examples"] += 1
                counts["steps"] += len(example.labels)
                counts["negative_steps"] += example.labels.count(False)
                yield out

    written = []
    for path in files:
        target = storage.join(out_dir, DATA_DIR, posixpath.basename(path))
        if _write_shard(target, schema, rows_of(path)):
            written.append(target)
    if not written:
        raise ExportError(f"no exportable example in {dataset_dir} "
                          f"({_describe_counts(counts)})")
    return _write_export_manifest(
        dataset_dir, out_dir, schema, written, counts, loader="parquet",
        format=options.format,
        labels=options.labels,
        keep_after_first_error=options.keep_after_first_error,
        placeholder=options.placeholder if options.format == "openrlhf" else None,
        weight=POSTERIOR_WEIGHT if options.labels == "posterior" else None,
        tokenizer_checked=options.tokenizer,
        step_tag=MATH_SHEPHERD_TAG if options.format == "math-shepherd" else None,
        trl_step_separator=step_separator(dataset_dir) if options.format == "trl" else None)


def _write_export_manifest(dataset_dir: str, out_dir: str, schema: pa.Schema, written: list,
                           counts: Counter, *, loader: str, **fields) -> dict:
    """Write ``export.json``: the format's own ``fields``, then what every export records (its
    columns, source, files, counts and how to load it with ``datasets``); returns it."""
    extension = "jsonl" if loader == "json" else "parquet"
    manifest = {
        **fields,
        "columns": schema.names,
        "source_dataset": dataset_dir,
        "source_manifest_hash": _read_info(dataset_dir).get("manifest_hash"),
        "files": [posixpath.relpath(p, out_dir) if "://" not in p else p for p in written],
        "counts": dict(sorted(counts.items())),
        "load_with": f"datasets.load_dataset('{loader}', data_files='{out_dir}/{DATA_DIR}/"
                     f"*.{extension}')",
    }
    storage.write_json_atomic(storage.join(out_dir, "export.json"), manifest)
    return manifest


def _read_info(dataset_dir: str) -> dict:
    return storage.read_json_if_exists(storage.join(dataset_dir, "info.json"), {})


def _describe_counts(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no trajectories"


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a steplabel dataset directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="training format")
    parser.add_argument("--out", required=True, help="directory for the exported shards")
    parser.add_argument("--labels", choices=LABEL_KINDS, default="hard",
                        help="hard (bool, +/-), soft (Monte Carlo value; openrlhf only) or "
                             "posterior (posterior mean with a per-step weight, 1 - the 90%% "
                             "interval's width; openrlhf only)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="openrlhf: check the placeholder against this tokenizer (a local "
                             "folder); refuse a placeholder that is not a single token")
    parser.add_argument("--placeholder", metavar="TOKEN", default=DEFAULT_PLACEHOLDER,
                        help=f"openrlhf: the token after each step (default {DEFAULT_PLACEHOLDER})")
    parser.add_argument("--keep-after-first-error", action="store_true",
                        help="keep the labels after the first negative step (Math-Shepherd's "
                             "full labels); by default an example ends at its first error")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--json", action="store_true",
                        help="print what was exported (export.json) as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        options = ExportOptions(format=args.format, labels=args.labels,
                                placeholder=args.placeholder, tokenizer=args.tokenizer,
                                keep_after_first_error=args.keep_after_first_error)
        result = export_dataset(args.dataset, out_dir=args.out, options=options,
                                overwrite=args.overwrite)
    except ExportError as exc:
        print(f"steplabel export: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    counts = result["counts"]
    if args.format in CRITIQUE_FORMATS:
        print(f"[steplabel] exported {counts.get('examples', 0)} kept critiques of "
              f"{counts.get('critiques_read', 0)} as {args.format} to {args.out}")
        return 0
    print(f"[steplabel] exported {counts.get('examples', 0)} examples "
          f"({counts.get('steps', 0)} labelled steps) of {counts.get('trajectories_read', 0)} "
          f"kept trajectories as {args.format} to {args.out}"
          + (f"; labels are binary: steps the adaptive budget left undecided are not "
             f"exported, an example ends before its first one "
             f"({counts.get('cut_at_undecided', 0)} cut)" if args.format == "trl" else ""))
    skipped = {k: v for k, v in counts.items()
               if v and k.startswith(("skipped", "cut", "steps_dropped"))}
    if skipped:
        print("[steplabel] " + _describe_counts(Counter(skipped)))
    if result["trl_step_separator"] is not None:
        print(f"[steplabel] train with PRMConfig(step_separator={result['trl_step_separator']!r})")
    return 0
