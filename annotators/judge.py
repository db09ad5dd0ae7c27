"""LLM-as-a-judge step labelling in the ProcessBench / Qwen critic protocol.

The judge model sees the problem and the solution's steps tagged ``<paragraph_0>`` ...
``<paragraph_{M-1}>``, reviews them in order and names the earliest wrong paragraph in
``\\boxed{}``, or ``\\boxed{-1}`` when every paragraph is correct [PB §3.1; QL App. C].

Index convention (ProcessBench, 0-indexed): a first-error index ``e`` lies in
``{-1, 0, ..., M-1}``; ``-1`` means "no error"; ``None`` means "unknown" (no usable verdict).
Unknown is never turned into a guessed label.

Defaults are ProcessBench's own protocol: one greedy reply (temperature 0, ``votes: 1``) read
with ProcessBench's extraction (the last ``\\boxed{}``, as an integer). Each reply is read in
three steps (:func:`read_reply`):

1. *Was the verdict written?* A reply cut off by ``max_tokens`` (finish reason ``length``) is
   ``truncated`` (unknown): it may stop before the verdict, and parsing what is there could
   take an earlier ``\\boxed{}`` quoted from the solution. The one exception is the forced form
   (a ``response_prefix`` that opens the verdict's ``\\boxed{``): its verdict is complete once
   that box closes, whatever follows.
2. *Stop strings.* Engines do not return the stop string that ended a reply (vLLM's
   ``include_stop_str_in_output`` is off and not every OpenAI-compatible server has it), so a
   reply that finished with ``stop`` while the judge samples with stop strings is read with
   the first stop string re-appended. With the forced form and ``stop: ["}"]`` the judge
   writes ``1``, stops at ``}``, and ``\\boxed{1}`` is read. (An engine does not say whether
   EOS or the stop string ended a reply; an EOS right after the index reads the same way.)
3. *The parser* (``judge.parser``): ``processbench`` (default, :func:`parse_processbench_reply`)
   or ``robust`` (:func:`parse_judge_reply`, which also refuses replies with conflicting
   verdicts). Each is versioned in :data:`JUDGE_PARSER_VERSION`.

Votes (:func:`decide`): one request with ``n = votes`` samples; every sample is a vote cast,
and a reply without a usable verdict is a spoiled ballot. The verdict is the most frequent
index if its votes reach the quorum, ``min_agreement`` of **all** votes cast (default: a strict
majority, more than half of them); else the result is unknown with reason ``no_quorum``. So one
parseable reply out of 8 never decides, while a single greedy vote decides alone.

Model output is untrusted text. Both parsers only scan it (no ``eval``, no backtracking
regexes), refuse replies over :data:`MAX_REPLY_CHARS`, and run in time linear in the reply.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from steplabel.annotators.prompts import PromptTemplate, load_template
from steplabel.annotators.seeds import derive_seed
from steplabel.engines.base import (
    ChatMessage,
    CostMeter,
    GenerationEngine,
    GenerationRequest,
)
from steplabel.schemas.annotators import (
    JUDGE_PARSER_VERSION,
    JUDGE_PARSERS,
    PARSER_PROCESSBENCH,
    PARSER_ROBUST,
    JudgeConfig,
    forces_verdict_box,
)
from steplabel.schemas.config import check

#: The version of the voting rule (:func:`decide`); 2 added the quorum.
JUDGE_VOTE_VERSION = "steplabel-judge-vote/2"

#: Replies longer than this (in characters) are not parsed at all: unknown, ``reply_too_long``.
#: 512 generated tokens are ~2-3K characters, so this leaves a wide margin while keeping the
#: parse time bounded whatever the engine returns.
MAX_REPLY_CHARS = 32_768
#: A ``\boxed{`` whose closing brace does not come within this many characters holds no verdict
#: for the robust parser (a verdict is a short integer). This also bounds the scan of each
#: ``\boxed{`` to O(1), so the parse is linear in the reply length even for
#: ``\boxed{\boxed{\boxed{...``.
MAX_BOXED_CHARS = 64

#: Parse reasons. ``ok`` is the only one with an index; each other one is a named drop reason.
REASON_OK = "ok"
REASON_EMPTY = "empty_reply"
REASON_TOO_LONG = "reply_too_long"
REASON_TRUNCATED = "truncated"
REASON_NO_VERDICT = "no_verdict"
REASON_NOT_INTEGER = "verdict_not_integer"
REASON_OUT_OF_RANGE = "out_of_range"
REASON_CONFLICT = "conflicting_verdicts"
PARSE_REASONS = (
    REASON_OK,
    REASON_EMPTY,
    REASON_TOO_LONG,
    REASON_TRUNCATED,
    REASON_NO_VERDICT,
    REASON_NOT_INTEGER,
    REASON_OUT_OF_RANGE,
    REASON_CONFLICT,
)
#: Vote reasons of a whole result besides ``ok`` and the parse reasons: parseable votes that
#: did not reach the quorum.
REASON_NO_QUORUM = "no_quorum"

#: The engines' finish reason of a reply cut off at ``max_tokens``.
FINISH_LENGTH = "length"
FINISH_STOP = "stop"


# --------------------------------------------------------------------------------------------
# Prompt


# Paragraph tags inside the problem or a step would let the text re-draw the paragraph
# boundaries the judge sees; they are defanged to square brackets in the prompt only (records
# keep the original text).
_TAG_LOOKALIKE_RE = re.compile(r"<\s*(/?)\s*(paragraph_\d+)\s*>", re.IGNORECASE)


def _defang_tags(text: str) -> str:
    return _TAG_LOOKALIKE_RE.sub(r"[\1\2]", text)


def tag_steps(steps: Sequence[str]) -> str:
    """The steps as ``<paragraph_i>\\n<step>\\n</paragraph_i>`` blocks, i = 0..M-1, joined by a
    blank line. Steps are stripped of surrounding whitespace; paragraph-tag look-alikes inside a
    step are rewritten as ``[paragraph_i]`` so that a step cannot fake a boundary.

    Raises ValueError when ``steps`` is empty or holds a non-string.
    """
    if isinstance(steps, str) or len(steps) == 0:
        raise ValueError(f"steps must be a non-empty list of strings, got {steps!r:.60}")
    blocks = []
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise ValueError(f"steps[{i}] must be a string, got {type(step).__name__}")
        blocks.append(f"<paragraph_{i}>\n{_defang_tags(step.strip())}\n</paragraph_{i}>")
    return "\n\n".join(blocks)


def render_user_message(template: PromptTemplate, *, question: str,
                        steps: Sequence[str]) -> str:
    """``template`` filled with the problem and the tagged steps (:func:`tag_steps`): the user
    message of the judge, and of the critic (``annotators/critic.py``), before any chat
    template."""
    return template.render(problem=_defang_tags(question.strip()), tagged_steps=tag_steps(steps))


def render_judge_prompt(engine: GenerationEngine, template: PromptTemplate, *, question: str,
                        steps: Sequence[str]) -> str:
    """The full judge prompt: ``template`` filled with the problem and the tagged steps, as one
    user message rendered with the judge engine's own chat template."""
    user = render_user_message(template, question=question, steps=steps)
    return engine.apply_chat_template([ChatMessage("user", user)])


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class JudgeParse:
    """One parsed judge reply.

    ``index`` is in ``-1..num_steps-1`` (``-1`` = no error) when ``reason == "ok"``, else None
    (unknown); ``reason`` is one of :data:`PARSE_REASONS`.
    """

    index: int | None
    reason: str


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")


def _unusable(reply: object) -> JudgeParse | None:
    """The parse of a reply that is not read at all (not a string, too long, blank)."""
    if not isinstance(reply, str):
        return JudgeParse(None, REASON_EMPTY)
    if len(reply) > MAX_REPLY_CHARS:
        return JudgeParse(None, REASON_TOO_LONG)
    if not reply.strip():
        return JudgeParse(None, REASON_EMPTY)
    return None


_PB_OPEN = "\\boxed{"


def _processbench_last_box(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` as ProcessBench's extraction finds it: the
    pattern ``\\boxed{`` (no space before the brace) followed by the shortest run up to the
    first ``}`` (no nesting), matches taken left to right without overlap. None when there is
    no such match.

    One left-to-right pass (each ``find`` starts where the last one ended), so the time is
    linear in ``len(text)``; a backtracking regex would rescan to the end once per unclosed
    ``\\boxed{``.
    """
    last, position = None, 0
    while True:
        start = text.find(_PB_OPEN, position)
        if start < 0:
            return last
        content_start = start + len(_PB_OPEN)
        end = text.find("}", content_start)
        if end < 0:  # no later match can close either
            return last
        last, position = text[content_start:end], end + 1


def parse_processbench_reply(reply: str, num_steps: int) -> JudgeParse:
    """The first-error index a judge reply names, read as ProcessBench's evaluation script
    reads a critic's reply (``code/run_eval.py``: its ``extract_answer`` takes the last
    ``\\boxed{...}`` match, strips it, and the prediction is ``int()`` of it, None on failure).

    1. A reply that is not a string, is blank (``empty_reply``) or is longer than
       :data:`MAX_REPLY_CHARS` (``reply_too_long``) is not read. (The script reads any length;
       the cap bounds the work on untrusted output.)
    2. The verdict is the content of the last ``\\boxed{...}`` (see
       :func:`_processbench_last_box`: ``\\boxed{\\frac{1}{2}}`` holds ``\\frac{1``); none is
       ``no_verdict``.
    3. It must be an integer as Python's ``int()`` reads the stripped content (``3``, ``-1``,
       ``+2``, ``02``; not ``$1$``, ``1.0`` or the typographic minus), else
       ``verdict_not_integer``.
    4. It must lie in ``-1..num_steps-1``, else ``out_of_range``. (The script keeps such an
       index, which can only be a miss; here it is unknown, so that it never becomes a label.)

    Every other box is ignored: a reply that quotes a verdict *after* its own is read as the
    quoted one. ``parser: robust`` (:func:`parse_judge_reply`) refuses such replies instead.
    ``num_steps`` must be >= 0. Never raises on any string ``reply``.
    """
    _check_num_steps(num_steps)
    unusable = _unusable(reply)
    if unusable is not None:
        return unusable
    content = _processbench_last_box(reply)
    if content is None:
        return JudgeParse(None, REASON_NO_VERDICT)
    try:
        verdict = int(content.strip())
    except ValueError:  # not an integer, or more digits than int() converts
        return JudgeParse(None, REASON_NOT_INTEGER)
    if not -1 <= verdict < num_steps:
        return JudgeParse(None, REASON_OUT_OF_RANGE)
    return JudgeParse(verdict, REASON_OK)


# Bounded whitespace between \boxed and its brace keeps each regex attempt O(1).
_BOXED_OPEN_RE = re.compile(r"\\boxed[ \t\n]{0,16}\{")
# An integer verdict, optionally in $...$; "−" (U+2212) is the typographic minus.
_INTEGER_RE = re.compile(r"\s*\$?\s*([-+\u2212]?)\s*(\d+)\s*\$?\s*")


def _boxed_spans(text: str) -> list[str | None]:
    """Contents of every ``\\boxed{`` in order of its start, braces balanced; None for one that
    does not close within :data:`MAX_BOXED_CHARS` characters (truncated or too long to be a
    verdict). Linear in ``len(text)``."""
    found: list[str | None] = []
    for match in _BOXED_OPEN_RE.finditer(text):
        start = match.end()
        depth, content = 1, None
        for i in range(start, min(len(text), start + MAX_BOXED_CHARS + 1)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i]
                    break
        found.append(content)
    return found


def _as_integer(content: str | None) -> int | None:
    if content is None:
        return None
    match = _INTEGER_RE.fullmatch(content)
    if match is None:
        return None
    value = int(match.group(2))  # at most MAX_BOXED_CHARS digits
    return -value if match.group(1) in ("-", "\u2212") else value


def parse_judge_reply(reply: str, num_steps: int) -> JudgeParse:
    """The first-error index a judge reply names by the robust rule (``parser: robust``), or
    None with the reason.

    Rule (documented in full because it decides labels):

    1. A reply longer than :data:`MAX_REPLY_CHARS` is ``reply_too_long`` (never truncated, which
       could drop the real verdict and keep an earlier one); one that is empty, only whitespace
       or not a string is ``empty_reply``.
    2. The verdict is the **last** ``\\boxed{...}`` in the reply, since the prompt asks for it as
       the last thing written. No ``\\boxed{`` at all is ``no_verdict``.
    3. That last box must hold a plain integer (``3``, ``-1``, ``$2$``, spaces allowed), else
       ``verdict_not_integer``: a truncated ``\\boxed{3`` or a ``\\boxed{\\frac12}`` at the end
       is not a verdict, and no earlier box is promoted in its place.
    4. The integer must lie in ``-1..num_steps-1``, else ``out_of_range``.
    5. Anti-injection: every *other* box in the reply that holds an integer in
       ``-1..num_steps-1`` is a competing verdict. If any of them differs from the last one, the
       reply is ``conflicting_verdicts``. So a verdict that the solution text smuggles in (and
       the judge echoes before or after its own), or a judge that changes its mind, makes the
       reply unknown instead of silently changing the index. Boxes that cannot be verdicts
       (non-integers, out-of-range integers such as a quoted final answer ``\\boxed{42}``) are
       ignored; repeating the same verdict is fine.

    The cost of rule 5: a judge that quotes a solution's in-range integer answer in a box is
    unknown; the prompt tells the judge not to use ``\\boxed`` except for the verdict.

    ``num_steps`` must be >= 0. Never raises on any string ``reply``.
    """
    _check_num_steps(num_steps)
    unusable = _unusable(reply)
    if unusable is not None:
        return unusable
    boxes = _boxed_spans(reply)
    if not boxes:
        return JudgeParse(None, REASON_NO_VERDICT)
    verdict = _as_integer(boxes[-1])
    if verdict is None:
        return JudgeParse(None, REASON_NOT_INTEGER)
    if not -1 <= verdict < num_steps:
        return JudgeParse(None, REASON_OUT_OF_RANGE)
    for content in boxes[:-1]:
        other = _as_integer(content)
        if other is not None and -1 <= other < num_steps and other != verdict:
            return JudgeParse(None, REASON_CONFLICT)
    return JudgeParse(verdict, REASON_OK)


def parse_reply(reply: str, num_steps: int, parser: str = PARSER_PROCESSBENCH) -> JudgeParse:
    """``reply`` parsed by the named parser (:data:`JUDGE_PARSERS`)."""
    if parser == PARSER_PROCESSBENCH:
        return parse_processbench_reply(reply, num_steps)
    if parser == PARSER_ROBUST:
        return parse_judge_reply(reply, num_steps)
    raise ValueError(f"parser must be one of {', '.join(JUDGE_PARSERS)}, got {parser!r}")


@dataclass(frozen=True)
class ReadReply:
    """A reply as it was read: ``text`` (the response prefix, the generated text and the
    re-appended stop string, if any) and its :class:`JudgeParse`."""

    text: str
    parse: JudgeParse


def read_reply(text: str, finish_reason: str, *, num_steps: int,
               parser: str = PARSER_PROCESSBENCH, response_prefix: str = "",
               stop: Sequence[str] = ()) -> ReadReply:
    """Read one generated reply (the module docstring gives the rule in words).

    - ``text``: what the engine returned; ``finish_reason``: its ``stop`` or ``length``.
    - The reply read is ``response_prefix + text``, plus ``stop[0]`` when the reply finished
      with ``stop`` and there are stop strings (engines drop the stop string).
    - Forced form (:func:`forces_verdict_box`): the verdict is the box the prefix opened; the
      reply is parsed up to that box's first closing brace, and anything after it is ignored.
      If the box never closes, a cut-off reply is ``truncated`` and any other is parsed whole.
    - Otherwise a cut-off reply (``finish_reason == "length"``) is ``truncated``, whatever
      boxes it holds; any other is parsed whole.
    """
    _check_num_steps(num_steps)
    reply = response_prefix + (text if isinstance(text, str) else "")
    if finish_reason == FINISH_STOP and stop:
        reply += stop[0]
    if forces_verdict_box(response_prefix):
        close = reply.find("}", len(response_prefix))
        if close >= 0:
            return ReadReply(reply, parse_reply(reply[:close + 1], num_steps, parser))
    if finish_reason == FINISH_LENGTH:
        return ReadReply(reply, JudgeParse(None, REASON_TRUNCATED))
    return ReadReply(reply, parse_reply(reply, num_steps, parser))


# --------------------------------------------------------------------------------------------
# Votes


def majority_vote(votes: Sequence[int | None]) -> tuple[int | None, float]:
    """``(plurality_index, agreement)`` over the votes of one solution, without a quorum
    (:func:`decide` applies one).

    The index is the most frequent parseable vote (None votes are unknown and never win); None
    when no vote is parseable. Ties go to the earliest error: error indices in increasing order,
    with ``-1`` ("no error") ranked after every real index, so that a step flagged by as many
    votes as "all correct" is not labelled correct. ``agreement`` is the votes for the winner
    divided by **all** votes, unknown ones included, in [0, 1]; 0.0 when nothing parsed or
    there are no votes.
    """
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return None, 0.0
    best = max(counts.values())
    tied = [v for v, c in counts.items() if c == best]
    winner = min(tied, key=lambda v: (v == -1, v))
    return winner, best / len(votes)


@dataclass(frozen=True)
class Decision:
    """The verdict of one solution's votes: ``first_error_index`` (None: unknown),
    ``agreement`` (the plurality index's share of all votes, in [0, 1]) and ``reason``
    (``ok``, ``no_quorum``, or ``no_vote`` when no vote parsed)."""

    first_error_index: int | None
    agreement: float
    reason: str


REASON_NO_VOTE = "no_vote"


def decide(votes: Sequence[int | None], *, min_agreement: float | None = None) -> Decision:
    """The verdict of ``votes`` (one per sample; None = no usable verdict) under a quorum.

    Every sample is a vote cast, parseable or not. The plurality index (:func:`majority_vote`,
    ties to the earliest error) is the verdict when its votes reach the quorum: more than half
    of all votes when ``min_agreement`` is None (a strict majority, so no tie can win), else
    ``agreement >= min_agreement``. Below the quorum the verdict is unknown, ``no_quorum``;
    with no parseable vote, ``no_vote``. ``agreement`` is reported in every case.
    """
    index, agreement = majority_vote(votes)
    if index is None:
        return Decision(None, 0.0, REASON_NO_VOTE)
    winners = sum(1 for v in votes if v == index)
    if min_agreement is None:
        reached = 2 * winners > len(votes)
    else:
        reached = winners >= min_agreement * len(votes) - 1e-9
    if not reached:
        return Decision(None, agreement, REASON_NO_QUORUM)
    return Decision(index, agreement, REASON_OK)


# --------------------------------------------------------------------------------------------
# The judge


@dataclass(frozen=True)
class JudgeResult:
    """The judge's reading of one solution.

    - ``first_error_index``: the voted index in ``-1..num_steps-1`` (-1 = no error), None when
      unknown (see ``reason``).
    - ``reason``: ``ok``; ``no_quorum`` (parseable votes, but the most frequent index has less
      than the quorum); or, when no reply parsed, the most common parse reason among the
      replies (``truncated``, ``no_verdict``, ...; the earliest reply's on a tie).
    - ``agreement``: the most frequent index's votes / all votes, in [0, 1]; it decides the
      quorum (``min_agreement``, None = a strict majority).
    - ``votes``, ``parse_reasons``, ``raw_replies``, ``finish_reasons``: one entry per sample, in
      sample order. A raw reply is the text as read: response prefix, generated text, and the
      stop string re-appended when the reply finished with ``stop`` (:func:`read_reply`).
    - ``template_id``, ``template_sha256``, ``parser``, ``parser_version``, ``model_id``,
      ``seed``: provenance.
    - ``cost``: :meth:`CostMeter.as_dict` of the request (requests, rollouts, tokens).
    """

    problem_id: str
    solution_index: int
    num_steps: int
    first_error_index: int | None
    agreement: float
    votes: list[int | None]
    parse_reasons: list[str]
    raw_replies: list[str]
    finish_reasons: list[str]
    template_id: str
    template_sha256: str
    parser_version: str
    model_id: str
    seed: int
    cost: dict[str, int]
    reason: str = REASON_OK
    parser: str = PARSER_PROCESSBENCH
    min_agreement: float | None = None


class LLMJudge:
    """Asks a judge model for the earliest wrong step of a solution.

    Safe to run for many solutions at once against one engine: :meth:`judge` holds no lock and
    makes exactly one request (``n = config.votes``), seeded by
    ``derive_seed(run_seed, "judge", problem_id, solution_index)`` so that a rerun repeats it.
    Engine failures (``EngineError``, ``ContextLengthError``) propagate to the caller, which
    dead-letters the record.
    """

    def __init__(self, engine: GenerationEngine, config: JudgeConfig | None = None, *,
                 run_seed: int) -> None:
        if isinstance(run_seed, bool) or not isinstance(run_seed, int) or run_seed < 0:
            raise ValueError(f"run_seed must be an integer >= 0, got {run_seed!r}")
        self.engine = engine
        self.config = config if config is not None else JudgeConfig()
        self.run_seed = run_seed
        self.template = load_template(self.config.template_id)

    def build_prompt(self, *, question: str, steps: Sequence[str]) -> str:
        """The exact prompt sent for one solution (see :func:`render_judge_prompt`), followed
        by the configured ``response_prefix``."""
        return render_judge_prompt(self.engine, self.template, question=question,
                                   steps=steps) + self.config.response_prefix

    def request_for(self, *, problem_id: str, solution_index: int, question: str,
                    steps: Sequence[str]) -> GenerationRequest:
        """The one generation request :meth:`judge` makes for this solution."""
        sampling = self.config.sampling
        return GenerationRequest(
            prompt=self.build_prompt(question=question, steps=steps),
            n=self.config.votes,
            seed=derive_seed(self.run_seed, "judge", problem_id, solution_index),
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            choices=verdict_choices(len(steps)) if self.config.constrain_verdict else (),
        )

    async def judge(self, *, problem_id: str, solution_index: int, question: str,
                    steps: Sequence[str]) -> JudgeResult:
        """Judge one solution of ``len(steps)`` (>= 1) steps; see :class:`JudgeResult`."""
        config = self.config
        request = self.request_for(problem_id=problem_id, solution_index=solution_index,
                                   question=question, steps=steps)
        result = await self.engine.generate(request)
        meter = CostMeter()
        meter.add(result)
        read = [read_reply(text, finish, num_steps=len(steps), parser=config.parser,
                           response_prefix=config.response_prefix, stop=config.sampling.stop)
                for text, finish in zip(result.texts, result.finish_reasons)]
        votes = [r.parse.index for r in read]
        reasons = [r.parse.reason for r in read]
        decision = decide(votes, min_agreement=config.min_agreement)
        reason = decision.reason
        if reason == REASON_NO_VOTE:
            reason = Counter(reasons).most_common(1)[0][0] if reasons else REASON_EMPTY
        return JudgeResult(
            problem_id=problem_id,
            solution_index=solution_index,
            num_steps=len(steps),
            first_error_index=decision.first_error_index,
            agreement=decision.agreement,
            votes=votes,
            parse_reasons=reasons,
            raw_replies=[r.text for r in read],
            finish_reasons=list(result.finish_reasons),
            template_id=self.template.id,
            template_sha256=self.template.sha256,
            parser_version=config.parser_version,
            model_id=self.engine.model_id,
            seed=request.seed,
            cost=meter.as_dict(),
            reason=reason,
            parser=config.parser,
            min_agreement=config.min_agreement,
        )


def verdict_choices(num_steps: int) -> tuple[str, ...]:
    """The continuations a constrained judge may write after the forced ``\\boxed{``: every
    valid verdict (``-1`` for "no wrong step", then each step index) and the closing brace.
    ``num_steps`` >= 1: a solution without steps is never judged."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return tuple(f"{index}}}" for index in range(-1, num_steps))


def judge_version(config: "JudgeConfig") -> str:
    """The judge annotator's version string for provenance: prompt protocol, parser, voting
    (and ``;choice`` when the verdict is constrained to the valid indices)."""
    version = f"llm_judge/2;{JUDGE_PARSER_VERSION[config.parser]};{JUDGE_VOTE_VERSION}"
    return version + (";choice" if config.constrain_verdict else "")
