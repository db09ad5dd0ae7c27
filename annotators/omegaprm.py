"""OmegaPRM (Luo et al. 2024, arXiv 2406.06592): binary search for the first error, in a tree.

The algorithm, as the paper describes it (METHODS.md §2), with the open re-implementation's bugs
designed out (each Monte Carlo point is estimated once, rollout length is counted in tokens, a
real grader replaces substring matching, no global rollout budget):

1. **Pre-filter.** 32 rollouts from the question (one request, ``n = 32``). Only *known*
   rollouts count (graded correct or incorrect; a rollout cut off at ``max_tokens`` is unknown
   by default, ``truncated``). A question whose known rollouts are mixed is searched, and these
   rollouts are the root's. Otherwise it is dropped with the reason and the counts
   (``OmegaPRMResult.filtered``): ``all_unknown`` (no known rollout), ``too_few_known`` (fewer
   than ``prefilter_min_known``: too little evidence to call it too easy or too hard),
   ``all_correct`` or ``all_wrong`` (every known rollout, with enough known).
2. **Pool.** The incorrect rollouts of every state with ``0 < MC < 1`` are candidates. Correct
   rollouts of a state with ``MC > 0`` become completed-solution states (value 1, by their
   own final answer; never rolled out from). A state with ``MC = 0`` or no known rollout
   (MC None) adds nothing.
3. **Select** the candidate maximising ``Q(s, r) + U(s)`` with
   ``Q = alpha ** (1 - MC(s)) * beta ** (len(r) / L)`` (``len(r)`` in tokens) and
   ``U = c_puct * sqrt(sum of N over all states) / (1 + N(s))``. A selected rollout leaves the
   pool for good. ``N(s) += 1`` for the selected state; there is no backup to the root.
4. **Binary search** on the selected rollout's pieces (steps from the splitter, or ~16
   token-length pieces): k rollouts at the midpoint; ``MC > 0`` means the error is later,
   ``MC = 0`` earlier; ``ceil(log2 M)`` estimates for M pieces. The divide points are strictly
   inside the rollout: its full length (a complete solution, labelled by its own graded answer)
   is never rolled out from. **A probe with no known rollout** (MC None: every rollout cut off
   or ungradable) is neither an error in the first half nor correct: the search stops there,
   its first error is None with reason ``probe_unknown``, and the unknown probe is a leaf.
   Probed prefixes are cached by text: a prefix is estimated at most once per question.
5. **Stop** after ``search_limit`` searches or when the pool is empty. Every rollout is kept.

**The tree** [OPRM §3.3-3.4] is built from all estimated prefixes once the searches are done,
so it does not depend on the order in which prefixes were probed. With prefixes compared piece
by piece:

- a state's parent is the **longest known-good** (``MC > 0``) state whose prefix is a proper
  prefix of its own (at least the root); the edge's action is the pieces in between, and
  ``single_step`` says it is exactly one piece. A probe at m with MC 0 and a later probe at m/2
  with MC > 0 thus nest (root -> m/2 -> m), and no state is a sibling of its own prefix.
- states are prefixes **up to the first error**: a prefix that extends a known-bad (``MC = 0``)
  prefix is not a tree state. It is kept apart (``OmegaPRMResult.states_after_error``, its
  ``parent_id`` the longest bad prefix it extends) with its counts, so no rollout is lost.
  With a noisy landscape this also drops a ``MC > 0`` prefix that extends a ``MC = 0`` one: the
  tree trusts the first error on a path.
- pairs are formed only between children of one parent that both have a known value (sibling
  actions from the same prefix), never between two completions (both 1 by construction) and
  never between prefixes that nest.

Outputs: one record per tree state, sibling pairs with preference ``P = (1 + p - q) / 2``, and per
searched rollout its full solution pieces with the located first-error piece index.

Ids are deterministic integers (creation order), never ``id()`` or uuids; request seeds derive
from ``(run_seed, "omegaprm", problem_id, state_id)``, so a rerun repeats every request. One
search object per question: the annotator itself holds no per-question state.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from steplabel.annotators.grading import grade
from steplabel.annotators.monte_carlo import (
    UNDECIDED,
    Grader,
    GradedRollouts,
    budget_step_decision,
    sample_and_grade,
)
from steplabel.annotators.posterior import (
    CREDIBLE_LEVEL,
    DEFAULT_MIN_SUCCESS,
    REASON_UNDECIDED,
    BetaPrior,
    RolloutBudget,
    StepPosterior,
    posterior,
)
from steplabel.annotators.prompts import SolutionPrompt
from steplabel.annotators.seeds import derive_seed
from steplabel.annotators.splitting import Splitter
from steplabel.engines.base import CostMeter, GenerationEngine
from steplabel.schemas.annotators import OmegaPRMConfig
from steplabel.schemas.config import SamplingConfig

ANNOTATOR_NAME = "omegaprm"
ANNOTATOR_VERSION = "2"  # 2: unknown-aware pre-filter and probes; tree nests by prefix


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Selection value, exploration bonus, preference


def selection_q(*, mc: float, rollout_tokens: int, alpha: float, beta: float,
                length_scale: float) -> float:
    """``Q(s, r) = alpha ** (1 - MC(s)) * beta ** (len(r) / L)`` (OPRM Eq. 2), in (0, 1].

    ``mc`` in [0, 1]; ``rollout_tokens`` is ``len(r)`` in tokens; ``length_scale`` is L in tokens.
    """
    return alpha ** (1.0 - mc) * beta ** (rollout_tokens / length_scale)


def exploration_u(*, total_visits: int, visits: int, c_puct: float) -> float:
    """``U(s) = c_puct * sqrt(sum_i N(s_i)) / (1 + N(s))`` (OPRM Eq. 3), >= 0.

    ``total_visits`` is the sum of N over all states of the tree; ``visits`` is N(s).
    """
    return c_puct * math.sqrt(total_visits) / (1 + visits)


def pair_preference(p: float, q: float) -> float:
    """``P(X preferred over Y) = (1 + p - q) / 2`` for sibling MC values p (X) and q (Y)."""
    return 0.5 * (1.0 + (p - q))  # exactly 1/2 when p == q


@dataclass(frozen=True)
class Selection:
    """One candidate popped from the pool, with the Q and U it won with."""

    state_id: int
    rollout_index: int
    q: float
    u: float

    @property
    def score(self) -> float:
        return self.q + self.u


class SelectionPool:
    """Candidate rollouts ``(state_id, rollout_index)`` and the visit counts N(s).

    Q(s, r) is fixed once MC(s) is estimated, so each state keeps a max-heap of its candidates
    by Q; U(s) moves with every visit, so a pop takes the best of the states' heap tops by
    ``Q + U``. Ties go to the lower state id, then the lower rollout index. A popped id is
    recorded and never returned again (lazy deletion: duplicates are skipped when they surface).
    """

    def __init__(self, *, c_puct: float) -> None:
        self.c_puct = c_puct
        self._heaps: dict[int, list[tuple[float, int]]] = {}
        self._visits: dict[int, int] = {}
        self._taken: set[tuple[int, int]] = set()
        self._pending: set[tuple[int, int]] = set()
        self._total_visits = 0

    def __len__(self) -> int:
        """Candidates that can still be selected."""
        return len(self._pending)

    @property
    def total_visits(self) -> int:
        return self._total_visits

    def visits(self, state_id: int) -> int:
        return self._visits.get(state_id, 0)

    def visit(self, state_id: int) -> None:
        """``N(s) += 1`` for the state whose rollout was selected."""
        self._visits[state_id] = self._visits.get(state_id, 0) + 1
        self._total_visits += 1

    def push(self, *, state_id: int, rollout_index: int, q: float) -> None:
        key = (state_id, rollout_index)
        if key in self._taken:
            return
        self._pending.add(key)
        heapq.heappush(self._heaps.setdefault(state_id, []), (-q, rollout_index))

    def pop_best(self) -> Selection | None:
        """Remove and return ``argmax Q + U``; None when no candidate is left."""
        best: tuple[tuple[float, int, int], Selection] | None = None
        for state_id, heap in self._heaps.items():
            while heap and (state_id, heap[0][1]) in self._taken:
                heapq.heappop(heap)
            if not heap:
                continue
            q, rollout_index = -heap[0][0], heap[0][1]
            u = exploration_u(total_visits=self._total_visits, visits=self.visits(state_id),
                              c_puct=self.c_puct)
            rank = (q + u, -state_id, -rollout_index)
            if best is None or rank > best[0]:
                best = (rank, Selection(state_id, rollout_index, q, u))
        if best is None:
            return None
        chosen = best[1]
        heapq.heappop(self._heaps[chosen.state_id])
        key = (chosen.state_id, chosen.rollout_index)
        self._taken.add(key)
        self._pending.discard(key)
        return chosen


# --------------------------------------------------------------------------------------------
# Token-length pieces (OPRM §4.2)


def token_run_length(token_counts: Sequence[int], *, target_pieces: int = 16) -> int:
    """Tokens per piece: ``ceil(mean(token_counts) / target_pieces)``, at least 1.

    ``token_counts`` are solution lengths in tokens (OmegaPRM uses the average solution length,
    so that an average solution is cut into ``target_pieces`` pieces).
    """
    if not token_counts:
        raise ValueError("token_counts must be non-empty")
    if target_pieces < 1:
        raise ValueError(f"target_pieces must be >= 1, got {target_pieces!r}")
    return max(1, math.ceil(sum(token_counts) / len(token_counts) / target_pieces))


def token_runs(tokens: Sequence[str], *, run_length: int) -> list[str]:
    """Consecutive runs of ``run_length`` token pieces (the last may be shorter), each joined
    to text; the runs concatenate back to ``"".join(tokens)``."""
    if run_length < 1:
        raise ValueError(f"run_length must be >= 1, got {run_length!r}")
    return ["".join(tokens[i : i + run_length]) for i in range(0, len(tokens), run_length)]


# --------------------------------------------------------------------------------------------
# Binary search for the first error


@dataclass(frozen=True)
class ProbeLabel:
    """A probe's decided hard label (the adaptive budget): True (correct so far), False (the
    error is at or before it) or None (unknown, with ``reason``)."""

    label: bool | None
    reason: str | None = None


async def bisect_first_error(
    *, good: int, bad: int, estimate: Callable[[int], Awaitable["float | None | ProbeLabel"]]
) -> tuple[int | None, str]:
    """Binary search over prefix lengths (in pieces) for the first wrong piece.

    Invariant: the prefix of ``good`` pieces has MC > 0 and the prefix of ``bad`` pieces is
    wrong. ``estimate(length)`` returns the MC value of the prefix of ``length`` pieces (None if
    no rollout could be graded). Calls ``estimate`` ``ceil(log2(bad - good))`` times at most,
    each length at most once and always strictly between ``good`` and ``bad``: the ``bad``
    end (a complete solution) is never estimated. Returns ``(index, reason)``: the 0-based
    index of the first wrong piece (``bad - 1`` at the end) with ``"located"``, or
    ``(None, reason)``: ``"probe_unknown"`` when a probe had no known rollout (None is neither
    an error in the first half nor correct, so the search stops there), ``"empty_range"``
    when there is nothing to search. ``estimate`` may return a :class:`ProbeLabel` instead of
    a value (a decision of the adaptive budget): its label steers the search, and a None
    label stops it with the label's reason.
    """
    if bad <= good:
        return None, "empty_range"
    while bad - good > 1:
        mid = (good + bad) // 2
        value = await estimate(mid)
        if isinstance(value, ProbeLabel):
            if value.label is None:
                return None, value.reason or "probe_unknown"
            value = 1.0 if value.label else 0.0
        if value is None:
            return None, "probe_unknown"
        if value > 0:
            good = mid
        else:
            bad = mid
    return bad - 1, "located"


@dataclass(frozen=True)
class FirstErrorSearch:
    """Result of :func:`locate_first_error` on one solution.

    - ``first_error_index``: 0-based index of the first wrong piece; ``-1`` when the solution's
      final answer is correct (no error to find); None (unknown) when the final answer or a probe
      could not be graded.
    - ``reason``: ``located``, ``final_answer_correct``, ``final_answer_unknown``,
      ``probe_unknown`` or ``empty_range`` (no pieces).
    - ``probe_lengths[j]``, ``probe_values[j]``, ``probe_seeds[j]``: the j-th Monte Carlo point
      (prefix length in pieces, MC value or None, request seed), in search order.
    - ``rollouts``: rollouts sampled (k per probe, at most ``k * ceil(log2 M)``);
      ``rollouts_truncated``: how many of them the engine cut off at ``max_tokens``.
    """

    first_error_index: int | None
    reason: str
    num_pieces: int
    rollouts: int
    probe_lengths: list[int]
    probe_values: list[float | None]
    probe_seeds: list[int]
    cost: dict[str, int]
    rollouts_truncated: int = 0


def _join_pieces(pieces: Sequence[str], splitter: Splitter | None) -> str:
    return splitter.join(list(pieces)) if splitter is not None else "".join(pieces)


async def locate_first_error(
    engine: GenerationEngine,
    *,
    prompt: SolutionPrompt,
    pieces: Sequence[str],
    gold_answer: str | None,
    run_seed: int,
    problem_id: str,
    solution_index: int = 0,
    splitter: Splitter | None,
    rollouts: int = 8,
    sampling: SamplingConfig | None = None,
    final_answer_correct: bool | None = None,
    grader: Grader = grade,
    truncated: str = "unknown",
    budget: RolloutBudget | None = None,
    prior: BetaPrior = BetaPrior(),
    min_success: float = DEFAULT_MIN_SUCCESS,
) -> FirstErrorSearch:
    """OmegaPRM's binary search on a given solution, outside any tree.

    ``pieces`` are the solution's steps as ``splitter`` produced them (their join is the
    solution text), or, with ``splitter=None``, pieces that concatenate to it, e.g.
    ``token_runs(engine.token_pieces(text), run_length=token_run_length([n], target_pieces=16))``.
    The search needs a wrong solution: ``final_answer_correct`` says whether its final answer
    is right (None: grade the joined pieces now, at no rollout cost). A correct final answer
    gives ``-1`` without rollouts; an ungradable one gives None. Otherwise k rollouts per probe
    from ``prompt.for_continuation(prefix, separator)``, seeded by
    ``derive_seed(run_seed, "omegaprm", problem_id, "solution", solution_index, length)``.
    ``truncated`` (``"unknown"`` or ``"incorrect"``) says how a cut-off rollout counts; a probe
    with no known rollout stops the search (``probe_unknown``, see :func:`bisect_first_error`).
    ``budget`` (with ``prior`` and ``min_success``): the adaptive budget for every probe, as in
    :class:`OmegaPRMConfig` (``rollouts`` is then unused; an undecided probe stops the search
    with ``probe_undecided``).
    """
    if not _is_int(rollouts) or rollouts < 1:
        raise ValueError(f"rollouts must be an integer >= 1, got {rollouts!r}")
    sampling = sampling if sampling is not None else SamplingConfig()
    pieces = list(pieces)
    separator = splitter.separator if splitter is not None else ""
    cost = CostMeter()
    lengths: list[int] = []
    values: list[float | None] = []
    seeds: list[int] = []
    cut_off = 0

    def result(index: int | None, reason: str) -> FirstErrorSearch:
        return FirstErrorSearch(first_error_index=index, reason=reason, num_pieces=len(pieces),
                                rollouts=cost.rollouts, probe_lengths=lengths,
                                probe_values=values, probe_seeds=seeds, cost=cost.as_dict(),
                                rollouts_truncated=cut_off)

    if not pieces:
        return result(None, "empty_range")
    if final_answer_correct is None:
        verdict = grader(_join_pieces(pieces, splitter), gold_answer).verdict
        if verdict == "unknown":
            return result(None, "final_answer_unknown")
        final_answer_correct = verdict == "correct"
    if final_answer_correct:
        return result(-1, "final_answer_correct")

    async def estimate(length: int) -> "float | None | ProbeLabel":
        nonlocal cut_off
        assert 0 < length < len(pieces), "never roll out from the complete solution"
        prefix = _join_pieces(pieces[:length], splitter)
        seed = derive_seed(run_seed, "omegaprm", problem_id, "solution", solution_index, length)
        graded: GradedRollouts | None = None
        while True:  # one request, or rounds under the budget (seeds seed + i throughout)
            done = 0 if graded is None else len(graded.verdicts)
            more = await sample_and_grade(
                engine, prompt_text=prompt.for_continuation(prefix, separator),
                solution_prefix=prefix + separator,
                n=rollouts if budget is None else budget.next_round(done), seed=seed + done,
                sampling=sampling, gold_answer=gold_answer, grader=grader, cost=cost,
                truncated=truncated)
            graded = more if graded is None else graded.extend(more)
            if budget is None:
                break
            decision = budget_step_decision(graded, budget=budget, threshold=min_success,
                                            prior=prior)
            if decision is not UNDECIDED:
                break
        cut_off += graded.n_truncated
        lengths.append(length)
        values.append(graded.value)
        seeds.append(seed)
        if budget is None:
            return graded.value
        if decision is None:
            return ProbeLabel(None, f"probe_{REASON_UNDECIDED}" if graded.n_total
                              else "probe_unknown")
        return ProbeLabel(decision)

    index, reason = await bisect_first_error(good=0, bad=len(pieces), estimate=estimate)
    return result(index, reason)


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class OmegaPRMState:
    """One tree state (a prefix of a solution) and its Monte Carlo statistics.

    - ``kind``: ``root`` (the question, MC from the pre-filter rollouts), ``probe`` (a prefix
      probed by a binary search, MC from k rollouts) or ``completion`` (a correct rollout of a
      state with MC > 0, kept as a completed solution: value 1 by its own final answer, counts
      1/1/0, no rollouts of its own).
    - ``parent_id``: -1 for the root; otherwise the longest known-good (MC > 0) state whose
      prefix is a proper prefix of this one, piece by piece (see the module docstring). For a
      state in ``OmegaPRMResult.states_after_error``: the longest MC = 0 state it extends.
    - ``prefix`` is the solution text so far ("" at the root); ``action`` is the text added to
      the parent's prefix, ``action_pieces`` (>= 1) its length in pieces, ``single_step`` True
      when that is exactly one piece (the paper's single-step edges):
      ``prefix == parent.prefix + separator + action`` (the separator is the splitter's in
      steps mode, omitted after the root and in tokens mode). ``depth``: prefix length in
      pieces.
    - ``value``: MC in [0, 1], None when no rollout could be graded (never 0 for lack of
      known rollouts); ``hard_label``: ``value > 0`` or None. ``n_total`` counts correct +
      incorrect; unknowns are apart; ``n_truncated`` counts the rollouts the engine cut off at
      ``max_tokens`` (unknown under the default rule).
    - ``visits``: N(s) at the end of the search. ``seed``: the seed of the request that sampled
      this state's rollouts (for a completion, of the request it came from); ``rollout_of`` and
      ``rollout_index``: for a completion, the state whose rollout it is and which one (its
      parent may be a longer good prefix of it); -1 otherwise.
    - ``posterior``: the Beta posterior of the state's success rate from its known rollouts and
      the config's ``prior``, asked about ``min_success`` (OmegaPRM's τ is 0), as a trajectory
      step's (:mod:`posterior`); None without a known rollout. A completion is its own graded
      answer, as a trajectory's final step: mean = bounds = p_above = 1. Filled under fixed k
      too. ``rollouts_spent``: rollouts sampled from this state's prefix (the pre-filter's at
      the root, 0 for a completion). ``label_reason``: ``undecided`` when the adaptive budget's
      ``max_rollouts`` left a probe with known rollouts undecided (its hard label is None);
      None otherwise.
    """

    state_id: int
    parent_id: int
    kind: str
    prefix: str
    action: str
    action_pieces: int
    single_step: bool
    depth: int
    value: float | None
    hard_label: bool | None
    n_correct: int
    n_total: int
    n_unknown: int
    n_truncated: int
    visits: int
    seed: int
    rollout_of: int
    rollout_index: int
    posterior: StepPosterior | None = None
    rollouts_spent: int = 0
    label_reason: str | None = None


@dataclass(frozen=True)
class SiblingPair:
    """Two children of one parent with known values p (first) and q (second).

    ``preference = (1 + p - q) / 2`` is P(first preferred over second) (OPRM §3.4). Both
    actions continue the parent's prefix and neither prefix is a prefix of the other.
    ``single_step`` is True when both actions are one piece (the paper's pairwise examples).
    Pairs of two completion states are not emitted: both have value 1 by construction.
    """

    parent_id: int
    first_id: int
    second_id: int
    first_value: float
    second_value: float
    preference: float
    single_step: bool


@dataclass(frozen=True)
class FirstErrorRecord:
    """The binary search on one selected rollout: a trajectory-level first-error label.

    ``steps`` are the full solution's pieces (the state's prefix, then the rollout);
    ``start_index`` is the number of prefix pieces (the search covers ``steps[start_index:]``);
    ``first_error_index`` is the 0-based index in ``steps`` of the first wrong piece, None when a
    probe had no known rollout (``probe_unknown``: the search stopped there) or the rollout had
    no pieces (``empty_range``); ``reason`` says which. ``q`` and ``u`` are the selection terms
    it won with; ``rollouts`` were sampled by this search (cached probes are free), of which
    ``rollouts_truncated`` were cut off at ``max_tokens``; ``probe_state_ids`` lists the
    probed states in search order (tree states or states after the error).
    """

    search_index: int
    state_id: int
    rollout_index: int
    steps: list[str]
    start_index: int
    first_error_index: int | None
    reason: str
    q: float
    u: float
    rollouts: int
    rollouts_truncated: int
    probe_state_ids: list[int]


@dataclass(frozen=True)
class RolloutRecord:
    """One sampled rollout of an estimated state (tree reuse: every rollout is kept).

    ``generated_tokens`` is ``len(r)`` in tokens; ``verdict`` is correct, incorrect or unknown;
    ``finish_reason`` is the engine's (``length``: cut off at ``max_tokens``); ``selected`` is
    True when a binary search ran on it.
    """

    state_id: int
    rollout_index: int
    text: str
    generated_tokens: int
    verdict: str
    reason: str
    finish_reason: str
    selected: bool


@dataclass(frozen=True)
class OmegaPRMResult:
    """OmegaPRM output for one question.

    - ``filtered``: dropped by the pre-filter (no search); ``filter_reason`` is ``all_correct``,
      ``all_wrong``, ``too_few_known`` or ``all_unknown`` (see the module docstring), else None.
    - ``prefilter_n_correct``/``_n_total``/``_n_unknown``/``_n_truncated``: counts of the
      pre-filter rollouts (total = correct + incorrect; truncated = cut off at ``max_tokens``).
    - ``stop_reason``: ``search_limit``, ``pool_empty`` or ``filtered``; ``searches_run``: the
      number of binary searches (``len(searches)``).
    - ``states``: the tree (root first, by id); ``states_after_error``: estimated prefixes that
      extend a MC = 0 prefix, off the tree; ids are shared, so together they hold every id.
    - ``pairs``, ``searches``, ``rollout_records``: see the record classes.
    - ``piece_tokens``: tokens per piece in tokens mode, None in steps mode.
    - ``rollouts``: rollouts sampled in all (pre-filter included), ``truncated_rollouts`` of
      them cut off at ``max_tokens``; ``cost``: ``CostMeter``.
    """

    problem_id: str
    question: str
    gold_answer: str | None
    filtered: bool
    filter_reason: str | None
    prefilter_n_correct: int
    prefilter_n_total: int
    prefilter_n_unknown: int
    prefilter_n_truncated: int
    stop_reason: str
    searches_run: int
    states: list[OmegaPRMState]
    states_after_error: list[OmegaPRMState]
    pairs: list[SiblingPair]
    searches: list[FirstErrorRecord]
    rollout_records: list[RolloutRecord]
    step_unit: str
    piece_tokens: int | None
    rollouts: int
    truncated_rollouts: int
    cost: dict[str, int]
    annotator: str
    model_id: str


# --------------------------------------------------------------------------------------------
# The search over one question


@dataclass
class _Node:
    state_id: int
    kind: str
    pieces: tuple[str, ...]
    prefix: str
    seed: int
    rollout_of: int = -1
    rollout_index: int = -1
    graded: GradedRollouts | None = None
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)  # n_correct, n_total, n_unknown, n_cut
    value: float | None = None
    # Under the adaptive budget, a probe's decided hard label (None: unknown or undecided).
    label: bool | None = None

    @property
    def good(self) -> bool | None:
        """Known-good (True), known-bad (False) or unknown (None): the budget's label for a
        probe estimated under it, else ``MC > 0``."""
        if self.kind == "probe" and self.budgeted:
            return self.label
        return None if self.value is None else self.value > 0

    budgeted: bool = False


def _nested(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when one piece sequence is a prefix of the other (equal included)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


class _QuestionSearch:
    """All state of one question's search; created per call, never shared."""

    def __init__(self, annotator: "OmegaPRMAnnotator", *, problem_id: str,
                 prompt: SolutionPrompt, gold_answer: str | None) -> None:
        self.a = annotator
        self.cfg = annotator.config
        self.problem_id = problem_id
        self.prompt = prompt
        self.gold_answer = gold_answer
        self.nodes: list[_Node] = []
        self.by_prefix: dict[str, int] = {}
        self.pool = SelectionPool(c_puct=self.cfg.c_puct)
        self.cost = CostMeter()
        self.searches: list[FirstErrorRecord] = []
        self.selected: set[tuple[int, int]] = set()
        self.piece_tokens: int | None = None
        self.tokens_mode = self.cfg.step_unit == "tokens"
        self.separator = "" if self.tokens_mode else annotator.splitter.separator

    # -- pieces ------------------------------------------------------------------------------

    def pieces_of(self, text: str) -> list[str]:
        if not self.tokens_mode:
            return self.a.splitter.split(text)
        assert self.piece_tokens is not None, "piece length is set after the pre-filter"
        return token_runs(self.a.engine.token_pieces(text), run_length=self.piece_tokens)

    def join(self, pieces: Sequence[str]) -> str:
        return "".join(pieces) if self.tokens_mode else self.a.splitter.join(list(pieces))

    def rollout_pieces(self, node: _Node, rollout_index: int) -> tuple[str, ...]:
        """The full solution of one of ``node``'s rollouts, in pieces."""
        assert node.graded is not None
        text = node.graded.texts[rollout_index]
        if node.kind == "root":
            return tuple(self.pieces_of(self.prompt.response_prefix + text))
        return node.pieces + tuple(self.pieces_of(text))

    # -- states ------------------------------------------------------------------------------

    def seed_for(self, state_id: int) -> int:
        return derive_seed(self.a.run_seed, "omegaprm", self.problem_id, state_id)

    def new_node(self, *, kind: str, pieces: tuple[str, ...], seed: int | None = None,
                 rollout_of: int = -1, rollout_index: int = -1) -> _Node:
        state_id = len(self.nodes)
        node = _Node(
            state_id=state_id,
            kind=kind,
            pieces=pieces,
            prefix=self.join(pieces),
            seed=self.seed_for(state_id) if seed is None else seed,
            rollout_of=rollout_of,
            rollout_index=rollout_index,
        )
        self.nodes.append(node)
        return node

    async def estimate(self, node: _Node, n: int) -> None:
        """Sample and grade ``n`` rollouts from ``node``'s prefix (once per state); under the
        adaptive budget a probe gets rounds until its label is decided (``n`` is unused)."""
        assert node.graded is None, "a Monte Carlo point is estimated once"
        if node.kind == "root":
            prompt_text = self.prompt.for_sampling()
            solution_prefix = self.prompt.response_prefix
        else:
            prompt_text = self.prompt.for_continuation(node.prefix, self.separator)
            solution_prefix = node.prefix + self.separator
            self.by_prefix[node.prefix] = node.state_id
        budget = self.cfg.budget if node.kind == "probe" else None
        while True:
            done = 0 if node.graded is None else len(node.graded.verdicts)
            size = n if budget is None else budget.next_round(done)
            more = await sample_and_grade(
                self.a.engine, prompt_text=prompt_text, solution_prefix=solution_prefix,
                n=size, seed=node.seed + done, sampling=self.cfg.sampling,
                gold_answer=self.gold_answer, grader=self.a.grader, cost=self.cost,
                truncated=self.cfg.truncated)
            node.graded = more if node.graded is None else node.graded.extend(more)
            if budget is None:
                break
            decision = budget_step_decision(node.graded, budget=budget,
                                            threshold=self.cfg.min_success,
                                            prior=self.cfg.prior)
            if decision is not UNDECIDED:
                node.label, node.budgeted = decision, True
                break
        g = node.graded
        node.counts = (g.n_correct, g.n_total, g.n_unknown, g.n_truncated)
        node.value = g.value

    def expand(self, node: _Node) -> None:
        """Correct rollouts of a state with MC > 0 become completion states; incorrect
        rollouts of a state with 0 < MC < 1 join the pool. MC = 0 or unknown adds nothing."""
        graded, value = node.graded, node.value
        if graded is None or value is None or not node.good:
            return  # MC = 0, unknown, or (adaptive budget) decided bad or undecided
        for i, verdict in enumerate(graded.verdicts):
            if verdict == "correct":
                pieces = self.rollout_pieces(node, i)
                if len(pieces) == len(node.pieces):
                    continue  # adds no piece: the prefix itself was complete, nothing new
                child = self.new_node(kind="completion", pieces=pieces, seed=node.seed,
                                      rollout_of=node.state_id, rollout_index=i)
                child.counts, child.value = (1, 1, 0, 0), 1.0
            elif verdict == "incorrect" and value < 1:
                q = selection_q(mc=value, rollout_tokens=graded.generated_tokens[i],
                                alpha=self.cfg.alpha, beta=self.cfg.beta,
                                length_scale=self.cfg.length_scale)
                self.pool.push(state_id=node.state_id, rollout_index=i, q=q)

    # -- search ------------------------------------------------------------------------------

    async def search_rollout(self, selection: Selection) -> None:
        node = self.nodes[selection.state_id]
        pieces = self.rollout_pieces(node, selection.rollout_index)
        start = len(node.pieces)
        rollouts_before = self.cost.rollouts
        probe_ids: list[int] = []
        cut_off = 0

        async def estimate(length: int) -> "float | None | ProbeLabel":
            nonlocal cut_off
            # Strictly inside: the complete rollout is labelled by its own graded answer.
            assert start < length < len(pieces), "never roll out from a complete solution"
            prefix_pieces = pieces[:length]
            known = self.by_prefix.get(self.join(prefix_pieces))
            if known is not None:
                probe = self.nodes[known]
            else:
                probe = self.new_node(kind="probe", pieces=prefix_pieces)
                await self.estimate(probe, self.cfg.rollouts)
                cut_off += probe.counts[3]
                self.expand(probe)
            probe_ids.append(probe.state_id)
            if probe.budgeted:
                if probe.label is not None:
                    return ProbeLabel(probe.label)
                # Known rollouts that never decided it, or none known at all.
                return ProbeLabel(None, f"probe_{REASON_UNDECIDED}" if probe.counts[1] > 0
                                  else "probe_unknown")
            return probe.value

        index, reason = await bisect_first_error(good=start, bad=len(pieces), estimate=estimate)
        self.searches.append(FirstErrorRecord(
            search_index=len(self.searches),
            state_id=node.state_id,
            rollout_index=selection.rollout_index,
            steps=list(pieces),
            start_index=start,
            first_error_index=index,
            reason=reason,
            q=selection.q,
            u=selection.u,
            rollouts=self.cost.rollouts - rollouts_before,
            rollouts_truncated=cut_off,
            probe_state_ids=probe_ids,
        ))

    def prefilter_reason(self, root: _Node) -> str | None:
        """None when the root's known rollouts are mixed, else why the question is dropped."""
        n_correct, n_total, _, _ = root.counts
        if 0 < n_correct < n_total:
            return None
        if n_total == 0:
            return "all_unknown"
        if n_total < self.cfg.min_known:
            return "too_few_known"
        return "all_correct" if n_correct == n_total else "all_wrong"

    async def run(self, question: str) -> OmegaPRMResult:
        cfg = self.cfg
        root = self.new_node(kind="root", pieces=())
        await self.estimate(root, cfg.prefilter_rollouts)
        filter_reason = self.prefilter_reason(root)
        if filter_reason is not None:
            return self.result(question, filter_reason=filter_reason, stop_reason="filtered")

        if self.tokens_mode:
            assert root.graded is not None
            lengths = [len(self.a.engine.token_pieces(self.prompt.response_prefix + t))
                       for t in root.graded.texts]
            self.piece_tokens = token_run_length(lengths, target_pieces=cfg.target_pieces)

        self.expand(root)
        stop_reason = "search_limit"
        while len(self.searches) < cfg.search_limit:
            selection = self.pool.pop_best()
            if selection is None:
                stop_reason = "pool_empty"
                break
            key = (selection.state_id, selection.rollout_index)
            assert key not in self.selected, f"rollout {key} selected twice"
            self.selected.add(key)
            self.pool.visit(selection.state_id)
            await self.search_rollout(selection)
        return self.result(question, filter_reason=None, stop_reason=stop_reason)

    # -- the tree ----------------------------------------------------------------------------

    def tree(self) -> tuple[list[OmegaPRMState], list[OmegaPRMState]]:
        """(tree states, states after the error), from every node once the search is done.

        A node's parent is the longest MC > 0 node whose pieces are a proper prefix of its
        own; a node with an MC = 0 proper prefix is after the error (its parent is then the
        longest such prefix). Of several nodes with the same pieces (identical completions) the
        first stands for them. Independent of the order in which prefixes were probed.
        """
        good: dict[tuple[str, ...], _Node] = {}
        bad: dict[tuple[str, ...], _Node] = {}
        for n in self.nodes:
            if n.good is not None:
                (good if n.good else bad).setdefault(n.pieces, n)
        in_tree: list[OmegaPRMState] = []
        after_error: list[OmegaPRMState] = []
        for n in self.nodes:
            if n.kind == "root":
                in_tree.append(self.state_record(n, parent=None))
                continue
            parent = first_bad = None
            for length in range(len(n.pieces) - 1, -1, -1):
                key = n.pieces[:length]
                if first_bad is None and key in bad:
                    first_bad = bad[key]
                    break  # after the error whatever lies below
                if parent is None and key in good:
                    parent = good[key]
            if first_bad is not None:
                after_error.append(self.state_record(n, parent=first_bad))
            else:
                assert parent is not None, "the root (MC > 0) is a prefix of every state"
                in_tree.append(self.state_record(n, parent=parent))
        return in_tree, after_error

    def state_record(self, n: _Node, *, parent: _Node | None) -> OmegaPRMState:
        start = len(parent.pieces) if parent is not None else 0
        action_pieces = len(n.pieces) - start
        return OmegaPRMState(
            state_id=n.state_id, parent_id=parent.state_id if parent is not None else -1,
            kind=n.kind, prefix=n.prefix, action=self.join(n.pieces[start:]),
            action_pieces=action_pieces, single_step=action_pieces == 1, depth=len(n.pieces),
            value=n.value, hard_label=n.good,
            n_correct=n.counts[0], n_total=n.counts[1], n_unknown=n.counts[2],
            n_truncated=n.counts[3], visits=self.pool.visits(n.state_id), seed=n.seed,
            rollout_of=n.rollout_of, rollout_index=n.rollout_index,
            posterior=self.posterior_of(n),
            rollouts_spent=0 if n.graded is None else len(n.graded.verdicts),
            label_reason=(REASON_UNDECIDED if n.kind == "probe" and n.budgeted
                          and n.label is None and n.counts[1] > 0 else None),
        )

    def posterior_of(self, n: _Node) -> StepPosterior | None:
        """The posterior of ``n``'s success rate (see :class:`OmegaPRMState`)."""
        threshold = self.cfg.min_success
        if n.kind == "completion":  # its own graded answer: certain, not estimated
            return StepPosterior(successes=1, failures=0, mean=1.0, low=1.0, high=1.0,
                                 level=CREDIBLE_LEVEL, threshold=threshold, p_above=1.0)
        correct, known = n.counts[0], n.counts[1]
        if not known:
            return None
        return posterior(correct, known - correct, prior=self.cfg.prior, threshold=threshold)

    def sibling_pairs(self, states: list[OmegaPRMState]) -> list[SiblingPair]:
        children: dict[int, list[OmegaPRMState]] = {}
        for s in states:
            if s.parent_id >= 0 and s.value is not None:
                children.setdefault(s.parent_id, []).append(s)
        pairs = []
        for parent_id, kids in children.items():
            for i, a in enumerate(kids):
                for b in kids[i + 1 :]:
                    if a.kind == "completion" and b.kind == "completion":
                        continue
                    if _nested(self.nodes[a.state_id].pieces, self.nodes[b.state_id].pieces):
                        continue  # only equal pieces can nest here (see tree())
                    assert a.value is not None and b.value is not None
                    pairs.append(SiblingPair(
                        parent_id=parent_id, first_id=a.state_id, second_id=b.state_id,
                        first_value=a.value, second_value=b.value,
                        preference=pair_preference(a.value, b.value),
                        single_step=a.single_step and b.single_step,
                    ))
        return pairs

    # -- output ------------------------------------------------------------------------------

    def rollout_records(self) -> list[RolloutRecord]:
        records = []
        for n in self.nodes:
            if n.graded is None:
                continue
            g = n.graded
            for i, text in enumerate(g.texts):
                records.append(RolloutRecord(
                    state_id=n.state_id, rollout_index=i, text=text,
                    generated_tokens=g.generated_tokens[i], verdict=g.verdicts[i],
                    reason=g.reasons[i],
                    finish_reason=g.finish_reasons[i] if g.finish_reasons else "",
                    selected=(n.state_id, i) in self.selected,
                ))
        return records

    def result(self, question: str, *, filter_reason: str | None,
               stop_reason: str) -> OmegaPRMResult:
        n_correct, n_total, n_unknown, n_truncated = self.nodes[0].counts
        states, after_error = self.tree()
        return OmegaPRMResult(
            problem_id=self.problem_id,
            question=question,
            gold_answer=self.gold_answer,
            filtered=filter_reason is not None,
            filter_reason=filter_reason,
            prefilter_n_correct=n_correct,
            prefilter_n_total=n_total,
            prefilter_n_unknown=n_unknown,
            prefilter_n_truncated=n_truncated,
            stop_reason=stop_reason,
            searches_run=len(self.searches),
            states=states,
            states_after_error=after_error,
            pairs=self.sibling_pairs(states),
            searches=list(self.searches),
            rollout_records=self.rollout_records(),
            step_unit=self.cfg.step_unit,
            piece_tokens=self.piece_tokens,
            rollouts=self.cost.rollouts,
            truncated_rollouts=sum(n.counts[3] for n in self.nodes if n.graded is not None),
            cost=self.cost.as_dict(),
            annotator=self.a.name,
            model_id=getattr(self.a.engine, "model_id", "unknown"),
        )


class OmegaPRMAnnotator:
    """Runs OmegaPRM per question against one engine.

    Holds only the engine and settings; every :meth:`annotate` call builds its own search
    state, so many questions can be annotated concurrently (``asyncio.gather``) against one
    engine. Within a question the search is sequential, as the algorithm is.
    """

    def __init__(self, engine: GenerationEngine, config: OmegaPRMConfig, *, run_seed: int,
                 splitter: Splitter, grader: Grader = grade) -> None:
        if not isinstance(config, OmegaPRMConfig):
            raise TypeError(f"config must be an OmegaPRMConfig, got {type(config).__name__}")
        self.engine = engine
        self.config = config
        self.run_seed = run_seed
        self.splitter = splitter
        self.grader = grader

    @property
    def name(self) -> str:
        return f"{ANNOTATOR_NAME}/{ANNOTATOR_VERSION}"

    async def annotate(self, *, problem_id: str, prompt: SolutionPrompt, question: str,
                       gold_answer: str | None) -> OmegaPRMResult:
        """Pre-filter ``question``, then search its tree (see the module docstring).

        ``prompt`` is the question rendered for the policy; ``gold_answer`` is already
        extracted (None: every rollout grades unknown, and the question is filtered
        ``all_unknown``).
        """
        search = _QuestionSearch(self, problem_id=problem_id, prompt=prompt,
                                 gold_answer=gold_answer)
        return await search.run(question)
