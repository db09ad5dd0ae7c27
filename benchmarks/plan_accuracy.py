"""How close ``steplabel plan`` comes to a full run: projected vs measured rollouts and time.

    .venv/bin/python benchmarks/plan_accuracy.py [--manifest jobs/demo.yaml] [--pilot 4]
    .venv/bin/python benchmarks/plan_accuracy.py --compare DIR   # outputs of an earlier run

Runs ``steplabel plan MANIFEST --pilot N --json`` and then the full job (``steplabel run``),
back to back, recording the machine's 1-minute load average before and after each (the machine
may be shared: throughput is what the engine gets of it). Compares per stage the projected
rollouts (with their 95% interval) against the run's own counters, the projected wall time
against the run's job time (``run --json`` ``seconds``: launch to finalize, as the plan models
it), and splits a time miss into its parts: generated tokens (projected vs the run's) and
throughput (the pilot's tokens/s vs the run's, per second of engine-busy time). Writes
benchmarks/results/plan_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent

#: The run's counters that count each stage's rollouts (policy: samples; judge: votes).
RUN_ROLLOUTS = {"policy": "policy_samples", "monte_carlo": "mc_rollouts",
                "omegaprm": "omegaprm_rollouts", "judge": "judge_replies"}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def steplabel(args: list[str], stdout: Path, stderr: Path) -> float:
    """Run the command line; returns its wall seconds (imports included)."""
    started = time.perf_counter()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        subprocess.run([sys.executable, "-m", "steplabel", *args], check=True, stdout=out,
                       stderr=err, cwd=REPO)
    return round(time.perf_counter() - started, 1)


def ratio(projected: float | None, measured: float | None) -> float | None:
    return round(projected / measured, 3) if projected is not None and measured else None


def compare(plan: dict, run: dict) -> dict:
    """Projected vs measured, per stage and in total."""
    stats, counters = run["stats"], run["stats"]["counters"]
    stages = {}
    for stage, figures in plan["stages"].items():
        measured = counters.get(RUN_ROLLOUTS[stage], 0)
        interval = figures["rollouts"]
        stages[stage] = {
            "projected": interval["projected"], "low": interval["low"],
            "high": interval["high"], "measured": measured,
            "ratio": ratio(interval["projected"], measured),
            "inside_interval": (interval["low"] is not None
                                and interval["low"] <= measured <= interval["high"]),
        }
    total_measured = sum(s["measured"] for s in stages.values())
    total = plan["total"]
    overall = stats["overall"]
    generated = sum(overall["cost"][s]["generated_tokens"] for s in ("policy", "mc", "judge")) + (
        counters.get("omegaprm_generated_tokens", 0))
    busy_s = counters.get("engine_busy_ms", 0) / 1000
    start_s = counters.get("engine_start_ms", 0) / 1000
    run_tps = generated / busy_s if busy_s else None
    pilot_tps = plan["throughput"]["generated_tokens_per_s"]
    return {
        "rollouts": {
            "stages": stages,
            "total": {"projected": total["rollouts"]["projected"],
                      "low": total["rollouts"]["low"], "high": total["rollouts"]["high"],
                      "measured": total_measured,
                      "ratio": ratio(total["rollouts"]["projected"], total_measured)},
        },
        "wall_s": {"projected": total["wall_s"]["projected"], "low": total["wall_s"]["low"],
                   "high": total["wall_s"]["high"], "measured": round(run["seconds"], 1),
                   "ratio": ratio(total["wall_s"]["projected"], run["seconds"])},
        "parts": {
            "generated_tokens": {"projected": total["generated_tokens"]["projected"],
                                 "measured": generated,
                                 "ratio": ratio(total["generated_tokens"]["projected"],
                                                generated)},
            "tokens_per_s": {"pilot": pilot_tps, "run": run_tps,
                             "ratio": ratio(pilot_tps, run_tps)},
            "engine_start_s": {"pilot": plan["throughput"]["engine_start_s"], "run": start_s},
            "engine_busy_s": {"projected": total["engine_s"]["projected"], "run": busy_s},
            "samples_in_flight": {
                "pilot": plan["throughput"]["pilot_samples_in_flight"],
                "run": (counters["engine_sample_ms"] / counters["engine_busy_ms"]
                        if counters.get("engine_busy_ms") else None)},
            "overhead_s": {"pilot": plan["throughput"]["overhead_s"],
                           "run": round(run["seconds"] - start_s - busy_s, 1)},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="jobs/demo.yaml")
    parser.add_argument("--pilot", type=int, default=4)
    parser.add_argument("--work", help="keep the pilot and the run here (default: temporary)")
    parser.add_argument("--compare", metavar="DIR",
                        help="only compare plan.json and run.json of an earlier --work DIR")
    args = parser.parse_args()
    if args.compare:
        work = Path(args.compare)
        record = json.loads((work / "record.json").read_text())
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="steplabel-plan-accuracy-"))
        work.mkdir(parents=True, exist_ok=True)
        record = {"manifest": args.manifest, "pilot_rows": args.pilot, "cpus": os.cpu_count(),
                  "load_average": {"pilot_start": load()}}
        record["plan_command_s"] = steplabel(
            ["plan", args.manifest, "--pilot", str(args.pilot), "--pilot-out",
             str(work / "pilot"), "--json"], work / "plan.json", work / "plan.err")
        record["load_average"]["pilot_end"] = record["load_average"]["run_start"] = load()
        record["run_command_s"] = steplabel(
            ["run", args.manifest, "--out", str(work / "full"), "--json"], work / "run.json",
            work / "run.err")
        record["load_average"]["run_end"] = load()
        (work / "record.json").write_text(json.dumps(record, indent=1))
    plan = json.loads((work / "plan.json").read_text())
    run = json.loads((work / "run.json").read_text())
    result = {**record, **compare(plan, run)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_accuracy.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({**result, "work": str(work)}, indent=1))


if __name__ == "__main__":
    main()
