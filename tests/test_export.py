"""``steplabel export``: TRL, OpenRLHF and Math-Shepherd formats, loadable with ``datasets``."""

import json
from collections import Counter
from pathlib import Path

import pytest

from steplabel.dataset import storage
from steplabel.pipelines.cli import main
from steplabel.dataset.export import (
    MATH_SHEPHERD_TAG,
    ExportError,
    ExportOptions,
    labelled_example,
    math_shepherd_row,
    openrlhf_row,
)
from steplabel.pipelines.job import run_job
from test_pipeline import manifest_for, write_problems

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small dataset made by a real run of the pipeline with the scripted engine."""
    base = tmp_path_factory.mktemp("export")
    source = write_problems(base / "problems.jsonl", 8)
    out = base / "dataset"
    run_job(manifest_for(source), out_dir=str(out))
    return out


@pytest.fixture(scope="module")
def kept(dataset) -> dict[tuple, dict]:
    return {(r["problem_id"], r["solution_index"]): r
            for r in storage.iter_rows(str(dataset), "trajectories")}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from steplabel.models import ensure_embedded_model

    return AutoTokenizer.from_pretrained(ensure_embedded_model().path)


def load(out: Path):
    import datasets

    return datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"),
                                 split="train")


def export(dataset: Path, out: Path, *args: str) -> int:
    return main(["export", str(dataset), "--out", str(out), *args])


def test_trl_export_loads_with_datasets(dataset, kept, tmp_path):
    assert export(dataset, tmp_path / "trl", "--format", "trl") == 0
    rows = load(tmp_path / "trl")
    assert len(rows) == len(kept) > 0
    assert set(rows.column_names) >= {"prompt", "completions", "labels"}
    for row in rows:
        source = kept[(row["problem_id"], row["solution_index"])]
        assert row["prompt"] == source["question"]
        assert row["labels"] == source["labels"]
        assert row["completions"] == source["steps"][:len(source["labels"])]
    info = json.loads((tmp_path / "trl" / "export.json").read_text())
    assert info["trl_step_separator"] == "\n"  # the step_markers splitter joins with newlines
    assert info["counts"]["examples"] == len(kept)


@pytest.mark.filterwarnings("ignore:You are importing from .trl.experimental.")
def test_trl_export_feeds_trl_prm_tokenization(dataset, tmp_path, tokenizer):
    """The real TRL PRM trainer tokenization puts every label on the separator after its step."""
    from trl.experimental.prm import PRMTrainer

    assert export(dataset, tmp_path / "trl", "--format", "trl") == 0
    separator = json.loads((tmp_path / "trl" / "export.json").read_text())["trl_step_separator"]
    separator_ids = tokenizer.encode(separator, add_special_tokens=False)
    checked = 0
    for row in load(tmp_path / "trl"):
        features = {"prompt": row["prompt"], "completions": row["completions"],
                    "labels": row["labels"]}
        tokens = PRMTrainer.tokenize_row(features, tokenizer, separator, max_length=None,
                                         max_completion_length=None,
                                         train_on_last_step_only=False, is_eval=False)
        input_ids, labels = tokens["input_ids"], tokens["labels"]
        assert len(input_ids) == len(labels)
        labelled = [i for i, label in enumerate(labels) if label != -100]
        # one label per step, equal to the step's label, on the separator's last token
        assert [labels[i] for i in labelled] == [int(label) for label in row["labels"]]
        assert all(input_ids[i] == separator_ids[-1] for i in labelled)
        # ...which ends exactly that step: the text since the previous label is step + separator
        start = len(input_ids) - sum(
            len(tokenizer.encode(step, add_special_tokens=False)) + len(separator_ids)
            for step in row["completions"])
        for step, end in zip(row["completions"], labelled):
            assert tokenizer.decode(input_ids[start:end + 1]) == step + separator
            start = end + 1
        assert start == len(input_ids)
        checked += 1
    assert checked > 0


def test_math_shepherd_export(dataset, kept, tmp_path):
    assert export(dataset, tmp_path / "ms", "--format", "math-shepherd") == 0
    rows = load(tmp_path / "ms")
    assert len(rows) == len(kept)
    for row in rows:
        source = kept[(row["problem_id"], row["solution_index"])]
        text, label = row["input"], row["label"]
        assert text.startswith(source["question"] + " Step 1:")
        assert text.count(f" {MATH_SHEPHERD_TAG}") == len(source["labels"])
        assert text.endswith(MATH_SHEPHERD_TAG)
        # label: the same text with each tag replaced, in order, by + or -
        pieces = text.split(MATH_SHEPHERD_TAG)
        signs = ["+" if good else "-" for good in source["labels"]]
        assert label == "".join(p + s for p, s in zip(pieces, signs + [""]))


def test_openrlhf_export_hard_and_soft(dataset, kept, tmp_path):
    assert export(dataset, tmp_path / "hard", "--format", "openrlhf") == 0
    for row in load(tmp_path / "hard"):
        source = kept[(row["problem_id"], row["solution_index"])]
        assert row["input"].count(f" {MATH_SHEPHERD_TAG}") == len(row["value"])
        assert row["value"] == ["+" if good else "-" for good in source["labels"]]
    assert export(dataset, tmp_path / "soft", "--format", "openrlhf", "--labels", "soft") == 0
    for row in load(tmp_path / "soft"):
        source = kept[(row["problem_id"], row["solution_index"])]
        assert row["value"] == source["soft_labels"][:len(source["labels"])]
        assert all(0.0 <= v <= 1.0 for v in row["value"])


def test_openrlhf_placeholder_checked_with_a_tokenizer(dataset, kept, tmp_path, tokenizer,
                                                       capsys):
    from steplabel.models import ensure_embedded_model

    path = str(ensure_embedded_model().path)
    # "ки" is two byte-level tokens for SmolLM2: refused before anything is written.
    assert export(dataset, tmp_path / "a", "--format", "openrlhf", "--tokenizer", path) == 2
    assert "'ки' is 2 tokens" in capsys.readouterr().err
    assert not (tmp_path / "a" / "data").exists()
    # A special token stays one token inside every input.
    assert export(dataset, tmp_path / "b", "--format", "openrlhf", "--tokenizer", path,
                  "--placeholder", "<|endoftext|>") == 0
    placeholder_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = load(tmp_path / "b")
    assert len(rows) == len(kept)
    for row in rows:
        ids = tokenizer(row["input"], add_special_tokens=False)["input_ids"]
        assert ids.count(placeholder_id) == len(row["value"])
    # "#" is one token alone but merges with the space before it (" #"): every input fails
    # the in-context check, so nothing is exported.
    assert export(dataset, tmp_path / "c", "--format", "openrlhf", "--tokenizer", path,
                  "--placeholder", "#") == 2
    assert "skipped_placeholder_not_one_token_in_context" in capsys.readouterr().err


def test_bad_option_combinations_are_refused(dataset, tmp_path, capsys):
    assert export(dataset, tmp_path / "x", "--format", "trl", "--labels", "soft") == 2
    assert "soft labels: openrlhf only" in capsys.readouterr().err
    assert export(dataset, tmp_path / "y", "--format", "trl", "--placeholder", "<x>") == 2
    assert "openrlhf only" in capsys.readouterr().err
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("mine")
    assert export(dataset, tmp_path / "z", "--format", "trl") == 2
    assert "not empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Which steps are exported (hand-made rows)


def row(labels, steps, soft=None, question="What is 2 + 2?"):
    return {"problem_id": "p", "solution_index": 0, "source": "s", "question": question,
            "steps": steps, "labels": labels, "soft_labels": soft}


@pytest.mark.unit
def test_steps_after_the_first_error_are_dropped():
    counts = Counter()
    example = labelled_example(row([True, False], ["a", "b", "c", "d"],
                                   soft=[1.0, 0.0, None, None]), counts)
    assert example.steps == ["a", "b"] and example.labels == [True, False]
    assert example.soft == [1.0, 0.0]
    assert counts["steps_dropped_after_last_label"] == 2


@pytest.mark.unit
def test_unknown_labels_cut_the_example_and_empty_ones_are_skipped():
    counts = Counter()
    example = labelled_example(row([True, None, False], ["a", "b", "c"]), counts)
    assert example.steps == ["a"] and example.labels == [True] and example.soft is None
    assert labelled_example(row([None, True], ["a", "b"]), counts) is None
    assert labelled_example(row(None, ["a"]), counts) is None
    assert counts == Counter(cut_at_unknown_label=2, skipped_no_labels=2,
                             steps_dropped_after_last_label=2)


@pytest.mark.unit
def test_math_shepherd_markers():
    example = labelled_example(row([True, False], ["Step 1: 2 + 2 = 4", "so it is 5"]),
                               Counter())
    out = math_shepherd_row(example)
    assert out["input"] == "What is 2 + 2? Step 1: 2 + 2 = 4 ки\nStep 2: so it is 5 ки"
    assert out["label"] == "What is 2 + 2? Step 1: 2 + 2 = 4 +\nStep 2: so it is 5 -"


@pytest.mark.unit
def test_export_of_hand_made_dataset_counts_what_it_drops(tmp_path):
    from steplabel.dataset.export import export_dataset

    rows = [
        {**row([True, False], ["Step 1: a", "Step 2: b", "Step 3: c"]), "problem_id": "p1"},
        {**row([True, None], ["Step 1: a", "Step 2: b"]), "problem_id": "p2"},
        {**row([True], ["Step 1: ки"]), "problem_id": "p3"},  # the tag inside the text
        {**row(None, ["Step 1: a"]), "problem_id": "p4"},
    ]
    storage.write_shard(str(tmp_path / "ds"), "trajectories", 0, 1, rows)
    result = export_dataset(str(tmp_path / "ds"), out_dir=str(tmp_path / "out"),
                            options=ExportOptions(format="math-shepherd"))
    assert result["counts"] == {
        "trajectories_read": 4, "examples": 2, "steps": 3, "negative_steps": 1,
        "steps_dropped_after_last_label": 2, "cut_at_unknown_label": 1,
        "skipped_no_labels": 1, "skipped_step_tag_in_text": 1}
    with pytest.raises(ExportError, match="no exportable example"):
        storage.write_shard(str(tmp_path / "empty"), "trajectories", 0, 1, [rows[3]])
        export_dataset(str(tmp_path / "empty"), out_dir=str(tmp_path / "out2"),
                       options=ExportOptions(format="trl"))


@pytest.mark.unit
def test_one_rule_cuts_after_the_first_error_unless_asked_to_keep():
    counts = Counter()
    labels, steps = [True, False, True, False, None], ["a", "b", "c", "d", "e"]
    cut = labelled_example(row(labels, steps), counts)
    assert cut.labels == [True, False] and cut.steps == ["a", "b"]
    assert counts["cut_after_first_error"] == 1
    full = labelled_example(row(labels, steps), counts, keep_after_first_error=True)
    assert full.labels == [True, False, True, False]  # still cut before the unknown
    assert counts["cut_at_unknown_label"] == 1


def test_monte_carlo_only_export_ends_at_the_first_error(tmp_path):
    """Defect 5 of issue 12: without consensus the exported labels were the raw hard labels,
    negative steps and all after the first error, although the README said they were cut."""
    from test_label_truth import manifest as faulty_manifest
    from test_label_truth import write_planted

    source = tmp_path / "p.jsonl"
    write_planted(source, 6, num_steps=5)
    dataset = tmp_path / "mc-only"
    run_job(faulty_manifest(source, "realistic", judge=None, consensus=None, omegaprm=None),
            out_dir=str(dataset))
    rows = {(r["problem_id"], r["solution_index"]): r
            for r in storage.iter_rows(str(dataset), "trajectories")}
    assert all(r["label_source"] == "monte_carlo" for r in rows.values())
    assert any(r["labels"].count(False) > 1 for r in rows.values() if r["labels"])

    assert export(dataset, tmp_path / "cut", "--format", "trl") == 0
    assert export(dataset, tmp_path / "full", "--format", "trl",
                  "--keep-after-first-error") == 0
    cut, full = load(tmp_path / "cut"), load(tmp_path / "full")
    longer = 0
    for example in cut:
        labels = rows[(example["problem_id"], example["solution_index"])]["labels"]
        assert False not in example["labels"][:-1]  # at most one negative, the last
        known = labels[:labels.index(None)] if None in labels else labels
        first = known.index(False) if False in known else len(known) - 1
        assert example["labels"] == known[:first + 1]
    for example in full:
        labels = rows[(example["problem_id"], example["solution_index"])]["labels"]
        known = labels[:labels.index(None)] if None in labels else labels
        assert example["labels"] == known
        longer += len(known) > (known.index(False) + 1 if False in known else len(known))
    assert longer > 0
    written = json.loads((tmp_path / "full" / "export.json").read_text())
    assert written["keep_after_first_error"] is True


# ---------------------------------------------------------------------------------------------
# The posterior (#26): OpenRLHF's posterior labels with a weight; TRL skips undecided steps;
# the existing formats are byte for byte what they were for a fixed-k dataset


@pytest.mark.unit
def test_posterior_and_weight_of_the_exported_steps():
    counts = Counter()
    source = {**row([True, False, None], ["a", "b", "c"], soft=[1.0, 0.0, None]),
              "mc_posterior_mean": [0.75, 0.25, None], "mc_interval_low": [0.4, 0.05, None],
              "mc_interval_high": [0.95, 0.6, None], "mc_label_reasons": [None, None, None]}
    example = labelled_example(source, counts)
    assert example.posterior == [0.75, 0.25]
    assert example.weight == pytest.approx([1 - 0.55, 1 - 0.55])
    out = openrlhf_row(example, placeholder="<s>", labels="posterior")
    assert out["value"] == [0.75, 0.25] and out["weight"] == example.weight
    # a dataset before schema 1.3 has no posterior: no weight, the other kinds unchanged
    old = labelled_example(row([True], ["a"], soft=[1.0]), counts)
    assert old.posterior is None and old.weight is None and old.soft == [1.0]


@pytest.mark.unit
def test_an_undecided_step_ends_the_example_and_is_counted_apart():
    counts = Counter()
    source = {**row([True, None, None], ["a", "b", "c"]),
              "mc_label_reasons": [None, "undecided", None]}
    example = labelled_example(source, counts)
    assert example.labels == [True] and example.steps == ["a"]
    assert counts == Counter(cut_at_undecided=1, steps_dropped_after_last_label=2)
    # an unknown label without the budget's reason is the old count
    labelled_example({**source, "mc_label_reasons": [None, None, None]}, counts)
    assert counts["cut_at_unknown_label"] == 1


def test_openrlhf_posterior_export(dataset, kept, tmp_path):
    assert export(dataset, tmp_path / "post", "--format", "openrlhf",
                  "--labels", "posterior") == 0
    rows = load(tmp_path / "post")
    assert len(rows) == len(kept) > 0
    for out in rows:
        source = kept[(out["problem_id"], out["solution_index"])]
        n = len(source["labels"])
        assert out["value"] == source["mc_posterior_mean"][:n]
        assert out["weight"] == pytest.approx(
            [1 - (h - lo) for lo, h in zip(source["mc_interval_low"][:n],
                                           source["mc_interval_high"][:n])])
        assert all(0.0 <= w <= 1.0 for w in out["weight"])
    info = json.loads((tmp_path / "post" / "export.json").read_text())
    assert info["weight"].startswith("1 - width of the step's 90% credible interval")
    assert info["columns"] == ["input", "value", "weight", "problem_id", "solution_index",
                               "source"]


def as_schema_1_2(new: Path, old: Path) -> None:
    """A copy of the dataset ``new`` without the columns schema 1.3 added (as 1.2 wrote it)."""
    import shutil

    import pyarrow.parquet as pq

    added = ["mc_posterior_mean", "mc_interval_low", "mc_interval_high", "mc_p_above",
             "mc_rollouts_spent", "mc_label_reasons"]
    shutil.copytree(new, old)
    for output in ("trajectories", "rejected"):
        for path in storage.output_files(str(old), output):
            table = pq.read_table(path)
            assert set(added) <= set(table.column_names)
            pq.write_table(table.drop_columns(added), path)


def test_fixed_k_exports_are_byte_for_byte_those_without_the_posterior(dataset, tmp_path,
                                                                        capsys):
    """The posterior columns change nothing in the existing formats: the data files exported
    from a fixed-k dataset and from the same dataset without those columns are identical."""
    old = tmp_path / "old"
    as_schema_1_2(dataset, old)
    formats = [("math-shepherd",), ("trl",), ("openrlhf",), ("openrlhf", "--labels", "soft")]
    for index, (fmt, *more) in enumerate(formats):
        for name, source in (("new", dataset), ("old", old)):
            assert export(source, tmp_path / f"{name}{index}", "--format", fmt, *more) == 0
        new_files = sorted((tmp_path / f"new{index}" / "data").glob("*.parquet"))
        assert new_files
        for path in new_files:
            assert path.read_bytes() == (tmp_path / f"old{index}" / "data" /
                                         path.name).read_bytes(), (fmt, path.name)
    # without posterior columns, --labels posterior has nothing to export, and says so
    assert export(old, tmp_path / "none", "--format", "openrlhf", "--labels", "posterior") == 2
    assert "skipped_no_posterior" in capsys.readouterr().err


def test_trl_summary_says_undecided_steps_are_not_exported(dataset, tmp_path, capsys):
    assert export(dataset, tmp_path / "trl", "--format", "trl") == 0
    assert ("labels are binary: steps the adaptive budget left undecided are not exported"
            in capsys.readouterr().out)
