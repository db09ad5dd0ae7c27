"""Run programs in a sandbox pool as an unprivileged user (used by test_sandbox_unprivileged).

``python unprivileged_sandbox.py`` reads a JSON job on stdin: ``programs`` (name -> [program,
tests, force]), ``limits`` (SandboxLimits fields), ``drop`` (a uid to become before anything
starts: the test runs as root, the sandbox must not) and ``probe_writable`` (paths whose
writability to that uid is reported, outside the sandbox: the control that shows the audit
hook alone keeps the programs from them) and ``busy`` (how many idle processes that uid
runs meanwhile, as a pipeline's threads would be: the process limit must not count them
against a program). It prints one JSON object: the uid it ran as, the
interpreter the workers use, the pool's isolation, each program's result, or ``skip`` with a
reason when no interpreter is usable by the dropped uid.
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict

from steplabel.annotators.sandbox import SandboxLimits, SandboxPool

#: Interpreters a worker may use once the uid dropped: this one (may be under a private home,
#: unreadable to the dropped uid), then the system's (the worker is standard library only).
CANDIDATES = (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3")


def usable_python() -> str | None:
    """The first interpreter (3.10 or newer: the worker reads ``sys.stdlib_module_names``) the
    current uid can start, else None."""
    for python in CANDIDATES:
        if not os.access(python, os.X_OK):
            continue
        try:
            done = subprocess.run(
                [python, "-I", "-S", "-c",
                 "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"],
                env={}, capture_output=True, timeout=60)
        except OSError:
            continue
        if done.returncode == 0:
            return python
    return None


def main() -> None:
    job = json.loads(sys.stdin.read())
    if job.get("drop") is not None:
        uid = int(job["drop"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    answer: dict = {"mode": job.get("mode"), "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                    "writable": {p: os.access(p, os.W_OK) for p in job.get("probe_writable", [])}}
    python = usable_python()
    if python is None:
        answer["skip"] = (f"no Python 3.10+ interpreter that uid {os.getuid()} can start "
                          f"(tried {', '.join(CANDIDATES)})")
        print(json.dumps(answer))
        return
    answer["python"] = python
    busy = [subprocess.Popen(["sleep", "600"], env={"PATH": "/usr/bin:/bin"})
            for _ in range(int(job.get("busy", 0)))]
    pool = SandboxPool(size=1, python=python)
    try:
        answer["isolation"] = pool.isolation
        limits = SandboxLimits(**job["limits"])
        answer["results"] = {
            name: asdict(pool.run(program, tests, limits, force=force or None))
            for name, (program, tests, force) in job["programs"].items()}
    finally:
        pool.close()
        for process in busy:
            process.kill()
            process.wait()
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
