"""Where a ``steplabel`` command's output goes: results on stdout, messages on the terminal,
logs in the dataset's log file.

- **stdout** holds the command's result only (its text report, or JSON with ``--json``). While
  a command runs, file descriptor 1 points at stderr and ``sys.stdout`` writes to a copy of the
  real stdout (:func:`results_on_stdout`): whatever C code, a library's handler bound to the old
  ``sys.stdout`` or a child process writes to descriptor 1 ends up on stderr, never inside the
  JSON.
- **The terminal** (stderr) shows steplabel's own messages: the ``steplabel.*`` loggers at INFO
  and above, as ``[steplabel] ...`` lines (``[steplabel] warning: ...`` for warnings), written
  through ``tqdm.write`` so that they do not tear the progress bars. With ``-v``, every logger's
  records too (steplabel's at DEBUG), and the engine's processes print to the terminal.
- **The log file** ``DIR/logs/<command>.log`` of the dataset (or evaluation) directory gets the
  records of every logger of this process (vLLM, Beam, transformers, Python warnings), and what
  the vLLM engine's child processes print (:mod:`steplabel.engines.vllm_engine` starts them with
  their stdout and stderr on this file, ``$STEPLABEL_ENGINE_LOG``). vLLM's own handler writes to
  stderr (``VLLM_LOGGING_STREAM``, unless the user set it) and is dropped in this process once
  the engine is built, so that its records take the same way as every other library's.

The log file is created only once the command owns the directory (its ``_work/run.json`` is
written after the command started): until then records are kept in memory, so that a refused
``--out`` (another job's directory, or a non-empty one) is never written into.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

from steplabel.engines.vllm_engine import ENGINE_LOG_ENV

LOG_DIR = "logs"
#: ``extra={FILE_ONLY: True}`` keeps a record off the terminal (the log file still gets it).
FILE_ONLY = "file_only"
#: Records kept in memory before the directory is owned (older ones are dropped).
MAX_BUFFERED_RECORDS = 20_000
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s %(process)d]: %(message)s"
#: Environment defaults the command line sets for vLLM (a user's own values win).
VLLM_ENVIRONMENT = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}


def log_path(out_dir: str, command: str) -> str:
    """``DIR/logs/<command>.log``."""
    return os.path.join(out_dir, LOG_DIR, f"{command}.log")


def _is_steplabel(record: logging.LogRecord) -> bool:
    return record.name == "steplabel" or record.name.startswith("steplabel.")


class ConsoleHandler(logging.Handler):
    """steplabel's messages on stderr, through ``tqdm.write`` (progress bars stay whole)."""

    def __init__(self, *, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FILE_ONLY, False):
            return False
        if _is_steplabel(record):
            return self.verbose or record.levelno >= logging.INFO
        return self.verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and self.verbose:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        if not _is_steplabel(record):
            return f"{record.levelname} {record.name}: {message}"
        if record.levelno >= logging.ERROR:
            return f"[steplabel] error: {message}"
        if record.levelno >= logging.WARNING:
            return f"[steplabel] warning: {message}"
        return f"[steplabel] {message}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class DatasetLogHandler(logging.Handler):
    """Appends every record to ``DIR/logs/<command>.log`` once the command owns ``DIR``.

    Owning means ``DIR/_work/run.json`` was (re)written after this handler was made: ``run``,
    ``regenerate`` and ``evaluate`` write it once they have checked (and, with ``--overwrite``,
    cleared) the directory. Records before that are buffered, then written first."""

    def __init__(self, out_dir: str, command: str, *, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.path = log_path(out_dir, command)
        self._claim_file = os.path.join(out_dir, "_work", "run.json")
        self._created = time.time()
        self._buffer: deque[logging.LogRecord] = deque(maxlen=MAX_BUFFERED_RECORDS)
        self._file: logging.FileHandler | None = None
        self.setFormatter(logging.Formatter(FILE_FORMAT))

    def owned(self) -> bool:
        try:
            return os.stat(self._claim_file).st_mtime >= self._created - 1.0
        except OSError:
            return False

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self._file.setFormatter(self.formatter)
        while self._buffer:
            self._file.handle(self._buffer.popleft())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._file is None and self.owned():
                self._open()
            if self._file is None:
                self._buffer.append(record)
            else:
                self._file.emit(record)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        try:
            if self._file is None and self._buffer and self.owned():
                self._open()
            if self._file is not None:
                self._file.close()
        finally:
            self._buffer.clear()
            super().close()


class CommandLogging:
    """The logging of one command-line call; undone by :meth:`close` (tests call ``main``
    many times in one process)."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        self.console = ConsoleHandler(verbose=verbose)
        self.dataset_handler: DatasetLogHandler | None = None
        root = logging.getLogger()
        package = logging.getLogger("steplabel")
        self._saved = (root.level, package.level)
        # Plain stream handlers on the root are logging.basicConfig's (a library's call of
        # logging.warning() adds one): they would print every library record; set aside.
        self._set_aside = [h for h in root.handlers if type(h) is logging.StreamHandler]
        for handler in self._set_aside:
            root.removeHandler(handler)
        root.setLevel(logging.INFO)
        root.addHandler(self.console)
        self.set_verbose(verbose)
        logging.captureWarnings(True)
        self._environment = {name: os.environ.get(name)
                             for name in (*VLLM_ENVIRONMENT, ENGINE_LOG_ENV)}
        for name, value in VLLM_ENVIRONMENT.items():
            os.environ.setdefault(name, value)

    def set_verbose(self, verbose: bool) -> None:
        self.verbose = self.console.verbose = verbose
        logging.getLogger("steplabel").setLevel(logging.DEBUG if verbose else logging.INFO)

    @property
    def log_file(self) -> str | None:
        """The log file's path as the user named the directory (relative stays relative)."""
        return self._shown_path if self.dataset_handler else None

    def use_dataset_dir(self, out_dir: str, command: str) -> str | None:
        """Send the logs to ``DIR/logs/<command>.log`` (local directories only); returns the
        path, or None for a remote directory (logs then stay in this process's handlers)."""
        if "://" in out_dir or self.dataset_handler is not None:
            return self.log_file
        self._shown_path = log_path(out_dir, command)
        self.dataset_handler = DatasetLogHandler(
            os.path.abspath(out_dir), command,
            level=logging.DEBUG if self.verbose else logging.INFO)
        logging.getLogger().addHandler(self.dataset_handler)
        if not self.verbose:  # with -v, the engine's processes print to the terminal
            os.environ[ENGINE_LOG_ENV] = self.dataset_handler.path
        logging.getLogger("steplabel.logs").info(
            "steplabel %s started; arguments: %s", command, " ".join(sys.argv[1:]),
            extra={FILE_ONLY: True})
        return self.log_file

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self.console, self.dataset_handler):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        for handler in self._set_aside:
            root.addHandler(handler)
        root.setLevel(self._saved[0])
        logging.getLogger("steplabel").setLevel(self._saved[1])
        logging.captureWarnings(False)
        for name, value in self._environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: The logging of the command running in this process (None outside the command line).
_CURRENT: CommandLogging | None = None


#: Without a terminal, while an engine starts: a "still starting" line at these seconds after
#: the start, then every last interval again (a log file gets a few lines, not one a second).
STARTING_NOTICES_S = (30.0, 60.0, 120.0, 240.0)


def _isatty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def _notice_times(notices: tuple[float, ...]):
    yield from notices
    step = notices[-1] - (notices[-2] if len(notices) > 1 else 0.0)
    at = notices[-1]
    while True:
        at += step
        yield at


def _terminal_copy():
    """A stream on a duplicate of descriptor 2 as it is now: the vLLM engine's start points
    descriptors 1 and 2 at the log file for a while (its child processes inherit them), and
    what is shown meanwhile must still reach the terminal. None when stderr has no descriptor
    (a test's capture)."""
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return os.fdopen(fd, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None)
                     or "utf-8", errors="replace")


@contextlib.contextmanager
def engine_starting(what: str, *, stream=None, status_line: bool = True, tick_s: float = 1.0,
                    notices: tuple[float, ...] = STARTING_NOTICES_S, clock=time.monotonic):
    """Show that ``what`` (an engine) is starting while the block runs: ``[steplabel] starting
    <what>`` at once; then on a terminal (unless ``-v``; ``status_line`` False: progress bars
    are on screen) a status line ``loading <what>: 00:12`` redrawn every ``tick_s`` (a tqdm
    line) and removed at the end; elsewhere a ``still starting`` line at each of ``notices``
    seconds, then at the same last interval again (to ``stream`` and the log file). The
    engine says itself when it is ready (vLLM: the model, the time, its devices).

    ``stream`` (default: a copy of stderr's descriptor, see :func:`_terminal_copy`)."""
    logger = logging.getLogger("steplabel.engines")
    logger.info("starting %s", what)
    owned = _terminal_copy() if stream is None else None
    stream = stream or owned or sys.stderr
    started = clock()
    done = threading.Event()

    def status() -> None:
        from tqdm import tqdm

        bar = tqdm(total=None, desc=f"loading {what}", file=stream, leave=False,
                   bar_format="[steplabel] {desc}: {elapsed}")
        try:
            while not done.wait(tick_s):
                bar.refresh()
        finally:
            bar.close()

    def notify() -> None:
        for at in _notice_times(notices):
            if done.wait(max(0.0, at - (clock() - started))):
                return
            message = f"still starting {what}: {clock() - started:.0f} s so far"
            logger.info(message, extra={FILE_ONLY: True})  # the log file's copy
            print(f"[steplabel] {message}", file=stream, flush=True)

    # -v: the engine's own processes print to the terminal too; plain lines do not tear.
    verbose = _CURRENT is not None and _CURRENT.verbose
    live = status if status_line and not verbose and _isatty(stream) else notify
    thread = threading.Thread(target=live, name="steplabel-engine-start", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
        if owned is not None:
            with contextlib.suppress(OSError):
                owned.close()


def use_dataset_dir(out_dir: str, command: str) -> str | None:
    """Called by a command once it knows its output directory (``run``, ``evaluate``,
    ``regenerate``); a no-op outside the command line. Returns the log file's path."""
    return _CURRENT.use_dataset_dir(out_dir, command) if _CURRENT is not None else None


@contextlib.contextmanager
def command_logging(*, verbose: bool):
    global _CURRENT
    setup = CommandLogging(verbose=verbose)
    previous, _CURRENT = _CURRENT, setup
    try:
        yield setup
    finally:
        _CURRENT = previous
        setup.close()


@contextlib.contextmanager
def results_on_stdout():
    """While the command runs: descriptor 1 points at stderr and ``sys.stdout`` at a copy of
    the real stdout. When ``sys.stdout`` is not a real file (pytest's capture), nothing
    changes."""
    try:
        fd = sys.stdout.fileno()
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):
        yield
        return
    if fd != 1:
        yield
        return
    saved = os.dup(1)
    original = sys.stdout
    results = os.fdopen(os.dup(saved), "w", encoding=getattr(original, "encoding", None)
                        or "utf-8", errors=getattr(original, "errors", None) or "strict",
                        closefd=True)
    os.dup2(sys.stderr.fileno(), 1)
    sys.stdout = results
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            results.flush()
        sys.stdout = original
        os.dup2(saved, 1)
        os.close(saved)
        with contextlib.suppress(Exception):
            results.close()
