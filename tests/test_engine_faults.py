"""Engine faults in a whole job.

- The ``openai`` engine against the local flaky server (``flaky_server.py``): connection resets,
  timeouts, 429, 500, 503, truncated and non-JSON bodies are retried within ``max_retries`` and
  the job finishes; a problem whose requests keep failing, or fail for good (400), goes to the
  dead letter with the reason, and every other problem finishes.
- An engine that dies mid-run (the scripted engine raising ``EngineDiedError``, as the vLLM
  engine does when its engine-core process is gone): the job stops with a clear message instead
  of dead-lettering every remaining problem, and a rerun resumes from the checkpoints without
  recomputing finished problems, ending with the same dataset as an uninterrupted run.

The real vLLM engine killed mid-run is ``test_reliability_engine.py`` (engine tier).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accounting import assert_reconciled
from fakes import DIE_AFTER_ENV
from flaky_server import Fault, FlakyCompletionsServer, write_word_tokenizer
from steplabel.dataset import storage
from steplabel.pipelines.cli import main as cli_main
from steplabel.pipelines.job import JobError, run_job
from steplabel.pipelines.checkpoints import stage_checkpoint_counts
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline

MAX_RETRIES = 5
TIMEOUT_S = 2.0

#: One transient fault per problem (its first request fails once, the retry succeeds).
TRANSIENT = [Fault.RESET, Fault.HANG, Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.UNAVAILABLE,
             Fault.TRUNCATED, Fault.TRUNCATED_UNFRAMED, Fault.INVALID_JSON]


def question(i: int) -> str:
    return f"What is {i} + {i + 1}?"


def write_problems(path: Path, count: int) -> Path:
    with open(path, "w") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"p{i}", "question": question(i),
                                     "answer": str(2 * i + 1)}) + "\n")
    return path


def openai_manifest(source: Path, server: FlakyCompletionsServer, tokenizer: str, **overrides):
    data = {
        "name": "flaky",
        "seed": 1,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "openai", "model": server.model, "base_url": server.url,
                              "tokenizer": tokenizer, "request_timeout_s": TIMEOUT_S,
                              "max_retries": MAX_RETRIES, "retry_max_wait_s": 0.01,
                              "max_concurrency": 8}},
        "policy": {"samples": 2, "sampling": {"max_tokens": 12}},
        "monte_carlo": {"rollouts": 2, "sampling": {"max_tokens": 12}},
        "judge": {"sampling": {"max_tokens": 12}},
        "consensus": {},
        "runner": {"num_shards": 2, "max_in_flight": 8},
    }
    data.update(overrides)
    return manifest_from_dict(data)


@pytest.fixture(scope="module")
def flaky_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("flaky")
    problems = len(TRANSIENT) + 5
    source = write_problems(base / "problems.jsonl", problems)
    tokenizer = write_word_tokenizer(base / "tokenizer")
    with FlakyCompletionsServer(hang_s=2.5 * TIMEOUT_S) as server:
        for i, fault in enumerate(TRANSIENT):
            server.schedule(fault, prompt_contains=question(i))
        n = len(TRANSIENT)
        # Two faults in a row for one problem: still within the retry bound.
        server.schedule(Fault.RESET, Fault.SERVER_ERROR, prompt_contains=question(n))
        # Keeps failing: every attempt of every request answers 503.
        server.fail_always(Fault.UNAVAILABLE, prompt_contains=question(n + 1))
        # Fails for good at once: a 400 is not retried.
        server.fail_always(Fault.BAD_REQUEST, prompt_contains=question(n + 2))
        # The server says the prompt does not fit the model.
        server.fail_always(Fault.CONTEXT_LENGTH, prompt_contains=question(n + 3))
        out = str(base / "out")
        result = run_job(openai_manifest(source, server, tokenizer), out_dir=out)
        yield result, out, problems, server


def test_the_job_finishes_with_every_problem_accounted_for(flaky_job):
    result, out, problems, _ = flaky_job
    counted = assert_reconciled(result, out, rows_in=problems)
    n = len(TRANSIENT)
    assert counted["labelled"] == {f"p{i}" for i in range(problems) if i not in (n + 1, n + 2,
                                                                                 n + 3)}


def test_a_request_that_keeps_failing_dead_letters_its_problem_with_the_reason(flaky_job):
    result, out, _, _ = flaky_job
    n = len(TRANSIENT)
    dead = {row["problem_id"]: row for row in storage.iter_rows(out, "dead_letter")}
    assert set(dead) == {f"p{n + 1}", f"p{n + 2}", f"p{n + 3}"}
    keeps_failing = dead[f"p{n + 1}"]
    assert (keeps_failing["stage"], keeps_failing["reason"]) == ("label", "engine_error")
    assert f"failed after {MAX_RETRIES + 1} attempt(s)" in keeps_failing["error"]
    assert "http 503" in keeps_failing["error"]
    permanent = dead[f"p{n + 2}"]
    assert permanent["reason"] == "engine_error" and "HTTP 400" in permanent["error"]
    assert dead[f"p{n + 3}"]["reason"] == "prompt_too_long"
    assert json.loads(keeps_failing["original"])["id"] == f"p{n + 1}"


def test_retries_stay_within_the_bound_and_are_counted(flaky_job):
    result, _, _, server = flaky_job
    counters = result.stats["counters"]
    injected = server.faults_injected
    for fault in TRANSIENT:
        assert injected[fault.value] >= 1, fault
    # The doomed problem's first request: max_retries + 1 attempts, all 503 (the problem stops
    # at its first failed request).
    assert injected[Fault.UNAVAILABLE.value] == 1 + (MAX_RETRIES + 1)
    assert injected[Fault.BAD_REQUEST.value] == 1 and injected[Fault.CONTEXT_LENGTH.value] == 1
    # Every attempt reached the server; every retry followed a failed attempt.
    assert counters["engine_attempts"] == server.request_count
    assert counters["engine_attempts"] == counters["engine_requests"] + counters["engine_retries"]
    transient_faults = sum(injected.values()) - 2  # the 400s are not retried
    # Each transient fault is one retry, but the last 503 of the doomed request is not retried.
    assert counters["engine_retries"] >= transient_faults - 1
    assert counters["engine_failures"] == 3
    assert counters["engine_retry_timeout"] >= 1 and counters["engine_retry_connection"] >= 1
    assert counters["engine_retry_http_429"] >= 1 and counters["engine_retry_invalid_json"] >= 1


# --------------------------------------------------------------------------------------------
# An engine that dies mid-run


SCRIPTED_FAULTY = {"kind": "custom", "factory": "fakes:arithmetic_engine_with_faults"}
PROBLEMS = 8


def scripted_manifest_file(tmp_path: Path) -> Path:
    source = tmp_path / "problems.jsonl"
    with open(source, "w") as handle:
        for i in range(PROBLEMS):
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + 3?",
                                     "answer": str(i + 3)}) + "\n")
    manifest = {
        "name": "dies", "seed": 2,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": SCRIPTED_FAULTY},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 2},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 2, "max_in_flight": 2},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def dataset_rows(out: str) -> dict[str, list[str]]:
    """Every row of the dataset, except the prefix-cache hit counts (``cached_tokens``), which
    depend on what else the engine served before (a resumed run's engine saw less)."""

    def comparable(row: dict) -> str:
        for key, value in row.items():
            if key.startswith("cost") and isinstance(value, dict):
                value.pop("cached_tokens", None)
        return json.dumps(row, sort_keys=True, default=str)

    return {name: sorted(comparable(row) for row in storage.iter_rows(out, name))
            for name in ("trajectories", "rejected", "dead_letter", "filtered")}


def test_a_dead_engine_stops_the_job_loudly_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    from steplabel.schemas.manifest import load_manifest

    manifest_file = scripted_manifest_file(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv(DIE_AFTER_ENV, "16")
    status = cli_main(["run", str(manifest_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert "an engine died" in err and "rerun the same command to resume" in err
    assert not (out / storage.COMPLETED).exists()
    # No dead-letter flood: nothing was written as output, the finished keys are saved. The
    # engine died at request 16: every problem was sampled (8 requests), some solutions were
    # labelled and judged.
    assert storage.output_files(str(out), "dead_letter") == []
    finished = stage_checkpoint_counts(str(out))
    assert finished["sample"] == PROBLEMS
    assert 1 <= finished["monte_carlo"] + finished["judge"] < 2 * 2 * PROBLEMS
    # Monte Carlo follows the judge (consensus-guided): stages with no finished key are left
    # out of the message.
    named = ", ".join(f"{stage} {finished[stage]}" for stage in ("sample", "monte_carlo", "judge")
                      if finished[stage])
    assert f"Finished keys per stage ({named}" in err

    monkeypatch.delenv(DIE_AFTER_ENV)
    manifest = load_manifest(manifest_file)
    resumed = run_job(manifest, out_dir=str(out))
    assert_reconciled(resumed, str(out), rows_in=PROBLEMS)
    counters = resumed.stats["counters"]
    assert counters["problems_resumed"] == PROBLEMS
    assert counters.get("problems_labelled", 0) == 0
    # Nothing finished was computed again; the rest was (one key per labelled solution).
    labelled = sum(1 for _ in storage.iter_rows(str(out), "trajectories")) + sum(
        1 for row in storage.iter_rows(str(out), "rejected") if not row["policy_truncated"])
    for stage in ("monte_carlo", "judge"):
        assert counters.get(f"stage_{stage}_resumed", 0) == finished[stage]
        assert counters.get(f"stage_{stage}_computed", 0) == labelled - finished[stage]
    # The same dataset as a run that never failed.
    clean = run_job(manifest, out_dir=str(tmp_path / "clean"))
    assert dataset_rows(str(out)) == dataset_rows(str(tmp_path / "clean"))
    assert clean.info["rows"] == resumed.info["rows"]


def test_engine_died_error_is_not_an_engine_error():
    # An EngineError dead-letters one problem; a dead engine must stop the job instead.
    from steplabel.engines.base import EngineDiedError, EngineError

    assert not issubclass(EngineDiedError, EngineError)


def test_job_error_for_a_dead_engine_names_the_checkpoints(tmp_path, monkeypatch):
    from steplabel.schemas.manifest import load_manifest

    manifest = load_manifest(scripted_manifest_file(tmp_path))
    monkeypatch.setenv(DIE_AFTER_ENV, "1")  # dies at its first request: nothing finished
    with pytest.raises(JobError, match=r"an engine died: scripted engine died .* Finished "
                                       r"keys per stage \(none\) are checkpointed"):
        run_job(manifest, out_dir=str(tmp_path / "out"))

