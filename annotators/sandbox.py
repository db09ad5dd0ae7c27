"""Running untrusted Python programs against tests, outside the pipeline's process.

Model-written code never runs in a pipeline process. A :class:`SandboxPool` keeps a few sandbox
workers (``annotators/sandbox_worker.py``, started as ``python -I -S`` with an empty
environment, in a session of their own). A worker pre-imports common standard modules once and
then forks one child per program, so a run costs a fork, not an interpreter start (measured in
``benchmarks/sandbox_throughput.py``). Each child, before it runs a line of the program:

- is the leader of a new process group, and is killed with everything it started when it
  exits or at the wall limit (``killpg``; the worker is a subreaper, so a descendant that left
  the group comes back to it as an orphan and is killed too);
- enters a new network namespace (only a down loopback: connecting anywhere fails);
- gets rlimits: CPU seconds (``timeout_s``, then SIGKILL a second later), address space
  (``memory_mb``), processes (``max_processes``), file size (``max_file_mb``), no core files,
  64 open files;
- runs in a fresh empty directory, with an empty environment, stdin ``/dev/null``, stdout and
  stderr captured up to ``output_bytes`` each (the rest is read and dropped, and counted; past
  ``max_output_mb`` together the program is killed: draining a flood costs the worker as much
  CPU as writing it costs the program);
- drops to a dedicated uid of its worker when the worker runs as root (``UID_BASE`` + the
  worker's pid: no file of the host is writable to it beyond world-writable places, and
  ``RLIMIT_NPROC`` counts only its own processes), with ``no_new_privs`` and not dumpable;
  and (root) gets a mount namespace where the temp dirs, its own directory among them, are
  empty tmpfs mounts (``max_disk_mb`` for its directory's, 1 MB for the others), then is
  chrooted into that tmpfs, which holds only its directory, ``/dev/null`` and the standard
  library bind-mounted read-only at its own path: what it writes is bounded and never reaches
  the host, and no file of the host (a dataset's gold answers, say) can be read;
- has an audit hook that refuses frame and gc introspection, ctypes, new interpreters
  (``exec``/``spawn``/``subprocess``) and reading ``/proc``.

Where the platform does not allow a part, the worker says so at start (:attr:`SandboxPool.isolation`)
and each result names what it ran under (``SandboxResult.isolation``): without root there is no
dedicated uid, mount namespace or chroot, so writes outside the directory are refused by the
audit hook only, the program can read every file the pipeline's user can, and nothing bounds its
disk use beyond ``max_file_mb`` per file. The network namespace is then entered inside a new
user namespace, where the kernel allows unprivileged ones; ``RLIMIT_NPROC`` then counts the
program's own tasks. Without a user namespace (a container whose seccomp profile refuses them)
sockets are refused by the audit hook only, and ``RLIMIT_NPROC`` counts every task of the
user: the child sets it to the user's tasks at the start of the run plus ``max_processes``, so
that the pipeline's own threads never make a right program's first thread fail (as root
without the uid it does not bind at all). ``tests/test_sandbox_unprivileged.py`` runs the
hostile programs as uid 65534. Root without ``CAP_SYS_ADMIN`` (a container that does not grant
it) keeps the dedicated uid but gets neither a mount nor a network namespace (the worker
probes for both): no chroot, and sockets refused by the audit hook only. CPython's audit hooks are not a security boundary on their own
(a program that finds a hole around them reaches whatever its uid can), so those modes are
weaker, and reported as such.

A pass cannot be forged: the child runs the program in a namespace, then restores the builtins
and ``sys.modules`` entries the program replaced, then runs the tests in a fresh namespace that
sees the program's definitions. Only after the tests returned does it write a line carrying a
random nonce of the job to a pipe; the worker trusts no other evidence of a pass. The nonce is
in the child's memory (a local of the harness, formatted with built-in methods only, so no
function the program could replace ever sees it); what keeps the program from reading it is the
audit hook (no frames, gc, ctypes, ``/proc/self/mem``, new interpreters) and a non-dumpable
process, so a hole in the hook would be a way to forge a pass, though not out of the sandbox. An exit before
the tests (``sys.exit(0)``, ``os._exit(0)``, ``raise SystemExit``), a printed line, or a
replaced builtin is therefore a failure. What the sandbox cannot rule out: a program that
returns objects built to satisfy the tests' comparisons (an ``__eq__`` that is always true), or
that patches a module's attributes the tests use; those are answers, wrong ones, that tests
were written to catch.
"""

from __future__ import annotations

import atexit
import json
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

Outcome = Literal["passed", "failed", "timeout", "killed", "unknown"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "timeout", "killed", "unknown")
WORKER_PATH = Path(__file__).with_name("sandbox_worker.py")
#: How long a new worker may take to start and pre-import (wall seconds, a loaded machine).
START_TIMEOUT_S = 60.0
#: Extra wall seconds the pool waits for a worker's answer beyond the run's own wall limit.
ANSWER_GRACE_S = 15.0


_LIMIT_FIELDS = ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_disk_mb",
                 "output_bytes", "max_output_mb", "wall_factor")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run. ``timeout_s`` is CPU seconds of the program (rounded up to whole
    seconds by RLIMIT_CPU), so a verdict does not depend on the machine's load; a program that
    sleeps is stopped at ``timeout_s * wall_factor + 1`` wall seconds. That backstop is wide
    because it does depend on load: a program that gets a tenth of a core would reach it
    before its CPU limit (on this shared two-core machine, load 9, a busy loop got 0.7 CPU
    seconds in 3 wall seconds)."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_processes: int = 32
    max_file_mb: int = 16
    max_disk_mb: int = 64
    output_bytes: int = 64 * 1024
    max_output_mb: int = 8
    wall_factor: float = 10.0

    def __post_init__(self) -> None:
        for name in _LIMIT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be at least 64 (the interpreter's own), "
                             f"got {self.memory_mb}")


@dataclass(frozen=True)
class SandboxResult:
    """What a run did. ``outcome``: ``passed`` (the tests returned), ``failed`` (an assert, an
    exception, an exit before the tests), ``timeout`` (CPU or wall limit), ``killed`` (a
    signal other than the time limit's), ``unknown`` (the sandbox could not run it;
    ``reason`` says why). Output is capped; ``*_bytes`` count what was written."""

    outcome: Outcome
    reason: str
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    isolation: str = ""


class _Worker:
    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-I", "-S", str(WORKER_PATH)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={}, start_new_session=True,
            close_fds=True)
        ready = self._read(START_TIMEOUT_S)
        if not ready or not ready.get("ready"):
            self.kill()
            raise OSError("the sandbox worker did not start")
        self.isolation: dict = ready["isolation"]

    def _read(self, timeout_s: float) -> dict | None:
        result: list = []

        def read() -> None:
            stream = self.proc.stdout
            head = stream.read(4)
            if len(head) == 4:
                result.append(json.loads(stream.read(struct.unpack(">I", head)[0])))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        return result[0] if result else None

    def run(self, job: dict, wait_s: float) -> dict | None:
        data = json.dumps(job).encode()
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        return self._read(wait_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:  # a broken pipe flushing what the dead worker never read
                pass


class SandboxPool:
    """A bounded pool of sandbox workers shared by all threads of a process.

    ``size`` workers at most run programs at once (each holds one interpreter of about 20 MB
    and runs one program at a time); callers beyond that wait. Workers start lazily and are
    replaced when one dies or stops answering (that run is ``unknown``)."""

    def __init__(self, size: int = 2, *, python: str | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._python = python or sys.executable
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(size)
        self._isolation: dict | None = None
        atexit.register(self.close)

    @property
    def isolation(self) -> dict:
        """What isolates the programs on this machine (starts a worker if none ran yet)."""
        if self._isolation is None:
            with self._slots:
                worker = self._take()
                self._give(worker)
        return dict(self._isolation or {})

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        worker = _Worker(self._python)
        self._isolation = worker.isolation
        return worker

    def _give(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def run(self, program: str, tests: str, limits: SandboxLimits = SandboxLimits(), *,
            force: dict | None = None) -> SandboxResult:
        """Run ``program``, then ``tests`` (Python source whose asserts must pass) against its
        definitions. ``force`` ({"no_uid": True}, {"no_netns": True}, {"no_private_tmp":
        True}, {"no_chroot": True}, {"no_hook": True}) runs in a weaker mode, for tests of
        those modes."""
        job = {"program": program, "tests": tests, "force": force or {},
               "limits": {k: getattr(limits, k) for k in _LIMIT_FIELDS}}
        wait_s = limits.timeout_s * limits.wall_factor + 1.0 + ANSWER_GRACE_S
        with self._slots:
            try:
                worker = self._take()
            except OSError as exc:
                return SandboxResult("unknown", f"sandbox_unavailable:{exc}")
            try:
                answer = worker.run(job, wait_s)
            except (OSError, ValueError) as exc:
                worker.kill()
                return SandboxResult("unknown", f"sandbox_crashed:{type(exc).__name__}")
            if answer is None:
                worker.kill()
                return SandboxResult("unknown", "sandbox_no_answer")
            self._give(worker)
        fields = {k: answer[k] for k in SandboxResult.__dataclass_fields__ if k in answer}
        result = SandboxResult(**fields)
        if result.outcome not in OUTCOMES:
            return replace(result, outcome="unknown", reason=f"sandbox_bad_outcome:{result.outcome}")
        return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_POOL: SandboxPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool() -> SandboxPool:
    """The process's pool (two workers: this project's machines have two cores)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = SandboxPool()
        return _POOL


def close_shared_pool() -> None:
    """Stop the process's pool, if one started (its workers are killed; a later
    :func:`shared_pool` starts a new one). Also done at exit."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()
