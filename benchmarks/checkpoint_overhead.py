"""Checkpointing alone: the stages' checkpoint calls for N problems, without Beam or an engine.

    .venv/bin/python benchmarks/checkpoint_overhead.py [--problems 3000] [--repeats 3]

Per problem a job like ``benchmarks/scale.py``'s checkpoints five keys: one sampling key (two
solutions of ten steps), two Monte Carlo and two judge keys (``Labels``). Two phases, as a
stage does them: a fresh run (each key checked, then checkpointed as it finishes) and a resume
(each key checked and replayed). Reports wall and CPU milliseconds per problem (CPU time is
less disturbed by other processes on a shared machine) and the files left in ``_work``.

Runs against whichever checkpoint code is importable: per-key files (``save_stage_checkpoint``
/ ``load_stage_checkpoint``, before issue 22 step 8) or segments (``SegmentWriter`` /
``StageCheckpoints``); put a snapshot of the old code first on ``PYTHONPATH`` (and run from
outside the worktree) to measure it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from steplabel.annotators import stages as st

try:
    from steplabel.pipelines import checkpoints as stages
except ImportError:  # a snapshot from before the checkpoint code left pipelines/stages.py
    from steplabel.pipelines import stages

SEGMENTS = hasattr(stages, "SegmentWriter")


def records(i: int) -> dict[str, list[tuple[str, object]]]:
    """The five checkpointed keys of problem ``i``, with records shaped like a real job's."""
    pid = f"p{i:06d}"
    steps = [f"Step {s}: add {s} to the running total, which gives {s * i}." for s in range(10)]
    solutions = [st.Solution(problem_id=pid, source="bench", question=f"What is {i} + 1?",
                             gold_answer=str(i + 1), original="", index=k,
                             solution="\n\n".join(steps), steps=steps, policy_seed=i * 2 + k,
                             cost_policy={"requests": 1, "generated_tokens": 300},
                             final_answer=str(i + 1), final_answer_correct=True)
                 for k in range(2)]
    sampled = st.Sampled(solutions=solutions, counters={"solutions_sampled": 2})
    labels = st.Labels(fields={"mc_values": [0.75] * 10, "mc_labels": [1] * 10,
                               "cost_mc": {"requests": 40, "generated_tokens": 4000}},
                       counters={"rollouts": 40})
    keys = {st.SAMPLE: [(pid, sampled)]}
    keys[st.MONTE_CARLO] = [(json.dumps([pid, k]), labels) for k in range(2)]
    keys[st.JUDGE] = [(json.dumps([pid, k]), labels) for k in range(2)]
    return keys


def encode(result):
    return result if SEGMENTS else st.to_json(result)


def fresh(out: str, problems: list[dict]) -> None:
    if SEGMENTS:
        pool = {stage: stages.StageCheckpoints(out, stage).refresh() for stage in problems[0]}
        writers = {stage: stages.SegmentWriter(pool[stage]) for stage in pool}
        for keys in problems:
            for stage, items in keys.items():
                for key, result in items:
                    assert pool[stage].load(key) is None
                    writers[stage].add(key, encode(result))
        for writer in writers.values():
            writer.close()
        return
    for keys in problems:
        for stage, items in keys.items():
            for key, result in items:
                assert stages.load_stage_checkpoint(out, stage, key) is None
                stages.save_stage_checkpoint(out, stage, key, encode(result))


def resume(out: str, problems: list[dict]) -> int:
    replayed = 0
    pool = ({stage: stages.StageCheckpoints(out, stage).refresh() for stage in problems[0]}
            if SEGMENTS else None)
    for keys in problems:
        for stage, items in keys.items():
            for key, _ in items:
                data = (pool[stage].load(key) if SEGMENTS
                        else stages.load_stage_checkpoint(out, stage, key))
                replayed += data is not None
    return replayed


def timed(function, *args) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", help="write the report here (JSON)")
    args = parser.parse_args()
    problems = [records(i) for i in range(args.problems)]
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="steplabel-checkpoints-") as out:
            fresh_wall, fresh_cpu, _ = timed(fresh, out, problems)
            resume_wall, resume_cpu, replayed = timed(resume, out, problems)
            assert replayed == 5 * args.problems, replayed
            files = sum(len(names) for _, _, names in os.walk(Path(out) / "_work"))
        n = args.problems
        runs.append({"fresh_wall_ms_per_problem": round(1000 * fresh_wall / n, 3),
                     "fresh_cpu_ms_per_problem": round(1000 * fresh_cpu / n, 3),
                     "resume_wall_ms_per_problem": round(1000 * resume_wall / n, 3),
                     "resume_cpu_ms_per_problem": round(1000 * resume_cpu / n, 3),
                     "files": files, "load_average": os.getloadavg()[0]})
        print(json.dumps(runs[-1]), flush=True)
    report = {"code": "segments" if SEGMENTS else "per-key files", "problems": args.problems,
              "runs": runs}
    if args.results:
        Path(args.results).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
