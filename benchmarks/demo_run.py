"""Run the demo (jobs/demo.yaml) and record what it shows: benchmarks/results/demo.json.

``--demo code`` runs and records the code demo (jobs/code_demo.yaml) the same way, into
benchmarks/results/code_demo.json, with its sandbox counts.

The README quotes this run's terminal and figures; tests/test_readme.py checks that the figures
the README quotes are the recorded ones, so the README cannot go stale silently. Rerun after a
change to the demo, the annotators or the terminal output:

    .venv/bin/python benchmarks/demo_run.py            # runs the demo into out/math-demo-record
    .venv/bin/python benchmarks/demo_run.py --from DIR # records an existing demo dataset

Wall time depends on the machine and its load: the load average is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMOS = {"math": ("demo.yaml", "demo.json"), "code": ("code_demo.yaml", "code_demo.json")}


def summarize(dataset: Path) -> dict:
    stats = json.loads((dataset / "stats.json").read_text())
    info = json.loads((dataset / "info.json").read_text())
    overall = stats["overall"]
    consensus = overall["consensus"]
    by_index = overall.get("labels_by_step_index", {})
    positive = sum(v.get("positive", 0) for v in by_index.values())
    negative = sum(v.get("negative", 0) for v in by_index.values())
    counters = stats.get("counters", {})
    per_label = overall.get("cost_per_label", {})
    return {
        "problems": counters.get("rows_in"),
        "trajectories_kept": consensus.get("kept"),
        "trajectories_judged": consensus.get("evaluated"),
        "keep_rate": consensus.get("keep_rate"),
        "reject_reasons": consensus.get("reject_reasons"),
        "kept_step_labels": {"positive": positive, "negative": negative},
        "rollouts_per_kept_label": per_label.get("rollouts"),
        "warnings": stats.get("warnings", []),
        "content_hash": info.get("content_hash"),
        **({"sandbox": stats["sandbox"]} if "sandbox" in stats else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="record an existing demo dataset")
    parser.add_argument("--out", help="where the run writes (default: out/<demo>-record)")
    parser.add_argument("--demo", choices=sorted(DEMOS), default="math")
    args = parser.parse_args(argv)
    manifest, result = DEMOS[args.demo]
    record: dict = {}
    if args.source:
        dataset = Path(args.source).resolve()
    else:
        # Relative to the repository (the run's working directory): the recorded terminal
        # lines name it, and no path of this machine goes into the record.
        dataset = Path(args.out or Path("out") / f"{args.demo}-demo-record")
        load = os.getloadavg()[0]
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "steplabel", "run", str(ROOT / "jobs" / manifest),
             "--out", str(dataset), "--overwrite"],
            cwd=ROOT, capture_output=True, text=True, check=True)
        record["wall_seconds"] = round(time.perf_counter() - started, 1)
        record["load_average_at_start"] = round(load, 2)
        record["terminal"] = [line for line in run.stdout.splitlines() + run.stderr.splitlines()
                              if line.strip()]
    record.update(summarize(ROOT / dataset))
    (ROOT / "benchmarks" / "results" / result).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
