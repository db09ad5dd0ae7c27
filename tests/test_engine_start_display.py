"""While an engine starts: a line at once, then a ticking status line on a terminal or a few
"still starting" lines in a log file; the ready line names the CPU, not GPUs, on the CPU build
(unit tier: no engine starts)."""

import io
import logging
import time

import pytest

from steplabel.engines.vllm_engine import ready_message
from steplabel.pipelines import logs
from steplabel.pipelines.stages import _engine_description, expected_requests
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
    assert 3 <= len(still) <= 6 and stream.getvalue() == ""


def test_status_line_with_elapsed_time_on_a_terminal(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="steplabel.engines"):
        with logs.engine_starting("the custom engine", stream=stream, tick_s=0.05):
            time.sleep(0.2)
    drawn = stream.getvalue()
    assert "[steplabel] loading the custom engine: 00:00" in drawn
    assert drawn.count("loading the custom engine") >= 2  # redrawn while it loads
    assert not [r for r in caplog.records if "still starting" in r.getMessage()]


def test_no_status_line_while_progress_bars_are_on_screen(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="steplabel.engines"):
        with logs.engine_starting("the judge engine", stream=stream, status_line=False,
                                  notices=(0.05,)):
            time.sleep(0.12)
    assert stream.getvalue() == ""
    assert any(r.getMessage().startswith("still starting the judge engine")
               for r in caplog.records)


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
