"""Scale: problems through the full Beam pipeline with an engine that answers instantly.

    .venv/bin/python benchmarks/scale.py [--sizes 100 1000 10000]

Each size runs in a fresh process (``steplabel run``, local FnApiRunner, Monte Carlo k=4 +
judge + consensus, 2 samples per problem); we record wall time per problem and the peak
resident memory of that process. Target: both flat within 20% from the smallest to the largest
size. Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run_size(size: int, work: Path) -> dict:
    source = work / f"problems-{size}.jsonl"
    with open(source, "w") as handle:
        for i in range(size):
            handle.write(json.dumps({"id": f"p{i:06d}", "question": f"What is {i % 97} + "
                                     f"{i % 13}?", "answer": str(i % 97 + i % 13)}) + "\n")
    manifest = {
        "name": f"scale-{size}",
        "seed": 1,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": "instant_engine:make"}},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 4},
        "judge": {},
        "consensus": {},
        "runner": {"max_in_flight": 64, "num_shards": 4},
    }
    path = work / f"scale-{size}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "steplabel", "run", str(path), "--out",
                             str(work / f"out-{size}")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"size {size} failed:\n{output[-3000:]}")
    info = json.loads((work / f"out-{size}" / "info.json").read_text())
    # The last progress line: seconds from the labelling stage's start to its last problem.
    labelling = float(re.findall(r"problems \d+/\d+ .*?, ([0-9.]+)s elapsed", output)[-1])
    return {
        "problems": size,
        "seconds": round(seconds, 2),
        "labelling_seconds": labelling,
        "ms_per_problem": round(1000 * seconds / size, 2),
        "labelling_ms_per_problem": round(1000 * labelling / size, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "rows": info["rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="steplabel-scale-") as tmp:
        runs = [run_size(size, Path(tmp)) for size in args.sizes]
    first, last = runs[0], runs[-1]
    # Wall time per problem includes process start-up (imports, Beam set-up, ~5 s), which a
    # small job cannot amortise; the flatness target uses the labelling stage's time per
    # problem, and the marginal wall time per problem between sizes is reported too.
    marginal = [round(1000 * (b["seconds"] - a["seconds"]) / (b["problems"] - a["problems"]), 2)
                for a, b in zip(runs, runs[1:])]
    report = {
        "runs": runs,
        "marginal_ms_per_problem": marginal,
        "time_per_problem_ratio_last_first": round(
            last["labelling_ms_per_problem"] / max(1e-9, first["labelling_ms_per_problem"]), 3),
        "peak_rss_ratio_last_first": round(last["peak_rss_mib"] / first["peak_rss_mib"], 3),
    }
    report["targets"] = {
        "memory_flat_within_20pct": report["peak_rss_ratio_last_first"] <= 1.2,
        "time_per_problem_flat_within_20pct": 0.8 <= report["time_per_problem_ratio_last_first"] <= 1.2,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
