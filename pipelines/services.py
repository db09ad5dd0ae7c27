"""Local services for ``--runner portable``: Beam's job service and a worker pool.

The portable runner submits the pipeline the way a Flink or Spark job server receives it (the
pipeline proto and its artifacts over the Job API), and the job runs on SDK harness processes
started by a separate worker pool (``environment_type=EXTERNAL``) and driven over the Fn API.

    python -m steplabel.pipelines.services start [--state-dir DIR] [--pythonpath P]
    python -m steplabel.pipelines.services stop  [--state-dir DIR]

``start`` picks two free ports, starts both services in their own process groups, waits until
they accept connections and prints ``export STEPLABEL_JOB_ENDPOINT=...`` and ``export
STEPLABEL_WORKER_POOL=...`` lines (``jobs/runners/portable.yaml`` reads both), ``stop`` ends
the two process groups it started. ``scripts/portable_services.sh`` wraps both.

The job service is Beam's ``LocalJobServicer`` with one change: Beam's own job service runs the
job through ``FnApiRunner.run_via_runner_api``, which ignores ``--direct_num_workers`` (only
``FnApiRunner.run`` reads it), so every stage would run on one SDK worker. :class:`_ParallelJob`
passes the option on, so ``direct_num_workers: 2`` asks the worker pool for two SDK worker
processes and splits each stage's input between them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: Environment variables that ``jobs/runners/portable.yaml`` reads.
JOB_ENDPOINT_ENV = "STEPLABEL_JOB_ENDPOINT"
WORKER_POOL_ENV = "STEPLABEL_WORKER_POOL"
STATE_FILE = "services.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortableServices:
    """Two running services: where they listen, their process ids (each leads its own process
    group, with the SDK worker processes it started) and their log files."""

    job_endpoint: str
    worker_pool: str
    job_service_pid: int
    worker_pool_pid: int
    state_dir: str

    def environment(self) -> dict[str, str]:
        return {JOB_ENDPOINT_ENV: self.job_endpoint, WORKER_POOL_ENV: self.worker_pool}

    def beam_args(self, workers: int = 1) -> list[str]:
        """Beam options that submit a job to these services with ``workers`` SDK workers."""
        return ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}",
                "--environment_type=EXTERNAL", f"--environment_config={self.worker_pool}",
                f"--direct_num_workers={workers}"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("localhost", port)) == 0


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log_file: Path,
                    timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"the {what} exited with status {proc.returncode} before "
                               f"listening on port {port}; see {log_file}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {what} did not listen on port {port} within "
                               f"{timeout_s:.0f}s; see {log_file}")
        time.sleep(0.1)


def _python_shim(state: Path) -> Path:
    """A folder whose ``python`` is this Python with its standard output sent to standard error.

    The worker pool starts each SDK worker as ``python -c ...`` with its standard output on a
    pipe that nothing reads: a worker that prints more than a pipe holds (vLLM logs to stdout)
    would block. Through this shim it writes to the pool's log instead.
    """
    folder = state / "bin"
    folder.mkdir(exist_ok=True)
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@" 1>&2\n')
    shim.chmod(0o755)
    return folder


def _spawn(command: list[str], env: dict, log_file: Path) -> subprocess.Popen:
    """A service in its own process group (stopped as a group), its output in ``log_file``."""
    with open(log_file, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start(state_dir: str | Path, *, pythonpath: list[str] = (), timeout_s: float = 60.0
          ) -> PortableServices:
    """Start the job service and the worker pool; record them in ``state_dir/services.json``.

    The worker pool starts SDK workers with the command ``python``, so this Python's ``bin``
    folder goes first on its ``PATH``; ``pythonpath`` is prepended to the workers'
    ``PYTHONPATH`` (modules that pickled functions refer to, such as ``kind: custom``
    engine factories, must be importable there).
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if (state / STATE_FILE).exists():
        raise RuntimeError(f"{state / STATE_FILE} exists: services from {state} may still run; "
                           "stop them first")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_python_shim(state)), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    paths = [str(Path(p).resolve()) for p in pythonpath]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    job_port, pool_port = free_port(), free_port()
    while pool_port == job_port:
        pool_port = free_port()
    started: list[subprocess.Popen] = []
    try:
        job_log, pool_log = state / "job_service.log", state / "worker_pool.log"
        job = _spawn([sys.executable, "-m", "steplabel.pipelines.services", "job-service",
                      "--port", str(job_port), "--staging-dir", str(state / "staging")],
                     env, job_log)
        started.append(job)
        pool = _spawn([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                       "--service_port", str(pool_port)], env, pool_log)
        started.append(pool)
        _wait_listening(job_port, job, "job service", job_log, timeout_s)
        _wait_listening(pool_port, pool, "worker pool", pool_log, timeout_s)
    except BaseException:
        for proc in started:
            _end_group(proc.pid)
        raise
    services = PortableServices(f"localhost:{job_port}", f"localhost:{pool_port}", job.pid,
                                pool.pid, str(state))
    (state / STATE_FILE).write_text(json.dumps(asdict(services), indent=2))
    return services


def load(state_dir: str | Path) -> PortableServices | None:
    file = Path(state_dir) / STATE_FILE
    if not file.exists():
        return None
    return PortableServices(**json.loads(file.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_group(pid: int, timeout_s: float = 10.0) -> None:
    """End the process group led by ``pid`` (a service started by :func:`start` and the SDK
    workers it started): SIGTERM, then SIGKILL after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                # Reap it if it is our child; otherwise just look.
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not _alive(pid):
                    return
            time.sleep(0.1)


def stop(state_dir: str | Path) -> bool:
    """Stop the services recorded in ``state_dir``; False if none were recorded."""
    services = load(state_dir)
    if services is None:
        return False
    for pid in (services.job_service_pid, services.worker_pool_pid):
        _end_group(pid)
    (Path(state_dir) / STATE_FILE).unlink()
    return True


def _job_service(port: int, staging_dir: str | None) -> None:
    """Beam's local job service with :class:`_ParallelJob` (see the module docstring)."""
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class _ParallelJob(local_job_service.BeamJob):
        def _invoke_runner(self):
            self.set_state(beam_job_api_pb2.JobState.RUNNING)
            options = self.pipeline_options()
            runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
            # FnApiRunner.run reads this option; run_via_runner_api (the job service's entry)
            # does not, so we set what FnApiRunner.run would set.
            # Options arrive from the Job API as strings.
            workers = options.view_as(DirectOptions).direct_num_workers
            runner._num_workers = max(1, int(workers or 1))
            return runner.run_via_runner_api(self._pipeline_proto, options)

    logging.basicConfig(level=logging.INFO)
    servicer = local_job_service.LocalJobServicer(staging_dir, beam_job_type=_ParallelJob)
    bound = servicer.start_grpc_server(port)
    log.info("job service listening on port %d", bound)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        servicer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steplabel.pipelines.services",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="start the job service and the worker pool")
    start_cmd.add_argument("--state-dir", default=".portable-services",
                           help="where pids, ports and logs are kept")
    start_cmd.add_argument("--pythonpath", action="append", default=[],
                           help="folder prepended to the SDK workers' PYTHONPATH (repeatable)")
    stop_cmd = sub.add_parser("stop", help="stop the services started from --state-dir")
    stop_cmd.add_argument("--state-dir", default=".portable-services")
    job_cmd = sub.add_parser("job-service", help="run the job service in the foreground")
    job_cmd.add_argument("--port", type=int, required=True)
    job_cmd.add_argument("--staging-dir")
    args = parser.parse_args(argv)
    if args.command == "job-service":
        _job_service(args.port, args.staging_dir)
        return 0
    if args.command == "start":
        services = start(args.state_dir, pythonpath=args.pythonpath)
        for name, value in services.environment().items():
            print(f"export {name}={value}")
        print(f"# logs and pids in {services.state_dir}", file=sys.stderr)
        return 0
    if not stop(args.state_dir):
        print(f"no services recorded in {args.state_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
