"""Adaptive rollout budget vs fixed k on planted success rates (issue #26; not a test).

**The policy.** Planted running-sum problems (tests/planted.py) with 7 steps; every step prefix
``x_{1:t}`` (t = 1..6; the complete solution is labelled by its own answer and left out) has a
planted success rate ``p`` drawn once from a hash of (question, t), and rollout ``i`` of a
request seeded ``s`` succeeds when ``hash(s + i) < p``: vLLM seeds child ``i`` with ``s + i``,
so rollout ``i`` of a step is the same whether it comes in one request or in rounds. Each
rollout writes the planted continuation (right answer or an error after the prefix) and is
graded by its stated answer; the annotator under test is the real ``MonteCarloAnnotator``.

**The planted rates** (documented, not tuned to a result):

- τ = 0.25: 50% uniform on [0, 1]; 25% near the threshold, uniform on [0.10, 0.40]; 12.5% p = 0
  (a prefix past an error); 12.5% p = 1. 40% of steps lie within ±0.15 of τ.
- τ = 0 (Math-Shepherd "any correct"): 50% uniform on [0, 1]; 25% hard steps, log-uniform on
  [0.005, 0.3]; 25% p = 0 (past an error). The same rates for every floor.
- ``uniform``: the plain spread, every rate uniform on [0, 1] (τ = 0.25, and τ = 0 with
  floors 0.1 and 0.2), for comparison with the threshold-heavy mixtures above.

**Truth.** τ = 0.25: the label is right when it equals ``p > 0.25``. τ = 0 with a floor
``min_success = m``: a planted rate below m counts as zero, so truth is ``p >= m``. Without a
floor, truth ``p > 0`` would call a step with p = 0.005 positive, which no budget in reach can
see (it takes ~140 rollouts to expect one success), and every method would be judged on steps
nobody can label; the floor makes the claim "this step succeeds at a rate of at least m" that
a finite budget can check, and the table says how much each floor costs. The fixed-k baseline
keeps today's rule (τ = 0: any correct of k) and is judged on the same truth.

**Measured**, over the 6 estimated steps of every solution: error rate of the emitted labels
(an undecided step emits none), error rate over all steps counting undecided as wrong (a lost
label is never right), the undecided share, rollouts per step, and the calibration of
``P(p > threshold)`` (reliability: binned by the probability of the label the posterior
favours, the share of steps whose favoured label is right).

Two other rules at τ = 0 are simulated on the same rollouts (rollout i of step t is the same
hash), to choose the rule: ``(pure)``, the posterior alone (positive at P >= c even with no
correct rollout), and ``(any_correct)``, positive at the first correct rollout (Math-Shepherd's
reading) with the posterior only for negatives. The simulator reproduces the annotator's own
rule exactly (checked on every step), so all three are compared on identical rollouts.

**A fitted prior and the futility rule.** Each spread (τ = 0.25, τ = 0, uniform) also gets a
prior fitted the way a user gets one: ``fit_prior`` (what ``steplabel plan`` prints) on the
counts of a separate pilot of ``--pilot`` other problems of the same spread (rates drawn
afresh), labelled with fixed k = 8, never on the planted truth. Its rows are named
``fitted: ...``. Rows ``... futility 0.1`` add the futility rule (``budget.futility``: stop a
step undecided once its chance of being decided by max_rollouts is at most 0.1).

Every budget row is the simulator on the annotator's rollouts (rollout i of step t is the same
hash); for the shown budget (:data:`SHOWN`) under each prior and rule the real
``MonteCarloAnnotator`` runs too and the simulator must reproduce it step by step.

Usage: ``python benchmarks/adaptive_budget.py [--problems 250] [--pilot 50] [--seed 0]``;
writes ``benchmarks/results/adaptive_budget.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the planted problems and the scripted engine

from fakes import ScriptedEngine  # noqa: E402
from planted import PlantedProblem, problem_from_question, split_prompt, unit_hash  # noqa: E402

from steplabel.annotators.grading import Grade  # noqa: E402
from steplabel.annotators.monte_carlo import (  # noqa: E402
    MonteCarloAnnotator,
    MonteCarloConfig,
)
from steplabel.annotators.posterior import (  # noqa: E402
    BetaPrior,
    RolloutBudget,
    fit_prior,
    futile,
    label_from,
    prob_above,
)
from steplabel.annotators.splitting import get_splitter  # noqa: E402

SPLITTER = get_splitter("step_markers")
NUM_STEPS = 7
FIXED_K = (4, 8, 16, 32)
BUDGETS = [RolloutBudget(min_rollouts=mn, max_rollouts=mx, confidence=c)
           for mn, mx, c in [(2, 24, 0.85), (4, 16, 0.8), (4, 16, 0.85), (4, 24, 0.8),
                             (4, 24, 0.85), (4, 24, 0.9), (2, 32, 0.85), (4, 32, 0.85),
                             (4, 32, 0.9), (4, 64, 0.95)]]
#: The futility level of the ``futility`` rows.
FUTILITY = 0.1
#: Rollouts per step of the pilot a prior is fitted on (fixed k, as a fixed-k pilot has).
PILOT_K = 8
#: The budget whose reliability table is printed.
SHOWN = RolloutBudget(min_rollouts=4, max_rollouts=24, confidence=0.85)
FLOORS = (0.05, 0.1, 0.15, 0.2)
#: (tau, floor) labelled on the plain spread (every rate uniform on [0, 1]).
UNIFORM = ((0.25, 0.0), (0.0, 0.1), (0.0, 0.2))
_STATED = re.compile(r"The answer is: (-?\d+)\s*$")


def planted_rate(setting: str, question: str, t: int, seed: int) -> float:
    """The planted success rate of the prefix of ``t`` steps of ``question``."""
    u, v = unit_hash(seed, question, t, "kind"), unit_hash(seed, question, t, "rate")
    if setting == "uniform":
        return v
    if setting == "tau25":
        if u < 0.5:
            return v
        if u < 0.75:
            return 0.10 + 0.30 * v
        return 0.0 if u < 0.875 else 1.0
    if u < 0.5:
        return v
    if u < 0.75:
        return math.exp(math.log(0.005) + (math.log(0.3) - math.log(0.005)) * v)
    return 0.0


def steps_in(response: str) -> int:
    return sum(1 for line in response.split("\n") if line.startswith("Step "))


class RatePolicy:
    """Responder: rollout i of a request seeded s succeeds when hash(s + i) < planted p."""

    def __init__(self, setting: str, seed: int) -> None:
        self.setting, self.seed = setting, seed

    def __call__(self, request, index: int) -> str:
        chat, response = split_prompt(request.prompt)
        problem = problem_from_question(chat)
        child = (request.seed or 0) + index
        rate = planted_rate(self.setting, problem.question, steps_in(response), self.seed)
        outcome = "correct" if succeeds(child, rate) else "incorrect"
        return problem.continuation(response, outcome=outcome, pick=child)


def succeeds(child_seed: int, rate: float) -> bool:
    return unit_hash(child_seed, "outcome") < rate


def stated_answer_grader(text: str, gold: str | None) -> Grade:
    """Exact grading of the planted format (the real grader would only slow the run)."""
    match = _STATED.search(text.strip())
    if gold is None or match is None:
        return Grade("unknown" if gold is None else "incorrect", "no_answer")
    return Grade("correct" if match.group(1) == gold else "incorrect", "compared")


async def label_all(problems, config: MonteCarloConfig, setting: str, seed: int):
    policy = RatePolicy(setting, seed)

    async def one(problem: PlantedProblem):
        engine = ScriptedEngine(policy)  # one per problem: its prefix-cache bookkeeping is O(n^2)
        annotator = MonteCarloAnnotator(engine, config, run_seed=seed,
                                        grader=stated_answer_grader)
        return await annotator.annotate(
            problem_id=problem.problem_id, solution_index=0, prompt=problem.prompt(engine),
            steps=problem.steps(), splitter=SPLITTER, gold_answer=problem.gold)

    return await asyncio.gather(*(one(p) for p in problems))


def simulate(result, rates: list[float], *, budget: RolloutBudget, threshold: float,
             prior: BetaPrior, rule: str) -> list[tuple[bool | None, int]]:
    """(label, rollouts) per estimated step from the same rollouts the annotator saw, under
    ``rule``: ``posterior`` (the annotator's: positive needs P >= c and a correct rollout),
    ``pure`` (P alone) or ``any_correct`` (positive at the first correct rollout)."""
    any_correct = rule == "any_correct"
    out = []
    for t, rate in enumerate(rates):
        n = c = 0
        label = None
        while True:
            size = budget.next_round(n)
            c += sum(succeeds(result.seeds[t] + i, rate) for i in range(n, n + size))
            n += size
            if any_correct and c > 0:
                label = True
                break
            decided = label_from(prob_above(threshold, c, n - c, prior), budget.confidence)
            if decided is True and (any_correct or (rule == "posterior" and c == 0)):
                decided = None  # positives only by a correct rollout
            if decided is not None:
                label = decided
                break
            if n >= budget.max_rollouts:
                break
            if rule == "posterior" and futile(c, n - c, n, budget=budget, threshold=threshold,
                                              prior=prior):
                break  # the futility rule (off unless budget.futility is set)
        out.append((label, n, c))
    return out


def metrics(labels, truths, rollouts, p_above=None) -> dict:
    steps = len(truths)
    emitted = [(lab, tr) for lab, tr in zip(labels, truths) if lab is not None]
    wrong = sum(lab != tr for lab, tr in emitted)
    undecided = steps - len(emitted)
    row = {
        "steps": steps,
        "error_emitted": wrong / max(1, len(emitted)),
        "error_all": (wrong + undecided) / steps,
        "undecided": undecided / steps,
        "rollouts_per_step": sum(rollouts) / steps,
        "max_rollouts_step": max(rollouts),
    }
    if p_above is not None:
        row["reliability"] = reliability(p_above, truths)
    return row


RELIABILITY_BINS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0000001)


def reliability(p_above, truths) -> list[dict]:
    """Binned by the probability of the favoured label (max(P, 1 - P)): share right."""
    bins = [{"low": lo, "high": min(hi, 1.0), "n": 0, "right": 0, "mean_p": 0.0}
            for lo, hi in zip(RELIABILITY_BINS, RELIABILITY_BINS[1:])]
    for p, truth in zip(p_above, truths):
        if p is None:
            continue
        favoured, conf = (True, p) if p >= 0.5 else (False, 1 - p)
        for b in bins:
            if b["low"] <= conf < b["high"] or (b["high"] == 1.0 and conf == 1.0):
                b["n"] += 1
                b["right"] += favoured == truth
                b["mean_p"] += conf
                break
    for b in bins:
        b["mean_p"] = b["mean_p"] / b["n"] if b["n"] else None
        b["accuracy"] = b["right"] / b["n"] if b["n"] else None
    return bins


def budget_name(b: RolloutBudget) -> str:
    return f"adaptive {b.min_rollouts}..{b.max_rollouts} @ {b.confidence}"


async def fitted_prior(setting: str, pilot, seed: int) -> dict:
    """The prior fitted to a fixed-k pilot's counts (other problems of the same spread)."""
    cfg = MonteCarloConfig(rollouts=PILOT_K, stopping="fixed", first_error_only=False)
    results = await label_all(pilot, cfg, setting, seed)
    counts = [(c, n - c) for r in results for c, n in zip(r.n_correct[:-1], r.n_total[:-1])]
    fit = fit_prior(counts)
    return {"prior": fit.prior, "steps": fit.steps, "at_bound": fit.at_bound,
            "log_likelihood": fit.log_likelihood}


#: The budget rows' variants: name prefix -> (which prior, futility level or None).
VARIANTS = {"": ("uniform", None), f"futility {FUTILITY}: ": ("uniform", FUTILITY),
            "fitted: ": ("fitted", None), f"fitted, futility {FUTILITY}: ": ("fitted", FUTILITY)}


async def run_setting(setting: str, tau: float, floor: float, problems, seed: int,
                      priors: dict[str, BetaPrior]) -> dict:
    threshold = max(tau, floor)
    rates = [[planted_rate(setting, p.question, t + 1, seed) for t in range(NUM_STEPS - 1)]
             for p in problems]
    truths = [r > tau and r >= floor for rs in rates for r in rs]
    rows = {}
    for k in FIXED_K:
        cfg = MonteCarloConfig(rollouts=k, stopping="fixed", first_error_only=False,
                               hard_threshold=tau, min_success=floor, prior=priors["uniform"])
        results = await label_all(problems, cfg, setting, seed)
        labels = [lab for r in results for lab in r.hard_labels[:-1]]
        spent = [n for r in results for n in r.rollouts_per_step[:-1]]
        p_above = [p for r in results for p in r.p_above[:-1]]
        rows[f"fixed k={k}"] = metrics(labels, truths, spent, p_above)
        seeded = results  # step seeds do not depend on the settings: rollouts to simulate
        if k == 8:  # the same labels; the reliability of the fitted prior's posterior
            fitted = [prob_above(threshold, c, n - c, priors["fitted"])
                      for r in results for c, n in zip(r.n_correct[:-1], r.n_total[:-1])]
            rows["fitted: fixed k=8"] = metrics(labels, truths, spent, fitted)
    for prefix, (prior_name, futility) in VARIANTS.items():
        prior = priors[prior_name]
        budgets = [RolloutBudget(b.min_rollouts, b.max_rollouts, b.confidence,
                                 futility=futility) for b in BUDGETS]
        for budget in budgets:
            sim = [x for r, rs in zip(seeded, rates)
                   for x in simulate(r, rs, budget=budget, threshold=threshold, prior=prior,
                                     rule="posterior")]
            labels, spent = [x[0] for x in sim], [x[1] for x in sim]
            p_above = [prob_above(threshold, c, n - c, prior) for _, n, c in sim]
            rows[prefix + budget_name(budget)] = metrics(labels, truths, spent, p_above)
            if (budget.min_rollouts, budget.max_rollouts, budget.confidence) == (
                    SHOWN.min_rollouts, SHOWN.max_rollouts, SHOWN.confidence):
                # The real annotator on the shown budget: the simulator must reproduce it.
                cfg = MonteCarloConfig(hard_threshold=tau, min_success=floor, prior=prior,
                                       budget=budget, first_error_only=False)
                real = await label_all(problems, cfg, setting, seed)
                real_labels = [lab for r in real for lab in r.hard_labels[:-1]]
                real_spent = [n for r in real for n in r.rollouts_per_step[:-1]]
                reasons = [x for r in real for x in r.label_reasons[:-1]]
                assert all((x == "undecided") == (lab is None)
                           for x, lab in zip(reasons, real_labels))
                assert real_labels == labels and real_spent == spent, (prefix, budget)
                real_p = [p for r in real for p in r.p_above[:-1]]
                assert all((a is None) == (b is None) and (a is None or abs(a - b) < 1e-12)
                           for a, b in zip(real_p, p_above)), (prefix, budget)
        if tau == 0.0 and prefix == "":
            for rule in ("pure", "any_correct"):
                for budget in budgets:
                    sim = [x for r, rs in zip(seeded, rates)
                           for x in simulate(r, rs, budget=budget, threshold=threshold,
                                             prior=prior, rule=rule)]
                    rows[f"({rule}) " + budget_name(budget)[9:]] = metrics(
                        [x[0] for x in sim], truths, [x[1] for x in sim])
    return {"setting": setting, "tau": tau, "min_success": floor, "threshold": threshold,
            "steps": len(truths), "positive_share": sum(truths) / len(truths), "rows": rows}


def verdict(block: dict, prefix: str = "") -> dict:
    """The issue's targets: at <= fixed k=8's rollouts per step, emitted error <= half of
    k=8's with <= 10% undecided; the best adaptive row of the variant ``prefix`` (see
    :data:`VARIANTS`) that meets them, else the closest."""
    base = block["rows"]["fixed k=8"]
    candidates = {name: r for name, r in block["rows"].items()
                  if name.startswith(prefix + "adaptive")}
    target = base["error_emitted"] / 2
    meets = {n: r for n, r in candidates.items()
             if r["rollouts_per_step"] <= base["rollouts_per_step"]
             and r["error_emitted"] <= target and r["undecided"] <= 0.10}

    def distance(r):  # how far from the targets: 1.0 or less meets both ratios
        return max(r["error_emitted"] / target, r["undecided"] / 0.10,
                   r["rollouts_per_step"] / base["rollouts_per_step"])

    closest = min(candidates, key=lambda n: distance(candidates[n]))
    return {"k8_error": base["error_emitted"], "target_error": target,
            "met_by": sorted(meets), "closest": closest,
            "closest_distance": distance(candidates[closest])}


def fmt_table(block: dict) -> list[str]:
    lines = ["| labelling | error (emitted) | error (undecided = wrong) | undecided | "
             "rollouts/step | max/step |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in block["rows"].items():
        lines.append(f"| {name} | {r['error_emitted']:.3f} | {r['error_all']:.3f} | "
                     f"{r['undecided']:.3f} | {r['rollouts_per_step']:.2f} | "
                     f"{r['max_rollouts_step']} |")
    return lines


def fmt_reliability(rows: list[dict]) -> list[str]:
    lines = ["| P(favoured label) | steps | mean P | share right |", "|---|---:|---:|---:|"]
    for b in rows:
        if b["n"]:
            lines.append(f"| [{b['low']:.2f}, {b['high']:.2f}) | {b['n']} | "
                         f"{b['mean_p']:.3f} | {b['accuracy']:.3f} |")
    return lines


SPREADS = {"tau25": "tau25", "tau0": "tau0", "uniform": "uniform"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=250)
    parser.add_argument("--pilot", type=int, default=50,
                        help="problems of the pilot each spread's prior is fitted on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adaptive_budget"))
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md from the .json without running")
    args = parser.parse_args()
    if args.render_only:
        out = json.loads(Path(args.out + ".json").read_text())
        for b in out["blocks"]:
            b["verdicts"] = {prefix: verdict(b, prefix) for prefix in VARIANTS}
        render(out, args.out)
        return
    problems = [PlantedProblem.make(f"ab-{i}", num_steps=NUM_STEPS, rng_seed=args.seed)
                for i in range(args.problems)]
    pilot = [PlantedProblem.make(f"pilot-{i}", num_steps=NUM_STEPS, rng_seed=args.seed)
             for i in range(args.pilot)]
    start = time.perf_counter()
    fits = {spread: await fitted_prior(spread, pilot, args.seed) for spread in SPREADS}

    def priors(spread: str) -> dict[str, BetaPrior]:
        return {"uniform": BetaPrior(), "fitted": fits[spread]["prior"]}

    blocks = [await run_setting("tau25", 0.25, 0.0, problems, args.seed, priors("tau25"))]
    for floor in FLOORS:
        blocks.append(await run_setting("tau0", 0.0, floor, problems, args.seed,
                                        priors("tau0")))
    for tau, floor in UNIFORM:
        blocks.append(await run_setting("uniform", tau, floor, problems, args.seed,
                                        priors("uniform")))
    for b in blocks:
        b["verdicts"] = {prefix: verdict(b, prefix) for prefix in VARIANTS}
    elapsed = time.perf_counter() - start
    load = os.getloadavg()
    out = {"problems": args.problems, "pilot_problems": args.pilot,
           "steps_per_problem": NUM_STEPS - 1, "seed": args.seed,
           "fitted_priors": {k: {**v, "prior": [v["prior"].a, v["prior"].b]}
                             for k, v in fits.items()},
           "budgets": [budget_name(b) for b in BUDGETS], "futility": FUTILITY,
           "blocks": blocks, "seconds": elapsed, "load": load,
           "python": platform.python_version()}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    render(out, args.out)


def setting_name(b: dict) -> str:
    return (("uniform, " if b["setting"] == "uniform" else "")
            + f"tau {b['tau']}" + (f", floor {b['min_success']}" if b["tau"] == 0 else ""))


def render(out: dict, path: str) -> None:
    blocks, elapsed, load = out["blocks"], out["seconds"], out["load"]
    fits = out["fitted_priors"]
    md = [f"# Adaptive budget on planted success rates ({out['problems']} problems x "
          f"{NUM_STEPS - 1} steps, seed {out['seed']})", "",
          f"Run time {elapsed:.0f} s, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(the figures are counts, not timings: load does not change them).", "",
          "Planted rates, truth and rules: see the docstring of benchmarks/adaptive_budget.py. "
          "Errors are against the planted truth; an undecided step emits no label and counts as "
          "wrong in the 'undecided = wrong' column. Rows in parentheses are other rules, "
          "simulated on the same rollouts: (pure) = the posterior alone, (any_correct) = "
          "positive at the first correct rollout.", "",
          "Priors: rows without a prefix use the uniform prior Beta(1, 1); rows `fitted:` use "
          f"the prior fitted (annotators/posterior.fit_prior, what `steplabel plan` prints) to "
          f"a fixed k = {PILOT_K} pilot of {out['pilot_problems']} other problems of the same "
          "spread: " + "; ".join(
              f"{spread} Beta({f['prior'][0]:g}, {f['prior'][1]:g}) from {f['steps']} steps"
              for spread, f in fits.items()) + ". Rows with `futility "
          f"{out['futility']}` stop a step undecided once its chance of being decided by "
          "max_rollouts is at most that (budget.futility).", "",
          "## Summary", "",
          "Best row per variant: error (emitted), undecided share, rollouts/step; distance = "
          "max(error / target, undecided / 10%, rollouts / k=8's): 1 or less meets every "
          "target.", "",
          "| setting | k=8 error | target | " + " | ".join(
              (prefix.rstrip(": ") or "uniform prior") for prefix in VARIANTS) + " |",
          "|---|---:|---:|" + "---|" * len(VARIANTS)]
    for b in blocks:
        cells = []
        for prefix in VARIANTS:
            v = b["verdicts"][prefix]
            c = b["rows"][v["closest"]]
            cells.append(f"{v['closest'][len(prefix) + 9:]}: {c['error_emitted']:.3f}, "
                         f"{c['undecided']:.3f}, {c['rollouts_per_step']:.2f}; "
                         f"**{v['closest_distance']:.2f}**")
        v = b["verdicts"][""]
        md.append(f"| {setting_name(b)} | {v['k8_error']:.3f} | {v['target_error']:.3f} | "
                  + " | ".join(cells) + " |")
    md.append("")
    name = budget_name(SHOWN)
    for b in blocks:
        title = (("uniform spread, " if b["setting"] == "uniform" else "")
                 + f"tau = {b['tau']}" + (f", min_success = {b['min_success']}"
                                          if b["tau"] == 0 else "")
                 + f" (threshold {b['threshold']}; {b['positive_share']:.2f} of steps positive)")
        md += [f"## {title}", ""] + fmt_table(b) + [""]
        for prefix in VARIANTS:
            v = b["verdicts"][prefix]
            md.append(f"Target ({prefix.rstrip(': ') or 'uniform prior'}): emitted error <= "
                      f"{v['target_error']:.3f} (half of k=8's {v['k8_error']:.3f}), undecided "
                      f"<= 0.10, rollouts/step <= k=8's. Met by: {', '.join(v['met_by']) or 'none'}"
                      f"; closest {v['closest']} ({v['closest_distance']:.2f}).")
        md.append("")
        for label, row in ((f"uniform prior, {name}", name),
                           (f"fitted prior, {name}", "fitted: " + name),
                           ("uniform prior, fixed k=8", "fixed k=8"),
                           ("fitted prior, fixed k=8", "fitted: fixed k=8")):
            md += [f"Reliability of P(p > threshold), {label}:", ""]
            md += fmt_reliability(b["rows"][row]["reliability"]) + [""]
    Path(path + ".md").write_text("\n".join(md))
    print("\n".join(md[:40]))


if __name__ == "__main__":
    asyncio.run(main())
