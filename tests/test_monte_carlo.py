"""Monte Carlo step labels against the planted-error policy (exact, deterministic)."""

from __future__ import annotations

import asyncio
import dataclasses

import pyarrow as pa
import pytest
from fakes import ScriptedEngine
from planted import ANSWER_PREFIX, UNKNOWN_ANSWER, PlantedPolicy, PlantedProblem, split_prompt

from steplabel.annotators.grading import grade
from steplabel.annotators.monte_carlo import (
    MonteCarloAnnotator,
    MonteCarloConfig,
    MonteCarloResult,
    first_error_from_labels,
)
from steplabel.annotators.seeds import derive_seed
from steplabel.annotators.splitting import get_splitter
from steplabel.schemas.config import ConfigError, SamplingConfig

pytestmark = pytest.mark.unit

SPLITTER = get_splitter("step_markers")
K = 8


def annotate(engine, problem: PlantedProblem, steps: list[str], *, config=None,
             run_seed: int = 7, solution_index: int = 0, gold: str | None = "default",
             grader=grade, **guide) -> MonteCarloResult:
    # The planted policy anchors one correct and one incorrect sample per request, so its
    # samples depend on the request's n: fixed stopping keeps these tests exact.
    annotator = MonteCarloAnnotator(engine, config or MonteCarloConfig(stopping="fixed"),
                                    run_seed=run_seed, grader=grader)
    return asyncio.run(annotator.annotate(
        problem_id=problem.problem_id, solution_index=solution_index,
        prompt=problem.prompt(engine), steps=steps, splitter=SPLITTER,
        gold_answer=problem.gold if gold == "default" else gold, **guide))


def assert_counts_consistent(result: MonteCarloResult, k: int = K) -> None:
    last = len(result.n_total) - 1
    for t_index, (c, t, u) in enumerate(zip(result.n_correct, result.n_total, result.n_unknown)):
        assert 0 <= c <= t
        # The complete solution is its own single rollout (graded by its final answer).
        assert t + u == (1 if t_index == last else k)
    for value, c, t in zip(result.values, result.n_correct, result.n_total):
        assert value == (c / t if t else None)
    assert [len(r) for r in result.unknown_reasons] == result.n_unknown


# -- config ----------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    cfg = MonteCarloConfig()
    assert (cfg.rollouts, cfg.hard_threshold, cfg.truncate_after_first_error) == (8, 0.0, False)
    assert (cfg.stopping, cfg.first_error_only, cfg.truncated) == ("decided", None, "unknown")
    assert cfg.sampling == SamplingConfig(temperature=0.7, max_tokens=256)
    with pytest.raises(ConfigError, match=r"rollouts must be an integer >= 1, got 0"):
        MonteCarloConfig(rollouts=0)
    with pytest.raises(ConfigError, match=r"hard_threshold must be in \[0, 1\), got 1.0"):
        MonteCarloConfig(hard_threshold=1.0)
    with pytest.raises(ConfigError, match="truncate_after_first_error"):
        MonteCarloConfig(truncate_after_first_error="yes")  # type: ignore[arg-type]


def test_first_error_from_labels():
    assert first_error_from_labels([True, True]) == -1
    assert first_error_from_labels([True, False, None]) == 1
    assert first_error_from_labels([True, None, False]) is None
    assert first_error_from_labels([]) == -1


# -- the planted error -----------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 4, 7, 16])
def test_finds_planted_error_with_exactly_k_times_m_minus_1_rollouts(num_steps):
    problem = PlantedProblem.make(f"mc-{num_steps}", num_steps=num_steps)
    for error_at in range(num_steps):
        engine = PlantedPolicy().engine()
        result = annotate(engine, problem, problem.steps(error_at))
        assert result.first_error_index == error_at
        # No rollout starts from the complete solution: its last step is its own answer.
        assert result.rollouts == engine.rollouts == K * (num_steps - 1)
        assert result.cost["rollouts"] == K * (num_steps - 1)
        assert result.cost["requests"] == len(engine.requests) == num_steps - 1
        assert all(r.n == K for r in engine.requests)
        assert result.hard_labels == [t < error_at for t in range(num_steps)]
        assert all(0 < v < 1 for v in result.values[:error_at])  # guaranteed mixed
        assert all(v == 0 for v in result.values[error_at:])
        assert_counts_consistent(result)


def test_solution_without_error_is_minus_one():
    problem = PlantedProblem.make("clean", num_steps=5)
    result = annotate(PlantedPolicy().engine(), problem, problem.steps())
    assert result.first_error_index == -1
    assert result.hard_labels == [True] * 5
    # The complete solution is labelled by its own answer, with no rollout from it.
    assert result.values[-1] == 1.0
    assert (result.n_correct[-1], result.n_total[-1], result.n_unknown[-1]) == (1, 1, 0)


def test_requests_continue_each_step_prefix_with_derived_seeds():
    problem = PlantedProblem.make("prompts", num_steps=4)
    steps = problem.steps(2)
    engine = PlantedPolicy().engine()
    result = annotate(engine, problem, steps, run_seed=11, solution_index=3)
    prompt = problem.prompt(engine)
    expected_prompts = [prompt.for_continuation(SPLITTER.join(steps[: t + 1]), "\n")
                        for t in range(3)]
    assert sorted(r.prompt for r in engine.requests) == sorted(expected_prompts)
    seeds = [derive_seed(11, "mc", "prompts", 3, t) for t in range(4)]
    assert result.seeds == seeds
    assert {r.prompt: r.seed for r in engine.requests} == dict(zip(expected_prompts, seeds[:3]))
    sampling = MonteCarloConfig().sampling
    assert all((r.temperature, r.max_tokens) == (sampling.temperature, sampling.max_tokens)
               for r in engine.requests)


def test_hard_threshold():
    problem = PlantedProblem.make("tau", num_steps=8)
    result = annotate(PlantedPolicy().engine(), problem, problem.steps(6),
                      config=MonteCarloConfig(hard_threshold=0.5, stopping="fixed"))
    assert result.hard_labels == [v > 0.5 for v in result.values]
    first_low = next(t for t, v in enumerate(result.values) if v <= 0.5)
    assert result.first_error_index == first_low


# -- unknown is a value ----------------------------------------------------------------------


def test_unknown_rollouts_are_counted_apart():
    problem = PlantedProblem.make("unk", num_steps=8)
    engine = PlantedPolicy(unknown_rate=0.4).engine()
    result = annotate(engine, problem, problem.steps(5))
    assert sum(result.n_unknown) > 0
    assert_counts_consistent(result)
    assert all(reason == "prediction_answer_too_deep"
               for reasons in result.unknown_reasons for reason in reasons)
    # The guaranteed samples are never unknown, so the labels stay exact.
    assert result.first_error_index == 5


def unknown_at_one_step(step_count: int):
    """Planted policy, except every rollout from a prefix of ``step_count`` steps is unknown."""
    policy = PlantedPolicy()

    def respond(request, index):
        _, response = split_prompt(request.prompt)
        if response.count("Step ") == step_count:
            return ANSWER_PREFIX + UNKNOWN_ANSWER
        return policy(request, index)

    return ScriptedEngine(respond)


def test_unknown_step_before_the_error_makes_first_error_unknown():
    problem = PlantedProblem.make("unk-before", num_steps=6)
    result = annotate(unknown_at_one_step(2), problem, problem.steps(4))
    assert result.n_total[1] == 0 and result.n_unknown[1] == K
    assert result.values[1] is None and result.hard_labels[1] is None
    assert result.hard_labels[4] is False
    assert result.first_error_index is None
    assert_counts_consistent(result)


def test_unknown_step_after_the_error_does_not_hide_it():
    problem = PlantedProblem.make("unk-after", num_steps=6)
    result = annotate(unknown_at_one_step(5), problem, problem.steps(2))
    assert result.hard_labels[4] is None
    assert result.first_error_index == 2


def test_missing_gold_answer_is_unknown_everywhere():
    problem = PlantedProblem.make("no-gold", num_steps=3)
    result = annotate(PlantedPolicy().engine(), problem, problem.steps(1), gold=None)
    assert result.n_total == [0, 0, 0] and result.n_unknown == [K, K, 1]
    assert result.values == [None] * 3 and result.hard_labels == [None] * 3
    assert result.first_error_index is None
    assert result.unknown_reasons[0] == ["gold_missing"] * K


# -- Qwen truncation -------------------------------------------------------------------------


def test_truncation_keeps_counts_and_drops_later_labels():
    problem = PlantedProblem.make("trunc", num_steps=8)
    config = MonteCarloConfig(truncate_after_first_error=True, stopping="fixed",
                              first_error_only=False)
    full = annotate(PlantedPolicy().engine(), problem, problem.steps(3))
    cut = annotate(PlantedPolicy().engine(), problem, problem.steps(3), config=config)
    assert cut.truncated_after == 3 and full.truncated_after is None
    assert cut.first_error_index == 3
    assert (cut.n_correct, cut.n_total, cut.n_unknown, cut.values) == \
        (full.n_correct, full.n_total, full.n_unknown, full.values)
    assert cut.hard_labels == [True, True, True, False, None, None, None, None]
    assert cut.soft_labels[:4] == full.values[:4] and cut.soft_labels[4:] == [None] * 4
    assert cut.rollouts == K * 7

    clean = annotate(PlantedPolicy().engine(), problem, problem.steps(), config=config)
    assert clean.truncated_after is None and clean.hard_labels == [True] * 8


# -- determinism and concurrency -------------------------------------------------------------


def test_same_run_seed_repeats_requests_and_results():
    problem = PlantedProblem.make("seeded", num_steps=6)
    first, second, other = (PlantedPolicy().engine() for _ in range(3))
    a = annotate(first, problem, problem.steps(4), run_seed=5)
    b = annotate(second, problem, problem.steps(4), run_seed=5)
    c = annotate(other, problem, problem.steps(4), run_seed=6)
    assert first.requests == second.requests
    assert a == b
    assert {r.seed for r in other.requests}.isdisjoint({r.seed for r in first.requests})
    assert c.first_error_index == 4


class InFlightEngine(ScriptedEngine):
    """Scripted engine that records the peak number of concurrent requests."""

    def __init__(self, respond):
        super().__init__(respond, delay_s=0.01)
        self.in_flight = self.peak = 0

    async def generate(self, request):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().generate(request)
        finally:
            self.in_flight -= 1


def test_all_steps_are_in_flight_at_once():
    problem = PlantedProblem.make("flight", num_steps=6)
    engine = InFlightEngine(PlantedPolicy())
    annotate(engine, problem, problem.steps(2))
    assert engine.peak == 5  # every step but the complete solution


def test_many_problems_concurrently_match_one_at_a_time():
    problems = [PlantedProblem.make(f"conc-{i}", num_steps=3 + i) for i in range(6)]
    errors = [i % (3 + i) for i in range(6)]
    config = MonteCarloConfig(truncate_after_first_error=True, stopping="fixed",
                              first_error_only=False)

    async def run_all(engine, concurrently: bool):
        annotator = MonteCarloAnnotator(engine, config, run_seed=3)
        calls = [annotator.annotate(problem_id=p.problem_id, solution_index=i,
                                    prompt=p.prompt(engine), steps=p.steps(e),
                                    splitter=SPLITTER, gold_answer=p.gold)
                 for i, (p, e) in enumerate(zip(problems, errors))]
        if concurrently:
            return await asyncio.gather(*calls)
        return [await call for call in calls]

    shared = InFlightEngine(PlantedPolicy())
    together = asyncio.run(run_all(shared, True))
    alone = asyncio.run(run_all(PlantedPolicy().engine(), False))
    assert shared.peak == sum(p.num_steps - 1 for p in problems)
    # Equal costs too: prefix-cache hits, which depend on the order, are not in them.
    assert together == alone
    assert [r.first_error_index for r in together] == errors


def test_result_maps_to_arrow():
    problem = PlantedProblem.make("arrow", num_steps=4)
    result = annotate(unknown_at_one_step(3), problem, problem.steps(1),
                      config=MonteCarloConfig(truncate_after_first_error=True, stopping="fixed"))
    table = pa.Table.from_pylist([dataclasses.asdict(result)])
    assert table.num_rows == 1
    assert table.column("hard_labels").to_pylist() == [[True, False, None, None]]
    assert table.column("values").to_pylist()[0][2] is None


# -- faults of real models: cut-off rollouts, re-answering continuations -----------------------


def cut_off_after(step_count_at_least: int, *, filler: str = " and so on" * 400):
    """Planted policy, except every rollout from a prefix of at least ``step_count_at_least``
    steps rambles past ``max_tokens`` (the engine cuts it, finish reason "length")."""
    policy = PlantedPolicy()

    def respond(request, index):
        _, response = split_prompt(request.prompt)
        text = policy(request, index)
        if response.count("Step ") >= step_count_at_least:
            return filler
        return text

    return ScriptedEngine(respond)


def test_cut_off_rollouts_are_unknown_not_wrong():
    """Defect 1 of issue 12: a rollout cut off at max_tokens has no answer; it used to count as
    a wrong one, so every step of a correct solution got value 0 and hard label False."""
    problem = PlantedProblem.make("cut", num_steps=4)
    engine = cut_off_after(0)
    result = annotate(engine, problem, problem.steps())
    assert result.n_truncated[:3] == [K, K, K] and result.n_truncated[3] == 0
    assert result.n_total[:3] == [0, 0, 0] and result.n_unknown[:3] == [K, K, K]
    assert result.values[:3] == [None] * 3 and result.hard_labels[:3] == [None] * 3
    assert False not in result.hard_labels
    assert result.hard_labels[3] is True  # the correct final answer labels the last step
    assert result.first_error_index is None  # unknown, not 0
    assert all(r == ["truncated"] * K for r in result.unknown_reasons[:3])
    assert_counts_consistent(result)


def test_cut_off_rollouts_can_be_counted_incorrect_on_request():
    problem = PlantedProblem.make("cut-inc", num_steps=4)
    result = annotate(cut_off_after(0), problem, problem.steps(),
                      config=MonteCarloConfig(truncated="incorrect", stopping="fixed"))
    assert result.values[:3] == [0.0, 0.0, 0.0] and result.first_error_index == 0
    assert result.n_truncated[:3] == [K, K, K]


def test_partly_cut_off_steps_use_known_rollouts_only():
    problem = PlantedProblem.make("cut-late", num_steps=5)
    result = annotate(cut_off_after(3), problem, problem.steps(1))
    assert result.n_truncated == [0, 0, K, K, 0]
    assert result.hard_labels[:2] == [True, False]
    assert result.first_error_index == 1  # decided before the unknown steps
    assert result.values[2:4] == [None, None]


def test_final_step_is_labelled_by_the_solution_answer_not_by_rollouts():
    """Defect 2 of issue 12: continuations after a complete, correct solution that re-answer
    wrongly used to relabel its last step negative."""
    problem = PlantedProblem.make("reanswer", num_steps=3)
    policy = PlantedPolicy()
    complete = SPLITTER.join(problem.steps())

    def respond(request, index):
        _, response = split_prompt(request.prompt)
        if response.strip() == complete.strip():
            return f"Wait, let me redo it.\n{ANSWER_PREFIX}{int(problem.gold) + 5}"
        return policy(request, index)

    engine = ScriptedEngine(respond)
    result = annotate(engine, problem, problem.steps())
    assert result.hard_labels == [True, True, True]
    assert result.first_error_index == -1
    assert all(split_prompt(r.prompt)[1].strip() != complete.strip() for r in engine.requests)
    assert len(engine.requests) == 2


def test_wrong_or_missing_final_answer_labels_the_last_step_negative():
    problem = PlantedProblem.make("last-wrong", num_steps=3)
    result = annotate(PlantedPolicy().engine(), problem, problem.steps(answer_error=True))
    assert result.hard_labels[-1] is False and result.first_error_index == 2
    assert (result.n_correct[-1], result.n_total[-1]) == (0, 1)


def test_config_truncated_rule_is_checked():
    with pytest.raises(ConfigError, match="truncated must be one of unknown, incorrect"):
        MonteCarloConfig(truncated="wrong")  # type: ignore[arg-type]


# -- fewer rollouts for the same labels (issue 14) ---------------------------------------------


def faulty_engine(**faults):
    from faulty import FaultyPolicy, engine

    return engine(FaultyPolicy(**faults))


LANDSCAPES = [dict(rollout_cut=0.0), dict(rollout_cut=0.25), dict(success_range=(0.05, 0.3)),
              dict(success_range=(0.3, 0.9), rollout_cut=0.1)]


def planted_cases(count: int = 12):
    for i in range(count):
        problem = PlantedProblem.make(f"dec-{i}", num_steps=3 + i % 5)
        error_at = -1 if i % 4 == 0 else i % problem.num_steps
        yield problem, problem.steps(error_at)


@pytest.mark.parametrize("faults", LANDSCAPES)
@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_decided_stopping_gives_the_hard_labels_of_fixed_k(faults, tau):
    """vLLM-style seeds (child i of a request = seed + i): waves reproduce fixed-k rollouts."""
    spent = {"fixed": 0, "decided": 0}
    for problem, steps in planted_cases():
        results = {}
        for stopping in ("fixed", "decided"):
            engine = faulty_engine(**faults)
            config = MonteCarloConfig(stopping=stopping, hard_threshold=tau,
                                      first_error_only=False)
            results[stopping] = annotate(engine, problem, steps, config=config)
            spent[stopping] += engine.rollouts
        fixed, decided = results["fixed"], results["decided"]
        assert decided.hard_labels == fixed.hard_labels
        assert decided.first_error_index == fixed.first_error_index
        for t, (c, n) in enumerate(zip(decided.n_correct, decided.n_total)):
            assert decided.values[t] == (c / n if n else None)  # true counts of what was sampled
        assert decided.rollouts + decided.rollouts_saved_decided == fixed.rollouts
    assert spent["decided"] <= spent["fixed"]
    if tau == 0.0 and faults.get("success_range", (0.3, 0.9))[0] >= 0.3:
        assert spent["decided"] < 0.7 * spent["fixed"]


def test_waves_use_the_seeds_of_one_request():
    problem = PlantedProblem.make("waves", num_steps=5)
    engine = faulty_engine(rollout_cut=0.3)
    result = annotate(engine, problem, problem.steps(3),
                      config=MonteCarloConfig(stopping="decided", first_error_only=False))
    by_prefix: dict[str, list[int]] = {}
    for request in engine.requests:
        by_prefix.setdefault(request.prompt, []).extend(
            request.seed + j for j in range(request.n))
    for t, seed in enumerate(result.seeds[:-1]):
        prompt = problem.prompt(engine).for_continuation(SPLITTER.join(problem.steps(3)[:t + 1]),
                                                         "\n")
        seeds = by_prefix[prompt]
        assert seeds == list(range(seed, seed + len(seeds)))  # rollout i has seed step_seed + i
        assert len(seeds) == result.n_total[t] + result.n_unknown[t]


@pytest.mark.parametrize("faults", LANDSCAPES)
def test_first_error_only_finds_the_same_first_error(faults):
    spent = {False: 0, True: 0}
    for problem, steps in planted_cases():
        results = {}
        for only in (False, True):
            engine = faulty_engine(**faults)
            results[only] = annotate(engine, problem, steps,
                                     config=MonteCarloConfig(first_error_only=only))
            spent[only] += engine.rollouts
        full, cut = results[False], results[True]
        assert cut.first_error_index == full.first_error_index
        first = full.first_error_index
        if first is not None and first >= 0:
            assert cut.hard_labels[:first + 1] == full.hard_labels[:first + 1]
            for t in range(first + 1, len(steps)):  # not estimated: no counts, no label
                assert (cut.n_total[t], cut.n_unknown[t], cut.values[t],
                        cut.hard_labels[t]) == (0, 0, None, None)
        if first == -1:
            assert cut.hard_labels == full.hard_labels
    assert spent[True] <= spent[False]


@pytest.mark.parametrize("faults", LANDSCAPES)
def test_consensus_guided_keeps_exactly_what_consensus_keeps(faults):
    """Issue 14: with the judge's verdict first, Monte Carlo spends no rollout consensus cannot
    use; for every verdict (unknown, no error, each step) the kept trajectories and their
    labels are those of first-error-only Monte Carlo, and every rejection stays a rejection."""
    from steplabel.annotators.consensus import consensus, consensus_labels
    from steplabel.annotators.grading import grade as grade_text

    spent = {"first_error_only": 0, "guided": 0}
    kept = 0
    for problem, steps in planted_cases():
        final = grade_text(SPLITTER.join(steps), problem.gold).verdict
        for judge in (None, -1, *range(len(steps))):
            engine = faulty_engine(**faults)
            full = annotate(engine, problem, steps, config=MonteCarloConfig(
                first_error_only=True, consensus_guided=False))
            spent["first_error_only"] += engine.rollouts
            engine = faulty_engine(**faults)
            guided = annotate(engine, problem, steps, config=MonteCarloConfig(
                first_error_only=True, consensus_guided=True), judge_first_error=judge)
            spent["guided"] += engine.rollouts
            want = consensus(full.first_error_index, judge)
            got = consensus(guided.first_error_index, judge, mc_stopped=guided.stopped)
            assert got.keep == want.keep, (judge, full.hard_labels, guided.hard_labels)
            if want.keep:
                kept += 1
                assert guided.stopped is None
                assert guided.first_error_index == full.first_error_index
                assert consensus_labels(got.first_error, len(steps)) == consensus_labels(
                    want.first_error, len(steps))
                first = len(steps) if want.first_error == -1 else want.first_error + 1
                assert guided.hard_labels[:first] == full.hard_labels[:first]
            else:
                assert got.reason != "agree"
                if guided.stopped is None:  # stopped by a step's own label: the same reason
                    assert got.reason == want.reason
            if judge is None:
                assert (guided.stopped, guided.rollouts) == ("judge_unknown", 0)
            if judge == -1 and final != "correct":
                assert (guided.stopped, guided.rollouts) == ("cannot_agree", 0)
            assert guided.rollouts <= full.rollouts
            assert (guided.rollouts + guided.rollouts_saved_decided
                    + guided.rollouts_saved_first_error + guided.rollouts_saved_consensus
                    == MonteCarloConfig().rollouts * (len(steps) - 1))
    assert kept > 0
    assert spent["guided"] < spent["first_error_only"]


def test_consensus_guided_config():
    assert MonteCarloConfig().resolved(consensus=True).consensus_guided is True
    assert MonteCarloConfig().resolved(consensus=False).consensus_guided is False
    off = MonteCarloConfig(first_error_only=False).resolved(consensus=True)
    assert (off.first_error_only, off.consensus_guided) == (False, False)
    with pytest.raises(ConfigError, match="consensus_guided"):
        MonteCarloConfig(consensus_guided=True, first_error_only=False)
    with pytest.raises(ConfigError, match="needs consensus"):
        MonteCarloConfig(consensus_guided=True).resolved(consensus=False)
    from steplabel.schemas.manifest import manifest_from_dict

    data = {"name": "guided", "source": {"kind": "jsonl", "path": "p.jsonl"},
            "monte_carlo": {"consensus_guided": True}, "judge": {}}
    with pytest.raises(ConfigError, match="monte_carlo.consensus_guided needs consensus"):
        manifest_from_dict(data)
    assert manifest_from_dict({**data, "consensus": {}}).monte_carlo.consensus_guided is True
    annotator = MonteCarloAnnotator(faulty_engine(), MonteCarloConfig(consensus_guided=True),
                                    run_seed=1)
    problem = PlantedProblem.make("guide", num_steps=3)
    with pytest.raises(ValueError, match="judge's verdict"):
        asyncio.run(annotator.annotate(problem_id="guide", solution_index=0,
                                       prompt=problem.prompt(annotator.engine),
                                       steps=problem.steps(-1), splitter=SPLITTER,
                                       gold_answer=problem.gold))


def test_step_decision_bounds():
    from steplabel.annotators.monte_carlo import UNDECIDED, GradedRollouts, step_decision

    def sampled(*verdicts):
        return GradedRollouts(seed=0, texts=("",) * len(verdicts),
                              generated_tokens=(0,) * len(verdicts), verdicts=verdicts,
                              reasons=("",) * len(verdicts),
                              finish_reasons=("stop",) * len(verdicts))

    assert step_decision(None, k=4, tau=0.0) is UNDECIDED
    assert step_decision(sampled("correct"), k=4, tau=0.0) is True
    assert step_decision(sampled("incorrect"), k=4, tau=0.0) is UNDECIDED
    assert step_decision(sampled(*("incorrect",) * 4), k=4, tau=0.0) is False
    assert step_decision(sampled(*("unknown",) * 4), k=4, tau=0.0) is None
    assert step_decision(sampled(*("unknown",) * 3), k=4, tau=0.0) is UNDECIDED
    # tau = 0.5 over k = 4: 3 correct of 3 known already exceed 0.5 whatever the last one is
    assert step_decision(sampled("correct", "correct", "correct"), k=4, tau=0.5) is True
    assert step_decision(sampled("incorrect", "incorrect", "incorrect"), k=4, tau=0.5) is False
    assert step_decision(sampled("correct", "incorrect"), k=4, tau=0.5) is UNDECIDED
