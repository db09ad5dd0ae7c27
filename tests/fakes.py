"""Scripted engines for fast unit tests: the one seam annotators talk through, faked."""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Callable, Sequence

import interegular

from steplabel.engines.base import ChatMessage, GenerationRequest, GenerationResult

Responder = Callable[[GenerationRequest, int], str]

_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def fake_tokens(text: str) -> list[str]:
    """Whitespace-delimited 'tokens' whose concatenation is the text."""
    return _TOKEN_RE.findall(text)


class ScriptedEngine:
    """Answers every request with ``respond(request, sample_index)``, as a real engine would.

    Like vLLM: a sample longer than ``request.max_tokens`` (fake tokens) is cut there with
    finish reason ``"length"``; a stop string ends a sample (``"stop"``) and is not returned.
    With ``request.choices`` (constrained decoding) a sample is the first choice that the
    scripted text starts with, else a choice picked by the seed (a constrained model always
    answers within the choices, whatever it would have written). With ``request.regex`` the
    scripted text is bent to the pattern (:func:`constrain_to_regex`), then cut at
    ``max_tokens``: a finished sample matches the pattern whole, a cut one is a prefix of a
    match with finish reason ``"length"``.
    Records every request in ``requests``; reports prefix-cache hits as the longest common
    token prefix with any earlier prompt (like vLLM's automatic prefix caching, at token grain).
    """

    def __init__(self, respond: Responder, *, model_id: str = "scripted", delay_s: float = 0.0):
        self.respond = respond
        self.model_id = model_id
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self._seen: list[list[str]] = []

    @property
    def rollouts(self) -> int:
        return sum(r.n for r in self.requests)

    def _cached(self, tokens: list[str]) -> int:
        best = 0
        for seen in self._seen:
            n = 0
            for a, b in zip(seen, tokens):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        prompt_tokens = fake_tokens(request.prompt)
        cached = self._cached(prompt_tokens)
        self._seen.append(prompt_tokens)
        texts, finish = [], []
        for i in range(request.n):
            text = self.respond(request, i)
            if request.choices:
                text = _constrained(text, request.choices, (request.seed or 0) + i)
            elif request.regex is not None:
                text = constrain_to_regex(text, request.regex)
            tokens = fake_tokens(text)
            cut = len(tokens) > request.max_tokens
            if cut:
                text = "".join(tokens[:request.max_tokens])
            stopped = False
            for stop in request.stop:
                if stop in text:
                    text, stopped = text.split(stop, 1)[0], True
            texts.append(text)
            finish.append("length" if cut and not stopped else "stop")
        texts = tuple(texts)
        return GenerationResult(
            texts=texts,
            generated_tokens=tuple(len(fake_tokens(t)) for t in texts),
            finish_reasons=tuple(finish),
            prompt_tokens=len(prompt_tokens),
            cached_prompt_tokens=cached,
        )

    def apply_chat_template(self, messages: Sequence[ChatMessage], *,
                            add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")

    def token_pieces(self, text: str) -> list[str]:
        return fake_tokens(text)


def _constrained(text: str, choices: Sequence[str], seed: int) -> str:
    stripped = text.lstrip()
    fitting = [c for c in choices if stripped.startswith(c)]
    if fitting:
        return max(fitting, key=len)
    return choices[seed % len(choices)]


@functools.lru_cache(maxsize=64)
def _regex_automaton(pattern: str):
    """``(fsm, distance)``: the pattern's automaton (interegular, the library outlines uses to
    turn a regex into the automaton a constrained decoder walks) and, for every live state (one
    from which a whole match can still be reached), the fewest characters to an accepting one."""
    fsm = interegular.parse_pattern(pattern).to_fsm()
    incoming: dict = {}
    for state, moves in fsm.map.items():
        for target in moves.values():
            incoming.setdefault(target, set()).add(state)
    distance = {state: 0 for state in fsm.finals}
    frontier = list(fsm.finals)
    while frontier:
        later = []
        for state in frontier:
            for before in incoming.get(state, ()):
                if before not in distance:
                    distance[before] = distance[state] + 1
                    later.append(before)
        frontier = later
    return fsm, distance


def constrain_to_regex(text: str, pattern: str) -> str:
    """The scripted ``text`` as a model under a regex constraint would write it: always a
    prefix of a match, and a whole match when it ends (the constraint forbids the end before).

    The model writes its scripted characters while the pattern allows them; where the pattern
    allows exactly one character (literal parts: ``Paragraph 1: ``, ``\\boxed{``) it writes
    that one without spending the script; a scripted character the pattern forbids is written
    in its other letter case if that fits (``\\boxed{Correct}`` becomes ``correct``), else
    dropped at a choice point (the model's next preference is its next character). It stops
    where the text is a whole match and the next scripted character does not fit (or the
    script is spent); a script spent before that is finished by the shortest continuation (the
    lowest character on ties): the model cannot stop until the form is complete."""
    fsm, distance = _regex_automaton(pattern)
    explicit = {c for c in fsm.alphabet if isinstance(c, str)}
    other = next(c for c in "xyz#~ " if c not in explicit)  # stands for "anything else"
    chars = {key: sorted(c if isinstance(c, str) else other for c in group)
             for key, group in fsm.alphabet.by_transition.items()}

    def live_moves(state):
        return {key: target for key, target in fsm.map.get(state, {}).items()
                if target in distance}

    state, out, pos = fsm.initial, [], 0
    for _ in range(len(text) + 100_000):  # a bound, never reached by a sane pattern
        moves = live_moves(state)
        if pos < len(text):
            fitting = [c for c in (text[pos], text[pos].swapcase()) if fsm.alphabet[c] in moves]
            if fitting:
                out.append(fitting[0])
                state, pos = moves[fsm.alphabet[fitting[0]]], pos + 1
                continue
        if state in fsm.finals:
            break
        if len(moves) == 1 and len(chars[next(iter(moves))]) == 1:  # forced
            key, target = next(iter(moves.items()))
            out.append(chars[key][0])
            state = target
            continue
        if pos < len(text):
            pos += 1
            continue
        key = min(moves, key=lambda k: (distance[moves[k]], chars[k][0]))
        out.append(chars[key][0])
        state = moves[key]
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# An arithmetic "model" for pipeline tests: questions "What is A + B?"

_QUESTION_RE = re.compile(r"What is (\d+) \+ (\d+)\?")
_STATED_RE = re.compile(r"The answer is: (-?\d+)")


def _arithmetic_respond(request: GenerationRequest, index: int) -> str:
    prompt = request.prompt
    if "<paragraph_0>" in prompt:  # the judge: names step 1 wrong on odd seeds
        return "\\boxed{1}" if (request.seed or 0) % 2 else "\\boxed{-1}"
    match = _QUESTION_RE.search(prompt)
    if match is None:
        return "I cannot read this question."
    a, b = int(match.group(1)), int(match.group(2))
    right = (request.seed or 0) % 7 + index
    answer = a + b if right % 3 else a + b + 1
    if prompt.endswith("Step 1:"):
        return f" Add {a} and {b}.\nStep 2: The answer is: {answer}"
    stated = _STATED_RE.findall(prompt)
    if stated and int(stated[-1]) != a + b:  # continuing after a wrong step stays wrong
        answer = int(stated[-1])
    steps = prompt.count("Step ")
    return f"Step {steps + 1}: The answer is: {answer}"


def arithmetic_engine(config) -> ScriptedEngine:
    """``kind: custom`` factory used by the pipeline tests (``factory: fakes:arithmetic_engine``)."""
    return ScriptedEngine(_arithmetic_respond, model_id="scripted-arithmetic")


_STATED_SUM_RE = re.compile(r"The sum is (-?\d+)\.")


def _zero_one_respond(request: GenerationRequest, index: int) -> str:
    """Arithmetic with step success rates of exactly 0 or 1: a solution states the sum in
    step 2 (one sample in three states it one too high, by seed and index) and repeats it as
    its answer; every continuation repeats the sum its prefix stated, or states the right one
    when the prefix has none. So a prefix holding a wrong sum never succeeds, any other
    always does."""
    match = _QUESTION_RE.search(request.prompt)
    if match is None:
        return "I cannot read this question."
    a, b = int(match.group(1)), int(match.group(2))
    steps = request.prompt.count("Step ")
    if request.prompt.endswith("Step 1:"):  # a policy sample
        total = a + b if ((request.seed or 0) + index) % 3 else a + b + 1
        return f" Add {a} and {b}.\nStep 2: The sum is {total}.\nStep 3: The answer is: {total}"
    stated = _STATED_SUM_RE.findall(request.prompt)
    total = int(stated[-1]) if stated else a + b
    if not stated:
        return (f"Step {steps + 1}: The sum is {total}.\n"
                f"Step {steps + 2}: The answer is: {total}")
    return f"Step {steps + 1}: The answer is: {total}"


def zero_one_engine(config) -> ScriptedEngine:
    """``kind: custom`` factory: :func:`_zero_one_respond` (step rates exactly 0 or 1)."""
    return ScriptedEngine(_zero_one_respond, model_id="scripted-zero-one")


def slow_arithmetic_engine(config) -> ScriptedEngine:
    """Like :func:`arithmetic_engine`, 50 ms per request: long enough to kill a job mid-way."""
    return ScriptedEngine(_arithmetic_respond, model_id="scripted-arithmetic", delay_s=0.05)


# ---------------------------------------------------------------------------------------------
# Engines with faults, for the reliability tests (tests/test_bad_input.py, test_engine_faults.py)

#: Environment variable read by :func:`arithmetic_engine_with_faults` when it builds its engine:
#: the engine dies (raises ``EngineDiedError`` on every request) from this request on (1-based).
DIE_AFTER_ENV = "STEPLABEL_FAKE_DIE_AFTER"


class FaultyScriptedEngine(ScriptedEngine):
    """A :class:`ScriptedEngine` with a context window and an optional death.

    ``max_prompt_tokens``: a prompt of more fake tokens raises ``ContextLengthError`` with
    vLLM's wording. ``die_after``: request number ``die_after`` and every later one raise
    ``EngineDiedError``, as the vLLM engine does once its engine-core process is gone.
    """

    def __init__(self, respond: Responder, *, max_prompt_tokens: int | None = None,
                 die_after: int | None = None, **kwargs) -> None:
        super().__init__(respond, **kwargs)
        self.max_prompt_tokens = max_prompt_tokens
        self.die_after = die_after
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from steplabel.engines.base import ContextLengthError, EngineDiedError

        self.calls += 1
        if self.die_after is not None and self.calls >= self.die_after:
            raise EngineDiedError("scripted engine died (its process is gone)")
        length = len(fake_tokens(request.prompt))
        if self.max_prompt_tokens is not None and length > self.max_prompt_tokens:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_prompt_tokens} tokens. "
                f"However, your prompt contains at least {length} input tokens")
        return await super().generate(request)


def arithmetic_engine_with_faults(config) -> FaultyScriptedEngine:
    """``kind: custom`` factory: the arithmetic engine with a context window of
    ``config.max_model_len`` fake tokens (whitespace words), dying after the request number in
    ``$STEPLABEL_FAKE_DIE_AFTER`` when that is set."""
    import os

    die_after = os.environ.get(DIE_AFTER_ENV)
    return FaultyScriptedEngine(_arithmetic_respond, model_id="scripted-arithmetic",
                                max_prompt_tokens=config.max_model_len,
                                die_after=int(die_after) if die_after else None)


# ---------------------------------------------------------------------------------------------
# A scripted critic for the critic stage (issue #25): the faults of real models, by sample

_PARAGRAPH_RE = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.DOTALL)
#: What each sample of :func:`critic_engine` does (sample index -> fault), in order.
CRITIC_SCRIPT = ("truthful", "cut_off", "missing_verdict", "contradiction", "wrong_verdicts",
                 "truthful", "two_verdicts")


_SUM_RE = re.compile(r"(-?\d+) \+ (-?\d+) = (-?\d+)")


def arithmetic_first_error(prompt: str) -> tuple[int, int]:
    """(number of paragraphs, the true first error) of an arithmetic critic prompt: the first
    paragraph with a wrong sum ``x + y = z``, or stating a wrong ``The answer is: X`` to the
    question "What is A + B?" (-1 when none)."""
    question = _QUESTION_RE.search(prompt)
    paragraphs = _PARAGRAPH_RE.findall(prompt)
    for index, text in paragraphs:
        if any(int(x) + int(y) != int(z) for x, y, z in _SUM_RE.findall(text)):
            return len(paragraphs), int(index)
        stated = _STATED_RE.search(text)
        if question and stated and int(stated.group(1)) != int(question.group(1)) + int(
                question.group(2)):
            return len(paragraphs), int(index)
    return len(paragraphs), -1


def _verdicts(count: int, first_error: int) -> list[str]:
    """ThinkPRM-form verifications of paragraphs 0..first_error (every one when -1)."""
    last = count - 1 if first_error < 0 else first_error
    lines = []
    for i in range(last + 1):
        verdict = "incorrect" if i == first_error else "correct"
        lines.append(f"Paragraph {i}: I redo the arithmetic of this paragraph. "
                     f"\\boxed{{{verdict}}}")
    return lines


def _critic_respond(request: GenerationRequest, index: int) -> str:
    count, truth = arithmetic_first_error(request.prompt)
    fault = CRITIC_SCRIPT[index % len(CRITIC_SCRIPT)]
    if fault == "truthful":
        return "\n".join(_verdicts(count, truth))
    if fault == "cut_off":  # rambles past max_tokens before its first verdict
        return "Let me think about this very carefully. " * 200 + "\n".join(
            _verdicts(count, truth))
    if fault == "missing_verdict":  # skips paragraph 0
        return "\n".join(_verdicts(count, truth)[1:] or [
            "Paragraph 1: I redo the arithmetic of this paragraph. \\boxed{correct}"])
    if fault == "contradiction":  # calls paragraph 0 incorrect, then the whole thing right
        return ("Paragraph 0: this does not follow. \\boxed{incorrect}\n"
                "All steps are correct.")
    if fault == "wrong_verdicts":  # the opposite reading: every step right, or the last wrong
        return "\n".join(_verdicts(count, count - 1 if truth < 0 else -1))
    if fault == "two_verdicts":
        return "Paragraph 0: fine. \\boxed{correct}\nParagraph 0: again. \\boxed{correct}"
    raise AssertionError(fault)


def critic_engine(config) -> FaultyScriptedEngine:
    """``kind: custom`` factory of the scripted critic (``factory: fakes:critic_engine``):
    sample i of each request does ``CRITIC_SCRIPT[i % 7]``; a context window of
    ``config.max_model_len`` fake tokens (a prompt over it: ``ContextLengthError``)."""
    return FaultyScriptedEngine(_critic_respond, model_id="scripted-critic",
                                max_prompt_tokens=config.max_model_len)
