"""A scripted engine that SIGKILLs its own job at a chosen request, for the resume tests.

``$STEPLABEL_FAKE_KILL_AT`` = ``<kind>:<n>``: the process is killed (``SIGKILL``, no cleanup)
when the engine receives its ``n``-th request of ``kind``: ``start`` (a sample from the
question: the policy's, or an OmegaPRM pre-filter), ``continue`` (a rollout from a step prefix:
Monte Carlo or OmegaPRM) or ``judge``. Unset: the slow arithmetic engine of :mod:`fakes`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from fakes import ScriptedEngine, _arithmetic_respond

KILL_AT_ENV = "STEPLABEL_FAKE_KILL_AT"


def request_kind(prompt: str) -> str:
    if "<paragraph_0>" in prompt:
        return "judge"
    return "start" if prompt.endswith("Step 1:") else "continue"


def steplabel(manifest: Path, out: Path, kill_at: str | None = None):
    """``steplabel run manifest --out out`` in a subprocess with this engine's folder on its
    path, killed at ``kill_at`` (``<kind>:<n>``) or not."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    env.pop(KILL_AT_ENV, None)
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "steplabel", "run", str(manifest), "--out",
                           str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300)


class KillingEngine(ScriptedEngine):
    def __init__(self, *, kind: str | None, at: int | None, **kwargs) -> None:
        super().__init__(_arithmetic_respond, **kwargs)
        self.kind, self.at = kind, at
        self.seen = 0

    async def generate(self, request):
        if self.kind is not None and request_kind(request.prompt) == self.kind:
            self.seen += 1
            if self.seen == self.at:
                os.kill(os.getpid(), signal.SIGKILL)
        return await super().generate(request)


def killing_engine(config) -> KillingEngine:
    """``kind: custom`` factory (``factory: killing:killing_engine``)."""
    spec = os.environ.get(KILL_AT_ENV)
    kind, _, at = spec.partition(":") if spec else (None, "", "")
    return KillingEngine(kind=kind, at=int(at) if at else None,
                         model_id="scripted-arithmetic", delay_s=0.02)


# ---------------------------------------------------------------------------------------------
# Engines that count how often they are built, or die once (tests/test_stage_engines.py)

BUILT: list[str] = []


def counting_engine(config) -> ScriptedEngine:
    """The arithmetic engine; every construction is recorded in :data:`BUILT`."""
    BUILT.append("counting")
    return ScriptedEngine(_arithmetic_respond, model_id="scripted-arithmetic")


def dies_once_engine(config):
    """The first engine built dies at its first request (``EngineDiedError``); later ones are
    healthy: a dead engine replaced for the retried bundle."""
    from fakes import FaultyScriptedEngine

    BUILT.append("dies_once")
    first = BUILT.count("dies_once") == 1
    return FaultyScriptedEngine(_arithmetic_respond, model_id="scripted-arithmetic",
                                die_after=1 if first else None)
