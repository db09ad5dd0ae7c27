"""How long vLLM's structured-output backend takes to compile the critic's constrained form
(``critic.constrain_form``, issue #25; not a test).

vLLM compiles a request's regular expression with xgrammar against the model's vocabulary
before the first token, once per distinct pattern (then cached), and gives up after
``VLLM_REGEX_COMPILATION_TIMEOUT_S`` (default 5 s). The critic's form is one pattern per step
count and ``max_step_chars``. This times ``GrammarCompiler.compile_regex`` (cache off) with the
embedded model's tokenizer for a few forms; no engine starts. The machine's load is recorded
beside the figures: compilation is CPU-bound, and this machine is shared.

    python benchmarks/critic_form_compile.py [--out benchmarks/results/critic_form_compile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

FORMS = [(2, 120), (4, 120), (6, 120), (3, 200), (5, 200), (10, 200)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/critic_form_compile.json")
    args = parser.parse_args()

    import xgrammar
    from transformers import AutoTokenizer

    from steplabel.annotators.critic import critique_form_regex
    from steplabel.models import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_embedded_model().path))
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer)
    load_before = os.getloadavg()
    rows = []
    for steps, cap in FORMS:
        compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        started = time.perf_counter()
        compiler.compile_regex(critique_form_regex(steps, cap))
        seconds = time.perf_counter() - started
        rows.append({"steps": steps, "max_step_chars": cap, "seconds": round(seconds, 2)})
        print(f"{steps} steps x {cap} characters: {seconds:.2f} s", flush=True)
    result = {"vocabulary": info.vocab_size, "forms": rows,
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "cpus": os.cpu_count()}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
