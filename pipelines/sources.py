"""Reading problems (JSONL, Parquet, Hugging Face ``datasets``) and validating them.

Raw items reach validation unchanged (bytes for JSONL lines, dicts for Parquet and datasets), so
that every failure (non-UTF-8 bytes, malformed JSON, wrong types, missing or empty fields,
unparseable or pathological gold answers) becomes a dead-letter row with the original record.

Duplicate problem ids: copies with the same question and gold answer are one problem (the first
copy by content order is kept, the others go to the dead letter as ``duplicate_id``); copies
that differ are all dead-lettered as ``conflicting_duplicate_id``, since there is no telling
which one is right.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import apache_beam as beam

from steplabel.annotators.grading import check_answer_readable, parse_gold
from steplabel.annotators.job import Problem

#: Questions longer than this are not sent to any engine (dead letter, ``question_too_long``).
MAX_QUESTION_CHARS = 20_000


@dataclass(frozen=True)
class RawItem:
    """One input record as read: ``data`` is bytes (a JSONL line) or a dict."""

    source: str
    position: int
    data: Any


def _is_remote(path: str) -> bool:
    return "://" in path


def local_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"source path {pattern} matches no file")
    return files


def read_local_items(source) -> list[RawItem]:
    """Read a local source in the driver (small and medium jobs; keeps ``limit`` exact)."""
    name = source.source_name
    items: list[RawItem] = []
    if source.kind == "jsonl":
        for file in local_files(source.path):
            with open(file, "rb") as handle:
                for line in handle:
                    if line.strip():
                        items.append(RawItem(name, len(items), line.rstrip(b"\r\n")))
    elif source.kind == "parquet":
        import pyarrow.parquet as pq

        for file in local_files(source.path):
            for batch in pq.ParquetFile(file).iter_batches():
                for row in batch.to_pylist():
                    items.append(RawItem(name, len(items), row))
    elif source.kind == "hf":
        for row in _load_hf(source):
            items.append(RawItem(name, len(items), dict(row)))
    else:  # pragma: no cover - the manifest model rejects other kinds
        raise ValueError(f"unknown source kind {source.kind!r}")
    return items[: source.limit] if source.limit else items


def _load_hf(source) -> Iterable[dict]:
    import datasets

    if source.dataset:
        return datasets.load_dataset(source.dataset, revision=source.revision,
                                     split=source.split)
    path = Path(source.path)
    if path.is_dir():  # a folder written by Dataset(Dict).save_to_disk
        loaded = datasets.load_from_disk(str(path))
        return loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    builder = source.builder or {".jsonl": "json", ".json": "json", ".parquet": "parquet",
                                 ".csv": "csv"}.get(path.suffix)
    if builder is None:
        raise ValueError(f"cannot tell the datasets builder for {source.path}; set builder")
    return datasets.load_dataset(builder, data_files={source.split: local_files(source.path)},
                                 split=source.split)


class ReadProblems(beam.PTransform):
    """Raw items of a source: read in the driver for local files, by Beam IO for remote ones."""

    def __init__(self, source, *, items: list[RawItem] | None = None) -> None:
        super().__init__()
        self.source = source
        self.items = items

    def expand(self, pbegin):
        source = self.source
        if self.items is not None or not (source.path and _is_remote(source.path)):
            items = self.items if self.items is not None else read_local_items(source)
            return pbegin | "CreateItems" >> beam.Create(items, reshuffle=False)
        if source.limit:
            raise ValueError("source.limit is only supported for local files")
        name = source.source_name
        if source.kind == "jsonl":
            lines = pbegin | "ReadJsonl" >> beam.io.ReadFromText(
                source.path, coder=beam.coders.BytesCoder())
            return lines | "ToItems" >> beam.Map(lambda line: RawItem(name, -1, line))
        if source.kind == "parquet":
            rows = pbegin | "ReadParquet" >> beam.io.ReadFromParquet(source.path)
            return rows | "ToItems" >> beam.Map(lambda row: RawItem(name, -1, row))
        raise ValueError(f"remote sources must be jsonl or parquet, got {source.kind}")


def _original_text(data: Any) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="backslashreplace")
    try:
        text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates: keep them as \u escapes
        return json.dumps(data, sort_keys=True, default=str, ensure_ascii=True)
    except (TypeError, ValueError):
        return repr(data).encode("utf-8", "backslashreplace").decode("utf-8")


def _text_field(record: dict, key: str, what: str) -> tuple[str | None, str | None]:
    if key not in record or record[key] is None:
        return None, f"missing_{what}"
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"bad_{what}_type"
    text = str(value)
    if not text.strip():
        return None, f"empty_{what}"
    try:
        # JSON's "\ud800" escape decodes to a lone surrogate: valid JSON, but not text that
        # UTF-8 (Parquet, the tokenizer, the checkpoint key) can hold.
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, "not_utf8"
    return text, None


def validate_item(item: RawItem, *, fields, answer_format: str,
                  manifest_hash: str) -> tuple[Problem | None, dict | None]:
    """``(problem, None)`` for a good record, ``(None, dead_letter_row)`` for a bad one."""

    def dead(reason: str, error: str, problem_id: str | None = None):
        return None, {
            "stage": "validate",
            "reason": reason,
            "error": error,
            "problem_id": problem_id,
            "source": item.source,
            "original": _original_text(item.data),
            "manifest_hash": manifest_hash,
        }

    record = item.data
    if isinstance(record, bytes):
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError as exc:
            return dead("not_utf8", f"line {item.position + 1}: {exc}")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            return dead("malformed_json", f"line {item.position + 1}: {exc}")
    if not isinstance(record, dict):
        return dead("not_an_object", f"expected a JSON object, got {type(record).__name__}")

    question, problem = _text_field(record, fields.question, "question")
    if problem:
        return dead(problem, f"field {fields.question!r}: {problem.replace('_', ' ')}")
    if fields.id is None:
        problem_id = "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
    else:
        problem_id, problem = _text_field(record, fields.id, "id")
        if problem:
            return dead(problem, f"field {fields.id!r}: {problem.replace('_', ' ')}")
    answer, problem = _text_field(record, fields.answer, "answer")
    if problem:
        return dead(problem, f"field {fields.answer!r}: {problem.replace('_', ' ')}", problem_id)
    if len(question) > MAX_QUESTION_CHARS:
        return dead("question_too_long", f"{len(question)} characters > {MAX_QUESTION_CHARS}",
                    problem_id)
    gold = parse_gold(answer, answer_format)
    if gold is None:
        return dead("unparseable_gold", f"no {answer_format} answer found in "
                    f"{answer[:80]!r}", problem_id)
    unreadable = check_answer_readable(gold)
    if unreadable in ("answer_too_long", "answer_too_deep"):
        return dead("pathological_gold", f"gold answer {gold[:80]!r}: {unreadable}", problem_id)
    if unreadable is not None:
        return dead("unparseable_gold", f"the grader cannot read the gold answer "
                    f"{gold[:80]!r} ({unreadable})", problem_id)
    original = _original_text(item.data)
    return Problem(problem_id, question, gold, item.source, original), None


class ValidateProblems(beam.PTransform):
    """Validated problems (main output) and dead-letter rows (``dead_letter``), duplicates
    resolved as the module docstring says."""

    def __init__(self, *, fields, answer_format: str, manifest_hash: str) -> None:
        super().__init__()
        self.fields = fields
        self.answer_format = answer_format
        self.manifest_hash = manifest_hash

    def expand(self, items):
        fields, fmt, mhash = self.fields, self.answer_format, self.manifest_hash

        def check(item):
            problem, dead = validate_item(item, fields=fields, answer_format=fmt,
                                          manifest_hash=mhash)
            if dead is not None:
                beam.metrics.Metrics.counter("steplabel", f"dead_letter_{dead['reason']}").inc()
                yield beam.pvalue.TaggedOutput("dead_letter", dead)
            else:
                yield problem

        checked = items | "CheckRecords" >> beam.FlatMap(check).with_outputs(
            "dead_letter", main="problems")
        resolved = (
            checked.problems
            | "KeyById" >> beam.Map(lambda p: (p.problem_id, p))
            | "GroupById" >> beam.GroupByKey()
            | "ResolveDuplicates" >> beam.FlatMap(_resolve_duplicates, mhash).with_outputs(
                "dead_letter", main="problems")
        )
        dead_letters = (checked.dead_letter, resolved.dead_letter) | "MergeDeadLetters" >> \
            beam.Flatten()
        return resolved.problems, dead_letters


def _resolve_duplicates(keyed, manifest_hash: str):
    problem_id, copies = keyed
    copies = sorted(copies, key=lambda p: (p.question, p.gold_answer, p.original))
    if len(copies) == 1:
        yield copies[0]
        return
    same = all((c.question, c.gold_answer) == (copies[0].question, copies[0].gold_answer)
               for c in copies)
    rest = copies[1:] if same else copies
    reason = "duplicate_id" if same else "conflicting_duplicate_id"
    if same:
        yield copies[0]
    for copy in rest:
        beam.metrics.Metrics.counter("steplabel", f"dead_letter_{reason}").inc()
        yield beam.pvalue.TaggedOutput("dead_letter", {
            "stage": "validate",
            "reason": reason,
            "error": f"problem id {problem_id!r} appears {len(copies)} times"
            + ("" if same else " with different questions or answers"),
            "problem_id": problem_id,
            "source": copy.source,
            "original": copy.original,
            "manifest_hash": manifest_hash,
        })
