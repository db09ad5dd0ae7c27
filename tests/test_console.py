"""What a command shows and where: progress display, the dataset's log file, stdout reserved
for results (unit tier; the command line end to end is in test_cli_output.py)."""

import io
import logging
import os
import subprocess
import sys
import time

import pytest

from steplabel.pipelines import logs
from steplabel.pipelines.label import Progress

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_progress(total=10, *, bars=False, stages=None):
    clock = Clock()
    stream = io.StringIO()
    served = {"rollouts": 0, "tokens": 0}
    counts = stages if stages is not None else {"policy": 0, "completer": 0, "judge": 0}
    progress = Progress(total, stream=stream, bars=bars, clock=clock, interval_s=5.0,
                        served=lambda: (served["rollouts"], served["tokens"]),
                        stages=lambda: counts)
    return progress, clock, stream, served, counts


def test_plain_lines_every_interval_with_stage_counts():
    progress, clock, stream, served, counts = make_progress(total=100)
    clock.now += 6
    served.update(rollouts=60, tokens=600)
    counts.update(policy=3, completer=12, judge=2)
    progress.update()
    clock.now += 1  # within the interval: no new line
    progress.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[steplabel] problems 1/100 (0 resumed), sampled 3, "
                               "steps labelled 12, trajectories judged 2, 10.0 rollouts/s, "
                               "100 tokens/s, 6.0s elapsed, ETA")
    clock.now += 5
    progress.update(force=True)  # no problem done and the interval (now 10 s) not passed
    assert len(stream.getvalue().splitlines()) == 1
    clock.now += 5
    progress.update(force=True)  # no problem done, but the interval passed
    assert len(stream.getvalue().splitlines()) == 2
    assert "problems 2/100" in stream.getvalue().splitlines()[1]


def test_plain_lines_at_a_growing_interval_and_each_tenth():
    progress, clock, stream, _, _ = make_progress(total=1000)
    printed_at = []
    for _ in range(200):  # the labelling loop's polls, every 5 s, no problem done
        clock.now += 5
        before = len(stream.getvalue().splitlines())
        progress.update(force=True)
        if len(stream.getvalue().splitlines()) > before:
            printed_at.append(clock.now - 100)
    # 5 s, then 10, 20, and every 30 s (the cap), not every 5 s
    assert printed_at[:6] == [5, 15, 35, 65, 95, 125]
    assert len(printed_at) == 1 + 1 + 1 + (1000 - 35) // 30
    lines = len(stream.getvalue().splitlines())
    clock.now += 2
    for _ in range(100):  # a tenth of the problems done within the interval: one line
        progress.update()
    assert len(stream.getvalue().splitlines()) == lines + 1
    assert "problems 100/1000" in stream.getvalue().splitlines()[-1]


def test_expected_requests_give_stage_totals_before_any_problem_is_done():
    progress, clock, stream, _, counts = make_progress(total=12)
    progress.expect({"policy": 12, "judge": 36})
    counts.update(policy=12, completer=40, judge=5)
    clock.now += 6
    progress.update(force=True)
    assert ("problems 0/12 (0 resumed), sampled 12/12, steps labelled 40, trajectories "
            "judged 5/36") in stream.getvalue()


def test_resumed_problems_count_their_share_of_the_judge():
    progress, clock, stream, _, counts = make_progress(total=4)
    progress.expect({"policy": 4, "judge": 12})
    counts.update(policy=2, judge=6)
    clock.now += 1
    progress.update(resumed=True)
    clock.now += 1
    progress.update(resumed=True)
    assert "sampled 4/4" in stream.getvalue() and "trajectories judged 12/12" in stream.getvalue()


def test_stage_bar_with_an_expected_total_on_a_terminal():
    progress, clock, stream, served, counts = make_progress(total=4, bars=True)
    progress.expect({"policy": 4, "judge": 12})
    counts.update(policy=4, completer=7, judge=3)
    clock.now += 2
    progress.update(force=True)
    progress.close()
    text = stream.getvalue()
    assert "trajectories judged:  25%|" in text and "3/12" in text


def test_eta_is_smoothed_and_absent_before_the_first_computed_problem():
    progress, clock, _, _, _ = make_progress(total=10)
    progress.update(resumed=True)  # replayed from a checkpoint: says nothing about speed
    assert progress.eta_s() is None
    # Then one problem every 2 s, with one burst: 1 s, then 3 problems within 0.1 s each.
    etas = []
    for step in [2, 2, 2, 0.1, 0.1, 0.1, 2]:
        clock.now += step
        progress.update()
        etas.append(progress.eta_s())
    assert etas[0] == pytest.approx(8 * 2.0)  # 8 left at 0.5 problems/s
    # The burst moves the estimate, by far less than the instantaneous rate (10 problems/s)
    # would: the EMA of counts and of durations damps it.
    assert etas[5] > 0.2 * (10 - 7) / 0.5
    assert all(e is not None and e >= 0 for e in etas)


def test_finished_progress_prints_a_last_line_without_eta():
    progress, clock, stream, _, _ = make_progress(total=2)
    clock.now += 1
    progress.update()
    clock.now += 1
    progress.update()
    last = stream.getvalue().splitlines()[-1]
    assert "problems 2/2" in last and "ETA" not in last
    progress.update()  # after the end: nothing more
    progress.close()
    assert stream.getvalue().splitlines()[-1] == last


def test_close_reports_the_end_when_invalid_rows_kept_the_count_below_the_total():
    progress, clock, stream, _, _ = make_progress(total=3)
    clock.now += 1
    progress.update()
    progress.close()
    last = stream.getvalue().splitlines()[-1]
    assert "problems 1/3" in last and last.endswith("labelling done") and "ETA" not in last


def test_bars_on_a_terminal_one_per_stage():
    progress, clock, stream, served, counts = make_progress(total=4, bars=True)
    counts.update(policy=2, completer=7, judge=3)
    served.update(rollouts=40, tokens=400)
    clock.now += 2
    progress.update()
    progress.close()
    text = stream.getvalue()
    for label in ("problems", "sampled", "steps labelled", "trajectories judged"):
        assert label in text
    assert "rollouts/s" in text and "tokens/s" in text
    assert "1/4" in text and "7 [" in text  # problems done; steps labelled (no total)
    assert "[steplabel] problems" not in text  # the plain line goes to the log file only


def test_progress_line_goes_to_the_log_file_not_the_terminal(tmp_path, caplog):
    progress, clock, _, _, _ = make_progress(total=2, bars=True)
    with caplog.at_level(logging.INFO, logger="steplabel.progress"):
        clock.now += 1
        progress.update()
        progress.update()
    records = [r for r in caplog.records if r.name == "steplabel.progress"]
    assert records and all(getattr(r, logs.FILE_ONLY) for r in records)
    console = logs.ConsoleHandler(verbose=False)
    assert not any(console.filter(r) for r in records)


def test_console_shows_steplabel_messages_and_hides_libraries():
    console = logs.ConsoleHandler(verbose=False)
    ours = logging.LogRecord("steplabel.job", logging.WARNING, __file__, 1, "cut off %d",
                             (3,), None)
    library = logging.LogRecord("vllm.engine", logging.WARNING, __file__, 1, "noise", (), None)
    debug = logging.LogRecord("steplabel.job", logging.DEBUG, __file__, 1, "detail", (), None)
    assert console.filter(ours) and not console.filter(library) and not console.filter(debug)
    assert console.format(ours) == "[steplabel] warning: cut off 3"
    verbose = logs.ConsoleHandler(verbose=True)
    assert verbose.filter(library) and verbose.filter(debug)
    assert verbose.format(library) == "WARNING vllm.engine: noise"


def test_log_file_waits_until_the_command_owns_the_directory(tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "_work").mkdir()
    (out / "_work" / "run.json").write_text("{}")  # another run's claim, older
    os.utime(out / "_work" / "run.json", (time.time() - 3600, time.time() - 3600))
    handler = logs.DatasetLogHandler(str(out), "run")
    record = logging.LogRecord("vllm", logging.INFO, __file__, 1, "before", (), None)
    handler.handle(record)
    assert not (out / "logs").exists()  # not ours yet: kept in memory
    (out / "_work" / "run.json").write_text("{}")  # this command's prepare step claims it
    handler.handle(logging.LogRecord("vllm", logging.INFO, __file__, 1, "after", (), None))
    handler.close()
    text = (out / "logs" / "run.log").read_text()
    assert text.index("before") < text.index("after")


def test_log_file_of_a_refused_directory_is_never_written(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "file.txt").write_text("someone else's")
    handler = logs.DatasetLogHandler(str(out), "run")
    handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "msg", (), None))
    handler.close()
    assert sorted(p.name for p in out.iterdir()) == ["file.txt"]


def test_command_logging_is_undone(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    with logs.command_logging(verbose=False):
        assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # never stdout
    assert (list(root.handlers), root.level) == before
    assert "VLLM_LOGGING_STREAM" not in os.environ


def test_results_alone_on_stdout_whatever_writes_to_descriptor_1():
    code = (
        "import os, sys\n"
        "from steplabel.pipelines.logs import results_on_stdout\n"
        "with results_on_stdout():\n"
        "    os.write(1, b'noise from C code or a child\\n')\n"
        "    import subprocess\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"noise from a child\")'])\n"
        "    print('{\"result\": 1}')\n"
        "print('after')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"result": 1}\nafter\n'
    assert "noise from C code or a child" in done.stderr and "noise from a child" in done.stderr
