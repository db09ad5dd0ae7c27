"""While an engine starts: a line at once, then a ticking status line on a terminal or a few
"still starting" lines in a log file; the ready line names the CPU, not GPUs, on the CPU build
(unit tier: no engine starts)."""

import io
import logging
import time

import pytest

from steplabel.engines.vllm_engine import ready_message
from steplabel.pipelines import logs
from steplabel.pipelines.engine_pool import _engine_description
from steplabel.pipelines.stages import expected_requests
from steplabel.schemas.config import EngineConfig
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_start_line_then_still_starting_lines_without_a_terminal(caplog):
    stream = io.StringIO()  # a log file: no status line
    with caplog.at_level(logging.INFO, logger="steplabel.engines"):
        with logs.engine_starting("the vllm engine (model embedded; first needed by policy)",
                                  stream=stream, notices=(0.05, 0.1)):
            time.sleep(0.28)
    messages = [r.getMessage() for r in caplog.records if r.name == "steplabel.engines"]
    assert messages[0] == "starting the vllm engine (model embedded; first needed by policy)"
    still = [m for m in messages[1:] if m.startswith("still starting the vllm engine")]
    # at 0.05 and 0.1 s, then every 0.05 s: about 5 in 0.28 s, never one per tick
    assert 3 <= len(still) <= 6
    shown = stream.getvalue().splitlines()
    assert shown == [f"[steplabel] {m}" for m in still]
    assert all(getattr(r, logs.FILE_ONLY, False) for r in caplog.records
               if r.getMessage().startswith("still starting"))  # shown once, on the stream


def test_status_line_with_elapsed_time_on_a_terminal(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="steplabel.engines"):
        with logs.engine_starting("the custom engine", stream=stream, tick_s=0.05):
            time.sleep(0.2)
    drawn = stream.getvalue()
    assert "[steplabel] loading the custom engine: 00:00" in drawn
    assert drawn.count("loading the custom engine") >= 2  # redrawn while it loads
    assert not [r for r in caplog.records if "still starting" in r.getMessage()]


def test_shown_on_the_terminal_while_the_engine_start_points_stderr_at_the_log_file(tmp_path):
    """vLLM's start points descriptors 1 and 2 at the log file (its children inherit them):
    the lines shown meanwhile go to a copy of the terminal's descriptor, not into the file."""
    import subprocess
    import sys

    script = (
        "import os, sys, time\n"
        "from steplabel.pipelines import logs\n"
        "with logs.engine_starting('the x engine', notices=(0.05,)):\n"
        "    log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        "    saved = os.dup(2)\n"
        "    os.dup2(log, 2)\n"
        "    time.sleep(0.3)\n"
        "    os.dup2(saved, 2)\n")
    log = tmp_path / "engine.log"
    done = subprocess.run([sys.executable, "-c", script, str(log)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[steplabel] still starting the x engine" in done.stderr
    assert "still starting" not in (log.read_text() if log.exists() else "")


def test_no_status_line_while_progress_bars_are_on_screen(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="steplabel.engines"):
        with logs.engine_starting("the judge engine", stream=stream, status_line=False,
                                  notices=(0.05,)):
            time.sleep(0.12)
    assert "loading" not in stream.getvalue()
    assert stream.getvalue().startswith("[steplabel] still starting the judge engine")


def test_engine_ready_line_on_a_cpu_has_no_gpu_words():
    line = ready_message("embedded:SmolLM2-135M-Instruct", 81.04, cpu=True, replicas=1,
                         gpus_per_replica=1, gpu_share=0.9,
                         environ={"VLLM_CPU_KVCACHE_SPACE": "2",
                                  "VLLM_CPU_OMP_THREADS_BIND": "0-1"})
    assert line == ("vLLM engine for embedded:SmolLM2-135M-Instruct ready in 81.0 s (CPU, KV "
                    "cache 2 GiB, threads on cores 0-1)")
    assert "GPU" not in line and "replica" not in line


def test_engine_ready_line_on_gpus():
    line = ready_message("m", 12.0, cpu=False, replicas=2, gpus_per_replica=1, gpu_share=0.45)
    assert line == "vLLM engine for m ready in 12.0 s (2 replica(s) x 1 GPU(s), 0.45 of each " \
                   "GPU's memory)"


def test_engine_description_names_kind_model_and_first_role():
    assert _engine_description(EngineConfig(), "policy") == (
        "the vllm engine (model embedded; first needed by policy)")
    custom = EngineConfig(kind="custom", factory="fakes:arithmetic_engine")
    assert _engine_description(custom, "judge") == (
        "the custom engine (factory fakes:arithmetic_engine; first needed by judge)")


def test_expected_requests_of_the_labelling_job():
    manifest = manifest_from_dict({"name": "t", "source": {"kind": "jsonl", "path": "x.jsonl"},
                                   "policy": {"samples": 3}, "monte_carlo": {}, "judge": {},
                                   "consensus": {}})
    assert expected_requests(manifest, 12) == {"policy": 12, "judge": 36}
    assert expected_requests(manifest, None) == {}
    no_judge = manifest_from_dict({"name": "t", "source": {"kind": "jsonl", "path": "x.jsonl"},
                                   "monte_carlo": {}})
    assert expected_requests(no_judge, 5) == {"policy": 5}
