"""Grade every HumanEval canonical solution (expected: all correct), the tests on an empty
program (expected: no warning) and a ``return None`` body (expected: all incorrect).

Usage: python benchmarks/sandbox_humaneval_check.py PATH/TO/humaneval.jsonl
Prints the counts and writes benchmarks/results/sandbox_humaneval_check.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from steplabel.annotators.python_tests import PythonTestsGrader, from_humaneval
from steplabel.annotators.sandbox import SandboxPool

RESULTS = Path(__file__).resolve().parent / "results"
FENCE = "```"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    grader = PythonTestsGrader(timeout_s=5, memory_mb=512, pool=SandboxPool(size=2))
    records = [json.loads(line) for line in args.path.read_text().splitlines() if line.strip()]

    def check(record: dict) -> dict:
        gold = grader.parse_gold(from_humaneval(record))
        right = grader.grade(f"Reasoning.\n\n{FENCE}python\n{record['prompt']}"
                             f"{record['canonical_solution']}\n{FENCE}", gold)
        wrong = grader.grade(f"{FENCE}python\n{record['prompt']}    return None\n{FENCE}", gold)
        return {"id": record["task_id"], "canonical": right.verdict, "reason": right.reason,
                "empty_program_warning": grader.validate_gold(gold), "return_none": wrong.verdict}

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as executor:
        rows = list(executor.map(check, records))
    summary = {
        "problems": len(rows), "seconds": round(time.perf_counter() - started, 1),
        "canonical": dict(collections.Counter(r["canonical"] for r in rows)),
        "empty_program_warning": dict(collections.Counter(str(r["empty_program_warning"])
                                                          for r in rows)),
        "return_none": dict(collections.Counter(r["return_none"] for r in rows)),
        "not_correct": [r for r in rows if r["canonical"] != "correct"],
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_humaneval_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
