"""Label truth under the faults of real models, through the full job (issue 12).

Each job runs the real Beam pipeline on a scripted engine (:mod:`faulty`) that cuts samples off
at ``max_tokens``, re-answers after complete solutions, ends solutions without an answer and has
noisy per-prefix success rates. What the job writes must stay true to the methods: a cut-off
rollout is unknown (never a 0), the last step is labelled by the solution's own answer with no
rollout from it, and a cut-off policy sample is rejected unlabelled.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fakes import ScriptedEngine
from planted import ASSISTANT_MARKER, PlantedPolicy, PlantedProblem

from steplabel.annotators.stages import StageContext
from steplabel.schemas.graders import MathGold
from steplabel.schemas.stages import Problem
from steplabel.dataset import storage
from steplabel.pipelines.job import run_job
from steplabel.pipelines.stages import MonteCarloFn, SampleSolutionsFn
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

K = 4


def write_planted(path: Path, count: int, *, num_steps: int = 4) -> list[PlantedProblem]:
    problems = [PlantedProblem.make(f"q{i}", num_steps=num_steps) for i in range(count)]
    with open(path, "w") as handle:
        for p in problems:
            handle.write(json.dumps({"id": p.problem_id, "question": p.question,
                                     "answer": p.gold}) + "\n")
    return problems


def manifest(path: Path, factory: str, **overrides):
    engine = {"kind": "custom", "factory": f"faulty:{factory}"}
    data = {
        "name": f"faulty-{factory}",
        "seed": 5,
        "source": {"kind": "jsonl", "path": str(path)},
        "models": {"policy": engine},
        "policy": {"samples": 4, "sampling": {"max_tokens": 200}},
        "monte_carlo": {"rollouts": K, "sampling": {"max_tokens": 120}},
        "omegaprm": {"rollouts": K, "prefilter_rollouts": 8, "search_limit": 2,
                     "sampling": {"max_tokens": 120}},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 2},
    }
    data.update(overrides)
    return manifest_from_dict(data)


def rows(out: str, output: str) -> list[dict]:
    return list(storage.iter_rows(out, output))


def check_counts(row: dict, k: int = K) -> None:
    """The per-step counts of one trajectory row obey the unknown rule.

    A step is estimated with up to k rollouts (fewer when its label was decided early), or not
    estimated at all (counts 0, value and label null) when it lies after a step that already
    decided the first error (first-error-only Monte Carlo), or where consensus-guided Monte Carlo
    stopped because the judge's verdict could no longer be matched."""
    steps = len(row["steps"])
    spent = 0
    cut_here = None  # the step after which nothing is estimated
    for t in range(steps):
        correct, total = row["mc_n_correct"][t], row["mc_n_total"][t]
        unknown, cut = row["mc_n_unknown"][t], row["mc_n_truncated"][t]
        value = row["mc_values"][t]
        if total + unknown == 0:
            cut_here = t if cut_here is None else cut_here
            assert value is None and row["hard_labels"][t] is None
            continue
        assert cut_here is None  # no estimate after a step that was not estimated
        assert 1 <= total + unknown <= (1 if t == steps - 1 else k)
        assert cut <= unknown  # a cut-off rollout is unknown, never in the denominator
        assert value == (correct / total if total else None)
        assert (row["hard_labels"][t] is None) == (value is None)
        spent += total + unknown if t < steps - 1 else 0
    guided_stop = row.get("consensus_reason") in ("judge_unknown", "cannot_agree")
    if cut_here is not None and not guided_stop:  # after a step labelled negative or unknown
        assert cut_here > 0 and row["hard_labels"][cut_here - 1] is not True
    # Cost also holds a wave spent on the step after the first error before it was decided.
    assert spent <= row["cost_mc"]["rollouts"] <= k * (steps - 1)


def test_all_rollouts_cut_off_labels_nothing_wrong(tmp_path):
    source = tmp_path / "p.jsonl"
    write_planted(source, 4)
    out = str(tmp_path / "out")
    result = run_job(manifest(source, "all_rollouts_cut_off"), out_dir=out)
    trajectories = rows(out, "trajectories") + rows(out, "rejected")
    assert trajectories and not rows(out, "trajectories")
    for row in trajectories:
        check_counts(row)
        assert row["mc_n_truncated"][0] == K  # then nothing after an unknown first step
        assert False not in row["hard_labels"] and 0.0 not in row["mc_values"]
        assert row["mc_first_error"] is None
        assert row["consensus_reason"] == "mc_unknown"
    for row in rows(out, "omegaprm_states"):
        assert row["hard_label"] is not False and row["mc_value"] != 0.0
    for row in rows(out, "filtered"):
        assert row["reason"] != "all_wrong"
    truncation = result.stats["overall"]["truncation"]
    assert truncation["monte_carlo"]["share"] == 1.0
    assert truncation["policy"]["truncated"] == 0
    assert any("monte_carlo.sampling.max_tokens (now 120)" in w
               for w in result.stats["warnings"])


def test_reanswering_continuations_keep_a_correct_solution_positive(tmp_path):
    source = tmp_path / "p.jsonl"
    problems = write_planted(source, 3)
    out = str(tmp_path / "out")
    result = run_job(manifest(source, "reanswering_continuations", omegaprm=None), out_dir=out)
    kept = rows(out, "trajectories")
    assert len(kept) == 3 * 4 and not rows(out, "rejected")
    for row in kept:
        check_counts(row)
        assert row["labels"] == [True] * len(row["steps"])
        assert row["hard_labels"] == [True] * len(row["steps"])
        assert row["mc_first_error"] == row["judge_first_error"] == -1
    # No rollout from a complete solution, and each step stops at its first correct rollout.
    per_solution = problems[0].num_steps - 1
    assert result.stats["overall"]["cost"]["mc"]["rollouts"] == len(kept) * per_solution
    assert result.stats["counters"]["mc_rollouts"] == len(kept) * per_solution
    assert result.stats["counters"]["mc_rollouts_saved_decided"] == len(kept) * per_solution * (
        K - 1)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    base = tmp_path_factory.mktemp("realistic")
    source = base / "p.jsonl"
    write_planted(source, 8, num_steps=5)
    out = str(base / "out")
    return out, run_job(manifest(source, "realistic"), out_dir=out)


def test_realistic_faults_keep_unknowns_explicit(realistic):
    out, result = realistic
    trajectories = rows(out, "trajectories") + rows(out, "rejected")
    truncated = [r for r in trajectories if r["policy_truncated"]]
    labelled = [r for r in trajectories if not r["policy_truncated"]]
    assert truncated and labelled
    for row in truncated:
        assert row["consensus_reason"] == "policy_truncated" and row["consensus_keep"] is False
        assert row["labels"] is None and row["mc_values"] is None
        assert row["cost_mc"]["rollouts"] == 0 and row["cost_judge"]["rollouts"] == 0
    for row in labelled:
        check_counts(row)
        for t, cut in enumerate(row["mc_n_truncated"]):
            if cut == K:  # every rollout cut off: not estimated, never a 0
                assert row["mc_values"][t] is None and row["hard_labels"][t] is None
    assert any(sum(r["mc_n_truncated"]) for r in labelled)
    stats = result.stats["overall"]
    assert stats["truncation"]["policy"]["truncated"] == len(truncated)
    assert stats["truncation"]["monte_carlo"]["truncated"] == sum(
        sum(r["mc_n_truncated"]) for r in labelled)
    assert stats["consensus"]["reject_reasons"]["policy_truncated"] == len(truncated)
    assert stats["consensus"]["evaluated"] == len(labelled)
    assert result.stats["counters"]["rejected_policy_truncated"] == len(truncated)
    assert result.stats["reconciliation"]["ok"]


def test_kept_labels_end_at_the_agreed_first_error(realistic):
    out, _ = realistic
    for row in rows(out, "trajectories"):
        first = row["mc_first_error"]
        assert first == row["judge_first_error"]
        assert row["labels"] == ([True] * len(row["steps"]) if first == -1
                                 else [True] * first + [False])


class TemplatedEngine(ScriptedEngine):
    """A scripted engine with a chat template of its own (another model's)."""

    def __init__(self, respond, *, marker: str, **kwargs) -> None:
        super().__init__(respond, **kwargs)
        self.marker = marker

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> str:
        return self.marker + super().apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt)


def test_monte_carlo_prompts_use_the_completer_template():
    """Defect 3 of issue 12: MC prompts were rendered with the policy's chat template."""
    problem = PlantedProblem.make("tmpl", num_steps=4)
    policy = TemplatedEngine(PlantedPolicy(), marker="<policy-template>", model_id="policy")
    completer = TemplatedEngine(PlantedPolicy(), marker="<completer-template>",
                                model_id="completer")
    m = manifest_from_dict({
        "name": "templates", "source": {"kind": "jsonl", "path": "unused.jsonl"},
        "models": {"policy": {"kind": "custom", "factory": "faulty:realistic"},
                   "completer": {"kind": "custom", "factory": "faulty:realistic",
                                 "model": "other"}},
        "policy": {"samples": 2}, "monte_carlo": {"rollouts": K},
    })
    # The job's sampling and Monte Carlo stages, each bound to its own engine.
    sample = SampleSolutionsFn(m, out_dir="unused", pool=None, max_in_flight=1)
    mc = MonteCarloFn(m, out_dir="unused", pool=None, max_in_flight=1)
    sample.ctx = mc.ctx = StageContext(m)
    sampled = asyncio.run(sample.work(policy, Problem("tmpl", problem.question,
                                                      MathGold(problem.gold), "s")))
    solutions = [s for s in sampled.solutions if not s.truncated]
    assert solutions

    async def label_all():
        bound = mc.bind(completer)
        return [await mc.work(bound, (solution, None)) for solution in solutions]

    labels = asyncio.run(label_all())
    assert all(label.failure is None and label.fields["mc_values"] for label in labels)
    assert completer.requests and all(
        r.prompt.startswith("<completer-template>") for r in completer.requests)
    assert all(r.prompt.startswith("<policy-template>") for r in policy.requests)
    assert all(ASSISTANT_MARKER in r.prompt for r in completer.requests)
