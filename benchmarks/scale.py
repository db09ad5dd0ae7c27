"""Scale: problems through the full Beam pipeline with an engine that answers instantly.

    .venv/bin/python benchmarks/scale.py [--sizes 100 1000 10000 100000] [--portable 10000]
                                         [--portable-workers 2]

Each run is a fresh ``steplabel run`` process (Monte Carlo k=4 + judge + consensus, 2 samples
per problem, ``benchmarks/instant_engine.py``). Per run: wall time per problem, the labelling
stage's time per problem (from the progress lines, local runner only: on the portable runner
they are printed by the SDK workers), and the launcher's peak resident memory, its own only
(``getrusage(RUSAGE_SELF)`` in the launcher process: on the local runner the launcher also runs
the workers, on the portable runner it only submits and finalizes). Portable runs (Beam's job
service and a worker pool started here, ``--portable-workers`` SDK worker processes) also
report the workers' peak summed resident memory, sampled every 0.5 s.

The local runner labels more than ``runner.wave_size`` problems (default 1,000) in waves
(``pipelines/waves.py``): memory is bounded by a wave. Time per problem is measured beyond the
fixed cost of a run (interpreter start, imports, finalize): ``(wall(n) - wall(smallest)) /
(n - smallest)``, the slope from the smallest run; the wall time per problem is reported too.
Sizes up to 1,000 have only seconds of signal, and this machine's speed drifts over minutes
(the same 1,000-problem job took 7.4 to 17.6 s within an hour, idle): each is run ``--repeats``
times (default 5), three before the large sizes and two after, and the run of median wall
time is kept. CPU seconds (launcher and children) are reported next to wall time.

Targets (issue 13): time per problem and launcher peak memory flat within 20% from 1,000 to
the largest size. Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from steplabel.schemas.manifest import RunnerConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PROFILE = ROOT / "jobs" / "runners" / "portable.yaml"

#: Runs ``steplabel run`` in this process, then writes its own peak RSS (KiB on Linux) to the
#: file named by the first argument.
LAUNCHER = (
    "import json, resource, sys\n"
    "from steplabel.pipelines.cli import main\n"
    "status = main(sys.argv[2:])\n"
    "own = resource.getrusage(resource.RUSAGE_SELF)\n"
    "kids = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "json.dump({'status': status, 'maxrss_kib': own.ru_maxrss, 'cpu_seconds': own.ru_utime"
    " + own.ru_stime + kids.ru_utime + kids.ru_stime}, open(sys.argv[1], 'w'))\n"
    "sys.exit(status)\n"
)


def extra_pythonpath() -> list[str]:
    """This process's ``PYTHONPATH``, kept for the runs (e.g. a snapshot of the code)."""
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def write_job(size: int, work: Path, wave_size: int | None = None) -> Path:
    source = work / f"problems-{size}.jsonl"
    if not source.exists():
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
    if wave_size is not None:
        manifest["runner"]["wave_size"] = wave_size
    path = work / f"scale-{size}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


class WorkerMemory:
    """Peak of the summed RSS of a worker pool's descendants (the SDK worker processes), and
    the job service's peak RSS (it runs the shuffles), sampled every 0.5 s."""

    def __init__(self, pool_pid: int, job_service_pid: int) -> None:
        self.pool = psutil.Process(pool_pid)
        self.job_service = psutil.Process(job_service_pid)
        self.peak = self.job_service_peak = 0
        self.workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for child in self.pool.children(recursive=True):
                try:
                    total += child.memory_info().rss
                    self.workers_seen.add(child.pid)
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self.job_service_peak = max(self.job_service_peak,
                                        self.job_service.memory_info().rss)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"workers_peak_rss_mib": round(self.peak / 2**20, 1),
                "job_service_peak_rss_mib": round(self.job_service_peak / 2**20, 1),
                "worker_processes_seen": len(self.workers_seen)}


def run_size(size: int, work: Path, *, services=None, workers: int = 1,
             wave_size: int | None = None) -> dict:
    manifest = write_job(size, work, wave_size)
    runner = "portable" if services else "local"
    attempt = sum(1 for _ in work.glob(f"out-{runner}-{size}-*"))  # repeated runs: fresh dirs
    out = work / f"out-{runner}-{size}-{attempt}"
    usage = work / f"usage-{runner}-{size}-{attempt}.json"
    args = [sys.executable, "-c", LAUNCHER, str(usage), "run", str(manifest), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *extra_pythonpath()])}
    if services:
        args += ["--runner", "portable", "--runner-profile", str(PROFILE),
                 f"--direct_num_workers={workers}"]
        env.update(services.environment())
        memory = WorkerMemory(services.worker_pool_pid, services.job_service_pid)
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    extra = memory.stop() if services else {}
    if proc.returncode != 0:
        raise SystemExit(f"{runner} size {size} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    info = json.loads((out / "info.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    used = json.loads(usage.read_text())
    launcher_rss = used["maxrss_kib"] / 1024
    row = {
        "runner": runner,
        "workers": workers,
        "problems": size,
        "seconds": round(seconds, 2),
        "ms_per_problem": round(1000 * seconds / size, 3),
        "peak_rss_mib": round(launcher_rss, 1),  # the launcher's own
        "cpu_seconds": round(used["cpu_seconds"], 2),  # the launcher and its children
        "reconciliation_ok": stats["reconciliation"]["ok"],
        "rows": info["rows"],
        **extra,
    }
    progress = re.findall(r"problems \d+/\d+ .*?, ([0-9.]+)s elapsed", proc.stderr)
    if progress:  # the labelling stage's start to its last problem (local runner)
        row["labelling_seconds"] = float(progress[-1])
        row["labelling_ms_per_problem"] = round(1000 * float(progress[-1]) / size, 3)
    print(json.dumps(row), flush=True)
    return row


#: Sizes up to this are run ``--repeats`` times (their few seconds of signal are noisy).
REPEAT_UP_TO = 1000


def run_sizes(sizes: list[int], work: Path, *, repeats: int, **kwargs) -> list[dict]:
    """One run of each size above ``REPEAT_UP_TO``; ``repeats`` runs of each smaller size, half
    before the large runs and half after them (this machine's speed drifts over minutes), of
    which the run of median wall time is kept, with every run's time."""
    small = [size for size in sizes if size <= REPEAT_UP_TO]
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    for size in small:
        runs[size] += [run_size(size, work, **kwargs) for _ in range((repeats + 1) // 2)]
    for size in sizes:
        if size not in small:
            runs[size].append(run_size(size, work, **kwargs))
    for size in small:
        runs[size] += [run_size(size, work, **kwargs) for _ in range(repeats // 2)]
    kept = []
    for size in sizes:
        ordered = sorted(runs[size], key=lambda run: run["seconds"])
        row = dict(ordered[len(ordered) // 2])
        if len(ordered) > 1:
            row["seconds_of_each_run"] = [run["seconds"] for run in runs[size]]
        kept.append(row)
    return kept


def flatness(runs: list[dict], key: str, base_size: int) -> float | None:
    base = [r for r in runs if r["problems"] == base_size]
    if not base or key not in base[0] or runs[-1]["problems"] == base_size:
        return None
    return round(runs[-1][key] / max(1e-9, base[0][key]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    parser.add_argument("--portable", type=int, nargs="*", default=[10000],
                        help="sizes also run on the portable runner")
    parser.add_argument("--portable-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5,
                        help=f"runs of each size up to {REPEAT_UP_TO:,}, around the larger "
                        "sizes (the median is kept)")
    parser.add_argument("--wave-size", type=int,
                        help="runner.wave_size of the local runs (default: the manifest's)")
    parser.add_argument("--results", default=str(RESULTS / "scale.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="steplabel-scale-") as tmp:
        work = Path(tmp)
        local = run_sizes(args.sizes, work, repeats=args.repeats, wave_size=args.wave_size)
        portable = []
        if args.portable:
            from steplabel.pipelines import services

            running = services.start(work / "services",
                                     pythonpath=[str(HERE), *extra_pythonpath()])
            try:
                portable = [run_size(size, work, services=running,
                                     workers=args.portable_workers) for size in args.portable]
            finally:
                services.stop(work / "services")
    first, last = local[0], local[-1]
    marginal = [round(1000 * (b["seconds"] - a["seconds"]) / (b["problems"] - a["problems"]), 3)
                for a, b in zip(local, local[1:])]
    for run in local[1:]:  # beyond the fixed cost of a run: the slope from the smallest run
        run["ms_per_problem_beyond_fixed"] = round(
            1000 * (run["seconds"] - first["seconds"]) / (run["problems"] - first["problems"]),
            3)
        run["cpu_ms_per_problem_beyond_fixed"] = round(
            1000 * (run["cpu_seconds"] - first["cpu_seconds"])
            / (run["problems"] - first["problems"]), 3)
    time_ratio = flatness(local, "ms_per_problem_beyond_fixed", 1000)
    wall_ratio = flatness(local, "ms_per_problem", 1000)
    rss_ratio = flatness(local, "peak_rss_mib", 1000)
    report = {
        "runs": local,
        "portable_runs": portable,
        "marginal_ms_per_problem": marginal,
        # From 1,000 problems to the largest size (issue 13's target range).
        "time_per_problem_ratio_1000_to_last": time_ratio,
        "labelling_time_per_problem_ratio_1000_to_last": flatness(
            local, "labelling_ms_per_problem", 1000),
        "wall_time_per_problem_ratio_1000_to_last": wall_ratio,
        "cpu_time_per_problem_ratio_1000_to_last": flatness(
            local, "cpu_ms_per_problem_beyond_fixed", 1000),
        "launcher_peak_rss_ratio_1000_to_last": rss_ratio,
        # Kept for benchmarks/run_all.py's summary: smallest to largest size.
        "time_per_problem_ratio_last_first": round(
            last.get("labelling_ms_per_problem", last["ms_per_problem"])
            / max(1e-9, first.get("labelling_ms_per_problem", first["ms_per_problem"])), 3),
        "peak_rss_ratio_last_first": round(last["peak_rss_mib"] / first["peak_rss_mib"], 3),
        "wave_size": RunnerConfig().wave_size if args.wave_size is None else args.wave_size,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    }
    report["targets"] = {
        "memory_flat_within_20pct": rss_ratio is not None and rss_ratio <= 1.2,
        "time_per_problem_flat_within_20pct": time_ratio is not None
        and 0.8 <= time_ratio <= 1.2,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
