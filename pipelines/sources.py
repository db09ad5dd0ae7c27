"""Reading problems (JSONL, Parquet, Hugging Face ``datasets``) and validating them.

Raw items reach validation unchanged (bytes for JSONL lines, dicts for Parquet and datasets), so
that every failure (non-UTF-8 bytes, malformed JSON, wrong types, missing or empty fields,
unparseable or pathological gold answers) becomes a dead-letter row with the original record.

Each source kind is one class meeting the :class:`Source` protocol (:data:`SOURCE_KINDS`,
:func:`open_source`): it checks, reads, counts, fingerprints and samples its input, so that the
job, ``plan`` and the lock never branch on the kind.

Every source is read by Beam on the workers, never into a list on the launcher: JSONL files
line by line with their line numbers (one file per element, any number of files in parallel),
Parquet by ``ReadFromParquet`` (split by row groups), ``datasets`` folders, files and pinned
hub datasets opened on the worker and read in ranges of rows. The launcher only matches the
input files (they must exist) and pins them (:func:`remote_fingerprints` for remote ones).

Duplicate problem ids: copies with the same question and gold answer are one problem (the first
copy by content order is kept, the others go to the dead letter as ``duplicate_id``); copies
that differ are all dead-lettered as ``conflicting_duplicate_id``, since there is no telling
which one is right.
"""

from __future__ import annotations

import glob
import hashlib
import json
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Protocol, runtime_checkable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from steplabel.annotators.graders import GOLD_WARNING_PREFIX, Grader, text_field
from steplabel.annotators.python_tests import LAYOUTS
from steplabel.models import sha256_file
from steplabel.schemas import rows as R
from steplabel.schemas.graders import GoldRejected
from steplabel.schemas.manifest import FieldMapping
from steplabel.schemas.stages import Problem

#: Questions longer than this are not sent to any engine (dead letter, ``question_too_long``).
MAX_QUESTION_CHARS = 20_000

#: Rows of a ``datasets`` source per read element (the unit of parallelism on workers).
HF_RANGE_ROWS = 10_000


@dataclass(frozen=True)
class RawItem:
    """One input record as read: ``data`` is bytes (a JSONL line) or a dict. ``position`` is
    the 0-based line (JSONL) or row (``datasets``) in ``file``, -1 where unknown."""

    source: str
    position: int
    data: Any
    file: str = ""

    def where(self) -> str:
        """``line 3 of problems.jsonl``, for error messages."""
        where = f"line {self.position + 1}" if self.position >= 0 else "a record"
        return f"{where} of {self.file}" if self.file else where


def _is_remote(path: str) -> bool:
    return "://" in path


def local_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"source path {pattern} matches no file")
    return files


def input_files(pattern: str) -> list[str]:
    """The files a source path or glob names, local or on any Beam filesystem (sorted);
    ``FileNotFoundError`` if there are none. Only metadata is read."""
    matched = FileSystems.match([pattern])[0].metadata_list
    local = not _is_remote(pattern)
    files = sorted(m.path for m in matched if not (local and Path(m.path).is_dir()))
    if not files:
        raise FileNotFoundError(f"source path {pattern} matches no file")
    return files


# ---------------------------------------------------------------------------------------------
# Sources: one class per kind


@runtime_checkable
class Source(Protocol):
    """What the job, ``plan`` and the lock ask of an input source; one class per
    ``source.kind`` (:data:`SOURCE_KINDS`), made by :func:`open_source`.

    ``config`` is the manifest's :class:`~steplabel.schemas.manifest.SourceConfig`; ``path``
    replaces ``config.path`` (the launcher passes local paths made absolute). Row positions
    are 0-based in the order Beam reads the source (files sorted, then lines or rows)."""

    kind: ClassVar[str]
    config: Any
    path: str | None

    def check(self) -> None:
        """On the launcher, before the job starts: the input exists (metadata only);
        ``FileNotFoundError`` otherwise."""

    def expand(self, pbegin, *, hf_range_rows: int = HF_RANGE_ROWS):
        """The source's :class:`RawItem` as a PCollection, read by Beam on the workers."""

    def read_local(self) -> list[RawItem]:
        """Every record read here in the driver (small sources, tests; ``limit`` exact)."""

    def estimate_rows(self, *, max_bytes: int = 256 << 20) -> int | None:
        """Records, capped by ``limit``, where that is cheap on the launcher; None otherwise."""

    def count_rows(self) -> int:
        """Records, capped by ``limit``, read here even when that is not cheap (``plan``);
        :class:`RowCountError` when they cannot be counted here."""

    def fingerprint(self) -> dict[str, str]:
        """What pins the input in the lock: file -> SHA-256 (local) or what its filesystem
        reports (remote, :func:`remote_fingerprints`); empty for a pinned hub dataset."""

    def sample(self, indices: list[int], folder: Path):
        """Write the records at ``indices`` to ``folder``; the source config reading them
        (same name and field mapping, no limit)."""


class RowCountError(ValueError):
    """The rows of a source cannot be counted here; the message says why."""


def _capped(count: int, config) -> int:
    return min(count, config.limit) if config.limit else count


def _local_fingerprint(path: str) -> dict[str, str]:
    """SHA-256 of every local file ``path`` (a file, glob or folder) names; files gone since
    the run are left out (``regenerate`` reports them as missing)."""
    paths = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    hashes = {}
    for name in paths:
        p = Path(name)
        if not p.exists():
            continue
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for file in files:
            hashes[str(file)] = sha256_file(file)
    return hashes


def _fingerprint(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    return remote_fingerprints(path) if _is_remote(path) else _local_fingerprint(path)


#: The manifest fields of a sampled source that no longer apply to its sample file.
_SAMPLE_RESETS = dict(limit=None, dataset=None, revision=None, builder=None)


class _FileSource:
    """A source of files (a path or glob on any Beam filesystem) read record by record."""

    kind: ClassVar[str] = ""

    def __init__(self, config, path: str | None = None) -> None:
        self.config = config
        self.path = path or config.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    @property
    def name(self) -> str:
        return self.config.source_name

    def read_file(self, path: str, source_name: str, limit: int | None = None
                  ) -> Iterable[RawItem]:
        raise NotImplementedError

    def check(self) -> None:
        input_files(self.path)

    def fingerprint(self) -> dict[str, str]:
        return _fingerprint(self.path)

    def estimate_rows(self, *, max_bytes: int = 256 << 20) -> int | None:
        if not self.path or _is_remote(self.path):
            return None
        try:
            count = self._cheap_count(max_bytes)
        except (OSError, ValueError, KeyError):  # unreadable here: the job's reading reports it
            return None
        return None if count is None else _capped(count, self.config)

    def _cheap_count(self, max_bytes: int) -> int | None:
        raise NotImplementedError

    def read_first(self, pattern: str) -> Iterable[RawItem]:
        """The first ``limit`` records in file order (one worker reads; limits are small)."""
        left = self.config.limit
        for path in input_files(pattern):
            for item in self.read_file(path, self.name, left):
                yield item
                left -= 1
            if left <= 0:
                return

    def records_at(self, wanted: list[int]) -> Iterable[Any]:
        """The raw records (``RawItem.data``) at the sorted positions ``wanted``, in order."""
        wanted_set, last = set(wanted), wanted[-1] if wanted else -1
        position = 0
        for path in input_files(self.path):
            for item in self.read_file(path, self.name):
                if position in wanted_set:
                    yield item.data
                position += 1
                if position > last:
                    return

    def expand(self, pbegin, *, hf_range_rows: int = HF_RANGE_ROWS):
        start = pbegin | "SourcePath" >> beam.Create([self.path])
        if self.config.limit:
            return start | "ReadFirstRecords" >> beam.FlatMap(self.read_first)
        return self.expand_all(pbegin, start)

    def expand_all(self, pbegin, start):
        raise NotImplementedError


class JsonlSource(_FileSource):
    """JSON Lines files: one record per non-empty line, read as bytes (validation decodes
    them); ``.gz`` and other compressed files by their extension."""

    kind = "jsonl"

    def read_file(self, path: str, source_name: str, limit: int | None = None):
        return _read_lines(path, source_name, limit)

    def expand_all(self, pbegin, start):
        return (start
                | "MatchFiles" >> beam.FlatMap(input_files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadLines" >> beam.FlatMap(_read_lines, self.name))

    def read_local(self) -> list[RawItem]:
        items: list[RawItem] = []
        for file in local_files(self.path):
            with open(file, "rb") as handle:
                for line in handle:
                    if line.strip():
                        items.append(RawItem(self.name, len(items), line.rstrip(b"\r\n")))
        return items[: self.config.limit] if self.config.limit else items

    def _cheap_count(self, max_bytes: int) -> int | None:
        files = input_files(self.path)
        if sum(Path(f).stat().st_size for f in files) > max_bytes or any(
                f.endswith((".gz", ".bz2", ".zst", ".deflate")) for f in files):
            return None
        count = 0
        for file in files:
            with open(file, "rb") as handle:
                count += sum(1 for line in handle if line.strip())
        return count

    def count_rows(self) -> int:
        count = 0
        for path in input_files(self.path):
            with FileSystems.open(path) as handle:
                count += sum(1 for line in iter(handle.readline, b"") if line.strip())
        return _capped(count, self.config)

    def sample(self, indices: list[int], folder: Path):
        """The sampled lines copied byte for byte (bad lines stay bad)."""
        path = Path(folder) / "sample.jsonl"
        with open(path, "wb") as handle:
            for line in self.records_at(indices):
                handle.write(line + b"\n")
        return replace(self.config, path=str(path), name=self.name, **_SAMPLE_RESETS)


class ParquetSource(_FileSource):
    """Parquet files: one record per row, as a dict; read by ``ReadFromParquet`` (split by
    row groups)."""

    kind = "parquet"

    def read_file(self, path: str, source_name: str, limit: int | None = None):
        return _read_parquet_rows(path, source_name, limit)

    def expand_all(self, pbegin, start):
        name = self.name
        rows = pbegin | "ReadParquet" >> beam.io.ReadFromParquet(self.path)
        return rows | "ToItems" >> beam.Map(lambda row: RawItem(name, -1, row))

    def read_local(self) -> list[RawItem]:
        import pyarrow.parquet as pq

        items: list[RawItem] = []
        for file in local_files(self.path):
            for batch in pq.ParquetFile(file).iter_batches():
                for row in batch.to_pylist():
                    items.append(RawItem(self.name, len(items), row))
        return items[: self.config.limit] if self.config.limit else items

    def _cheap_count(self, max_bytes: int) -> int | None:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in input_files(self.path))

    def count_rows(self) -> int:
        import pyarrow.parquet as pq

        count = 0
        for path in input_files(self.path):
            with FileSystems.open(path) as handle:
                count += pq.ParquetFile(handle).metadata.num_rows
        return _capped(count, self.config)

    def sample(self, indices: list[int], folder: Path):
        """The sampled rows in one Parquet file of the first file's schema (inferred when
        the files' schemas differ)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(self.records_at(indices))
        with FileSystems.open(input_files(self.path)[0]) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):  # files of differing schemas
            table = pa.Table.from_pylist(rows)
        path = Path(folder) / "sample.parquet"
        pq.write_table(table, path)
        return replace(self.config, path=str(path), name=self.name, **_SAMPLE_RESETS)


class DatasetsSource:
    """A Hugging Face ``datasets`` source: a folder written by ``save_to_disk``, data files
    loaded with a builder, or a hub dataset pinned to a revision. Opened once per worker
    process (memory-mapped Arrow) and read in ranges of rows."""

    kind: ClassVar[str] = "hf"

    def __init__(self, config, path: str | None = None) -> None:
        self.config = config
        self.path = path or config.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path or self.config.dataset!r})"

    def _is_local_folder(self) -> bool:
        return bool(self.path) and not _is_remote(self.path) and Path(self.path).is_dir()

    def check(self) -> None:
        if not self.path:
            return  # a hub dataset, pinned by its revision
        if self._is_local_folder():
            return
        input_files(self.path)

    def fingerprint(self) -> dict[str, str]:
        return _fingerprint(self.path)  # a hub dataset (no path): its revision pins it

    def expand(self, pbegin, *, hf_range_rows: int = HF_RANGE_ROWS):
        config, path = self.config, self.path
        return (pbegin
                | "SourcePath" >> beam.Create([path])
                | "PlanRanges" >> beam.FlatMap(_hf_ranges, config, hf_range_rows)
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadRanges" >> beam.FlatMap(_hf_read, path, config))

    def read_local(self) -> list[RawItem]:
        name = self.config.source_name
        items = [RawItem(name, index, dict(row))
                 for index, row in enumerate(_load_hf(self.config))]
        return items[: self.config.limit] if self.config.limit else items

    def estimate_rows(self, *, max_bytes: int = 256 << 20) -> int | None:
        """Only a local folder written by ``save_to_disk`` (memory-mapped Arrow: metadata
        only); data files ``datasets`` would first convert, and hub datasets, are None."""
        if not self._is_local_folder():
            return None
        try:
            count = len(_load_hf(self.config, self.path))
        except (OSError, ValueError, KeyError):  # unreadable here: the job's reading reports it
            return None
        return _capped(count, self.config)

    def count_rows(self) -> int:
        try:
            count = len(_open_hf(self.config, self.path))
        except Exception as exc:  # noqa: BLE001 - any failure to open: say so
            raise RowCountError(
                f"cannot count the rows of the datasets source ({exc})") from exc
        return _capped(count, self.config)

    def sample(self, indices: list[int], folder: Path):
        """The sampled rows written as Parquet by ``datasets`` itself: a ``parquet`` source
        of split ``train``."""
        path = Path(folder) / "sample.parquet"
        _open_hf(self.config, self.path).select(indices).to_parquet(str(path))
        return replace(self.config, kind="parquet", path=str(path), split="train",
                       name=self.config.source_name, **_SAMPLE_RESETS)


#: Every source kind the manifest accepts -> its class.
SOURCE_KINDS: dict[str, type] = {cls.kind: cls for cls in (JsonlSource, ParquetSource,
                                                           DatasetsSource)}


def open_source(config, path: str | None = None) -> Source:
    """The :class:`Source` of a manifest's source config (``path`` replaces its path)."""
    try:
        kind = SOURCE_KINDS[config.kind]
    except KeyError:  # pragma: no cover - the manifest model rejects other kinds
        raise ValueError(f"unknown source kind {config.kind!r}") from None
    return kind(config, path)


def check_source(source, path: str | None = None) -> None:
    """On the launcher, before the job starts: the source's files exist (metadata only)."""
    open_source(source, path).check()


def remote_fingerprints(pattern: str) -> dict[str, str]:
    """What pins remote input files in the lock, as Beam's filesystem reports it:
    ``checksum:<FileSystems.checksum>;size:<bytes>`` (GCS: the object's CRC32C; S3: its
    ETag), plus ``;mtime:<seconds>`` (last update) when the filesystem's checksum is only the
    size, as Beam's local filesystem's is. Local files are pinned by SHA-256 instead."""
    pins = {}
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        checksum = FileSystems.checksum(metadata.path)
        pin = f"checksum:{checksum};size:{metadata.size_in_bytes}"
        if str(checksum) == str(metadata.size_in_bytes):
            pin += f";mtime:{metadata.last_updated_in_seconds}"
        pins[metadata.path] = pin
    return pins


def estimate_rows(source, path: str | None = None, *, max_bytes: int = 256 << 20
                  ) -> int | None:
    """Input records (progress, and the local runner's waves), where that is cheap on the
    launcher: Parquet footers, the row count of a local ``datasets`` folder (memory-mapped
    Arrow: metadata only), or non-empty lines of local JSONL files up to ``max_bytes``; None
    otherwise (remote paths, compressed or larger JSONL, hub datasets, data files that
    ``datasets`` would first convert)."""
    return open_source(source, path).estimate_rows(max_bytes=max_bytes)


def read_local_items(source) -> list[RawItem]:
    """Read a local source in the driver (small and medium jobs; keeps ``limit`` exact)."""
    return open_source(source).read_local()


def _load_hf(source, path: str | None = None) -> Iterable[dict]:
    import datasets

    if source.dataset:
        return datasets.load_dataset(source.dataset, revision=source.revision,
                                     split=source.split)
    path = Path(path or source.path)
    if path.is_dir():  # a folder written by Dataset(Dict).save_to_disk
        loaded = datasets.load_from_disk(str(path))
        return loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    builder = source.builder or {".jsonl": "json", ".json": "json", ".parquet": "parquet",
                                 ".csv": "csv"}.get(path.suffix)
    if builder is None:
        raise ValueError(f"cannot tell the datasets builder for {source.path}; set builder")
    return datasets.load_dataset(builder, data_files={source.split: local_files(str(path))},
                                 split=source.split)


def _read_lines(path: str, source_name: str, limit: int | None = None):
    """Non-empty lines of one JSONL file (any Beam filesystem; ``.gz`` and other compressed
    files by their extension), with their line numbers."""
    name = posixpath.basename(path)
    with FileSystems.open(path) as handle:
        for number, line in enumerate(iter(handle.readline, b"")):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield RawItem(source_name, number, line, name)
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        return


def _read_parquet_rows(path: str, source_name: str, limit: int | None = None):
    import pyarrow.parquet as pq

    with FileSystems.open(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches():
            for row in batch.to_pylist():
                yield RawItem(source_name, -1, row)
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        return


_HF_OPEN: dict[tuple, Any] = {}


def _open_hf(source, path: str | None):
    """A ``datasets`` source opened once per worker process (memory-mapped Arrow)."""
    key = (path, source.dataset, source.revision, source.split, source.builder)
    if key not in _HF_OPEN:
        _HF_OPEN[key] = _load_hf(source, path)
    return _HF_OPEN[key]


def _hf_ranges(path: str | None, source, range_rows: int):
    rows = len(_open_hf(source, path))
    if source.limit:
        rows = min(rows, source.limit)
    for start in range(0, rows, range_rows):
        yield start, min(rows, start + range_rows)


def _hf_read(bounds: tuple[int, int], path: str | None, source):
    start, end = bounds
    name = source.source_name
    for offset, row in enumerate(_open_hf(source, path).select(range(start, end))):
        yield RawItem(name, start + offset, dict(row))


class ReadProblems(beam.PTransform):
    """Raw items of a source, read by Beam on the workers (see the module docstring and
    :meth:`Source.expand`).

    ``path`` replaces ``source.path`` (the launcher passes local paths made absolute, since
    workers may run in other folders); ``items`` (tests) are used as they are.
    """

    def __init__(self, source, *, path: str | None = None,
                 items: list[RawItem] | None = None, hf_range_rows: int = HF_RANGE_ROWS) -> None:
        super().__init__()
        self.source = source
        self.path = path or source.path
        self.items = items
        self.hf_range_rows = hf_range_rows

    def expand(self, pbegin):
        if self.items is not None:
            return pbegin | "CreateItems" >> beam.Create(self.items, reshuffle=False)
        return open_source(self.source, self.path).expand(pbegin,
                                                          hf_range_rows=self.hf_range_rows)


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


def validate_item(item: RawItem, *, fields, answer_format: str, manifest_hash: str,
                  grader: Grader, layout: str = "plain") -> tuple[Problem | None, dict | None]:
    """``(problem, None)`` for a good record, ``(None, dead_letter_row)`` for a bad one. The
    gold is what ``grader`` reads from the record (``Grader.parse_gold``). ``layout``
    (``source.layout``): ``humaneval`` and ``mbpp`` records are read as those datasets lay
    them out (:data:`steplabel.annotators.python_tests.LAYOUTS`) into plain ``id``,
    ``question``, ``tests`` records, then validated as such (``fields`` is not used)."""

    def dead(reason: str, error: str, problem_id: str | None = None):
        return None, R.dead_letter(stage="validate", reason=reason, error=error,
                                   problem_id=problem_id, source=item.source,
                                   original=_original_text(item.data),
                                   manifest_hash=manifest_hash)

    record = item.data
    if isinstance(record, bytes):
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError as exc:
            return dead("not_utf8", f"{item.where()}: {exc}")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            return dead("malformed_json", f"{item.where()}: {exc}")
    if not isinstance(record, dict):
        return dead("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if LAYOUTS.get(layout) is not None:
        record, fields = LAYOUTS[layout](record), FieldMapping()

    question, problem = text_field(record, fields.question, "question")
    if problem:
        return dead(problem, f"field {fields.question!r}: {problem.replace('_', ' ')}")
    if fields.id is None:
        problem_id = "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
    else:
        problem_id, problem = text_field(record, fields.id, "id")
        if problem:
            return dead(problem, f"field {fields.id!r}: {problem.replace('_', ' ')}")
    if len(question) > MAX_QUESTION_CHARS:
        return dead("question_too_long", f"{len(question)} characters > {MAX_QUESTION_CHARS}",
                    problem_id)
    gold = grader.parse_gold(record, fields=fields, answer_format=answer_format)
    if isinstance(gold, GoldRejected):
        return dead(gold.reason, gold.error, problem_id)
    original = _original_text(item.data)
    return Problem(problem_id, question, gold, item.source, original), None


class ValidateProblems(beam.PTransform):
    """Validated problems (main output) and dead-letter rows (``dead_letter``), duplicates
    resolved as the module docstring says."""

    def __init__(self, *, fields, answer_format: str, manifest_hash: str,
                 grader: Grader, layout: str = "plain") -> None:
        super().__init__()
        self.fields = fields
        self.layout = layout
        self.answer_format = answer_format
        self.manifest_hash = manifest_hash
        self.grader = grader

    def expand(self, items):
        fields, fmt, mhash, grader = (self.fields, self.answer_format, self.manifest_hash,
                                      self.grader)
        layout = self.layout
        gold_warning = getattr(grader, "gold_warning", None)

        def check(item):
            problem, dead = validate_item(item, fields=fields, answer_format=fmt,
                                          manifest_hash=mhash, grader=grader, layout=layout)
            if dead is not None:
                beam.metrics.Metrics.counter("steplabel", f"dead_letter_{dead['reason']}").inc()
                yield beam.pvalue.TaggedOutput("dead_letter", dead)
                return
            # A grader may warn about a usable gold (python_tests: tests that pass on an empty
            # program cannot tell right from wrong); the problem is labelled, the warning
            # counted (stats.json's warnings name it).
            warning = gold_warning(problem.gold) if gold_warning is not None else None
            if warning is not None:
                beam.metrics.Metrics.counter("steplabel", f"{GOLD_WARNING_PREFIX}{warning}").inc()
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
        yield beam.pvalue.TaggedOutput("dead_letter", R.dead_letter(
            stage="validate", reason=reason,
            error=f"problem id {problem_id!r} appears {len(copies)} times"
            + ("" if same else " with different questions or answers"),
            problem_id=problem_id, source=copy.source, original=copy.original,
            manifest_hash=manifest_hash))
