"""One problem, end to end: sample solutions, split, grade, annotate, judge, agree.

:class:`ProblemLabeler` composes the annotators for one validated problem and returns the rows
of every output it touches (``trajectories``, ``rejected``, ``omegaprm_*``, ``filtered``,
``dead_letter``), each a dict matching :mod:`steplabel.schemas.records`. It is asynchronous and
holds no per-problem state, so a caller runs many problems at once against shared engines: a
problem in its judge stage overlaps another's Monte Carlo stage, and the engine stays busy.

Every valid problem is accounted for by at least one row: trajectories (kept or rejected), a
pre-filter row, OmegaPRM states, or a dead-letter row saying why it failed.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from steplabel import __version__
from steplabel.annotators.consensus import (
    REASON_POLICY_TRUNCATED,
    consensus,
    consensus_labels,
)
from steplabel.annotators.grading import GRADER_VERSION, grade
from steplabel.annotators.judge import LLMJudge, judge_version
from steplabel.annotators.monte_carlo import (
    FINISH_LENGTH,
    MonteCarloAnnotator,
    sampling_request,
)
from steplabel.annotators.omegaprm import OmegaPRMAnnotator
from steplabel.annotators.prompts import build_solution_prompt, load_template
from steplabel.annotators.seeds import derive_seed
from steplabel.annotators.splitting import get_splitter
from steplabel.engines.base import ContextLengthError, CostMeter, EngineError
from steplabel.schemas.config import to_mapping
from steplabel.schemas.records import empty_cost


@dataclass(frozen=True)
class Problem:
    """A validated problem. ``gold_answer`` is already extracted from the source's format."""

    problem_id: str
    question: str
    gold_answer: str
    source: str
    original: str = ""  # the source record as JSON, for dead-letter rows


@dataclass
class ProblemOutputs:
    rows: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, output: str, row: dict) -> None:
        self.rows[output].append(row)

    def count(self, name: str, value: int = 1) -> None:
        self.counters[name] += value


@dataclass(frozen=True)
class Engines:
    policy: Any
    completer: Any
    judge: Any


def engine_identity(engine: Any) -> tuple[str, str | None, str | None]:
    info = getattr(engine, "info", None)
    if callable(info):
        data = info()
        return data.model_id, data.weights_sha256, data.engine_version
    return getattr(engine, "model_id", type(engine).__name__), None, None


class ProblemLabeler:
    """Labels problems under one manifest with the given engines."""

    def __init__(self, manifest, engines: Engines) -> None:
        self.manifest = manifest
        self.engines = engines
        self.splitter = get_splitter(manifest.splitter.name)
        self.policy_template = load_template(manifest.policy.template)
        seed = manifest.seed
        # Monte Carlo skips the steps after the first error when nothing keeps their labels.
        self.mc_config = (manifest.monte_carlo.resolved(consensus=manifest.consensus is not None)
                          if manifest.monte_carlo else None)
        self.mc = (MonteCarloAnnotator(engines.completer, self.mc_config, run_seed=seed)
                   if manifest.monte_carlo else None)
        self.omegaprm = (OmegaPRMAnnotator(engines.completer, manifest.omegaprm, run_seed=seed,
                                           splitter=self.splitter)
                         if manifest.omegaprm else None)
        self.judge = (LLMJudge(engines.judge, manifest.judge, run_seed=seed)
                      if manifest.judge else None)
        self.manifest_hash = manifest.hash
        self.provenance = self._provenance()

    # ----------------------------------------------------------------------------------------

    def _provenance(self) -> dict:
        m = self.manifest
        policy_id, policy_sha, engine_version = engine_identity(self.engines.policy)
        completer_id, completer_sha, _ = engine_identity(self.engines.completer)
        judge_id, judge_sha, _ = engine_identity(self.engines.judge)
        judge_template = load_template(m.judge.template_id) if m.judge else None
        annotators = {
            "monte_carlo": to_mapping(self.mc_config) if m.monte_carlo else None,
            "omegaprm": to_mapping(m.omegaprm) if m.omegaprm else None,
            "judge": to_mapping(m.judge) if m.judge else None,
            "consensus": to_mapping(m.consensus) if m.consensus else None,
            "versions": {
                "monte_carlo": self.mc.name if self.mc else None,
                "omegaprm": getattr(self.omegaprm, "name", None),
                "judge": judge_version(m.judge) if self.judge else None,
            },
        }
        return {
            "steplabel_version": __version__,
            "manifest_hash": self.manifest_hash,
            "run_seed": m.seed,
            "policy_model": policy_id,
            "policy_weights_sha256": policy_sha,
            "completer_model": completer_id if (m.monte_carlo or m.omegaprm) else None,
            "completer_weights_sha256": completer_sha if (m.monte_carlo or m.omegaprm) else None,
            "judge_model": judge_id if m.judge else None,
            "judge_weights_sha256": judge_sha if m.judge else None,
            "engine_version": engine_version,
            "policy_sampling": json.dumps(to_mapping(m.policy.sampling), sort_keys=True),
            "mc_sampling": json.dumps(to_mapping(m.monte_carlo.sampling), sort_keys=True)
            if m.monte_carlo else None,
            "judge_sampling": json.dumps(to_mapping(m.judge.sampling), sort_keys=True)
            if m.judge else None,
            "policy_seed": None,
            "splitter": self.splitter.provenance(),
            "policy_template_id": self.policy_template.id,
            "policy_template_sha256": self.policy_template.sha256,
            "judge_template_id": judge_template.id if judge_template else None,
            "judge_template_sha256": judge_template.sha256 if judge_template else None,
            "annotators": json.dumps(annotators, sort_keys=True),
            "grader_version": GRADER_VERSION,
        }

    def dead_letter(self, problem: Problem, *, stage: str, reason: str, error: str) -> dict:
        return {
            "stage": stage,
            "reason": reason,
            "error": error,
            "problem_id": problem.problem_id,
            "source": problem.source,
            "original": problem.original,
            "manifest_hash": self.manifest_hash,
        }

    # ----------------------------------------------------------------------------------------

    async def label(self, problem: Problem) -> ProblemOutputs:
        """All output rows of one problem. Engine failures become dead-letter rows."""
        out = ProblemOutputs()
        try:
            await self._label(problem, out)
        except ContextLengthError as exc:
            out = ProblemOutputs()
            out.add("dead_letter", self.dead_letter(problem, stage="label",
                                                    reason="prompt_too_long", error=str(exc)))
            out.count("dead_letter_prompt_too_long")
        except EngineError as exc:
            out = ProblemOutputs()
            out.add("dead_letter", self.dead_letter(problem, stage="label",
                                                    reason="engine_error", error=str(exc)))
            out.count("dead_letter_engine_error")
        return out

    async def _label(self, problem: Problem, out: ProblemOutputs) -> None:
        m = self.manifest
        prompt = build_solution_prompt(self.engines.policy, self.policy_template,
                                       problem.question, m.policy.response_prefix)
        # The completer continues prefixes in its own chat template (it may be another model).
        completer_prompt = (prompt if self.engines.completer is self.engines.policy else
                            build_solution_prompt(self.engines.completer, self.policy_template,
                                                  problem.question, m.policy.response_prefix))
        tasks = [self._trajectories(problem, prompt, completer_prompt, out)]
        if self.omegaprm is not None:
            tasks.append(self._omegaprm(problem, completer_prompt, out))
        await asyncio.gather(*tasks)

    async def _trajectories(self, problem: Problem, prompt, completer_prompt,
                            out: ProblemOutputs) -> None:
        m = self.manifest
        policy_cost = CostMeter()
        seed = derive_seed(m.seed, "policy", problem.problem_id)
        result = await self.engines.policy.generate(
            sampling_request(prompt.for_sampling(), n=m.policy.samples, seed=seed,
                             sampling=m.policy.sampling))
        policy_cost.add(result)
        out.count("policy_samples", len(result.texts))
        per_sample = {k: v // max(1, len(result.texts)) for k, v in policy_cost.as_dict().items()}
        per_sample["requests"] = 1
        jobs = []
        for index, (text, finish) in enumerate(zip(result.texts, result.finish_reasons)):
            solution = m.policy.response_prefix + text
            steps = self.splitter.split(solution)
            if not steps:
                out.count("empty_solutions")
                continue
            if finish == FINISH_LENGTH:
                # Cut off at max_tokens: no final answer of its own, so no label can be true.
                out.count("policy_samples_truncated")
                jobs.append(self._truncated_trajectory(problem, index, solution, steps, seed,
                                                       per_sample))
                continue
            jobs.append(self._trajectory(problem, completer_prompt, index, solution, steps, seed,
                                         per_sample))
        if not jobs:
            out.add("filtered", self._filtered_row(problem, stage="policy",
                                                   reason="no_usable_solution",
                                                   counts=(0, 0, 0), cost=policy_cost.as_dict()))
            out.count("filtered_no_usable_solution")
            return
        for output, row, counters in await asyncio.gather(*jobs):
            out.add(output, row)
            out.count(f"trajectories_{output}")
            for name, value in counters.items():
                out.count(name, value)

    def _row(self, problem, index, solution, steps, policy_seed, policy_cost) -> dict:
        """A trajectory row with every annotator field empty (None)."""
        return {
            "problem_id": problem.problem_id,
            "source": problem.source,
            "solution_index": index,
            "question": problem.question,
            "gold_answer": problem.gold_answer,
            "solution": solution,
            "steps": steps,
            "final_answer": None,
            "final_answer_correct": None,
            "outcome_reason": None,
            "policy_truncated": False,
            "mc_n_correct": None,
            "mc_n_total": None,
            "mc_n_unknown": None,
            "mc_n_truncated": None,
            "mc_values": None,
            "hard_labels": None,
            "soft_labels": None,
            "mc_first_error": None,
            "omegaprm_first_error": None,
            "judge_first_error": None,
            "judge_agreement": None,
            "judge_votes": None,
            "judge_replies": None,
            "judge_parse_reasons": None,
            "judge_reason": None,
            "judge_finish_reasons": None,
            "consensus_keep": None,
            "consensus_reason": None,
            "labels": None,
            "label_source": None,
            "cost_policy": policy_cost,
            "cost_mc": empty_cost(),
            "cost_judge": empty_cost(),
            "provenance": {**self.provenance, "policy_seed": policy_seed},
        }

    async def _truncated_trajectory(self, problem, index, solution, steps, policy_seed,
                                    policy_cost) -> tuple[str, dict, dict]:
        """A policy sample cut off at ``max_tokens``: rejected unlabelled, no rollout spent."""
        row = self._row(problem, index, solution, steps, policy_seed, policy_cost)
        row.update(policy_truncated=True, outcome_reason=REASON_POLICY_TRUNCATED,
                   consensus_keep=False, consensus_reason=REASON_POLICY_TRUNCATED)
        return "rejected", row, {f"rejected_{REASON_POLICY_TRUNCATED}": 1}

    async def _trajectory(self, problem, prompt, index, solution, steps, policy_seed,
                          policy_cost) -> tuple[str, dict, dict]:
        m = self.manifest
        outcome = await asyncio.to_thread(grade, solution, problem.gold_answer)
        judge_task = (self.judge.judge(problem_id=problem.problem_id, solution_index=index,
                                       question=problem.question, steps=steps)
                      if self.judge else None)
        guide = {}
        if self.mc and self.mc_config.consensus_guided:
            # The judge first: its verdict says which rollouts consensus can still use.
            verdict = await judge_task
            judge_task = _value(verdict)
            guide["judge_first_error"] = verdict.first_error_index
        mc_task = (self.mc.annotate(problem_id=problem.problem_id, solution_index=index,
                                    prompt=prompt, steps=steps, splitter=self.splitter,
                                    gold_answer=problem.gold_answer,
                                    final_verdict=outcome.verdict, **guide) if self.mc else None)
        mc, verdict = await asyncio.gather(
            mc_task if mc_task else _none(), judge_task if judge_task else _none())
        counters: dict[str, int] = {}
        row = self._row(problem, index, solution, steps, policy_seed, policy_cost)
        row.update({
            "final_answer": outcome.predicted,
            "final_answer_correct": None if outcome.verdict == "unknown"
            else outcome.verdict == "correct",
            "outcome_reason": outcome.reason,
        })
        if mc is not None:
            row.update({
                "mc_n_correct": mc.n_correct,
                "mc_n_total": mc.n_total,
                "mc_n_unknown": mc.n_unknown,
                "mc_n_truncated": mc.n_truncated,
                "mc_values": mc.values,
                "hard_labels": mc.hard_labels,
                "soft_labels": mc.soft_labels,
                "mc_first_error": mc.first_error_index,
                "cost_mc": mc.cost,
            })
            counters["mc_rollouts"] = mc.rollouts
            counters["mc_rollouts_truncated"] = sum(mc.n_truncated)
            counters["mc_rollouts_unknown"] = sum(mc.n_unknown[:-1])
            counters["mc_rollouts_saved_decided"] = mc.rollouts_saved_decided
            counters["mc_rollouts_saved_first_error"] = mc.rollouts_saved_first_error
            counters["mc_rollouts_saved_consensus"] = mc.rollouts_saved_consensus
            counters["mc_steps_not_estimated"] = sum(
                1 for c in zip(mc.n_total, mc.n_unknown) if c == (0, 0))
            counters["mc_steps_unestimated"] = sum(1 for v in mc.values if v is None)
        if verdict is not None:
            row.update({
                "judge_first_error": verdict.first_error_index,
                "judge_agreement": verdict.agreement,
                "judge_votes": verdict.votes,
                "judge_replies": verdict.raw_replies,
                "judge_parse_reasons": verdict.parse_reasons,
        "judge_reason": verdict.reason,
            "judge_reason": verdict.reason,
                "judge_finish_reasons": list(verdict.finish_reasons),
                "cost_judge": verdict.cost,
            })
            counters["judge_replies"] = len(verdict.raw_replies)
            counters[f"judge_verdict_{verdict.reason}"] = 1
            counters["judge_replies_truncated"] = list(verdict.finish_reasons).count(
                FINISH_LENGTH)
        output = "trajectories"
        if m.consensus is not None:
            decision = consensus(mc.first_error_index, verdict.first_error_index,
                                 mc_stopped=mc.stopped)
            row["consensus_keep"] = decision.keep
            row["consensus_reason"] = decision.reason
            row["label_source"] = "consensus"
            if decision.keep:
                row["labels"] = consensus_labels(decision.first_error, len(steps))
            else:
                output = "rejected"
        elif mc is not None:
            row["labels"] = mc.hard_labels
            row["label_source"] = "monte_carlo"
        elif verdict is not None and verdict.first_error_index is not None:
            row["labels"] = consensus_labels(verdict.first_error_index, len(steps))
            row["label_source"] = "judge"
        return output, row, counters

    async def _omegaprm(self, problem: Problem, prompt, out: ProblemOutputs) -> None:
        result = await self.omegaprm.annotate(problem_id=problem.problem_id, prompt=prompt,
                                              question=problem.question,
                                              gold_answer=problem.gold_answer)
        out.count("omegaprm_rollouts", result.rollouts)
        # Token counts are not on OmegaPRM's rows (states share rollouts): counted here.
        for name in ("prompt_tokens", "generated_tokens", "cached_tokens"):
            out.count(f"omegaprm_{name}", result.cost.get(name, 0))
        out.count("omegaprm_rollouts_truncated", result.truncated_rollouts)
        out.count("omegaprm_prefilter_rollouts_truncated", result.prefilter_n_truncated)
        if result.filtered:
            out.add("filtered", self._filtered_row(
                problem, stage="omegaprm_prefilter", reason=result.filter_reason,
                counts=(result.prefilter_n_correct, result.prefilter_n_total,
                        result.prefilter_n_unknown, result.prefilter_n_truncated),
                cost=result.cost))
            out.count(f"filtered_{result.filter_reason}")
            return
        tree_id = problem.problem_id
        node = {s.state_id: s for s in result.states}

        def node_id(state_id: int) -> str | None:
            return None if state_id < 0 else f"{tree_id}/{state_id}"

        completer_model = self.provenance["completer_model"]
        # Tree states, then the estimated prefixes past an MC = 0 prefix (off the tree, kept so
        # that every rollout is accounted for).
        for state, after_error in [*((s, False) for s in result.states),
                                   *((s, True) for s in result.states_after_error)]:
            out.add("omegaprm_states", {
                "record_type": state.kind,
                "problem_id": problem.problem_id,
                "question": problem.question,
                "gold_answer": problem.gold_answer,
                "tree_id": tree_id,
                "node_id": node_id(state.state_id),
                "parent_id": node_id(state.parent_id),
                "after_error": after_error,
                "depth": state.depth,
                "prefix": state.prefix,
                "action": state.action,
                "action_pieces": state.action_pieces,
                "single_step": state.single_step,
                "mc_value": state.value,
                "hard_label": state.hard_label,
                "n_correct": state.n_correct,
                "n_total": state.n_total,
                "n_unknown": state.n_unknown,
                "n_truncated": state.n_truncated,
                "rollout_of": node_id(state.rollout_of),
                "manifest_hash": self.manifest_hash,
                "completer_model": completer_model,
            })
        for pair in result.pairs:
            out.add("omegaprm_pairs", {
                "problem_id": problem.problem_id,
                "tree_id": tree_id,
                "parent_id": node_id(pair.parent_id),
                "prefix": node[pair.parent_id].prefix,
                "node_a": node_id(pair.first_id),
                "node_b": node_id(pair.second_id),
                "action_a": node[pair.first_id].action,
                "action_b": node[pair.second_id].action,
                "mc_a": pair.first_value,
                "mc_b": pair.second_value,
                "preference_a": pair.preference,
                "single_step": pair.single_step,
                "manifest_hash": self.manifest_hash,
            })
        for search in result.searches:
            out.add("omegaprm_searches", {
                "problem_id": problem.problem_id,
                "tree_id": tree_id,
                "search_index": search.search_index,
                "start_node": node_id(search.state_id),
                "rollout_id": f"{node_id(search.state_id)}#{search.rollout_index}",
                "pieces": search.steps,
                "start_index": search.start_index,
                "first_error": search.first_error_index,
                "reason": search.reason,
                "rollouts_used": search.rollouts,
                "rollouts_truncated": search.rollouts_truncated,
                "manifest_hash": self.manifest_hash,
            })
            if search.reason != "located":
                out.count(f"omegaprm_searches_{search.reason}")
        out.count("omegaprm_states", len(result.states))
        out.count("omegaprm_states_after_error", len(result.states_after_error))
        out.count("omegaprm_pairs", len(result.pairs))

    def _filtered_row(self, problem, *, stage, reason, counts, cost) -> dict:
        return {
            "problem_id": problem.problem_id,
            "source": problem.source,
            "question": problem.question,
            "gold_answer": problem.gold_answer,
            "stage": stage,
            "reason": reason,
            "n_correct": counts[0],
            "n_total": counts[1],
            "n_unknown": counts[2],
            "n_truncated": counts[3] if len(counts) > 3 else 0,
            "cost": cost,
            "manifest_hash": self.manifest_hash,
        }


async def _none() -> None:
    return None


async def _value(value):
    return value
