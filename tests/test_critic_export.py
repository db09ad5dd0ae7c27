"""``steplabel export --format sft|thinkprm``: kept critiques as SFT data that TRL's
``SFTTrainer`` trains on (a tiny random model built offline; the embedded model: engine tier)."""

import json
from pathlib import Path

import pytest

from steplabel.annotators.critic import verification_request
from steplabel.dataset import storage
from steplabel.dataset.export import ExportError, ExportOptions, export_dataset
from steplabel.pipelines.cli import main
from steplabel.pipelines.job import run_job
from test_critic_job import critic_manifest
from test_pipeline import write_problems

pytestmark = pytest.mark.pipeline

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset with critiques, made by the full job with the scripted critic."""
    base = tmp_path_factory.mktemp("critic-export")
    source = write_problems(base / "problems.jsonl", 6)
    out = base / "dataset"
    run_job(critic_manifest(source), out_dir=str(out))
    return out


@pytest.fixture(scope="module")
def kept(dataset):
    return [r for r in storage.iter_rows(str(dataset), "critiques") if r["kept"]]


def load_sft(out: Path) -> list[dict]:
    import datasets

    return list(datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"),
                                      split="train"))


def test_sft_export_holds_exactly_the_kept_critiques(dataset, kept, tmp_path):
    out = tmp_path / "sft"
    assert main(["export", str(dataset), "--format", "sft", "--out", str(out)]) == 0
    examples = load_sft(out)
    assert kept and len(examples) == len(kept)
    by_key = {(r["problem_id"], r["solution_index"], r["sample_index"]): r for r in kept}
    for example in examples:
        row = by_key[(example["problem_id"], example["solution_index"],
                      example["sample_index"])]
        user, assistant = example["messages"]
        assert user == {"role": "user", "content": verification_request(row)}
        assert assistant == {"role": "assistant", "content": row["critique"]}
        assert "<paragraph_0>" in user["content"] and "\\boxed{" in assistant["content"]
    info = json.loads((out / "export.json").read_text())
    critiques = sum(1 for _ in storage.iter_rows(str(dataset), "critiques"))
    assert info["counts"] == {"critiques_read": critiques, "examples": len(kept),
                              "skipped_not_kept": critiques - len(kept)}


def test_thinkprm_export_is_prompt_completion_jsonl(dataset, kept, tmp_path):
    out = tmp_path / "thinkprm"
    export_dataset(str(dataset), out_dir=str(out), options=ExportOptions(format="thinkprm"))
    lines = [json.loads(line) for path in sorted((out / "data").glob("*.jsonl"))
             for line in path.read_text().splitlines()]
    assert len(lines) == len(kept)
    assert {(x["problem_id"], x["solution_index"], x["sample_index"]) for x in lines} == {
        (r["problem_id"], r["solution_index"], r["sample_index"]) for r in kept}
    for line in lines:
        assert set(line) == {"prompt", "completion", "problem_id", "solution_index",
                             "sample_index"}
        assert line["prompt"].startswith("You are a careful verifier")
        assert "<|user|>" not in line["prompt"]  # plain text: no chat template


def test_critique_formats_refuse_step_label_options_and_missing_critiques(dataset, tmp_path):
    with pytest.raises(ExportError, match="do not apply"):
        ExportOptions(format="sft", keep_after_first_error=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ExportError, match="no critiques"):
        export_dataset(str(plain), out_dir=str(tmp_path / "x"), options=ExportOptions("sft"))


def test_a_changed_template_is_skipped_and_counted(dataset, kept):
    from collections import Counter

    from steplabel.dataset.export import critique_example

    counts: Counter = Counter()
    assert critique_example({**kept[0], "template_sha256": "0" * 64}, "sft", counts) is None
    assert counts == {"skipped_request_not_reproducible": 1}


def offline_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts``, with a chat template: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<pad>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_sft(model, tokenizer, train_dataset, out: Path, steps: int = 3):
    """``steps`` optimizer steps of TRL's SFTTrainer on CPU; returns the trainer."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, max_length=1024, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset,
                         processing_class=tokenizer)
    trainer.train()
    return trainer


def test_sft_export_trains_a_tiny_model_in_trl(dataset, tmp_path):
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path / "sft"
    export_dataset(str(dataset), out_dir=str(out), options=ExportOptions(format="sft"))
    train = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"),
                                  split="train")
    texts = [m["content"] for example in train for m in example["messages"]]
    tokenizer = offline_tokenizer(texts)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = train_sft(model, tokenizer, train, tmp_path / "trainer")
    assert trainer.state.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)  # not NaN
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.engine
def test_sft_export_trains_the_embedded_model(dataset, tmp_path):
    """The SFT export on the embedded model and its own chat template, 2 steps on CPU."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steplabel.models import ensure_embedded_model

    out = tmp_path / "sft"
    export_dataset(str(dataset), out_dir=str(out), options=ExportOptions(format="sft"))
    train = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"),
                                  split="train")
    path = str(ensure_embedded_model().path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    trainer = train_sft(model, tokenizer, train, tmp_path / "trainer", steps=2)
    assert trainer.state.global_step == 2
