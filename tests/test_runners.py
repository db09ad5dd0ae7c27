"""Runner profiles: the pipeline is built with each profile's options up to submission."""

from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.pipeline import PipelineVisitor

from steplabel.pipelines.evaluate_graph import build_evaluation_pipeline
from steplabel.pipelines.evaluate_spec import make_spec
from steplabel.pipelines.job import build_pipeline
from steplabel.pipelines.runners import pipeline_options
from steplabel.pipelines.runners import (
    declare_engine_resources,
    engine_resource_hints,
    runner_options,
)
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.pipeline


def manifest(runner: dict, source: str = "problems.jsonl"):
    return manifest_from_dict({
        "name": "profiles",
        "source": {"kind": "jsonl", "path": source},
        "models": {"policy": {"kind": "vllm", "model": "/models/policy"}},
        "monte_carlo": {},
        "runner": runner,
    })


@pytest.mark.parametrize("runner, profile", [("dataflow", "dataflow.yaml"),
                                             ("flink", "flink.yaml")])
def test_profile_builds_pipeline_up_to_submission(repo_root, runner, profile):
    # Workers read the source with Beam IO (a real job reads gs:// with apache-beam[gcp], in
    # the worker image); the graph is only built here, so a local path will do.
    m = manifest({"runner": runner, "profile": str(repo_root / "jobs" / "runners" / profile)},
                 source=str(repo_root / "jobs" / "data" / "arithmetic.jsonl"))
    options = pipeline_options(m.runner)
    if runner == "dataflow":
        assert options.view_as(StandardOptions).runner == "DataflowRunner"
        assert options.view_as(GoogleCloudOptions).temp_location.startswith("gs://")
        assert any("worker_accelerator" in o for o in
                   options.view_as(GoogleCloudOptions).dataflow_service_options)
    else:
        assert options.view_as(StandardOptions).runner == "PortableRunner"
        assert options.view_as(PortableOptions).job_endpoint
        assert options.view_as(PortableOptions).environment_type == "DOCKER"
    # Build the whole graph on a pipeline that is never run, and serialise it as a runner
    # does before submission.
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, m, out_dir="gs://bucket/out")
    proto = pipeline.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"ReadProblems", "ValidateProblems", "Label/SampleSolutions", "Label/MonteCarlo",
            "Label/AssembleTrajectories", "Label/MergeProblems", "Write"} <= names
    # Each model stage declares the accelerator the profile names for its role.
    hints = {t.unique_name: t.environment_id and proto.components.environments[
        t.environment_id].resource_hints for t in proto.components.transforms.values()}
    if runner == "dataflow":
        accelerator = b"type:nvidia-l4;count:1;install-nvidia-driver"
        assert accelerator in hints["Label/MonteCarlo"].values()
        assert accelerator in hints["Label/SampleSolutions"].values()


def test_local_runner_options():
    m = manifest({"runner": "local", "direct_running_mode": "multi_processing",
                  "direct_num_workers": 2})
    assert runner_options(m.runner) == ["--direct_running_mode=multi_processing",
                                        "--direct_num_workers=2"]


def test_remote_runner_needs_profile(tmp_path):
    with pytest.raises(ConfigError, match="runner.profile is required"):
        runner_options(manifest({"runner": "dataflow"}).runner)
    bad = tmp_path / "p.yaml"
    bad.write_text("runner: flink\noptions: {runner: PortableRunner}\n")
    with pytest.raises(ConfigError, match="is for flink"):
        runner_options(manifest({"runner": "dataflow", "profile": str(bad)}).runner)


def test_never_more_engine_copies_than_accelerators(tmp_path):
    from steplabel.pipelines.job import JobError, run_job

    m = manifest_from_dict({
        "name": "copies",
        "source": {"kind": "jsonl", "path": str(tmp_path / "p.jsonl")},
        "models": {"policy": {"kind": "vllm", "model": "embedded"}},
        "runner": {"direct_running_mode": "multi_processing", "direct_num_workers": 2},
    })
    with pytest.raises(JobError, match="would load its own vLLM engine"):
        run_job(m, out_dir=str(tmp_path / "out"))


# --------------------------------------------------------------------------------------------
# Every stage that starts an engine declares its role's resources (run and evaluate alike)

DATA = Path(__file__).parent / "data"
ACCELERATORS = {"policy": "type:nvidia-l4;count:1;install-nvidia-driver",
                "completer": "type:nvidia-tesla-t4;count:2;install-nvidia-driver",
                "judge": "type:nvidia-tesla-a100-80gb;count:1;install-nvidia-driver"}


def role_profile(repo_root, tmp_path) -> str:
    """The Dataflow profile with a different accelerator per engine role."""
    profile = yaml.safe_load((repo_root / "jobs" / "runners" / "dataflow.yaml").read_text())
    profile["stage_accelerators"] = ACCELERATORS
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def engine_transforms(pipeline: beam.Pipeline) -> dict[str, tuple[str, dict]]:
    """Every applied ParDo whose DoFn starts an engine (it names an engine ``role``: the
    engine stages and IdentifyEnginesFn): label -> (role, resource hints as the runner API
    gives them to the runner)."""
    found: dict[str, str] = {}

    class Visitor(PipelineVisitor):
        def visit_transform(self, applied):
            fn = getattr(applied.transform, "fn", None)
            if isinstance(applied.transform, beam.ParDo) and getattr(fn, "role", ""):
                found[applied.full_label] = fn.role

    pipeline.visit(Visitor())
    proto = pipeline.to_runner_api()
    hints = {t.unique_name: dict(proto.components.environments[t.environment_id].resource_hints)
             if t.environment_id else {} for t in proto.components.transforms.values()}
    return {label: (role, hints[label]) for label, role in found.items()}


def assert_role_hints(transforms: dict[str, tuple[str, dict]]) -> None:
    for label, (role, hints) in transforms.items():
        assert set(hints.values()) & {a.encode() for a in ACCELERATORS.values()} == {
            ACCELERATORS[role].encode()}, (label, role, hints)


def test_every_engine_stage_of_run_declares_its_role_accelerator(repo_root, tmp_path):
    m = manifest_from_dict({
        "name": "placed",
        "source": {"kind": "jsonl", "path": str(repo_root / "jobs" / "data" / "arithmetic.jsonl")},
        "models": {"policy": {"kind": "vllm", "model": "/models/policy"},
                   "completer": {"kind": "vllm", "model": "/models/completer"},
                   "judge": {"kind": "vllm", "model": "/models/judge"}},
        "monte_carlo": {}, "omegaprm": {}, "judge": {},
        "runner": {"runner": "dataflow", "profile": role_profile(repo_root, tmp_path)},
    })
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, m, out_dir="gs://bucket/out")
    transforms = engine_transforms(pipeline)
    assert {label: role for label, (role, _) in transforms.items()} == {
        "Label/SampleSolutions": "policy", "Label/OmegaPRM": "completer",
        "Label/MonteCarlo": "completer", "Label/Judge": "judge",
        "Label/IdentifyEngines/Identify[policy]": "policy",
        "Label/IdentifyEngines/Identify[completer]": "completer",
        "Label/IdentifyEngines/Identify[judge]": "judge"}
    assert_role_hints(transforms)


def test_every_engine_stage_of_evaluate_declares_its_role_accelerator(repo_root, tmp_path):
    m = manifest_from_dict({
        "name": "placed-eval",
        "source": {"kind": "jsonl", "path": "unused.jsonl"},
        "models": {"policy": {"kind": "vllm", "model": "/models/policy"},
                   "judge": {"kind": "vllm", "model": "/models/judge"}},
        "monte_carlo": {}, "omegaprm": {}, "judge": {},
        "runner": {"runner": "dataflow", "profile": role_profile(repo_root, tmp_path)},
    })
    spec = make_spec(m, gold_files=[str(DATA / "processbench_small.json")],
                     annotators="mc,omegaprm,judge,consensus")
    pipeline = beam.Pipeline()
    build_evaluation_pipeline(pipeline, spec, out_dir="gs://bucket/out")
    transforms = engine_transforms(pipeline)
    assert {label: role for label, (role, _) in transforms.items()} == {
        "PredictFirstErrors/PredictWithCompleter": "completer",
        "PredictFirstErrors/PredictWithJudge": "judge"}
    assert_role_hints(transforms)


def test_engine_resources_without_accelerators_leave_the_transform_alone():
    pardo = beam.Map(lambda x: x)
    assert declare_engine_resources(pardo, role="judge", accelerators={}) is pardo
    assert engine_resource_hints("judge", {"policy": "type:nvidia-l4"}) == {}
    assert engine_resource_hints("judge", {"judge": "type:nvidia-l4"}) == {
        "accelerator": "type:nvidia-l4"}
    with pytest.raises(ValueError, match="engine role must be one of"):
        engine_resource_hints("reviewer", {})
