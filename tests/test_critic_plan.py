"""``steplabel plan`` prices the critic: from its critiques when the pilot ran it, else
estimated as samples x (prompt + max_tokens) per trajectory it would critique."""

from pathlib import Path

import pytest
import yaml

from steplabel.dataset import plan, storage
from steplabel.pipelines.job import run_job
from steplabel.schemas.annotators import CriticConfig
from steplabel.schemas.manifest import load_manifest
from test_plan import PROBLEMS, plan_json, write_manifest, write_source

pytestmark = pytest.mark.pipeline

CRITIC_MODEL = {"kind": "custom", "factory": "fakes:critic_engine"}


def with_critic(path: Path, critic: dict) -> Path:
    data = yaml.safe_load(path.read_text())
    data["critic"] = critic
    data["models"]["critic"] = CRITIC_MODEL
    out = path.with_name("critic.yaml")
    out.write_text(yaml.safe_dump(data), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("critic-plan")
    plain = write_manifest(base, write_source(base / "problems.jsonl", PROBLEMS))
    critic = with_critic(plain, {"samples": 3, "sampling": {"max_tokens": 64}})
    without, withc = str(base / "without"), str(base / "with")
    run_job(load_manifest(plain), out_dir=without)
    result = run_job(load_manifest(critic), out_dir=withc)
    return plain, critic, without, withc, result


def test_a_pilot_with_the_critic_prices_it_from_its_critiques(runs, capsys):
    _, critic, _, withc, result = runs
    projected = plan_json(capsys, critic, "--from", withc)
    spent = result.stats["overall"]["critiques"]["cost"]
    for name in ("rollouts", "prompt_tokens", "generated_tokens"):
        figure = projected["stages"]["critic"][name]
        assert figure["projected"] == pytest.approx(spent[name])
        assert figure["low"] == figure["high"] == figure["projected"]
    assert spent["rollouts"] == 3 * result.stats["counters"]["critic_solutions"]


def test_without_critiques_the_critic_is_estimated_per_trusted_trajectory(runs, capsys):
    _, critic, without, _, _ = runs
    projected = plan_json(capsys, critic, "--from", without)
    kept = list(storage.iter_rows(without, "trajectories"))  # consensus: the trusted ones
    critic_stage = projected["stages"]["critic"]
    assert critic_stage["rollouts"]["projected"] == pytest.approx(3 * len(kept))
    assert critic_stage["generated_tokens"]["projected"] == pytest.approx(3 * 64 * len(kept))
    config = CriticConfig(samples=3)
    expected_prompt = sum(plan.critic_estimate(row, config)[1] for row in kept)
    assert critic_stage["prompt_tokens"]["projected"] == pytest.approx(expected_prompt)
    assert any("critic did not run" in note for note in projected["notes"])


def test_estimate_skips_what_the_critic_would_skip():
    config = CriticConfig(samples=2)
    untrusted = {"consensus_keep": False, "mc_first_error": 1, "cost_policy": {}}
    assert plan.critic_estimate(untrusted, config) is None
    assert plan.critic_estimate({**untrusted, "policy_truncated": True}, config) is None
    everything = CriticConfig(samples=2, only_trusted=False)
    cost = plan.critic_estimate({**untrusted, "cost_policy": {"prompt_tokens": 10,
                                                              "generated_tokens": 30}},
                                everything)
    assert cost[0] == 2 and cost[2] == 2 * 1024 and cost[1] > 40


def test_under_trust_omegaprm_the_estimate_is_per_searched_rollout():
    from steplabel.annotators.prompts import load_template

    config = CriticConfig(samples=2, trust="omegaprm")
    search = {"first_error": 1, "pieces": ["a" * 40, "b" * 80]}
    cost = plan.critic_search_estimate(search, 25, config)
    template = len(load_template(config.template_id).text) / plan.CHARS_PER_TOKEN
    assert cost.tolist() == pytest.approx([2, 25 + 120 / 4 + template, 2 * 1024])
    unlocated = {"first_error": None, "pieces": ["a"]}
    assert plan.critic_search_estimate(unlocated, 25, config) is None  # only_trusted
    everything = CriticConfig(samples=2, trust="omegaprm", only_trusted=False)
    assert plan.critic_search_estimate(unlocated, 25, everything) is not None
    assert plan.critic_search_estimate({"first_error": 1, "pieces": []}, 25, config) is None
    assert plan.critic_search_estimate(search, 25, CriticConfig(samples=2)) is None
