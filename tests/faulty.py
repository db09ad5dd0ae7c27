"""A scripted policy with the faults of real models, for full-job tests of label truth.

Built on the planted running-sum problems (:mod:`planted`): the policy, the completer and the
judge are one :class:`~fakes.ScriptedEngine`, which cuts samples at ``max_tokens`` (finish
reason ``"length"``) and applies stop strings as vLLM does. Faults, each a rate in [0, 1] decided
by a hash of the request seed and the sample index (so reruns repeat them):

- ``policy_cut``: a policy sample rambles on and is cut off at ``max_tokens``;
- ``policy_no_answer``: a policy sample ends without a final answer;
- ``rollout_cut``: a rollout from a step prefix rambles on and is cut off;
- ``reanswer``: a continuation of a *complete* solution writes a new, wrong answer (a re-answer
  that would relabel the last step if anything rolled out from it);
- noisy success rates: a clean prefix succeeds with a rate in ``success_range`` drawn per
  prefix (not the exact 1-correct-1-incorrect anchoring of the unit tests);
- ``planted_error_rate``: a policy sample carries a planted error.

The judge (a prompt with ``<paragraph_0>``) names the true first error with probability
``judge_accuracy``, else the step after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fakes import ScriptedEngine
from planted import ANSWER_PREFIX, problem_from_question, split_prompt, unit_hash

from steplabel.engines.base import GenerationRequest

RAMBLE = " and then we check it again" * 200
_PARAGRAPH_RE = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.S)


@dataclass(frozen=True)
class FaultyPolicy:
    policy_cut: float = 0.0
    policy_no_answer: float = 0.0
    rollout_cut: float = 0.0
    reanswer: float = 0.0
    success_range: tuple[float, float] = (0.3, 0.9)
    planted_error_rate: float = 0.5
    judge_accuracy: float = 1.0

    def __call__(self, request: GenerationRequest, index: int) -> str:
        # vLLM seeds child i of a request with seed + i: a sample depends on that seed only.
        seed = (request.seed or 0) + index
        if "<paragraph_0>" in request.prompt:
            return self._judge(request, seed)
        chat, response = split_prompt(request.prompt)
        problem = problem_from_question(chat)
        correct = problem.text()
        if response.strip() in ("", "Step 1:"):  # a policy sample of a whole solution
            if unit_hash(seed, "policy_cut") < self.policy_cut:
                return response_tail(response, problem.text()) + RAMBLE
            error_at = -1
            if unit_hash(seed, "planted") < self.planted_error_rate:
                error_at = int(unit_hash(seed, "where") * problem.num_steps)
            text = response_tail(response, problem.text(error_at))
            if unit_hash(seed, "no_answer") < self.policy_no_answer:
                text = text[: text.rindex(ANSWER_PREFIX)].rstrip()
            return text
        complete = ANSWER_PREFIX in response
        if complete:  # a rollout from a finished solution
            if unit_hash(seed, "reanswer") < self.reanswer:
                return f"\nWait, let me redo this.\n{ANSWER_PREFIX}{int(problem.gold) + 7}"
            return ""
        if unit_hash(seed, "rollout_cut") < self.rollout_cut:
            return RAMBLE
        if not correct.startswith(response.rstrip()):  # after an error: stays wrong
            return problem.continuation(response, outcome="incorrect", pick=seed)
        low, high = self.success_range
        rate = low + (high - low) * unit_hash(response, "rate")  # a per-prefix success rate
        outcome = "correct" if unit_hash(seed, "outcome") < rate else "incorrect"
        return problem.continuation(response, outcome=outcome, pick=seed)

    def _judge(self, request: GenerationRequest, seed: int) -> str:
        steps = [body for _, body in _PARAGRAPH_RE.findall(request.prompt)]
        problem = problem_from_question(request.prompt)
        truth = problem.true_first_error([s.strip() for s in steps])
        if unit_hash(seed, "judge") >= self.judge_accuracy:
            truth = min(truth + 1, len(steps) - 1) if truth >= 0 else 0
        return f"The earliest wrong paragraph is \\boxed{{{truth}}}."


def response_tail(response: str, text: str) -> str:
    """The part of solution ``text`` after what the prompt already holds (``response``)."""
    return text[len(response):] if text.startswith(response) else text


def engine(policy: FaultyPolicy) -> ScriptedEngine:
    return ScriptedEngine(policy, model_id="scripted-faulty")


# ``kind: custom`` factories (``factory: faulty:<name>``) for full jobs.

def all_rollouts_cut_off(config) -> ScriptedEngine:
    """Correct policy solutions; every rollout from a step prefix is cut off at max_tokens."""
    return engine(FaultyPolicy(rollout_cut=1.0, planted_error_rate=0.0))


def reanswering_continuations(config) -> ScriptedEngine:
    """Correct policy solutions, every prefix rollout correct, and continuations of a complete
    solution that always re-answer wrongly."""
    return engine(FaultyPolicy(reanswer=1.0, planted_error_rate=0.0, success_range=(1.0, 1.0)))


def realistic(config) -> ScriptedEngine:
    """Every fault at once, at rates like the demo's on the embedded model."""
    return engine(FaultyPolicy(policy_cut=0.2, policy_no_answer=0.1, rollout_cut=0.25,
                               reanswer=0.5, judge_accuracy=0.7))
