"""A scripted engine as loud as vLLM (tests/test_cli_output.py): when it is built it writes to
file descriptors 1 and 2 directly (as C code does), logs through a library logger at INFO and
WARNING (as vLLM's in-process logger does), and starts a child process that prints to its
stdout and stderr (as vLLM's engine core does)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from fakes import arithmetic_engine

NOISE = "NOISY-ENGINE"


def noisy_arithmetic_engine(config):
    os.write(1, f"{NOISE} fd1 banner\n".encode())
    os.write(2, f"{NOISE} fd2 banner\n".encode())
    library = logging.getLogger("noisylib.engine")
    library.info("%s library info", NOISE)
    library.warning("%s library warning", NOISE)
    subprocess.run([sys.executable, "-c",
                    f"import sys; print('{NOISE} child stdout'); "
                    f"print('{NOISE} child stderr', file=sys.stderr)"], check=True)
    return arithmetic_engine(config)
