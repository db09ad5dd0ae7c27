"""Pluggable step splitters, chosen by name.

A splitter turns a solution text into a list of non-empty steps and knows how to join a prefix
of steps back into text (the prefix a completer continues from). Its name and parameters go into
every record's provenance (:meth:`Splitter.provenance`).

- ``paragraphs``: blank-line separated paragraphs (Qwen, ProcessBench, openr);
- ``lines``: one step per non-empty line (PRM800K);
- ``step_markers``: ``Step k:`` markers (Math-Shepherd); text before the first marker, if any,
  joins the first step;
- ``python_statements``: code solutions, the reasoning paragraphs then the last ```python
  block's top-level statements (:mod:`.code_splitting` says why).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

from steplabel.annotators.code_splitting import split_code_solution


@dataclass(frozen=True)
class Splitter:
    name: str
    separator: str
    params: dict = field(default_factory=dict)
    _split: Callable[[str], list[str]] | None = field(default=None, repr=False, compare=False)

    def split(self, text: str) -> list[str]:
        """Non-empty steps, stripped of surrounding whitespace."""
        assert self._split is not None
        return [s for s in (piece.strip() for piece in self._split(text)) if s]

    def join(self, steps: list[str]) -> str:
        """Text of consecutive steps, as the completer should see a prefix."""
        return self.separator.join(steps)

    def provenance(self) -> str:
        return json.dumps({"name": self.name, "params": self.params}, sort_keys=True)


def normalize_newlines(text: str) -> str:
    """Windows line ends (``\\r\\n``, and stray runs like ``\\r\\r\\n``) as ``\\n``. Replacing only
    ``\\r\\n`` once is not idempotent (``\\r\\r\\n`` leaves a new ``\\r\\n``), and then splitting
    the joined steps again would give other steps. Linear time (no regex backtracking over long
    runs of ``\\r``)."""
    if "\r" not in text:
        return text
    lines = text.split("\n")
    return "\n".join([line.rstrip("\r") for line in lines[:-1]] + lines[-1:])


def _paragraphs(text: str) -> list[str]:
    return re.split(r"\n[ \t]*\n", normalize_newlines(text))


def _lines(text: str) -> list[str]:
    return normalize_newlines(text).split("\n")


_STEP_MARKER = re.compile(r"(?im)^[ \t]*(?=step\s*\d+\s*[:.)])")


def _step_markers(text: str) -> list[str]:
    text = normalize_newlines(text)
    starts = [m.start() for m in _STEP_MARKER.finditer(text)]
    if not starts:
        return [text]
    pieces = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    if text[: starts[0]].strip():
        pieces[0] = text[: starts[0]] + pieces[0]
    return pieces


SPLITTERS: dict[str, Callable[[], Splitter]] = {
    "paragraphs": lambda: Splitter("paragraphs", "\n\n", {}, _paragraphs),
    "lines": lambda: Splitter("lines", "\n", {}, _lines),
    "step_markers": lambda: Splitter("step_markers", "\n", {"marker": "Step k:"}, _step_markers),
    "python_statements": lambda: Splitter(
        "python_statements", "\n\n", {"program": "last python block, top-level statements"},
        lambda text: split_code_solution(normalize_newlines(text))),
}


def get_splitter(name: str) -> Splitter:
    try:
        return SPLITTERS[name]()
    except KeyError:
        raise ValueError(
            f"splitter must be one of {', '.join(sorted(SPLITTERS))}, got {name!r}"
        ) from None
