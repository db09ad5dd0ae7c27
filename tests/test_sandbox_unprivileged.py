"""The sandbox without root's powers: hostile programs still get the right verdicts.

Without root the sandbox has no dedicated uid, mount namespace or chroot: writes outside the
run's directory are refused by the audit hook alone, ``RLIMIT_NPROC`` counts all the user's
processes, and the network is cut by a network namespace inside a user namespace where the
kernel allows one (else by the audit hook). ``test_sandbox.py`` forces those modes as root;
here the pool really runs as uid/gid 65534 (``nobody``): a subprocess drops to it before it
starts the pool (``tests/unprivileged_sandbox.py``), when the suite runs as root; as any
other user it runs as that user. The files it must not touch are writable to that uid (a
world-writable directory in /tmp): the control shows only the sandbox keeps them intact.

The same programs also run as root without CAP_SYS_ADMIN (``setpriv --bounding-set
-sys_admin``), as in a container that does not grant it (Docker's default): a dedicated uid,
but no mount or network namespace. Before the worker probed for a mount namespace, every run
there was unknown (``unshare(CLONE_NEWNS)`` refused).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HELPER = Path(__file__).with_name("unprivileged_sandbox.py")
NOBODY = 65534
LIMITS = {"timeout_s": 1, "memory_mb": 256, "wall_factor": 2}
SECRET_NAME = "STEPLABEL_TEST_SECRET"
TESTS = "assert f(1) == 2"
#: Idle processes the unprivileged uid runs meanwhile (more than the process limit of a run).
BUSY = 40
ESCAPE_SLEEP = """
import os, time
pid = os.fork()
if pid == 0:
    os.setsid()
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
def f(x):
    return x + 1
"""


def _programs(victim: Path, port: int) -> dict[str, tuple[str, str, dict]]:
    """name -> (program, tests, force); network, file and environment cases in both network
    modes (a namespace where the kernel allows one, and the audit hook alone)."""
    victim_dir = victim.parent
    base = {
        "right": ("def f(x):\n    return x + 1", TESTS),
        "wrong": ("def f(x):\n    return x", TESTS),
        "loop": ("while True:\n    pass", TESTS),
        "sleep": ("import time\ntime.sleep(60)", TESTS),
        "allocate": ("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))", TESTS),
        "flood": ("import sys\nblock = 'x' * 2**20\nfor _ in range(1024):\n"
                  "    sys.stdout.write(block)", TESTS),
        "sys_exit": ("import sys\nsys.exit(0)", TESTS),
        "os_exit": ("import os\nos._exit(0)", TESTS),
        "raise_exit": ("raise SystemExit", TESTS),
        "escape_group": (ESCAPE_SLEEP, TESTS),
    }
    both = {
        "forkbomb": ("import os\nwhile True:\n    os.fork()", TESTS),
        "thread": ("import threading\nt = threading.Thread(target=print, args=('t',))\n"
                   "t.start()\nt.join()\ndef f(x):\n    return x + 1", TESTS),
        "fork_one": ("import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n"
                     "os.waitpid(pid, 0)\ndef f(x):\n    return x + 1", TESTS),
        "overwrite": (f"open({str(victim)!r}, 'w').write('gone')", TESTS),
        "os_open": (f"import os\nos.write(os.open({str(victim)!r}, os.O_WRONLY | os.O_TRUNC),"
                    " b'x')", TESTS),
        "delete": (f"import os\nos.remove({str(victim)!r})", TESTS),
        "create": (f"open({str(victim_dir / 'new.txt')!r}, 'w').write('x')", TESTS),
        "rmtree": (f"import shutil\nshutil.rmtree({str(victim_dir)!r})", TESTS),
        "socket": (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), "
                   "timeout=1)\ns.sendall(b'escaped')", TESTS),
        "environment": ("import os\nprint(dict(os.environ))\ndef f(x):\n    return x + 1",
                        TESTS),
        "own_dir": ("open('notes.txt', 'w').write('x')\nprint(open('notes.txt').read())\n"
                    "def f(x):\n    return x + 1", TESTS),
    }
    programs = {name: (textwrap.dedent(p), t, {}) for name, (p, t) in base.items()}
    for name, (program, tests) in both.items():
        programs[name] = (program, tests, {})
        programs[f"{name}/no_netns"] = (program, tests, {"no_netns": True})
    return programs


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


MODES = ["unprivileged_user", "root_without_sys_admin"]


@pytest.fixture(scope="module", params=MODES)
def unprivileged(request):
    """Run every program through a pool started by an unprivileged user (or by root without
    CAP_SYS_ADMIN); yields its answer, the victim file, the listener and the secret."""
    command = [sys.executable, str(HELPER)]
    drop = NOBODY if os.geteuid() == 0 else None
    if request.param == "root_without_sys_admin":
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv (util-linux)")
        command = ["setpriv", "--bounding-set", "-sys_admin", *command]
        drop = None
    victim_dir = Path(tempfile.mkdtemp(prefix="steplabel-victim-", dir="/tmp"))
    victim_dir.chmod(0o777)  # writable to the unprivileged uid: only the sandbox protects it
    victim = victim_dir / "precious.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    secret = "s3cr3t-" + os.urandom(8).hex()
    job = {"programs": _programs(victim, listener.getsockname()[1]), "limits": LIMITS,
           "drop": drop, "mode": request.param,
           "probe_writable": [str(victim), str(victim_dir)], "busy": BUSY}
    try:
        done = subprocess.run(
            command, input=json.dumps(job), capture_output=True,
            text=True, timeout=600, cwd="/", env={**os.environ, SECRET_NAME: secret})
        if done.returncode != 0 and done.stderr.startswith("setpriv:"):
            pytest.skip(f"setpriv cannot drop CAP_SYS_ADMIN here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        if "skip" in answer:
            pytest.skip(answer["skip"])
        yield answer, victim, listener, secret
    finally:
        listener.close()
        for path in sorted(victim_dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        victim_dir.rmdir()


def _root_mode(answer) -> bool:
    return answer["mode"] == "root_without_sys_admin"


def test_it_really_ran_unprivileged(unprivileged):
    answer, victim, _, _ = unprivileged
    iso = answer["isolation"]
    if _root_mode(answer):  # a dedicated uid, but no namespace
        assert answer["uid"] == 0 and iso["uid"].startswith("dedicated uid")
        assert "no mount namespace" in iso["files"]
        assert iso["network"] == "audit hook blocks sockets (weaker)"
        assert iso["processes"] == "RLIMIT_NPROC per dedicated uid"
        return
    if os.geteuid() == 0:
        assert (answer["uid"], answer["euid"], answer["gid"]) == (NOBODY, NOBODY, NOBODY)
    else:
        assert answer["uid"] == os.getuid()
    assert iso["uid"] == f"same uid {answer['uid']}"
    assert "(weaker)" in iso["files"]
    if iso["network"] == "network namespace":  # inside a user namespace: its own count
        assert iso["processes"] == "RLIMIT_NPROC per user namespace"
    else:
        assert "(weaker)" in iso["processes"]
    # The control: without the sandbox, this uid could write the victim and its directory.
    assert answer["writable"] == {str(victim): True, str(victim.parent): True}


def test_each_result_records_what_isolated_it(unprivileged):
    answer, _, _, _ = unprivileged
    netns = answer["isolation"]["network"] == "network namespace"
    for name, result in answer["results"].items():
        layers = result["isolation"].split("+")
        assert ("uid" in layers) == _root_mode(answer), (name, result["isolation"])
        assert "chroot" not in layers and "tmpfs" not in layers, name
        assert "audit-files" in layers, (name, result["isolation"])
        expected_net = "audit-net" if name.endswith("/no_netns") or not netns else "netns"
        assert expected_net in layers, (name, result["isolation"])


def test_hostile_programs_get_the_right_verdicts(unprivileged):
    answer, _, _, _ = unprivileged
    results = answer["results"]

    def outcome(name):
        return results[name]["outcome"], results[name]["reason"]

    assert outcome("right") == ("passed", "tests_passed")
    assert outcome("wrong")[0] == "failed" and outcome("wrong")[1].startswith("assertion_failed")
    # CPU limit, or the wall limit first on a loaded machine (SandboxLimits says why).
    assert outcome("loop")[0] == "timeout", results["loop"]
    assert outcome("loop")[1] in ("cpu_time_over_1s", "wall_time_over_3s"), results["loop"]
    assert outcome("sleep")[0] == "timeout" and outcome("sleep")[1].startswith("wall_time_over")
    for mode in ("", "/no_netns"):
        # The bomb is stopped by the process limit; a thread or one child is not, however
        # many processes the uid runs besides (BUSY).
        bomb = results["forkbomb" + mode]
        assert bomb["outcome"] in ("failed", "killed", "timeout"), bomb
        for name in ("thread", "fork_one"):
            assert outcome(name + mode) == ("passed", "tests_passed"), results[name + mode]
    assert results["allocate"]["outcome"] in ("failed", "killed"), results["allocate"]
    assert "MemoryError" in outcome("allocate")[1] or outcome("allocate")[0] == "killed"
    assert outcome("flood") == ("killed", "output_over_8MB")
    assert len(results["flood"]["stdout"]) <= 64 * 1024
    for name in ("sys_exit", "os_exit", "raise_exit"):
        assert outcome(name)[0] == "failed", results[name]
        assert outcome(name)[1] == "exited_before_tests:status=0", results[name]


def test_a_process_that_left_the_group_is_killed(unprivileged):
    answer, _, _, _ = unprivileged
    result = answer["results"]["escape_group"]
    assert result["outcome"] == "passed", result
    escaped = int(result["stdout"].split()[0])
    deadline = time.monotonic() + 5
    while _alive(escaped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(escaped)


def test_nothing_outside_changes_and_nothing_reaches_the_listener(unprivileged):
    answer, victim, listener, secret = unprivileged
    results = answer["results"]
    for mode in ("", "/no_netns"):
        for name in ("overwrite", "os_open", "delete", "create", "rmtree"):
            result = results[name + mode]
            assert result["outcome"] == "failed", (name + mode, result)
            assert "PermissionError" in result["reason"], (name + mode, result)
        sock = results["socket" + mode]
        assert sock["outcome"] == "failed", sock
        assert "unreachable" in sock["reason"] or "no network" in sock["reason"], sock
        env = results["environment" + mode]
        assert env["outcome"] == "passed" and env["stdout"].startswith("{}\n"), env
        assert secret not in env["stdout"] + env["stderr"]
        own = results["own_dir" + mode]
        assert own["outcome"] == "passed" and own["stdout"] == "x\n", own
    assert victim.read_text() == "keep me"
    assert sorted(os.listdir(victim.parent)) == ["precious.txt"]
    with pytest.raises(BlockingIOError):
        listener.accept()
