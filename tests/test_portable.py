"""``--runner portable``: the same manifest gives the same dataset on the local runner and on
Beam's portable runner (job service + SDK workers from a separate worker pool, on this
machine), byte for byte, with the same content hash: although each SDK worker has its own
engine whose prefix-cache hits depend on what it served before, those hits are run metrics,
on no row."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from steplabel.dataset import storage
from steplabel.pipelines.job import JobError, run_job
from steplabel.pipelines.launch import plan_launch
from steplabel.pipelines.runners import runner_options
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import manifest_from_dict
from steplabel.schemas.records import OUTPUTS

pytestmark = pytest.mark.pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE = str(REPO_ROOT / "jobs" / "runners" / "portable.yaml")
#: Its prefix-cache hits depend on what the same engine served before, as vLLM's do.
SCRIPTED = {"kind": "custom", "factory": "fakes:arithmetic_engine"}

BAD_LINES = [
    b"{not json",
    b'{"id": "m1", "question": "What is 1 + 1?"}',
    b'\xff\xfe{"id": "u1"}',
    b'{"id": "p0", "question": "What is 0 + 2?", "answer": "2"}',  # exact duplicate of p0
    b'{"id": "p1", "question": "What is 9 + 9?", "answer": "18"}',  # conflicting duplicate
]


def write_problems(path: Path, count: int) -> Path:
    with open(path, "wb") as handle:
        for i in range(count):
            record = {"id": f"p{i}", "question": f"What is {i} + {i + 2}?",
                      "answer": str(2 * i + 2)}
            handle.write(json.dumps(record).encode() + b"\n")
        for line in BAD_LINES:
            handle.write(line + b"\n")
    return path


def manifest_for(source: Path, runner: dict, engine: dict = SCRIPTED):
    return manifest_from_dict({
        "name": "portable",
        "seed": 5,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": engine},
        "policy": {"samples": 3},
        "monte_carlo": {"rollouts": 4},
        "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 3},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 3, **runner},
    })


def shards(out: str) -> dict[str, dict[str, bytes]]:
    return {output: {Path(path).name: Path(path).read_bytes()
                     for path in storage.output_files(out, output)} for output in OUTPUTS}


def rows(out: str) -> dict[str, list[dict]]:
    """Every output's rows in shard order."""
    return {output: [row for path in storage.output_files(out, output)
                     for row in pq.read_table(path).to_pylist()] for output in OUTPUTS}


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("local")
    source = write_problems(base / "problems.jsonl", 8)
    out = str(base / "out")
    result = run_job(manifest_for(source, {}), out_dir=out)
    assert result.stats["reconciliation"]["ok"]
    return source, out, result


@pytest.mark.parametrize("workers", [1, 2])
def test_portable_gives_the_local_dataset(local_dataset, portable_services, monkeypatch,
                                          tmp_path, workers):
    source, local_out, local = local_dataset
    for name, value in portable_services.environment().items():
        monkeypatch.setenv(name, value)
    manifest = manifest_for(source, {"runner": "portable", "profile": PROFILE,
                                     "options": {"direct_num_workers": workers}})
    out = str(tmp_path / "portable")
    result = run_job(manifest, out_dir=out)

    assert (Path(out) / "COMPLETED").exists()
    assert result.info["rows"] == local.info["rows"]
    assert result.stats["reconciliation"] == local.stats["reconciliation"]
    assert result.stats["counters"]["problems_labelled"] == local.stats["counters"][
        "problems_labelled"]
    assert rows(out) == rows(local_out)
    assert shards(out) == shards(local_out)  # same names, same bytes
    assert result.info["content_hash"] == local.info["content_hash"]
    # The SDK workers' engines did serve prompts from their prefix caches: the run's record.
    assert result.stats["run"]["prefix_cache"]["all"]["cached_tokens"] > 0


def test_portable_profile_reads_service_endpoints(monkeypatch):
    manifest = manifest_for(Path("p.jsonl"), {"runner": "portable", "profile": PROFILE})
    monkeypatch.setenv("STEPLABEL_JOB_ENDPOINT", "localhost:1234")
    monkeypatch.setenv("STEPLABEL_WORKER_POOL", "localhost:5678")
    args = runner_options(manifest.runner)
    assert "--job_endpoint=localhost:1234" in args
    assert "--environment_config=localhost:5678" in args
    assert "--environment_type=EXTERNAL" in args
    # the state stream's deadline: Beam's default (300 s) fails every job longer than that
    assert "--job_server_timeout=604800" in args
    monkeypatch.delenv("STEPLABEL_WORKER_POOL")
    with pytest.raises(ConfigError, match="STEPLABEL_WORKER_POOL"):
        runner_options(manifest.runner)


def test_portable_workers_never_outnumber_accelerators(monkeypatch, tmp_path):
    monkeypatch.setenv("STEPLABEL_JOB_ENDPOINT", "localhost:1234")
    monkeypatch.setenv("STEPLABEL_WORKER_POOL", "localhost:5678")
    manifest = manifest_from_dict({
        "name": "copies", "source": {"kind": "jsonl", "path": "p.jsonl"},
        "models": {"policy": {"kind": "vllm", "model": "embedded"}},
        "runner": {"runner": "portable", "profile": PROFILE,
                   "options": {"direct_num_workers": 2}}})
    with pytest.raises(JobError, match="portable runner has 2 SDK workers"):
        plan_launch(manifest, out_dir=str(tmp_path / "out"))


@pytest.mark.parametrize("kind", ["parquet", "hf"])
def test_portable_workers_read_every_source_kind(portable_services, monkeypatch, tmp_path, kind):
    """Parquet (ReadFromParquet) and a ``datasets`` folder (opened by a worker) read by the
    SDK workers; the same dataset as the local runner's."""
    from test_launcher import write_source

    path = write_source(kind, tmp_path / "in", 6)
    for name, value in portable_services.environment().items():
        monkeypatch.setenv(name, value)
    source = {"kind": kind, "path": str(path)}
    base = {"name": "kinds", "seed": 1, "source": source, "models": {"policy": SCRIPTED},
            "policy": {"samples": 2}, "monte_carlo": {"rollouts": 2}}
    local = run_job(manifest_from_dict({**base, "runner": {"num_shards": 2}}),
                    out_dir=str(tmp_path / "local"))
    portable = run_job(manifest_from_dict({**base, "runner": {
        "num_shards": 2, "runner": "portable", "profile": PROFILE,
        "options": {"direct_num_workers": 2}}}), out_dir=str(tmp_path / "portable"))
    assert portable.stats["reconciliation"] == local.stats["reconciliation"]
    assert portable.stats["reconciliation"]["problems_in"] == 6
    assert rows(str(tmp_path / "portable")) == rows(str(tmp_path / "local"))
    assert portable.info["content_hash"] == local.info["content_hash"]


def test_services_script_starts_and_stops(tmp_path):
    import os
    import socket
    import subprocess

    from steplabel.pipelines import services

    env = {**os.environ, "STATE_DIR": str(tmp_path / "state")}
    script = str(REPO_ROOT / "scripts" / "portable_services.sh")
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in started.stdout.splitlines())
    running = services.load(tmp_path / "state")
    assert exports == running.environment()

    def listening(endpoint: str) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("localhost", int(endpoint.split(":")[1]))) == 0

    assert listening(running.job_endpoint) and listening(running.worker_pool)
    stopped = subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not listening(running.job_endpoint) and not listening(running.worker_pool)
    for pid in (running.job_service_pid, running.worker_pool_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert services.load(tmp_path / "state") is None
