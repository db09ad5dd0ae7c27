"""The sandbox worker: a trusted, stdlib-only server that runs one untrusted program per fork.

Started by :class:`steplabel.annotators.sandbox.SandboxPool` as ``python -I -S <this file>``
with an empty environment; never imported by the project. It pre-imports the standard modules
programs and tests commonly use, then serves jobs read from stdin (4-byte big-endian length +
JSON) and answers on stdout the same way. Per job it forks a child that drops into the sandbox
(its own process group, a new network namespace, rlimits, a fresh empty directory, an unused
uid when the worker runs as root, an audit hook) and runs the program, then the tests in a
fresh namespace. The worker itself never runs untrusted code: it waits, kills at the wall
limit, captures output up to a cap, and reads the verdict from a pipe.

A pass is trusted only when the child's result line carries the job's nonce, which the child
writes after the tests returned; exits, signals and lines without the nonce are never a pass.
"""

import builtins
import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import struct
import sys
import tempfile
import time

# Modules solutions and tests commonly import: loaded once here, so that a run pays no import.
import bisect, collections, copy, datetime, decimal, fractions, functools, hashlib, heapq  # noqa: E401,F401
import itertools, math, operator, random, re, statistics, string, typing  # noqa: E401,F401
import array, cmath, dataclasses, enum, json, numbers, socket, struct, textwrap  # noqa: E401,F401
import time, unicodedata, collections.abc, encodings.idna  # noqa: E401,F401
import base64, binascii, calendar, contextlib, difflib, fnmatch, pprint, queue  # noqa: E401,F401
import subprocess, threading, weakref, zlib  # noqa: E401,F401
# As root a program runs as a uid that may not be able to read the interpreter's own files (a
# standard library under a private home): a standard module not loaded here may then fail to
# import, which is the sandbox's failure (unknown), not the program's.

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
#: Sandbox uids start here (an unused range: uid = base + this worker's pid), so that each
#: worker's programs have a process count of their own and can be swept with kill(-1).
UID_BASE = 1_500_000_000
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
#: The standard library (with lib-dynload), bind-mounted read-only into a chroot.
STDLIB = os.path.dirname(os.__file__)
#: World-writable places a program's uid could otherwise write to (each gets an empty tmpfs).
SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

# Events refused inside the sandbox. CPython's audit hooks are not a security boundary on
# their own (the uid, namespace and rlimits are); they keep a program from reading the
# harness's frames (where the nonce lives), from loading ctypes, and from starting new
# interpreters that would run without the hook.
_BLOCKED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
    "sys.setprofile", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof",
    "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen",
    "pty.spawn", "sys.addaudithook", "cpython.run_command", "cpython.run_file",
    "code.__new__", "function.__new__", "os.forkpty", "mmap.__new__",
})
#: Restricted attributes that lead to frames (``object.__getattr__`` events); ``__code__``
#: and friends stay readable (dataclasses and namedtuple read them).
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back",
                               "f_locals", "f_globals", "f_builtins", "gi_yieldfrom",
                               "cr_await", "ag_await"})
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_testcapi",
                              "_xxsubinterpreters", "faulthandler", "__main__"})
_FS_WRITE_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod",
                              "os.chown", "os.link", "os.symlink", "os.mkdir", "os.utime",
                              "shutil.rmtree", "shutil.move", "os.chflags"})


def _send(stream, obj) -> None:
    data = json.dumps(obj).encode()
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _recv(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return json.loads(stream.read(size))


def _unshare(flags: int) -> bool:
    return _LIBC.unshare(flags) == 0


def _mount_tmpfs(target: str, size_mb: int) -> None:
    options = f"size={size_mb}m,mode=1777".encode()
    if _LIBC.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        raise OSError(ctypes.get_errno(), f"mount tmpfs on {target}")


def _private_root(workdir: str, uid: int, disk_mb: int, *, chroot: bool) -> str:
    """Mount namespace of the run; returns the run's directory as the program sees it.

    An empty tmpfs of ``disk_mb`` goes over the directory that holds ``workdir`` (the other
    shared temp dirs get 1 MB each), and ``workdir`` is made on it, owned by ``uid``: what the
    program writes is bounded and vanishes with its namespace. With ``chroot`` that tmpfs
    becomes the program's whole filesystem: the standard library is bind-mounted read-only at
    its own path inside it (so imports work, even where the host's copy is unreadable to
    ``uid``), and nothing else of the host can be read."""
    if not _unshare(CLONE_NEWNS):
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if _LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    root = os.path.dirname(workdir)
    _mount_tmpfs(root, disk_mb)
    for other in SHARED_TEMP_DIRS:
        if os.path.isdir(other) and os.path.realpath(other) != os.path.realpath(root):
            _mount_tmpfs(other, 1)
    os.mkdir(workdir, 0o700)
    os.chown(workdir, uid, uid)
    if not chroot:
        return workdir
    target = root + STDLIB
    os.makedirs(target, mode=0o755)
    if _LIBC.mount(STDLIB.encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
        raise OSError(ctypes.get_errno(), f"bind {STDLIB}")
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    if _LIBC.mount(None, target.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"remount {STDLIB} read-only")
    os.mkdir(root + "/dev", 0o755)
    with open(root + os.devnull, "w"):
        pass
    if _LIBC.mount(os.devnull.encode(), (root + os.devnull).encode(), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), f"bind {os.devnull}")
    os.chmod(root, 0o755)
    os.chroot(root)
    return "/" + os.path.basename(workdir)


def _user_tasks(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``, as RLIMIT_NPROC counts them; 0 where
    ``/proc`` does not list them (the limit is then ``max_processes`` alone)."""
    count = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as fh:
                status = fh.read()
        except OSError:  # gone, or not ours to read
            continue
        real = threads = None
        for line in status.split(b"\n"):
            if line.startswith(b"Uid:"):
                real = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real == uid and threads:
            count += threads
    return count


def _probe_mount_namespace() -> bool:
    """Whether a child can enter a mount namespace of its own and mount a tmpfs in it (root
    with CAP_SYS_ADMIN; not root in a container that does not grant it, Docker's default)."""
    target = tempfile.mkdtemp(prefix="steplabel-probe-")
    try:
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                if (_unshare(CLONE_NEWNS)
                        and _LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0):
                    _mount_tmpfs(target, 1)  # gone with the namespace when the child exits
                    ok = True
            except OSError:
                pass
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0
    finally:
        os.rmdir(target)


def _probe_netns(as_root: bool) -> bool:
    """Whether a child can enter a network namespace of its own (root: a plain one; otherwise
    inside a new user namespace)."""
    pid = os.fork()
    if pid == 0:
        ok = _unshare(CLONE_NEWNET if as_root else CLONE_NEWUSER | CLONE_NEWNET)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _make_hook(workdir: str, *, block_network: bool, confine_files: bool):
    real = os.path.realpath
    prefix = real(workdir) + os.sep

    def inside(path) -> bool:
        try:
            return (real(os.fsdecode(path)) + os.sep).startswith(prefix)
        except Exception:  # noqa: BLE001 - an fd or odd value: refuse
            return False

    def hook(event, args):
        if event == "sys._getframe":
            # ValueError, as for a too-shallow stack: namedtuple and typing catch that one.
            raise ValueError("sandbox: sys._getframe is not allowed")
        if event == "object.__getattr__" and args[1] in _FRAME_ATTRIBUTES:
            raise RuntimeError(f"sandbox: reading {args[1]} is not allowed")
        if event in _BLOCKED_EVENTS:
            raise RuntimeError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].partition(".")[0] in _BLOCKED_IMPORTS:
            raise ImportError(f"sandbox: import of {args[0]} is not allowed")
        if event == "open":
            path, mode = args[0], args[1]
            if isinstance(path, (str, bytes)) and os.fsdecode(path).startswith("/proc"):
                name = os.fsdecode(path)
                if not name.startswith(("/proc/self/stat", "/proc/meminfo", "/proc/cpuinfo")):
                    raise PermissionError(f"sandbox: {name} is not readable")
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            # An int is an fd the program already holds (its stdout, say): allowed.
            if (confine_files and writing and isinstance(path, (str, bytes))
                    and os.fsdecode(path) != os.devnull and not inside(path)):
                raise PermissionError("sandbox: writes outside the working directory")
        if block_network and event.startswith("socket."):
            raise PermissionError("sandbox: no network")
        if confine_files and event in _FS_WRITE_EVENTS:
            paths = [a for a in args if isinstance(a, (str, bytes))]
            if not paths or not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the working directory")

    return hook


def _child(job, nonce: str, workdir: str, uid, netns: bool, private_tmp: bool, hook: bool,
           out_w: int, err_w: int, res_w: int) -> None:
    """Runs in the forked child: enter the sandbox, run the program, then the tests. Never
    returns. Only lines carrying ``nonce`` on ``res_w`` are trusted by the worker."""
    write, _exit = os.write, os._exit  # held before the program can patch them

    def report(outcome: str, reason: str) -> None:
        # Formatted with built-in types' own methods only: the program may have replaced any
        # module function (json's encoder among them), and the nonce must reach none of them.
        try:
            line = f"{nonce} {outcome} {reason[:2000].encode('utf-8', 'replace').hex()}\n"
        except MemoryError:
            line = f"{nonce} failed {b'program_exception:MemoryError'.hex()}\n"
        write(res_w, line.encode("ascii"))

    try:
        os.setpgid(0, 0)
        if netns and not _unshare(CLONE_NEWNET if uid is not None else
                                  CLONE_NEWUSER | CLONE_NEWNET):
            raise OSError("unshare(CLONE_NEWNET) failed")
        limits = job["limits"]
        cpu = max(1, int(limits["timeout_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = int(limits["memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        fsize = int(limits["max_file_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        nproc = int(limits["max_processes"])
        if uid is None and not netns:
            # RLIMIT_NPROC counts every task of the real uid, the pipeline's threads among
            # them: a limit of max_processes alone would refuse a right program its first
            # thread. A dedicated uid (root) or a user namespace (netns without root) counts
            # the program's own only.
            nproc += _user_tasks(os.getuid())
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if uid is not None and private_tmp:
            workdir = _private_root(workdir, uid, int(limits["max_disk_mb"]),
                                    chroot=not job["force"].get("no_chroot"))
        os.chdir(workdir)
        tempfile.tempdir = workdir  # the worker's cached temp dir may not exist in here
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        keep = 512 + (res_w % 256)
        os.dup2(res_w, keep)
        res_w = keep
        os.closerange(3, keep)
        os.closerange(keep + 1, 4096)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # /proc/<pid>/mem and ptrace: refused
        os.environ.clear()
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.stdin = open(0, "r", closefd=False)
        sys.argv = [""]
        tests_code = compile(job["tests"], "<tests>", "exec")
    except BaseException as exc:  # noqa: BLE001 - the sandbox could not be entered
        report("sandbox_error", f"{type(exc).__name__}: {exc}")
        _exit(0)

    # The worker's own module (and ctypes, which it holds) out of the program's reach: a later
    # import of them is an import event, which the hook refuses.
    for name in [n for n in sys.modules if n == "__main__" or n.partition(".")[0] in
                 ("ctypes", "_ctypes")]:
        del sys.modules[name]
    saved_builtins = dict(builtins.__dict__)
    standard = sys.stdlib_module_names  # read before the program can replace it
    saved_modules = dict(sys.modules)
    stdout, stderr = sys.stdout, sys.stderr
    # Writes outside the directory are refused by the hook in every mode: a dedicated uid still
    # may write to world-writable places such as /tmp.
    if hook:  # off only when a test checks the kernel's layers alone
        sys.addaudithook(_make_hook(workdir, block_network=not netns, confine_files=True))
    del job["tests"]

    def flush() -> None:
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the program may have broken its streams
                pass

    def restore() -> None:
        """The builtins and ``sys.modules`` entries as they were before the program ran."""
        builtins.__dict__.clear()
        builtins.__dict__.update(saved_builtins)
        for name, module in saved_modules.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module

    program_ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(job.pop("program"), "<program>", "exec"), program_ns)
    except SystemExit as exc:
        restore()
        flush()
        report("failed", f"exited_before_tests:status={_exit_status(exc)}")
        _exit(0)
    except BaseException as exc:  # noqa: BLE001 - any error of the program is its own
        program_ns.clear()  # frees what the program holds (a MemoryError's, say)
        restore()
        flush()
        missing = _missing_standard_module(exc, standard, saved_modules)
        if missing:
            report("sandbox_error", f"standard_module_unavailable:{missing}")
            _exit(0)
        kind = "syntax_error" if isinstance(exc, SyntaxError) else "program_exception"
        report("failed", f"{kind}:{type(exc).__name__}: {exc}")
        _exit(0)
    # The tests run against the program's definitions, in a namespace of their own, with the
    # builtins and modules as they were before the program ran.
    restore()
    tests_ns = {k: v for k, v in program_ns.items() if not k.startswith("__")}
    tests_ns.update({"__name__": "tests", "__builtins__": builtins})
    try:
        exec(tests_code, tests_ns)
    except AssertionError as exc:
        flush()
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        line = tb.tb_lineno  # the innermost line: the assert's, in the tests or the program
        report("failed", f"assertion_failed:line {line}: {exc}")
        _exit(0)
    except SystemExit as exc:
        flush()
        report("failed", f"exited_during_tests:status={_exit_status(exc)}")
        _exit(0)
    except BaseException as exc:  # noqa: BLE001
        program_ns.clear()
        tests_ns.clear()
        flush()
        report("failed", f"test_exception:{type(exc).__name__}: {exc}")
        _exit(0)
    report("passed", "tests_passed")
    flush()
    _exit(0)


def _exit_status(exc: SystemExit) -> int:
    """The status the interpreter would exit with (``sys.exit()``: 0, an int: itself, any
    other value, a message: 1), as ``os._exit``'s status is reported: one reason per exit.
    Exact types only: no method of an object the program made runs in the harness."""
    code = exc.code
    if code is None:
        return 0
    if type(code) is int:
        return code & 0xFF
    return 1


def _missing_standard_module(exc: BaseException, standard: frozenset,
                             loaded: dict) -> str | None:
    """The name of a standard-library module the program could not import (the sandbox's
    doing: its uid cannot read it), else None. A third-party module (numpy) is not there by
    design: only the standard library is, so a program that needs more fails."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.partition(".")[0]
        if top in standard and top not in _BLOCKED_IMPORTS and exc.name not in loaded:
            return exc.name
    return None


def _sweep(pid: int, uid) -> None:
    """Kill everything the program started, the program's own process ``pid`` already waited
    for. This worker is a subreaper: every live descendant of the program (whether or not it
    left the process group) is a child of this worker or below one, so killing children
    until none is left kills them all, without root. Where the kernel does not list children,
    ``kill(-1)`` as the sandbox uid (root) does it instead."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    for _ in range(100):
        children = _children()
        if children is None:
            _kill_uid(uid)
            break
        if not children:
            break
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        _reap()
    _reap()


def _kill_uid(uid) -> None:
    if uid is None:
        return
    reaper = os.fork()
    if reaper == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):  # all processes of the uid but this one; again for late forks
                os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(reaper, 0)


def _children() -> list | None:
    """Pids of this worker's children; None when the kernel does not list them."""
    me = os.getpid()
    found = []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as fh:
                found += [int(p) for p in fh.read().split()]
    except OSError:
        return None
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run(job, *, uid, netns: bool, private_tmp: bool) -> dict:
    workdir = tempfile.mkdtemp(prefix="steplabel-sandbox-")
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        return _run_in(job, workdir, uid=uid, netns=netns, private_tmp=private_tmp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(job, workdir: str, *, uid, netns: bool, private_tmp: bool) -> dict:
    limits = job["limits"]
    cap = int(limits["output_bytes"])
    nonce = os.urandom(16).hex()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (out_r, err_r, res_r):
            os.close(fd)
        _child(job, nonce, workdir, uid, netns, private_tmp, not job["force"].get("no_hook"),
               out_w, err_w, res_w)
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    wall = float(limits["timeout_s"]) * float(limits["wall_factor"]) + 1.0
    buffers = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    totals = dict.fromkeys(buffers, 0)
    sel = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    status = rusage = None
    wall_killed = output_killed = False
    drain = int(limits["max_output_mb"]) * 2**20
    deadline = started + wall
    while True:
        if status is None:
            done, st, ru = os.wait4(pid, os.WNOHANG)
            if done:
                status, rusage = st, ru
                _sweep(pid, uid)  # descendants would hold the pipes open
                deadline = min(deadline, time.monotonic() + 1.0)
        left = deadline - time.monotonic()
        if not sel.get_map():
            if status is not None:
                break
            if left > 0:  # the pipes closed as the child dies: wait for its status
                time.sleep(min(left, 0.002))
                continue
        if left <= 0:
            if status is None:
                wall_killed = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                _, status, rusage = os.wait4(pid, 0)
                _sweep(pid, uid)
                deadline = time.monotonic() + 1.0
                continue
            break
        for key, _ in sel.select(timeout=min(left, 0.05)):
            try:
                chunk = os.read(key.fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fd)
                continue
            totals[key.fd] += len(chunk)
            if key.fd != res_r and totals[out_r] + totals[err_r] > drain and status is None:
                output_killed = True  # reading a flood costs this worker as much as writing it
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            room = (1 << 16 if key.fd == res_r else cap) - len(buffers[key.fd])
            if room > 0:
                buffers[key.fd] += chunk[:room]
    for fd in buffers:
        os.close(fd)
    sel.close()
    wall_s = time.monotonic() - started
    trusted = []  # lines "<nonce> <outcome> <reason as hex>" with this job's nonce
    for line in bytes(buffers[res_r]).decode("ascii", "replace").splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == nonce:
            try:
                reason = bytes.fromhex(parts[2]).decode("utf-8", "replace")
            except ValueError:
                continue
            trusted.append({"outcome": parts[1], "reason": reason})
    cpu_s = (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0
    result = {
        "cpu_s": round(cpu_s, 4), "wall_s": round(wall_s, 4),
        "stdout": bytes(buffers[out_r]).decode("utf-8", "replace"),
        "stderr": bytes(buffers[err_r]).decode("utf-8", "replace"),
        "stdout_bytes": totals[out_r], "stderr_bytes": totals[err_r],
    }
    cpu_limit = max(1, int(float(limits["timeout_s"]) + 0.999))
    if trusted:
        # Only the harness writes the nonce. A program that forks runs the tests in each
        # process: it passes only if every report says so.
        failures = [m for m in trusted if m.get("outcome") != "passed"]
        message = failures[0] if failures else trusted[0]
        outcome = message["outcome"]
        result.update(outcome="unknown" if outcome == "sandbox_error" else outcome,
                      reason=message["reason"] if outcome != "sandbox_error"
                      else f"sandbox_error:{message['reason']}")
    elif output_killed:
        result.update(outcome="killed", reason=f"output_over_{limits['max_output_mb']}MB")
    elif wall_killed:
        result.update(outcome="timeout", reason=f"wall_time_over_{wall:g}s")
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # SIGXCPU comes at the soft CPU limit, SIGKILL at the hard one a second later (if the
        # program ignored SIGXCPU); rusage may count a little under the limit.
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= cpu_limit - 0.1):
            result.update(outcome="timeout", reason=f"cpu_time_over_{cpu_limit}s")
        else:
            result.update(outcome="killed", reason=f"killed:{signal.Signals(sig).name}")
    else:
        code = os.waitstatus_to_exitcode(status)
        result.update(outcome="failed", reason=f"exited_before_tests:status={code}")
    return result


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Nothing of the program may reach the protocol streams: the child closes them, and the
    # worker's own stdout is used only through _send.
    as_root = os.geteuid() == 0
    uid = UID_BASE + os.getpid() if as_root else None
    netns = _probe_netns(as_root)
    mountns = as_root and _probe_mount_namespace()
    _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _send(stdout, {"ready": True, "isolation": {
        "uid": f"dedicated uid {uid}" if uid is not None else f"same uid {os.getuid()}",
        "network": ("network namespace" if netns else "audit hook blocks sockets (weaker)"),
        "files": ("chroot into a private tmpfs (max_disk_mb) holding the run's directory and "
                  "a read-only standard library; uid permissions; an audit hook confines "
                  "writes to the directory" if uid is not None and mountns
                  else "uid permissions; an audit hook confines writes to the working "
                  "directory (no mount namespace: weaker)" if uid is not None
                  else "audit hook confines writes to the working directory (weaker)"),
        "processes": ("RLIMIT_NPROC per dedicated uid" if uid is not None
                      else "RLIMIT_NPROC per user namespace" if netns
                      else "RLIMIT_NPROC of the shared uid, above its tasks at the start of "
                      "each run (weaker)"),
    }})
    while True:
        job = _recv(stdin)
        if job is None:
            return
        force = job.get("force") or {}
        run_uid = None if force.get("no_uid") else uid
        run_netns = netns and not force.get("no_netns")
        run_tmp = run_uid is not None and mountns and not force.get("no_private_tmp")
        try:
            result = _run(job, uid=run_uid, netns=run_netns, private_tmp=run_tmp)
        except Exception as exc:  # noqa: BLE001 - reported as the sandbox's failure, not the program's
            result = {"outcome": "unknown", "reason": f"sandbox_error:{type(exc).__name__}: {exc}"}
        result["isolation"] = "+".join(filter(None, [
            "uid" if run_uid is not None else "", "netns" if run_netns else "audit-net",
            "tmpfs" if run_tmp else "",
            "chroot" if run_tmp and not force.get("no_chroot") else "",
            "" if run_tmp else "audit-files",  # outside writes: the hook (and uid) only
            "no-hook" if force.get("no_hook") else ""]))
        _send(stdout, result)


if __name__ == "__main__":
    main()
