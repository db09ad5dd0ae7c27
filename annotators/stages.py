"""The labelling of a problem cut into stages, each a pure async function over one engine.

The Beam graph (:mod:`steplabel.pipelines.stages`) runs each stage on its own, keyed and
checkpointed on its own, each talking to one engine:

- :func:`sample_solutions` (policy, per problem): sample, split, grade; cut-off samples become
  ``policy_truncated`` solutions that no annotator touches; no usable sample: a ``filtered`` row.
- :func:`monte_carlo_labels` (completer, per solution) and :func:`judge_labels` (judge, per
  solution): the row fields each annotator fills, and its counters.
- :func:`omegaprm_rows` (completer, per problem): the OmegaPRM rows and counters.
- :func:`assemble_trajectory` (no engine): solution + Monte Carlo + verdict + consensus -> the
  trajectory row (kept or rejected).
- :func:`critique_tasks` (no engine) and :func:`critique_piece` (critic, per solution, after
  consensus): the assembled trajectories with their trusted labels, then the ``critiques``
  rows; trajectories without trusted labels are skipped under ``critic.only_trusted``
  (:func:`skipped_critique_piece` counts what that saved).
- :func:`merge_problem` (no engine): every stage's piece of one problem -> its rows and counters;
  an engine failure anywhere replaces them by one dead-letter row.

Every valid problem is accounted for by at least one row: trajectories (kept or rejected), a
pre-filter row, OmegaPRM states, or a dead-letter row saying why it failed. The records passed
between stages (:mod:`steplabel.schemas.stages`) are plain dataclasses of JSON values, so a
stage's result is checkpointed as JSON and replayed on resume. Every finished solution and
rollout is graded by the job's grader (:mod:`steplabel.annotators.graders`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from steplabel import __version__
from steplabel.annotators import critic as critic_rules
from steplabel.annotators import monte_carlo, omegaprm
from steplabel.annotators.consensus import (
    REASON_POLICY_TRUNCATED,
    consensus,
    consensus_labels,
)
from steplabel.annotators.graders import get_grader, outcome_tally, tallied
from steplabel.annotators.judge import LLMJudge, judge_version
from steplabel.annotators.monte_carlo import FINISH_LENGTH, MonteCarloAnnotator, sampling_request
from steplabel.annotators.omegaprm import OmegaPRMAnnotator
from steplabel.annotators.prompts import build_solution_prompt, load_template
from steplabel.annotators.seeds import derive_seed
from steplabel.annotators.splitting import get_splitter
from steplabel.engines.base import ContextLengthError, CostMeter, EngineError
from steplabel.schemas import rows as R
from steplabel.schemas.config import share_gpu_memory, to_mapping
from steplabel.schemas.stages import (
    CRITIC,
    JUDGE,
    MONTE_CARLO,
    OMEGAPRM,
    SAMPLE,
    STAGE_ORDER,
    CritiqueTask,
    Failure,
    Labels,
    Piece,
    Problem,
    Sampled,
    Solution,
    labels_from_json,
    piece_from_json,
    sampled_from_json,
)

# The stage records live in schemas/stages.py; the Beam stages reach them through this module.
__all__ = ["CRITIC", "JUDGE", "MONTE_CARLO", "OMEGAPRM", "SAMPLE", "STAGE_ORDER", "CritiqueTask",
           "Failure", "Labels", "critique_piece", "critique_tasks", "skipped_critique_piece",
           "Piece", "Problem", "Sampled", "Solution", "StageContext", "assemble_trajectory",
           "needs_critique",
           "engine_identity", "failure_of", "judge_labels", "labels_from_json",
           "merge_problem", "monte_carlo_labels", "omegaprm_rows", "piece_from_json",
           "sample_solutions", "sampled_from_json", "sampled_piece"]

def failure_of(exc: BaseException) -> Failure | None:
    """The failure an exception stands for; None when it must propagate (a dead engine, a bug)."""
    if isinstance(exc, ContextLengthError):
        return Failure("prompt_too_long", str(exc))
    if isinstance(exc, EngineError):
        return Failure("engine_error", str(exc))
    return None


class StageContext:
    """What every stage derives from the manifest alone (no engine)."""

    def __init__(self, manifest) -> None:
        self.manifest = manifest
        self.splitter = get_splitter(manifest.splitter.name)
        self.policy_template = load_template(manifest.policy.template)
        self.grader = get_grader(manifest.grader)
        # Grades counted by outcome (sandbox_passed, ...) in each stage's counters.
        self.grade = tallied(self.grader.grade)
        self.mc_config = (manifest.monte_carlo.resolved(consensus=manifest.consensus is not None)
                          if manifest.monte_carlo else None)
        self.manifest_hash = manifest.hash

    def roles(self, pools: dict[str, str] | None = None) -> dict[str, Any]:
        """The engine config of every role this manifest uses, with each vLLM model's share of
        GPU memory set (``schemas.config.share_gpu_memory``: the vLLM models of one worker
        process share its GPUs). ``pools``: role -> worker pool (a runner's
        ``stage_accelerators``); without it every role counts as one process's (never more
        memory than the GPUs have; less than it could for a role on its own pool)."""
        m = self.manifest
        roles = {"policy": m.models.policy}
        if m.monte_carlo or m.omegaprm:
            roles["completer"] = m.models.completer_model
        if m.judge:
            roles["judge"] = m.models.judge_model
        if m.critic:
            roles["critic"] = m.models.critic_model
        return share_gpu_memory(roles, pools=pools)

    def mc_annotator(self, engine):
        return MonteCarloAnnotator(engine, self.mc_config, run_seed=self.manifest.seed,
                                   grader=self.grade)

    def omegaprm_annotator(self, engine):
        return OmegaPRMAnnotator(engine, self.manifest.omegaprm, run_seed=self.manifest.seed,
                                 splitter=self.splitter, grader=self.grade)

    def judge(self, engine):
        return LLMJudge(engine, self.manifest.judge, run_seed=self.manifest.seed)

    def critic(self, engine):
        return critic_rules.Critic(engine, self.manifest.critic, run_seed=self.manifest.seed)

    def solution_prompt(self, engine, question: str):
        return build_solution_prompt(engine, self.policy_template, question,
                                     self.manifest.policy.response_prefix)

    def provenance(self, identities: dict[str, tuple]) -> dict:
        """The provenance struct of trajectory rows; ``identities``: role -> (model id, weights
        SHA-256, engine version), as :func:`engine_identity` gives them."""
        m = self.manifest
        policy_id, policy_sha, engine_version = identities["policy"]
        completer_id, completer_sha, _ = identities.get("completer", (None, None, None))
        judge_id, judge_sha, _ = identities.get("judge", (None, None, None))
        judge_template = load_template(m.judge.template_id) if m.judge else None
        annotators = {
            "monte_carlo": to_mapping(self.mc_config) if m.monte_carlo else None,
            "omegaprm": to_mapping(m.omegaprm) if m.omegaprm else None,
            "judge": to_mapping(m.judge) if m.judge else None,
            "consensus": to_mapping(m.consensus) if m.consensus else None,
            "versions": {
                "monte_carlo": (f"{monte_carlo.ANNOTATOR_NAME}/{monte_carlo.ANNOTATOR_VERSION}"
                                if m.monte_carlo else None),
                "omegaprm": _omegaprm_name() if m.omegaprm else None,
                "judge": judge_version(m.judge) if m.judge else None,
            },
        }
        return R.as_row(R.Provenance(
            steplabel_version=__version__,
            manifest_hash=self.manifest_hash,
            run_seed=m.seed,
            policy_model=policy_id,
            policy_weights_sha256=policy_sha,
            completer_model=completer_id if (m.monte_carlo or m.omegaprm) else None,
            completer_weights_sha256=completer_sha if (m.monte_carlo or m.omegaprm) else None,
            judge_model=judge_id if m.judge else None,
            judge_weights_sha256=judge_sha if m.judge else None,
            engine_version=engine_version,
            policy_sampling=json.dumps(to_mapping(m.policy.sampling), sort_keys=True),
            mc_sampling=json.dumps(to_mapping(m.monte_carlo.sampling), sort_keys=True)
            if m.monte_carlo else None,
            judge_sampling=json.dumps(to_mapping(m.judge.sampling), sort_keys=True)
            if m.judge else None,
            policy_seed=None,
            splitter=self.splitter.provenance(),
            policy_template_id=self.policy_template.id,
            policy_template_sha256=self.policy_template.sha256,
            judge_template_id=judge_template.id if judge_template else None,
            judge_template_sha256=judge_template.sha256 if judge_template else None,
            annotators=json.dumps(annotators, sort_keys=True),
            grader_version=self.grader.version,
        ))

    def dead_letter(self, problem_id, source, original, failure: Failure) -> dict:
        return R.dead_letter(stage="label", reason=failure.reason, error=failure.error,
                             problem_id=problem_id, source=source, original=original,
                             manifest_hash=self.manifest_hash)

    def filtered_row(self, problem: Problem, *, stage, reason, counts, cost) -> dict:
        return R.as_row(R.Filtered(
            problem_id=problem.problem_id, source=problem.source, question=problem.question,
            gold_answer=problem.gold_answer, stage=stage, reason=reason, n_correct=counts[0],
            n_total=counts[1], n_unknown=counts[2],
            n_truncated=counts[3] if len(counts) > 3 else 0, cost=cost,
            manifest_hash=self.manifest_hash))


def _omegaprm_name() -> str:
    return f"{omegaprm.ANNOTATOR_NAME}/{omegaprm.ANNOTATOR_VERSION}"


def engine_identity(engine: Any) -> tuple[str, str | None, str | None]:
    """(model id, weights SHA-256, engine version) of an engine, as provenance records it
    (from its ``info()`` where it has one, else its ``model_id`` or type name)."""
    info = getattr(engine, "info", None)
    if callable(info):
        data = info()
        return data.model_id, data.weights_sha256, data.engine_version
    return getattr(engine, "model_id", type(engine).__name__), None, None


# ---------------------------------------------------------------------------------------------
# Sampling (policy engine, per problem)


async def sample_solutions(ctx: StageContext, engine, problem: Problem) -> Sampled:
    """Sample ``policy.samples`` solutions, split and grade them. Engine failures are a
    :class:`Failure`; a dead engine raises."""
    try:
        with outcome_tally() as tally:
            sampled = await _sample(ctx, engine, problem)
    except (ContextLengthError, EngineError) as exc:
        return Sampled(failure=failure_of(exc))
    sampled.counters.update(tally.counts)
    return sampled


async def _sample(ctx: StageContext, engine, problem: Problem) -> Sampled:
    m = ctx.manifest
    prompt = ctx.solution_prompt(engine, problem.question)
    cost = CostMeter()
    seed = derive_seed(m.seed, "policy", problem.problem_id)
    result = await engine.generate(sampling_request(prompt.for_sampling(), n=m.policy.samples,
                                                    seed=seed, sampling=m.policy.sampling))
    cost.add(result)
    counters = {"policy_samples": len(result.texts)}
    per_sample = {k: v // max(1, len(result.texts)) for k, v in cost.as_dict().items()}
    per_sample["requests"] = 1
    solutions = []
    for index, (text, finish) in enumerate(zip(result.texts, result.finish_reasons)):
        solution = m.policy.response_prefix + text
        steps = ctx.splitter.split(solution)
        if not steps:
            counters["empty_solutions"] = counters.get("empty_solutions", 0) + 1
            continue
        base = dict(problem_id=problem.problem_id, source=problem.source,
                    question=problem.question, gold=problem.gold,
                    original=problem.original, index=index, solution=solution,
                    steps=list(steps), policy_seed=seed, cost_policy=dict(per_sample))
        if finish == FINISH_LENGTH:
            # Cut off at max_tokens: no final answer of its own, so no label can be true.
            counters["policy_samples_truncated"] = counters.get("policy_samples_truncated",
                                                               0) + 1
            solutions.append(Solution(**base, truncated=True))
            continue
        outcome = await asyncio.to_thread(ctx.grade, solution, problem.gold)
        solutions.append(Solution(
            **base, final_answer=outcome.predicted,
            final_answer_correct=None if outcome.verdict == "unknown"
            else outcome.verdict == "correct",
            outcome_reason=outcome.reason, final_verdict=outcome.verdict))
    filtered = None
    if not solutions:
        filtered = ctx.filtered_row(problem, stage="policy", reason="no_usable_solution",
                                    counts=(0, 0, 0), cost=cost.as_dict())
        counters["filtered_no_usable_solution"] = 1
    return Sampled(solutions=solutions, filtered=filtered, counters=counters)


# ---------------------------------------------------------------------------------------------
# Monte Carlo and judge (per solution)


async def monte_carlo_labels(ctx: StageContext, annotator, prompt, solution: Solution,
                             verdict: Labels | None = None) -> Labels:
    """Monte Carlo estimates of one solution's steps (``prompt``: the completer's view of the
    problem; ``verdict``: the judge's labels, which guide the rollouts under
    ``consensus_guided``)."""
    guide = {}
    if ctx.mc_config.consensus_guided:
        # A judge stage that failed guides nothing: the problem becomes a dead letter anyway.
        guide["judge_first_error"] = (None if verdict is None or verdict.failure is not None
                                      else verdict.fields["judge_first_error"])
    try:
        with outcome_tally() as tally:
            mc = await annotator.annotate(problem_id=solution.problem_id,
                                          solution_index=solution.index, prompt=prompt,
                                          steps=list(solution.steps), splitter=ctx.splitter,
                                          gold_answer=solution.gold,
                                          final_verdict=solution.final_verdict, **guide)
    except (ContextLengthError, EngineError) as exc:
        return Labels(failure=failure_of(exc))
    fields = R.MonteCarloColumns(
        mc_n_correct=mc.n_correct, mc_n_total=mc.n_total, mc_n_unknown=mc.n_unknown,
        mc_n_truncated=mc.n_truncated, mc_values=mc.values, hard_labels=mc.hard_labels,
        soft_labels=mc.soft_labels, mc_first_error=mc.first_error_index,
        mc_posterior_mean=mc.posterior_mean, mc_interval_low=mc.interval_low,
        mc_interval_high=mc.interval_high, mc_p_above=mc.p_above,
        mc_rollouts_spent=mc.rollouts_per_step, mc_label_reasons=mc.label_reasons,
        cost_mc=mc.cost)
    counters = {
        "mc_rollouts": mc.rollouts,
        "mc_rollouts_truncated": sum(mc.n_truncated),
        "mc_rollouts_unknown": sum(mc.n_unknown[:-1]),
        "mc_rollouts_saved_decided": mc.rollouts_saved_decided,
        "mc_rollouts_saved_first_error": mc.rollouts_saved_first_error,
        "mc_rollouts_saved_consensus": mc.rollouts_saved_consensus,
        "mc_steps_not_estimated": sum(1 for c in zip(mc.n_total, mc.n_unknown) if c == (0, 0)),
        "mc_steps_unestimated": sum(1 for v in mc.values if v is None),
        "mc_steps_undecided": mc.label_reasons.count("undecided"),  # adaptive budget (#26)
        **tally.counts,
    }
    return Labels(fields=_plain(R.as_row(fields)), counters=counters, stopped=mc.stopped)


async def judge_labels(judge, solution: Solution) -> Labels:
    try:
        verdict = await judge.judge(problem_id=solution.problem_id,
                                    solution_index=solution.index, question=solution.question,
                                    steps=list(solution.steps))
    except (ContextLengthError, EngineError) as exc:
        return Labels(failure=failure_of(exc))
    fields = R.JudgeColumns(
        judge_first_error=verdict.first_error_index, judge_agreement=verdict.agreement,
        judge_votes=verdict.votes, judge_replies=verdict.raw_replies,
        judge_parse_reasons=verdict.parse_reasons, judge_reason=verdict.reason,
        judge_finish_reasons=list(verdict.finish_reasons), cost_judge=verdict.cost)
    counters = {"judge_replies": len(verdict.raw_replies),
                f"judge_verdict_{verdict.reason}": 1,
                "judge_replies_truncated": list(verdict.finish_reasons).count(FINISH_LENGTH)}
    return Labels(fields=_plain(R.as_row(fields)), counters=counters)


def _plain(value):
    """Tuples to lists, so that a result and its JSON checkpoint are the same value."""
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------------------------------
# The trajectory row (no engine)


def _trajectory(solution: Solution, provenance: dict, **fields) -> dict:
    """A trajectory row: the solution, the annotator ``fields`` given, every other annotator
    field empty (None)."""
    fields = {"cost_mc": R.as_row(R.Cost()), "cost_judge": R.as_row(R.Cost()), **fields}
    return R.as_row(R.Trajectory(
        problem_id=solution.problem_id, source=solution.source, solution_index=solution.index,
        question=solution.question, gold_answer=solution.gold_answer,
        solution=solution.solution, steps=list(solution.steps),
        cost_policy=dict(solution.cost_policy),
        provenance={**provenance, "policy_seed": solution.policy_seed}, **fields))


def assemble_trajectory(ctx: StageContext, solution: Solution, mc: Labels | None,
                        verdict: Labels | None, provenance: dict) -> Piece:
    """One solution's row (``trajectories`` or ``rejected``) and counters; a failure of its
    Monte Carlo or judge stage instead is the piece's failure."""
    m = ctx.manifest
    rank = (STAGE_ORDER.index(MONTE_CARLO), solution.index)
    for stage, labels in ((MONTE_CARLO, mc), (JUDGE, verdict)):
        if labels is not None and labels.failure is not None:
            return Piece(rank=(STAGE_ORDER.index(stage), solution.index),
                         failure=labels.failure)
    if solution.truncated:
        row = _trajectory(solution, provenance, policy_truncated=True,
                          outcome_reason=REASON_POLICY_TRUNCATED, consensus_keep=False,
                          consensus_reason=REASON_POLICY_TRUNCATED)
        return Piece(rank=rank, rows={"rejected": [row]},
                     counters={"trajectories_rejected": 1,
                               f"rejected_{REASON_POLICY_TRUNCATED}": 1})
    fields = dict(final_answer=solution.final_answer,
                  final_answer_correct=solution.final_answer_correct,
                  outcome_reason=solution.outcome_reason)
    counters: dict[str, int] = {}
    if mc is not None:
        fields.update(mc.fields)
        counters.update(mc.counters)
    if verdict is not None:
        fields.update(verdict.fields)
        counters.update(verdict.counters)
    output = "trajectories"
    if m.consensus is not None:
        decision = consensus(mc.fields["mc_first_error"], verdict.fields["judge_first_error"],
                             mc_stopped=mc.stopped)
        fields.update(consensus_keep=decision.keep, consensus_reason=decision.reason,
                      label_source="consensus")
        if decision.keep:
            fields["labels"] = consensus_labels(decision.first_error, len(solution.steps))
        else:
            output = "rejected"
    elif mc is not None:
        fields.update(labels=mc.fields["hard_labels"], label_source="monte_carlo")
    elif verdict is not None and verdict.fields["judge_first_error"] is not None:
        fields.update(labels=consensus_labels(verdict.fields["judge_first_error"],
                                              len(solution.steps)), label_source="judge")
    counters[f"trajectories_{output}"] = 1
    return Piece(rank=rank, rows={output: [_trajectory(solution, provenance, **fields)]},
                 counters=counters)


# ---------------------------------------------------------------------------------------------
# Critiques (critic engine, per solution, after consensus)


def critique_tasks(config, piece: Piece) -> list[CritiqueTask]:
    """The trajectories of one assembled piece the critic may verify, with their trusted labels
    (``config``: the manifest's ``critic``, its ``trust``). A policy-truncated trajectory is
    none (no annotator touches it); a failed piece has no trajectory."""
    trust = config.trust
    tasks = []
    for output in ("trajectories", "rejected"):
        for row in piece.rows.get(output, ()):
            if row.get("policy_truncated"):
                continue
            trusted = critic_rules.trusted_labels(
                trust, mc_first_error=row.get("mc_first_error"),
                omegaprm_first_error=row.get("omegaprm_first_error"),
                consensus_keep=row.get("consensus_keep"))
            tasks.append(CritiqueTask(
                problem_id=row["problem_id"], solution_index=row["solution_index"],
                source=row["source"], question=row["question"], steps=list(row["steps"]),
                trusted_first_error=trusted.first_error, trusted_source=trusted.source))
    return tasks


def omegaprm_critique_tasks(config, problem: Problem, piece: Piece) -> list[CritiqueTask]:
    """Under ``critic.trust: omegaprm``, the critic's tasks from OmegaPRM's piece of one
    problem: every searched rollout (an ``omegaprm_searches`` row), its pieces as the steps
    and its first error as the trusted one. OmegaPRM searches its own rollouts, never the
    policy's samples, so these are the only trajectories with OmegaPRM's labels. A search that
    located no error (``probe_unknown``, ``probe_undecided``, ``empty_range``: first error
    null) gives a task without trusted labels (skipped under ``only_trusted``, else
    ``no_trusted_labels``), as does an empty rollout (none: nothing to critique). Other trust
    sources, a failed piece or a dropped question: none."""
    if config.trust != critic_rules.TRUST_OMEGAPRM:
        return []
    tasks = []
    for row in piece.rows.get("omegaprm_searches", ()):
        steps = list(row.get("pieces") or ())
        if not steps:
            continue
        trusted = critic_rules.trusted_labels(config.trust,
                                              omegaprm_first_error=row.get("first_error"))
        tasks.append(CritiqueTask(
            problem_id=problem.problem_id, solution_index=row["search_index"],
            source=problem.source, question=problem.question, steps=steps,
            trusted_first_error=trusted.first_error, trusted_source=trusted.source,
            omegaprm_rollout_id=row["rollout_id"]))
    return tasks


def _critique_rank(task: CritiqueTask) -> tuple:
    return (STAGE_ORDER.index(CRITIC), task.omegaprm_rollout_id is not None,
            task.solution_index)


def needs_critique(config, task: CritiqueTask) -> bool:
    """Whether the critic runs on ``task`` (``critic.only_trusted``: only with trusted labels)."""
    return critic_rules.needs_critique(
        config,
        critic_rules.TrustedLabels(task.trusted_first_error, task.trusted_source))


def skipped_critique_piece(config, task: CritiqueTask) -> Piece:
    """A trajectory the critic skips (no trusted labels, ``only_trusted``): no rows, and what
    it did not spend: one request of ``critic.samples`` samples (the "rollouts not spent")."""
    return Piece(rank=_critique_rank(task),
                 counters={"critic_solutions_skipped": 1, "critic_requests_not_spent": 1,
                           "critic_rollouts_not_spent": config.samples})


async def critique_piece(ctx: StageContext, critic, task: CritiqueTask) -> Piece:
    """The ``critiques`` rows of one trajectory (one per sample, kept or not, with why) and
    their counters. An engine that refuses the request (``prompt_too_long``,
    ``engine_error``) gives a ``dead_letter`` row of stage ``critic`` for this solution; the
    problem's trajectories stand (the critic only reads them). A dead engine raises."""
    rank = _critique_rank(task)
    try:
        result = await critic.critique(
            problem_id=task.problem_id, solution_index=task.solution_index,
            question=task.question, steps=list(task.steps),
            trusted=critic_rules.TrustedLabels(task.trusted_first_error, task.trusted_source),
            omegaprm_rollout_id=task.omegaprm_rollout_id)
    except (ContextLengthError, EngineError) as exc:
        failure = failure_of(exc)
        original = {"problem_id": task.problem_id, "solution_index": task.solution_index,
                    "question": task.question, "steps": list(task.steps)}
        if task.omegaprm_rollout_id is not None:
            original["omegaprm_rollout_id"] = task.omegaprm_rollout_id
        original = json.dumps(original)
        row = R.dead_letter(stage=CRITIC, reason=failure.reason, error=failure.error,
                            problem_id=task.problem_id, source=task.source, original=original,
                            manifest_hash=ctx.manifest_hash)
        return Piece(rank=rank, rows={"dead_letter": [row]},
                     counters={f"dead_letter_critic_{failure.reason}": 1})
    rows = [R.as_row(row) for row in critic_rules.critique_rows(
        result, manifest_hash=ctx.manifest_hash)]
    counters = {"critic_solutions": 1, "critic_critiques": len(rows),
                "critic_kept": result.kept,
                "critic_critiques_truncated": list(result.finish_reasons).count(FINISH_LENGTH)}
    for check in result.checks:
        if not check.kept:
            name = f"critic_{check.reason.replace(':', '_')}"  # critic_unusable_truncated
            counters[name] = counters.get(name, 0) + 1
    return Piece(rank=rank, rows=_plain({"critiques": rows}), counters=counters)


def sampled_piece(sampled: Sampled) -> Piece:
    """The sampling stage's own part of a problem's outputs: its counters, the filtered row."""
    rows = {"filtered": [sampled.filtered]} if sampled.filtered is not None else {}
    return Piece(rank=(STAGE_ORDER.index(SAMPLE), -1), rows=rows,
                 counters=dict(sampled.counters), failure=sampled.failure)


# ---------------------------------------------------------------------------------------------
# OmegaPRM (completer engine, per problem)


async def omegaprm_rows(ctx: StageContext, annotator, prompt, problem: Problem, *,
                        completer_model: str | None) -> Piece:
    """OmegaPRM's rows of one problem (tree states, pairs, searches, or a pre-filter row)."""
    rank = (STAGE_ORDER.index(OMEGAPRM), -1)
    try:
        with outcome_tally() as tally:
            result = await annotator.annotate(problem_id=problem.problem_id, prompt=prompt,
                                              question=problem.question,
                                              gold_answer=problem.gold)
    except (ContextLengthError, EngineError) as exc:
        return Piece(rank=rank, failure=failure_of(exc))
    rows: dict[str, list[dict]] = {}
    counters: dict[str, int] = dict(tally.counts)

    def count(name: str, value: int = 1) -> None:
        counters[name] = counters.get(name, 0) + value

    count("omegaprm_rollouts", result.rollouts)
    # Token counts are not on OmegaPRM's rows (states share rollouts): counted here.
    for name in R.COST_TOKEN_FIELDS:
        count(f"omegaprm_{name}", result.cost.get(name, 0))
    count("omegaprm_rollouts_truncated", result.truncated_rollouts)
    count("omegaprm_prefilter_rollouts_truncated", result.prefilter_n_truncated)
    if result.filtered:
        rows["filtered"] = [ctx.filtered_row(
            problem, stage="omegaprm_prefilter", reason=result.filter_reason,
            counts=(result.prefilter_n_correct, result.prefilter_n_total,
                    result.prefilter_n_unknown, result.prefilter_n_truncated),
            cost=result.cost)]
        count(f"filtered_{result.filter_reason}")
        return Piece(rank=rank, rows=_plain(rows), counters=counters)
    tree_id = problem.problem_id
    node = {s.state_id: s for s in result.states}

    def node_id(state_id: int) -> str | None:
        return None if state_id < 0 else f"{tree_id}/{state_id}"

    states = rows.setdefault("omegaprm_states", [])
    for state, after_error in [*((s, False) for s in result.states),
                               *((s, True) for s in result.states_after_error)]:
        post = state.posterior
        states.append(R.as_row(R.OmegaPRMState(
            record_type=state.kind, problem_id=problem.problem_id, question=problem.question,
            gold_answer=problem.gold_answer, tree_id=tree_id, node_id=node_id(state.state_id),
            parent_id=node_id(state.parent_id), after_error=after_error, depth=state.depth,
            prefix=state.prefix, action=state.action, action_pieces=state.action_pieces,
            single_step=state.single_step, mc_value=state.value, hard_label=state.hard_label,
            n_correct=state.n_correct, n_total=state.n_total, n_unknown=state.n_unknown,
            n_truncated=state.n_truncated,
            mc_posterior_mean=None if post is None else post.mean,
            mc_interval_low=None if post is None else post.low,
            mc_interval_high=None if post is None else post.high,
            mc_p_above=None if post is None else post.p_above,
            mc_rollouts_spent=state.rollouts_spent, mc_label_reason=state.label_reason,
            rollout_of=node_id(state.rollout_of),
            manifest_hash=ctx.manifest_hash, completer_model=completer_model)))
    pairs = [R.as_row(R.OmegaPRMPair(
        problem_id=problem.problem_id, tree_id=tree_id, parent_id=node_id(pair.parent_id),
        prefix=node[pair.parent_id].prefix, node_a=node_id(pair.first_id),
        node_b=node_id(pair.second_id), action_a=node[pair.first_id].action,
        action_b=node[pair.second_id].action, mc_a=pair.first_value, mc_b=pair.second_value,
        preference_a=pair.preference, single_step=pair.single_step,
        manifest_hash=ctx.manifest_hash)) for pair in result.pairs]
    if pairs:
        rows["omegaprm_pairs"] = pairs
    searches = []
    for search in result.searches:
        searches.append(R.as_row(R.OmegaPRMSearch(
            problem_id=problem.problem_id, tree_id=tree_id, search_index=search.search_index,
            start_node=node_id(search.state_id),
            rollout_id=f"{node_id(search.state_id)}#{search.rollout_index}",
            pieces=search.steps, start_index=search.start_index,
            first_error=search.first_error_index, reason=search.reason,
            rollouts_used=search.rollouts, rollouts_truncated=search.rollouts_truncated,
            manifest_hash=ctx.manifest_hash)))
        if search.reason != "located":
            count(f"omegaprm_searches_{search.reason}")
    if searches:
        rows["omegaprm_searches"] = searches
    if not states:
        del rows["omegaprm_states"]
    count("omegaprm_states", len(result.states))
    count("omegaprm_states_after_error", len(result.states_after_error))
    count("omegaprm_pairs", len(result.pairs))
    return Piece(rank=rank, rows=_plain(rows), counters=counters)


# ---------------------------------------------------------------------------------------------
# One problem's outputs from its pieces (no engine)


def merge_problem(ctx: StageContext, problem_id: str, pieces, *, source: str | None,
                  original: str | None) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Rows per output and counters of one problem. An engine failure in any stage (the first
    in stage order) replaces them by one dead-letter row."""
    ordered = sorted(pieces, key=lambda p: tuple(p.rank))
    failed = next((p.failure for p in ordered if p.failure is not None), None)
    if failed is not None:
        return ({"dead_letter": [ctx.dead_letter(problem_id, source, original, failed)]},
                {f"dead_letter_{failed.reason}": 1})
    rows: dict[str, list[dict]] = {}
    counters: dict[str, int] = {}
    for piece in ordered:
        for output, output_rows in piece.rows.items():
            rows.setdefault(output, []).extend(output_rows)
        for name, value in piece.counters.items():
            counters[name] = counters.get(name, 0) + value
    return rows, counters
