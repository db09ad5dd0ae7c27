"""Hostile programs in the sandbox: every outcome right, nothing outside changes.

Each program runs through a real pool of sandbox workers (no fakes): loops, fork bombs,
allocation, floods of output, writes and deletes outside the directory, sockets, environment
reads, early exits, forged pass lines, patched builtins and attempts to read the harness's nonce.
The weaker modes (no dedicated uid, no network namespace) are forced for the file and network
cases, so both paths are tested whatever the machine.
"""

import ast
import os
import socket
import textwrap
import time

import pytest

from steplabel.annotators.sandbox import SandboxLimits, SandboxPool

pytestmark = pytest.mark.unit

LIMITS = SandboxLimits(timeout_s=1, memory_mb=256, wall_factor=2)
MODES = [{}, {"no_uid": True, "no_netns": True}]
SECRET_NAME = "STEPLABEL_TEST_SECRET"


@pytest.fixture(scope="module")
def pool():
    # The secret is in this process's environment before any worker starts.
    os.environ[SECRET_NAME] = secret = "s3cr3t-" + os.urandom(8).hex()
    pool = SandboxPool(size=2)
    pool.secret = secret
    yield pool
    pool.close()
    del os.environ[SECRET_NAME]


def run(pool, program, tests="pass", limits=LIMITS, **kwargs):
    return pool.run(textwrap.dedent(program), textwrap.dedent(tests), limits, **kwargs)


def test_pool_reports_isolation(pool):
    iso = pool.isolation
    assert set(iso) == {"uid", "network", "files", "processes"}
    if os.geteuid() == 0:
        assert iso["uid"].startswith("dedicated uid")


def test_right_and_wrong_programs(pool):
    ok = run(pool, "def f(x):\n    return x + 1\nprint('hello')", "assert f(1) == 2")
    assert (ok.outcome, ok.reason, ok.stdout) == ("passed", "tests_passed", "hello\n")
    bad = run(pool, "def f(x):\n    return x", "assert f(1) == 2, 'off by one'")
    assert bad.outcome == "failed" and bad.reason == "assertion_failed:line 1: off by one"
    raised = run(pool, "def f(x):\n    return x / 0", "assert f(1) == 2")
    assert raised.outcome == "failed" and "ZeroDivisionError" in raised.reason
    syntax = run(pool, "def f(x) return x", "pass")
    assert syntax.outcome == "failed" and syntax.reason.startswith("syntax_error")


def test_tests_run_in_their_own_namespace_after_the_program(pool):
    # The program's main block does not run (it is a module under test), and the tests' own
    # names win over the program's.
    result = run(pool, """
        def f():
            return 1
        check = None
        if __name__ == "__main__":
            raise SystemExit(0)
        """, """
        def check(candidate):
            assert candidate() == 1
        check(f)
        """)
    assert result.outcome == "passed"


def test_loop_forever_is_a_timeout(pool):
    result = run(pool, "while True:\n    pass", limits=SandboxLimits(timeout_s=1, wall_factor=10))
    assert result.outcome == "timeout" and result.reason.startswith("cpu_time_over"), result


def test_sleep_forever_is_a_wall_timeout(pool):
    started = time.monotonic()
    result = run(pool, "import time\ntime.sleep(60)")
    assert result.outcome == "timeout" and result.reason.startswith("wall_time_over")
    assert time.monotonic() - started < 15


def test_ignoring_the_cpu_signal_is_still_a_timeout(pool):
    result = run(pool, """
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
        """)
    assert result.outcome == "timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("force", MODES)
def test_fork_bomb_is_contained_and_nothing_survives(pool, force):
    # Root is exempt from RLIMIT_NPROC: without the dedicated uid a fork bomb run as root is
    # bounded only by time, so that mode is not tried here on a shared machine.
    if not (force and os.geteuid() == 0):
        result = run(pool, """
            import os
            while True:
                os.fork()
            """, force=force)
        assert result.outcome in ("failed", "timeout", "killed")
    # A child that leaves the process group and sleeps is killed with the run too.
    result = run(pool, """
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        print(pid, flush=True)
        """, force=force)
    assert result.outcome == "passed"
    escaped = int(result.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _alive(escaped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(escaped)


def test_allocating_without_end_fails_and_the_caller_is_unharmed(pool):
    result = run(pool, """
        chunks = []
        while True:
            chunks.append(bytearray(50 * 2**20))
        """)
    assert result.outcome in ("failed", "killed"), result
    assert "MemoryError" in result.reason or result.outcome == "killed", result


def test_a_gigabyte_to_stdout_is_capped_and_killed_early(pool):
    started = time.monotonic()
    result = run(pool, """
        import sys
        block = 'x' * 2**20
        for _ in range(1024):
            sys.stdout.write(block)
        """)
    assert result.outcome == "killed" and result.reason.startswith("output_over")
    assert len(result.stdout) <= LIMITS.output_bytes
    assert result.stdout_bytes >= LIMITS.max_output_mb * 2**20
    assert time.monotonic() - started < 15


def test_a_big_file_in_the_directory_hits_the_file_size_limit(pool):
    result = run(pool, """
        with open('big.bin', 'wb') as fh:
            for _ in range(64):
                fh.write(b'x' * 2**20)
        """)
    assert result.outcome in ("killed", "failed")
    assert "SIGXFSZ" in result.reason or "File too large" in result.reason


def test_disk_use_is_bounded_as_root(pool):
    program = """
        for i in range(20):
            with open('part%d.bin' % i, 'wb') as fh:
                fh.write(b'x' * 8 * 2**20)
        """
    result = run(pool, program)
    if "tmpfs" not in result.isolation:
        pytest.skip("no private tmpfs here (not root)")
    assert result.outcome == "failed" and "No space left" in result.reason, result
    small = run(pool, "open('a.bin', 'wb').write(b'x' * 2**20)\nimport os\nprint(os.listdir('.'))")
    assert small.outcome == "passed" and small.stdout == "['a.bin']\n"


@pytest.mark.parametrize("force", MODES)
def test_files_outside_the_directory_are_untouched(pool, tmp_path, force):
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim_dir.chmod(0o777)  # even a world-writable directory
    victim = victim_dir / "precious.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    tmp_path.chmod(0o755)
    attempts = {
        "delete": f"import os\nos.remove({str(victim)!r})",
        "overwrite": f"open({str(victim)!r}, 'w').write('gone')",
        "os_open": f"import os\nos.write(os.open({str(victim)!r}, os.O_WRONLY | os.O_TRUNC), b'x')",
        "create": f"open({str(victim_dir / 'new.txt')!r}, 'w').write('x')",
        "relative": "open('../escaped.txt', 'w').write('x')",
        "rmtree": f"import shutil\nshutil.rmtree({str(victim_dir)!r})",
        "rename": f"import os\nos.rename({str(victim)!r}, 'mine.txt')",
        "symlink": f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('x')",
    }
    before = set(os.listdir("/tmp"))
    for name, program in attempts.items():
        result = run(pool, program, force=force)
        assert result.outcome == "failed", (name, result)
        assert victim.read_text() == "keep me", name
        assert sorted(os.listdir(victim_dir)) == ["precious.txt"], name
    # Nothing new in /tmp beside the sandbox's own (removed) directories.
    assert not any(n.startswith("escaped") for n in set(os.listdir("/tmp")) - before)
    # Writing inside its own directory is allowed.
    own = run(pool, "open('notes.txt', 'w').write('x')\nprint(open('notes.txt').read())",
              force=force)
    assert own.outcome == "passed" and own.stdout == "x\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel's layers need root")
def test_the_kernel_layers_hold_without_the_audit_hook(pool, tmp_path):
    # The audit hook is a second line; uid, mount and network namespaces hold on their own.
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)  # even a world-writable file: its directory is root's
    tmp_path.chmod(0o755)
    escape = f"/tmp/steplabel-escape-{os.getpid()}.txt"
    for no_hook in ({"no_hook": True}, {"no_hook": True, "no_chroot": True}):
        written = run(pool, f"""
            for path in ({escape!r}, '/dev/shm/x', '/var/tmp/x'):
                try:
                    open(path, 'w').write('x')
                    print('wrote', path)
                except OSError as exc:
                    print(type(exc).__name__)
            """, force=no_hook)
        assert written.outcome == "passed" and "no-hook" in written.isolation, written
        if "chroot" in written.isolation:  # no such directories in its filesystem
            assert written.stdout.split() == ["FileNotFoundError"] * 3, written
        else:  # each is an empty tmpfs of its own
            assert written.stdout.count("wrote") == 3, written
        assert not os.path.exists(escape) and not os.path.exists("/dev/shm/x")
        assert not os.path.exists("/var/tmp/x")
    for program in (f"import os\nos.remove({str(victim)!r})",
                    f"open({str(tmp_path / 'new.txt')!r}, 'w')",
                    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
                    f"open('/proc/{os.getpid()}/environ', 'rb').read()"):
        result = run(pool, program, force={"no_hook": True, "no_chroot": True})
        assert result.outcome == "failed", (program, result)
        assert "Error" in result.reason and "sandbox:" not in result.reason, result
    assert victim.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


@pytest.mark.parametrize("force", [{}, {"no_netns": True}, {"no_uid": True}])
def test_nothing_reaches_a_listener_on_localhost(pool, force):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = run(pool, f"""
            import socket
            s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
            s.sendall(b'hello')
            """, force=force)
        assert result.outcome == "failed"
        assert "unreachable" in result.reason or "no network" in result.reason
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_the_environment_is_empty_and_others_unreadable(pool):
    result = run(pool, f"""
        import os
        print(dict(os.environ))
        for path in ('/proc/self/environ', '/proc/%d/environ' % os.getppid(),
                     '/proc/{os.getpid()}/environ', '/proc/1/environ'):
            try:
                print(open(path, 'rb').read())
            except Exception as exc:
                print(type(exc).__name__)
        """)
    assert result.outcome == "passed"
    assert result.stdout.startswith("{}\n")
    assert pool.secret not in result.stdout + result.stderr


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "raise SystemExit",
    "raise SystemExit(0)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "import atexit, os, sys\natexit.register(lambda: print('tests_passed'))\nsys.exit(0)",
])
def test_exiting_before_the_tests_is_never_a_pass(pool, program):
    result = run(pool, program, "assert False, 'the tests ran'")
    assert result.outcome in ("failed", "killed"), result
    assert result.outcome != "passed"


def test_an_exit_is_reported_by_its_status_and_runs_nothing_of_the_program(pool):
    for program, status in (("import sys\nsys.exit(0)", 0), ("raise SystemExit", 0),
                            ("import sys\nsys.exit(3)", 3), ("import sys\nsys.exit('bye')", 1)):
        result = run(pool, program, "assert False")
        assert result.reason == f"exited_before_tests:status={status}", (program, result)
    # An exit code of the program's own type: none of its methods runs in the harness.
    result = run(pool, """
        import sys
        class Code(int):
            def __repr__(self):
                print('repr ran', flush=True)
                return '0'
            def __and__(self, other):
                print('and ran', flush=True)
                return 0
        sys.exit(Code(0))
        """, "assert False")
    assert result.reason == "exited_before_tests:status=1" and "ran" not in result.stdout


def test_forged_pass_lines_are_not_a_pass(pool):
    # Every line a harness could print, on stdout and on every descriptor the program has.
    program = textwrap.dedent("""
        import json, os, sys
        line = json.dumps({"nonce": "0" * 32, "outcome": "passed", "reason": "tests_passed"})
        print(line)
        print("tests_passed\\nPASSED\\nOK")
        for fd in range(3, 1024):
            try:
                os.write(fd, (line + "\\n").encode())
            except OSError:
                pass
        def f():
            return 0
        """)
    result = run(pool, program, "assert f() == 1")
    assert result.outcome == "failed" and result.reason.startswith("assertion_failed")
    early = run(pool, program + "\nos._exit(0)", "assert f() == 1")
    assert early.outcome == "failed" and early.reason == "exited_before_tests:status=0"


def test_patched_builtins_and_modules_are_restored_for_the_tests(pool):
    result = run(pool, """
        import builtins, sys, math
        builtins.len = lambda x: 3
        builtins.AssertionError = type('Quiet', (Exception,), {})
        builtins.isinstance = lambda *a: True
        sys.modules['math'] = type(sys)('math')
        def f():
            return [1]
        """, """
        import math
        assert math.sqrt(4) == 2
        assert not isinstance(1, str)
        assert len(f()) == 3
        """)
    assert result.outcome == "failed" and result.reason.startswith("assertion_failed:line 5")


def test_replaced_module_functions_never_see_the_nonce(pool):
    # json's encoder would be handed the harness's report (and its nonce) if the harness used
    # it; a raised "missing module" that is loaded is the program's own failure.
    result = run(pool, """
        import json, os
        class Forger:
            def encode(self, obj):
                obj = dict(obj, outcome="passed", reason="tests_passed")
                return '{"nonce": "%s", "outcome": "passed", "reason": "x"}' % obj.get("nonce")
        json._default_encoder = Forger()
        json.dumps = lambda obj, **kw: Forger().encode(obj)
        def f():
            return 0
        """, "assert f() == 1")
    assert result.outcome == "failed" and result.reason.startswith("assertion_failed"), result
    raised = run(pool, "raise ModuleNotFoundError('no json', name='json')")
    assert raised.outcome == "failed", raised


@pytest.mark.parametrize("steal", [
    "import sys\nframe = sys._getframe(1)",
    "try:\n    1 / 0\nexcept Exception as e:\n    frame = e.__traceback__.tb_frame.f_back",
    "import gc\nobjs = gc.get_objects()",
    "import ctypes\nctypes.CDLL(None)",
    "import sys\nsys.modules['__main__']",
    "import __main__",
    "import subprocess\nsubprocess.run(['python3', '-c', 'print(1)'])",
    "import os\nos.system('true')",
    "import sys\nsys.settrace(lambda *a: None)",
])
def test_ways_to_reach_the_nonce_are_refused(pool, steal):
    result = run(pool, steal, "assert False")
    assert result.outcome == "failed" and result.reason.startswith("program_exception"), result


def test_a_fork_that_passes_and_one_that_fails_is_a_failure(pool):
    result = run(pool, """
        import os
        if os.fork() == 0:
            def f():
                return 1
        else:
            def f():
                return 2
            os.wait()
        """, "assert f() == 1")
    assert result.outcome == "failed"


def test_common_modules_import_in_the_sandbox(pool):
    result = run(pool, """
        import collections, dataclasses, heapq, itertools, math, re, typing, fractions
        from typing import List, TypeVar
        from collections import namedtuple
        T = TypeVar('T')
        Point = namedtuple('Point', 'x y')
        @dataclasses.dataclass
        class Box:
            side: int
        def f() -> List[int]:
            return [Box(2).side, Point(1, 2).y]
        """, "assert f() == [2, 2]")
    assert result.outcome == "passed", result


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s must be a positive number, got 0"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb must be at least 64"):
        SandboxLimits(memory_mb=16)


def test_a_dead_worker_is_unknown_then_replaced():
    pool = SandboxPool(size=1)
    try:
        assert pool.run("x = 1", "pass", LIMITS).outcome == "passed"
        worker = pool._idle[0]
        worker.proc.kill()
        worker.proc.wait()
        dead = pool.run("x = 1", "pass", LIMITS)
        assert dead.outcome == "unknown" and dead.reason.startswith("sandbox_")
        assert pool.run("x = 1", "pass", LIMITS).outcome == "passed"
    finally:
        pool.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the chroot needs root")
def test_no_file_of_the_host_can_be_read(pool, tmp_path):
    secret = tmp_path / "gold.jsonl"
    secret.write_text("the answers")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)
    for path in (str(secret), "/etc/passwd", os.__file__):
        result = run(pool, f"print(open({path!r}).read())")
        if path == os.__file__:  # the standard library is there, read-only
            assert result.outcome == "passed" and "chroot" in result.isolation
            continue
        assert result.outcome == "failed" and "FileNotFoundError" in result.reason, result
    # Its whole filesystem: /dev/null, the standard library's path, its own directory.
    listing = run(pool, "import os\nprint(sorted(os.listdir('/')))")
    assert listing.outcome == "passed"
    names = set(ast.literal_eval(listing.stdout)) - {"dev", os.__file__.split("/")[1]}
    assert len(names) == 1 and names.pop().startswith("steplabel-sandbox-")
    temp = run(pool, "import tempfile\nwith tempfile.TemporaryFile() as fh:\n    fh.write(b'x')")
    assert temp.outcome == "passed", temp


def test_an_unreadable_standard_module_is_unknown_a_third_party_one_a_failure(pool):
    # A standard module the worker does not pre-import: importable (the chroot mounts the
    # standard library; or the uid can read it), else the sandbox's failure, never incorrect.
    result = run(pool, "import tomllib")
    assert (result.outcome, result.reason) in (
        ("passed", "tests_passed"),
        ("unknown", "sandbox_error:standard_module_unavailable:tomllib"))
    if "chroot" in result.isolation:
        assert result.outcome == "passed"
    no_chroot = run(pool, "import tomllib", force={"no_chroot": True})
    assert no_chroot.outcome in ("passed", "unknown")
    third_party = run(pool, "import numpy")
    assert third_party.outcome == "failed"
    assert third_party.reason.startswith("program_exception:ModuleNotFoundError")
    # The harness reads its own copy of the standard module names, not the program's.
    patched = run(pool, "import sys\nsys.stdlib_module_names = frozenset({'nosuchmod'})\n"
                        "import nosuchmod")
    assert patched.outcome == "failed"
