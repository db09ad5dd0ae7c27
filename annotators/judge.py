"""LLM-as-a-judge step labelling in the ProcessBench / Qwen critic protocol.

The judge model sees the problem and the solution's steps tagged ``<paragraph_0>`` ...
``<paragraph_{M-1}>``, reviews them in order and names the earliest wrong paragraph in
``\\boxed{}``, or ``\\boxed{-1}`` when every paragraph is correct [PB §3.1; QL App. C].

Index convention (ProcessBench, 0-indexed): a first-error index ``e`` lies in
``{-1, 0, ..., M-1}``; ``-1`` means "no error"; ``None`` means "unknown" (no usable verdict).
Unknown is never turned into a guessed label.

Votes: one request with ``n = votes`` samples; each reply is parsed on its own, and the result is
the majority index over the parseable replies (:func:`majority_vote`).

Model output is untrusted text. :func:`parse_judge_reply` only scans it (no ``eval``, no
backtracking regexes), caps the length it will look at, and follows a verdict rule designed so
that extra ``\\boxed{}`` verdicts, quoted from the solution or injected into it, cannot silently
change the parse: see :func:`parse_judge_reply`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from steplabel.annotators.prompts import PromptTemplate, load_template
from steplabel.annotators.seeds import derive_seed
from steplabel.engines.base import (
    ChatMessage,
    CostMeter,
    GenerationEngine,
    GenerationRequest,
)
from steplabel.schemas.config import ConfigError, SamplingConfig, check

#: Recorded on every judge result; bump whenever the parsing rule below changes meaning.
JUDGE_PARSER_VERSION = "steplabel-judge-parser/1"
DEFAULT_JUDGE_TEMPLATE = "judge_processbench_v1"

#: Replies longer than this (in characters) are not parsed at all: unknown, ``reply_too_long``.
#: 512 generated tokens are ~2-3K characters, so this leaves a wide margin while keeping the
#: parse time bounded whatever the engine returns.
MAX_REPLY_CHARS = 32_768
#: A ``\boxed{`` whose closing brace does not come within this many characters holds no verdict
#: (a verdict is a short integer). This also bounds the scan of each ``\boxed{`` to O(1), so
#: the whole parse is linear in the reply length even for ``\boxed{\boxed{\boxed{...``.
MAX_BOXED_CHARS = 64

#: Parse reasons. ``ok`` is the only one with an index; each other one is a named drop reason.
REASON_OK = "ok"
REASON_EMPTY = "empty_reply"
REASON_TOO_LONG = "reply_too_long"
REASON_NO_VERDICT = "no_verdict"
REASON_NOT_INTEGER = "verdict_not_integer"
REASON_OUT_OF_RANGE = "out_of_range"
REASON_CONFLICT = "conflicting_verdicts"
PARSE_REASONS = (
    REASON_OK,
    REASON_EMPTY,
    REASON_TOO_LONG,
    REASON_NO_VERDICT,
    REASON_NOT_INTEGER,
    REASON_OUT_OF_RANGE,
    REASON_CONFLICT,
)

_TEMPLATE_FIELDS = frozenset({"problem", "tagged_steps"})


# --------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge stage prompts and samples.

    - ``template_id``: a prompt template in ``annotators/prompts/`` with exactly the fields
      ``{problem}`` and ``{tagged_steps}``; recorded with its SHA-256 on every result.
    - ``votes``: samples per solution, >= 1 (ProcessBench uses 8 for open critics). The result
      is their majority index and the agreement fraction.
    - ``sampling``: defaults to temperature 0.7 (so that several votes are independent samples;
      ProcessBench's majority-of-8 protocol samples, it does not decode greedily) and
      ``max_tokens`` 512, enough for a short analysis of each paragraph of a GSM8K/MATH-length
      solution. A reply cut off by ``max_tokens`` usually has no verdict and is unknown; raise
      ``max_tokens`` for long (Olympiad-style) solutions. For a single greedy vote set
      temperature 0; temperature 0 with ``votes > 1`` is rejected, since the votes would all be
      the same sample and the agreement fraction would mean nothing.
    """

    template_id: str = DEFAULT_JUDGE_TEMPLATE
    votes: int = 1
    #: Written at the start of the judge's reply and parsed as part of it. Empty for capable
    #: judges; small models need the verdict's form forced, e.g. ``"The earliest wrong
    #: paragraph is \\boxed{"`` (the judge then only writes the index and the closing brace).
    response_prefix: str = ""
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.7, max_tokens=512)
    )

    def __post_init__(self) -> None:
        check(isinstance(self.template_id, str) and bool(self.template_id), "template_id",
              "must be a non-empty string", self.template_id)
        try:
            template = load_template(self.template_id)
        except ValueError as exc:
            raise ConfigError(f"template_id {exc}") from None
        fields = {name for _, name, _, _ in string.Formatter().parse(template.text) if name}
        check(fields == _TEMPLATE_FIELDS, "template_id",
              "must name a template with exactly the fields {problem} and {tagged_steps}",
              self.template_id)
        check(isinstance(self.votes, int) and not isinstance(self.votes, bool)
              and self.votes >= 1, "votes", "must be an integer >= 1", self.votes)
        check(isinstance(self.sampling, SamplingConfig), "sampling",
              "must be a SamplingConfig", self.sampling)
        check(self.votes == 1 or self.sampling.temperature > 0.0, "sampling.temperature",
              f"must be > 0 when votes > 1 (votes={self.votes})", self.sampling.temperature)


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


def render_judge_prompt(engine: GenerationEngine, template: PromptTemplate, *, question: str,
                        steps: Sequence[str]) -> str:
    """The full judge prompt: ``template`` filled with the problem and the tagged steps, as one
    user message rendered with the judge engine's own chat template."""
    user = template.render(problem=_defang_tags(question.strip()), tagged_steps=tag_steps(steps))
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
    """The first-error index a judge reply names, or None with the reason.

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
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    if not isinstance(reply, str):
        return JudgeParse(None, REASON_EMPTY)
    if len(reply) > MAX_REPLY_CHARS:
        return JudgeParse(None, REASON_TOO_LONG)
    if not reply.strip():
        return JudgeParse(None, REASON_EMPTY)
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


def majority_vote(votes: Sequence[int | None]) -> tuple[int | None, float]:
    """``(first_error_index, agreement)`` over the votes of one solution.

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


# --------------------------------------------------------------------------------------------
# The judge


@dataclass(frozen=True)
class JudgeResult:
    """The judge's reading of one solution.

    - ``first_error_index``: majority vote in ``-1..num_steps-1`` (-1 = no error), None when no
      vote parsed (unknown; see ``parse_reasons``).
    - ``agreement``: votes for the majority / all votes, in [0, 1].
    - ``votes``, ``parse_reasons``, ``raw_replies``, ``finish_reasons``: one entry per sample, in
      sample order; raw replies are kept verbatim, parseable or not.
    - ``template_id``, ``template_sha256``, ``parser_version``, ``model_id``, ``seed``: provenance.
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
        )

    async def judge(self, *, problem_id: str, solution_index: int, question: str,
                    steps: Sequence[str]) -> JudgeResult:
        """Judge one solution of ``len(steps)`` (>= 1) steps; see :class:`JudgeResult`."""
        request = self.request_for(problem_id=problem_id, solution_index=solution_index,
                                   question=question, steps=steps)
        result = await self.engine.generate(request)
        meter = CostMeter()
        meter.add(result)
        replies = [self.config.response_prefix + text for text in result.texts]
        parses = [parse_judge_reply(reply, len(steps)) for reply in replies]
        votes = [p.index for p in parses]
        first_error, agreement = majority_vote(votes)
        return JudgeResult(
            problem_id=problem_id,
            solution_index=solution_index,
            num_steps=len(steps),
            first_error_index=first_error,
            agreement=agreement,
            votes=votes,
            parse_reasons=[p.reason for p in parses],
            raw_replies=replies,
            finish_reasons=list(result.finish_reasons),
            template_id=self.template.id,
            template_sha256=self.template.sha256,
            parser_version=JUDGE_PARSER_VERSION,
            model_id=self.engine.model_id,
            seed=request.seed,
            cost=meter.as_dict(),
        )
