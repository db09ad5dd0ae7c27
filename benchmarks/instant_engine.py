"""An engine that answers instantly, for measuring the pipeline itself (``kind: custom``,
``factory: instant_engine:make``, with this folder on PYTHONPATH).

Questions are "What is A + B?"; answers are right or wrong by seed, so every stage has work.
"""

from __future__ import annotations

import re

from steplabel.engines.base import ChatMessage, GenerationRequest, GenerationResult

_QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


class InstantEngine:
    model_id = "instant"

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        prompt = request.prompt
        seed = request.seed or 0
        texts = []
        if "<paragraph_0>" in prompt:
            texts = [("\\boxed{-1}" if (seed + i) % 3 else "\\boxed{0}") for i in range(request.n)]
        else:
            match = _QUESTION.search(prompt)
            a, b = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
            for i in range(request.n):
                answer = a + b if (seed + i) % 4 else a + b + 1
                if prompt.endswith("Step 1:"):
                    texts.append(f" Add {a} and {b}.\nStep 2: The answer is: {answer}")
                else:
                    texts.append(f"Step 3: The answer is: {answer}")
        tokens = tuple(len(t.split()) for t in texts)
        return GenerationResult(tuple(texts), tokens, tuple("stop" for _ in texts),
                                prompt_tokens=len(prompt.split()), cached_prompt_tokens=0)

    def apply_chat_template(self, messages, *, add_generation_prompt=True) -> str:
        text = "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")

    def token_pieces(self, text: str) -> list[str]:
        return re.findall(r"\s*\S+|\s+", text)


def make(config) -> InstantEngine:
    return InstantEngine()
