"""Seeds derived from data identity, so that a rerun or a retried bundle repeats its requests.

``derive_seed(run_seed, "mc", problem_id, solution_index, step_index)`` is stable across
processes and machines (blake2b, not Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 31


def derive_seed(run_seed: int, *identity: object) -> int:
    """A non-negative 31-bit seed from the run seed and the identity of the request."""
    text = "\x1f".join([str(run_seed), *map(str, identity)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (1 << SEED_BITS)
