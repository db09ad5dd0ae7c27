"""The annotators' configs: what a manifest's ``monte_carlo``, ``omegaprm`` and ``judge``
sections hold, validated at construction (errors name the field and the value).

The annotators themselves (:mod:`steplabel.annotators.monte_carlo`, ``omegaprm``, ``judge``)
take these; they live here so that the manifest model imports nothing outside ``schemas/``.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field, replace
from typing import Literal

from steplabel.schemas.config import ConfigError, SamplingConfig, check
from steplabel.schemas.templates import load_template

#: How a rollout cut off at ``max_tokens`` is counted: ``unknown`` (default: it never reached a
#: final answer, so it says nothing about the prefix) or ``incorrect`` (graded as written, as
#: implementations that ignore finish reasons do; a cut-off text usually has no answer).
TRUNCATED_RULES = ("unknown", "incorrect")
STOPPING_RULES = ("decided", "fixed")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Monte Carlo (Math-Shepherd)


@dataclass(frozen=True)
class MonteCarloConfig:
    """Settings of the Monte Carlo annotator.

    - ``rollouts``: k, continuations sampled per step prefix (>= 1; Math-Shepherd and Qwen use 8).
    - ``hard_threshold``: τ in [0, 1); hard label = ``value > τ``. τ = 0 means "any correct".
    - ``truncate_after_first_error``: Qwen's recipe; labels after the first hard-negative step
      become None (the raw counts of every step are kept).
    - ``truncated``: how a rollout cut off at ``sampling.max_tokens`` counts: ``unknown``
      (default; it never reached an answer, so it is left out of the value's denominator) or
      ``incorrect`` (graded as written: what implementations that ignore finish reasons do).
    - ``stopping``: ``decided`` (default) samples a step's rollouts in waves (1, 1, 2, 4, ...
      rollouts) and stops as soon as the rollouts left cannot change its hard label (τ = 0: at
      the first correct rollout); ``fixed`` always samples all k in one request, as Math-Shepherd
      and Qwen describe it. Rollout ``i`` of a step always has seed ``step_seed + i`` (vLLM seeds
      child ``i`` of a request with ``seed + i``), so hard labels and first errors are identical
      under both; soft labels are ``correct / known`` over the rollouts actually sampled, so they
      rest on fewer rollouts under ``decided``. ``fixed`` reproduces the published recipes'
      soft labels (Math-Shepherd SE, OmegaPRM's pointwise soft label).
    - ``first_error_only``: estimate steps in order and stop at the first step decided negative
      (or unknown): the steps after it get no rollouts and are recorded as not estimated (counts
      0, value and label null), never as negative. The first error is identical by
      construction. ``null`` (default) turns it on exactly when nothing keeps labels after the
      first error: with ``consensus`` (kept labels end there) or ``truncate_after_first_error``.
    - ``consensus_guided``: with consensus, the judge labels a solution first, and Monte Carlo
      spends rollouts on it only while agreement is still possible: none when the judge has no
      verdict or the solution's own final answer already contradicts it (the judge says "no
      error" on a wrong answer), steps up to the judge's first error only, and it stops at the
      first step whose label rules agreement out. Kept trajectories (MC and judge agree) get
      exactly the labels of full Monte Carlo; a rejected one records why Monte Carlo stopped
      (``consensus_reason`` ``judge_unknown`` or ``cannot_agree``) and its unestimated steps as
      null. Implies ``first_error_only``. ``null`` (default): on exactly when consensus is on
      and ``first_error_only`` is not turned off.
    - ``sampling``: completer sampling settings (temperature 0.7, 256 new tokens by default).
    """

    rollouts: int = 8
    hard_threshold: float = 0.0
    truncate_after_first_error: bool = False
    truncated: Literal["unknown", "incorrect"] = "unknown"
    stopping: Literal["decided", "fixed"] = "decided"
    first_error_only: bool | None = None
    consensus_guided: bool | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        check(isinstance(self.rollouts, int) and not isinstance(self.rollouts, bool)
              and self.rollouts >= 1, "rollouts", "must be an integer >= 1", self.rollouts)
        check(isinstance(self.hard_threshold, (int, float)) and 0.0 <= self.hard_threshold < 1.0,
              "hard_threshold", "must be in [0, 1)", self.hard_threshold)
        check(isinstance(self.truncate_after_first_error, bool), "truncate_after_first_error",
              "must be true or false", self.truncate_after_first_error)
        check(self.truncated in TRUNCATED_RULES, "truncated",
              f"must be one of {', '.join(TRUNCATED_RULES)}", self.truncated)
        check(self.stopping in STOPPING_RULES, "stopping",
              f"must be one of {', '.join(STOPPING_RULES)}", self.stopping)
        check(self.first_error_only is None or isinstance(self.first_error_only, bool),
              "first_error_only", "must be true, false or null", self.first_error_only)
        check(self.consensus_guided is None or isinstance(self.consensus_guided, bool),
              "consensus_guided", "must be true, false or null", self.consensus_guided)
        check(not (self.consensus_guided and self.first_error_only is False),
              "consensus_guided", "stops at the first error: it cannot be on with "
              "first_error_only false", self.consensus_guided)
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError(f"sampling must be a SamplingConfig, got {self.sampling!r}")

    def resolved(self, *, consensus: bool) -> "MonteCarloConfig":
        """This config with ``first_error_only`` and ``consensus_guided`` decided (see the
        class docstring). Raises ConfigError when ``consensus_guided`` is on without
        consensus."""
        check(not (self.consensus_guided and not consensus), "consensus_guided",
              "needs consensus (a judge and a consensus section)", self.consensus_guided)
        first_error_only = self.first_error_only
        if first_error_only is None:
            first_error_only = consensus or self.truncate_after_first_error
        guided = self.consensus_guided
        if guided is None:
            guided = consensus and first_error_only
        return replace(self, first_error_only=first_error_only or guided,
                       consensus_guided=guided)



# --------------------------------------------------------------------------------------------
# OmegaPRM

StepUnit = Literal["steps", "tokens"]


@dataclass(frozen=True)
class OmegaPRMConfig:
    """OmegaPRM settings; defaults are the paper's (OPRM §4).

    - ``alpha``, ``beta`` in (0, 1]: bases of the selection value Q.
    - ``length_scale``: L > 0, in tokens; ``beta ** (len(r) / L)`` penalises long rollouts.
    - ``c_puct`` >= 0: weight of the exploration bonus U.
    - ``rollouts``: k >= 1, rollouts per Monte Carlo estimate.
    - ``search_limit`` >= 1: binary searches (selections) per question.
    - ``prefilter_rollouts`` >= 2: rollouts from the question for the pre-filter (and the root).
    - ``prefilter_min_known``: known (graded) pre-filter rollouts needed to drop a question as
      ``all_correct`` or ``all_wrong``, in [1, prefilter_rollouts]; None (default): half of
      ``prefilter_rollouts``, rounded up. Fewer known, all alike: ``too_few_known``.
    - ``step_unit``: ``"steps"`` (pieces are the splitter's steps) or ``"tokens"`` (pieces are
      runs of ``ceil(mean root solution length / target_pieces)`` tokens, OPRM §4.2).
    - ``target_pieces`` >= 2: pieces per average solution when ``step_unit == "tokens"``.
    - ``truncated``: how a rollout cut off at ``sampling.max_tokens`` counts: ``unknown``
      (default: it never reached an answer, so it is in no MC value and never selected) or
      ``incorrect`` (graded as written, as implementations that ignore finish reasons do).
    - ``sampling``: rollout sampling settings.
    """

    alpha: float = 0.5
    beta: float = 0.9
    length_scale: float = 500.0
    c_puct: float = 0.125
    rollouts: int = 8
    search_limit: int = 100
    prefilter_rollouts: int = 32
    prefilter_min_known: int | None = None
    step_unit: StepUnit = "steps"
    target_pieces: int = 16
    truncated: Literal["unknown", "incorrect"] = "unknown"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        check(_is_number(self.alpha) and 0.0 < self.alpha <= 1.0, "alpha", "must be in (0, 1]",
              self.alpha)
        check(_is_number(self.beta) and 0.0 < self.beta <= 1.0, "beta", "must be in (0, 1]",
              self.beta)
        check(_is_number(self.length_scale) and self.length_scale > 0, "length_scale",
              "must be > 0 (tokens)", self.length_scale)
        check(_is_number(self.c_puct) and self.c_puct >= 0, "c_puct", "must be >= 0",
              self.c_puct)
        check(_is_int(self.rollouts) and self.rollouts >= 1, "rollouts",
              "must be an integer >= 1", self.rollouts)
        check(_is_int(self.search_limit) and self.search_limit >= 1, "search_limit",
              "must be an integer >= 1", self.search_limit)
        check(_is_int(self.prefilter_rollouts) and self.prefilter_rollouts >= 2,
              "prefilter_rollouts", "must be an integer >= 2", self.prefilter_rollouts)
        if self.prefilter_min_known is not None:
            check(_is_int(self.prefilter_min_known)
                  and 1 <= self.prefilter_min_known <= self.prefilter_rollouts,
                  "prefilter_min_known",
                  f"must be an integer in [1, prefilter_rollouts = {self.prefilter_rollouts}]",
                  self.prefilter_min_known)
        check(self.step_unit in ("steps", "tokens"), "step_unit",
              "must be one of 'steps', 'tokens'", self.step_unit)
        check(_is_int(self.target_pieces) and self.target_pieces >= 2, "target_pieces",
              "must be an integer >= 2", self.target_pieces)
        check(self.truncated in TRUNCATED_RULES, "truncated",
              f"must be one of {', '.join(TRUNCATED_RULES)}", self.truncated)
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError(f"sampling must be a SamplingConfig, got {self.sampling!r}")

    @property
    def min_known(self) -> int:
        """Known pre-filter rollouts needed to call a question all correct or all wrong."""
        if self.prefilter_min_known is not None:
            return self.prefilter_min_known
        return math.ceil(self.prefilter_rollouts / 2)


# --------------------------------------------------------------------------------------------
# LLM judge

JudgeParser = Literal["processbench", "robust"]
PARSER_PROCESSBENCH: JudgeParser = "processbench"
PARSER_ROBUST: JudgeParser = "robust"
JUDGE_PARSERS: tuple[str, ...] = (PARSER_PROCESSBENCH, PARSER_ROBUST)

#: The version of each parser, recorded on every judge result and in the lock; bump a parser's
#: version whenever its rule (or the reading around it, ``annotators.judge.read_reply``)
#: changes meaning. robust/1 was the only parser before the truncation and stop-string rules
#: existed.
JUDGE_PARSER_VERSION: dict[str, str] = {
    PARSER_PROCESSBENCH: "steplabel-judge-parser/processbench-1",
    PARSER_ROBUST: "steplabel-judge-parser/robust-2",
}
DEFAULT_JUDGE_TEMPLATE = "judge_processbench_v1"
_TEMPLATE_FIELDS = frozenset({"problem", "tagged_steps"})


@dataclass(frozen=True)
class JudgeSampling(SamplingConfig):
    """The judge's sampling settings: :class:`SamplingConfig` with the judge's defaults, greedy
    (temperature 0, as ProcessBench decodes a single critic reply) and 512 new tokens. A
    manifest that gives only some keys (``sampling: {max_tokens: 1024}``) keeps these defaults
    for the others."""

    temperature: float = 0.0
    max_tokens: int = 512


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge stage prompts, samples, parses and votes.

    - ``template_id``: a prompt template in ``schemas/prompts/`` with exactly the fields
      ``{problem}`` and ``{tagged_steps}``; recorded with its SHA-256 on every result.
    - ``votes``: samples per solution, >= 1. Default 1 with greedy decoding, ProcessBench's
      default protocol; ProcessBench's voting protocol is 8 samples (temperature 1.0, top_p
      0.9 in its script).
    - ``sampling``: :class:`JudgeSampling` (temperature 0, ``max_tokens`` 512, enough for a
      short analysis of each paragraph of a GSM8K/MATH-length solution). A reply cut off by
      ``max_tokens`` is unknown (``truncated``); raise ``max_tokens`` for long (Olympiad-style)
      solutions. Temperature 0 with ``votes > 1`` is rejected: the votes would all be the same
      sample and the agreement fraction would mean nothing. ``stop`` strings are re-appended
      to a reply that finished with ``stop`` before it is parsed (module docstring).
    - ``response_prefix``: written at the start of the judge's reply and parsed as part of it.
      Empty for capable judges; small models need the verdict's form forced, e.g. ``"The
      earliest wrong paragraph is \\boxed{"`` with ``stop: ["}"]`` (the judge then writes only
      the index; the reply ends at the closing brace).
    - ``parser``: ``processbench`` (default; ProcessBench's extraction, the last ``\\boxed{}``
      as an integer) or ``robust`` (also refuses replies whose boxes name two different
      in-range indices, so that a verdict quoted from the solution cannot change the label).
    - ``min_agreement``: the quorum, a fraction in (0, 1] of **all** votes (unparseable replies
      count as votes cast, against every index) that the most frequent index needs; below it
      the result is unknown (``no_quorum``). None (default): a strict majority, more than half
      of the votes. ``min_agreement: 0.01`` with 8 votes gives ProcessBench's plurality of the
      parseable votes (ties aside).
    """

    template_id: str = DEFAULT_JUDGE_TEMPLATE
    votes: int = 1
    response_prefix: str = ""
    parser: JudgeParser = PARSER_PROCESSBENCH
    min_agreement: float | None = None
    sampling: JudgeSampling = field(default_factory=JudgeSampling)

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
        check(isinstance(self.response_prefix, str), "response_prefix", "must be a string",
              self.response_prefix)
        check(self.parser in JUDGE_PARSERS, "parser",
              f"must be one of {', '.join(JUDGE_PARSERS)}", self.parser)
        check(self.min_agreement is None
              or (isinstance(self.min_agreement, (int, float))
                  and not isinstance(self.min_agreement, bool)
                  and 0.0 < self.min_agreement <= 1.0),
              "min_agreement", "must be null (a strict majority) or a fraction in (0, 1]",
              self.min_agreement)
        check(isinstance(self.sampling, SamplingConfig), "sampling",
              "must be a SamplingConfig", self.sampling)
        check(self.votes == 1 or self.sampling.temperature > 0.0, "sampling.temperature",
              f"must be > 0 when votes > 1 (votes={self.votes})", self.sampling.temperature)

    @property
    def parser_version(self) -> str:
        return JUDGE_PARSER_VERSION[self.parser]
