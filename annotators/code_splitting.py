"""Steps of a code solution: the reasoning paragraphs, then the program's top-level statements.

Why this split. A step label says whether the solution is still on a right track after that
step, and Monte Carlo and OmegaPRM estimate it by completing the solution from the prefix.
Top-level statements (an import, a constant, a helper function, the entry function) are the
smallest pieces of a program that are each whole: every prefix ending at one is valid Python
with an open fence, from which a completer continues writing code, and a first error points at
one definition, the unit a reviewer reads. Lines would cut function bodies into prefixes that
are not programs and multiply the rollouts per solution; whole programs would give one label
for all the code. The price: a program that is one function is one step (its reasoning
paragraphs still give the earlier steps).

The program is the last fenced ```` ```python ```` block (the one :mod:`.python_tests` runs);
text before it is split into paragraphs, as is any text after it. Comments and decorators go
with the statement below them (all lines after the previous statement's end), trailing comments
with the last statement; statements sharing a line (``a = 1; b = 2``) stay one step. The opening
fence begins the first code step and the closing fence ends the last, so joining steps with
blank lines gives the same program (blank lines between top-level statements are valid Python)
and splitting that again gives the same steps. A program that does not parse is split at blank
lines instead.
"""

from __future__ import annotations

import ast
import re

#: The last fenced python block: opening fence line, body, closing fence line.
_BLOCK_RE = re.compile(r"(?m)^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n(.*?)^[ \t]*```[ \t]*$",
                       re.DOTALL)
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")


def _paragraphs(text: str) -> list[str]:
    return _BLANK_LINE_RE.split(text)


def statement_chunks(program: str) -> list[str]:
    """``program`` cut before each top-level statement (comments and decorators above a
    statement belong to it); at blank lines when it does not parse."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return _paragraphs(program)
    lines = program.split("\n")
    ends: list[int] = []  # last line (1-based) of each chunk
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if ends and start <= ends[-1]:  # shares a line with the previous statement
            ends[-1] = max(ends[-1], node.end_lineno or node.lineno)
        else:
            ends.append(node.end_lineno or node.lineno)
    if not ends:
        return [program]
    ends[-1] = len(lines)  # trailing comments stay with the last statement
    chunks, begin = [], 0
    for end in ends:
        chunks.append("\n".join(lines[begin:end]))
        begin = end
    return chunks


def split_code_solution(text: str) -> list[str]:
    """Steps (not yet stripped) of a solution whose newlines are ``\\n``: paragraphs before the
    last ```` ```python ```` block, its top-level statements (the first carrying the opening
    fence, the last the closing one), then paragraphs after it. Without a block: paragraphs."""
    blocks = list(_BLOCK_RE.finditer(text))
    if not blocks:
        return _paragraphs(text)
    block = blocks[-1]
    body_start, body_end = block.span(1)
    opening = text[block.start():body_start]  # "```python\n"
    closing = text[body_end:block.end()]  # "```"
    chunks = [c for c in statement_chunks(text[body_start:body_end].rstrip("\n")) if c.strip()]
    if not chunks:
        code = [opening + closing]
    else:
        chunks[0] = opening.lstrip() + chunks[0].lstrip("\n")
        chunks[-1] = chunks[-1].rstrip() + "\n" + closing.strip()
        code = chunks
    return _paragraphs(text[:block.start()]) + code + _paragraphs(text[block.end():])


_OPENING_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n")


def code_step_flags(steps: list[str]) -> list[bool]:
    """Which steps are code: from a step that opens a ```` ```python ```` fence through the
    step whose last line closes it (as :func:`split_code_solution` cuts them), so that ``show``
    and the HTML report print them as code (monospaced, indentation kept)."""
    flags, inside = [], False
    for step in steps:
        opens = bool(_OPENING_FENCE_RE.match(step)) and not inside
        inside = inside or opens
        flags.append(inside)
        if inside and step.rstrip().endswith("```") and (not opens or step.count("```") >= 2):
            inside = False
    return flags
