"""Every GPU of a node: data-parallel replicas per engine, memory shared by the models of a
worker, and the replica each request goes to. No GPU here: GPU counts are injected, and the
vLLM engine under test drives a scripted ``AsyncLLM`` (no vLLM engine is started)."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import pytest

from steplabel.engines.parallel import PrefixAffinityRouter
from steplabel.schemas.config import (
    ConfigError,
    EngineConfig,
    data_parallel_size_for,
    from_mapping,
    share_gpu_memory,
)
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.unit

VLLM = EngineConfig(kind="vllm", model="embedded")
JUDGE = EngineConfig(kind="vllm", model="judge-model")


# ---------------------------------------------------------------------------------------------
# data_parallel_size


@pytest.mark.parametrize("gpus, tp, expected", [
    (0, 1, 1), (0, 2, 1), (1, 1, 1), (4, 1, 4), (4, 2, 2), (5, 2, 2), (8, 4, 2)])
def test_auto_data_parallel_is_one_replica_per_tensor_parallel_group(gpus, tp, expected):
    config = EngineConfig(tensor_parallel_size=tp)
    assert config.data_parallel_size == "auto"
    assert data_parallel_size_for(config, gpus) == expected


def test_explicit_data_parallel_size_is_kept_when_the_gpus_are_there():
    assert data_parallel_size_for(EngineConfig(data_parallel_size=2), 4) == 2
    assert data_parallel_size_for(EngineConfig(data_parallel_size=2, tensor_parallel_size=2),
                                  4) == 2
    assert data_parallel_size_for(EngineConfig(data_parallel_size=1), 0) == 1


@pytest.mark.parametrize("config, gpus, message", [
    (EngineConfig(data_parallel_size=3, tensor_parallel_size=2), 4,
     "data_parallel_size 3 x tensor_parallel_size 2 needs 6 GPUs, but this worker sees 4"),
    (EngineConfig(data_parallel_size=2), 0, "data_parallel_size 2 needs GPUs"),
    (EngineConfig(tensor_parallel_size=2), 1, "tensor_parallel_size 2 needs 2 GPUs"),
])
def test_data_parallel_beyond_the_gpus_is_refused(config, gpus, message):
    with pytest.raises(ConfigError, match=message):
        data_parallel_size_for(config, gpus)


def test_engines_other_than_vllm_have_one_replica():
    config = EngineConfig(kind="openai", base_url="http://localhost:1", data_parallel_size=4)
    assert data_parallel_size_for(config, 8) == 1


def test_data_parallel_size_reads_from_yaml_values():
    assert from_mapping(EngineConfig, {"data_parallel_size": "auto"}).data_parallel_size == "auto"
    assert from_mapping(EngineConfig, {"data_parallel_size": 4}).data_parallel_size == 4
    with pytest.raises(ConfigError, match="data_parallel_size"):
        from_mapping(EngineConfig, {"data_parallel_size": "all"})
    with pytest.raises(ConfigError, match="data_parallel_size must be >= 1 or 'auto', got 0"):
        EngineConfig(data_parallel_size=0)
    with pytest.raises(ConfigError, match="gpu_memory_utilization must be in"):
        EngineConfig(gpu_memory_utilization=1.5)


# ---------------------------------------------------------------------------------------------
# Memory shared by the vLLM models of one worker


def test_one_model_takes_the_default_budget_for_every_role():
    roles = share_gpu_memory({"policy": VLLM, "completer": VLLM, "judge": VLLM})
    assert {c.gpu_memory_utilization for c in roles.values()} == {0.9}
    # Roles naming one model still name one config: one engine in the pool.
    assert roles["policy"] == roles["completer"] == roles["judge"]


def test_two_models_split_the_default_budget_equally():
    roles = share_gpu_memory({"policy": VLLM, "completer": VLLM, "judge": JUDGE})
    assert roles["policy"].gpu_memory_utilization == 0.45
    assert roles["judge"].gpu_memory_utilization == 0.45
    assert roles["policy"] == roles["completer"]


def test_three_models_never_exceed_the_budget():
    third = EngineConfig(model="completer-model")
    roles = share_gpu_memory({"policy": VLLM, "completer": third, "judge": JUDGE})
    shares = [c.gpu_memory_utilization for c in roles.values()]
    assert shares == [0.3, 0.3, 0.3] and sum(shares) <= 0.9


def test_explicit_shares_are_kept_and_the_rest_is_split():
    policy = EngineConfig(gpu_memory_utilization=0.6)
    roles = share_gpu_memory({"policy": policy, "judge": JUDGE})
    assert roles["policy"].gpu_memory_utilization == 0.6
    assert roles["judge"].gpu_memory_utilization == 0.3


def test_a_model_alone_keeps_its_explicit_share():
    config = EngineConfig(gpu_memory_utilization=0.95)
    assert share_gpu_memory({"policy": config})["policy"].gpu_memory_utilization == 0.95


def test_oversubscribed_explicit_shares_are_refused_with_roles_and_values():
    policy = EngineConfig(gpu_memory_utilization=0.6)
    judge = EngineConfig(model="judge-model", gpu_memory_utilization=0.5)
    with pytest.raises(ConfigError) as info:
        share_gpu_memory({"policy": policy, "judge": judge})
    message = str(info.value)
    assert "policy (embedded) 0.6 + judge (judge-model) 0.5 = 1.1" in message
    assert "more than one engine's budget 0.9" in message


def test_explicit_shares_that_leave_too_little_for_the_others_are_refused():
    policy = EngineConfig(gpu_memory_utilization=0.88)
    with pytest.raises(ConfigError, match="leave 0.02 each to judge \\(judge-model\\)"):
        share_gpu_memory({"policy": policy, "judge": JUDGE})


def test_roles_on_their_own_worker_pools_do_not_share():
    pools = {"policy": "l4", "completer": "l4", "judge": "a100"}
    roles = share_gpu_memory({"policy": VLLM, "completer": VLLM, "judge": JUDGE}, pools=pools)
    assert {c.gpu_memory_utilization for c in roles.values()} == {0.9}
    big = EngineConfig(model="judge-model", gpu_memory_utilization=0.9)
    share_gpu_memory({"policy": EngineConfig(gpu_memory_utilization=0.9), "judge": big},
                     pools=pools)  # no error: different machines


def test_engines_other_than_vllm_take_no_gpu_memory():
    remote = EngineConfig(kind="openai", model="served", base_url="http://localhost:1")
    roles = share_gpu_memory({"policy": VLLM, "judge": remote})
    assert roles["policy"].gpu_memory_utilization == 0.9
    assert roles["judge"] == remote


def _manifest(models: dict, **extra):
    return manifest_from_dict({
        "name": "gpus", "source": {"kind": "jsonl", "path": "p.jsonl"}, "models": models,
        "monte_carlo": {"rollouts": 2}, "judge": {}, **extra})


def test_stage_roles_share_memory_between_the_policy_and_a_separate_judge():
    from steplabel.annotators.stages import StageContext

    manifest = _manifest({"policy": {"model": "embedded"}, "judge": {"model": "judge-model"}})
    roles = StageContext(manifest).roles()
    assert roles["policy"].gpu_memory_utilization == 0.45
    assert roles["completer"] == roles["policy"]
    assert roles["judge"].gpu_memory_utilization == 0.45
    # Every stage of the worker resolves the same configs: one engine per model in the pool.
    assert StageContext(manifest).roles() == roles


def test_launch_refuses_oversubscribed_models_before_the_job_starts(tmp_path):
    from steplabel.pipelines.launch import JobError, plan_launch

    manifest = _manifest({"policy": {"model": "embedded", "gpu_memory_utilization": 0.7},
                          "judge": {"model": "judge-model", "gpu_memory_utilization": 0.7}})
    with pytest.raises(JobError, match="= 1.4 is more than one engine's budget"):
        plan_launch(manifest, out_dir=str(tmp_path / "out"))


def test_launch_refuses_a_second_worker_process_on_a_gpu_machine(monkeypatch, tmp_path):
    from steplabel.pipelines import launch

    monkeypatch.setattr(launch, "accelerator_count", lambda: 4)
    manifest = _manifest({"policy": {"model": "embedded"}}, runner={
        "direct_running_mode": "multi_processing", "direct_num_workers": 4})
    with pytest.raises(launch.JobError, match="direct_num_workers is 4 .*this machine has 4 GPU"):
        launch.plan_launch(manifest, out_dir=str(tmp_path / "out"))
    # One worker: fine, and the launch goes on to the source (which this test does not have).
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="source path .*p.jsonl matches no file"):
        launch.plan_launch(_manifest({"policy": {"model": "embedded"}}), out_dir="out")


# ---------------------------------------------------------------------------------------------
# What vLLM receives


def test_vllm_receives_data_parallel_size_and_the_memory_share():
    from steplabel.engines.vllm_engine import engine_parallelism

    config = EngineConfig(tensor_parallel_size=2, gpu_memory_utilization=0.45)
    assert engine_parallelism(config, gpus=8) == {
        "tensor_parallel_size": 2, "data_parallel_size": 4, "gpu_memory_utilization": 0.45}
    assert engine_parallelism(EngineConfig(), gpus=0) == {
        "tensor_parallel_size": 1, "data_parallel_size": 1, "gpu_memory_utilization": 0.9}


def test_the_installed_vllm_takes_these_arguments():
    """The contract the engine is built to: ``AsyncEngineArgs`` takes ``data_parallel_size``
    and ``AsyncLLM.generate`` takes ``data_parallel_rank`` (vLLM 0.32)."""
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(model="unused", data_parallel_size=4, tensor_parallel_size=2,
                           gpu_memory_utilization=0.45)
    assert (args.data_parallel_size, args.tensor_parallel_size) == (4, 2)
    assert "data_parallel_rank" in inspect.signature(AsyncLLM.generate).parameters


# ---------------------------------------------------------------------------------------------
# The replica each request goes to

QUESTION = "Question: " + "a farmer has 17 sheep and buys some more; " * 20


def test_requests_repeating_a_prefix_stay_on_its_replica():
    router = PrefixAffinityRouter(4)
    first = router.acquire(QUESTION)
    rollouts = [router.acquire(QUESTION + f"Step 1: ... Step {k}: more") for k in range(8)]
    assert rollouts == [first] * 8
    assert router.affinity_picks == 8


def test_unrelated_requests_spread_evenly():
    router = PrefixAffinityRouter(4)
    picks = [router.acquire(f"{i}: " + "unrelated question text " * 30) for i in range(40)]
    assert sorted(picks.count(r) for r in range(4)) == [10, 10, 10, 10]
    assert router.load == [10, 10, 10, 10]


def test_an_overloaded_owner_is_bypassed_and_released_work_counts_down():
    router = PrefixAffinityRouter(2, max_excess=4, max_ratio=1.5)
    owner = router.acquire(QUESTION, weight=8)
    assert router.load[owner] == 8
    other = router.acquire(QUESTION + " one more step")
    assert other != owner  # 8 - 0 > 4 and 8 > 1.5 * 0: the idle replica takes it
    router.release(owner, 8)
    router.release(other)
    assert router.load == [0, 0]
    # The prefix is now remembered on `other` (it served the longest one last).
    assert router.acquire(QUESTION + " one more step") == other


def test_a_prompt_matching_little_of_a_known_prefix_goes_to_the_least_loaded():
    router = PrefixAffinityRouter(2, chunk_chars=64)
    template = "System: solve step by step.\n" * 3  # 87 characters: one full chunk
    owner = router.acquire(template + "short question A " * 20)
    # Another question shares only the template's first chunk (< half of the prompt).
    assert router.acquire(template + "another question B " * 20) != owner


def test_remembered_prefixes_are_bounded():
    router = PrefixAffinityRouter(2, chunk_chars=16, max_prefixes=50)
    for i in range(100):
        router.acquire(f"{i:04d}" + "x" * 200)
    assert len(router._owners) == 50


def test_router_arguments_are_checked():
    with pytest.raises(ValueError, match="replicas must be >= 1, got 0"):
        PrefixAffinityRouter(0)


# -- the vLLM engine with a scripted AsyncLLM ----------------------------------------------------


class ScriptedAsyncLLM:
    """Answers every request at once and records the replica each one named."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.ranks: list[int | None] = []
        self.fail_on = fail_on

    async def generate(self, prompt, params, request_id, *, data_parallel_rank=None):
        self.ranks.append(data_parallel_rank)
        await asyncio.sleep(0)
        if self.fail_on and self.fail_on in prompt:
            raise RuntimeError("scripted failure")
        outputs = [SimpleNamespace(index=i, text=f"sample {i}", token_ids=[1, 2],
                                   finish_reason="stop") for i in range(params.n)]
        yield SimpleNamespace(outputs=outputs, prompt_token_ids=[1] * 10, num_cached_tokens=0)


def _engine(llm, replicas):
    from steplabel.engines.vllm_engine import ResolvedModel, VLLMEngine

    return VLLMEngine(VLLM, ResolvedModel("unused", None), llm, tokenizer=None,
                      data_parallel_size=replicas)


def test_the_vllm_engine_names_a_replica_per_request_and_frees_it():
    from steplabel.engines.base import GenerationRequest

    llm = ScriptedAsyncLLM()
    engine = _engine(llm, 4)

    async def run():
        questions = [f"Q{i} " + "question text " * 40 for i in range(4)]
        await asyncio.gather(*(engine.generate(GenerationRequest(prompt=q, n=4))
                               for q in questions))
        rollouts = [GenerationRequest(prompt=questions[0] + f" Step {k}") for k in range(6)]
        await asyncio.gather(*(engine.generate(r) for r in rollouts))

    asyncio.run(run())
    assert sorted(llm.ranks[:4]) == [0, 1, 2, 3]  # four questions, four replicas
    assert llm.ranks[4:] == [llm.ranks[0]] * 6  # question 0's rollouts on its replica
    assert engine.router.load == [0, 0, 0, 0]
    assert engine.info().settings["data_parallel_size"] == 4


def test_a_failed_request_frees_its_replica_and_one_replica_names_none():
    from steplabel.engines.base import GenerationRequest

    llm = ScriptedAsyncLLM(fail_on="boom")
    engine = _engine(llm, 2)
    with pytest.raises(RuntimeError, match="scripted failure"):
        asyncio.run(engine.generate(GenerationRequest(prompt="boom " * 100, n=2)))
    assert engine.router.load == [0, 0]

    single = ScriptedAsyncLLM()
    engine = _engine(single, 1)
    assert engine.router is None
    asyncio.run(engine.generate(GenerationRequest(prompt="hello")))
    assert single.ranks == [None]
    assert engine.info().settings["gpu_memory_utilization"] == 0.9
