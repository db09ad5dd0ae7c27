"""The adaptive budget's chosen rows on seeds they were not chosen on (issue #26; not a test).

``adaptive_budget.py`` runs a grid of budgets on seeds 0 and 1, and its summary names the best
row per setting: a choice made on those seeds. This script reruns only those chosen rows, with
the same planted spreads, priors (the fitted one on each seed's own pilot) and simulator, on
other seeds, so that the distance to the targets is not read off the seeds that picked it.

Usage: python benchmarks/adaptive_budget_heldout.py [--seeds 2 3 4] [--problems 250]
Writes benchmarks/results/adaptive_budget_heldout.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adaptive_budget as ab  # noqa: E402
from steplabel.schemas.annotators import BetaPrior, MonteCarloConfig, RolloutBudget  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: (spread, tau, floor) -> the rows chosen on seeds 0 and 1: (prior, min, max, confidence,
#: futility).
CHOSEN = {
    ("tau25", 0.25, 0.0): [("uniform", 2, 32, 0.85, None), ("uniform", 4, 24, 0.85, 0.1)],
    ("tau0", 0.0, 0.2): [("uniform", 2, 32, 0.85, None), ("fitted", 4, 24, 0.9, None),
                         ("fitted", 4, 24, 0.9, 0.1)],
    ("uniform", 0.25, 0.0): [("uniform", 2, 24, 0.85, None), ("uniform", 2, 24, 0.85, 0.1)],
    ("uniform", 0.0, 0.2): [("uniform", 4, 24, 0.8, None), ("uniform", 4, 24, 0.8, 0.1)],
}
TARGET_UNDECIDED = 0.10
TARGET_ROLLOUTS = 8


async def run(seed: int, problems_n: int, pilot_n: int) -> list[dict]:
    problems = [ab.PlantedProblem.make(f"ab-{i}", num_steps=ab.NUM_STEPS, rng_seed=seed)
                for i in range(problems_n)]
    pilot = [ab.PlantedProblem.make(f"pilot-{i}", num_steps=ab.NUM_STEPS, rng_seed=seed)
             for i in range(pilot_n)]
    rows = []
    for (spread, tau, floor), chosen in CHOSEN.items():
        fitted = (await ab.fitted_prior(spread, pilot, seed))["prior"]
        threshold = max(tau, floor)
        rates = [[ab.planted_rate(spread, p.question, t + 1, seed)
                  for t in range(ab.NUM_STEPS - 1)] for p in problems]
        truths = [r > tau and r >= floor for rs in rates for r in rs]
        fixed = MonteCarloConfig(rollouts=8, stopping="fixed", first_error_only=False,
                                 hard_threshold=tau, min_success=floor)
        results = await ab.label_all(problems, fixed, spread, seed)
        k8 = ab.metrics([lab for r in results for lab in r.hard_labels[:-1]], truths,
                        [8] * len(truths))["error_emitted"]
        for prior_name, low, high, confidence, futility in chosen:
            prior = fitted if prior_name == "fitted" else BetaPrior()
            budget = RolloutBudget(low, high, confidence, futility=futility)
            sim = [x for r, rs in zip(results, rates)
                   for x in ab.simulate(r, rs, budget=budget, threshold=threshold,
                                        prior=prior, rule="posterior")]
            m = ab.metrics([x[0] for x in sim], truths, [x[1] for x in sim])
            distance = max(m["error_emitted"] / (k8 / 2), m["undecided"] / TARGET_UNDECIDED,
                           m["rollouts_per_step"] / TARGET_ROLLOUTS)
            rows.append({"seed": seed, "spread": spread, "tau": tau, "floor": floor,
                         "k8_error": k8, "prior": prior_name,
                         "fitted_prior": [fitted.a, fitted.b],
                         "budget": f"{low}..{high} @ {confidence}", "futility": futility,
                         "error": m["error_emitted"], "undecided": m["undecided"],
                         "rollouts_per_step": m["rollouts_per_step"], "distance": distance})
    return rows


def render(out: dict) -> str:
    lines = [f"# Adaptive budget: the chosen rows on held-out seeds {out['seeds']}",
             "",
             f"{out['problems']} problems x 6 steps per seed; the fitted prior is fitted on "
             f"each seed's own {out['pilot']}-problem pilot. Distance = max(error / (k=8 error "
             "/ 2), undecided / 10%, rollouts per step / 8): 1 or less meets every target. "
             f"Run time {out['seconds']:.0f} s, load {out['load'][0]:.2f} (counts, not "
             "timings).", "",
             "| spread | tau | floor | row | " + " | ".join(f"seed {s}" for s in out["seeds"])
             + " |", "|---|---:|---:|---|" + "---|" * len(out["seeds"])]
    keyed: dict[tuple, dict[int, dict]] = {}
    for r in out["rows"]:
        key = (r["spread"], r["tau"], r["floor"], r["prior"], r["budget"], r["futility"])
        keyed.setdefault(key, {})[r["seed"]] = r
    for (spread, tau, floor, prior, budget, futility), by_seed in keyed.items():
        name = f"{prior} {budget}" + (f", futility {futility}" if futility else "")
        cells = [f"{r['error']:.3f} / {r['k8_error']:.3f}, {r['undecided']:.1%}, "
                 f"{r['rollouts_per_step']:.2f}; **{r['distance']:.2f}**"
                 for r in (by_seed[s] for s in out["seeds"])]
        lines.append(f"| {spread} | {tau} | {floor} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: error / k=8's error, undecided share, rollouts per step; distance."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--problems", type=int, default=250)
    parser.add_argument("--pilot", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [row for seed in args.seeds
            for row in asyncio.run(run(seed, args.problems, args.pilot))]
    out = {"seeds": args.seeds, "problems": args.problems, "pilot": args.pilot, "rows": rows,
           "seconds": time.perf_counter() - started, "load": os.getloadavg()}
    (RESULTS / "adaptive_budget_heldout.json").write_text(json.dumps(out, indent=1) + "\n")
    text = render(out)
    (RESULTS / "adaptive_budget_heldout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
