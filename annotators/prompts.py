"""How a policy or completer sees a problem: a versioned prompt template rendered with the
engine's chat template. The templates themselves (files referenced by id, recorded with their
hash) are :mod:`steplabel.schemas.templates`.
"""

from __future__ import annotations

from dataclasses import dataclass

from steplabel.engines.base import ChatMessage
from steplabel.schemas.templates import PromptTemplate, load_template

__all__ = ["PromptTemplate", "SolutionPrompt", "build_solution_prompt", "load_template"]


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
    chat = engine.apply_chat_template([ChatMessage("user", template.render(question=question))])
    return SolutionPrompt(chat, response_prefix)
