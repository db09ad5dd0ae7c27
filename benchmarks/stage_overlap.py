"""How busy the staged graph keeps one engine, offline.

    .venv/bin/python benchmarks/stage_overlap.py [--problems 48]

The saturation benchmark's job shape (2 policy samples, Monte Carlo k = 4, a 3-vote judge,
consensus, 8 problems in flight) on the scripted arithmetic engine, whose every request takes
50 ms however many run at once (an engine with unbounded batching). Not a substitute for
``saturation.py`` (the real engine), but it runs in seconds on a loaded machine. Reports wall seconds, requests and the
mean number of samples in flight while the engine was busy (``engine_sample_ms /
engine_busy_ms``) of the staged graph (``job.build_pipeline``). Writes
benchmarks/results/stage_overlap.json. (The per-problem graph it was first compared with is
gone; the results file of that comparison is in the repository's history.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=48)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from steplabel.pipelines import job
    from steplabel.schemas.manifest import manifest_from_dict

    report = {"problems": args.problems, "request_s": 0.05, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="steplabel-overlap-") as tmp:
        source = Path(tmp) / "problems.jsonl"
        with open(source, "w") as handle:
            for i in range(args.problems):
                handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + 3?",
                                         "answer": str(i + 3)}) + "\n")
        manifest = manifest_from_dict({
            "name": "overlap", "seed": 7,
            "source": {"kind": "jsonl", "path": str(source)},
            "models": {"policy": {"kind": "custom", "factory": "fakes:slow_arithmetic_engine"}},
            "policy": {"samples": 2},
            "monte_carlo": {"rollouts": 4},
            "judge": {"votes": 3, "sampling": {"temperature": 0.8}},
            "consensus": {},
            "runner": {"max_in_flight": 8, "num_shards": 1},
        })
        started = time.perf_counter()
        result = job.run_job(manifest, out_dir=str(Path(tmp) / "staged"))
        counters = result.stats["counters"]
        report["staged"] = {
            "seconds": round(time.perf_counter() - started, 2),
            "rows": result.info["rows"],
            "mean_samples_in_flight": round(
                counters.get("engine_sample_ms", 0) / max(1, counters.get("engine_busy_ms", 1)),
                1),
            "engine_busy_s": round(counters.get("engine_busy_ms", 0) / 1000, 2),
        }
    report["load_average_after"] = os.getloadavg()
    out = HERE / "results" / "stage_overlap.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
