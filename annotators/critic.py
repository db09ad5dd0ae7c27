"""Verified critiques: a critic model verifies a solution step by step, and the critiques whose
step verdicts agree with the trajectory's trusted labels become training data for generative
process reward models (ThinkPRM, GenPRM).

The critic sees the problem and the steps tagged ``<paragraph_0>`` ... ``<paragraph_{M-1}>``
(the judge's :func:`~steplabel.annotators.judge.tag_steps`). The template
(``critic_thinkprm_v1``, ThinkPRM's form) asks it to verify the paragraphs in order, each under
a header ``Paragraph i:`` and ending with exactly ``\\boxed{correct}`` or
``\\boxed{incorrect}``, and to stop after the first incorrect paragraph. One request samples
``critic.samples`` critiques (default 4), seeded by
``derive_seed(run_seed, "critic", problem_id, solution_index)`` (for one of OmegaPRM's searched
rollouts, ``derive_seed(run_seed, "critic", problem_id, rollout_id)``).

Index convention (ProcessBench, 0-indexed): a first-error index lies in ``{-1, 0, ..., M-1}``;
``-1`` means "no error"; None means unknown.

Parse rule (:func:`parse_critique`, versioned in :data:`CRITIC_PARSER_VERSION`)
---------------------------------------------------------------------------
1. *Read at all?* A critique cut off by ``max_tokens`` (finish reason ``length``) is
   ``truncated``: it stops mid-verification, and what it says of the steps it reached is not
   its whole reading. One that is not a string or is blank is ``empty_reply``; one longer than
   :data:`MAX_CRITIQUE_CHARS` is ``reply_too_long`` (bounds the work on untrusted text).
2. *Verdicts.* A verdict is a ``\\boxed{...}`` (spaces allowed before the brace) whose content,
   stripped, and unwrapped from one ``\\text{}``/``\\textbf{}``/``\\mathrm{}``, is the word
   ``correct`` or ``incorrect`` **in any letter case**: ``\\boxed{Correct}`` is a verdict. The
   case carries no meaning, and refusing it would make every ``Correct`` critic unknown on
   ``evaluate``; kept critiques keep their text as written (the SFT data is not rewritten).
   Any other box (a quoted answer ``\\boxed{8}``, ``\\boxed{wrong}``) is not a verdict and is
   ignored; none at all is ``no_verdict``. Two verdicts joined only by ``or`` or ``/``
   (``\\boxed{correct} or \\boxed{incorrect}``) are the instructions quoted back, not
   verdicts: the critique is ``quotes_verdict_form`` (small models echo their prompt; read by
   count, the quotation would become two steps' verdicts).
3. *Which step each verdict is for* (in order of appearance):

   - **Headers present**: a header is a line that starts (after at most 16 characters of
     markdown: ``#``, ``*``, ``_``, ``-``, ``>``, spaces) with ``Paragraph k`` (or
     ``paragraph_k``), then only markup and one of ``:`` ``.`` ``)`` ``-`` or the end of the
     line (``**Paragraph 2:**``, ``### Paragraph 2``; not ``Paragraph 2 says ...``). ``k`` is
     the 0-based index, as in the tags. A verdict belongs to the last header before it; one
     before the first header is ``verdict_outside_step``. "Two verdicts for one step" is two
     verdicts under headers with the same index (``two_verdicts_for_step``); a later verdict
     for an earlier step than the one before it is ``verdicts_out_of_order``.
   - **No header**: the i-th verdict is step i's. A doubled verdict then shows only as a
     count: more verdicts than steps is ``too_many_verdicts``, fewer (without an incorrect
     one) is ``missing_verdict``; a skipped step before the last verdict cannot be seen, which
     is why the template asks for headers.
   - ``Step k`` headers are *not* read: the solutions themselves are written ``Step 1: ...``,
     so a critic quoting a step would draw a false boundary, and their numbering (1-based in
     the solution) disagrees with the tags.

   A verdict for a step index >= M is ``too_many_verdicts``.
4. *Coverage.* ``first_error`` is the first step (in step order) called incorrect, ``-1`` when
   none is. Every step before it (every step, when it is ``-1``) must have a verdict, else
   ``missing_verdict``. Steps after the first incorrect one need none: the template tells the
   critic to stop there, so ``step_verdicts`` holds None for them; verdicts a critic writes
   there anyway are recorded as written but never checked (below).
5. *Contradiction.* A critique that calls a step incorrect and also claims the whole thing is
   right ("all steps are correct.", "the solution is correct.", "the solution has no errors.",
   "there are no errors in the solution.", "Is the solution correct? Yes"), or calls every step
   correct and also claims it is wrong ("the solution is incorrect.", "the solution contains an
   error", "Is the solution correct? No"), is ``contradiction``. Only claims about the whole
   solution count ("there are no errors." may be about one paragraph), a claim that it is right
   only as a whole sentence (it must end at ``.``, ``!`` or the line's end: "all steps are
   correct up to paragraph 2" is not one), and no claim after ``not``, ``of``, ``in``, ``if``,
   ``whether``, ``unless`` or ``never``. The check is deliberately strict: a rejected honest
   critique costs one sample, a kept self-contradicting one teaches a model to contradict
   itself.

   *A step's words against its own box* (parser 2): a verification that says "this step is
   wrong" (``this step`` or ``this paragraph``, then ``is``/``was`` ``wrong``, ``incorrect``,
   ``invalid``, ``erroneous``, ``flawed``, ``not correct``; or ``has``/``contains``/``makes``
   ``an error``/``a mistake``) and ends in ``\\boxed{correct}``, or says "this step is correct"
   (``correct``, ``right``, ``valid``; or ``has no errors``) and ends in
   ``\\boxed{incorrect}``, is ``contradiction``. Conservatively: only ``this step`` /
   ``this paragraph`` (not "the previous step", "the sum"), only in the verification of that
   verdict (from its header, or without headers from the previous verdict, to the box), only a
   whole clause (followed by ``.`` ``!`` ``;`` ``:`` ``,``, ``because``, ``since`` or the line's
   end: "this step is correct up to the sum" is not one), and not after the qualifiers above
   ("whether this step is wrong"). Every verdict's verification is read, those after the first
   error too (they are kept as written).

An unusable critique has ``step_verdicts`` and ``first_error`` None and its reason; it is never
read as "all correct" or as an error.

Verification against trusted labels (:func:`check_critique`, :data:`CRITIC_VERIFY_VERSION`)
-----------------------------------------------------------------------------------------
Trusted labels are a trajectory's first error from ``critic.trust``: ``consensus`` (default:
Monte Carlo and the judge agreed, and the agreed index is trusted), ``monte_carlo`` or
``omegaprm`` (:func:`trusted_labels`). OmegaPRM labels only its own searched rollouts (it never
searches the policy's samples), so under ``omegaprm`` the trajectories verified are those
rollouts, each with the first error its binary search located; the policy's samples have no
trusted labels there. A usable critique *agrees* when

- the trusted first error is ``e >= 0``: every step before ``e`` is judged correct and step
  ``e`` incorrect, i.e. the critique's first error is ``e``; or
- the trusted first error is ``-1``: every step is judged correct.

Steps after the first error are not checked: once a solution has gone wrong, no trusted source
says whether a later step is right. A Monte Carlo (Math-Shepherd) label of a later step
estimates whether the gold answer is still reachable from a prefix that already holds the
error, not whether that step is sound; consensus keeps labels only up to the first error
(``consensus_labels``); OmegaPRM's search locates only the first error; ProcessBench defines
only the first error, and PRM800K's phase-2 labellers stop at it (``found_error``) [PB §3.1;
QL §2.1; PRM800K README]. Checking later verdicts would reject critiques for disagreeing
with labels nobody trusts.

Otherwise the critique *disagrees at step k*, the first step where its verdict differs from the
trusted labels (``disagrees_at_step_<k>``, 0-based). A trajectory without trusted labels
(first error None) leaves its critiques unverified (``no_trusted_labels``), never "wrong".

Of the agreeing critiques, at most ``critic.keep_per_solution`` (default 1) are kept: the ones
with the lowest sample indices (deterministic, and independent of the text); the others are
``not_kept_quota``. Unusable critiques are ``unusable:<parse reason>``.

Evaluate (:func:`predict_first_error`)
--------------------------------------
As a first-error predictor, the critic's index is the judge's vote (:func:`judge.decide`) over
its samples: every critique is a vote cast, an unusable one a spoiled ballot; the most frequent
first error wins if it has a strict majority of all samples (or ``min_agreement`` of them),
ties going to the earliest error; else unknown (``no_quorum``; with no usable critique, the most
common parse reason). With ``samples: 1`` the one critique decides alone.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from steplabel.annotators.consensus import consensus_labels
from steplabel.annotators.judge import (
    FINISH_LENGTH,
    decide,
    render_user_message,
    tag_steps,
)
from steplabel.annotators.prompts import PromptTemplate, load_template
from steplabel.annotators.seeds import derive_seed
from steplabel.engines.base import (
    ChatMessage,
    CostMeter,
    GenerationEngine,
    GenerationRequest,
)
# The critic's config and its constants live with the manifest (schemas/), re-exported here.
from steplabel.schemas.annotators import (  # noqa: F401
    DEFAULT_CRITIC_TEMPLATE,
    DEFAULT_MAX_STEP_CHARS,
    TRUST_CONSENSUS,
    TRUST_MONTE_CARLO,
    TRUST_OMEGAPRM,
    TRUST_SOURCES,
    VERDICT_CORRECT,
    VERDICT_INCORRECT,
    CriticConfig,
    CriticSampling,
    CriticTrust,
)
from steplabel.schemas.critiques import Critique
from steplabel.schemas.rows import Cost, as_row

ANNOTATOR_NAME = "critic"
#: Bump when :func:`parse_critique`'s rule changes meaning.
CRITIC_PARSER_VERSION = "steplabel-critic-parser/2"  # 2: a step's words against its box
#: Bump when :func:`check_critique` / :func:`verify_critiques` change meaning.
CRITIC_VERIFY_VERSION = "steplabel-critic-verify/1"
#: Bump when :func:`critique_form_regex` changes the form it forces.
CRITIC_FORM_VERSION = "steplabel-critic-form/1"
#: Critiques longer than this (in characters) are not parsed: ``reply_too_long``. 8K generated
#: tokens (ThinkPRM's budget) are ~32K characters; this leaves a wide margin.
MAX_CRITIQUE_CHARS = 131_072
#: A ``\boxed{`` whose closing brace does not come within this many characters holds no verdict.
MAX_BOXED_CHARS = 64

# Parse reasons: ``ok`` or why the critique is unusable.
REASON_OK = "ok"
REASON_EMPTY = "empty_reply"
REASON_TOO_LONG = "reply_too_long"
REASON_TRUNCATED = "truncated"
REASON_NO_VERDICT = "no_verdict"
REASON_QUOTED_FORM = "quotes_verdict_form"
REASON_OUTSIDE_STEP = "verdict_outside_step"
REASON_TOO_MANY = "too_many_verdicts"
REASON_TWO_VERDICTS = "two_verdicts_for_step"
REASON_OUT_OF_ORDER = "verdicts_out_of_order"
REASON_MISSING = "missing_verdict"
REASON_CONTRADICTION = "contradiction"
PARSE_REASONS = (REASON_OK, REASON_EMPTY, REASON_TOO_LONG, REASON_TRUNCATED, REASON_NO_VERDICT,
                 REASON_QUOTED_FORM, REASON_OUTSIDE_STEP, REASON_TOO_MANY, REASON_TWO_VERDICTS,
                 REASON_OUT_OF_ORDER, REASON_MISSING, REASON_CONTRADICTION)

# Verification reasons of one critique (``disagrees_at_step_<k>`` and ``unusable:<parse reason>``
# are built by :func:`disagrees_at` and :func:`unusable`).
REASON_KEPT = "kept"
REASON_NOT_KEPT_QUOTA = "not_kept_quota"
REASON_NO_TRUSTED = "no_trusted_labels"
DISAGREES_PREFIX = "disagrees_at_step_"
UNUSABLE_PREFIX = "unusable:"

#: ``trusted_source`` of a critique checked against nothing (e.g. on ``evaluate``).
SOURCE_NONE = "none"

def disagrees_at(step: int) -> str:
    return f"{DISAGREES_PREFIX}{step}"


def unusable(parse_reason: str) -> str:
    return f"{UNUSABLE_PREFIX}{parse_reason}"


def critic_version(config: CriticConfig | None = None) -> str:
    """The critic annotator's version for provenance: prompt protocol, parser, verification,
    and the forced form's version when ``config.constrain_form`` is on."""
    version = f"{ANNOTATOR_NAME}/1;{CRITIC_PARSER_VERSION};{CRITIC_VERIFY_VERSION}"
    if config is not None and config.constrain_form:
        version += f";{CRITIC_FORM_VERSION}"
    return version


# --------------------------------------------------------------------------------------------
# The constrained form (``critic.constrain_form``)


def critique_form_regex(num_steps: int, max_step_chars: int = DEFAULT_MAX_STEP_CHARS) -> str:
    """The regular expression a constrained critique of ``num_steps`` (>= 1) steps must match
    (:data:`CRITIC_FORM_VERSION`; the engine's ``regex``, vLLM structured outputs).

    For step i = 0, 1, ... in order: the line ``Paragraph i: ``, then 0 to ``max_step_chars``
    characters of verification that are neither a newline nor a backslash (so the text holds
    no other box and no other line), then ``\\boxed{correct}`` or ``\\boxed{incorrect}``.
    After ``incorrect`` the critique ends (the template asks the critic to stop at the first
    incorrect paragraph); after ``correct`` a newline and the next step's line follow, and the
    last step's ``correct`` ends it. The steps nest, so the pattern grows linearly with
    ``num_steps``. Only plain groups, character classes and bounded repeats are used: the
    subset every structured-output backend of vLLM reads.

    Every whole match parses as usable (:func:`parse_critique`) unless its words contradict its
    verdicts (rule 5): the form forces one verdict per step, in order, up to the first
    incorrect one."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if isinstance(max_step_chars, bool) or not isinstance(max_step_chars, int) \
            or max_step_chars < 1:
        raise ValueError(f"max_step_chars must be an integer >= 1, got {max_step_chars!r}")
    text = f"[^\\n\\\\]{{0,{max_step_chars}}}"
    verdict = "\\\\boxed\\{"
    pattern = f"Paragraph {num_steps - 1}: {text}{verdict}(correct|incorrect)\\}}"
    for i in reversed(range(num_steps - 1)):
        pattern = (f"Paragraph {i}: {text}{verdict}(incorrect\\}}|correct\\}}\\n"
                   f"{pattern})")
    return pattern


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class CritiqueParse:
    """One parsed critique.

    ``reason == "ok"``: ``step_verdicts`` has one entry per step (True correct, False
    incorrect, None no verdict: only after the first error) and ``first_error`` is in
    ``-1..M-1``. Otherwise both are None and ``reason`` is one of :data:`PARSE_REASONS`.
    """

    step_verdicts: tuple[bool | None, ...] | None
    first_error: int | None
    reason: str

    @property
    def usable(self) -> bool:
        return self.reason == REASON_OK


def _unusable_parse(reason: str) -> CritiqueParse:
    return CritiqueParse(None, None, reason)


_BOXED_OPEN_RE = re.compile(r"\\boxed[ \t]{0,16}\{")
_WRAPPED_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf)[ \t]{0,4}\{([^{}]*)\}")
_VERDICT_WORDS = {"correct": True, "incorrect": False}
#: What joins two boxes in a quotation of the verdict form ("\boxed{correct} or ...").
_QUOTE_JOIN_RE = re.compile(r"[ \t*_$]*(?:or|/)[ \t*_$]*", re.IGNORECASE)
_HEADER_RE = re.compile(
    r"^[ \t>#*_\-]{0,16}paragraph[ \t_]?(\d{1,6})[ \t*_]{0,8}(?=[:.)\-\u2013\u2014]|$)",
    re.IGNORECASE | re.MULTILINE)


def _verdict_of(content: str) -> bool | None:
    text = content.strip()
    wrapped = _WRAPPED_RE.fullmatch(text)
    if wrapped is not None:
        text = wrapped.group(1).strip()
    return _VERDICT_WORDS.get(text.lower())


def find_verdicts(text: str) -> list[tuple[int, int, bool]]:
    """``(start, end, verdict)`` of every verdict box in ``text``, in order (rule 2). Linear in
    ``len(text)``: each box's closing brace is looked for within :data:`MAX_BOXED_CHARS`."""
    found = []
    for match in _BOXED_OPEN_RE.finditer(text):
        start, depth = match.end(), 1
        for i in range(start, min(len(text), start + MAX_BOXED_CHARS + 1)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    verdict = _verdict_of(text[start:i])
                    if verdict is not None:
                        found.append((match.start(), i + 1, verdict))
                    break
    return found


def find_headers(text: str) -> list[tuple[int, int]]:
    """``(position, paragraph index)`` of every ``Paragraph k`` header in ``text`` (rule 3)."""
    return [(m.start(), int(m.group(1))) for m in _HEADER_RE.finditer(text)]


_SOLUTION = r"(?:the[ \t]+)?(?:whole[ \t]+|entire[ \t]+|overall[ \t]+|full[ \t]+)?solution"
_SENTENCE_END = r"(?=[ \t*_]*(?:[.!]|$))"
_ASKED = (r"is[ \t]+the[ \t]+(?:whole[ \t]+|entire[ \t]+|overall[ \t]+)?solution[ \t]+"
          r"correct\?[ \t*_]*\n?[ \t*_>]*")
#: Claims that nothing is wrong (rule 5).
_ALL_RIGHT_RE = re.compile(
    r"\b(?:all|every|each)(?:[ \t]+of)?(?:[ \t]+the)?[ \t]+(?:steps?|paragraphs?)"
    r"(?:[ \t]+(?:of|in)[ \t]+the[ \t]+solution)?[ \t]+(?:is|are|was|were)"
    r"(?:[ \t]+(?:all|each|indeed))?[ \t]+(?:correct|right|valid)" + _SENTENCE_END
    + r"|\b" + _SOLUTION + r"[ \t]+is(?:[ \t]+(?:entirely|fully|completely|totally))?"
    r"[ \t]+(?:correct|right|valid)" + _SENTENCE_END
    + r"|\b" + _SOLUTION + r"[ \t]+(?:has|contains)[ \t]+no[ \t]+(?:errors?|mistakes?)"
    + _SENTENCE_END
    + r"|\b(?:there[ \t]+(?:are|were|is)[ \t]+no[ \t]+(?:errors?|mistakes?)"
    r"|no[ \t]+(?:errors?|mistakes?)[ \t]+(?:were|was)[ \t]+found)[ \t]+in[ \t]+"
    + _SOLUTION + _SENTENCE_END
    + r"|\b" + _ASKED + r"yes\b",
    re.IGNORECASE | re.MULTILINE)
#: Claims that something is wrong (rule 5).
_SOMETHING_WRONG_RE = re.compile(
    r"\b" + _SOLUTION + r"[ \t]+is[ \t]+(?:not[ \t]+correct|incorrect|wrong|invalid|flawed)"
    + _SENTENCE_END
    + r"|\b" + _SOLUTION + r"[ \t]+(?:has|contains)[ \t]+(?:an?[ \t]+)?(?:errors?|mistakes?)\b"
    + r"|\b" + _ASKED + r"no\b",
    re.IGNORECASE | re.MULTILINE)
_THIS_STEP = r"\bthis[ \t]+(?:step|paragraph)[ \t]+"
_CLAUSE_END = r"(?=[ \t*_]*(?:[.!;:,]|$|because\b|since\b))"
#: A step's verification saying that step is wrong (rule 5, parser 2).
_STEP_WRONG_RE = re.compile(
    _THIS_STEP + r"(?:is|was)[ \t]+(?:wrong|incorrect|invalid|erroneous|flawed"
    r"|not[ \t]+(?:correct|right|valid))" + _CLAUSE_END
    + r"|" + _THIS_STEP + r"(?:has|contains|makes)[ \t]+(?:an?[ \t]+)?(?:errors?|mistakes?)\b",
    re.IGNORECASE | re.MULTILINE)
#: A step's verification saying that step is right (rule 5, parser 2).
_STEP_RIGHT_RE = re.compile(
    _THIS_STEP + r"(?:is|was)(?:[ \t]+(?:entirely|fully|completely|totally))?[ \t]+"
    r"(?:correct|right|valid)" + _CLAUSE_END
    + r"|" + _THIS_STEP + r"(?:has|contains)[ \t]+no[ \t]+(?:errors?|mistakes?)\b",
    re.IGNORECASE | re.MULTILINE)
#: A claim right after one of these words is qualified, not a claim.
_QUALIFIED_RE = re.compile(r"(?:\bnot|n't|\bof|\bin|\bif|\bwhether|\bunless|\bnever)[ \t]*$",
                           re.IGNORECASE)


def _claims(pattern: re.Pattern, text: str) -> bool:
    for match in pattern.finditer(text):
        if not _QUALIFIED_RE.search(text[max(0, match.start() - 12):match.start()]):
            return True
    return False


def parse_critique(text: str, finish_reason: str, num_steps: int) -> CritiqueParse:
    """Every step's verdict in one critique, or why it is unusable (module docstring, rules 1-5).

    ``num_steps`` (M) must be >= 1. Never raises on any ``text``; time linear in its length.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if finish_reason == FINISH_LENGTH:
        return _unusable_parse(REASON_TRUNCATED)
    if not isinstance(text, str) or not text.strip():
        return _unusable_parse(REASON_EMPTY)
    if len(text) > MAX_CRITIQUE_CHARS:
        return _unusable_parse(REASON_TOO_LONG)
    verdicts = find_verdicts(text)
    if not verdicts:
        return _unusable_parse(REASON_NO_VERDICT)
    if any(_QUOTE_JOIN_RE.fullmatch(text, left[1], right[0])
           for left, right in zip(verdicts, verdicts[1:])):
        return _unusable_parse(REASON_QUOTED_FORM)
    headers = find_headers(text)
    # where each verdict's verification starts: its header, or the previous verdict's end
    previous_ends = [0] + [end for _, end, _ in verdicts[:-1]]
    if headers:
        starts = [position for position, _ in headers]
        assigned, opened = [], []
        for (position, _, verdict), previous_end in zip(verdicts, previous_ends):
            h = bisect.bisect_right(starts, position) - 1
            if h < 0:
                return _unusable_parse(REASON_OUTSIDE_STEP)
            assigned.append((headers[h][1], verdict))
            opened.append(max(starts[h], previous_end))
    else:
        assigned = [(i, verdict) for i, (_, _, verdict) in enumerate(verdicts)]
        opened = previous_ends
    if any(step >= num_steps for step, _ in assigned):
        return _unusable_parse(REASON_TOO_MANY)
    step_verdicts: list[bool | None] = [None] * num_steps
    previous = -1
    for step, verdict in assigned:
        if step_verdicts[step] is not None:
            return _unusable_parse(REASON_TWO_VERDICTS)
        if step < previous:
            return _unusable_parse(REASON_OUT_OF_ORDER)
        step_verdicts[step], previous = verdict, step
    first_error = next((i for i, v in enumerate(step_verdicts) if v is False), -1)
    checked = num_steps if first_error == -1 else first_error
    if any(v is None for v in step_verdicts[:checked]):
        return _unusable_parse(REASON_MISSING)
    if any(_claims(_STEP_WRONG_RE if verdict else _STEP_RIGHT_RE, text[start:position])
           for (position, _, verdict), start in zip(verdicts, opened)):
        return _unusable_parse(REASON_CONTRADICTION)
    contradicted = (_claims(_ALL_RIGHT_RE, text) if first_error >= 0
                    else _claims(_SOMETHING_WRONG_RE, text))
    if contradicted:
        return _unusable_parse(REASON_CONTRADICTION)
    return CritiqueParse(tuple(step_verdicts), first_error, REASON_OK)


# --------------------------------------------------------------------------------------------
# Trusted labels and verification


@dataclass(frozen=True)
class TrustedLabels:
    """A trajectory's trusted first error (``-1`` no error, None unknown) and its source
    (:data:`TRUST_SOURCES`, or ``none``)."""

    first_error: int | None
    source: str

    def labels(self, num_steps: int) -> list[bool] | None:
        """Hard labels up to and including the first error (None when unknown)."""
        if self.first_error is None:
            return None
        return consensus_labels(self.first_error, num_steps)


NO_TRUSTED_LABELS = TrustedLabels(None, SOURCE_NONE)


def trusted_labels(trust: str, *, mc_first_error: int | None = None,
                   omegaprm_first_error: int | None = None,
                   consensus_keep: bool | None = None) -> TrustedLabels:
    """The trusted labels of one trajectory under ``trust`` (:data:`TRUST_SOURCES`).

    ``consensus``: the agreed index when consensus kept the trajectory (``consensus_keep``;
    the agreed index is Monte Carlo's, equal to the judge's), else unknown. ``monte_carlo``,
    ``omegaprm``: that annotator's first error as it is (None stays unknown).
    """
    if trust == TRUST_CONSENSUS:
        if consensus_keep and mc_first_error is None:
            raise ValueError("consensus kept a trajectory without a Monte Carlo first error")
        return TrustedLabels(mc_first_error if consensus_keep else None, TRUST_CONSENSUS)
    if trust == TRUST_MONTE_CARLO:
        return TrustedLabels(mc_first_error, TRUST_MONTE_CARLO)
    if trust == TRUST_OMEGAPRM:
        return TrustedLabels(omegaprm_first_error, TRUST_OMEGAPRM)
    raise ValueError(f"trust must be one of {', '.join(TRUST_SOURCES)}, got {trust!r}")


def needs_critique(config: CriticConfig, trusted: TrustedLabels) -> bool:
    """Whether the critic runs on a trajectory: always, or (``only_trusted``) only when its
    trusted first error is known."""
    return not config.only_trusted or trusted.first_error is not None


@dataclass(frozen=True)
class CritiqueCheck:
    """One critique against the trusted labels: ``agrees`` (None: unusable or nothing to check
    against), ``kept`` and ``reason`` (``kept`` or why not)."""

    agrees: bool | None
    kept: bool
    reason: str


def check_critique(parse: CritiqueParse, trusted_first_error: int | None,
                   num_steps: int) -> tuple[bool | None, str]:
    """``(agrees, reason)`` of one critique before the quota (module docstring): ``(True,
    "kept")``, ``(False, "disagrees_at_step_<k>")``, ``(None, "unusable:<reason>")`` or
    ``(None, "no_trusted_labels")``. A trusted index outside ``-1..num_steps-1`` raises
    ValueError (a bug upstream, not a label)."""
    if trusted_first_error is not None and (
            isinstance(trusted_first_error, bool) or not isinstance(trusted_first_error, int)
            or not -1 <= trusted_first_error < num_steps):
        raise ValueError(f"trusted_first_error must be None or in -1..{num_steps - 1}, got "
                         f"{trusted_first_error!r}")
    if not parse.usable:
        return None, unusable(parse.reason)
    if trusted_first_error is None:
        return None, REASON_NO_TRUSTED
    if parse.first_error == trusted_first_error:
        return True, REASON_KEPT
    # The first step where the verdicts and the trusted labels differ: the critique's first
    # error if it comes first (a trusted-correct step called incorrect), else the trusted one.
    step = min(i for i in (parse.first_error, trusted_first_error) if i != -1)
    return False, disagrees_at(step)


def verify_critiques(parses: Sequence[CritiqueParse], trusted_first_error: int | None, *,
                     num_steps: int, keep_per_solution: int = 1) -> list[CritiqueCheck]:
    """Check every critique of one solution (in sample order) and keep at most
    ``keep_per_solution`` agreeing ones, those with the lowest sample indices."""
    if isinstance(keep_per_solution, bool) or not isinstance(keep_per_solution, int) \
            or keep_per_solution < 1:
        raise ValueError(f"keep_per_solution must be an integer >= 1, got {keep_per_solution!r}")
    checks, kept = [], 0
    for parse in parses:
        agrees, reason = check_critique(parse, trusted_first_error, num_steps)
        keep = bool(agrees) and kept < keep_per_solution
        if agrees and not keep:
            reason = REASON_NOT_KEPT_QUOTA
        kept += keep
        checks.append(CritiqueCheck(agrees, keep, reason))
    return checks


# --------------------------------------------------------------------------------------------
# Evaluate: the critic as a first-error predictor


@dataclass(frozen=True)
class CriticPrediction:
    """The critic's first-error prediction for one solution: ``first_error`` (``-1..M-1``, None
    unknown), ``agreement`` (the winning index's share of all samples, in [0, 1]), ``reason``
    (``ok``, ``no_quorum``, or the most common parse reason when no critique was usable) and
    one ``votes`` entry per sample (None: unusable)."""

    first_error: int | None
    agreement: float
    reason: str
    votes: tuple[int | None, ...]


def predict_first_error(parses: Sequence[CritiqueParse], *,
                        min_agreement: float | None = None) -> CriticPrediction:
    """The first error the critiques of one solution name, by the judge's vote (module
    docstring, "Evaluate")."""
    votes = tuple(p.first_error for p in parses)
    decision = decide(votes, min_agreement=min_agreement)
    reason = decision.reason
    if decision.first_error_index is None and not any(v is not None for v in votes):
        reasons = [p.reason for p in parses]
        reason = Counter(reasons).most_common(1)[0][0] if reasons else REASON_EMPTY
    return CriticPrediction(decision.first_error_index, decision.agreement, reason, votes)


# --------------------------------------------------------------------------------------------
# The critic


def render_critic_user_message(template: PromptTemplate, *, question: str,
                               steps: Sequence[str]) -> str:
    """The verification request as the user's message (before any chat template)."""
    return render_user_message(template, question=question, steps=steps)


@dataclass(frozen=True)
class CriticResult:
    """The critic's work on one solution.

    - ``solution_index``: the policy sample's index, or with ``omegaprm_rollout_id`` (one of
      OmegaPRM's searched rollouts) its search index.
    - ``texts``, ``finish_reasons``, ``generated_tokens``, ``parses``, ``checks``: one entry
      per sample, in sample order.
    - ``trusted``: what the critiques were checked against; ``prediction``: the critic's own
      first error (:func:`predict_first_error`).
    - ``seed``: the request's seed; ``prompt_tokens``: its prompt length; ``cost``: the
      request's requests, rollouts and tokens (no cache hits, issue #27).
    - ``model_id``, ``template_id``, ``template_sha256``, ``critic_version``,
      ``sampling_json``: provenance.
    """

    problem_id: str
    solution_index: int
    omegaprm_rollout_id: str | None
    question: str
    steps: tuple[str, ...]
    tagged_steps: str
    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    generated_tokens: tuple[int, ...]
    parses: tuple[CritiqueParse, ...]
    checks: tuple[CritiqueCheck, ...]
    trusted: TrustedLabels
    prediction: CriticPrediction
    seed: int
    prompt_tokens: int
    cost: dict[str, int]
    model_id: str
    template_id: str
    template_sha256: str
    critic_version: str
    sampling_json: str

    @property
    def kept(self) -> int:
        """How many of the critiques are kept (0..keep_per_solution)."""
        return sum(c.kept for c in self.checks)

    def evaluation_details(self) -> dict[str, Any]:
        """The evidence ``evaluate`` records beside the critic's prediction (as the judge's
        ``details``): votes, agreement, parse reasons, finish reasons, the critiques, the
        template and the critic's version."""
        return {"votes": list(self.prediction.votes), "agreement": self.prediction.agreement,
                "parse_reasons": [p.reason for p in self.parses],
                "finish_reasons": list(self.finish_reasons), "critiques": list(self.texts),
                "step_verdicts": [list(p.step_verdicts) if p.step_verdicts is not None
                                  else None for p in self.parses],
                "template_id": self.template_id, "template_sha256": self.template_sha256,
                "critic_version": self.critic_version}


def _request_cost(meter: CostMeter) -> dict[str, int]:
    return {"requests": meter.requests, "rollouts": meter.rollouts,
            "prompt_tokens": meter.prompt_tokens, "generated_tokens": meter.generated_tokens}


class Critic:
    """Samples critiques of a solution and verifies them against its trusted labels.

    Safe to run for many solutions at once against one engine: :meth:`critique` holds no lock
    and makes exactly one request (``n = config.samples``), seeded by
    ``derive_seed(run_seed, "critic", problem_id, solution_index)`` so that a rerun repeats it.
    Engine failures (``EngineError``, ``ContextLengthError``) propagate to the caller, which
    dead-letters the record.
    """

    def __init__(self, engine: GenerationEngine, config: CriticConfig | None = None, *,
                 run_seed: int) -> None:
        if isinstance(run_seed, bool) or not isinstance(run_seed, int) or run_seed < 0:
            raise ValueError(f"run_seed must be an integer >= 0, got {run_seed!r}")
        self.engine = engine
        self.config = config if config is not None else CriticConfig()
        self.run_seed = run_seed
        self.template = load_template(self.config.template_id)

    def build_prompt(self, *, question: str, steps: Sequence[str]) -> str:
        """The exact prompt sent: the verification request as one user message, rendered with
        the critic engine's own chat template."""
        user = render_critic_user_message(self.template, question=question, steps=steps)
        return self.engine.apply_chat_template([ChatMessage("user", user)])

    def seed_for(self, *, problem_id: str, solution_index: int,
                 omegaprm_rollout_id: str | None = None) -> int:
        """The request's seed: by the policy sample's index, or by the OmegaPRM rollout's id
        (its search index is not a sample index: the two never share a seed)."""
        if omegaprm_rollout_id is not None:
            return derive_seed(self.run_seed, ANNOTATOR_NAME, problem_id, omegaprm_rollout_id)
        return derive_seed(self.run_seed, ANNOTATOR_NAME, problem_id, solution_index)

    def request_for(self, *, problem_id: str, solution_index: int, question: str,
                    steps: Sequence[str],
                    omegaprm_rollout_id: str | None = None) -> GenerationRequest:
        """The one generation request :meth:`critique` makes for this solution."""
        sampling = self.config.sampling
        return GenerationRequest(
            prompt=self.build_prompt(question=question, steps=steps),
            n=self.config.samples,
            seed=self.seed_for(problem_id=problem_id, solution_index=solution_index,
                               omegaprm_rollout_id=omegaprm_rollout_id),
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            regex=(critique_form_regex(len(steps), self.config.max_step_chars)
                   if self.config.constrain_form else None),
        )

    async def critique(self, *, problem_id: str, solution_index: int, question: str,
                       steps: Sequence[str],
                       trusted: TrustedLabels = NO_TRUSTED_LABELS,
                       omegaprm_rollout_id: str | None = None) -> CriticResult:
        """Critique one solution of ``len(steps)`` (>= 1) steps and verify the critiques
        against ``trusted`` (default: none, as on ``evaluate``; every critique is then
        ``no_trusted_labels``). ``omegaprm_rollout_id``: the solution is this OmegaPRM
        searched rollout (``solution_index`` its search index), not a policy sample."""
        config = self.config
        steps = tuple(steps)
        tagged = tag_steps(steps)
        request = self.request_for(problem_id=problem_id, solution_index=solution_index,
                                   question=question, steps=steps,
                                   omegaprm_rollout_id=omegaprm_rollout_id)
        result = await self.engine.generate(request)
        meter = CostMeter()
        meter.add(result)
        parses = tuple(parse_critique(text, finish, len(steps))
                       for text, finish in zip(result.texts, result.finish_reasons))
        checks = tuple(verify_critiques(parses, trusted.first_error, num_steps=len(steps),
                                        keep_per_solution=config.keep_per_solution))
        return CriticResult(
            problem_id=problem_id,
            solution_index=solution_index,
            omegaprm_rollout_id=omegaprm_rollout_id,
            question=question,
            steps=steps,
            tagged_steps=tagged,
            texts=tuple(result.texts),
            finish_reasons=tuple(result.finish_reasons),
            generated_tokens=tuple(result.generated_tokens),
            parses=parses,
            checks=checks,
            trusted=trusted,
            prediction=predict_first_error(parses, min_agreement=config.min_agreement),
            seed=request.seed,
            prompt_tokens=result.prompt_tokens,
            cost=_request_cost(meter),
            model_id=self.engine.model_id,
            template_id=self.template.id,
            template_sha256=self.template.sha256,
            critic_version=critic_version(config),
            sampling_json=config.sampling_json(),
        )


def critique_rows(result: CriticResult, *, manifest_hash: str) -> list[Critique]:
    """The ``critiques/`` rows of one solution, one per sample, in sample order. The request's
    cost is split so that the rows sum to it: its ``requests`` (1) and ``prompt_tokens`` are charged
    to sample 0, each row has ``rollouts`` 1 and its own ``generated_tokens``."""
    labels = result.trusted.labels(len(result.steps))
    rows = []
    for i, (text, finish, tokens, parse, check_) in enumerate(zip(
            result.texts, result.finish_reasons, result.generated_tokens, result.parses,
            result.checks)):
        cost = Cost(requests=1 if i == 0 else 0, rollouts=1,
                    prompt_tokens=result.prompt_tokens if i == 0 else 0,
                    generated_tokens=tokens)
        rows.append(Critique(
            problem_id=result.problem_id,
            solution_index=result.solution_index,
            omegaprm_rollout_id=result.omegaprm_rollout_id,
            sample_index=i,
            question=result.question,
            steps=list(result.steps),
            tagged_steps=result.tagged_steps,
            critique=text,
            finish_reason=finish,
            parse_reason=parse.reason,
            step_verdicts=list(parse.step_verdicts) if parse.step_verdicts is not None else None,
            critique_first_error=parse.first_error,
            trusted_first_error=result.trusted.first_error,
            trusted_labels=labels,
            trusted_source=result.trusted.source,
            agrees=check_.agrees,
            kept=check_.kept,
            reason=check_.reason,
            seed=result.seed,
            cost=as_row(cost),
            critic_model=result.model_id,
            critic_version=result.critic_version,
            template_id=result.template_id,
            template_sha256=result.template_sha256,
            critic_sampling=result.sampling_json,
            manifest_hash=manifest_hash,
        ))
    return rows


# --------------------------------------------------------------------------------------------
# SFT export


def verification_request(row: Mapping[str, Any]) -> str:
    """The user message the critic saw for a ``critiques/`` row, re-rendered from its question,
    steps and template. Raises ValueError when the template's text is no longer the one the
    row records (its SHA-256 differs) or the steps no longer tag to the row's
    ``tagged_steps``: the export would then pair a critique with a request it never saw."""
    template = load_template(row["template_id"])
    if template.sha256 != row["template_sha256"]:
        raise ValueError(f"template {row['template_id']} has changed since the critique was "
                         f"written (sha256 {template.sha256[:12]} != "
                         f"{str(row['template_sha256'])[:12]})")
    steps = list(row["steps"])
    if tag_steps(steps) != row["tagged_steps"]:
        raise ValueError("the row's steps do not tag to its tagged_steps")
    return render_critic_user_message(template, question=row["question"], steps=steps)


def _kept_row(row: Mapping[str, Any]) -> None:
    if not row.get("kept"):
        raise ValueError(f"only kept critiques are exported; this one is {row.get('reason')!r}")


def sft_messages(row: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A kept critique as one chat-format SFT example (TRL's conversational format):
    ``{"messages": [{"role": "user", "content": <verification request>}, {"role":
    "assistant", "content": <critique>}]}``. Raises ValueError for a row that is not kept."""
    _kept_row(row)
    return {"messages": [{"role": "user", "content": verification_request(row)},
                         {"role": "assistant", "content": row["critique"]}]}


def prompt_completion(row: Mapping[str, Any]) -> dict[str, str]:
    """A kept critique as a ThinkPRM-style prompt/completion pair (plain text, no chat
    template): ``{"prompt": <verification request>, "completion": <critique>}``."""
    _kept_row(row)
    return {"prompt": verification_request(row), "completion": row["critique"]}
