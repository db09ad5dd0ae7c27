"""A python_tests manifest: its config, the defaults it brings, the source layout, and math
manifests unchanged (same canonical form and hash as before layouts and code defaults)."""

import pytest

from steplabel.annotators.graders import get_grader
from steplabel.annotators.python_tests import PythonTestsGrader
from steplabel.schemas.config import ConfigError
from steplabel.schemas.graders import PythonTestsGraderConfig
from steplabel.schemas.manifest import manifest_from_dict

pytestmark = pytest.mark.unit

BASE = {"name": "c", "source": {"kind": "jsonl", "path": "unused.jsonl"}}
CODE = {**BASE, "grader": {"name": "python_tests", "timeout_s": 5, "memory_mb": 512}}


def test_python_tests_config_and_grader():
    manifest = manifest_from_dict(CODE)
    assert manifest.grader == PythonTestsGraderConfig(timeout_s=5.0, memory_mb=512)
    grader = get_grader(manifest.grader)
    assert isinstance(grader, PythonTestsGrader) and grader._pool is None  # lazily started
    assert (grader.limits.timeout_s, grader.limits.memory_mb) == (5.0, 512)
    assert manifest.to_dict()["grader"] == {"name": "python_tests", "timeout_s": 5.0,
                                            "memory_mb": 512}


@pytest.mark.parametrize("grader, message", [
    ({"name": "python_tests", "timeout_s": 0}, "grader.timeout_s must be in (0, 600]"),
    ({"name": "python_tests", "memory_mb": 32}, "grader.memory_mb must be in [64, 65536]"),
    ({"name": "python_tests", "answer": 1}, "unknown key(s) grader.answer"),
])
def test_bad_python_tests_settings_name_the_field(grader, message):
    with pytest.raises(ConfigError) as info:
        manifest_from_dict({**BASE, "grader": grader})
    assert message in str(info.value)


def test_code_defaults_fill_only_what_the_manifest_leaves_out():
    plain = manifest_from_dict({**CODE, "judge": {}})
    assert (plain.splitter.name, plain.policy.template, plain.policy.response_prefix,
            plain.judge.template_id) == ("python_statements", "policy_code_v1", "",
                                         "judge_code_review_v1")
    chosen = manifest_from_dict({**CODE, "splitter": {"name": "paragraphs"},
                                 "policy": {"template": "policy_boxed_v1"},
                                 "judge": {"template_id": "judge_processbench_v1"}})
    assert (chosen.splitter.name, chosen.policy.template, chosen.policy.response_prefix,
            chosen.judge.template_id) == ("paragraphs", "policy_boxed_v1", "",
                                          "judge_processbench_v1")
    assert manifest_from_dict(CODE).judge is None  # a judge left out stays off
    # the defaults are in the canonical form: naming them gives the same hash
    spelled = manifest_from_dict({**CODE, "splitter": {"name": "python_statements"},
                                  "policy": {"template": "policy_code_v1",
                                             "response_prefix": ""}})
    assert spelled.hash == manifest_from_dict(CODE).hash


def test_layout_needs_python_tests_and_plain_leaves_math_manifests_unchanged():
    with pytest.raises(ConfigError, match="source.layout"):
        manifest_from_dict({**BASE, "source": {**BASE["source"], "layout": "humaneval"}})
    math = manifest_from_dict(BASE)
    assert "layout" not in math.to_dict()["source"] and "grader" not in math.to_dict()
    assert math.splitter.name == "step_markers" and math.policy.template == "policy_steps_v1"
    laid_out = manifest_from_dict({**CODE, "source": {**BASE["source"], "layout": "mbpp"}})
    assert laid_out.to_dict()["source"]["layout"] == "mbpp"
    assert laid_out.hash != manifest_from_dict(CODE).hash
