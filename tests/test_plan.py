"""``steplabel plan``: the seeded pilot sample, projections equal to a run's own totals, reading a
finished dataset, JSON output, and times that scale with the given throughput."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from steplabel.dataset import plan, storage
from steplabel.pipelines import cli
from steplabel.pipelines.job import run_job
from steplabel.schemas.manifest import load_manifest

pytestmark = pytest.mark.pipeline

SCRIPTED = {"kind": "custom", "factory": "fakes:arithmetic_engine"}
PROBLEMS = 7


def write_source(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + {3 * i + 1}?",
                                     "answer": str(4 * i + 1)}) + "\n")
    return path


def write_manifest(folder: Path, source: Path, **source_extra) -> Path:
    data = {
        "name": "plan-scripted",
        "seed": 11,
        "source": {"kind": "jsonl", "path": str(source), **source_extra},
        "models": {"policy": SCRIPTED},
        "policy": {"samples": 3},
        "monte_carlo": {"rollouts": 4},
        "omegaprm": {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 3},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 2},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The whole job on the source: what every projection is checked against."""
    base = tmp_path_factory.mktemp("plan")
    manifest_path = write_manifest(base, write_source(base / "problems.jsonl", PROBLEMS))
    out = str(base / "full")
    result = run_job(load_manifest(manifest_path), out_dir=out)
    return manifest_path, out, result


def plan_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert cli.main(["plan", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # pure JSON on stdout


def run_totals(stats: dict) -> dict:
    """A run's own totals per stage, as stats.json records them."""
    overall, counters = stats["overall"], stats["counters"]
    return {
        "policy": overall["cost"]["policy"],
        "monte_carlo": overall["cost"]["mc"],
        "judge": overall["cost"]["judge"],
        "omegaprm": {"rollouts": overall["omegaprm"]["rollouts"],
                     "prompt_tokens": counters["omegaprm_prompt_tokens"],
                     "generated_tokens": counters["omegaprm_generated_tokens"]},
    }


def assert_equals_run(result: dict, stats: dict) -> None:
    totals = run_totals(stats)
    for stage, expected in totals.items():
        for name in ("rollouts", "prompt_tokens", "generated_tokens"):
            figure = result["stages"][stage][name]
            assert figure["projected"] == pytest.approx(expected[name]), (stage, name)
            assert figure["low"] == figure["high"] == figure["projected"]  # nothing unsampled
    assert stats["counters"]["omegaprm_rollouts"] == totals["omegaprm"]["rollouts"]
    assert stats["counters"]["mc_rollouts"] == totals["monte_carlo"]["rollouts"]
    for name in ("rollouts", "prompt_tokens", "generated_tokens"):
        assert result["total"][name]["projected"] == pytest.approx(
            sum(t[name] for t in totals.values()))


# ---------------------------------------------------------------------------------------------
# The pilot sample


def test_sample_is_seeded_sorted_and_without_replacement():
    first = plan.sample_indices(1000, 24, seed=5)
    assert first == plan.sample_indices(1000, 24, seed=5)
    assert first == sorted(set(first)) and len(first) == 24
    assert all(0 <= i < 1000 for i in first)
    assert first != plan.sample_indices(1000, 24, seed=6)
    assert plan.sample_indices(10, 24, seed=5) == list(range(10))  # the whole source


def test_pilot_source_copies_the_sampled_lines_and_respects_limit(tmp_path):
    source = write_source(tmp_path / "problems.jsonl", 50)
    manifest = load_manifest(write_manifest(tmp_path, source, limit=20, answer_format="plain"))
    assert plan.count_source_rows(manifest.source) == 20  # limit is the source's size
    indices = plan.sample_indices(20, 6, seed=manifest.seed)
    pilot = plan.write_pilot_source(manifest, indices, tmp_path / "pilot")
    lines = source.read_bytes().splitlines()
    assert Path(pilot.source.path).read_bytes().splitlines() == [lines[i] for i in indices]
    assert max(indices) < 20
    assert pilot.source.limit is None
    assert pilot.source.fields == manifest.source.fields
    assert pilot.source.answer_format == manifest.source.answer_format
    assert pilot.source.source_name == manifest.source.source_name  # rows keep their source
    again = plan.write_pilot_source(manifest, plan.sample_indices(20, 6, seed=manifest.seed),
                                    tmp_path / "again")
    assert Path(again.source.path).read_bytes() == Path(pilot.source.path).read_bytes()


def test_pilot_source_from_parquet_keeps_the_schema(tmp_path):
    rows = [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}
            for i in range(12)]
    path = tmp_path / "problems.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = yaml.safe_load(write_manifest(tmp_path, path).read_text())
    data["source"]["kind"] = "parquet"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    manifest = load_manifest(tmp_path / "job.yaml")
    assert plan.count_source_rows(manifest.source) == 12
    indices = plan.sample_indices(12, 4, seed=manifest.seed)
    pilot = plan.write_pilot_source(manifest, indices, tmp_path / "pilot")
    table = pq.read_table(pilot.source.path)
    assert table.to_pylist() == [rows[i] for i in indices]
    assert pilot.source.kind == "parquet"


# ---------------------------------------------------------------------------------------------
# Projections


def test_projection_interval_is_the_normal_approximation():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    result = plan.project(values, 100, finite=False)
    half = plan.Z95 * values.std(ddof=1) / 2 * 100
    assert result["projected"] == pytest.approx(250)
    assert result["high"] - result["projected"] == pytest.approx(half)
    assert result["projected"] - result["low"] == pytest.approx(half)
    finite = plan.project(values, 100, finite=True)
    assert finite["high"] - 250 == pytest.approx(half * math.sqrt(96 / 99))
    assert plan.project(values, 4, finite=True)["low"] == 10  # the whole population: exact
    assert plan.project(np.array([3.0]), 10, finite=True)["low"] is None  # no spread from one


def test_whole_source_pilot_equals_the_runs_own_totals(full_run, tmp_path, capsys):
    manifest_path, _, result = full_run
    projected = plan_json(capsys, manifest_path, "--pilot", 50, "--pilot-out", tmp_path / "pilot")
    assert projected["source_rows"] == projected["pilot_rows"] == PROBLEMS
    assert_equals_run(projected, result.stats)
    pilot_stats = json.loads((tmp_path / "pilot" / "dataset" / "stats.json").read_text())
    for name in ("engine_workers", "engine_busy_ms", "engine_sample_ms"):
        assert name in pilot_stats["counters"]
    assert projected["throughput"]["source"] == "pilot"
    assert projected["throughput"]["generated_tokens_per_s"] > 0


def test_pilot_sample_projects_within_its_interval_of_the_run(full_run, tmp_path, capsys):
    manifest_path, _, result = full_run
    projected = plan_json(capsys, manifest_path, "--pilot", 4, "--pilot-out", tmp_path / "kept")
    assert projected["pilot_rows"] == 4 and projected["source_rows"] == PROBLEMS
    rollouts = projected["total"]["rollouts"]
    assert rollouts["low"] < rollouts["projected"] < rollouts["high"]
    assert projected["stages"]["policy"]["rollouts"]["projected"] == pytest.approx(
        3 * PROBLEMS)  # every problem samples 3 solutions: no spread
    # The same seed picks the same pilot, so the projection is reproducible.
    again = plan_json(capsys, manifest_path, "--pilot", 4)
    for name in ("rollouts", "prompt_tokens", "generated_tokens"):  # times are measured
        assert again["total"][name] == projected["total"][name]
    # A kept pilot read again gives the same plan, times included.
    reread = plan_json(capsys, manifest_path, "--from", tmp_path / "kept" / "dataset")
    assert reread["total"] == projected["total"]
    assert reread["stages"] == projected["stages"]


def test_from_reads_a_finished_dataset(full_run, capsys):
    manifest_path, out, result = full_run
    projected = plan_json(capsys, manifest_path, "--from", out)
    assert projected["pilot_rows"] == PROBLEMS
    assert_equals_run(projected, result.stats)  # a run of this very source: exact
    capsys.readouterr()
    assert cli.main(["plan", str(manifest_path), "--from", out]) == 0
    text = capsys.readouterr().out
    assert "Monte Carlo" in text and "OmegaPRM" in text and "wall time" in text


def test_tokens_per_s_scales_time(full_run, capsys):
    manifest_path, out, _ = full_run
    slow = plan_json(capsys, manifest_path, "--from", out, "--tokens-per-s", 50,
                     "--engine-start-s", 30)
    fast = plan_json(capsys, manifest_path, "--from", out, "--tokens-per-s", 100,
                     "--engine-start-s", 30, "--accelerators", 2)
    generated = slow["total"]["generated_tokens"]["projected"]
    assert slow["throughput"]["source"] == "given"
    assert slow["total"]["engine_s"]["projected"] == pytest.approx(generated / 50)
    assert fast["total"]["engine_s"]["projected"] == pytest.approx(generated / 100)
    overhead = slow["throughput"]["overhead_s"]
    assert slow["total"]["wall_s"]["projected"] == pytest.approx(30 + overhead + generated / 50)
    assert fast["total"]["wall_s"]["projected"] == pytest.approx(
        30 + overhead + generated / 100 / 2)
    # Accelerator-hours: engine time plus one engine start per accelerator.
    assert fast["total"]["accelerator_hours"]["projected"] == pytest.approx(
        (generated / 100 + 2 * 30) / 3600)
    stage_seconds = sum(s["engine_s"]["projected"] for s in slow["stages"].values())
    assert stage_seconds == pytest.approx(slow["total"]["engine_s"]["projected"])


def test_bad_arguments_are_errors(full_run, capsys):
    manifest_path, out, _ = full_run
    assert cli.main(["plan", str(manifest_path), "--pilot", "0"]) == 2
    assert cli.main(["plan", str(manifest_path), "--from", out, "--accelerators", "0"]) == 2
    assert cli.main(["plan", str(manifest_path), "--from", str(Path(out) / "nope")]) == 2
    assert "error" in capsys.readouterr().err


def test_pilot_source_from_a_datasets_folder(tmp_path):
    import datasets

    rows = [{"id": f"p{i}", "question": f"What is {i} + 2?", "answer": str(i + 2)}
            for i in range(15)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    data = yaml.safe_load(write_manifest(tmp_path, tmp_path / "hf", limit=10).read_text())
    data["source"]["kind"] = "hf"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    manifest = load_manifest(tmp_path / "job.yaml")
    assert plan.count_source_rows(manifest.source) == 10
    indices = plan.sample_indices(10, 3, seed=manifest.seed)
    pilot = plan.write_pilot_source(manifest, indices, tmp_path / "pilot")
    assert pilot.source.kind == "parquet"
    assert pq.read_table(pilot.source.path).to_pylist() == [rows[i] for i in indices]
    assert pilot.source.source_name == "hf"


# ---------------------------------------------------------------------------------------------
# Throughput at the full job's concurrency


def fit_counters(points, *, tokens_at=None) -> dict:
    """``engine_fit_*`` counters of requests ``(b, seconds per step, steps)``."""
    w = sum(n for _, _, n in points)
    counters = {
        "engine_fit_w": w,
        "engine_fit_wb": round(1e3 * sum(n * b for b, _, n in points)),
        "engine_fit_wy": round(1e6 * sum(n * y for _, y, n in points)),
        "engine_fit_wbb": round(1e6 * sum(n * b * b for b, _, n in points)),
        "engine_fit_wby": round(1e9 * sum(n * b * y for b, y, n in points)),
    }
    tokens_at = tokens_at or [(b, n * b) for b, _, n in points]
    counters["engine_fit_tokens"] = sum(t for _, t in tokens_at)
    counters["engine_fit_tokens_over_b"] = round(1e3 * sum(t / b for b, t in tokens_at))
    return counters


def test_step_time_fit_recovers_a_linear_step_time():
    a, c = 0.04, 0.003
    points = [(b, a + c * b, 50) for b in (2, 5, 9, 16, 30)]
    fit = plan.step_time_fit(fit_counters(points))
    assert fit.a == pytest.approx(a, rel=1e-3) and fit.c == pytest.approx(c, rel=1e-3)
    # Tokens generated at 10 and 40 samples in flight, half each: harmonic mean 16.
    fit = plan.step_time_fit(fit_counters(points, tokens_at=[(10, 100), (40, 100)]))
    assert fit.pilot_b == pytest.approx(16, rel=1e-3)
    assert plan.step_time_fit({}) is None
    assert plan.step_time_fit(fit_counters([(8, 0.1, 20), (8, 0.2, 20)])) is None  # one b
    flat = plan.step_time_fit(fit_counters([(4, 0.3, 20), (16, 0.2, 20)]))
    assert flat.c == 0 and flat.a == pytest.approx(0.25)  # falling: read as flat


def test_throughput_at_full_concurrency():
    fit = plan.StepTimeFit(a=1.0, c=0.0, pilot_b=10, weight=100)  # latency bound
    tps, info = plan.at_full_concurrency(5.0, fit, scale=3, limit=None)
    assert tps == pytest.approx(15.0) and info["full_samples"] == 30
    tps, info = plan.at_full_concurrency(5.0, fit, scale=3, limit=16)  # the engine's limit
    assert tps == pytest.approx(8.0) and info["full_samples"] == 16
    compute_bound = plan.StepTimeFit(a=0.0, c=0.01, pilot_b=10, weight=100)
    assert plan.at_full_concurrency(5.0, compute_bound, scale=3, limit=None)[0] == 5.0
    mixed = plan.StepTimeFit(a=0.04, c=0.004, pilot_b=10, weight=100)
    expected = 5.0 * (0.04 / 10 + 0.004) / (0.04 / 30 + 0.004)
    assert plan.at_full_concurrency(5.0, mixed, scale=3, limit=None)[0] == pytest.approx(expected)
    assert plan.at_full_concurrency(5.0, mixed, scale=1, limit=None)[0] == pytest.approx(5.0)
    assert plan.at_full_concurrency(5.0, None, scale=3, limit=None) == (5.0, None)


def test_engine_clock_times_busy_samples_and_requests(monkeypatch):
    from steplabel.pipelines import label

    now = [100.0]
    monkeypatch.setattr(label.time, "monotonic", lambda: now[0])
    clock = label.EngineClock()
    first = clock.enter(4)          # t=100: 4 samples
    now[0] = 102.0
    second = clock.enter(2)         # t=102: 6 samples
    now[0] = 103.0
    clock.leave(2, second, steps=9, tokens=12)   # 1 s at 6 samples, 9 steps + prefill
    now[0] = 110.0
    clock.leave(4, first, steps=19, tokens=60)   # 10 s, b = (2·4 + 1·6 + 7·4) / 10 = 4.2
    now[0] = 120.0                  # idle: not busy
    clock.enter(1)
    now[0] = 121.0
    counters = clock.counters()     # a request still in flight counts so far
    assert counters["engine_busy_ms"] == 11000
    assert counters["engine_sample_ms"] == 2 * 4000 + 6000 + 7 * 4000 + 1000
    assert counters["engine_fit_w"] == 9 + 19
    assert counters["engine_fit_wb"] == round(1e3 * (9 * 6 + 19 * 4.2))
    assert counters["engine_fit_wy"] == round(1e6 * (9 * 0.1 + 19 * 0.5))
    assert counters["engine_fit_tokens"] == 72
    assert counters["engine_fit_tokens_over_b"] == round(1e3 * (12 / 6 + 60 / 4.2))


# ---------------------------------------------------------------------------------------------
# The adaptive budget's rollouts (#26)


BUDGET = {"min_rollouts": 2, "max_rollouts": 4, "confidence": 0.8}


@pytest.mark.unit
def test_step_forecast_by_hand():
    """Budget 2..4 @ 0.8, threshold 0.2 (tau 0, floor 0.2), uniform prior, a pilot step with no
    rollout (so the new ones are a Polya urn from Beta(1, 1)). After 2: cc (1/3) and cf/fc
    (1/3) are decided positive (P(p > 0.2) = 0.992, 0.896), ff (1/3) is not (0.512): 2 more.
    After ff, only ffcc (urn (1, 3): 1/4 * 2/5) is decided (0.942): undecided 1/3 * 0.9."""
    from steplabel.schemas.annotators import RolloutBudget

    forecast = plan.step_forecast(0, 0, 0, budget=RolloutBudget(**BUDGET), threshold=0.2)
    assert forecast.rollouts == pytest.approx(2 + 2 / 3)
    assert forecast.requests == pytest.approx(1 + 1 / 3)
    assert forecast.undecided == pytest.approx(0.3)
    # every rollout unknown: max rollouts in rounds, never decided, and not "undecided"
    unknown = plan.step_forecast(0, 0, 5, budget=RolloutBudget(**BUDGET), threshold=0.2)
    assert (unknown.rollouts, unknown.requests, unknown.undecided) == (4, 2, 0)
    # futility 0.1: after ff the chance of a decision is 0.1 (posterior.decide_chance), so ff
    # stops undecided at 2 rollouts.
    futile = plan.step_forecast(0, 0, 0, budget=RolloutBudget(**BUDGET, futility=0.1),
                                threshold=0.2)
    assert (futile.rollouts, futile.undecided) == (pytest.approx(2), pytest.approx(1 / 3))


@pytest.mark.unit
def test_step_forecast_matches_a_simulation_of_the_annotators_rule():
    """Seeded simulation: draw the step's rate from the pilot's posterior, sample the budget's
    rounds, stop by the annotator's own rule; the mean rollouts and undecided share agree with
    the forecast within 4 standard errors."""
    from steplabel.annotators.monte_carlo import UNDECIDED, budget_step_decision
    from steplabel.schemas.annotators import BetaPrior, RolloutBudget

    budget, prior = RolloutBudget(min_rollouts=4, max_rollouts=16, confidence=0.85), BetaPrior()
    pilot = (3, 7, 1)  # 3 correct of 7 known, 1 unknown
    forecast = plan.step_forecast(*pilot, budget=budget, threshold=0.25, prior=prior)
    rng = np.random.default_rng(7)
    spent, undecided = [], 0
    for _ in range(4000):
        rate = rng.beta(1 + 3, 1 + 4)
        c = f = u = 0
        while True:
            size = budget.next_round(c + f + u)
            known = rng.random(size) < 7 / 8
            hits = rng.random(size) < rate
            c += int((known & hits).sum())
            f += int((known & ~hits).sum())
            u += int((~known).sum())
            decision = budget_step_decision(plan.counts_as_rollouts(c, f, u),
                                            budget=budget, threshold=0.25, prior=prior)
            if decision is not UNDECIDED:
                break
        spent.append(c + f + u)
        undecided += decision is None and c + f > 0
    spent = np.array(spent)
    assert abs(spent.mean() - forecast.rollouts) < 4 * spent.std() / math.sqrt(len(spent))
    share = undecided / len(spent)
    assert abs(share - forecast.undecided) < 4 * math.sqrt(share * (1 - share) / len(spent))
    assert 4 < forecast.rollouts < 16 and 0 < forecast.undecided < 1


def budget_manifest(manifest_path: Path, folder: Path) -> Path:
    data = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    data["monte_carlo"] = {**data["monte_carlo"], "budget": BUDGET}
    path = folder / "budget.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_plan_predicts_the_budget_from_a_fixed_k_dataset(full_run, tmp_path, capsys):
    """A fixed-k dataset as the pilot of a budget manifest: the Monte Carlo row is the
    prediction from its step counts; every other stage is the dataset's own."""
    manifest_path, out, result = full_run
    budget_path = budget_manifest(manifest_path, tmp_path)
    fixed = plan_json(capsys, manifest_path, "--from", out)
    assert fixed["monte_carlo_budget"] is None
    predicted = plan_json(capsys, budget_path, "--from", out)
    forecast = predicted["monte_carlo_budget"]
    assert forecast["costs"] == "predicted" and forecast["estimated_steps"] > 0
    assert forecast["pilot_undecided_share"] is None
    assert predicted["stages"]["monte_carlo"]["rollouts"]["projected"] == pytest.approx(
        forecast["predicted_rollouts_per_step"] * forecast["estimated_steps"], rel=1e-3)
    for stage in ("policy", "judge", "omegaprm"):  # times differ: the throughput is per token
        for name in ("rollouts", "prompt_tokens", "generated_tokens"):
            assert predicted["stages"][stage][name] == fixed["stages"][stage][name]
    assert any("predicted from the pilot's step counts" in n for n in predicted["notes"])
    capsys.readouterr()
    assert cli.main(["plan", str(budget_path), "--from", out]) == 0
    assert "Monte Carlo budget 2..4 @ 0.8:" in capsys.readouterr().out


def test_plan_measures_the_budget_from_a_run_with_it(full_run, tmp_path, capsys):
    """A dataset made with the budget itself: the table is what it spent (exactly, a run of
    the whole source), and the forecast from its own counts is shown beside it."""
    manifest_path, _, _ = full_run
    budget_path = budget_manifest(manifest_path, tmp_path)
    out = tmp_path / "budget-run"
    run = run_job(load_manifest(budget_path), out_dir=str(out))
    projected = plan_json(capsys, budget_path, "--from", out)
    assert_equals_run(projected, run.stats)
    forecast = projected["monte_carlo_budget"]
    assert forecast["costs"] == "measured"
    rows = [r for output in ("trajectories", "rejected") for r in storage.iter_rows(str(out),
                                                                                     output)]
    spent = [n for r in rows for n in r["mc_rollouts_spent"] if n]
    assert forecast["estimated_steps"] == len(spent)
    assert forecast["pilot_rollouts_per_step"] == pytest.approx(sum(spent) / len(spent),
                                                                abs=1e-4)
    assert all(2 <= n <= 4 for n in spent)
    assert 2 <= forecast["predicted_rollouts_per_step"] <= 4


def zero_one_manifest(folder: Path, source: Path, monte_carlo: dict) -> Path:
    data = {"name": "plan-zero-one", "seed": 5, "source": {"kind": "jsonl", "path": str(source)},
            "models": {"policy": {"kind": "custom", "factory": "fakes:zero_one_engine"}},
            "policy": {"samples": 3}, "monte_carlo": monte_carlo, "runner": {"num_shards": 1}}
    path = folder / f"{'budget' if 'budget' in monte_carlo else 'fixed'}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_plan_predicts_what_the_budget_spends_on_rates_at_0_or_1(tmp_path, capsys):
    """Step rates exactly 0 or 1 (fakes.zero_one_engine: a prefix with a wrong sum never
    succeeds, any other always does). From a fixed-k pilot (4 rollouts, decided stopping: a
    good step shows 1 of 1, a bad one 0 of 4) the forecast draws each step's rate from the
    prior fitted to the pilot's counts, and predicts what a run with the budget spends: 2
    rollouts on a good step, 4 and undecided on a bad one (P(rate > 0.2) = 0.8^5 after 0 of
    4). The uniform prior's urn predicted 2.52 against 2.33 here."""
    source = write_source(tmp_path / "problems.jsonl", 12)
    fixed = zero_one_manifest(tmp_path, source, {"rollouts": 4})
    budget = zero_one_manifest(tmp_path, source, {"rollouts": 4, "budget": BUDGET})
    pilot, run = tmp_path / "fixed-run", tmp_path / "budget-run"
    run_job(load_manifest(fixed), out_dir=str(pilot))
    stats = run_job(load_manifest(budget), out_dir=str(run)).stats
    spent = stats["overall"]["mc_posterior"]
    assert spent["undecided"]["count"] > 0 and spent["estimated_steps"] > 0
    predicted = plan_json(capsys, budget, "--from", pilot)
    forecast, fit = predicted["monte_carlo_budget"], predicted["monte_carlo_prior_fit"]
    assert forecast["costs"] == "predicted"
    assert forecast["estimated_steps"] == spent["estimated_steps"]
    assert forecast["predicted_rollouts_per_step"] == pytest.approx(
        spent["rollouts_per_step"]["mean"], rel=0.005)
    assert forecast["predicted_undecided_share"] == pytest.approx(spent["undecided"]["share"],
                                                                  abs=0.005)
    assert fit["at_bound"] and fit["steps"] == spent["estimated_steps"]
    assert forecast["population"] == [fit["a"], fit["b"]]
    # The uniform urn (the forecast before the fit) runs high on the good steps.
    uniform = plan.step_forecast(1, 1, 0, budget=plan.RolloutBudget(**BUDGET), threshold=0.2)
    assert uniform.rollouts == pytest.approx(2 + 1 / 3)
    # The text names the fitted prior and the manifest lines that use it.
    capsys.readouterr()
    assert cli.main(["plan", str(fixed), "--from", str(pilot)]) == 0
    text = capsys.readouterr().out
    assert f"      prior: {{a: {fit['a']:g}, b: {fit['b']:g}}}" in text
    assert predicted["stages"]["monte_carlo"]["rollouts"]["projected"] == pytest.approx(
        spent["rollouts_per_step"]["mean"] * spent["estimated_steps"], rel=0.005)
