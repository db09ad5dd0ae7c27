from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def portable_services(tmp_path_factory):
    """Beam's job service and a worker pool on free ports, for ``--runner portable`` tests
    (started once per session; the SDK workers import the tests' scripted engines)."""
    from steplabel.pipelines import services

    state = tmp_path_factory.mktemp("portable-services")
    running = services.start(state, pythonpath=[str(REPO_ROOT / "tests")])
    try:
        yield running
    finally:
        services.stop(state)


@pytest.fixture(autouse=True, scope="module")
def release_engines():
    """Shut down the vLLM engines a test module started in this process (jobs run in-process
    keep their engine pool alive for the process's life; the CLI shuts them down at exit).
    Without it the engine modules' engines pile up: five of them (about 4 GiB each) left no
    memory for the sixth's KV cache."""
    yield
    from steplabel.engines.vllm_engine import shutdown_live_engines

    shutdown_live_engines()
