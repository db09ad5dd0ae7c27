import pytest

from steplabel.annotators.splitting import get_splitter
from steplabel.schemas.config import ConfigError, EngineConfig, SamplingConfig, from_mapping
from steplabel.schemas.manifest import load_manifest, manifest_from_dict

pytestmark = pytest.mark.unit

MINIMAL = {"name": "t", "source": {"kind": "jsonl", "path": "x.jsonl"}}


def test_sampling_error_names_field_and_value():
    with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\], got 1.5"):
        SamplingConfig(top_p=1.5)


def test_nested_error_names_path():
    data = {**MINIMAL, "models": {"policy": {"max_model_len": 8}}}
    with pytest.raises(ConfigError, match=r"models\.policy\.max_model_len must be >= 64, got 8"):
        manifest_from_dict(data)


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) monte_carlo\.rolouts"):
        manifest_from_dict({**MINIMAL, "monte_carlo": {"rolouts": 8}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) colour"):
        manifest_from_dict({**MINIMAL, "colour": "blue"})


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match=r"seed: .*must be an integer, got '7'"):
        manifest_from_dict({**MINIMAL, "seed": "7"})
    with pytest.raises(ConfigError, match=r"must be true or false, got 'yes'"):
        from_mapping(EngineConfig, {"enable_prefix_caching": "yes"})
    with pytest.raises(ConfigError, match=r"must be one of 'vllm', 'openai', 'custom'"):
        from_mapping(EngineConfig, {"kind": "tgi"})


def test_an_error_inside_an_optional_section_names_only_the_field():
    # An optional section (``judge: JudgeConfig | None``) reports the field, not the section.
    with pytest.raises(ConfigError) as raised:
        manifest_from_dict({**MINIMAL, "judge": {"votes": "three", "response_prefix": "x" * 200}})
    assert str(raised.value) == "judge.votes: must be an integer, got 'three'"
    with pytest.raises(ConfigError) as raised:
        manifest_from_dict({**MINIMAL, "models": {"judge": {"max_model_len": "big"}}})
    assert str(raised.value) == "models.judge.max_model_len: must be an integer, got 'big'"


def test_missing_required_and_stage_dependencies():
    with pytest.raises(ConfigError, match="missing required key"):
        manifest_from_dict({"name": "t"})
    with pytest.raises(ConfigError, match="consensus needs both monte_carlo and judge"):
        manifest_from_dict({**MINIMAL, "monte_carlo": {}, "consensus": {}})
    with pytest.raises(ConfigError, match="base_url is required"):
        from_mapping(EngineConfig, {"kind": "openai"})


def test_stage_presence_enables_it_and_hash_is_stable():
    manifest = manifest_from_dict({**MINIMAL, "monte_carlo": {}})
    assert manifest.monte_carlo is not None and manifest.monte_carlo.rollouts == 8
    assert manifest.omegaprm is None
    assert manifest.hash == manifest_from_dict({**MINIMAL, "monte_carlo": {}}).hash
    assert manifest.hash != manifest_from_dict({**MINIMAL, "monte_carlo": {"rollouts": 4}}).hash
    # How a job runs is not what it computes
    assert manifest.hash == manifest.with_runner(max_in_flight=3).hash


def test_demo_manifest_loads(repo_root):
    manifest = load_manifest(repo_root / "jobs" / "demo.yaml")
    assert manifest.consensus is not None
    assert manifest.source.path.endswith("addition.jsonl")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_manifest(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_manifest(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "name, text, steps",
    [
        ("paragraphs", "a\n\n b \n\n\n\nc", ["a", "b", "c"]),
        ("lines", "a\n\nb\n  \nc", ["a", "b", "c"]),
        ("step_markers", "Step 1: x\nmore\nStep 2: y\n\nstep 3) z", ["Step 1: x\nmore", "Step 2: y",
                                                                     "step 3) z"]),
        ("step_markers", "intro\nStep 1: x", ["intro\nStep 1: x"]),
        ("step_markers", "no markers", ["no markers"]),
        ("paragraphs", "   \n\n  ", []),
    ],
)
def test_splitters(name, text, steps):
    assert get_splitter(name).split(text) == steps


def test_splitter_provenance_and_unknown_name():
    assert '"name": "lines"' in get_splitter("lines").provenance()
    with pytest.raises(ValueError, match="splitter must be one of"):
        get_splitter("sentences")
