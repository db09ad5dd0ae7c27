"""Versioned prompt templates, referenced by id and recorded in provenance with their hash.

Templates are files in ``schemas/prompts/<id>.txt`` with ``str.format`` fields. A template's
id changes whenever its meaning changes; its SHA-256 pins the exact text. They live with the
record shapes because the manifest refers to them by id and checks the id when it is read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROMPT_DIR = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, **fields: str) -> str:
        return self.text.format(**fields)


@lru_cache(maxsize=None)
def load_template(template_id: str) -> PromptTemplate:
    # Looked up among the known ids, never used as a path: an id from a manifest such as
    # "../x", one with a NUL byte or one too long for the filesystem is just unknown.
    known = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
    if not isinstance(template_id, str) or template_id not in known:
        raise ValueError(f"prompt template must be one of {', '.join(known)}, got {template_id!r}")
    path = PROMPT_DIR / f"{template_id}.txt"
    return PromptTemplate(template_id, path.read_text(encoding="utf-8").rstrip("\n"))
