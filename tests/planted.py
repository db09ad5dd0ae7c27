"""A scripted policy whose solutions carry a planted first error, for exact annotator tests.

A :class:`PlantedProblem` is a running sum: "Start with 7. Add 3, 5, 2 one at a time." Its
correct solution has one step per addend, ``Step j: a + d = b.``, one per line, and the last step
ends with a line ``The answer is: N``. The solution with a planted error at step ``e`` writes
``b + 1`` at step ``e`` and carries the wrong running value on, so its answer is wrong.

:class:`PlantedPolicy` is a ``ScriptedEngine`` responder. It reads the question from the chat
part of the prompt and the solution prefix from the part after ``<|assistant|>\\n``, then:

- **clean prefix** (a text prefix of the correct solution, so it holds no error yet, at step or
  token grain): each sample is correct, incorrect or unknown, decided by a hash of
  ``(request.seed, sample_index)``. Correct samples finish the correct solution; incorrect ones
  finish a solution with an error planted after the prefix (position also from the hash);
  unknown ones finish correctly but state an answer the grader cannot read.
  With ``guarantee_mixed`` (the default) and ``n >= 2``, sample ``seed % n`` is always correct
  and sample ``seed % n + 1`` always incorrect, so a clean prefix has ``0 < MC < 1`` exactly and
  tests can be exact;
- **prefix containing an error**: never correct (incorrect or, by the same hash, unknown);
- **complete prefix** (the whole solution is already there): an empty continuation, so the
  rollout is graded by the solution's own final answer.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from fakes import ScriptedEngine

from steplabel.annotators.prompts import SolutionPrompt
from steplabel.engines.base import ChatMessage, GenerationRequest

ASSISTANT_MARKER = "<|assistant|>\n"
ANSWER_PREFIX = "The answer is: "
#: An answer the grader reports as unknown (brace nesting deeper than it parses), instantly.
UNKNOWN_ANSWER = "{" * 30 + "0" + "}" * 30

_QUESTION_RE = re.compile(r"Start with (-?\d+)\. Add ([\d, ]+) one at a time\.")


@dataclass(frozen=True)
class PlantedProblem:
    """A running-sum problem; ``num_steps`` steps, one per addend."""

    problem_id: str
    start: int
    addends: tuple[int, ...]

    @classmethod
    def make(cls, problem_id: str, *, num_steps: int, rng_seed: int = 0) -> "PlantedProblem":
        rng = random.Random(f"{problem_id}/{rng_seed}")
        return cls(problem_id, rng.randint(1, 50),
                   tuple(rng.randint(1, 99) for _ in range(num_steps)))

    @property
    def num_steps(self) -> int:
        return len(self.addends)

    @property
    def question(self) -> str:
        return (f"Start with {self.start}. Add {', '.join(map(str, self.addends))} one at a "
                f"time. What is the total?")

    @property
    def gold(self) -> str:
        return str(self.start + sum(self.addends))

    def steps(self, error_at: int = -1, *, answer_error: bool = False) -> list[str]:
        """Solution steps; ``error_at`` (0-based, -1 none) plants the first error there;
        ``answer_error`` keeps every step right but states a wrong final answer."""
        value, out = self.start, []
        for j, d in enumerate(self.addends):
            after = value + d + (1 if j == error_at else 0)
            out.append(f"Step {j + 1}: {value} + {d} = {after}.")
            value = after
        out[-1] += f"\n{ANSWER_PREFIX}{value + (1 if answer_error else 0)}"
        return out

    def text(self, error_at: int = -1, *, answer_error: bool = False) -> str:
        return "\n".join(self.steps(error_at, answer_error=answer_error))

    def true_first_error(self, steps: list[str]) -> int:
        """Index of the first step that differs from the correct solution's, -1 if none."""
        correct = self.steps()
        for j, step in enumerate(steps):
            if j >= len(correct) or step != correct[j]:
                return j
        return -1

    def prompt(self, engine: ScriptedEngine, response_prefix: str = "") -> SolutionPrompt:
        chat = engine.apply_chat_template([ChatMessage("user", self.question)])
        return SolutionPrompt(chat, response_prefix)

    # -- what the policy writes --------------------------------------------------------------

    def continuation(self, response: str, *, outcome: str, pick: int) -> str:
        """The policy's continuation of solution prefix ``response`` for one sample."""
        correct, wrong_steps, wrong_answer = _variants(self)
        if response.rstrip() == correct or response.rstrip() in wrong_steps \
                or response.rstrip() == wrong_answer:
            return ""  # complete: nothing to add
        if correct.startswith(response):
            target = correct
            if outcome == "incorrect":
                valid = [v for v in wrong_steps if v.startswith(response)]
                if not valid and wrong_answer.startswith(response):
                    valid = [wrong_answer]
                if valid:
                    target = valid[pick % len(valid)]
        else:
            matches = [v for v in (*wrong_steps, wrong_answer) if v.startswith(response)]
            if not matches:
                return f"{ANSWER_PREFIX}{int(self.gold) + 1}"
            target = matches[0]
        rest = target[len(response):]
        if outcome == "unknown" and ANSWER_PREFIX in rest:
            rest = rest[: rest.rindex(ANSWER_PREFIX)] + ANSWER_PREFIX + UNKNOWN_ANSWER
        return rest


@lru_cache(maxsize=4096)
def _variants(problem: PlantedProblem) -> tuple[str, tuple[str, ...], str]:
    return (problem.text(),
            tuple(problem.text(j) for j in range(problem.num_steps)),
            problem.text(answer_error=True))


@lru_cache(maxsize=4096)
def problem_from_question(chat: str) -> PlantedProblem:
    match = _QUESTION_RE.search(chat)
    if match is None:
        raise ValueError(f"not a planted question: {chat[:80]!r}")
    addends = tuple(int(x) for x in match.group(2).split(","))
    return PlantedProblem("parsed", int(match.group(1)), addends)


def split_prompt(prompt: str) -> tuple[str, str]:
    """(chat part, solution prefix) of a prompt rendered by ScriptedEngine's chat template."""
    chat, marker, response = prompt.partition(ASSISTANT_MARKER)
    if not marker:
        raise ValueError("prompt has no assistant turn")
    return chat, response


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class PlantedPolicy:
    """ScriptedEngine responder for planted problems (see the module docstring).

    ``success_rate`` in [0, 1]: chance a clean-prefix sample is correct (1: all, 0: none).
    ``guarantee_mixed``: with ``0 < success_rate < 1`` and ``n >= 2``, one sample per request is
    always correct and one always incorrect (exact tests). ``unknown_rate``: chance a sample
    (other than the two guaranteed ones) states an ungradable answer.
    """

    success_rate: float = 0.5
    guarantee_mixed: bool = True
    unknown_rate: float = 0.0

    def outcome(self, seed: int | None, index: int, n: int) -> str:
        seed = 0 if seed is None else seed
        anchored = self.guarantee_mixed and n >= 2 and 0.0 < self.success_rate < 1.0
        if anchored and index == seed % n:
            return "correct"
        if anchored and index == (seed % n + 1) % n:
            return "incorrect"
        if self.unknown_rate > 0 and unit_hash(seed, index, "unknown") < self.unknown_rate:
            return "unknown"
        return "correct" if unit_hash(seed, index, "outcome") < self.success_rate else "incorrect"

    def __call__(self, request: GenerationRequest, index: int) -> str:
        chat, response = split_prompt(request.prompt)
        problem = problem_from_question(chat)
        outcome = self.outcome(request.seed, index, request.n)
        pick = int(unit_hash(request.seed, index, "where") * 2**32)
        return problem.continuation(response, outcome=outcome, pick=pick)

    def engine(self, **kwargs) -> ScriptedEngine:
        return ScriptedEngine(self, **kwargs)
