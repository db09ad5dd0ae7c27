"""Reliability with the real vLLM engine and the embedded model (engine tier; minutes on CPU).

- A prompt longer than the model's context (``max_model_len``) is vLLM's validation error,
  mapped to ``ContextLengthError`` (``engines/vllm_engine.map_vllm_error``): the problem lands in
  the dead letter as ``prompt_too_long`` and the good problems finish.
- The vLLM engine-core process killed with SIGKILL mid-run: the job fails loudly (non-zero exit,
  a message saying an engine died and how to resume) instead of hanging or dead-lettering every
  remaining problem; rerunning the same command resumes, replaying the checkpoints of the
  problems that had finished.

Both jobs run as ``python -m steplabel run`` subprocesses, so the engine lives and dies outside
the test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.engine

psutil = pytest.importorskip("psutil")
pytest.importorskip("vllm")

#: Engine start on a loaded 2-core machine can take minutes.
START_TIMEOUT_S = 900
EXIT_TIMEOUT_S = 240


def write_job(tmp_path: Path, problems: list[dict], **overrides) -> Path:
    source = tmp_path / "problems.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in problems))
    manifest = {
        "name": "vllm-reliability",
        "seed": 7,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "vllm", "model": "embedded", "dtype": "float32",
                              "max_model_len": 256}},
        "policy": {"samples": 1, "sampling": {"temperature": 0.8, "max_tokens": 16}},
        "runner": {"num_shards": 1, "max_in_flight": 4},
    }
    manifest.update(overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def steplabel_run(manifest: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "steplabel", "run", str(manifest), "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the job did not exit within {timeout:.0f} s (hung):\n{stderr[-3000:]}")
    return proc.returncode, stdout, stderr


def checkpoints(out: Path) -> dict[str, int]:
    """Finished keys per model stage (sample, omegaprm, monte_carlo, judge), 0s if none."""
    from steplabel.pipelines.checkpoints import stage_checkpoint_counts

    return stage_checkpoint_counts(str(out)) if (out / "_work").exists() else {}


def problem_ids(out: Path, output: str) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for path in (out / output).glob("part-*.parquet"):
        ids |= set(pq.read_table(path, columns=["problem_id"]).column("problem_id").to_pylist())
    return ids


def test_prompt_too_long_for_the_context_is_dead_lettered(tmp_path):
    problems = [
        {"id": "a", "question": "What is 2 + 3?", "answer": "5"},
        {"id": "long", "question": "What is 4 + 4? " + "Please think very carefully. " * 80,
         "answer": "8"},
        {"id": "b", "question": "What is 6 + 1?", "answer": "7"},
    ]
    out = tmp_path / "out"
    code, _, stderr = finish(steplabel_run(write_job(tmp_path, problems), out),
                             START_TIMEOUT_S)
    assert code == 0, stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    rec = stats["reconciliation"]
    assert rec["ok"] and rec["problems_in"] == rec["accounted"] == 3
    import pyarrow.parquet as pq

    dead = [row for path in (out / "dead_letter").glob("part-*.parquet")
            for row in pq.read_table(path).to_pylist()]
    assert [(r["problem_id"], r["stage"], r["reason"]) for r in dead] == [
        ("long", "label", "prompt_too_long")]
    assert "context length" in dead[0]["error"] or "maximum model length" in dead[0]["error"]
    # Labelled (kept, or rejected: policy samples cut off at 16 tokens are policy_truncated).
    assert problem_ids(out, "trajectories") | problem_ids(out, "rejected") == {"a", "b"}
    assert (out / "COMPLETED").exists()


def engine_core(pid: int):
    """The vLLM engine-core process below ``pid`` (named ``VLLM::EngineCore``), or None."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if "EngineCore" in child.name() or any("EngineCore" in part
                                                   for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_engine_killed_mid_run_fails_loudly_and_the_rerun_resumes(tmp_path):
    problems = [{"id": f"p{i}", "question": f"What is {i} + {i + 5}?", "answer": str(2 * i + 5)}
                for i in range(8)]
    manifest = write_job(tmp_path, problems,
                         policy={"samples": 2, "sampling": {"temperature": 0.8,
                                                            "max_tokens": 48}},
                         monte_carlo={"rollouts": 2, "sampling": {"max_tokens": 24}},
                         runner={"num_shards": 1, "max_in_flight": 1})
    out = tmp_path / "out"
    proc = steplabel_run(manifest, out)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not sum(checkpoints(out).values()):  # wait until some keys have finished
        if proc.poll() is not None:
            pytest.fail(f"the job ended before the kill: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            finish(proc, 1)
        time.sleep(0.5)
    core = engine_core(proc.pid)
    assert core is not None, "no VLLM::EngineCore process below the job"
    core.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()

    code, _, stderr = finish(proc, EXIT_TIMEOUT_S)
    assert code != 0
    assert "an engine died" in stderr and "rerun the same command to resume" in stderr, \
        stderr[-3000:]
    assert time.monotonic() - killed_at < EXIT_TIMEOUT_S
    assert not (out / "COMPLETED").exists()
    # Not a dead-letter flood: no output was written at all.
    assert not list(out.glob("dead_letter/part-*.parquet"))
    saved = checkpoints(out)
    assert 1 <= sum(saved.values()) and saved["sample"] <= len(problems)

    code, _, stderr = finish(steplabel_run(manifest, out), START_TIMEOUT_S)
    assert code == 0, stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["reconciliation"]["ok"] and stats["reconciliation"]["accounted"] == len(problems)
    # Every key finished before the kill is replayed, not recomputed.
    for stage, count in saved.items():
        assert stats["counters"].get(f"stage_{stage}_resumed", 0) == count, stage
    assert (out / "COMPLETED").exists()


# --------------------------------------------------------------------------------------------
# How vLLM's errors are classified (no model needed, but importing vLLM takes seconds)


def test_vllm_errors_map_to_dead_letters_or_a_job_failure():
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    from steplabel.engines.base import ContextLengthError, EngineDiedError, EngineError
    from steplabel.engines.vllm_engine import map_vllm_error

    # vLLM 0.32's wording, from a VLLMValidationError (not a ValueError).
    too_long = VLLMValidationError(
        "This model's maximum context length is 128 tokens. However, your prompt contains at "
        "least 129 input tokens, which exceeds this limit even without any output tokens.",
        parameter="input_tokens", value=129)
    assert not isinstance(too_long, ValueError)
    assert isinstance(map_vllm_error(too_long), ContextLengthError)
    older = ValueError("The decoder prompt (length 300) is longer than the maximum model "
                       "length of 256. Make sure that `max_model_len` is no smaller than ...")
    assert isinstance(map_vllm_error(older), ContextLengthError)
    rejected = map_vllm_error(VLLMValidationError("temperature must be >= 0"))
    assert type(rejected) is EngineError and "temperature" in str(rejected)
    assert type(map_vllm_error(EngineGenerateError())) is EngineError
    died = map_vllm_error(EngineDeadError())
    assert isinstance(died, EngineDiedError) and not isinstance(died, EngineError)
    assert "rerun the same command to resume" in str(died)
    bug = KeyError("x")
    assert map_vllm_error(bug) is bug
