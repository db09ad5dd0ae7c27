"""Versioned prompt templates, referenced by id and recorded in provenance with their hash.

Templates are files in ``annotators/prompts/<id>.txt`` with ``str.format`` fields. A template's
id changes whenever its meaning changes; its SHA-256 pins the exact text.
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


@dataclass(frozen=True)
class SolutionPrompt:
    """How a policy or completer sees a problem.

    ``chat_prompt`` is the rendered chat up to the start of the assistant's reply; the solution
    text is everything after it, beginning with ``response_prefix`` (e.g. ``"Step 1:"``, a
    prefill that makes small models follow the step format).
    """

    chat_prompt: str
    response_prefix: str = ""

    def for_sampling(self) -> str:
        """Prompt from which the policy samples whole solutions."""
        return self.chat_prompt + self.response_prefix

    def for_continuation(self, solution_prefix: str, separator: str) -> str:
        """Prompt from which a completer continues a solution after ``solution_prefix``."""
        return self.chat_prompt + solution_prefix + separator


def build_solution_prompt(engine, template: PromptTemplate, question: str,
                          response_prefix: str = "") -> SolutionPrompt:
    """Render ``template`` for ``question`` with the engine's own chat template."""
    from steplabel.engines.base import ChatMessage

    chat = engine.apply_chat_template([ChatMessage("user", template.render(question=question))])
    return SolutionPrompt(chat, response_prefix)
