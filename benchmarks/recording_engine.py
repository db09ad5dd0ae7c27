"""The embedded model on vLLM, recording every request it serves (``kind: custom``,
``factory: recording_engine:make``; the record goes to ``$STEPLABEL_RECORD``)."""

from __future__ import annotations

import json
import os
import threading
import time

from steplabel.engines.base import GenerationRequest, GenerationResult
from steplabel.schemas.config import EngineConfig


class RecordingEngine:
    def __init__(self, engine, path: str) -> None:
        self._engine = engine
        self.model_id = engine.model_id
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        submitted = time.time()
        result = await self._engine.generate(request)
        record = {
            "prompt": request.prompt, "n": request.n, "seed": request.seed,
            "max_tokens": request.max_tokens, "temperature": request.temperature,
            "top_p": request.top_p, "stop": list(request.stop),
            "submitted": submitted, "completed": time.time(),
            "generated_tokens": result.total_generated_tokens,
            "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_prompt_tokens,
        }
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        return result

    def __getattr__(self, name):
        return getattr(self._engine, name)


async def make(config: EngineConfig) -> RecordingEngine:
    from steplabel.engines.vllm_engine import VLLMEngine

    engine = await VLLMEngine.start(EngineConfig(kind="vllm", model="embedded",
                                                 dtype=config.dtype,
                                                 max_model_len=config.max_model_len))
    return RecordingEngine(engine, os.environ["STEPLABEL_RECORD"])
