"""Annotation cost on the embedded model: Monte Carlo per step label and per first-error
localization, and OmegaPRM's binary search per localization.

    .venv/bin/python benchmarks/embedded_cost.py [--problems 8]

Runs a small job (generated arithmetic problems, embedded SmolLM2-135M on vLLM) with Monte Carlo
(k=4) and OmegaPRM (k=4, pre-filter 8, 4 searches per question) and reads the costs from the
dataset. Writes benchmarks/results/embedded_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    args = parser.parse_args()
    from steplabel.demo_data import write_problems
    from steplabel.pipelines import storage

    sampling = {"temperature": 0.8, "top_p": 0.95}
    with tempfile.TemporaryDirectory(prefix="steplabel-cost-") as tmp:
        work = Path(tmp)
        write_problems(str(work / "p.jsonl"), count=args.problems, seed=3)
        manifest = {
            "name": "embedded-cost",
            "seed": 3,
            "source": {"kind": "jsonl", "path": str(work / "p.jsonl")},
            "models": {"policy": {"kind": "vllm", "model": "embedded", "dtype": "float32"}},
            "policy": {"samples": 2, "sampling": {**sampling, "max_tokens": 128}},
            "monte_carlo": {"rollouts": 4, "sampling": {**sampling, "max_tokens": 80}},
            "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 4,
                         "sampling": {**sampling, "max_tokens": 128}},
            "runner": {"num_shards": 1},
        }
        (work / "job.yaml").write_text(yaml.safe_dump(manifest))
        subprocess.run([sys.executable, "-m", "steplabel", "run", str(work / "job.yaml"),
                        "--out", str(work / "out")], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=dict(os.environ))
        out = str(work / "out")
        trajectories = list(storage.iter_rows(out, "trajectories"))
        searches = list(storage.iter_rows(out, "omegaprm_searches"))
        states = list(storage.iter_rows(out, "omegaprm_states"))
        filtered = list(storage.iter_rows(out, "filtered"))

    steps = sum(len(t["steps"]) for t in trajectories)
    mc_rollouts = sum(t["cost_mc"]["rollouts"] for t in trajectories)
    mc_tokens = sum(t["cost_mc"]["generated_tokens"] for t in trajectories)
    localized_mc = [t for t in trajectories if t["mc_first_error"] is not None]
    localized_bs = [s for s in searches if s["first_error"] is not None]
    report = {
        "problems": args.problems,
        "trajectories": len(trajectories),
        "monte_carlo": {
            "step_labels": steps,
            "rollouts_per_step_label": round(mc_rollouts / max(1, steps), 2),
            "generated_tokens_per_step_label": round(mc_tokens / max(1, steps), 1),
            "rollouts_per_localization": round(mc_rollouts / max(1, len(localized_mc)), 2),
            "generated_tokens_per_localization": round(mc_tokens / max(1, len(localized_mc)), 1),
            "mean_steps": round(steps / max(1, len(trajectories)), 2),
        },
        "omegaprm": {
            "questions_searched": len({s["problem_id"] for s in searches}),
            "questions_filtered": len(filtered),
            "searches": len(searches),
            "localized": len(localized_bs),
            "tree_states": len(states),
            "rollouts_per_localization": round(
                sum(s["rollouts_used"] for s in searches) / max(1, len(localized_bs)), 2),
            "mean_pieces_searched": round(
                sum(len(s["pieces"]) for s in searches) / max(1, len(searches)), 2),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embedded_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
