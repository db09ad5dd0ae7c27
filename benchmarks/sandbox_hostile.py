"""The hostile-program table: each program's verdict through the python_tests grader, in the
full sandbox and in the weaker mode (no dedicated uid, no network namespace: what a non-root
worker gets), and whether anything outside changed.

Usage: python benchmarks/sandbox_hostile.py
Writes benchmarks/results/sandbox_hostile.json and prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

from steplabel.annotators.python_tests import PythonTestsGold, grade_from_result, harness_tests
from steplabel.annotators.sandbox import SandboxLimits, SandboxPool

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = PythonTestsGold("def check(candidate):\n    assert candidate(2) == 4\n", "square")
RIGHT = "def square(x):\n    return x * x\n"


def programs(victim: Path, port: int) -> dict[str, str]:
    return {
        "right program": RIGHT,
        "wrong program": "def square(x):\n    return x + x + 1\n",
        "loop forever": "while True:\n    pass\n",
        "sleep forever": "import time\ntime.sleep(3600)\n",
        "fork without end": "import os\nwhile True:\n    os.fork()\n",
        "allocate without end": "xs = []\nwhile True:\n    xs.append(bytearray(2**26))\n",
        "1 GB to stdout": "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)\n",
        "delete a file outside": f"import os\nos.remove({str(victim)!r})\n" + RIGHT,
        "write a file outside": f"open({str(victim)!r}, 'w').write('gone')\n" + RIGHT,
        "write to /tmp": "open('/tmp/steplabel-escaped.txt', 'w').write('x')\n" + RIGHT,
        "connect to 127.0.0.1 listener": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + RIGHT),
        "read environment": (
            "import os\nassert 'STEPLABEL_SECRET' not in os.environ, 'leak'\n"
            "assert not open('/proc/%d/environ' % os.getppid(), 'rb').read()\n" + RIGHT),
        "sys.exit(0) before tests": "import sys\nsys.exit(0)\n",
        "os._exit(0) before tests": "import os\nos._exit(0)\n",
        "raise SystemExit": "raise SystemExit\n",
        "print a fake pass line": (
            "import json\nprint(json.dumps({'outcome': 'passed', 'reason': 'tests_passed'}))\n"
            "print('All tests passed')\ndef square(x):\n    return 0\n"),
        "patch builtins": (
            "import builtins\nbuiltins.abs = lambda x: 4\nbuiltins.AssertionError = Warning\n"
            "def square(x):\n    return abs(x)\n"),
        "steal the nonce (frames)": "import sys\nprint(sys._getframe(1).f_locals)\n" + RIGHT,
        "spawn a shell": "import os\nos.system('touch /tmp/steplabel-escaped.txt')\n" + RIGHT,
    }


def main() -> None:
    os.environ["STEPLABEL_SECRET"] = "s3cr3t"
    pool = SandboxPool(size=2)
    limits = SandboxLimits(timeout_s=2, memory_mb=256, wall_factor=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        victim_dir = Path(tmp) / "victim"
        victim_dir.mkdir(mode=0o777)
        victim_dir.chmod(0o777)
        Path(tmp).chmod(0o755)
        victim = victim_dir / "precious.txt"
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        for name, program in programs(victim, listener.getsockname()[1]).items():
            for mode, force in (("full", {}), ("weaker", {"no_uid": True, "no_netns": True})):
                if name == "fork without end" and force and os.geteuid() == 0:
                    rows.append({"program": name, "mode": mode, "verdict": "not run",
                                 "reason": "root is exempt from RLIMIT_NPROC without a uid"})
                    continue
                victim.write_text("keep me")
                victim.chmod(0o666)
                result = pool.run(program, harness_tests(TESTS), limits, force=force)
                grade = grade_from_result(result)
                try:
                    listener.accept()[0].close()
                    reached = True
                except BlockingIOError:
                    reached = False
                escaped = Path("/tmp/steplabel-escaped.txt")
                outside = (victim.exists() and victim.read_text() == "keep me"
                           and not escaped.exists() and not reached)
                escaped.unlink(missing_ok=True)
                rows.append({"program": name, "mode": mode, "verdict": grade.verdict,
                             "outcome": result.outcome, "reason": result.reason[:70],
                             "outside_unchanged": outside, "isolation": result.isolation,
                             "wall_s": result.wall_s})
        listener.close()
    pool.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_hostile.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| program | mode | verdict | outcome | reason | outside unchanged |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['program']} | {row['mode']} | {row['verdict']} | {row.get('outcome', '')} "
              f"| `{row['reason']}` | {row.get('outside_unchanged', '')} |")


if __name__ == "__main__":
    main()
