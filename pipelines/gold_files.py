"""Reading gold and answers files for ``steplabel evaluate``: the file side of
:mod:`steplabel.annotators.evaluation` (which parses text and never opens a file).

The launcher only hashes the files (:func:`sha256_file`); the workers read them through Beam
``FileSystems`` (local or remote paths) and check the hash the launcher pinned
(:func:`read_input_text`). :func:`load_gold_file` and :func:`load_answers_file` read a local file
directly, for tools and tests.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from steplabel.annotators.evaluation.answers import AnswerTable, answers_from_text
from steplabel.annotators.evaluation.gold import GoldFileError, parse_gold_text
from steplabel.annotators.evaluation.items import GoldItem, GoldReject

log = logging.getLogger(__name__)


def source_name(path: str | Path) -> str:
    """The source name of a gold file: its file name without the extension."""
    return Path(path).stem


def _open_raw(path: str):
    """A file's bytes as stored, on any filesystem (no decompression by file name)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def is_file(path: str) -> bool:
    return FileSystems.exists(path) if "://" in path else Path(path).is_file()


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes as stored, on any filesystem."""
    digest = hashlib.sha256()
    with _open_raw(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InputFile:
    """A gold or answers file as the pipeline gets it: its path (absolute when local, since
    workers may run in other folders), the content hash the spec pinned and, for a gold file,
    its source name."""

    path: str
    sha256: str
    source: str | None = None


def read_input_text(file: InputFile, *, what: str) -> str:
    """A gold or answers file's text, read through Beam ``FileSystems`` (any filesystem);
    :class:`GoldFileError` when it cannot be read, is not UTF-8, or is not the content the
    spec pinned (edited after the launcher hashed it)."""
    try:
        with _open_raw(file.path) as handle:
            data = handle.read()
    except Exception as exc:  # noqa: BLE001 - every filesystem has its own errors
        raise GoldFileError(f"{what} {file.path} cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise GoldFileError(f"{what} {file.path} changed after the evaluation started (its "
                            "content is not what the launcher hashed); run the evaluation again")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GoldFileError(f"{what} {file.path} is not UTF-8: {exc}") from None


def read_gold_file(file: InputFile, *, answer_field: str = "answer",
                   answer_format: str = "plain") -> tuple[list[GoldItem], list[GoldReject]]:
    """One gold file's items and rejects (runs on workers)."""
    text = read_input_text(file, what="gold file")
    return parse_gold_text(text, source=file.source, answer_field=answer_field,
                           answer_format=answer_format)


def read_answers(file: InputFile, *, answer_field: str = "answer",
                 answer_format: str = "plain") -> AnswerTable:
    """The answers file's table (runs on a worker; malformed JSONL lines count as unusable)."""
    text = read_input_text(file, what="answers file")
    table = answers_from_text(text, what=f"answers file {file.path}", answer_field=answer_field,
                              answer_format=answer_format)
    if table.unusable:
        log.warning("answers file %s: %d records without a usable answer, id or problem",
                    file.path, table.unusable)
    return table


def _read_local_text(path: str | Path, *, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldFileError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise GoldFileError(f"{what} {path} is not UTF-8: {exc}") from None
    except IsADirectoryError:
        raise GoldFileError(f"{what} {path} is a directory, not a file") from None


def load_gold_file(
    path: str | Path,
    *,
    source: str | None = None,
    answer_field: str = "answer",
    answer_format: str = "plain",
) -> tuple[list[GoldItem], list[GoldReject]]:
    """Read one local gold file (JSON list or JSONL); ``source`` defaults to the file's stem."""
    text = _read_local_text(path, what="gold file")
    return parse_gold_text(text, source=source or source_name(path), answer_field=answer_field,
                           answer_format=answer_format)


def load_answers_file(path: str | Path, *, answer_field: str = "answer",
                      answer_format: str = "plain") -> AnswerTable:
    """Read a local answers file (JSON list or JSONL) into an :class:`AnswerTable`; malformed
    JSONL lines count as unusable."""
    return answers_from_text(_read_local_text(path, what="answers file"),
                             what=f"answers file {path}", answer_field=answer_field,
                             answer_format=answer_format)
