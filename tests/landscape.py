"""A scripted policy with an arbitrary Monte Carlo landscape over solution prefixes.

:class:`LandscapePolicy` is a ``ScriptedEngine`` responder for planted problems
(:mod:`planted`). The solution prefix of each request (the text after the assistant turn) gets a
*class* from a hash of ``(seed, prefix)``, drawn with the policy's weights, whether or not the
prefix holds an error: the landscape may be non-monotone, as noisy estimates on real models are
(a prefix past an error can still reach the right answer; a clean one can look hopeless). The
class decides every sample of a request from that prefix:

- ``zero``: every sample finishes with a wrong answer (MC 0);
- ``one``: every sample finishes with the right answer (MC 1);
- ``mixed``: sample ``seed % n`` right, the next one wrong, the others by a coin (0 < MC < 1);
- ``cut``: every sample runs past ``max_tokens`` (the engine cuts it: no known rollout);
- ``mixed_cut``: like ``mixed`` for the two anchored samples, the others cut off;
- ``few_known``: sample ``seed % n`` wrong, every other one cut off (MC 0 from one rollout);
- ``one_known``: sample ``seed % n`` right, every other one cut off (MC 1 from one rollout).

Continuations are the planted problem's (:meth:`planted.PlantedProblem.continuation`); a right
answer after a wrong step keeps the wrong steps and states the gold answer. A cut-off sample
starts with ``max_tokens + 1`` filler tokens, so the engine's cut leaves no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fakes import ScriptedEngine
from planted import ANSWER_PREFIX, problem_from_question, split_prompt, unit_hash

from steplabel.engines.base import GenerationRequest

CLASSES = ("zero", "one", "mixed", "cut", "mixed_cut", "few_known", "one_known")
FILLER = " hmm"
_FINAL_ANSWER = re.compile(re.escape(ANSWER_PREFIX) + r"-?\d+\s*$")


def is_complete(response: str) -> bool:
    """True when a solution prefix already ends with its final answer line."""
    return _FINAL_ANSWER.search(response) is not None


@dataclass(frozen=True)
class LandscapePolicy:
    """ScriptedEngine responder (see the module docstring).

    ``weights``: one weight per class of :data:`CLASSES` (any non-negative numbers, not all 0);
    ``root``: the class of the question's own prefix (the pre-filter request, whose solution
    prefix is one of ``root_prefixes``), None to draw it like any other.
    """

    seed: int = 0
    weights: tuple[float, ...] = (1, 1, 2, 0, 0, 0, 0)
    root: str | None = "mixed"
    root_prefixes: tuple[str, ...] = ("", "Step 1:")

    def __post_init__(self) -> None:
        if len(self.weights) != len(CLASSES) or sum(self.weights) <= 0:
            raise ValueError(f"weights must be {len(CLASSES)} numbers, not all 0")

    def class_of(self, response: str, *, is_root: bool) -> str:
        if is_root and self.root is not None:
            return self.root
        x = unit_hash(self.seed, response, "class") * sum(self.weights)
        for cls, weight in zip(CLASSES, self.weights):
            if x < weight:
                return cls
            x -= weight
        return CLASSES[-1]

    def outcome(self, cls: str, seed: int, index: int, n: int) -> str:
        anchor = seed % n
        if cls in ("zero", "one", "cut"):
            return {"zero": "incorrect", "one": "correct", "cut": "cut"}[cls]
        if cls in ("few_known", "one_known"):
            if index != anchor:
                return "cut"
            return "incorrect" if cls == "few_known" else "correct"
        if index == anchor:
            return "correct"
        if n >= 2 and index == (anchor + 1) % n:
            return "incorrect"
        if cls == "mixed_cut":
            return "cut"
        return "correct" if unit_hash(seed, index, "outcome") < 0.5 else "incorrect"

    def __call__(self, request: GenerationRequest, index: int) -> str:
        chat, response = split_prompt(request.prompt)
        problem = problem_from_question(chat)
        seed = request.seed or 0
        cls = self.class_of(response, is_root=response in self.root_prefixes)
        outcome = self.outcome(cls, seed, index, request.n)
        pick = int(unit_hash(seed, index, "where") * 2**32)
        if outcome == "cut":
            rest = problem.continuation(response, outcome="correct", pick=pick)
            return FILLER * (request.max_tokens + 1) + rest
        rest = problem.continuation(response, outcome=outcome, pick=pick)
        gold = int(problem.gold)
        return _with_answer(response, rest, str(gold if outcome == "correct" else gold + 1))

    def engine(self, **kwargs) -> ScriptedEngine:
        return ScriptedEngine(self, **kwargs)


def _with_answer(response: str, rest: str, answer: str) -> str:
    """``rest`` (the continuation of ``response``) with its final answer set to ``answer``,
    appended when the continuation states none."""
    full = response + rest
    match = _FINAL_ANSWER.search(full)
    if match is None or match.start() + len(ANSWER_PREFIX) < len(response):
        return rest + f"\n{ANSWER_PREFIX}{answer}"
    return full[len(response): match.start() + len(ANSWER_PREFIX)] + answer
