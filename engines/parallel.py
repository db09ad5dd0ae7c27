"""Every GPU of a node: how many a worker sees, and which engine replica serves a request.

A vLLM engine with ``data_parallel_size`` N runs N independent replicas of a dense model in one
``AsyncLLM`` (vLLM 0.32 ``AsyncEngineArgs.data_parallel_size``: one engine-core process per
replica, replica ``r`` on GPUs ``r*tp .. r*tp+tp-1``). vLLM balances requests over replicas by
load alone; a request may also name its replica (``AsyncLLM.generate(data_parallel_rank=r)``).
:class:`PrefixAffinityRouter` names it: a request whose prompt mostly repeats a prefix one
replica served before (the same question, the same solution prefix of a Monte Carlo rollout)
goes there, where that prefix is likely still in the KV cache, unless that replica is much
busier than the least busy one; any other request goes to the least busy replica. The rule
follows SGLang's cache-aware router (a match-ratio threshold and a load-imbalance bound).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict


def visible_gpu_count() -> int:
    """CUDA GPUs this process sees (``CUDA_VISIBLE_DEVICES`` applies); 0 without any."""
    try:
        import torch
    except ImportError:
        return 0
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except RuntimeError:  # a broken driver: no usable GPU
        return 0


class PrefixAffinityRouter:
    """Picks the replica (0 .. ``replicas``-1) for each request; thread-safe.

    Prompts are cut in chunks of ``chunk_chars`` characters; each full chunk's key is a digest
    of the whole prompt up to its end, remembered with the replica that last served it (at most
    ``max_prefixes`` keys, least recently used forgotten first, as a KV cache forgets). For a
    new prompt the longest remembered prefix names its *owner*. The owner serves the request
    when that prefix is at least ``match_ratio`` of the prompt and the owner's load (samples in
    flight) exceeds the least loaded replica's by at most ``max_excess`` samples or by at most
    ``max_ratio`` times; otherwise the least loaded replica does (ties: the one after the last
    pick, so an idle engine fills evenly).
    """

    def __init__(self, replicas: int, *, chunk_chars: int = 256, match_ratio: float = 0.5,
                 max_excess: int = 32, max_ratio: float = 1.5,
                 max_prefixes: int = 200_000) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
        if not 0.0 <= match_ratio <= 1.0:
            raise ValueError(f"match_ratio must be in [0, 1], got {match_ratio}")
        self.replicas = replicas
        self.chunk_chars = chunk_chars
        self.match_ratio = match_ratio
        self.max_excess = max_excess
        self.max_ratio = max_ratio
        self.max_prefixes = max_prefixes
        self.load = [0] * replicas  # samples in flight per replica
        self.affinity_picks = 0  # requests sent to the owner of their prefix
        self.balance_picks = 0  # requests sent to the least loaded replica
        self._owners: OrderedDict[bytes, int] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()

    def _prefix_keys(self, prompt: str) -> list[bytes]:
        keys, digest = [], b""
        for end in range(self.chunk_chars, len(prompt) + 1, self.chunk_chars):
            chunk = prompt[end - self.chunk_chars:end].encode("utf-8", "surrogatepass")
            digest = hashlib.blake2b(digest + chunk, digest_size=16).digest()
            keys.append(digest)
        return keys

    def acquire(self, prompt: str, weight: int = 1) -> int:
        """The replica for ``prompt`` (``weight``: samples it asks for); call :meth:`release`
        with the same arguments when the request finished, failed or was cancelled."""
        keys = self._prefix_keys(prompt)
        with self._lock:
            owner, matched = None, 0
            for depth in range(len(keys), 0, -1):
                owner = self._owners.get(keys[depth - 1])
                if owner is not None:
                    matched = depth * self.chunk_chars
                    break
            least = min(range(self.replicas),
                        key=lambda r: (self.load[r], (r - self._next) % self.replicas))
            if owner is not None and matched >= self.match_ratio * len(prompt) and (
                    self.load[owner] - self.load[least] <= self.max_excess
                    or self.load[owner] <= self.max_ratio * self.load[least]):
                chosen = owner
                self.affinity_picks += 1
            else:
                chosen = least
                self.balance_picks += 1
                self._next = (least + 1) % self.replicas
            self.load[chosen] += weight
            for key in keys:
                self._owners[key] = chosen
                self._owners.move_to_end(key)
            while len(self._owners) > self.max_prefixes:
                self._owners.popitem(last=False)
            return chosen

    def release(self, replica: int, weight: int = 1) -> None:
        with self._lock:
            self.load[replica] -= weight
