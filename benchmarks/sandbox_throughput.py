"""Test runs per second: the sandbox pool against a bare ``python -c`` loop.

One run = a small HumanEval-style program and its asserts. Compared:

- ``bare_python_c``: ``subprocess.run([python, "-I", "-S", "-c", program + tests])``, one
  after another: an interpreter start per run, and no isolation at all (the floor a naive
  grader pays);
- ``pool_1_sequential``: one sandbox worker, runs one after another (a fork per run, with the
  full isolation: process group, netns, rlimits, uid, temp dir, audit hook);
- ``pool_1_sequential_fork_only``: the same without the uid, namespaces and tmpfs (what the
  isolation costs over a bare fork);
- ``pool_2_threads``: two workers driven by two threads (a stage's grading threads).

Also the pool's fixed cost: a worker's start (interpreter + pre-imports) and its memory.
Load (``/proc/loadavg``) is recorded before and after each figure: this machine is shared.

Usage: python benchmarks/sandbox_throughput.py [--runs 100]
Writes benchmarks/results/sandbox_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from steplabel.annotators.sandbox import SandboxLimits, SandboxPool

RESULTS = Path(__file__).resolve().parent / "results"
PROGRAM = """
from typing import List


def running_max(numbers: List[int]) -> List[int]:
    best, out = None, []
    for n in numbers:
        best = n if best is None else max(best, n)
        out.append(best)
    return out
"""
TESTS = """
assert running_max([]) == []
assert running_max([1, 3, 2, 5]) == [1, 3, 3, 5]
assert running_max(list(range(1000)))[-1] == 999
"""


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def measure(name: str, runs: int, fn) -> dict:
    before = load()
    started = time.perf_counter()
    fn(runs)
    seconds = time.perf_counter() - started
    figure = {"name": name, "runs": runs, "seconds": round(seconds, 3),
              "runs_per_s": round(runs / seconds, 1), "ms_per_run": round(1000 * seconds / runs, 2),
              "load_before": before, "load_after": load()}
    print(json.dumps(figure))
    return figure


def bare(runs: int) -> None:
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-I", "-S", "-c", PROGRAM + TESTS],
                              capture_output=True, env={})
        assert done.returncode == 0, done.stderr


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    limits = SandboxLimits(timeout_s=5, memory_mb=512)
    figures = [measure("bare_python_c", args.runs, bare)]

    started = time.perf_counter()
    pool1 = SandboxPool(size=1)
    isolation = pool1.isolation  # starts the worker
    start_s = time.perf_counter() - started
    worker_rss = rss_kb(pool1._idle[0].proc.pid)

    def sequential(runs: int) -> None:
        for _ in range(runs):
            result = pool1.run(PROGRAM, TESTS, limits)
            assert result.outcome == "passed", result

    figures.append(measure("pool_1_sequential", args.runs, sequential))

    def bare_fork(runs: int) -> None:  # the same pool without uid, namespaces or tmpfs
        weaker = {"no_uid": True, "no_netns": True, "no_private_tmp": True}
        for _ in range(runs):
            assert pool1.run(PROGRAM, TESTS, limits, force=weaker).outcome == "passed"

    figures.append(measure("pool_1_sequential_fork_only", args.runs, bare_fork))
    pool1.close()

    pool2 = SandboxPool(size=2)
    pool2.run(PROGRAM, TESTS, limits)  # start both workers before timing
    with ThreadPoolExecutor(2) as warm:
        list(warm.map(lambda _: pool2.run(PROGRAM, TESTS, limits), range(2)))

    def threaded(runs: int) -> None:
        with ThreadPoolExecutor(2) as executor:
            outcomes = list(executor.map(lambda _: pool2.run(PROGRAM, TESTS, limits).outcome,
                                         range(runs)))
        assert set(outcomes) == {"passed"}, outcomes

    figures.append(measure("pool_2_threads", args.runs, threaded))
    pool2.close()

    out = {"figures": figures, "worker_start_s": round(start_s, 3),
           "worker_rss_mb": round(worker_rss / 1024, 1), "isolation": isolation,
           "python": sys.version.split()[0], "cpus": len(__import__("os").sched_getaffinity(0))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "figures"}))


if __name__ == "__main__":
    main()
