"""Engine saturation: the same request mix through the full pipeline and the bare engine.

    .venv/bin/python benchmarks/saturation.py [--problems 192] [--in-flight 64]

1. ``steplabel run`` (local runner) labels generated arithmetic problems with the embedded model
   (policy samples, Monte Carlo k=4, judge, consensus); a recording engine logs every request.
2. A fresh process replays exactly those requests (same prompts, seeds, settings) straight into
   a bare vLLM engine, all submitted at once: the most the engine can do with that mix.
Ratio = pipeline generated tokens/s ÷ bare tokens/s (target ≥ 0.90), both over the whole run and
in the steady state (between 10% and 90% of the generated tokens, leaving out the ramp-up, when
only policy requests exist, and the tail, which a long job amortises).
Also reports the share of Monte Carlo prompt tokens served from the prefix cache (target ≥ 80%).
Writes benchmarks/results/saturation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from scale import extra_pythonpath  # a sibling benchmark (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def run_pipeline(work: Path, problems: int, in_flight: int) -> tuple[list[dict], dict]:
    from steplabel.demo_data import write_problems

    source = work / "problems.jsonl"
    write_problems(str(source), count=problems, seed=7)
    sampling = {"temperature": 0.8, "top_p": 0.95}
    manifest = {
        "name": "saturation",
        "seed": 7,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": "recording_engine:make",
                              "dtype": "float32"}},
        "policy": {"samples": 2, "sampling": {**sampling, "max_tokens": 96}},
        "monte_carlo": {"rollouts": 4, "sampling": {**sampling, "max_tokens": 48}},
        "judge": {"votes": 3, "response_prefix": "The earliest wrong paragraph is \\boxed{",
                  "sampling": {"temperature": 0.8, "max_tokens": 4, "stop": ["}"]}},
        "consensus": {},
        "runner": {"max_in_flight": in_flight, "num_shards": 1},
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    record = work / "requests.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *extra_pythonpath()]),
           "STEPLABEL_RECORD": str(record)}
    subprocess.run([sys.executable, "-m", "steplabel", "run", str(path), "--out",
                    str(work / "out")], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    from steplabel.dataset import storage

    requests = [json.loads(line) for line in record.read_text().splitlines()]
    # Prefix-cache hits are the run's measurement (run_metrics.json), not the rows'.
    cache = storage.read_json_if_exists(storage.join(str(work / "out"), "run_metrics.json"))
    mc = (cache or {}).get("prefix_cache", {}).get("completer") or {
        "prompt_tokens": 0, "cached_tokens": 0}
    return requests, mc


def steady_rate(events: list[tuple[float, int]]) -> float:
    """Tokens/s between the moments 10% and 90% of all generated tokens were done."""
    events = sorted(events)
    total = sum(tokens for _, tokens in events)
    done, t10, t90 = 0, None, None
    for moment, tokens in events:
        done += tokens
        if t10 is None and done >= 0.1 * total:
            t10 = moment
        if t90 is None and done >= 0.9 * total:
            t90 = moment
    return 0.8 * total / max(1e-9, t90 - t10)


def replay(requests: list[dict]) -> dict:
    from steplabel.engines.base import GenerationRequest
    from steplabel.engines.host import EngineHost
    from steplabel.schemas.config import EngineConfig

    host = EngineHost()
    engine = host.engine(EngineConfig(kind="vllm", model="embedded", dtype="float32"))

    events = []

    async def one(r):
        result = await engine.generate(GenerationRequest(
            prompt=r["prompt"], n=r["n"], seed=r["seed"], max_tokens=r["max_tokens"],
            temperature=r["temperature"], top_p=r["top_p"], stop=tuple(r["stop"])))
        events.append((time.time(), result.total_generated_tokens))
        return result

    async def all_at_once():
        return await asyncio.gather(*[one(r) for r in requests])

    started = time.perf_counter()
    results = host.run(all_at_once())
    seconds = time.perf_counter() - started
    host.close()
    return {"seconds": seconds, "steady_tokens_per_s": steady_rate(events),
            "generated_tokens": sum(r.total_generated_tokens for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Enough problems that every stage has a steady state: with consensus guidance Monte Carlo
    # is a small share of the tokens, and 24 problems at 8 in flight measured mostly the
    # sampling cap and the stage tails (0.62 whole run, 0.26 steady; 96 at 32: 0.88 / 1.02;
    # 192 at 64, the manifests' max_in_flight: 0.955 / 0.991).
    parser.add_argument("--problems", type=int, default=192)
    parser.add_argument("--in-flight", type=int, default=64,
                        help="problems in flight (fewer than --problems: a steady state)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="steplabel-saturation-") as tmp:
        requests, mc = run_pipeline(Path(tmp), args.problems, args.in_flight)
    window = max(r["completed"] for r in requests) - min(r["submitted"] for r in requests)
    pipeline_tokens = sum(r["generated_tokens"] for r in requests)
    pipeline_steady = steady_rate([(r["completed"], r["generated_tokens"]) for r in requests])
    bare = replay(requests)
    report = {
        "problems": args.problems,
        "requests": len(requests),
        "in_flight": args.in_flight,
        "pipeline": {"seconds": round(window, 1), "generated_tokens": pipeline_tokens,
                     "tokens_per_s": round(pipeline_tokens / window, 1),
                     "steady_tokens_per_s": round(pipeline_steady, 1)},
        "bare_engine": {"seconds": round(bare["seconds"], 1),
                        "generated_tokens": bare["generated_tokens"],
                        "tokens_per_s": round(bare["generated_tokens"] / bare["seconds"], 1),
                        "steady_tokens_per_s": round(bare["steady_tokens_per_s"], 1)},
        "mc_prefix_cache_share": round(mc["cached_tokens"] / max(1, mc["prompt_tokens"]), 3),
    }
    report["saturation_ratio"] = round(report["pipeline"]["tokens_per_s"]
                                       / report["bare_engine"]["tokens_per_s"], 3)
    report["steady_saturation_ratio"] = round(report["pipeline"]["steady_tokens_per_s"]
                                              / report["bare_engine"]["steady_tokens_per_s"], 3)
    report["targets"] = {"saturation_ratio_ge_0.90": report["saturation_ratio"] >= 0.90,
                         "steady_saturation_ratio_ge_0.90":
                             report["steady_saturation_ratio"] >= 0.90,
                         "mc_prefix_cache_share_ge_0.80": report["mc_prefix_cache_share"] >= 0.80}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "saturation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
