"""A scripted code "model" for the python_tests job tests (``factory: code_fakes:code_engine``).

Each question names its kind (``[kind:right]``, ``[kind:loop]``, ...; ``[kind:socket:PORT]``
names the listener's port, ``[kind:clobber:N]`` the victim directory
``/tmp/steplabel-code-victim-N``). The engine behaves as a real model would, deterministically:

- the policy writes the kind's solution: reasoning paragraphs, then one ```python block;
- a completer continues a prefix with the rest of the solution that prefix belongs to (a
  rollout is the steps the prefix does not have yet), so a rollout from a prefix of a hostile
  program runs that program again; ``firsterror``'s rollouts from its reasoning alone are right
  on even sample indices and wrong on odd ones, from a prefix holding its wrong helper wrong;
- ``cutoff`` writes past any ``max_tokens`` (the engine cuts it, finish reason ``length``);
- the judge names the first wrong step the kind has (:data:`JUDGE_FIRST_ERROR`).
"""

from __future__ import annotations

import re

from fakes import ScriptedEngine
from steplabel.annotators.splitting import get_splitter
from steplabel.engines.base import GenerationRequest

FENCE = "```"
_KIND_RE = re.compile(r"\[kind:(\w+)(?::(\d+))?\]")
_SPLITTER = get_splitter("python_statements")

TESTS = "assert add_one(1) == 2\nassert add_one(-1) == 0\n"

RIGHT = ["import math", "def add_one(x):\n    return x + 1"]
#: Programs by kind (top-level statements, one step each).
PROGRAMS = {
    "right": RIGHT,
    "wrong": ["def add_one(x):\n    return x + 2"],
    "firsterror": ["def helper(x):\n    return x + 2", "def add_one(x):\n    return helper(x)"],
    "loop": ["while True:\n    pass"],
    "forkbomb": ["import os", "while True:\n    os.fork()"],
    "flood": ["import sys", "block = 'x' * 2**20", "while True:\n    sys.stdout.write(block)"],
    "exit0": ["import os", "os._exit(0)"],
    "socket": ["import socket",
               "s = socket.create_connection(('127.0.0.1', {port}), timeout=2)",
               "s.sendall(b'escaped')"],
    "allocate": ["chunks = []", "while True:\n    chunks.append(bytearray(50 * 2**20))"],
    # Right only where the sandbox held: every write or delete outside failed.
    "clobber": ["import os, shutil",
                "VICTIM = '/tmp/steplabel-code-victim-{port}/precious.txt'",
                "escaped = 0",
                "for attempt in (lambda: open(VICTIM, 'w').write('gone'),\n"
                "                lambda: os.remove(VICTIM),\n"
                "                lambda: shutil.rmtree(os.path.dirname(VICTIM))):\n"
                "    try:\n"
                "        attempt()\n"
                "        escaped += 1\n"
                "    except OSError:\n"
                "        pass",
                "def add_one(x):\n    return x + 1 + escaped"],
    # Right only where the environment is empty.
    "readenv": ["import os", "def add_one(x):\n    return x + 1 if not os.environ else x"],
}
FIRSTERROR_FIXED = ["def helper(x):\n    return x + 1", "def add_one(x):\n    return helper(x)"]
#: The judge's verdict per kind (-1: no wrong step).
JUDGE_FIRST_ERROR = {"right": -1, "wrong": 0, "firsterror": 1, "loop": 0, "forkbomb": 0,
                     "flood": 0, "exit0": 0, "socket": 0, "allocate": 0, "clobber": -1,
                     "readenv": -1, "noprogram": -1, "cutoff": -1}
REASONING = "We need add_one(x), the number after x."


def solution_text(kind: str, *, port: str = "0", program: list[str] | None = None) -> str:
    """The full solution of ``kind``: reasoning, then its program in one fenced block."""
    if kind == "noprogram":
        return f"{REASONING}\n\nSo add_one returns x plus one."
    if kind == "cutoff":
        return REASONING + "\n\n" + " ".join(["and"] * 400)
    statements = [s.format(port=port) for s in (program or PROGRAMS[kind])]
    return f"{REASONING}\n\n{FENCE}python\n" + "\n\n".join(statements) + f"\n{FENCE}"


def _respond(request: GenerationRequest, index: int) -> str:
    prompt = request.prompt
    match = _KIND_RE.search(prompt)
    if match is None:
        return "I cannot read this question."
    kind, port = match.group(1), match.group(2) or "0"
    if "<paragraph_0>" in prompt:
        return f"\\boxed{{{JUDGE_FIRST_ERROR[kind]}}}"
    written = prompt.split("<|assistant|>\n", 1)[1]
    program = None
    if kind == "firsterror" and written.strip() and "x + 2" not in written and index % 2 == 0:
        program = FIRSTERROR_FIXED
    full = solution_text(kind, port=port, program=program)
    done = len(_SPLITTER.split(written)) if written.strip() else 0
    return "\n\n".join(_SPLITTER.split(full)[done:])


def code_engine(config) -> ScriptedEngine:
    """``kind: custom`` factory of the python_tests job tests."""
    return ScriptedEngine(_respond, model_id="scripted-code")
