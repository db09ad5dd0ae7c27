"""Annotation cost: Monte Carlo over all steps vs OmegaPRM's binary search (not a test).

On the planted-error policy (tests/planted.py) with a scripted engine, for M in {4, 8, 16, 32}
steps and random planted first-error positions, measure for each localizer:

- first-error accuracy: the predicted first-error index equals the planted one (an unknown
  prediction counts as wrong);
- rollouts per localization (mean and max), against the bound k * (ceil(log2 M) + 1).

Three policies: ``exact`` (a clean prefix always has 0 < MC < 1, so both are exact by
construction), and ``p=0.5`` / ``p=0.2`` (each rollout from a clean prefix succeeds
independently with that chance, so a clean step can look wrong when all k rollouts fail: a
false negative, probability (1 - p)^k per estimate).

A second table compares Monte Carlo's stopping rules on the same planted landscapes with a
vLLM-like fake (:mod:`faulty`: rollout i of a step has seed ``step_seed + i``) and realistic
per-prefix success rates (0.3-0.9 on good prefixes, 0 after the error; also with 20% of rollouts
cut off): ``fixed`` (k per step), ``decided`` (stop when the hard label is decided) and
``decided + first-error-only`` (no rollout after the step that decides the first error) and
``+ consensus-guided`` (the judge's verdict first; no rollout consensus cannot use). A simulated
judge names the planted first error with probability 0.6, another index (or "no error") with
0.3, and gives no verdict with 0.1 (seeded per case, the same for every variant); consensus keeps
a trajectory when Monte Carlo's first error equals the judge's. For each variant: rollouts per
first-error localization (per trajectory), rollouts per kept step label (the labels consensus
keeps: up to and including the first error), first-error accuracy, and whether the kept
trajectories and their labels are identical to fixed k's (they must be, by construction).

Usage: ``python benchmarks/annotation_cost.py [--trials 200] [--k 8] [--seed 0]``. Prints a
Markdown table and writes ``benchmarks/results/annotation_cost.json``. Rollouts are graded by
the real grader (``grading.grade``), which takes most of the run time (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the planted policy and the scripted engine

from faulty import FaultyPolicy  # noqa: E402
from faulty import engine as faulty_engine  # noqa: E402
from planted import PlantedPolicy, PlantedProblem  # noqa: E402

from steplabel.annotators.consensus import consensus, consensus_labels  # noqa: E402
from steplabel.annotators.monte_carlo import MonteCarloAnnotator, MonteCarloConfig  # noqa: E402
from steplabel.annotators.omegaprm import locate_first_error  # noqa: E402
from steplabel.annotators.splitting import get_splitter  # noqa: E402

STEP_COUNTS = (4, 8, 16, 32)
POLICIES = {
    "exact": PlantedPolicy(success_rate=0.5, guarantee_mixed=True),
    "p=0.5": PlantedPolicy(success_rate=0.5, guarantee_mixed=False),
    "p=0.2": PlantedPolicy(success_rate=0.2, guarantee_mixed=False),
}
SPLITTER = get_splitter("step_markers")


async def one_trial(policy: PlantedPolicy, problem: PlantedProblem, error_at: int, *,
                    k: int, run_seed: int) -> dict:
    steps = problem.steps(error_at)
    # A fresh engine per trial: the scripted engine's prefix-cache bookkeeping is quadratic.
    mc_engine, bs_engine = policy.engine(), policy.engine()
    mc = await MonteCarloAnnotator(mc_engine, MonteCarloConfig(rollouts=k, stopping="fixed",
                                                               first_error_only=False),
                                   run_seed=run_seed).annotate(
        problem_id=problem.problem_id, solution_index=0, prompt=problem.prompt(mc_engine),
        steps=steps, splitter=SPLITTER, gold_answer=problem.gold)
    bs = await locate_first_error(
        bs_engine, prompt=problem.prompt(bs_engine), pieces=steps, gold_answer=problem.gold,
        run_seed=run_seed, problem_id=problem.problem_id, splitter=SPLITTER, rollouts=k)
    return {"mc_ok": mc.first_error_index == error_at, "mc_rollouts": mc.rollouts,
            "bs_ok": bs.first_error_index == error_at, "bs_rollouts": bs.rollouts}


async def run(*, trials: int, k: int, seed: int) -> list[dict]:
    rows = []
    for policy_name, policy in POLICIES.items():
        for m in STEP_COUNTS:
            rng = random.Random(f"{seed}/{m}")
            cases = [(PlantedProblem.make(f"bench-{m}-{i}", num_steps=m, rng_seed=seed),
                      rng.randrange(m)) for i in range(trials)]
            results = await asyncio.gather(*(
                one_trial(policy, problem, error_at, k=k, run_seed=seed)
                for problem, error_at in cases))
            mc_rollouts = [r["mc_rollouts"] for r in results]
            bs_rollouts = [r["bs_rollouts"] for r in results]
            rows.append({
                "policy": policy_name,
                "num_steps": m,
                "trials": trials,
                "k": k,
                "mc_accuracy": sum(r["mc_ok"] for r in results) / trials,
                "mc_rollouts_mean": sum(mc_rollouts) / trials,
                "mc_rollouts_max": max(mc_rollouts),
                "bs_accuracy": sum(r["bs_ok"] for r in results) / trials,
                "bs_rollouts_mean": sum(bs_rollouts) / trials,
                "bs_rollouts_max": max(bs_rollouts),
                "bs_bound": k * (math.ceil(math.log2(m)) + 1),
            })
    return rows


STOPPING_POLICIES = {
    "rates 0.3-0.9": FaultyPolicy(success_range=(0.3, 0.9)),
    "rates 0.3-0.9, 20% cut off": FaultyPolicy(success_range=(0.3, 0.9), rollout_cut=0.2),
    "rates 0.05-0.3": FaultyPolicy(success_range=(0.05, 0.3)),
}
STOPPING_VARIANTS = {
    "fixed": MonteCarloConfig(stopping="fixed", first_error_only=False),
    "decided": MonteCarloConfig(stopping="decided", first_error_only=False),
    "decided + first-error-only": MonteCarloConfig(stopping="decided", first_error_only=True,
                                                   consensus_guided=False),
    "+ consensus-guided": MonteCarloConfig(stopping="decided", first_error_only=True,
                                           consensus_guided=True),
}
#: The simulated judge (see the module docstring): right, wrong, no verdict.
JUDGE_RIGHT, JUDGE_WRONG = 0.6, 0.3


def simulated_judge(rng: random.Random, error_at: int, num_steps: int) -> int | None:
    draw = rng.random()
    if draw < JUDGE_RIGHT:
        return error_at
    if draw < JUDGE_RIGHT + JUDGE_WRONG:
        return rng.choice([j for j in range(-1, num_steps) if j != error_at])
    return None


async def stopping_rows(*, trials: int, k: int, seed: int) -> list[dict]:
    rows = []
    for policy_name, policy in STOPPING_POLICIES.items():
        for m in (4, 8, 16):
            rng = random.Random(f"stop/{seed}/{m}")
            cases = [(PlantedProblem.make(f"stop-{m}-{i}", num_steps=m, rng_seed=seed),
                      rng.randrange(-1, m)) for i in range(trials)]
            judges = [simulated_judge(rng, e, m) for _, e in cases]
            by_variant = {}
            for variant, base in STOPPING_VARIANTS.items():
                config = replace(base, rollouts=k)

                async def one(problem, error_at, judge):
                    engine = faulty_engine(policy)
                    guide = {"judge_first_error": judge} if config.consensus_guided else {}
                    return await MonteCarloAnnotator(engine, config, run_seed=seed).annotate(
                        problem_id=problem.problem_id, solution_index=0,
                        prompt=problem.prompt(engine), steps=problem.steps(error_at),
                        splitter=SPLITTER, gold_answer=problem.gold, **guide)

                by_variant[variant] = await asyncio.gather(
                    *(one(p, e, j) for (p, e), j in zip(cases, judges)))
            fixed = by_variant["fixed"]

            def kept_labels(results):
                out = []
                for r, judge in zip(results, judges):
                    decision = consensus(r.first_error_index, judge, mc_stopped=r.stopped)
                    out.append(consensus_labels(decision.first_error, r.num_steps)
                               if decision.keep else None)
                return out

            fixed_kept = kept_labels(fixed)
            for variant, results in by_variant.items():
                guided = STOPPING_VARIANTS[variant].consensus_guided
                rollouts = sum(r.rollouts for r in results)
                kept_now = kept_labels(results)
                kept = sum(len(labels) for labels in kept_now if labels is not None)
                rows.append({
                    "policy": policy_name, "num_steps": m, "trials": trials, "k": k,
                    "variant": variant,
                    "rollouts_per_localization": rollouts / trials,
                    "rollouts_per_kept_step_label": rollouts / kept if kept else None,
                    "kept_trajectories": sum(labels is not None for labels in kept_now),
                    "identical_kept_labels": kept_now == fixed_kept,
                    "first_error_accuracy": sum(r.first_error_index == e for r, (_, e)
                                                in zip(results, cases)) / trials,
                    # Consensus-guided leaves the first error of rejected ones unknown.
                    "identical_first_errors": None if guided else all(
                        a.first_error_index == b.first_error_index
                        for a, b in zip(results, fixed)),
                    "identical_hard_labels_to_first_error": None if guided
                    else all(
                        a.hard_labels[:(a.first_error_index if a.first_error_index is not None
                                        and a.first_error_index >= 0 else a.num_steps) + 1]
                        == b.hard_labels[:(b.first_error_index if b.first_error_index is not None
                                           and b.first_error_index >= 0 else b.num_steps) + 1]
                        for a, b in zip(results, fixed)),
                })
    return rows


def stopping_markdown(rows: list[dict]) -> str:
    lines = ["| policy | M | variant | rollouts / localization | rollouts / kept step label "
             "| vs fixed | kept | same kept labels | first-error acc | same first errors |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|---|"]
    fixed = {(r["policy"], r["num_steps"]): r for r in rows if r["variant"] == "fixed"}
    for r in rows:
        base = fixed[(r["policy"], r["num_steps"])]["rollouts_per_localization"]
        per_label = r["rollouts_per_kept_step_label"]
        lines.append(
            f"| {r['policy']} | {r['num_steps']} | {r['variant']} "
            f"| {r['rollouts_per_localization']:.1f} "
            f"| {'-' if per_label is None else f'{per_label:.2f}'} "
            f"| {base / r['rollouts_per_localization']:.2f}x "
            f"| {r['kept_trajectories']} | {r['identical_kept_labels']} "
            f"| {r['first_error_accuracy']:.3f} "
            f"| {'-' if r['identical_first_errors'] is None else r['identical_first_errors']} |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| policy | M | MC acc | MC rollouts/loc | BS acc | BS rollouts/loc (mean / max) "
        "| bound k(⌈log2 M⌉+1) | MC/BS rollouts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['num_steps']} | {r['mc_accuracy']:.3f} "
            f"| {r['mc_rollouts_mean']:.1f} | {r['bs_accuracy']:.3f} "
            f"| {r['bs_rollouts_mean']:.1f} / {r['bs_rollouts_max']} | {r['bs_bound']} "
            f"| {r['mc_rollouts_mean'] / r['bs_rollouts_mean']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=200,
                        help="planted positions per (policy, M) (default 200)")
    parser.add_argument("--k", type=int, default=8, help="rollouts per estimate (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "annotation_cost.json")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.k < 1:
        parser.error(f"--trials and --k must be >= 1, got {args.trials} and {args.k}")

    started = time.perf_counter()
    rows = asyncio.run(run(trials=args.trials, k=args.k, seed=args.seed))
    stopping = asyncio.run(stopping_rows(trials=args.trials, k=args.k, seed=args.seed))
    elapsed = time.perf_counter() - started
    print(markdown(rows))
    print()
    print(stopping_markdown(stopping))
    print(f"\n{args.trials} planted positions per row, k = {args.k}, seed {args.seed}; "
          f"{elapsed:.1f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps({
        "benchmark": "annotation_cost",
        "policy": "tests/planted.py PlantedPolicy, scripted engine",
        "splitter": SPLITTER.provenance(),
        "trials": args.trials, "k": args.k, "seed": args.seed,
        "python": platform.python_version(),
        "elapsed_s": round(elapsed, 2),
        "rows": rows,
        "stopping_rows": stopping,
    }, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
