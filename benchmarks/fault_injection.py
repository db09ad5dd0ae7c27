"""Fault injection: run whole jobs while things go wrong, and count what was lost (not a test).

Two phases, both through the Beam pipeline (``run_job``, FnApiRunner) with the ``openai`` engine
against the local flaky completions server (``tests/flaky_server.py``, loopback only):

1. **flaky HTTP + bad input**: every request has a ``--rate`` chance of a transient fault
   (connection reset, hang past the client timeout, 429, 500, 503, a body cut short with and
   without Content-Length, a non-JSON body); one problem's requests always fail (503), one gets
   a permanent 400, one a "prompt too long" 400; and bad records (malformed JSON, missing and
   wrong-typed fields, non-UTF-8 bytes, duplicate ids, pathological gold answers) are mixed into
   the input.
2. **crash and resume**: the same kind of job as a ``python -m steplabel run`` subprocess,
   killed with SIGKILL once some problems are checkpointed, then rerun to completion.

For each phase it prints faults injected (by kind), engine requests, attempts and retries,
dead-lettered rows (by reason), rows in, rows accounted for, and rows lost (rows in minus
labelled, filtered and dead-lettered problems, recounted from the shards), which must be 0.
Writes ``benchmarks/results/fault_injection.json``; exits 1 if any row was lost.

Usage: ``python benchmarks/fault_injection.py [--problems 60] [--rate 0.2] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the flaky server and the accounting helper

from accounting import account  # noqa: E402
from flaky_server import Fault, FlakyCompletionsServer, write_word_tokenizer  # noqa: E402

TRANSIENT = [Fault.RESET, Fault.HANG, Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.UNAVAILABLE,
             Fault.TRUNCATED, Fault.TRUNCATED_UNFRAMED, Fault.INVALID_JSON]
TIMEOUT_S = 2.0
MAX_RETRIES = 6

BAD_LINES = [
    b"{not json",
    b'{"id": "bad-missing", "question": "What is 1 + 1?"}',
    b'{"id": "bad-type", "question": ["What is 1 + 1?"], "answer": "2"}',
    b'{"id": "bad-empty", "question": "  ", "answer": "2"}',
    b'\xff\xfe{"id": "bad-bytes"}',
    b'{"id": "bad-surrogate", "question": "What is 1 + 1? \\ud800", "answer": "2"}',
    b'{"id": "bad-gold", "question": "What is 1 + 1?", "answer": "\\\\frac{"}',
    b'{"id": "bad-deep", "question": "What is 1 + 1?", "answer": "' + b"{" * 100 + b"1"
    + b"}" * 100 + b'"}',
    b'{"id": "p0", "question": "What is 0 + 1?", "answer": "1"}',  # an exact duplicate of p0
]


def question(i: int) -> str:
    return f"What is {i} + {i + 1}?"


def write_source(path: Path, problems: int, *, bad: bool) -> int:
    """The input file; returns rows in (non-blank lines)."""
    lines = [json.dumps({"id": f"p{i}", "question": question(i),
                         "answer": str(2 * i + 1)}).encode() for i in range(problems)]
    if bad:
        lines += BAD_LINES
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


def manifest_dict(source: Path, server: FlakyCompletionsServer, tokenizer: str) -> dict:
    sampling = {"max_tokens": 12}
    return {
        "name": "fault-injection",
        "seed": 3,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "openai", "model": server.model, "base_url": server.url,
                              "tokenizer": tokenizer, "request_timeout_s": TIMEOUT_S,
                              "max_retries": MAX_RETRIES, "retry_max_wait_s": 0.05,
                              "max_concurrency": 16}},
        "policy": {"samples": 2, "sampling": sampling},
        "monte_carlo": {"rollouts": 2, "sampling": sampling},
        "omegaprm": {"rollouts": 2, "prefilter_rollouts": 4, "search_limit": 1,
                     "sampling": sampling},
        "judge": {"sampling": sampling},
        "consensus": {},
        "runner": {"num_shards": 2, "max_in_flight": 16},
    }


def figures(result, out: str, rows_in: int, server: FlakyCompletionsServer, seconds: float,
            extra: dict | None = None) -> dict:
    counted = account(out)
    counters = result.stats["counters"]
    dead = Counter(f"{row['stage']}:{row['reason']}" for row in counted["dead_rows"])
    return {
        "rows_in": rows_in,
        "problems_labelled": len(counted["labelled"]),
        "problems_filtered_only": len(counted["filtered"]),
        "dead_letter_rows": len(counted["dead_rows"]),
        "dead_letter_by_reason": dict(sorted(dead.items())),
        "accounted": counted["accounted"],
        "rows_lost": rows_in - counted["accounted"],
        "labelled_and_dead_lettered": len(counted["dead_label"]
                                          & (counted["labelled"] | counted["filtered"])),
        "reconciliation_ok": result.stats["reconciliation"]["ok"],
        "faults_injected": dict(sorted(server.faults_injected.items())),
        "faults_injected_total": sum(server.faults_injected.values()),
        "server_requests": server.request_count,
        "engine_requests": counters.get("engine_requests", 0),
        "engine_attempts": counters.get("engine_attempts", 0),
        "engine_retries": counters.get("engine_retries", 0),
        "engine_failures": counters.get("engine_failures", 0),
        "retries_by_reason": {k[len("engine_retry_"):]: v for k, v in sorted(counters.items())
                              if k.startswith("engine_retry_")},
        "max_attempts_per_request": MAX_RETRIES + 1,
        "seconds": round(seconds, 1),
        **(extra or {}),
    }


def phase_flaky(base: Path, tokenizer: str, *, problems: int, rate: float, seed: int) -> dict:
    from steplabel.pipelines.job import run_job
    from steplabel.schemas.manifest import manifest_from_dict

    source = base / "flaky.jsonl"
    rows_in = write_source(source, problems, bad=True)
    with FlakyCompletionsServer(hang_s=3 * TIMEOUT_S) as server:
        server.inject_randomly(TRANSIENT, rate=rate, seed=seed)
        server.fail_always(Fault.UNAVAILABLE, prompt_contains=question(problems - 1))
        server.fail_always(Fault.BAD_REQUEST, prompt_contains=question(problems - 2))
        server.fail_always(Fault.CONTEXT_LENGTH, prompt_contains=question(problems - 3))
        out = str(base / "flaky-out")
        started = time.perf_counter()
        result = run_job(manifest_from_dict(manifest_dict(source, server, tokenizer)),
                         out_dir=out)
        return figures(result, out, rows_in, server, time.perf_counter() - started,
                       {"fault_rate": rate})


def phase_crash(base: Path, tokenizer: str, *, problems: int, rate: float, seed: int) -> dict:
    import yaml

    from steplabel.pipelines.job import run_job
    from steplabel.schemas.manifest import load_manifest

    source = base / "crash.jsonl"
    rows_in = write_source(source, problems, bad=False)
    out = base / "crash-out"
    with FlakyCompletionsServer(hang_s=3 * TIMEOUT_S, delay_s=0.02) as server:
        server.inject_randomly(TRANSIENT, rate=rate, seed=seed + 1)
        manifest_file = base / "crash.yaml"
        manifest_file.write_text(yaml.safe_dump(manifest_dict(source, server, tokenizer)))
        started = time.perf_counter()
        job = subprocess.Popen([sys.executable, "-m", "steplabel", "run", str(manifest_file),
                                "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        wanted = max(1, problems // 3)
        deadline = time.monotonic() + 600
        checkpoints: list[Path] = []
        while time.monotonic() < deadline and job.poll() is None:
            checkpoints = list((out / "_work" / "checkpoints").glob("*/*.json"))
            if len(checkpoints) >= wanted:
                break
            time.sleep(0.1)
        killed = job.poll() is None
        if killed:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
        before = len(list((out / "_work" / "checkpoints").glob("*/*.json")))
        result = run_job(load_manifest(manifest_file), out_dir=str(out))
        return figures(result, str(out), rows_in, server, time.perf_counter() - started, {
            "fault_rate": rate,
            "killed_mid_run": killed,
            "checkpointed_before_kill": before,
            "problems_resumed": result.stats["counters"].get("problems_resumed", 0),
            "problems_recomputed": result.stats["counters"].get("problems_labelled", 0),
            "temp_files_removed": result.stats.get("temp_files_removed", 0),
            "note": "faults_injected and server_requests count both runs (the killed one and "
                    "the rerun); engine_* counters are the rerun's",
        })


def print_phase(name: str, data: dict) -> None:
    print(f"\n## {name}")
    keys = ["rows_in", "faults_injected_total", "faults_injected", "engine_requests",
            "engine_attempts", "engine_retries", "retries_by_reason", "engine_failures",
            "dead_letter_rows", "dead_letter_by_reason", "problems_labelled",
            "problems_filtered_only", "accounted", "rows_lost", "reconciliation_ok",
            "killed_mid_run", "checkpointed_before_kill", "problems_resumed",
            "problems_recomputed", "seconds"]
    for key in keys:
        if key in data:
            print(f"- {key}: {data[key]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--rate", type=float, default=0.2, help="chance of a transient fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"
                                             / "fault_injection.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="steplabel-faults-") as folder:
        base = Path(folder)
        tokenizer = write_word_tokenizer(base / "tokenizer")
        flaky = phase_flaky(base, tokenizer, problems=args.problems, rate=args.rate,
                            seed=args.seed)
        print_phase("flaky HTTP + bad input", flaky)
        crash = phase_crash(base, tokenizer, problems=args.problems, rate=args.rate,
                            seed=args.seed)
        print_phase("crash (SIGKILL) and resume", crash)

    lost = flaky["rows_lost"] + crash["rows_lost"]
    report = {
        "benchmark": "fault_injection",
        "settings": {"problems": args.problems, "fault_rate": args.rate, "seed": args.seed,
                     "request_timeout_s": TIMEOUT_S, "max_retries": MAX_RETRIES,
                     "transient_faults": [f.value for f in TRANSIENT]},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "phases": {"flaky_http_and_bad_input": flaky, "crash_and_resume": crash},
        "rows_lost": lost,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nrows lost: {lost}   (written to {args.out})")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
