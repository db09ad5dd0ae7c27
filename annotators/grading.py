"""Grading a completion's final answer against the gold answer (the ``math`` grader's logic;
:class:`steplabel.annotators.graders.MathGrader` is how the stages reach it).

Verdicts are ``correct``, ``incorrect`` or ``unknown``, always with a reason. ``unknown`` (an
unparseable gold answer, an answer the checker cannot read, a timeout) is never coerced to
``incorrect``. There is no substring matching: ``1`` never matches ``10``.

Plain numbers (the bulk of GSM8K-style answers) are compared exactly as fractions in-process.
Everything else goes to math-verify, run in a separate worker process with math-verify's own
``signal.alarm`` timeouts switched off (they fail outside the main thread, and Beam runs DoFns
in threads); the time is bounded by killing the worker instead, so a pathological expression
such as ``10^{10^{10^{10}}}`` cannot stall a caller.

Model output is untrusted text: it is only ever parsed, never executed or evaluated as code.
"""

from __future__ import annotations

import atexit
import multiprocessing
import re
import threading
from fractions import Fraction
from typing import Literal

from steplabel.schemas.graders import Grade, Verdict

__all__ = ["GRADER_VERSION", "Grade", "Verdict", "check_answer_readable", "compare_answers",
           "extract_final_answer", "grade", "parse_gold"]

GoldFormat = Literal["plain", "gsm8k", "boxed"]

GRADER_VERSION = "steplabel-grader/3"  # 2: PRM800K "# Answer" endings; 3: "Final answer: N"
#: Answers longer than this are not parsed at all (unknown, ``answer_too_long``).
MAX_ANSWER_CHARS = 512
#: Brace nesting deeper than this is not parsed (unknown, ``answer_too_deep``).
MAX_BRACE_DEPTH = 24
DEFAULT_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------------------------
# Answer extraction


_BOXED_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}]")


def _last_boxed(text: str) -> str | None:
    """Content of the last-opened ``\\boxed{...}`` / ``\\fbox{...}`` that closes (braces
    balanced), or None when no box closes.

    One pass over the braces, so the time is linear in ``len(text)`` whatever the text: model
    output is untrusted, and scanning to the end once per opening took minutes on ``\\boxed{``
    repeated 20,000 times.
    """
    opens = {match.end() - 1 for match in _BOXED_OPEN_RE.finditer(text)}
    if not opens:
        return None
    stack: list[tuple[int, int]] = []  # (content start, depth of its opening brace)
    depth, best = 0, None
    for match in _BRACE_RE.finditer(text):
        i = match.start()
        if text[i] == "{":
            depth += 1
            if i in opens:
                stack.append((i + 1, depth))
        else:
            if stack and stack[-1][1] == depth:
                start = stack.pop()[0]
                if best is None or start > best[0]:
                    best = (start, i)
            depth -= 1
    return text[best[0]:best[1]] if best else None


_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
# PRM800K's solutions end with a "# Answer" heading, a blank line, then the answer.
_ANSWER_HEADING_RE = re.compile(r"(?m)^#[ \t]*Answer[ \t]*\n+[ \t]*([^\n]+)")
# "The answer is: 9", "the final answer is 9", and "Final answer: 9" (how small instruction
# models end a solution when asked for "The answer is: N").
_ANSWER_IS_RE = re.compile(
    r"(?:(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?|final\s+answer\s*[:：])\s*(.+?)(?:\n|$)",
    re.IGNORECASE,
)


def _rstrip_end(text: str) -> str:
    """``text`` without trailing whitespace and sentence punctuation (``.``, ``。``, ``!``).
    A loop, not the regex ``[\\s.。!]+$``, which is quadratic on long inner whitespace runs."""
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] in ".。!"):
        end -= 1
    return text[:end]


def _clean(answer: str) -> str:
    answer = _rstrip_end(answer.strip())
    # Strip wrapping math delimiters and trailing sentence punctuation.
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= 2 * len(left):
            answer = answer[len(left) : len(answer) - len(right)].strip()
    answer = _rstrip_end(answer)
    return answer.strip()


def extract_final_answer(text: str) -> str | None:
    """The final answer of a solution, or None when it states none.

    Precedence: the last ``\\boxed{}``; else the last GSM8K ``#### N``; else the last
    PRM800K ``# Answer`` heading's answer (the next non-empty line); else the last
    "The answer is ..." or "Final answer: ..." sentence.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    hashes = _GSM8K_RE.findall(text)
    if hashes:
        return _clean(hashes[-1]) or None
    headed = _ANSWER_HEADING_RE.findall(text)
    if headed:
        return _clean(headed[-1]) or None
    stated = _ANSWER_IS_RE.findall(text)
    if stated:
        answer = _clean(stated[-1])
        boxed = _last_boxed(answer)
        return (_clean(boxed) if boxed is not None else answer) or None
    return None


def parse_gold(gold: str, fmt: GoldFormat = "plain") -> str | None:
    """The gold answer in a dataset's format: a plain value, a GSM8K worked solution ending in
    ``#### N``, or a solution with ``\\boxed{}``. None when the format's marker is missing."""
    if not isinstance(gold, str):
        return None
    if fmt == "plain":
        return _clean(gold) or None
    if fmt == "gsm8k":
        hashes = _GSM8K_RE.findall(gold)
        return (_clean(hashes[-1]) or None) if hashes else None
    if fmt == "boxed":
        boxed = _last_boxed(gold)
        return (_clean(boxed) or None) if boxed is not None else None
    raise ValueError(f"gold format must be plain, gsm8k or boxed, got {fmt!r}")


# --------------------------------------------------------------------------------------------
# Comparison

_NUMBER_RE = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?$")
_UNIT_WORDS = re.compile(r"\s*(?:\\%|%|dollars?|cents?|\\\$)$", re.IGNORECASE)


def as_number(answer: str) -> Fraction | None:
    """Plain decimal numbers only (``1,000``, ``$18``, ``-2.50``, ``45%``): exact Fraction."""
    text = answer.strip().replace("\\!", "").replace("{,}", ",")
    text = re.sub(r"^\\?\$", "", text).strip()
    text = _UNIT_WORDS.sub("", text).strip()
    text = re.sub(r"^\\text\{(.*)\}$", r"\1", text).strip()
    if not text or not _NUMBER_RE.match(text) or not any(c.isdigit() for c in text):
        return None
    try:
        return Fraction(text.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


_CODE_LIKE = re.compile(r"__|\b(?:import|lambda|exec|eval)\b|[A-Za-z_]\w*\(\s*['\"]")


def _too_complex(answer: str) -> str | None:
    if len(answer) > MAX_ANSWER_CHARS:
        return "answer_too_long"
    depth = deepest = 0
    for ch in answer:
        if ch == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == "}":
            depth -= 1
    if deepest > MAX_BRACE_DEPTH:
        return "answer_too_deep"
    return None


def _verify_worker(conn) -> None:  # pragma: no cover - runs in the worker process
    import logging

    # math-verify warns on every call that its own (signal-based) timeouts are off: we know.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    conn.send(READY)  # imports done: from here on, time is the comparisons' own
    while True:
        try:
            gold, predicted = conn.recv()
        except EOFError:
            return
        if predicted is None:  # a readability check of one answer
            try:
                parsed = parse(f"${gold}$", parsing_timeout=None)
                readable = any(not isinstance(p, str) for p in parsed)
                conn.send(("correct", "readable") if readable else ("unknown", "unreadable"))
            except Exception as exc:  # noqa: BLE001
                conn.send(("unknown", f"checker_error:{type(exc).__name__}"))
            continue
        try:
            gold_parsed = parse(f"${gold}$", parsing_timeout=None)
            # math-verify returns the raw string alone when it could not read the expression.
            if not any(not isinstance(p, str) for p in gold_parsed):
                conn.send(("unknown", "gold_unparseable"))
                continue
            pred_parsed = parse(f"${predicted}$", parsing_timeout=None)
            if not any(not isinstance(p, str) for p in pred_parsed):
                conn.send(("unknown", "prediction_unparseable"))
                continue
            ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)
            conn.send(("correct", "math_verify_equal") if ok else ("incorrect", "math_verify_differ"))
        except Exception as exc:  # noqa: BLE001 - any checker failure is an unknown, with why
            conn.send(("unknown", f"checker_error:{type(exc).__name__}"))


#: First message of a worker, once math-verify and sympy are imported.
READY = ("ready", "")
#: How long a new worker may take to import math-verify and sympy (wall seconds; a loaded
#: machine is slow here, and start-up is not the comparison's fault).
READY_TIMEOUT_S = 300.0
#: A comparison's budget is CPU seconds of the worker, so that a verdict does not depend on how
#: loaded the machine is; this multiple of it in wall seconds is a backstop for a stuck worker.
WALL_BACKSTOP = 30.0
_POLL_S = 0.05


class _VerifyProcess:
    """One math-verify worker process; killed and replaced when a comparison overruns.

    A comparison overruns when the worker spends more than ``timeout_s`` seconds of *CPU time*
    on it (wall time would make verdicts depend on the machine's load: under load a long but
    finite comparison would become unknown on one run and not on another)."""

    def __init__(self) -> None:
        import psutil

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_verify_worker, args=(child,), daemon=True,
                                 name="steplabel-grader")
        self._proc.start()
        child.close()
        self._ps = psutil.Process(self._proc.pid)
        self._ready = False

    def _cpu_seconds(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def compare(self, gold: str, predicted: str, timeout_s: float) -> tuple[str, str] | None:
        if not self._ready:
            if not self._conn.poll(READY_TIMEOUT_S) or self._conn.recv() != READY:
                raise OSError("the grader process did not start")
            self._ready = True
        cpu_start = self._cpu_seconds()
        self._conn.send((gold, predicted))
        waited = 0.0
        while not self._conn.poll(_POLL_S):
            waited += _POLL_S
            try:
                used = self._cpu_seconds() - cpu_start
            except Exception:  # noqa: BLE001 - the process is gone: the pipe says so next
                used = 0.0
            if used > timeout_s or waited > timeout_s * WALL_BACKSTOP:
                return None
        return self._conn.recv()

    def kill(self) -> None:
        self._proc.kill()
        self._proc.join(timeout=5)
        self._conn.close()


class MathVerifyPool:
    """A few math-verify worker processes shared by all threads of this process."""

    def __init__(self, size: int = 2) -> None:
        self._size = size
        self._idle: list[_VerifyProcess] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(size)
        atexit.register(self.close)

    def compare(self, gold: str, predicted: str, timeout_s: float) -> tuple[str, str]:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _VerifyProcess()
            try:
                # The first call also pays the worker's import of math-verify and sympy.
                result = worker.compare(gold, predicted, timeout_s)
            except (OSError, EOFError, BrokenPipeError) as exc:
                worker.kill()
                return ("unknown", f"checker_crashed:{type(exc).__name__}")
            if result is None:
                worker.kill()
                return ("unknown", "grading_timeout")
            with self._lock:
                self._idle.append(worker)
            return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_POOL: MathVerifyPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> MathVerifyPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = MathVerifyPool()
        return _POOL


def check_answer_readable(answer: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when the grader can read ``answer`` (a gold answer, at validation); else why not."""
    problem = _too_complex(answer)
    if problem:
        return problem
    if as_number(answer) is not None:
        return None
    verdict, reason = _pool().compare(answer, None, timeout_s)  # type: ignore[arg-type]
    return None if verdict == "correct" else reason


def compare_answers(gold: str, predicted: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Compare two extracted answers."""
    for answer, who in ((gold, "gold"), (predicted, "prediction")):
        problem = _too_complex(answer)
        if problem:
            return Grade("unknown", f"{who}_{problem}", predicted, gold)
    # math-verify reads the longest mathematical prefix it can: "1+__import__('os')..." would be
    # graded as 1. Text that looks like code is not a mathematical answer.
    if _CODE_LIKE.search(predicted):
        return Grade("unknown", "prediction_looks_like_code", predicted, gold)
    gold_num, pred_num = as_number(gold), as_number(predicted)
    if gold_num is not None and pred_num is not None:
        verdict = "correct" if gold_num == pred_num else "incorrect"
        return Grade(verdict, f"numeric_{'equal' if verdict == 'correct' else 'differ'}",
                     predicted, gold)
    if gold.strip() == predicted.strip():
        return Grade("correct", "exact_text", predicted, gold)
    verdict, reason = _pool().compare(gold, predicted, timeout_s)
    return Grade(verdict, reason, predicted, gold)  # type: ignore[arg-type]


def grade(
    completion: str,
    gold_answer: str | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Grade:
    """Grade a completion's final answer against an already-extracted gold answer.

    A completion that states no final answer is ``incorrect`` (reason ``no_final_answer``): the
    rollout failed to reach the gold answer. A missing gold answer is ``unknown``.
    """
    if gold_answer is None or not str(gold_answer).strip():
        return Grade("unknown", "gold_missing")
    predicted = extract_final_answer(completion)
    if predicted is None:
        return Grade("incorrect", "no_final_answer", None, gold_answer)
    return compare_answers(gold_answer, predicted, timeout_s=timeout_s)
