"""``steplabel show``, the HTML report's examples and the dataset card, on a dataset made by a
real run of the pipeline with the scripted engine."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steplabel.dataset import storage
from steplabel.dataset.card import card_header, rewrite_card
from steplabel.pipelines.cli import main
from steplabel.dataset.inspect import dataset_report, render_html
from steplabel.pipelines.job import run_job
from steplabel.dataset.show import (
    Style,
    render_search,
    sample_trajectories,
    search_example,
    select_searches,
    select_trajectories,
    trajectory_example,
)
from steplabel.schemas.records import OUTPUT_DIRS, OUTPUTS
from test_pipeline import BAD_LINES, manifest_for, write_problems

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("show")
    source = write_problems(base / "problems.jsonl", 8, BAD_LINES)
    out = base / "dataset"
    run_job(manifest_for(source), out_dir=str(out))
    return out


def rows(out, output):
    return list(storage.iter_rows(str(out), output))


def symbol_of(label, index, labels):
    return "·" if index >= len(labels) else "?" if label is None else "✓" if label else "✗"


def test_every_step_shows_its_label_mc_value_and_counts(dataset, capsys):
    kept = rows(dataset, "trajectories")
    row = next(r for r in kept if r["labels"] and not all(r["labels"]))  # one with an error
    assert main(["show", str(dataset), "--problem", row["problem_id"], "--kept",
                 "--limit", "0", "--color", "never"]) == 0
    text = capsys.readouterr().out
    block = next(b for b in text.split("── ")
                 if b.startswith(f"{row['problem_id']} · solution {row['solution_index']} "))
    assert f"kept: {row['consensus_reason']}" in block
    for index, step in enumerate(row["steps"]):
        label = row["labels"][index] if index < len(row["labels"]) else None
        value = row["mc_values"][index]
        counts = f"{row['mc_n_correct'][index]}/{row['mc_n_total'][index]}"
        line = next(l for l in block.splitlines() if step.splitlines()[0][:30] in l)
        assert line.lstrip().startswith(f"{symbol_of(label, index, row['labels'])} {index:>2}"
                                        f"  MC {value:.2f} {counts}")
    first = row["labels"].index(False)
    marked = next(l for l in block.splitlines() if "◀ first error" in l)
    assert f" {first:>2}  MC" in marked
    assert f"first errors: Monte Carlo {row['mc_first_error']}" in block
    assert f"consensus: kept ({row['consensus_reason']})" in block


def test_filters(dataset, capsys):
    kept, rejected = rows(dataset, "trajectories"), rows(dataset, "rejected")
    both = select_trajectories(str(dataset), limit=None)
    assert len(both) == len(kept) + len(rejected)
    assert [e["kept"] for e in both[:4]] == [True, False, True, False]  # alternating
    reason = rejected[0]["consensus_reason"]
    only = select_trajectories(str(dataset), kept=False, reason=reason, limit=None)
    assert len(only) == sum(r["consensus_reason"] == reason for r in rejected) > 0
    assert all(not e["kept"] and e["consensus_reason"] == reason for e in only)
    problem = kept[0]["problem_id"]
    assert {e["problem_id"] for e in select_trajectories(str(dataset), problem=problem,
                                                         limit=None)} == {problem}
    no_error = select_trajectories(str(dataset), kept=True, first_error=-1, limit=None)
    assert len(no_error) == sum(all(r["labels"]) and len(r["labels"]) == len(r["steps"])
                                for r in kept)
    at_one = select_trajectories(str(dataset), first_error=1, limit=None)
    assert at_one and all(e["first_error"] == 1 for e in at_one)
    assert len(select_trajectories(str(dataset), limit=2)) == 2
    assert main(["show", str(dataset), "--problem", "nope"]) == 0
    assert "nothing matches" in capsys.readouterr().err


def test_rejected_show_monte_carlo_labels_and_unknowns(dataset):
    row = dict(rows(dataset, "rejected")[0])
    row["hard_labels"] = [None] + list(row["hard_labels"][1:])
    example = trajectory_example(row, "rejected")
    assert example["labels_from"] == "monte_carlo" and not example["kept"]
    assert example["steps"][0]["label_state"] == "unknown"
    assert example["first_error"] is None  # an unknown label first: the first error is unknown


def test_json_output(dataset, capsys):
    assert main(["show", str(dataset), "--rejected", "--json", "--limit", "2"]) == 0
    examples = json.loads(capsys.readouterr().out)
    assert len(examples) == 2 and all(e["output"] == "rejected" for e in examples)
    assert {"steps", "judge_votes", "consensus_reason", "mc_first_error"} <= set(examples[0])


def test_omegaprm_searches_show_the_tree_values_along_the_solution(dataset, capsys):
    searches = select_searches(str(dataset), limit=None)
    assert len(searches) == len(rows(dataset, "omegaprm_searches"))
    states = rows(dataset, "omegaprm_states")
    squeeze = lambda text: re.sub(r"\s+", "", text or "")  # noqa: E731
    probed = 0
    for example in searches:
        tree = [s for s in states if s["problem_id"] == example["problem_id"]]
        pieces = [p["text"] for p in example["pieces"]]
        for piece in example["pieces"]:
            prefix = squeeze("".join(pieces[:piece["index"] + 1]))
            match = [s for s in tree if squeeze(s["prefix"]) == prefix]
            if match:
                assert piece["mc_value"] == match[0]["mc_value"]
                assert piece["n_total"] == match[0]["n_total"]
                probed += piece["state_kind"] == "probe"
            else:
                assert piece["mc_value"] is None
        if example["first_error"] is not None and example["first_error"] >= 0:
            assert example["pieces"][example["first_error"]]["first_error"]
    assert probed > 0  # binary searches probed prefixes of the solutions they searched
    assert main(["show", str(dataset), "--omegaprm", "--limit", "1", "--color", "never"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("── OmegaPRM search 0 of ") and "MC of the question" in text


@pytest.mark.unit
def test_search_pieces_show_the_budget_label_and_interval():
    """Under a budget a probe's mark is its decided label, not MC > 0: an undecided probe (MC
    0.5) is '?' with its reason, beside its 90% interval (schema 1.4); a state row without the
    posterior columns is read as before."""
    def state(node, prefix, value, label, **extra):
        return {"problem_id": "x", "node_id": node, "parent_id": None if node == "x/0" else "x/0",
                "record_type": "root" if node == "x/0" else "probe", "prefix": prefix,
                "mc_value": value, "hard_label": label, "n_correct": 4, "n_total": 8,
                "n_unknown": 0, "n_truncated": 0, **extra}

    states = [state("x/0", "", 0.5, True),
              state("x/1", "a", 0.5, None, mc_interval_low=0.25, mc_interval_high=0.75,
                    mc_label_reason="undecided"),
              state("x/2", "ab", 0.25, True)]  # decided positive: P(p > floor) high enough
    example = search_example({"problem_id": "x", "search_index": 0, "start_node": "x/0",
                              "rollout_id": "x/0#0", "pieces": ["a", "b", "c"],
                              "first_error": None, "reason": "probe_undecided",
                              "rollouts_used": 16}, states)
    first, second = example["pieces"][:2]
    assert (first["hard_label"], first["interval"], first["label_reason"]) == (
        None, (0.25, 0.75), "undecided")
    assert (second["hard_label"], second["interval"]) == (True, None)
    lines = render_search(example, style=Style(False), width=100).splitlines()
    assert lines[2].startswith("  ?  0  MC 0.50 [0.25, 0.75]") and "probe (undecided)" in lines[2]
    assert lines[3].startswith("  ✓  1  MC 0.25")


def test_missing_columns_are_absent_not_errors(tmp_path, dataset):
    """A dataset of another schema version: optional columns missing."""
    table = pq.read_table(storage.output_files(str(dataset), "trajectories")[0])
    keep = [n for n in table.column_names if n not in (
        "mc_n_unknown", "mc_n_truncated", "policy_truncated", "judge_votes", "labels",
        "omegaprm_first_error", "label_source")]
    out = tmp_path / "old"
    (out / "trajectories").mkdir(parents=True)
    pq.write_table(table.select(keep), out / "trajectories" / "part-00000-of-00001.parquet")
    examples = select_trajectories(str(out), limit=None)
    assert len(examples) == table.num_rows
    assert all(e["labels_from"] == "monte_carlo" for e in examples)  # no final labels column
    assert main(["show", str(out), "--color", "never"]) == 0
    search = search_example({"problem_id": "x", "pieces": ["a"]}, [])
    assert search["pieces"][0]["mc_value"] is None and search["question"] is None


def test_html_report_has_browsable_examples(dataset):
    examples = {output: sample_trajectories(str(dataset), output, 4)
                for output in ("trajectories", "rejected")}
    page = render_html(dataset_report(str(dataset)), examples)
    assert "<h2 id='examples'>Example trajectories</h2>" in page
    blocks = re.findall(r"<details class='example (kept|rejected)'.*?</details>", page, re.S)
    assert blocks.count("kept") == len(examples["trajectories"]) > 0
    assert blocks.count("rejected") == len(examples["rejected"]) > 0
    first = examples["trajectories"][0]
    block = re.search(r"<details class='example kept' open>.*?</details>", page, re.S).group(0)
    strip = re.search(r"<span class='strip'>(.*?)</span></summary>", block, re.S).group(1)
    assert strip.count("<span") == len(first["steps"])  # one MC cell per step
    assert block.count("<td class='lab ") == len(first["steps"])


def test_sampled_examples_vary(dataset):
    chosen = sample_trajectories(str(dataset), "trajectories", 4)
    kinds = {("none" if e["first_error"] == -1 else "error") for e in chosen}
    assert len(chosen) == 4 and kinds == {"none", "error"}


def test_dataset_card_loads_every_output_with_datasets(dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    text = (dataset / "README.md").read_text()
    header = card_header(text)
    info = json.loads((dataset / "info.json").read_text())
    present = [o for o in OUTPUTS if info["rows"][o]]
    assert [c["config_name"] for c in header["configs"]] == present
    assert [c["config_name"] for c in header["configs"] if c.get("default")] == ["trajectories"]
    for config in header["configs"]:  # only Parquet shards of the outputs: no _work, no logs
        (files,) = config["data_files"]
        assert files["path"] == f"{OUTPUT_DIRS[config['config_name']]}/*.parquet"
    for output in present:
        loaded = datasets.load_dataset(str(dataset), output, split="train",
                                       cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == info["rows"][output], output
    default = datasets.load_dataset(str(dataset), split="train", cache_dir=str(tmp_path / "c2"))
    assert default.num_rows == info["rows"]["trajectories"]
    assert "## Label statistics" in text and "## Manifest" in text
    assert "positive-step rate" in text and "consensus" in text.lower()


def test_card_can_be_rewritten_for_an_older_dataset(dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    (copy / "README.md").unlink()
    rewrite_card(str(copy))
    assert card_header((copy / "README.md").read_text())["configs"]
    (copy / "README.md").unlink()
    assert main(["inspect", str(copy), "--write-card"]) == 0
    assert (copy / "README.md").read_text() == (dataset / "README.md").read_text()
