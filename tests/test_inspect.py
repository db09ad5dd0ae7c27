"""``steplabel inspect``: text, JSON and a self-contained HTML report; streaming statistics."""

import base64
import json
import re
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from steplabel.dataset import storage
from steplabel.pipelines.cli import main
from steplabel.pipelines.job import run_job
from steplabel.dataset.stats import compute_stats, iter_problems
from steplabel.schemas.records import OUTPUT_DIRS, to_table
from test_pipeline import BAD_LINES, manifest_for, write_problems

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small dataset made by a real run of the pipeline with the scripted engine."""
    base = tmp_path_factory.mktemp("inspect")
    source = write_problems(base / "problems.jsonl", 6, BAD_LINES)
    out = base / "dataset"
    run_job(manifest_for(source), out_dir=str(out))
    return out


def expected_figures(out: Path) -> dict:
    """The headline figures computed independently, straight from the rows."""
    kept = list(storage.iter_rows(str(out), "trajectories"))
    rejected = list(storage.iter_rows(str(out), "rejected"))
    labels = [label for row in kept for label in row["labels"]]
    states = list(storage.iter_rows(str(out), "omegaprm_states"))
    filtered = list(storage.iter_rows(str(out), "filtered"))
    searched = {r["problem_id"] for r in states}
    dropped = {r["problem_id"] for r in filtered if r["stage"] == "omegaprm_prefilter"}
    mc_values = [v for row in kept + rejected for v in row["mc_values"] if v is not None]
    return {
        "kept": len(kept),
        "rejected": len(rejected),
        "positive_step_rate": round(sum(labels) / len(labels), 6),
        "first_errors": sorted(next((i for i, l in enumerate(r["labels"]) if not l), -1)
                               for r in kept),
        "share_exact_0": round(sum(v == 0 for v in mc_values) / len(mc_values), 6),
        "prefilter_checked": len(searched | dropped),
        "prefilter_dropped": len(dropped),
        "dead_letters": len(list(storage.iter_rows(str(out), "dead_letter"))),
        "agree": sum(r["mc_first_error"] == r["judge_first_error"] for r in kept + rejected),
        "mc_rollouts": sum(r["cost_mc"]["rollouts"] for r in kept + rejected),
    }


def test_text_report(dataset, capsys):
    assert main(["inspect", str(dataset)]) == 0
    text = capsys.readouterr().out
    expected = expected_figures(dataset)
    total = expected["kept"] + expected["rejected"]
    assert "== whole dataset ==" in text and "== source problems ==" in text
    assert f"positive-step rate: {100 * expected['positive_step_rate']:.1f}%" in text
    assert f"consensus: kept {expected['kept']} of {total}" in text
    assert (f"pre-filter: dropped {expected['prefilter_dropped']} of "
            f"{expected['prefilter_checked']} questions") in text
    assert "dead letters: validate:bad_question_type 1" in text
    assert "judge vs Monte Carlo first error" in text
    assert "correct final answer but a negative step: final labels" in text
    assert "cost per kept step label" in text


def test_json_report_matches_the_rows(dataset, capsys):
    assert main(["inspect", str(dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = expected_figures(dataset)
    overall = report["overall"]
    info = json.loads((dataset / "info.json").read_text())
    assert report["completed"] and report["grouping_exact"]
    assert overall["rows"] == info["rows"]
    assert overall["problems"] == 5  # p0, p2..p5 (p1 is a conflicting duplicate)
    assert overall["positive_step_rate"] == expected["positive_step_rate"]
    histogram = overall["first_error_histogram"]
    assert sum(histogram.values()) == expected["kept"]
    assert histogram.get("none", 0) == expected["first_errors"].count(-1)
    assert overall["mc_values"]["share_exact_0"] == expected["share_exact_0"]
    assert overall["consensus"]["kept"] == expected["kept"]
    assert overall["consensus"]["evaluated"] == expected["kept"] + expected["rejected"]
    assert overall["prefilter"]["checked"] == expected["prefilter_checked"]
    assert overall["prefilter"]["dropped"] == expected["prefilter_dropped"]
    assert sum(overall["dead_letter"].values()) == expected["dead_letters"]
    matrix = overall["judge_vs_mc_first_error"]["matrix"]
    assert sum(v for row in matrix.values() for v in row.values()) == (
        expected["kept"] + expected["rejected"])
    assert sum(matrix[k].get(k, 0) for k in matrix) == expected["agree"]
    assert overall["cost"]["mc"]["rollouts"] == expected["mc_rollouts"]
    labels = overall["steps"]["labelled"]
    assert overall["cost_per_label"]["rollouts"] == round(
        sum(overall["cost"][s]["rollouts"] for s in ("policy", "mc", "judge")) / labels, 6)
    assert list(report["per_source"]) == ["problems"]
    assert report["per_source"]["problems"]["consensus"] == overall["consensus"]


def test_html_report_is_self_contained_with_plots(dataset, tmp_path, capsys):
    page_path = tmp_path / "report" / "index.html"
    assert main(["inspect", str(dataset), "--html", str(page_path)]) == 0
    capsys.readouterr()
    page = page_path.read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 2 * 6  # the whole dataset's plots and the source's
    for image in images:
        assert base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n")
    # Nothing loaded from elsewhere: readable offline.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', page)
    assert "<script" not in page
    assert "Whole dataset" in page and "Source problems" in page


def test_inspect_refuses_a_directory_without_shards(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no steplabel output shards" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Per-source and per-problem figures on a hand-made dataset


def trajectory(problem_id, index, source, *, labels, mc, judge, keep, correct=True,
               mc_values=(0.5, 0.0), steps=("Step 1: a", "Step 2: b")):
    return {
        "problem_id": problem_id, "source": source, "solution_index": index,
        "steps": list(steps), "labels": labels, "mc_values": list(mc_values),
        "mc_first_error": mc, "judge_first_error": judge, "consensus_keep": keep,
        "consensus_reason": "agree" if keep else "disagree", "final_answer_correct": correct,
        "cost_policy": {"requests": 1, "rollouts": 1, "prompt_tokens": 10,
                        "generated_tokens": 5, "cached_tokens": 0},
        "cost_mc": {"requests": 2, "rollouts": 8, "prompt_tokens": 40, "generated_tokens": 20,
                    "cached_tokens": 30},
        "cost_judge": None,
    }


def state(problem_id, node, kind, *, hard=True, n_total=4):
    return {"record_type": kind, "problem_id": problem_id, "tree_id": problem_id,
            "node_id": f"{problem_id}/{node}", "hard_label": hard, "n_total": n_total,
            "n_unknown": 0}


def write_dataset(out: Path, rows: dict[str, list[dict]], num_shards: int = 2) -> None:
    for output, items in rows.items():
        for shard in range(num_shards):
            mine = [r for r in items if storage.shard_of(r, num_shards) == shard]
            if mine:
                storage.write_shard(str(out), output, shard, num_shards, mine)


@pytest.mark.unit
def test_per_source_figures_from_hand_made_rows(tmp_path):
    write_dataset(tmp_path, {
        "trajectories": [
            trajectory("a1", 0, "alpha", labels=[True, False], mc=1, judge=1, keep=True),
            trajectory("b1", 0, "beta", labels=[True, True], mc=-1, judge=-1, keep=True,
                       mc_values=(1.0, 1.0)),
        ],
        "rejected": [trajectory("a1", 1, "alpha", labels=None, mc=-1, judge=0, keep=False)],
        "omegaprm_states": [state("a1", 0, "root"), state("a1", 1, "probe", hard=False),
                            state("a1", 2, "completion", n_total=1)],
        "filtered": [{"problem_id": "b1", "source": "beta", "stage": "omegaprm_prefilter",
                      "reason": "all_correct",
                      "cost": {"requests": 1, "rollouts": 8, "prompt_tokens": 9,
                               "generated_tokens": 7, "cached_tokens": 0}}],
        "dead_letter": [{"stage": "validate", "reason": "missing_answer", "problem_id": None,
                         "source": "beta", "original": "{}"}],
    })
    stats = compute_stats(str(tmp_path))
    alpha, beta = stats["per_source"]["alpha"], stats["per_source"]["beta"]
    assert alpha["problems"] == 1 and beta["problems"] == 1
    assert alpha["prefilter"] == {"checked": 1, "dropped": 0, "drop_rate": 0.0}
    assert beta["prefilter"] == {"checked": 1, "dropped": 1, "drop_rate": 1.0}
    assert beta["filtered"] == {"omegaprm_prefilter:all_correct": 1}
    assert beta["dead_letter"] == {"validate:missing_answer": 1}
    assert alpha["positive_step_rate"] == 0.5 and beta["positive_step_rate"] == 1.0
    assert alpha["first_error_histogram"] == {"1": 1}
    assert alpha["labels_by_step_index"]["1"] == {"positive": 0, "negative": 1,
                                                  "positive_rate": 0.0}
    assert alpha["correct_outcome_with_negative_step"]["final_labels"] == {
        "correct_outcome": 1, "with_negative_step": 1, "rate": 1.0}
    assert alpha["judge_vs_mc_first_error"]["matrix"] == {"-1": {"0": 1}, "1": {"1": 1}}
    assert alpha["consensus"] == {"evaluated": 2, "kept": 1, "keep_rate": 0.5,
                                  "reject_reasons": {"disagree": 1}}
    assert beta["mc_values"]["share_exact_1"] == 1.0
    # OmegaPRM: root and probe rollouts (4 + 4), none for the completion; 3 labelled states
    assert alpha["omegaprm"]["rollouts"] == 8 and alpha["omegaprm"]["labelled_states"] == 3
    # beta's dropped question cost 8 pre-filter rollouts and produced no state label
    assert beta["omegaprm"]["rollouts"] == 8
    assert beta["omegaprm"]["rollouts_per_state_label"] is None
    # cost per kept label: alpha spent 2 x (1 + 8) rollouts on 2 kept labels
    assert alpha["cost_per_label"]["rollouts"] == 9.0
    assert stats["overall"]["problems"] == 2 and stats["grouping_exact"]


@pytest.mark.unit
def test_problems_are_grouped_across_outputs(tmp_path):
    write_dataset(tmp_path, {
        "trajectories": [trajectory(f"p{i}", 0, "s", labels=[True], mc=-1, judge=-1, keep=True,
                                    steps=("x",), mc_values=(1.0,)) for i in range(30)],
        "omegaprm_states": [state(f"p{i}", 0, "root") for i in range(0, 30, 3)],
    }, num_shards=3)
    groups = list(iter_problems(str(tmp_path)))
    assert sorted(g.problem_id for g in groups) == sorted(f"p{i}" for i in range(30))
    for group in groups:
        number = int(group.problem_id[1:])
        assert len(group.rows["trajectories"]) == 1
        assert len(group.rows.get("omegaprm_states", [])) == (1 if number % 3 == 0 else 0)


@pytest.mark.unit
def test_statistics_memory_stays_flat(tmp_path):
    def peak_bytes(count: int, folder: Path) -> int:
        write_dataset(folder, {"trajectories": [
            trajectory(f"p{i:06d}", 0, "s", labels=[True] * 8, mc=-1, judge=-1, keep=True,
                       steps=[f"Step {k}: some text of a step {i}" for k in range(8)],
                       mc_values=[1.0] * 8) for i in range(count)]}, num_shards=1)
        tracemalloc.start()
        stats = compute_stats(str(folder))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats["overall"]["problems"] == count
        return peak

    small = peak_bytes(1_500, tmp_path / "small")
    large = peak_bytes(6_000, tmp_path / "large")
    assert large < 1.5 * small, (small, large)  # 4x the rows, about the same peak


@pytest.mark.unit
def test_shard_order_is_detected_and_an_unknown_order_is_reported(tmp_path):
    from steplabel.dataset.stats import PROBLEM_ORDERS

    ids = [f"p{i}" for i in range(12)]
    by_checkpoint = sorted(ids, key=PROBLEM_ORDERS["checkpoint"])
    assert by_checkpoint != sorted(ids)  # the two orders really differ on these ids
    for name, ordered in (("checkpoint", by_checkpoint), ("unknown", by_checkpoint[::-1])):
        folder = tmp_path / name
        for output in ("trajectories", "omegaprm_states"):
            make = (lambda pid: trajectory(pid, 0, "s", labels=[True], mc=-1, judge=-1,
                                           keep=True, steps=("x",), mc_values=(1.0,))
                    ) if output == "trajectories" else (lambda pid: state(pid, 0, "root"))
            path = folder / OUTPUT_DIRS[output] / "part-00000-of-00001.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(to_table(output, [make(pid) for pid in ordered]), path)
        stats = compute_stats(str(folder))
        assert stats["grouping_exact"] is (name == "checkpoint")
        if name == "checkpoint":
            assert stats["overall"]["problems"] == 12
            assert stats["overall"]["prefilter"]["checked"] == 12


def test_rollouts_saved_from_run_counters():
    from steplabel.dataset.inspect import _saved_line, rollouts_saved

    assert rollouts_saved({}) is None
    saved = rollouts_saved({"mc_rollouts": 40, "mc_rollouts_saved_decided": 10,
                            "mc_rollouts_saved_first_error": 30,
                            "mc_rollouts_saved_consensus": 40})
    assert (saved["spent"], saved["fixed_k"], saved["factor"]) == (40, 120, 3.0)
    assert _saved_line(saved) == ("40 spent of 120 with fixed k, 3.0x fewer (not needed: "
                                  "decided 10, first error 30, consensus 40)")


# ---------------------------------------------------------------------------------------------
# The posterior (#26): interval widths, undecided steps, rollouts per step


@pytest.mark.unit
def test_posterior_figures_from_hand_made_rows(tmp_path, capsys):
    three = ("Step 1: a", "Step 2: b", "Step 3: c")
    budget = {**trajectory("a1", 0, "s", labels=None, mc=None, judge=None, keep=False,
                           mc_values=(0.25, 0.5, 1.0), steps=three),
              # step 0: 4 rollouts, decided; step 1: 16 rollouts, undecided; step 2: final
              "mc_rollouts_spent": [4, 16, 0], "mc_label_reasons": [None, "undecided", None],
              "mc_interval_low": [0.05, 0.3, 1.0], "mc_interval_high": [0.6, 0.65, 1.0]}
    fixed = {**trajectory("b1", 0, "s", labels=[True, True], mc=-1, judge=-1, keep=True,
                          mc_values=(1.0, 1.0)),
             "mc_rollouts_spent": [4, 0], "mc_label_reasons": [None, None],
             "mc_interval_low": [0.55, 1.0], "mc_interval_high": [0.99, 1.0]}
    old = trajectory("c1", 0, "s", labels=[True, True], mc=-1, judge=-1, keep=True)  # 1.2
    write_dataset(tmp_path, {"trajectories": [fixed, old], "rejected": [budget]})
    posterior = compute_stats(str(tmp_path))["overall"]["mc_posterior"]
    assert posterior["estimated_steps"] == 3  # final steps and 1.2 rows are not counted
    assert posterior["undecided"] == {"count": 1, "share": round(1 / 3, 6)}
    assert posterior["rollouts_per_step"] == {"mean": 8.0, "histogram": {"4": 2, "16": 1}}
    width = posterior["interval_width"]
    assert width["count"] == 3 and width["mean"] == pytest.approx((0.55 + 0.35 + 0.44) / 3)
    assert {k: v for k, v in width["histogram"].items() if v} == {"0.3-0.4": 1, "0.4-0.5": 1,
                                                                  "0.5-0.6": 1}
    assert main(["inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert ("Monte Carlo posterior: 3 steps estimated, 8.00 rollouts per step (4: 2, 16: 1); "
            "undecided 1 (33.3%)") in text
    assert "90% interval width: mean 0.45" in text


def test_posterior_figures_of_a_fixed_k_run(dataset, capsys):
    """Fixed k = 4 (the scripted job): every estimated step spent 4 rollouts or fewer
    (decided stopping), none is undecided, and every width comes from its step's interval."""
    assert main(["inspect", str(dataset), "--json"]) == 0
    posterior = json.loads(capsys.readouterr().out)["overall"]["mc_posterior"]
    rows = [r for output in ("trajectories", "rejected")
            for r in storage.iter_rows(str(dataset), output)]
    spent = [n for r in rows for n in r["mc_rollouts_spent"] if n]
    assert posterior["estimated_steps"] == len(spent) > 0
    assert posterior["undecided"]["count"] == 0
    assert set(int(k) for k in posterior["rollouts_per_step"]["histogram"]) <= {1, 2, 3, 4}
    assert posterior["rollouts_per_step"]["mean"] == round(sum(spent) / len(spent), 6)
    assert posterior["interval_width"]["count"] == sum(
        1 for r in rows for n, low in zip(r["mc_rollouts_spent"], r["mc_interval_low"])
        if n and low is not None)
