"""OmegaPRM: selection formula, pool, binary search and tree, against the planted policy."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random

import pyarrow as pa
import pytest
from fakes import ScriptedEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from landscape import CLASSES, LandscapePolicy, is_complete
from planted import PlantedPolicy, PlantedProblem, split_prompt

from steplabel.annotators.omegaprm import (
    OmegaPRMAnnotator,
    OmegaPRMConfig,
    OmegaPRMResult,
    SelectionPool,
    bisect_first_error,
    exploration_u,
    locate_first_error,
    pair_preference,
    selection_q,
    token_run_length,
    token_runs,
)
from steplabel.annotators.seeds import derive_seed
from steplabel.annotators.splitting import get_splitter
from steplabel.schemas.config import ConfigError, SamplingConfig

pytestmark = pytest.mark.unit

SPLITTER = get_splitter("step_markers")
K = 8


def run_omegaprm(engine, problem: PlantedProblem, *, run_seed: int = 1,
                 response_prefix: str = "", gold: str | None = "default",
                 **config) -> OmegaPRMResult:
    annotator = OmegaPRMAnnotator(engine, OmegaPRMConfig(**config), run_seed=run_seed,
                                  splitter=SPLITTER)
    return asyncio.run(annotator.annotate(
        problem_id=problem.problem_id, prompt=problem.prompt(engine, response_prefix),
        question=problem.question, gold_answer=problem.gold if gold == "default" else gold))


# -- config and formulas ---------------------------------------------------------------------


def test_config_defaults_follow_the_paper():
    cfg = OmegaPRMConfig()
    assert (cfg.alpha, cfg.beta, cfg.length_scale, cfg.c_puct) == (0.5, 0.9, 500.0, 0.125)
    assert (cfg.rollouts, cfg.search_limit, cfg.prefilter_rollouts) == (8, 100, 32)
    assert (cfg.step_unit, cfg.target_pieces) == ("steps", 16)
    assert (cfg.truncated, cfg.prefilter_min_known, cfg.min_known) == ("unknown", None, 16)
    assert OmegaPRMConfig(prefilter_rollouts=7).min_known == 4
    assert cfg.sampling == SamplingConfig(temperature=0.7, max_tokens=256)


@pytest.mark.parametrize("field, value, message", [
    ("alpha", 0.0, r"alpha must be in \(0, 1\], got 0.0"),
    ("beta", 1.5, r"beta must be in \(0, 1\], got 1.5"),
    ("length_scale", 0, r"length_scale must be > 0"),
    ("c_puct", -1.0, r"c_puct must be >= 0"),
    ("rollouts", 0, r"rollouts must be an integer >= 1, got 0"),
    ("search_limit", 0, r"search_limit must be an integer >= 1"),
    ("prefilter_rollouts", 1, r"prefilter_rollouts must be an integer >= 2"),
    ("step_unit", "words", r"step_unit must be one of 'steps', 'tokens', got 'words'"),
    ("target_pieces", 1, r"target_pieces must be an integer >= 2"),
    ("truncated", "wrong", r"truncated must be one of unknown, incorrect, got 'wrong'"),
    ("prefilter_min_known", 0, r"prefilter_min_known must be an integer in \[1, "
                               r"prefilter_rollouts = 32\], got 0"),
    ("prefilter_min_known", 33, r"prefilter_min_known must be an integer in \[1, "),
])
def test_config_validation_names_field_and_value(field, value, message):
    with pytest.raises(ConfigError, match=message):
        OmegaPRMConfig(**{field: value})


def test_q_matches_hand_computed_values():
    # alpha^(1 - MC) * beta^(len / L), len in tokens.
    assert selection_q(mc=0.5, rollout_tokens=250, alpha=0.5, beta=0.9, length_scale=500) == \
        pytest.approx(0.6708203932499369)  # sqrt(0.5 * 0.9)
    assert selection_q(mc=0.75, rollout_tokens=500, alpha=0.5, beta=0.9, length_scale=500) == \
        pytest.approx(0.7568067737)  # 0.5**0.25 * 0.9 = 0.8408964 * 0.9
    assert selection_q(mc=1.0, rollout_tokens=0, alpha=0.5, beta=0.9, length_scale=500) == 1.0
    assert selection_q(mc=0.0, rollout_tokens=1000, alpha=0.5, beta=0.9, length_scale=500) == \
        pytest.approx(0.405)  # 0.5 * 0.81
    # The alpha term prefers "supposed-to-be-correct" states; the beta term shorter rollouts.
    assert selection_q(mc=0.9, rollout_tokens=100, alpha=0.5, beta=0.9, length_scale=500) > \
        selection_q(mc=0.1, rollout_tokens=100, alpha=0.5, beta=0.9, length_scale=500)
    assert selection_q(mc=0.5, rollout_tokens=100, alpha=0.5, beta=0.9, length_scale=500) > \
        selection_q(mc=0.5, rollout_tokens=900, alpha=0.5, beta=0.9, length_scale=500)


def test_u_matches_hand_computed_values():
    # c_puct * sqrt(sum N) / (1 + N(s)).
    assert exploration_u(total_visits=0, visits=0, c_puct=0.125) == 0.0
    assert exploration_u(total_visits=4, visits=1, c_puct=0.125) == pytest.approx(0.125)
    assert exploration_u(total_visits=9, visits=0, c_puct=0.125) == pytest.approx(0.375)
    assert exploration_u(total_visits=16, visits=3, c_puct=0.5) == pytest.approx(0.5)


def test_pair_preference_formula():
    assert pair_preference(0.75, 0.25) == pytest.approx(0.75)
    assert pair_preference(1.0, 0.0) == 1.0
    assert pair_preference(0.0, 1.0) == 0.0
    assert pair_preference(0.4, 0.4) == 0.5
    # = p(1-q) + ((1-p)(1-q) + pq) / 2, the Bradley-Terry reading in the paper.
    for p, q in [(0.2, 0.7), (0.9, 0.3), (0.5, 0.5)]:
        tie = (1 - p) * (1 - q) + p * q
        assert pair_preference(p, q) == pytest.approx(p * (1 - q) + tie / 2)
        assert pair_preference(p, q) + pair_preference(q, p) == pytest.approx(1.0)


# -- the pool --------------------------------------------------------------------------------


def test_pool_pops_the_argmax_of_q_plus_u_and_never_repeats():
    rng = random.Random(0)
    c_puct = 0.125
    pool = SelectionPool(c_puct=c_puct)
    candidates = {}
    for state_id in range(6):
        for rollout_index in range(5):
            q = round(rng.uniform(0.3, 1.0), 3)
            candidates[(state_id, rollout_index)] = q
            pool.push(state_id=state_id, rollout_index=rollout_index, q=q)
    visits = {s: 0 for s in range(6)}
    popped = []
    while candidates:
        total = sum(visits.values())

        def score(key):
            return candidates[key] + exploration_u(total_visits=total, visits=visits[key[0]],
                                                   c_puct=c_puct)

        best = max(candidates, key=lambda key: (score(key), -key[0], -key[1]))
        selection = pool.pop_best()
        assert (selection.state_id, selection.rollout_index) == best
        assert selection.score == pytest.approx(score(best))
        popped.append(best)
        del candidates[best]
        pool.visit(best[0])
        visits[best[0]] += 1
        # Pushing a selected rollout again never brings it back.
        pool.push(state_id=best[0], rollout_index=best[1], q=2.0)
    assert len(set(popped)) == len(popped) == 30
    assert pool.pop_best() is None and len(pool) == 0
    assert pool.total_visits == 30


def test_pool_lazy_deletion_of_duplicates():
    pool = SelectionPool(c_puct=0.0)
    pool.push(state_id=0, rollout_index=1, q=0.5)
    pool.push(state_id=0, rollout_index=1, q=0.9)  # same stable id, pushed twice
    pool.push(state_id=1, rollout_index=0, q=0.1)
    assert len(pool) == 2
    first = pool.pop_best()
    assert (first.state_id, first.rollout_index, first.q) == (0, 1, 0.9)
    second = pool.pop_best()
    assert (second.state_id, second.rollout_index) == (1, 0)
    assert pool.pop_best() is None


# -- binary search ---------------------------------------------------------------------------


def test_bisect_over_a_hand_made_value_table():
    # Fig. 2b of the paper: x_{1:4} MC 0.25, x_{1:6} MC 0.5, x_{1:7} MC 0 -> first error step 7.
    values = {4: 0.25, 6: 0.5, 7: 0.0, 2: 0.5, 5: 0.5, 3: 0.5}
    calls = []

    async def estimate(length):
        calls.append(length)
        return values[length]

    index, reason = asyncio.run(bisect_first_error(good=0, bad=8, estimate=estimate))
    assert (index, reason) == (6, "located")  # 0-based: step 7
    assert calls == [4, 6, 7]


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 5, 8, 13, 16, 32])
def test_binary_search_finds_planted_step_within_bound(num_steps):
    problem = PlantedProblem.make(f"bs-{num_steps}", num_steps=num_steps)
    bound = K * (math.ceil(math.log2(num_steps)) + 1)
    for error_at in range(num_steps):
        engine = PlantedPolicy().engine()
        found = asyncio.run(locate_first_error(
            engine, prompt=problem.prompt(engine), pieces=problem.steps(error_at),
            gold_answer=problem.gold, run_seed=4, problem_id=problem.problem_id,
            splitter=SPLITTER, rollouts=K))
        assert found.first_error_index == error_at, (error_at, found)
        assert found.reason == "located"
        assert found.rollouts == engine.rollouts <= bound
        assert found.rollouts <= K * math.ceil(math.log2(num_steps))
        assert len(set(found.probe_lengths)) == len(found.probe_lengths)  # each point once
        assert found.probe_seeds == [derive_seed(4, "omegaprm", problem.problem_id, "solution",
                                                 0, n) for n in found.probe_lengths]


def test_binary_search_over_token_runs():
    problem = PlantedProblem.make("bs-tokens", num_steps=8)
    correct = problem.text()
    for error_at in range(8):
        engine = PlantedPolicy().engine()
        tokens = engine.token_pieces(problem.text(error_at))
        run_length = token_run_length([len(tokens)], target_pieces=16)
        pieces = token_runs(tokens, run_length=run_length)
        assert "".join(pieces) == problem.text(error_at) and len(pieces) <= 16
        found = asyncio.run(locate_first_error(
            engine, prompt=problem.prompt(engine), pieces=pieces, gold_answer=problem.gold,
            run_seed=0, problem_id="bs-tokens", solution_index=error_at, splitter=None))
        i = found.first_error_index
        assert correct.startswith("".join(pieces[:i]))
        assert not correct.startswith("".join(pieces[: i + 1]))
        assert found.rollouts <= K * math.ceil(math.log2(len(pieces)))
        # Continuations are requested right after the piece, with no separator.
        assert all(r.prompt.endswith(tuple(pieces)) for r in engine.requests)


def test_token_run_helpers():
    assert token_run_length([100, 60], target_pieces=16) == 5
    assert token_run_length([3], target_pieces=16) == 1
    assert token_runs(["a", " b", " c", " d", " e"], run_length=2) == ["a b", " c d", " e"]
    with pytest.raises(ValueError, match="run_length must be >= 1"):
        token_runs(["a"], run_length=0)


def test_binary_search_on_correct_or_ungradable_solutions():
    problem = PlantedProblem.make("bs-edge", num_steps=6)
    engine = PlantedPolicy().engine()
    kwargs = dict(prompt=problem.prompt(engine), run_seed=0, problem_id="bs-edge",
                  splitter=SPLITTER)
    correct = asyncio.run(locate_first_error(engine, pieces=problem.steps(),
                                             gold_answer=problem.gold, **kwargs))
    assert (correct.first_error_index, correct.reason, correct.rollouts) == \
        (-1, "final_answer_correct", 0)
    no_gold = asyncio.run(locate_first_error(engine, pieces=problem.steps(2), gold_answer=None,
                                             **kwargs))
    assert (no_gold.first_error_index, no_gold.reason) == (None, "final_answer_unknown")
    # Told the final answer is wrong, the search runs over all pieces.
    forced = asyncio.run(locate_first_error(engine, pieces=problem.steps(),
                                            final_answer_correct=False,
                                            gold_answer=problem.gold, **kwargs))
    assert forced.first_error_index == 5  # every probe has MC > 0: the last piece
    assert engine.rollouts == forced.rollouts


def test_binary_search_stops_on_an_unknown_probe():
    problem = PlantedProblem.make("bs-unknown", num_steps=8)
    found = asyncio.run(locate_first_error(
        PlantedPolicy().engine(), prompt=problem.prompt(PlantedPolicy().engine()),
        pieces=problem.steps(6), gold_answer=problem.gold, run_seed=0, problem_id="x",
        splitter=SPLITTER, grader=lambda text, gold: _unknown_grade()))
    # The grader cannot read the solution's own answer either.
    assert (found.first_error_index, found.reason) == (None, "final_answer_unknown")
    found = asyncio.run(locate_first_error(
        PlantedPolicy().engine(), prompt=problem.prompt(PlantedPolicy().engine()),
        pieces=problem.steps(6), gold_answer=problem.gold, run_seed=0, problem_id="x",
        splitter=SPLITTER, final_answer_correct=False,
        grader=lambda text, gold: _unknown_grade()))
    assert (found.first_error_index, found.reason) == (None, "probe_unknown")
    assert found.probe_values == [None] and found.rollouts == K


def _unknown_grade():
    from steplabel.annotators.grading import Grade
    return Grade("unknown", "test_unknown")


# -- pre-filter ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate, reason, correct", [(1.0, "all_correct", 32),
                                                   (0.0, "all_wrong", 0)])
def test_prefilter_drops_all_correct_and_all_wrong(rate, reason, correct):
    problem = PlantedProblem.make("filter", num_steps=6)
    engine = PlantedPolicy(success_rate=rate).engine()
    result = run_omegaprm(engine, problem)
    assert result.filtered and result.filter_reason == reason
    assert (result.prefilter_n_correct, result.prefilter_n_total) == (correct, 32)
    assert result.stop_reason == "filtered" and result.searches == [] and result.pairs == []
    assert [s.kind for s in result.states] == ["root"]
    assert len(engine.requests) == 1 and engine.requests[0].n == 32
    assert result.rollouts == 32 and len(result.rollout_records) == 32


def test_prefilter_without_gold_is_all_unknown():
    problem = PlantedProblem.make("filter-gold", num_steps=4)
    result = run_omegaprm(PlantedPolicy().engine(), problem, gold=None)
    assert (result.filtered, result.filter_reason) == (True, "all_unknown")
    assert (result.prefilter_n_total, result.prefilter_n_unknown) == (0, 32)


def test_mixed_question_passes_the_prefilter():
    problem = PlantedProblem.make("mixed", num_steps=6)
    result = run_omegaprm(PlantedPolicy().engine(), problem, search_limit=1)
    assert not result.filtered and result.filter_reason is None
    assert 0 < result.prefilter_n_correct < result.prefilter_n_total == 32


# -- the search ------------------------------------------------------------------------------


def extends(longer: OmegaPRMState, shorter: OmegaPRMState, sep: str) -> bool:
    """True when ``shorter``'s prefix is a proper prefix of ``longer``'s, piece-aligned."""
    if shorter.depth >= longer.depth:
        return False
    joiner = "" if shorter.kind == "root" or not sep else sep
    return longer.prefix.startswith(shorter.prefix + joiner)


def check_nesting(result: OmegaPRMResult, *, sep: str = "\n") -> None:
    """The tree of OPRM §3.3-3.4, for any policy: states nest by prefix, up to the first error,
    each under its longest known-good prefix; pairs only between siblings that do not nest."""
    states = {s.state_id: s for s in result.states}
    after = {s.state_id: s for s in result.states_after_error}
    every = {**states, **after}
    assert not set(states) & set(after)
    assert sorted(every) == list(range(len(every)))  # every estimated prefix is accounted for
    assert [s.state_id for s in result.states] == sorted(states)
    for s in every.values():
        assert 0 <= s.n_correct <= s.n_total
        assert s.value == (s.n_correct / s.n_total if s.n_total else None)  # None, never 0
        assert s.hard_label == (None if s.value is None else s.value > 0)
        assert s.n_truncated <= s.n_total + s.n_unknown
        if s.kind == "root":
            assert s.state_id == 0 and s.parent_id == -1 and s.prefix == "" and s.depth == 0
            assert s.state_id in states
            continue
        parent = every[s.parent_id]
        joiner = "" if parent.kind == "root" or not sep else sep
        assert s.prefix == parent.prefix + joiner + s.action  # extends its parent's prefix
        assert s.depth == parent.depth + s.action_pieces and s.action_pieces >= 1
        assert s.single_step == (s.action_pieces == 1)
        if s.kind == "completion":
            assert (s.n_correct, s.n_total, s.n_unknown, s.value) == (1, 1, 0, 1.0)
            origin = every[s.rollout_of]
            assert s.rollout_index >= 0 and s.seed == origin.seed
            assert origin.value > 0 and (s == origin or extends(s, origin, sep))
        else:
            assert s.rollout_of == -1
        if s.state_id in after:
            # Off the tree: it extends an MC = 0 prefix (the longest one is its parent).
            assert parent.value == 0
            continue
        # In the tree: the parent is the longest known-good prefix, nothing bad lies between.
        assert s.parent_id in states and parent.value is not None and parent.value > 0
        for other in states.values():
            if other.value is not None and extends(s, other, sep):
                assert other.value > 0, (s, other)  # no state after the first error
                assert other.depth <= parent.depth, (s, other)  # the parent is the longest
    for pair in result.pairs:
        a, b = states[pair.first_id], states[pair.second_id]
        assert a.parent_id == b.parent_id == pair.parent_id and a.state_id < b.state_id
        assert (pair.first_value, pair.second_value) == (a.value, b.value)
        assert pair.preference == pytest.approx(0.5 * (1 + a.value - b.value))
        assert pair.single_step == (a.single_step and b.single_step)
        assert not (a.kind == "completion" and b.kind == "completion")
        assert not a.prefix.startswith(b.prefix) and not b.prefix.startswith(a.prefix)
    probe_prefixes = [s.prefix for s in every.values() if s.kind == "probe"]
    assert len(set(probe_prefixes)) == len(probe_prefixes)  # each MC point estimated once


def check_tree(result: OmegaPRMResult, problem: PlantedProblem, *, k: int = K,
               sep: str = "\n") -> None:
    """:func:`check_nesting`, and what the planted policy makes exact."""
    check_nesting(result, sep=sep)
    correct_text = problem.text()
    for s in [*result.states, *result.states_after_error]:
        if s.kind == "root":
            assert s.n_total + s.n_unknown == 32
        elif s.kind == "probe":
            assert s.n_total + s.n_unknown == k
            # Planted policy: a prefix has MC > 0 exactly when it holds no error yet.
            assert s.hard_label == correct_text.startswith(s.prefix)
    for s in result.states_after_error:
        assert not correct_text.startswith(s.prefix)


def test_search_locates_every_planted_error_exactly():
    problem = PlantedProblem.make("tree", num_steps=8)
    engine = PlantedPolicy().engine()
    result = run_omegaprm(engine, problem, search_limit=25)
    assert (result.stop_reason, result.searches_run) == ("search_limit", 25)
    check_tree(result, problem)
    states = {s.state_id: s for s in [*result.states, *result.states_after_error]}
    for record in result.searches:
        assert record.first_error_index == problem.true_first_error(record.steps)
        assert record.first_error_index >= record.start_index
        assert record.reason == "located"
        searched = len(record.steps) - record.start_index
        assert record.rollouts <= K * math.ceil(math.log2(searched)) if searched > 1 \
            else record.rollouts == 0
        # Only incorrect rollouts of states with 0 < MC < 1 are ever selected.
        origin = states[record.state_id]
        assert 0 < origin.value < 1
        # The probe at the located error has MC = 0; the ones before it MC > 0.
        for probe_id in record.probe_state_ids:
            probe = states[probe_id]
            assert (probe.depth <= record.first_error_index) == (probe.value > 0)
    # Costs add up: the pre-filter, then k per estimated probe; one request per estimate.
    probes = [s for s in states.values() if s.kind == "probe"]
    assert result.rollouts == engine.rollouts == 32 + K * len(probes)
    assert result.cost["requests"] == len(engine.requests) == 1 + len(probes)
    assert sum(r.rollouts for r in result.searches) == K * len(probes)


def test_a_selected_rollout_is_never_selected_twice():
    problem = PlantedProblem.make("twice", num_steps=6)
    result = run_omegaprm(PlantedPolicy().engine(), problem, search_limit=500)
    assert result.stop_reason == "pool_empty"  # every candidate was searched
    keys = [(r.state_id, r.rollout_index) for r in result.searches]
    assert len(keys) == len(set(keys)) == result.searches_run > 20
    selected = {(r.state_id, r.rollout_index) for r in result.rollout_records if r.selected}
    assert selected == set(keys)
    for r in result.rollout_records:
        if r.selected:
            assert r.verdict == "incorrect"


def test_visits_and_selection_terms_follow_the_formulas():
    problem = PlantedProblem.make("formula", num_steps=8)
    cfg = dict(search_limit=20, alpha=0.5, beta=0.9, length_scale=500, c_puct=0.125)
    result = run_omegaprm(PlantedPolicy().engine(), problem, **cfg)
    states = {s.state_id: s for s in result.states}
    tokens = {(r.state_id, r.rollout_index): r.generated_tokens for r in result.rollout_records}
    visits: dict[int, int] = {}
    for record in result.searches:
        mc = states[record.state_id].value
        assert record.q == pytest.approx(selection_q(
            mc=mc, rollout_tokens=tokens[(record.state_id, record.rollout_index)],
            alpha=0.5, beta=0.9, length_scale=500))
        assert record.u == pytest.approx(exploration_u(
            total_visits=record.search_index, visits=visits.get(record.state_id, 0),
            c_puct=0.125))
        visits[record.state_id] = visits.get(record.state_id, 0) + 1
    assert {s.state_id: s.visits for s in result.states if s.visits} == visits
    assert sum(s.visits for s in result.states) == result.searches_run


def test_pool_empties_when_probes_add_no_candidates():
    # Mixed root, but every clean probe has MC = 1 (no incorrect rollouts to pool) and every
    # probe past the error MC = 0 (adds nothing): the pool holds only the root's rollouts.
    problem = PlantedProblem.make("empty", num_steps=8)
    mixed, always = PlantedPolicy(), PlantedPolicy(success_rate=1.0)

    def respond(request, index):
        _, response = split_prompt(request.prompt)
        return (mixed if response == "" else always)(request, index)

    result = run_omegaprm(ScriptedEngine(respond), problem, search_limit=100)
    root = result.states[0]
    assert result.stop_reason == "pool_empty"
    assert result.searches_run == root.n_total - root.n_correct
    for s in result.states:
        if s.kind == "probe":
            assert s.value in (0.0, 1.0)
    # MC = 1 probes keep all k correct rollouts as completed solutions (each under the
    # longest good prefix it extends, which may be a deeper probe than the one it came from).
    for s in result.states:
        if s.kind == "probe" and s.value == 1.0:
            kids = [c for c in result.states
                    if c.rollout_of == s.state_id and c.kind == "completion"]
            assert len(kids) == K
    check_tree(result, problem)


def test_sibling_pairs_share_a_parent_and_follow_the_formula():
    problem = PlantedProblem.make("pairs", num_steps=8)
    result = run_omegaprm(PlantedPolicy().engine(), problem, search_limit=15)
    states = {s.state_id: s for s in result.states}
    assert result.pairs
    for pair in result.pairs:
        a, b = states[pair.first_id], states[pair.second_id]
        assert a.parent_id == b.parent_id == pair.parent_id and a.state_id < b.state_id
        assert (pair.first_value, pair.second_value) == (a.value, b.value)
        assert pair.preference == pytest.approx(0.5 * (1 + a.value - b.value))
        assert pair.single_step == (a.action_pieces == 1 and b.action_pieces == 1)
        assert not (a.kind == "completion" and b.kind == "completion")
    assert any(p.preference != 0.5 for p in result.pairs)
    kinds: dict[int, list[str]] = {}
    for s in result.states:
        if s.parent_id >= 0:
            kinds.setdefault(s.parent_id, []).append(s.kind)

    def n_pairs(n: int) -> int:
        return n * (n - 1) // 2

    expected = sum(n_pairs(len(k)) - n_pairs(k.count("completion")) for k in kinds.values())
    assert len(result.pairs) == expected


def test_response_prefix_is_part_of_the_solution():
    problem = PlantedProblem.make("prefill", num_steps=8)
    engine = PlantedPolicy().engine()
    result = run_omegaprm(engine, problem, response_prefix="Step 1:", search_limit=10)
    assert engine.requests[0].prompt.endswith("<|assistant|>\nStep 1:")
    for record in result.searches:
        assert record.steps[0].startswith("Step 1:")
        assert record.first_error_index == problem.true_first_error(record.steps)
    check_tree(result, problem)


def test_token_pieces_locate_the_piece_holding_the_error():
    problem = PlantedProblem.make("tokens", num_steps=8)
    engine = PlantedPolicy().engine()
    result = run_omegaprm(engine, problem, step_unit="tokens", target_pieces=16,
                          search_limit=20)
    root_lengths = [len(engine.token_pieces(r.text)) for r in result.rollout_records
                    if r.state_id == 0]
    assert result.piece_tokens == math.ceil(sum(root_lengths) / len(root_lengths) / 16)
    correct = problem.text()
    assert result.searches_run == 20
    for record in result.searches:
        i = record.first_error_index
        assert correct.startswith("".join(record.steps[:i]))
        assert not correct.startswith("".join(record.steps[: i + 1]))
        searched = len(record.steps) - record.start_index
        assert record.rollouts <= K * math.ceil(math.log2(searched)) if searched > 1 \
            else record.rollouts == 0
    assert len(result.searches[0].steps) <= 16 + 1
    check_tree(result, problem, sep="")


def test_unknown_rollouts_stay_out_of_denominators_and_pool():
    problem = PlantedProblem.make("unknowns", num_steps=8)
    result = run_omegaprm(PlantedPolicy(unknown_rate=0.3).engine(), problem, search_limit=20)
    assert result.prefilter_n_unknown > 0
    assert sum(s.n_unknown for s in result.states) > result.prefilter_n_unknown
    check_tree(result, problem)
    for record in result.searches:
        assert record.first_error_index == problem.true_first_error(record.steps)
    verdicts = {(r.state_id, r.rollout_index): r.verdict for r in result.rollout_records}
    assert all(verdicts[(r.state_id, r.rollout_index)] == "incorrect" for r in result.searches)


# -- determinism and concurrency -------------------------------------------------------------


def test_same_run_seed_repeats_requests_and_results():
    problem = PlantedProblem.make("seeded", num_steps=8)
    first, second, other = (PlantedPolicy().engine() for _ in range(3))
    a = run_omegaprm(first, problem, run_seed=9, search_limit=10)
    b = run_omegaprm(second, problem, run_seed=9, search_limit=10)
    run_omegaprm(other, problem, run_seed=10, search_limit=10)
    assert first.requests == second.requests
    assert a == b
    assert first.requests[0].seed == derive_seed(9, "omegaprm", "seeded", 0)
    assert first.requests[0].seed != other.requests[0].seed
    probe_seeds = [s.seed for s in a.states if s.kind == "probe"]
    assert probe_seeds == [derive_seed(9, "omegaprm", "seeded", s.state_id)
                           for s in a.states if s.kind == "probe"]


def test_many_questions_concurrently_match_one_at_a_time():
    problems = [PlantedProblem.make(f"q{i}", num_steps=4 + 2 * i) for i in range(5)]
    config = OmegaPRMConfig(search_limit=8)

    async def run_all(engine, concurrently: bool):
        annotator = OmegaPRMAnnotator(engine, config, run_seed=2, splitter=SPLITTER)
        calls = [annotator.annotate(problem_id=p.problem_id, prompt=p.prompt(engine),
                                    question=p.question, gold_answer=p.gold) for p in problems]
        if concurrently:
            return await asyncio.gather(*calls)
        return [await call for call in calls]

    shared = ScriptedEngine(PlantedPolicy(), delay_s=0.001)
    together = asyncio.run(run_all(shared, True))
    alone = asyncio.run(run_all(PlantedPolicy().engine(), False))
    # Equal costs too: prefix-cache hits, which depend on the order, are not in them.
    assert together == alone
    # The questions really interleaved on the shared engine.
    order = [split_prompt(r.prompt)[0] for r in shared.requests]
    assert len(set(order[: len(problems)])) == len(problems)


def test_records_map_to_arrow():
    problem = PlantedProblem.make("arrow", num_steps=6)
    result = run_omegaprm(PlantedPolicy().engine(), problem, search_limit=5)
    for rows in (result.states, result.pairs, result.searches, result.rollout_records):
        table = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows])
        assert table.num_rows == len(rows)
    row = {k: v for k, v in dataclasses.asdict(result).items()
           if k not in ("states", "pairs", "searches", "rollout_records")}
    assert pa.Table.from_pylist([row]).num_rows == 1


# -- the tree: nesting, unknowns, cut-off rollouts (issue 12) --------------------------------


class CountingEngine(ScriptedEngine):
    """A ScriptedEngine that counts cut-off samples and prompts continuing a complete
    solution (a request that should never be made)."""

    def __init__(self, respond, **kwargs) -> None:
        super().__init__(respond, **kwargs)
        self.cut_off = 0
        self.from_complete: list[str] = []

    async def generate(self, request):
        _, response = split_prompt(request.prompt)
        if is_complete(response):
            self.from_complete.append(response)
        result = await super().generate(request)
        self.cut_off += result.finish_reasons.count("length")
        return result


@pytest.mark.parametrize("error_at", [3, 2])
def test_a_bad_probe_at_m_nests_under_the_good_probe_at_half_m(error_at):
    # The root's wrong rollouts hold an error at step ``error_at`` of 8: the search probes 4
    # (MC 0), then 2 (MC > 0), then 3. The good prefix of 2 must be an ancestor of the probe
    # at 4, never its sibling (the old tree hung both under the root and paired them).
    problem = PlantedProblem.make("nest", num_steps=8)
    planted = PlantedPolicy()

    def respond(request, index):
        if split_prompt(request.prompt)[1] == "":
            return problem.text() if index == 0 else problem.text(error_at)
        return planted(request, index)

    result = run_omegaprm(ScriptedEngine(respond), problem, search_limit=1)
    (search,) = result.searches
    every = {s.state_id: s for s in [*result.states, *result.states_after_error]}
    m, half, third = (every[i] for i in search.probe_state_ids)
    assert (m.depth, half.depth, third.depth) == (4, 2, 3)
    assert m.value == 0 and half.value > 0
    assert search.first_error_index == error_at and search.reason == "located"
    assert half.parent_id == 0 and third.parent_id == half.state_id
    if error_at == 3:  # root -> 2 -> 3 -> 4, the 4th step being the first error
        assert third.value > 0 and m.parent_id == third.state_id and m in result.states
        assert m.action_pieces == 1 and m.single_step
    else:  # root -> 2 -> 3 (the first error); 4 extends it: off the tree, kept apart
        assert third.value == 0 and not third.hard_label
        assert result.states_after_error == [m] and m.parent_id == third.state_id
    paired = {frozenset((p.first_id, p.second_id)) for p in result.pairs}
    assert frozenset((half.state_id, m.state_id)) not in paired
    # The correct solution hangs under the longest good prefix it extends.
    root_completion = next(s for s in result.states if s.rollout_of == 0)
    assert root_completion.parent_id == (third if error_at == 3 else half).state_id
    check_tree(result, problem)


def test_no_pair_between_nested_prefixes_on_the_five_step_policy():
    # Issue 12 measured 246 of 454 pairs comparing an action with its own prefix here.
    for i in range(6):
        problem = PlantedProblem.make(f"five-{i}", num_steps=5)
        result = run_omegaprm(PlantedPolicy().engine(), problem)
        assert result.stop_reason == "pool_empty" and result.pairs
        check_tree(result, problem)
        assert any(p.single_step for p in result.pairs)


@pytest.mark.parametrize("step_unit", ["steps", "tokens"])
@pytest.mark.parametrize("response_prefix", ["", "Step 1:"])
def test_no_request_continues_a_complete_solution(step_unit, response_prefix):
    problem = PlantedProblem.make("complete", num_steps=6)
    engine = CountingEngine(PlantedPolicy())
    result = run_omegaprm(engine, problem, step_unit=step_unit,
                          response_prefix=response_prefix, search_limit=100)
    assert result.searches_run > 10
    assert engine.from_complete == []
    # Every complete solution is labelled by its own graded answer: a wrong one is the end of
    # a search (never probed), a correct one a completion of value 1 with no rollouts.
    assert all(s.n_total == 1 for s in result.states if s.kind == "completion")
    for record in result.searches:
        depths = {s.state_id: s.depth for s in [*result.states, *result.states_after_error]}
        assert all(record.start_index < depths[i] < len(record.steps)
                   for i in record.probe_state_ids)


@pytest.mark.parametrize("root, truncated, reason, n_truncated", [
    ("cut", "unknown", "all_unknown", 32),  # no known rollout: not "too hard"
    ("few_known", "unknown", "too_few_known", 31),  # 1 known, wrong: too little to say
    ("one_known", "unknown", "too_few_known", 31),
    ("few_known", "incorrect", "all_wrong", 31),  # the old rule, now opt-in
    ("cut", "incorrect", "all_wrong", 32),
])
def test_prefilter_counts_only_known_rollouts(root, truncated, reason, n_truncated):
    problem = PlantedProblem.make("prefilter-cut", num_steps=5)
    engine = CountingEngine(LandscapePolicy(root=root))
    result = run_omegaprm(engine, problem, truncated=truncated)
    assert (result.filtered, result.filter_reason, result.stop_reason) == \
        (True, reason, "filtered")
    assert result.prefilter_n_truncated == result.truncated_rollouts == engine.cut_off == \
        n_truncated
    known = 32 - n_truncated if truncated == "unknown" else 32
    assert result.prefilter_n_total == known
    assert len(engine.requests) == 1 and result.searches == []


def test_prefilter_min_known_and_mixed_known_rollouts():
    problem = PlantedProblem.make("prefilter-known", num_steps=5)
    one_wrong = run_omegaprm(LandscapePolicy(root="few_known").engine(), problem,
                             prefilter_min_known=1)
    assert one_wrong.filter_reason == "all_wrong"
    # One right and one wrong among 30 cut off: the known rollouts are mixed, so search.
    mixed = run_omegaprm(LandscapePolicy(root="mixed_cut").engine(), problem, search_limit=3)
    assert not mixed.filtered and mixed.searches[0].state_id == 0
    assert (mixed.prefilter_n_correct, mixed.prefilter_n_total) == (1, 2)
    assert mixed.prefilter_n_truncated == mixed.prefilter_n_unknown == 30
    assert mixed.states[0].value == 0.5


def test_probes_whose_rollouts_are_all_cut_off_are_unknown_not_wrong():
    problem = PlantedProblem.make("probes-cut", num_steps=8)
    every_probe_cut = LandscapePolicy(weights=(0, 0, 0, 1, 0, 0, 0))  # the root is mixed
    engine = CountingEngine(every_probe_cut)
    result = run_omegaprm(engine, problem, search_limit=6)
    assert result.searches_run == 6
    probes = [s for s in result.states if s.kind == "probe"]
    assert probes and result.states_after_error == []
    for s in probes:
        assert (s.value, s.hard_label, s.n_total) == (None, None, 0)
        assert s.n_unknown == s.n_truncated == K
    for record in result.searches:
        # The search stops at the unknown probe: no error is located, none is invented.
        assert (record.first_error_index, record.reason) == (None, "probe_unknown")
        assert len(record.probe_state_ids) == 1
        assert record.rollouts_truncated == record.rollouts in (0, K)  # 0: a cached probe
    assert all(s.value != 0 and s.hard_label is not False for s in result.states)
    probe_ids = {s.state_id for s in probes}
    assert not any({p.first_id, p.second_id} & probe_ids for p in result.pairs)
    assert result.truncated_rollouts == engine.cut_off == K * len(probes)
    assert sum(r.finish_reason == "length" for r in result.rollout_records) == engine.cut_off
    check_nesting(result)
    # Counted as wrong (opt-in), the same rollouts make every probe a 0.
    wrong = run_omegaprm(every_probe_cut.engine(), problem, search_limit=6,
                         truncated="incorrect")
    assert {s.value for s in wrong.states if s.kind == "probe"} == {0.0}


def test_locate_first_error_counts_cut_off_probes():
    problem = PlantedProblem.make("bs-cut", num_steps=8)
    engine = LandscapePolicy(weights=(0, 0, 0, 1, 0, 0, 0), root=None).engine()
    found = asyncio.run(locate_first_error(
        engine, prompt=problem.prompt(engine), pieces=problem.steps(5),
        gold_answer=problem.gold, run_seed=0, problem_id="bs-cut", splitter=SPLITTER))
    assert (found.first_error_index, found.reason) == (None, "probe_unknown")
    assert found.probe_values == [None] and found.rollouts_truncated == found.rollouts == K


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**20),
    weights=st.lists(st.integers(0, 3), min_size=len(CLASSES), max_size=len(CLASSES))
    .filter(lambda w: sum(w) > 0),
    root=st.sampled_from(("mixed", "mixed", "mixed", "mixed_cut", None)),
    num_steps=st.integers(2, 9),
    step_unit=st.sampled_from(("steps", "tokens")),
    truncated=st.sampled_from(("unknown", "incorrect")),
    rollouts=st.sampled_from((1, 2, 4)),
    search_limit=st.integers(1, 12),
    response_prefix=st.sampled_from(("", "Step 1:")),
)
def test_tree_nesting_holds_on_random_landscapes(seed, weights, root, num_steps, step_unit,
                                                 truncated, rollouts, search_limit,
                                                 response_prefix):
    problem = PlantedProblem.make(f"landscape-{seed % 7}", num_steps=num_steps)
    engine = CountingEngine(LandscapePolicy(seed=seed, weights=tuple(weights), root=root))
    cfg = OmegaPRMConfig(rollouts=rollouts, search_limit=search_limit, prefilter_rollouts=8,
                         step_unit=step_unit, truncated=truncated)
    result = run_omegaprm(engine, problem, response_prefix=response_prefix,
                          **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    check_nesting(result, sep="" if step_unit == "tokens" else "\n")
    assert engine.from_complete == []  # no rollout from a complete solution
    every = [*result.states, *result.states_after_error]
    # Cut-off rollouts are counted, and unknown unless counted wrong on purpose.
    assert result.truncated_rollouts == engine.cut_off == \
        sum(r.finish_reason == "length" for r in result.rollout_records)
    assert result.prefilter_n_truncated == result.states[0].n_truncated
    if truncated == "unknown":
        assert all(s.n_truncated <= s.n_unknown for s in every)
    probes = [s for s in every if s.kind == "probe"]
    assert result.rollouts == engine.rollouts == 8 + rollouts * len(probes)
    # The pre-filter: only known rollouts decide, and enough of them.
    n_correct, n_total = result.prefilter_n_correct, result.prefilter_n_total
    expected = (None if 0 < n_correct < n_total else "all_unknown" if n_total == 0
                else "too_few_known" if n_total < cfg.min_known
                else "all_correct" if n_correct == n_total else "all_wrong")
    assert result.filter_reason == expected
    # Each search: divide points strictly inside, goods before bads, unknown stops it.
    depth = {s.state_id: s for s in every}
    for record in result.searches:
        probed = [depth[i] for i in record.probe_state_ids]
        assert all(record.start_index < p.depth < len(record.steps) for p in probed)
        assert all(p.value is not None for p in probed[:-1])
        if record.reason == "probe_unknown":
            assert probed and probed[-1].value is None and record.first_error_index is None
            continue
        assert record.reason == "located"
        good = [p.depth for p in probed if p.value > 0]
        bad = [p.depth for p in probed if p.value == 0]
        assert max(good, default=record.start_index) == record.first_error_index
        assert min(bad, default=len(record.steps)) == record.first_error_index + 1


def test_job_rows_carry_the_tree():
    # The OmegaPRM stage (annotators.stages.omegaprm_rows, as the job's OmegaPRM stage calls
    # it) writes the parent, single_step and the states after the error to omegaprm/states,
    # the shared parent to pairs, and each search's reason.
    from steplabel.annotators.stages import StageContext, engine_identity, omegaprm_rows
    from steplabel.schemas.graders import MathGold
    from steplabel.schemas.manifest import manifest_from_dict
    from steplabel.schemas.stages import Problem
    from steplabel.schemas.records import OUTPUTS, to_table

    problem = PlantedProblem.make("job-tree", num_steps=8)
    planted = PlantedPolicy()

    def respond(request, index):  # the root's wrong rollouts go wrong at step 3 of 8
        if split_prompt(request.prompt)[1] == "":
            return problem.text() if index % 2 == 0 else problem.text(2)
        return planted(request, index)

    engine = ScriptedEngine(respond)
    manifest = manifest_from_dict({
        "name": "omegaprm-rows", "source": {"kind": "jsonl", "path": "unused.jsonl"},
        "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
        "policy": {"samples": 1, "response_prefix": ""},
        "omegaprm": {"rollouts": K, "prefilter_rollouts": 8, "search_limit": 1},
    })
    ctx = StageContext(manifest)
    out = asyncio.run(omegaprm_rows(
        ctx, ctx.omegaprm_annotator(engine), ctx.solution_prompt(engine, problem.question),
        Problem("job-tree", problem.question, MathGold(problem.gold), "s"),
        completer_model=engine_identity(engine)[0]))
    assert out.failure is None
    for output in ("omegaprm_states", "omegaprm_pairs", "omegaprm_searches"):
        assert out.rows[output]
        for row in out.rows[output]:
            assert set(row) == set(OUTPUTS[output].names)
        to_table(output, out.rows[output])  # the explicit schema takes every row
    states = {r["node_id"]: r for r in out.rows["omegaprm_states"]}
    tree = {k: r for k, r in states.items() if not r["after_error"]}
    after = [r for r in states.values() if r["after_error"]]
    assert [r["depth"] for r in after] == [4]  # probed first, past the error found at 3
    assert states[after[0]["parent_id"]]["mc_value"] == 0.0
    for row in tree.values():
        if row["record_type"] == "root":
            assert row["parent_id"] is None
            continue
        parent = tree[row["parent_id"]]
        assert parent["mc_value"] > 0 and row["depth"] == parent["depth"] + row["action_pieces"]
        assert row["single_step"] == (row["action_pieces"] == 1)
        assert (row["rollout_of"] is None) == (row["record_type"] != "completion")
    for pair in out.rows["omegaprm_pairs"]:
        a, b = tree[pair["node_a"]], tree[pair["node_b"]]
        assert a["parent_id"] == b["parent_id"] == pair["parent_id"]
        assert pair["prefix"] == tree[pair["parent_id"]]["prefix"]
        assert pair["single_step"] == (a["single_step"] and b["single_step"])
    (search,) = out.rows["omegaprm_searches"]
    assert (search["first_error"], search["reason"], search["start_index"]) == (2, "located", 0)
    assert out.counters["omegaprm_states_after_error"] == 1
    assert out.counters["omegaprm_pairs"] == len(out.rows["omegaprm_pairs"])
    assert out.counters["omegaprm_rollouts_truncated"] == 0
