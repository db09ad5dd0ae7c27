"""The command line with the real vLLM engine, in a subprocess as a user runs it: ``--json``
alone on stdout, nothing of vLLM on the terminal (its processes' output is in the dataset's log
file), and the engine shut down at exit without an error or a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.engine

DATA = Path(__file__).resolve().parent / "data"
ENGINE = {"kind": "vllm", "model": "embedded", "dtype": "float32", "max_model_len": 1024}
JUDGE = {"votes": 1, "response_prefix": "The earliest wrong paragraph is \\boxed{",
         "sampling": {"temperature": 0.0, "max_tokens": 4, "stop": ["}"]}}
#: What must never reach the terminal of a clean run.
NOT_ON_A_CLEAN_TERMINAL = ("ERROR", "Traceback", "Exception ignored", "EngineDeadError",
                           "(EngineCore", "INFO")


def steplabel(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VLLM_LOGGING") and k != "VLLM_CONFIGURE_LOGGING"}
    return subprocess.run([sys.executable, "-m", "steplabel", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


def assert_clean_terminal(stderr: str) -> None:
    for text in NOT_ON_A_CLEAN_TERMINAL:
        assert text not in stderr, stderr


def assert_engine_output_in(log: Path) -> None:
    text = log.read_text()
    assert "(EngineCore" in text  # the engine-core process wrote here, not to the terminal
    assert "output_handler failed" not in text and "EngineDeadError" not in text, text[-3000:]
    assert "Exception ignored" not in text and "Traceback" not in text, text[-3000:]


def test_run_with_vllm(tmp_path):
    with open(tmp_path / "problems.jsonl", "w") as handle:
        for i, (a, b) in enumerate([(12, 7), (30, 15)]):
            handle.write(json.dumps({"id": f"q{i}", "question": f"Tom has {a} apples and buys "
                                     f"{b} more. How many apples does he have?",
                                     "answer": str(a + b)}) + "\n")
    manifest = {
        "name": "cli-vllm", "seed": 5,
        "source": {"kind": "jsonl", "path": "problems.jsonl"},
        "models": {"policy": ENGINE},
        "policy": {"samples": 2, "template": "policy_steps_v1", "response_prefix": "Step 1:",
                   "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 64}},
        "splitter": {"name": "step_markers"},
        "monte_carlo": {"rollouts": 2,
                        "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 48}},
        "judge": JUDGE, "consensus": {},
        "runner": {"runner": "local", "max_in_flight": 8, "num_shards": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    done = steplabel("run", "job.yaml", "--out", "out", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["completed"] is True
    assert_clean_terminal(done.stderr)
    assert_engine_output_in(tmp_path / "out" / "logs" / "run.log")


def test_evaluate_with_vllm(tmp_path):
    gold = json.loads((DATA / "processbench_arith20.json").read_text())[:2]
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    manifest = {
        "name": "cli-vllm-eval", "seed": 5, "models": {"policy": ENGINE},
        "policy": {"template": "policy_steps_v1"},
        "monte_carlo": {"rollouts": 2,
                        "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 48}},
        "judge": JUDGE,
        "runner": {"runner": "local", "max_in_flight": 8, "num_shards": 1},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(manifest))
    done = steplabel("evaluate", "--gold", "gold.json", "--answers",
                     str(DATA / "processbench_arith20_answers.jsonl"), "--manifest", "eval.yaml",
                     "--annotators", "mc,judge", "--out", "eval", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["items"]["reconciled"]
    assert_clean_terminal(done.stderr)
    assert_engine_output_in(tmp_path / "eval" / "logs" / "evaluate.log")
