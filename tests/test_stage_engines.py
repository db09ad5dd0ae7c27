"""Engines of the staged graph: started only for keys that need work, shared by stages naming
the same model, and rebuilt after a death for the retried bundle."""

import json
from pathlib import Path

import pytest
from apache_beam.utils import shared

import killing
from steplabel.schemas.graders import MathGold
from steplabel.schemas.stages import Problem
from steplabel.engines.base import EngineDiedError
from steplabel.pipelines.checkpoints import load_stage_checkpoint, stage_checkpoint_counts
from steplabel.pipelines.job import run_job
from steplabel.pipelines.stages import SampleSolutionsFn
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline


def manifest_for(source: Path, factory: str, **overrides):
    data = {
        "name": "engines", "seed": 1,
        "source": {"kind": "jsonl", "path": str(source)},
        "models": {"policy": {"kind": "custom", "factory": f"killing:{factory}"}},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 2},
        "omegaprm": {"rollouts": 2, "prefilter_rollouts": 4, "search_limit": 1},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 1},
    }
    data.update(overrides)
    return manifest_from_dict(data)


def write_problems(path: Path, count: int) -> Path:
    with open(path, "w") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"p{i}", "question": f"What is {i} + 1?",
                                     "answer": str(i + 1)}) + "\n")
    return path


def test_one_engine_for_every_stage_and_none_on_a_finished_rerun(tmp_path):
    killing.BUILT.clear()
    manifest = manifest_for(write_problems(tmp_path / "p.jsonl", 3), "counting_engine")
    out = tmp_path / "out"
    first = run_job(manifest, out_dir=str(out))
    # policy, completer (Monte Carlo and OmegaPRM) and judge name one model: one engine.
    assert killing.BUILT == ["counting"]
    (out / "COMPLETED").unlink()
    again = run_job(manifest, out_dir=str(out))
    # Every key of every stage was checkpointed: replayed, and no engine started.
    assert killing.BUILT == ["counting"]
    counters = again.stats["counters"]
    assert not any(k.endswith("_computed") for k in counters if k.startswith("stage_"))
    assert counters["stage_sample_resumed"] == 3
    assert again.info["rows"] == first.info["rows"]


def test_a_dead_engine_is_rebuilt_for_the_retried_bundle(tmp_path):
    """A bundle fails when its engine dies; the retry (as Dataflow retries bundles) gets a new
    engine from the pool instead of the dead one, and finishes the keys."""
    killing.BUILT.clear()
    manifest = manifest_for(tmp_path / "unused.jsonl", "dies_once_engine")
    fn = SampleSolutionsFn(manifest, out_dir=str(tmp_path), pool=shared.Shared(),
                           max_in_flight=2)
    fn.setup()
    problems = [Problem(f"p{i}", f"What is {i} + 1?", MathGold(str(i + 1)), "test") for i in range(3)]

    def bundle():
        fn.start_bundle()
        outputs = [o for p in problems for o in fn.process(p)]
        return outputs + [wv.value for wv in fn.finish_bundle()]

    with pytest.raises(EngineDiedError):
        bundle()
    assert killing.BUILT == ["dies_once"]
    assert stage_checkpoint_counts(str(tmp_path))["sample"] == 0
    outputs = bundle()  # the retried bundle
    assert killing.BUILT == ["dies_once", "dies_once"]
    assert sorted(problem.problem_id for problem, _, _ in outputs) == ["p0", "p1", "p2"]
    assert all(sampled.failure is None and sampled.solutions for _, sampled, _ in outputs)
    assert stage_checkpoint_counts(str(tmp_path))["sample"] == 3
    assert load_stage_checkpoint(str(tmp_path), "sample", "p0")["solutions"]
