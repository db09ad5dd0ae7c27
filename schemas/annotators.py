"""The annotators' configs: what a manifest's ``monte_carlo``, ``omegaprm``, ``judge`` and
``critic`` sections hold, validated at construction (errors name the field and the value).

The annotators themselves (:mod:`steplabel.annotators.monte_carlo`, ``omegaprm``, ``judge``)
take these; they live here so that the manifest model imports nothing outside ``schemas/``.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass, field, replace
from typing import Literal

from steplabel.schemas.config import OMIT_DEFAULT, ConfigError, SamplingConfig, check
from steplabel.schemas.templates import PromptTemplate, load_template

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
# Posterior labels and the adaptive budget (the maths: annotators/posterior.py)

#: Default floor: success rates below 20% count as zero (a negative step). Chosen on the planted
#: benchmark (benchmarks/results/adaptive_budget.md, tau = 0 with 25% zero-rate steps): deciding
#: a zero step negative takes ln(1/(1-c)) / -ln(1-m) - 1 failures in a row (c = 0.85: 36 at
#: m = 0.05, 17 at 0.1, 11 at 0.15, 8 at 0.2), so at fixed k = 8's cost floors 0.05 and 0.1
#: leave too many steps undecided or overspend (distance to the targets 3.6 and 1.2); 0.2 came
#: closest (1.05; 0.88-0.92 with a prior fitted to a pilot). It is also what today's k = 8
#: labels can certify: 0 correct of 8 puts P(p > 0.2) at 0.13 under a uniform prior. A
#: smaller floor is a manifest setting, at the price in rollouts the table shows.
DEFAULT_MIN_SUCCESS = 0.2


@dataclass(frozen=True)
class BetaPrior:
    """The prior ``Beta(a, b)`` of a step's success rate; ``a, b > 0`` (pseudo-counts of
    successes and failures). Uniform (1, 1) by default; Jeffreys is (0.5, 0.5)."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        check(_is_number(self.a) and self.a > 0, "a", "must be a number > 0", self.a)
        check(_is_number(self.b) and self.b > 0, "b", "must be a number > 0", self.b)


@dataclass(frozen=True)
class RolloutBudget:
    """The adaptive budget (``monte_carlo.budget``): rollouts in rounds until the hard label is
    decided at ``confidence``.

    - ``min_rollouts`` >= 1: the first round; nothing is decided before it.
    - ``max_rollouts`` >= ``min_rollouts``: a step still undecided then is unknown
      (``undecided``).
    - ``confidence`` in (0.5, 1): decide positive at ``P(p > threshold) >= confidence``,
      negative at ``<= 1 - confidence``.

    - ``futility`` in [0, 1) or None (default, off): stop a step undecided, before
      ``max_rollouts``, once its chance of being decided by then is at most ``futility``: the
      chance that its later rounds decide it, each later rollout known and correct with the
      probability its posterior gives (a Pólya urn). 0 stops only a step no outcome of its
      later rollouts can decide (its labels are those without the rule, in fewer rollouts).
      On the planted benchmark (80 budget rows per seed) 0.1 cut 0-36% of the rollouts per
      step (mean 4-7%) for 0-0.9 points more undecided steps (mean 0.2), the emitted error
      within ±0.002 (benchmarks/results/adaptive_budget*.md).

    Each later round adds a quarter of the rollouts sampled so far, at least ``min_rollouts``
    and at most up to the max: 4, 8, 12, 16, 20, 25, 31, 32 for 4..32 (on the planted
    benchmark, quarter rounds spent ~5% fewer rollouts than half rounds for the same labels).
    """

    min_rollouts: int = 4
    max_rollouts: int = 32
    confidence: float = 0.9
    futility: float | None = field(default=None, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        check(isinstance(self.min_rollouts, int) and not isinstance(self.min_rollouts, bool)
              and self.min_rollouts >= 1, "min_rollouts", "must be an integer >= 1",
              self.min_rollouts)
        check(isinstance(self.max_rollouts, int) and not isinstance(self.max_rollouts, bool)
              and self.max_rollouts >= self.min_rollouts, "max_rollouts",
              f"must be an integer >= min_rollouts = {self.min_rollouts}", self.max_rollouts)
        check(_is_number(self.confidence) and 0.5 < self.confidence < 1.0, "confidence",
              "must be in (0.5, 1)", self.confidence)
        check(self.futility is None or (_is_number(self.futility)
                                        and 0.0 <= self.futility < 1.0),
              "futility", "must be in [0, 1) or null", self.futility)

    def next_round(self, sampled: int) -> int:
        """Rollouts of the next round after ``sampled`` (0 before the first); 0 at the max."""
        if sampled <= 0:
            return self.min_rollouts
        return max(0, min(self.max_rollouts - sampled, max(self.min_rollouts, sampled // 4)))


def threshold_of(tau: float, min_success: float) -> float:
    """The success rate the posterior is asked about: ``max(tau, min_success)``."""
    return max(float(tau), float(min_success))

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
    - ``prior``: the Beta prior of a step's success rate (uniform by default), for the
      posterior recorded per step (:mod:`posterior`). ``steplabel plan`` prints one fitted to
      its pilot's counts; on the planted benchmark it helped at τ = 0 and hurt at τ = 0.25
      with rates clustered at the threshold (docs/posterior.md).
    - ``min_success`` in [0, 1): success rates below it count as zero; the posterior is asked
      ``P(p > max(hard_threshold, min_success))`` (τ = 0 needs a floor: see
      :data:`posterior.DEFAULT_MIN_SUCCESS` for the default's reason).
    - ``budget``: the adaptive budget (:class:`posterior.RolloutBudget`); None (default) keeps
      k rollouts per step under ``stopping``. With a budget, ``rollouts`` and ``stopping`` are
      unused: a step gets rollouts in rounds until ``P(p > threshold)`` decides its hard label
      at ``budget.confidence``, and is unknown (``undecided``) if ``budget.max_rollouts`` do
      not. Rollout ``i`` of a step keeps seed ``step_seed + i`` whatever the rounds.
    """

    rollouts: int = 8
    hard_threshold: float = 0.0
    truncate_after_first_error: bool = False
    truncated: Literal["unknown", "incorrect"] = "unknown"
    stopping: Literal["decided", "fixed"] = "decided"
    first_error_only: bool | None = None
    consensus_guided: bool | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Left out of the canonical form at their defaults: manifests without them keep their hash.
    prior: BetaPrior = field(default_factory=BetaPrior, metadata={OMIT_DEFAULT: True})
    min_success: float = field(default=DEFAULT_MIN_SUCCESS, metadata={OMIT_DEFAULT: True})
    budget: RolloutBudget | None = field(default=None, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        check(isinstance(self.rollouts, int) and not isinstance(self.rollouts, bool)
              and self.rollouts >= 1, "rollouts", "must be an integer >= 1", self.rollouts)
        check(_is_number(self.min_success) and 0.0 <= self.min_success < 1.0, "min_success",
              "must be in [0, 1)", self.min_success)
        if not isinstance(self.prior, BetaPrior):
            raise ConfigError(f"prior must be a BetaPrior, got {self.prior!r}")
        if self.budget is not None and not isinstance(self.budget, RolloutBudget):
            raise ConfigError(f"budget must be a RolloutBudget or null, got {self.budget!r}")
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

    @property
    def threshold(self) -> float:
        """The success rate the posterior is asked about: ``max(hard_threshold, min_success)``."""
        return threshold_of(self.hard_threshold, self.min_success)

    @property
    def max_rollouts(self) -> int:
        """Most rollouts a step can get: ``budget.max_rollouts``, else k."""
        return self.budget.max_rollouts if self.budget is not None else self.rollouts

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
    - ``budget``, ``prior``, ``min_success``: the adaptive budget for the binary search's Monte
      Carlo probes, as in :class:`MonteCarloConfig`: with a budget, a probe gets
      rollouts in rounds (seeds ``state_seed + i`` whatever the rounds) until
      ``P(p > min_success)`` decides it at ``budget.confidence`` (``rollouts`` is unused for
      probes; the pre-filter keeps ``prefilter_rollouts``). A probe decided negative is the
      error side of the search, positive the correct side; a probe still undecided after
      ``max_rollouts`` stops the search like an unknown one (reason ``probe_undecided``). The
      tree then splits good from bad prefixes by these decisions. None (default): k rollouts.
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
    # Left out of the canonical form at their defaults: manifests without them keep their hash.
    prior: BetaPrior = field(default_factory=BetaPrior, metadata={OMIT_DEFAULT: True})
    min_success: float = field(default=DEFAULT_MIN_SUCCESS, metadata={OMIT_DEFAULT: True})
    budget: RolloutBudget | None = field(default=None, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        check(_is_number(self.min_success) and 0.0 <= self.min_success < 1.0, "min_success",
              "must be in [0, 1)", self.min_success)
        if not isinstance(self.prior, BetaPrior):
            raise ConfigError(f"prior must be a BetaPrior, got {self.prior!r}")
        if self.budget is not None and not isinstance(self.budget, RolloutBudget):
            raise ConfigError(f"budget must be a RolloutBudget or null, got {self.budget!r}")
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


_BOXED_OPEN_RE = re.compile(r"\\boxed[ \t\n]{0,16}\{")


def forces_verdict_box(response_prefix: str) -> bool:
    """Whether ``response_prefix`` ends inside an open ``\\boxed{`` (the forced verdict form):
    its last ``\\boxed{`` is not closed within the prefix."""
    opened = list(_BOXED_OPEN_RE.finditer(response_prefix))
    return bool(opened) and "}" not in response_prefix[opened[-1].end():]


def _problem_and_steps_template(template_id) -> PromptTemplate:
    """The template ``template_id`` names, checked to have exactly the fields ``{problem}`` and
    ``{tagged_steps}`` (the judge's and the critic's prompts); a ConfigError names the field."""
    check(isinstance(template_id, str) and bool(template_id), "template_id",
          "must be a non-empty string", template_id)
    try:
        template = load_template(template_id)
    except ValueError as exc:
        raise ConfigError(f"template_id {exc}") from None
    fields = {name for _, name, _, _ in string.Formatter().parse(template.text) if name}
    check(fields == _TEMPLATE_FIELDS, "template_id",
          "must name a template with exactly the fields {problem} and {tagged_steps}",
          template_id)
    return template


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
    - ``constrain_verdict``: with a ``response_prefix`` that forces the verdict box, constrain
      the judge's continuation to the valid verdicts (``-1`` ... ``num_steps - 1``, then the
      closing brace) by constrained decoding (the engine's ``choices``). The model still picks
      the verdict; it can no longer write one that cannot be read (``\\boxed{k}``, an index
      past the last step). Off by default: a capable judge writes its analysis first.
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
    # Left out of the canonical form when off: manifests without it keep their hash.
    constrain_verdict: bool = field(default=False, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        _problem_and_steps_template(self.template_id)
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
        check(isinstance(self.constrain_verdict, bool), "constrain_verdict",
              "must be true or false", self.constrain_verdict)
        check(not self.constrain_verdict or forces_verdict_box(self.response_prefix),
              "constrain_verdict", "needs a response_prefix that ends inside an open "
              "\\boxed{ (the forced verdict form)", self.constrain_verdict)

    @property
    def parser_version(self) -> str:
        return JUDGE_PARSER_VERSION[self.parser]


# --------------------------------------------------------------------------------------------
# Critic (verified critiques, issue #25; the rules: annotators/critic.py)

DEFAULT_CRITIC_TEMPLATE = "critic_thinkprm_v1"
#: The verdict strings the critic's template asks for, exactly.
VERDICT_CORRECT = "\\boxed{correct}"
VERDICT_INCORRECT = "\\boxed{incorrect}"
CriticTrust = Literal["monte_carlo", "omegaprm", "consensus"]
TRUST_CONSENSUS: CriticTrust = "consensus"
TRUST_MONTE_CARLO: CriticTrust = "monte_carlo"
TRUST_OMEGAPRM: CriticTrust = "omegaprm"
TRUST_SOURCES: tuple[str, ...] = (TRUST_MONTE_CARLO, TRUST_OMEGAPRM, TRUST_CONSENSUS)
#: ``critic.max_step_chars``: the default and the largest verification per step (characters)
#: under ``critic.constrain_form``.
DEFAULT_MAX_STEP_CHARS = 200
MAX_STEP_CHARS_LIMIT = 4096
#: The step header the forced form writes (``Paragraph 0: ``); the template must ask for it.
CRITIC_FORM_HEADER = "Paragraph i:"


@dataclass(frozen=True)
class CriticSampling(SamplingConfig):
    """The critic's sampling settings: temperature 0.7 (its samples must differ to be worth
    several) and 1,024 new tokens (a short verification of each step of a GSM8K/MATH-length
    solution; a critique cut off there is unusable, so raise it for long solutions or for
    long-thinking critics, which ThinkPRM gives 8K)."""

    temperature: float = 0.7
    max_tokens: int = 1024


@dataclass(frozen=True)
class CriticConfig:
    """How the critic stage prompts, samples, verifies and keeps critiques (manifest section
    ``critic:``; its engine is ``models.critic``, by default the judge's model).

    - ``samples``: critiques per solution, >= 1, all from one request (``n = samples``).
    - ``template_id``: a template in ``schemas/prompts/`` with exactly the fields
      ``{problem}`` and ``{tagged_steps}`` that asks for the verdicts ``\\boxed{correct}`` and
      ``\\boxed{incorrect}``; recorded with its SHA-256 on every critique.
    - ``sampling``: :class:`CriticSampling`. Temperature 0 with ``samples > 1`` is rejected
      (every sample would be the same critique).
    - ``trust``: whose labels the critiques are checked against: ``consensus`` (default),
      ``monte_carlo`` or ``omegaprm``; the manifest needs that annotator enabled. OmegaPRM
      searches its own rollouts, never the policy's samples, so under ``omegaprm`` the critic
      verifies OmegaPRM's searched rollouts (``omegaprm_searches``: their pieces as the steps,
      the located first error as the trusted one; ``omegaprm.step_unit`` must be ``steps``);
      the policy's samples have no OmegaPRM labels and are skipped (``only_trusted``) or
      unverified (``no_trusted_labels``), as is a search that located no error.
    - ``keep_per_solution``: at most this many agreeing critiques are kept per solution
      (default 1), >= 1.
    - ``only_trusted``: run the critic only on trajectories that have trusted labels (default
      true): a critique of a trajectory without them can never be kept. The solutions skipped
      and the requests and samples not spent are counted (``critic_solutions_skipped``,
      ``critic_requests_not_spent``, ``critic_rollouts_not_spent``).
    - ``min_agreement``: the quorum of the critic's own first-error vote (``evaluate``), as the
      judge's: None (default) is a strict majority of all samples.
    - ``constrain_form``: constrain every critique to the template's form by constrained
      decoding (a regular expression built per solution, the engine's ``regex``): for each
      step i in order, a line ``Paragraph i: `` then at most ``max_step_chars`` characters of
      verification (no newline, no backslash) then ``\\boxed{correct}`` or
      ``\\boxed{incorrect}``; the critique ends after the first incorrect verdict, or after the
      last step's correct one (``annotators/critic.py``, :func:`critique_form_regex`). The model
      still writes every word and picks every verdict; only the form is forced. Default false:
      a capable critic writes ThinkPRM's free-form verification, which a one-line-per-step form
      would cut short. For small critics that cannot keep the form (the demo's 135M model).
    - ``max_step_chars``: the verification's length cap per step under ``constrain_form``
      (characters, 1..4096; default 200). Size ``sampling.max_tokens`` to fit a whole
      constrained critique, about ``steps * (max_step_chars + 30)`` characters: one cut off is
      still ``truncated``.
    """

    samples: int = 4
    template_id: str = DEFAULT_CRITIC_TEMPLATE
    sampling: CriticSampling = field(default_factory=CriticSampling)
    trust: CriticTrust = TRUST_CONSENSUS
    keep_per_solution: int = 1
    only_trusted: bool = True
    min_agreement: float | None = None
    # Left out of the canonical form at their defaults: manifests without them keep their hash.
    constrain_form: bool = field(default=False, metadata={OMIT_DEFAULT: True})
    max_step_chars: int = field(default=DEFAULT_MAX_STEP_CHARS, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        check(_is_int(self.samples) and self.samples >= 1, "samples",
              "must be an integer >= 1", self.samples)
        template = _problem_and_steps_template(self.template_id)
        shown = template.render(problem="", tagged_steps="")
        check(VERDICT_CORRECT in shown and VERDICT_INCORRECT in shown, "template_id",
              f"must name a template that asks for the verdicts {VERDICT_CORRECT} and "
              f"{VERDICT_INCORRECT}", self.template_id)
        check(isinstance(self.sampling, SamplingConfig), "sampling", "must be a SamplingConfig",
              self.sampling)
        check(self.samples == 1 or self.sampling.temperature > 0.0, "sampling.temperature",
              f"must be > 0 when samples > 1 (samples={self.samples})",
              self.sampling.temperature)
        check(self.trust in TRUST_SOURCES, "trust", f"must be one of {', '.join(TRUST_SOURCES)}",
              self.trust)
        check(_is_int(self.keep_per_solution) and self.keep_per_solution >= 1,
              "keep_per_solution", "must be an integer >= 1", self.keep_per_solution)
        check(isinstance(self.only_trusted, bool), "only_trusted", "must be true or false",
              self.only_trusted)
        check(self.min_agreement is None
              or (_is_number(self.min_agreement) and 0.0 < self.min_agreement <= 1.0),
              "min_agreement", "must be null (a strict majority) or a fraction in (0, 1]",
              self.min_agreement)
        check(isinstance(self.constrain_form, bool), "constrain_form", "must be true or false",
              self.constrain_form)
        check(_is_int(self.max_step_chars) and 1 <= self.max_step_chars <= MAX_STEP_CHARS_LIMIT,
              "max_step_chars", f"must be an integer in [1, {MAX_STEP_CHARS_LIMIT}]",
              self.max_step_chars)
        check(not self.constrain_form or CRITIC_FORM_HEADER in shown, "constrain_form",
              f"needs a template that asks for the header {CRITIC_FORM_HEADER!r} (the forced "
              f"form); {self.template_id} does not", self.constrain_form)

    def sampling_json(self) -> str:
        """The sampling settings as recorded in provenance (JSON, keys sorted); with
        ``constrain_form``, also ``constrain_form`` and ``max_step_chars``."""
        s = self.sampling
        settings = {"n": self.samples, "temperature": s.temperature, "top_p": s.top_p,
                    "max_tokens": s.max_tokens, "stop": list(s.stop)}
        if self.constrain_form:
            settings.update(constrain_form=True, max_step_chars=self.max_step_chars)
        return json.dumps(settings, sort_keys=True)
