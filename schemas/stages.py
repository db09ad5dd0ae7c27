"""The records that pass between the labelling stages, and their JSON round trips.

The stages themselves are :mod:`steplabel.annotators.stages`; the Beam graph runs each on its
own and checkpoints its result as JSON (:func:`to_json` and the ``*_from_json`` readers), so a
resumed job replays it. Every record is a frozen dataclass of JSON values, except the typed
``gold`` (:mod:`steplabel.schemas.graders`), which is written with the grader it belongs to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from steplabel.schemas.graders import Gold, gold_from_json, gold_to_json

#: Stage names: checkpoint folders (``_work/<stage>/``) and the order in which an engine
#: failure is chosen when several stages of one problem failed.
SAMPLE, OMEGAPRM, MONTE_CARLO, JUDGE = "sample", "omegaprm", "monte_carlo", "judge"
CRITIC = "critic"
STAGE_ORDER = (SAMPLE, OMEGAPRM, MONTE_CARLO, JUDGE, CRITIC)


@dataclass(frozen=True)
class Problem:
    """A validated problem. ``gold`` is what the job's grader grades against, already read
    from the source's format by that grader (``Grader.parse_gold``)."""

    problem_id: str
    question: str
    gold: Gold
    source: str
    original: str = ""  # the source record as JSON, for dead-letter rows

    @property
    def gold_answer(self) -> str:
        """The gold as the rows' ``gold_answer`` column holds it."""
        return self.gold.text


@dataclass(frozen=True)
class Failure:
    """An engine refused a stage's request (``prompt_too_long``, ``engine_error``): the whole
    problem becomes one dead-letter row (a dead engine is not a failure: it stops the job)."""

    reason: str
    error: str


@dataclass(frozen=True)
class Solution:
    """One policy sample of a problem, split and graded (``truncated``: cut off at max_tokens,
    rejected unlabelled)."""

    problem_id: str
    source: str
    question: str
    gold: Gold
    original: str
    index: int
    solution: str
    steps: list
    policy_seed: int
    cost_policy: dict
    truncated: bool = False
    final_answer: str | None = None
    final_answer_correct: bool | None = None
    outcome_reason: str | None = None
    final_verdict: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.index)

    @property
    def gold_answer(self) -> str:
        return self.gold.text

    def problem(self) -> Problem:
        return Problem(self.problem_id, self.question, self.gold, self.source, self.original)


@dataclass(frozen=True)
class Sampled:
    """What the sampling stage made of one problem."""

    solutions: list = field(default_factory=list)  # of Solution
    filtered: dict | None = None  # the ``no_usable_solution`` row
    counters: dict = field(default_factory=dict)
    failure: Failure | None = None


@dataclass(frozen=True)
class Labels:
    """An annotator's columns of one trajectory row and its counters (Monte Carlo or judge).
    ``fields`` is the annotator's columns record (``rows.MonteCarloColumns``,
    ``rows.JudgeColumns``) as a row dict. ``stopped``: why consensus-guided Monte Carlo
    stopped early (``MonteCarloResult.stopped``)."""

    fields: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    failure: Failure | None = None
    stopped: str | None = None


@dataclass(frozen=True)
class CritiqueTask:
    """One trajectory as the critic stage sees it: what it critiques and the trusted first
    error its critiques are checked against (``-1`` no error, None unknown;
    ``trusted_source``: ``consensus``, ``monte_carlo`` or ``omegaprm``).

    A policy sample (an assembled trajectory, after consensus) has ``omegaprm_rollout_id``
    None and ``solution_index`` its sample index. One of OmegaPRM's searched rollouts
    (``critic.trust: omegaprm``) has ``omegaprm_rollout_id`` its ``omegaprm_searches``
    ``rollout_id`` and ``solution_index`` that search's ``search_index``."""

    problem_id: str
    solution_index: int
    source: str
    question: str
    steps: list
    trusted_first_error: int | None
    trusted_source: str
    omegaprm_rollout_id: str | None = None

    @property
    def key(self) -> tuple:
        """``(problem_id, solution_index)`` of a policy sample; with the rollout id appended
        for an OmegaPRM rollout (its search index is not a sample index)."""
        if self.omegaprm_rollout_id is None:
            return (self.problem_id, self.solution_index)
        return (self.problem_id, self.solution_index, self.omegaprm_rollout_id)


@dataclass(frozen=True)
class Piece:
    """Part of one problem's outputs: rows per output, counters, or a failure. ``rank`` orders
    pieces (stage, solution index) so that the failure reported is the same on every run."""

    rank: tuple
    rows: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    failure: Failure | None = None


# ---------------------------------------------------------------------------------------------
# JSON round trips (checkpoints)


def solution_to_json(solution: Solution) -> dict:
    return {**dataclasses.asdict(solution), "gold": gold_to_json(solution.gold)}


def solution_from_json(data: dict) -> Solution:
    return Solution(**{**data, "gold": gold_from_json(data["gold"])})


def to_json(record: Sampled | Labels | Piece) -> dict:
    data = dataclasses.asdict(record)
    if isinstance(record, Sampled):
        data["solutions"] = [solution_to_json(s) for s in record.solutions]
    return data


def _failure(data) -> Failure | None:
    return Failure(**data) if data else None


def sampled_from_json(data: dict) -> Sampled:
    return Sampled(solutions=[solution_from_json(s) for s in data["solutions"]],
                   filtered=data["filtered"], counters=data["counters"],
                   failure=_failure(data["failure"]))


def labels_from_json(data: dict) -> Labels:
    return Labels(fields=data["fields"], counters=data["counters"],
                  failure=_failure(data["failure"]), stopped=data.get("stopped"))


def piece_from_json(data: dict) -> Piece:
    return Piece(rank=tuple(data["rank"]), rows=data["rows"], counters=data["counters"],
                 failure=_failure(data["failure"]))
