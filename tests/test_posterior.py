"""Beta posteriors of step values and the adaptive rollout budget (issue #26)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from fakes import ScriptedEngine
from faulty import FaultyPolicy
from faulty import engine as faulty_engine
from planted import PlantedProblem, problem_from_question, split_prompt

from steplabel.annotators.grading import grade
from steplabel.annotators.monte_carlo import (
    UNDECIDED,
    GradedRollouts,
    MonteCarloAnnotator,
    MonteCarloConfig,
    budget_step_decision,
)
from steplabel.annotators.omegaprm import (
    OmegaPRMAnnotator,
    OmegaPRMConfig,
    ProbeLabel,
    bisect_first_error,
    locate_first_error,
)
from steplabel.annotators.posterior import (
    FIT_BOUNDS,
    BetaPrior,
    RolloutBudget,
    beta_cdf,
    beta_quantile,
    decide_chance,
    fit_prior,
    label_from,
    log_marginal,
    posterior,
    prob_above,
    threshold_of,
)
from steplabel.annotators.splitting import get_splitter
from steplabel.dataset.inspect import render_group
from steplabel.dataset.stats import LabelStats, ProblemRows
from steplabel.schemas.config import ConfigError, from_mapping, to_mapping

pytestmark = pytest.mark.unit

SPLITTER = get_splitter("step_markers")


# -- the Beta distribution -------------------------------------------------------------------


def binomial_tail(a: int, b: int, x: float) -> float:
    """I_x(a, b) for integer a, b: P(Binomial(a + b - 1, x) >= a), an independent check."""
    n = a + b - 1
    return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))


@pytest.mark.parametrize("a,b", [(1, 1), (2, 8), (3, 9), (9, 3), (5, 5), (1, 33), (33, 1),
                                 (17, 48)])
@pytest.mark.parametrize("x", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_beta_cdf_matches_the_binomial_tail(a, b, x):
    assert beta_cdf(x, a, b) == pytest.approx(binomial_tail(a, b, x), rel=1e-9, abs=1e-13)


def test_beta_quantiles_against_closed_forms():
    # Beta(1, 1): uniform. Beta(1, n): 1 - (1 - x)^n. Beta(n, 1): x^n.
    # Beta(1/2, 1/2): the arcsine law, F(x) = (2 / pi) asin(sqrt(x)).
    assert beta_quantile(0.05, 1, 1) == pytest.approx(0.05, abs=1e-9)
    assert beta_quantile(0.95, 1, 9) == pytest.approx(1 - 0.05 ** (1 / 9), abs=1e-9)
    assert beta_quantile(0.05, 9, 1) == pytest.approx(0.05 ** (1 / 9), abs=1e-9)
    assert beta_quantile(0.05, 0.5, 0.5) == pytest.approx(math.sin(math.pi * 0.05 / 2) ** 2,
                                                          abs=1e-9)
    assert beta_cdf(0.3, 0.5, 0.5) == pytest.approx(2 / math.pi * math.asin(math.sqrt(0.3)))
    # A tabulated value: the median of Beta(2, 8) is 0.17962 (e.g. R's qbeta(0.5, 2, 8)).
    assert beta_quantile(0.5, 2, 8) == pytest.approx(0.179619612, abs=1e-8)
    with pytest.raises(ValueError, match="q must be in"):
        beta_quantile(1.5, 1, 1)


def test_posterior_of_counts():
    post = posterior(3, 5, threshold=0.25)  # Beta(4, 6)
    assert post.mean == pytest.approx(0.4)
    assert beta_cdf(post.low, 4, 6) == pytest.approx(0.05, abs=1e-8)
    assert beta_cdf(post.high, 4, 6) == pytest.approx(0.95, abs=1e-8)
    assert post.level == 0.9
    assert post.p_above == pytest.approx(1 - binomial_tail(4, 6, 0.25))
    jeffreys = posterior(0, 8, prior=BetaPrior(0.5, 0.5), threshold=0.1)  # Beta(0.5, 8.5)
    assert jeffreys.mean == pytest.approx(0.5 / 9)
    # No success in n: P(p > m) = (1 - m)^(n + 1) under the uniform prior.
    assert prob_above(0.1, 0, 20, BetaPrior()) == pytest.approx(0.9**21)
    assert threshold_of(0.0, 0.1) == 0.1 and threshold_of(0.25, 0.1) == 0.25
    with pytest.raises(ValueError):
        posterior(-1, 2, threshold=0.1)


def test_label_from_confidence():
    assert label_from(0.95, 0.9) is True
    assert label_from(0.9, 0.9) is True
    assert label_from(0.1, 0.9) is False
    assert label_from(0.5, 0.9) is None


# -- the budget ------------------------------------------------------------------------------


def test_budget_validation_and_rounds():
    budget = RolloutBudget(min_rollouts=4, max_rollouts=32, confidence=0.9)
    sizes, n = [], 0
    while (size := budget.next_round(n)) > 0:
        sizes.append(size)
        n += size
    assert sizes == [4, 4, 4, 4, 4, 5, 6, 1] and n == 32  # 4, 8, 12, 16, 20, 25, 31, 32
    with pytest.raises(ConfigError, match="max_rollouts must be an integer >= min_rollouts"):
        RolloutBudget(min_rollouts=8, max_rollouts=4)
    with pytest.raises(ConfigError, match=r"confidence must be in \(0.5, 1\)"):
        RolloutBudget(confidence=0.5)
    with pytest.raises(ConfigError, match="min_success must be in"):
        MonteCarloConfig(min_success=1.0)
    with pytest.raises(ConfigError, match="a must be a number > 0"):
        BetaPrior(a=0)


def test_manifest_keys_and_canonical_form():
    cfg = from_mapping(MonteCarloConfig, {"budget": {"min_rollouts": 2, "max_rollouts": 16,
                                                     "confidence": 0.95},
                                          "prior": {"a": 0.5, "b": 0.5}, "min_success": 0.2})
    assert cfg.budget == RolloutBudget(2, 16, 0.95) and cfg.prior == BetaPrior(0.5, 0.5)
    assert to_mapping(cfg)["budget"] == {"min_rollouts": 2, "max_rollouts": 16,
                                         "confidence": 0.95}
    # Without the new keys the canonical form (hence the manifest hash) is today's.
    assert not {"budget", "prior", "min_success"} & set(to_mapping(MonteCarloConfig()))
    assert not {"budget", "prior", "min_success"} & set(to_mapping(OmegaPRMConfig()))
    # futility (off by default) is left out too; set, it is part of the budget.
    with_futility = from_mapping(RolloutBudget, {"min_rollouts": 2, "futility": 0.1})
    assert with_futility.futility == 0.1 and to_mapping(with_futility)["futility"] == 0.1
    with pytest.raises(ConfigError, match=r"futility must be in \[0, 1\) or null, got 1.0"):
        RolloutBudget(futility=1.0)


def rollouts(correct: int, incorrect: int, unknown: int = 0) -> GradedRollouts:
    verdicts = ("correct",) * correct + ("incorrect",) * incorrect + ("unknown",) * unknown
    n = len(verdicts)
    return GradedRollouts(seed=0, texts=("",) * n, generated_tokens=(1,) * n,
                          verdicts=verdicts, reasons=("x",) * n, finish_reasons=("stop",) * n)


def test_budget_stopping_rule():
    budget = RolloutBudget(min_rollouts=4, max_rollouts=16, confidence=0.9)

    def decide(*counts):
        return budget_step_decision(None if counts == () else rollouts(*counts), budget=budget,
                                    threshold=0.25, prior=BetaPrior())

    assert decide() is UNDECIDED
    assert decide(3, 0) is UNDECIDED  # below min_rollouts, whatever the counts
    assert decide(4, 0) is True  # P(p > 0.25 | Beta(5, 1)) = 1 - 0.25^5
    assert decide(0, 9) is False  # 0.75^10 = 0.056 <= 0.1
    assert decide(0, 6) is UNDECIDED  # 0.75^7 = 0.13
    assert decide(4, 8) is UNDECIDED  # P = 0.79 after 12 of 16: another round
    assert decide(5, 11) is None  # at the max, P = 0.77: unknown (undecided), never guessed
    assert decide(2, 2, 12) is None  # unknown rollouts are no failures: P(Beta(3, 3)) = 0.9
    assert decide(2, 2, 12) is not False
    assert decide(0, 0, 16) is None  # nothing known at all


def test_a_positive_needs_a_correct_rollout():
    """At a small floor the uniform prior alone clears the confidence: 0 of 2 gives
    P(p > 0.05) = 0.95^3 = 0.857; that is no evidence of success, so no positive."""
    budget = RolloutBudget(min_rollouts=2, max_rollouts=64, confidence=0.85)
    assert prob_above(0.05, 0, 2, BetaPrior()) > 0.85
    decide = lambda c, f: budget_step_decision(rollouts(c, f), budget=budget, threshold=0.05,
                                               prior=BetaPrior())
    assert decide(0, 2) is UNDECIDED
    assert decide(1, 1) is True
    assert decide(0, 36) is False  # 0.95^37 = 0.150


# -- the annotator under a budget -------------------------------------------------------------


def parity_policy(request, index: int) -> str:
    """Clean prefixes: rollout with child seed s + i correct iff s + i is even (rate 1/2);
    vLLM-like, so a rollout does not depend on how rollouts are split into requests."""
    chat, response = split_prompt(request.prompt)
    problem = problem_from_question(chat)
    child = (request.seed or 0) + index
    return problem.continuation(response, outcome="correct" if child % 2 == 0 else "incorrect",
                                pick=child)


def constant_policy(outcome: str):
    def respond(request, index):
        chat, response = split_prompt(request.prompt)
        return problem_from_question(chat).continuation(response, outcome=outcome, pick=index)
    return respond


def annotate(engine, problem, config, steps=None):
    annotator = MonteCarloAnnotator(engine, config, run_seed=3, grader=grade)
    return asyncio.run(annotator.annotate(
        problem_id=problem.problem_id, solution_index=0, prompt=problem.prompt(engine),
        steps=steps or problem.steps(), splitter=SPLITTER, gold_answer=problem.gold))


def test_decided_steps_stop_early_and_zero_steps_go_on():
    problem = PlantedProblem.make("budget", num_steps=4)
    budget = RolloutBudget(min_rollouts=4, max_rollouts=32, confidence=0.9)
    cfg = MonteCarloConfig(budget=budget, min_success=0.1, first_error_only=False)
    easy = annotate(ScriptedEngine(constant_policy("correct")), problem, cfg)
    assert easy.hard_labels == [True] * 4 and easy.rollouts_per_step == [4, 4, 4, 0]
    assert easy.label_reasons == [None] * 4 and easy.k == 32
    hard = annotate(ScriptedEngine(constant_policy("incorrect")), problem, cfg)
    # 0 of n: P(p > 0.1) = 0.9^(n+1) <= 0.1 from n = 21; the rounds reach 20, then 25.
    assert hard.hard_labels == [False, False, False, True]
    assert hard.rollouts_per_step[:3] == [25] * 3
    assert hard.p_above[0] == pytest.approx(0.9**26)
    assert hard.posterior_mean[0] == pytest.approx(1 / 27)
    assert hard.first_error_index == 0


def test_undecided_at_max_is_unknown_with_its_reason():
    problem = PlantedProblem.make("undecided", num_steps=4)
    cfg = MonteCarloConfig(budget=RolloutBudget(min_rollouts=2, max_rollouts=8,
                                                confidence=0.9),
                           hard_threshold=0.5, first_error_only=False)
    engine = ScriptedEngine(parity_policy)
    result = annotate(engine, problem, cfg)
    assert result.hard_labels[:3] == [None] * 3  # 4 of 8 at threshold 0.5: never guessed
    assert result.label_reasons == ["undecided"] * 3 + [None]
    assert result.rollouts_per_step == [8, 8, 8, 0] and result.first_error_index is None
    assert (result.n_correct[:3], result.n_total[:3]) == ([4] * 3, [8] * 3)
    assert result.p_above[0] == pytest.approx(0.5)
    assert result.hard_labels[3] is True  # the final step keeps its graded answer
    assert result.p_above[3] == 1.0 and result.interval_low[3] == result.interval_high[3] == 1.0


def test_rounds_use_the_seeds_of_one_request():
    """Round r asks for seeds step_seed + (rollouts before it): rollout i of a step is the same
    whatever the rounds before, and the counts equal fixed k's first n rollouts."""
    problem = PlantedProblem.make("rounds", num_steps=5)
    policy = FaultyPolicy(success_range=(0.05, 0.5), planted_error_rate=0.0)
    budget = RolloutBudget(min_rollouts=2, max_rollouts=32, confidence=0.9)
    engine = faulty_engine(policy)
    result = annotate(engine, problem, MonteCarloConfig(budget=budget, first_error_only=False))
    by_prompt: dict[str, list[tuple[int, int]]] = {}
    for request in engine.requests:
        by_prompt.setdefault(request.prompt, []).append((request.seed, request.n))
    for t in range(problem.num_steps - 1):
        prompt = problem.prompt(engine).for_continuation(SPLITTER.join(problem.steps()[:t + 1]),
                                                         "\n")
        requests = by_prompt[prompt]
        sizes, start = [], 0
        for seed, n in requests:
            assert seed == result.seeds[t] + start
            sizes.append(n)
            start += n
        assert start == result.rollouts_per_step[t]
        assert sizes[0] == 2 and all(budget.next_round(sum(sizes[:j])) == sizes[j]
                                     for j in range(len(sizes)))
        # The same rollouts as one request of that many (fixed k).
        fixed = annotate(faulty_engine(policy), problem,
                         MonteCarloConfig(rollouts=start, stopping="fixed",
                                          first_error_only=False))
        assert (fixed.n_correct[t], fixed.n_total[t]) == (result.n_correct[t],
                                                          result.n_total[t])


def test_fixed_k_labels_are_unchanged_and_gain_posterior_columns():
    problem = PlantedProblem.make("fixed", num_steps=5)
    policy = FaultyPolicy(success_range=(0.05, 0.5), planted_error_rate=0.0)
    result = annotate(faulty_engine(policy), problem,
                      MonteCarloConfig(stopping="fixed", first_error_only=False,
                                       min_success=0.1))
    assert result.hard_labels == [None if v is None else v > 0 for v in result.values]
    assert result.rollouts_per_step == [8, 8, 8, 8, 0] and result.k == 8
    assert result.label_reasons == [None] * 5
    for t in range(4):
        c, n = result.n_correct[t], result.n_total[t]
        assert result.posterior_mean[t] == pytest.approx((1 + c) / (2 + n))
        assert result.p_above[t] == pytest.approx(prob_above(0.1, c, n - c, BetaPrior()))
        assert result.interval_low[t] < result.posterior_mean[t] < result.interval_high[t]


def test_first_error_only_under_a_budget_stops_at_the_first_negative():
    problem = PlantedProblem.make("feo", num_steps=6)
    policy = FaultyPolicy(success_range=(0.6, 0.9), planted_error_rate=0.0)
    cfg = MonteCarloConfig(budget=RolloutBudget(4, 32, 0.9), first_error_only=True)
    result = annotate(faulty_engine(policy), problem, cfg, steps=problem.steps(2))
    assert result.first_error_index == 2  # after the planted error rollouts never succeed
    assert result.hard_labels[:3] == [True, True, False]
    assert result.rollouts_per_step[3:] == [0, 0, 0] and result.posterior_mean[3:] == [None] * 3


# -- OmegaPRM's probes under a budget ----------------------------------------------------------


def run_omegaprm(engine, problem, **config):
    annotator = OmegaPRMAnnotator(engine, OmegaPRMConfig(**config), run_seed=1,
                                  splitter=SPLITTER)
    return asyncio.run(annotator.annotate(problem_id=problem.problem_id,
                                          prompt=problem.prompt(engine),
                                          question=problem.question, gold_answer=problem.gold))


def test_bisect_follows_probe_labels():
    labels = {4: ProbeLabel(True), 6: ProbeLabel(False), 5: ProbeLabel(True)}

    async def estimate(length):
        return labels[length]

    assert asyncio.run(bisect_first_error(good=0, bad=8, estimate=estimate)) == (5, "located")

    async def undecided(length):
        return ProbeLabel(None, "probe_undecided")

    assert asyncio.run(bisect_first_error(good=0, bad=8, estimate=undecided)) == (
        None, "probe_undecided")


def test_omegaprm_probes_under_a_budget_locate_the_planted_error():
    problem = PlantedProblem.make("omega-budget", num_steps=8)
    policy = FaultyPolicy(success_range=(0.4, 0.9), planted_error_rate=0.5)
    engine = faulty_engine(policy)
    result = run_omegaprm(engine, problem, search_limit=6, min_success=0.1,
                          budget=RolloutBudget(min_rollouts=4, max_rollouts=32, confidence=0.9))
    assert result.searches_run >= 1
    states = {s.state_id: s for s in [*result.states, *result.states_after_error]}
    spent = set()
    for record in result.searches:
        assert record.reason == "located"
        assert record.first_error_index == problem.true_first_error(record.steps)
        for probe_id in record.probe_state_ids:
            probe = states[probe_id]
            assert probe.hard_label == (probe.depth <= record.first_error_index)
            spent.add(probe.n_total + probe.n_unknown)
            if not probe.hard_label:  # never correct past the error: 25 failures decide it
                assert (probe.n_correct, probe.n_total) == (0, 25)
    assert spent - {25} and min(spent) >= 4  # rollouts vary by probe: rounds, not fixed k
    # Seeds: each probe's requests continue its seed where the last round stopped.
    by_prompt: dict[str, list[tuple[int, int]]] = {}
    for request in engine.requests:
        by_prompt.setdefault(request.prompt, []).append((request.seed, request.n))
    for requests in by_prompt.values():
        for (s0, n0), (s1, _) in zip(requests, requests[1:]):
            assert s1 == s0 + n0


def test_omegaprm_undecided_probe_stops_the_search():
    problem = PlantedProblem.make("omega-undecided", num_steps=8)
    engine = ScriptedEngine(parity_policy)
    result = run_omegaprm(engine, problem, search_limit=3, min_success=0.5,
                          budget=RolloutBudget(min_rollouts=2, max_rollouts=8, confidence=0.9))
    assert result.searches_run >= 1
    for record in result.searches:
        assert (record.first_error_index, record.reason) == (None, "probe_undecided")
    probes = [s for s in [*result.states, *result.states_after_error] if s.kind == "probe"]
    undecided = [p for p in probes if p.hard_label is None]
    assert undecided and all((p.n_correct, p.n_total) == (4, 8) for p in undecided)
    # A probe past a planted error never succeeds: decided bad, not undecided.
    assert all(p.n_correct == 0 for p in probes if p.hard_label is False)
    # The undecided probes say so, with the posterior of their counts (Beta(5, 5) at 0.5).
    for p in undecided:
        assert (p.label_reason, p.rollouts_spent) == ("undecided", 8)
        assert p.posterior == posterior(4, 4, prior=BetaPrior(), threshold=0.5)
        assert p.posterior.p_above == pytest.approx(0.5)
    assert all(p.label_reason is None for p in probes if p.hard_label is not None)


def check_state_posteriors(states, config: OmegaPRMConfig) -> int:
    """Every state's posterior is that of its counts under ``config``'s prior, asked about
    ``min_success``; a completion is certain; only an undecided probe has a reason. Returns
    the number of states estimated from rollouts."""
    estimated = 0
    for s in states:
        if s.kind == "completion":
            assert (s.posterior.mean, s.posterior.low, s.posterior.high, s.posterior.p_above,
                    s.rollouts_spent) == (1.0, 1.0, 1.0, 1.0, 0)
            continue
        assert s.rollouts_spent == s.n_total + s.n_unknown > 0
        if not s.n_total:
            assert s.posterior is None
            continue
        estimated += 1
        assert s.posterior == posterior(s.n_correct, s.n_total - s.n_correct,
                                        prior=config.prior, threshold=config.min_success)
        assert s.posterior.low <= s.posterior.mean <= s.posterior.high
        assert (s.label_reason == "undecided") == (s.kind == "probe" and s.hard_label is None
                                                    and config.budget is not None)
    return estimated


@pytest.mark.parametrize("budget", [None, RolloutBudget(min_rollouts=4, max_rollouts=16,
                                                        confidence=0.9)])
def test_omegaprm_states_carry_the_posterior_of_their_counts(budget):
    problem = PlantedProblem.make("omega-posterior", num_steps=8)
    policy = FaultyPolicy(success_range=(0.4, 0.9), planted_error_rate=0.5)
    config = {"search_limit": 4, "min_success": 0.1, "prior": BetaPrior(0.5, 2.0),
              "budget": budget}
    result = run_omegaprm(faulty_engine(policy), problem, **config)
    states = [*result.states, *result.states_after_error]
    assert {"root", "probe", "completion"} <= {s.kind for s in states}
    assert check_state_posteriors(states, OmegaPRMConfig(**config)) > 1
    root = next(s for s in states if s.kind == "root")
    assert root.rollouts_spent == 32  # the pre-filter's rollouts
    assert root.posterior.mean == pytest.approx((0.5 + root.n_correct)
                                                / (2.5 + root.n_total))


def test_locate_first_error_under_a_budget():
    problem = PlantedProblem.make("locate-budget", num_steps=8)
    policy = FaultyPolicy(success_range=(0.4, 0.9), planted_error_rate=0.0)
    for error_at in range(7):
        engine = faulty_engine(policy)
        search = asyncio.run(locate_first_error(
            engine, prompt=problem.prompt(engine), pieces=problem.steps(error_at),
            gold_answer=problem.gold, run_seed=2, problem_id=problem.problem_id,
            splitter=SPLITTER, budget=RolloutBudget(4, 32, 0.9), min_success=0.1))
        assert (search.first_error_index, search.reason) == (error_at, "located")
        assert search.rollouts == engine.rollouts
        for length, value in zip(search.probe_lengths, search.probe_values):
            if length > error_at:  # past the error: no success, 25 failures to decide
                assert value == 0.0


# -- a full job under the budget ---------------------------------------------------------------


@pytest.mark.pipeline
def test_a_job_with_a_budget_writes_decided_or_undecided_labels(tmp_path):
    from test_label_truth import manifest, rows, write_planted

    from steplabel.pipelines.job import run_job

    source = tmp_path / "p.jsonl"
    write_planted(source, 3)
    out = str(tmp_path / "out")
    budget = {"min_rollouts": 2, "max_rollouts": 8, "confidence": 0.9}
    job = manifest(source, "realistic", omegaprm=None, judge=None, consensus=None,
                   monte_carlo={"budget": budget, "min_success": 0.2,
                                "sampling": {"max_tokens": 120}})
    assert job.monte_carlo.budget == RolloutBudget(2, 8, 0.9)
    result = run_job(job, out_dir=out)
    kept = rows(out, "trajectories")
    assert kept
    undecided = 0
    for row in kept:
        last = len(row["steps"]) - 1
        for t in range(last):
            correct, total = row["mc_n_correct"][t], row["mc_n_total"][t]
            spent = total + row["mc_n_unknown"][t]
            assert 2 <= spent <= 8
            label = row["hard_labels"][t]
            p = prob_above(0.2, correct, total - correct, BetaPrior())
            if label is True:
                assert p >= 0.9 and correct > 0
            elif label is False:
                assert 1 - p >= 0.9
            else:  # unknown: every rollout unknown, or undecided at the max
                assert spent == 8
                undecided += total > 0
    assert undecided > 0  # at max 8, steps near the 0.2 floor stay undecided (12 here)
    assert result.stats["counters"]["mc_steps_undecided"] == undecided


def test_stats_count_undecided_probes_and_state_interval_widths():
    """stats' OmegaPRM figures (schema 1.4): states with an interval (root, probes; not
    completions), their mean width, and the probes the budget left undecided; rows written
    before 1.4 (no such columns) add nothing."""
    def state(kind, low, high, reason=None, label=True):
        return {"problem_id": "p", "record_type": kind, "hard_label": label, "n_total": 4,
                "n_unknown": 0, "n_truncated": 0, "after_error": False,
                "mc_interval_low": low, "mc_interval_high": high, "mc_label_reason": reason}

    problem = ProblemRows("p")
    problem.rows["omegaprm_states"] = [
        state("root", 0.2, 0.6), state("probe", 0.1, 0.5, "undecided", None),
        state("probe", 0.5, 0.7), state("completion", 1.0, 1.0),
        {"problem_id": "p", "record_type": "probe", "hard_label": False, "n_total": 4,
         "n_unknown": 0, "n_truncated": 0, "after_error": False}]  # before 1.4
    stats = LabelStats()
    stats.add_problem(problem)
    omega = stats.summary()["omegaprm"]
    assert omega["estimated_states"] == 3 and omega["undecided_probes"] == 1
    assert omega["interval_width_mean"] == pytest.approx((0.4 + 0.4 + 0.2) / 3)
    assert ("posterior: 3 states estimated, mean 90% interval width 0.33, 1 probes undecided"
            in render_group("all", stats.summary()))



# -- a prior fitted to a pilot's counts ----------------------------------------------------------


@pytest.mark.parametrize("a,b", [(0.5, 2.0), (3.0, 5.0), (0.3, 0.3)])
def test_fit_prior_recovers_the_rates_distribution(a, b):
    """Seeded: 4000 steps, rates from Beta(a, b), 8 rollouts each; the fit is within 15% of
    (a, b) and a local maximum of the marginal likelihood."""
    rng = np.random.default_rng(3)
    successes = rng.binomial(8, rng.beta(a, b, size=4000))
    counts = [(int(s), 8 - int(s)) for s in successes]
    fit = fit_prior(counts)
    assert fit.steps == 4000 and not fit.at_bound
    assert fit.prior.a == pytest.approx(a, rel=0.15) and fit.prior.b == pytest.approx(b, rel=0.15)
    assert fit.log_likelihood == pytest.approx(log_marginal(counts, fit.prior))
    for da, db in ((1.02, 1), (0.98, 1), (1, 1.02), (1, 0.98)):
        moved = BetaPrior(fit.prior.a * da, fit.prior.b * db)
        assert log_marginal(counts, moved) < fit.log_likelihood


def test_log_marginal_by_hand():
    """One step, 1 success and 1 failure, uniform prior: B(2, 2) / B(1, 1) = 1/6; 2 successes
    under Beta(2, 1): B(4, 1) / B(2, 1) = (1/4) / (1/2)."""
    assert log_marginal([(1, 1)], BetaPrior()) == pytest.approx(math.log(1 / 6))
    assert log_marginal([(2, 0)], BetaPrior(2, 1)) == pytest.approx(math.log(1 / 2))


def test_fit_prior_at_rates_of_0_or_1_stops_at_its_bounds():
    """Rates exactly 0 or 1 (every step all correct or all wrong): the likelihood grows as a
    and b go to 0, so the fit stops at the lower bound, keeping the share of good steps as its
    mean; steps with no known rollout are skipped; all alike goes to the upper bound."""
    fit = fit_prior([(4, 0)] * 30 + [(0, 4)] * 10 + [(0, 0)] * 5)
    assert fit.at_bound and fit.steps == 40 and min(fit.prior.a, fit.prior.b) == FIT_BOUNDS[0]
    assert fit.prior.a / (fit.prior.a + fit.prior.b) == pytest.approx(0.75, abs=0.02)
    alike = fit_prior([(2, 2)] * 40)
    assert alike.at_bound and alike.prior.a == alike.prior.b == FIT_BOUNDS[1]
    with pytest.raises(ValueError, match="no step with a known rollout"):
        fit_prior([(0, 0)])
    with pytest.raises(ValueError, match=">= 0"):
        fit_prior([(-1, 2)])



# -- the futility rule -----------------------------------------------------------------------


def test_decide_chance_by_hand():
    """Budget 2..4 @ 0.8, threshold 0.2, uniform prior, 0 of 2 correct: the last round of 2
    decides only at 2 of 2 (Beta(3, 3): P(p > 0.2) = 0.942; 1 of 2: Beta(2, 4), 0.737; 0 of 2:
    0.8^5 = 0.328), whose urn probability from Beta(1, 3) is B(3, 3) / B(1, 3) = 0.1. At 0.95
    nothing decides it: 0."""
    budget = RolloutBudget(min_rollouts=2, max_rollouts=4, confidence=0.8)
    assert decide_chance(0, 2, 2, budget=budget, threshold=0.2,
                         prior=BetaPrior()) == pytest.approx(0.1)
    strict = RolloutBudget(min_rollouts=2, max_rollouts=4, confidence=0.95)
    assert decide_chance(0, 2, 2, budget=strict, threshold=0.2, prior=BetaPrior()) == 0.0
    assert decide_chance(0, 4, 4, budget=budget, threshold=0.2, prior=BetaPrior()) == 0.0


def test_futility_stops_undecidable_steps_early():
    budget = RolloutBudget(min_rollouts=2, max_rollouts=4, confidence=0.8)

    def decide(futility, *counts):
        return budget_step_decision(rollouts(*counts), threshold=0.2, prior=BetaPrior(),
                                    budget=RolloutBudget(2, 4, 0.8, futility=futility))

    assert decide(None, 0, 2) is UNDECIDED and decide(0.0, 0, 2) is UNDECIDED
    assert decide(0.1, 0, 2) is None  # chance 0.1 <= 0.1: undecided now
    assert decide(0.05, 0, 2) is UNDECIDED
    assert decide(0.5, 0, 0, 2) is UNDECIDED  # no known rollout: it goes on
    assert budget.futility is None


def simulate_step(rate: float, budget: RolloutBudget, seed: int) -> tuple[bool | None, int]:
    rng = np.random.default_rng(seed)
    draws = rng.random(budget.max_rollouts) < rate
    n = 0
    while True:
        n += budget.next_round(n)
        c = int(draws[:n].sum())
        decision = budget_step_decision(rollouts(c, n - c), budget=budget, threshold=0.25,
                                        prior=BetaPrior())
        if decision is not UNDECIDED:
            return decision, n


def test_futility_zero_keeps_every_label_in_fewer_rollouts():
    """Seeded: 600 steps at rates around the threshold, the same rollouts with and without
    futility 0: identical labels, never more rollouts, fewer on some undecided steps."""
    plain = RolloutBudget(min_rollouts=4, max_rollouts=24, confidence=0.9)
    exact = RolloutBudget(min_rollouts=4, max_rollouts=24, confidence=0.9, futility=0.0)
    saved = 0
    for i in range(600):
        rate = 0.05 + 0.45 * (i % 60) / 60
        label, n = simulate_step(rate, plain, i)
        label_f, n_f = simulate_step(rate, exact, i)
        assert label_f == label and n_f <= n
        saved += n - n_f
        if n_f < n:
            assert label is None
    assert saved > 0


@pytest.mark.pipeline
def test_a_job_with_an_omegaprm_budget_writes_undecided_probes(tmp_path):
    """OmegaPRM under a budget through the whole job: state rows carry the posterior of their
    counts, undecided probes say so (hard label null, mc_label_reason undecided), and stats
    counts them."""
    from test_label_truth import manifest, rows, write_planted

    from steplabel.pipelines.job import run_job

    source = tmp_path / "p.jsonl"
    write_planted(source, 4, num_steps=6)
    job = manifest(source, "realistic", judge=None, consensus=None, monte_carlo=None,
                   omegaprm={"prefilter_rollouts": 8, "search_limit": 4, "min_success": 0.3,
                             "sampling": {"max_tokens": 120},
                             "budget": {"min_rollouts": 2, "max_rollouts": 6,
                                        "confidence": 0.9}})
    out = str(tmp_path / "out")
    result = run_job(job, out_dir=out)
    states = rows(out, "omegaprm_states")
    undecided = [s for s in states if s["mc_label_reason"] == "undecided"]
    assert undecided and all(s["record_type"] == "probe" and s["hard_label"] is None
                             and s["mc_rollouts_spent"] == 6 and s["n_total"] > 0
                             for s in undecided)
    for s in states:
        if s["record_type"] != "completion" and s["n_total"]:
            c, n = s["n_correct"], s["n_total"]
            p = posterior(c, n - c, prior=BetaPrior(), threshold=0.3)
            assert (s["mc_posterior_mean"], s["mc_p_above"]) == (p.mean, p.p_above)
            if s["record_type"] == "probe" and s["hard_label"] is not None:
                assert 2 <= s["mc_rollouts_spent"] <= 6
                assert (p.p_above >= 0.9) if s["hard_label"] else (1 - p.p_above >= 0.9)
    assert result.stats["overall"]["omegaprm"]["undecided_probes"] == len(undecided)
