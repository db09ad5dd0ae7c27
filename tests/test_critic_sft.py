"""The critic's SFT examples in TRL's own data helpers and the embedded model's chat template
(slow to import: transformers; no engine). Training on them is shown once the export is wired."""

from __future__ import annotations

import asyncio

import pytest

from fakes import ScriptedEngine
from steplabel.annotators.critic import (
    Critic,
    TrustedLabels,
    critique_rows,
    prompt_completion,
    sft_messages,
)
from steplabel.schemas.rows import as_row

pytestmark = pytest.mark.unit

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = ["Step 1: Tom starts with 3 apples.", "Step 2: 3 + 4 = 8 apples.", "Step 3: 8"]
CRITIQUE = ("Paragraph 0: given. \\boxed{correct}\n"
            "Paragraph 1: 3 + 4 = 7, not 8. \\boxed{incorrect}")


@pytest.fixture(scope="module")
def kept_row() -> dict:
    critic = Critic(ScriptedEngine(lambda request, i: CRITIQUE), run_seed=0)
    result = asyncio.run(critic.critique(problem_id="p", solution_index=0, question=QUESTION,
                                         steps=STEPS, trusted=TrustedLabels(1, "consensus")))
    return as_row(critique_rows(result, manifest_hash="h")[0])


def test_sft_example_is_trl_conversational_and_renders_with_the_chat_template(kept_row):
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    from steplabel.models import ensure_embedded_model

    example = sft_messages(kept_row)
    assert is_conversational(example)
    assert not is_conversational(prompt_completion(kept_row))  # plain-text pair
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model().path)
    text = apply_chat_template(example, tokenizer)["text"]
    request = example["messages"][0]["content"]
    assert request in text and CRITIQUE in text
    assert text.index(request) < text.index(CRITIQUE)
