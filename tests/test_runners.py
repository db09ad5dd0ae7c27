"""Runner profiles: the pipeline is built with each profile's options up to submission."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PortableOptions,
    StandardOptions,
)

from steplabel.pipelines.job import build_pipeline, pipeline_options
from steplabel.pipelines.runners import runner_options
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
    options = pipeline_options(m)
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
