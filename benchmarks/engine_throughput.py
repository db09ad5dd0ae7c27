"""Engine start time and generation throughput of the embedded model on vLLM.

    .venv/bin/python benchmarks/engine_throughput.py [--prompts 16] [--n 4] [--tokens 64]

Measures, in one run: engine start (process spawn, weights load, warm-up), then generated
tokens/s for ``prompts × n`` samples of exactly ``tokens`` tokens each (all requests submitted
at once, so continuous batching decides), then the same mix again to show the prefix-cache hit
rate on repeated prompts. Writes benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from steplabel.engines.base import ChatMessage, GenerationRequest
    from steplabel.engines.host import EngineHost
    from steplabel.schemas.config import EngineConfig

    host = EngineHost()
    started = time.perf_counter()
    engine = host.engine(EngineConfig(model="embedded", dtype=args.dtype))
    start_s = time.perf_counter() - started

    prompts = [engine.apply_chat_template([ChatMessage(
        "user", f"Write a short story about the number {i} and a cat.")]) for i in range(args.prompts)]

    async def mix(seed0: int):
        requests = [GenerationRequest(prompt=p, n=args.n, seed=seed0 + i, max_tokens=args.tokens,
                                      temperature=1.0, stop=()) for i, p in enumerate(prompts)]
        return await asyncio.gather(*[engine.generate(r) for r in requests])

    host.run(mix(10_000))  # warm-up: first batches pay one-time costs
    t0 = time.perf_counter()
    results = host.run(mix(0))
    seconds = time.perf_counter() - t0
    generated = sum(r.total_generated_tokens for r in results)
    prompt_tokens = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_prompt_tokens for r in results)
    report = {
        "model": engine.model_id,
        "dtype": args.dtype,
        "machine": platform.machine(),
        "engine_start_s": round(start_s, 1),
        "prompts": args.prompts,
        "n": args.n,
        "max_tokens": args.tokens,
        "generated_tokens": generated,
        "seconds": round(seconds, 2),
        "generated_tokens_per_s": round(generated / seconds, 1),
        "prompt_cache_hit_rate_on_repeat": round(cached / max(1, prompt_tokens), 3),
        "peak_rss_mib_driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    host.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
