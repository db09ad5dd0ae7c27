"""The annotator specs: what the stage graph, figures, show, inspect and plan iterate over."""

import pytest

from steplabel.annotators import registry
from steplabel.annotators.registry import ANNOTATORS, AnnotatorSpec, enabled, roles
from steplabel.dataset import plan, show, stats
from steplabel.pipelines.stages import ANNOTATOR_STAGES, LabelStages
from steplabel.schemas import rows as R
from steplabel.schemas.manifest import JobManifest, manifest_from_dict

pytestmark = pytest.mark.unit

TRAJECTORY_COLUMNS = set(R.Trajectory.__dataclass_fields__)


def manifest(**sections):
    return manifest_from_dict({"name": "m", "source": {"kind": "jsonl", "path": "p.jsonl"},
                               **sections})


def test_every_annotator_is_a_manifest_section_with_its_config_type():
    assert list(ANNOTATORS) == ["monte_carlo", "omegaprm", "judge", "critic"]  # stage order
    fields = JobManifest.__dataclass_fields__
    for name, spec in ANNOTATORS.items():
        assert spec.name == name and name in fields
        assert isinstance(spec.config_type(), spec.config_type)  # defaults are valid
        needs = {"critic": {"monte_carlo": {}, "judge": {}, "consensus": {}}}.get(name, {})
        assert spec.config(manifest(**needs, **{name: {}})) == spec.config_type()


def test_columns_are_trajectory_columns_and_belong_to_one_annotator():
    seen = set()
    for spec in ANNOTATORS.values():
        named = set(spec.columns) | {c for c in (spec.first_error_column, spec.cost_column) if c}
        named |= set(spec.truncation_columns)
        assert named <= TRAJECTORY_COLUMNS, named - TRAJECTORY_COLUMNS
        assert not set(spec.columns) & seen
        seen |= set(spec.columns)
        if spec.after_consensus:  # per solution, its own outputs (the critic)
            assert spec.per == "solution" and not spec.columns and spec.outputs
        elif spec.per == "solution":
            assert spec.first_error_column in spec.columns
            assert spec.cost_column in spec.columns
        else:
            assert not spec.columns and spec.outputs


def test_every_annotator_has_a_beam_stage_on_its_role():
    assert set(ANNOTATOR_STAGES) == set(ANNOTATORS)
    for name, fn in ANNOTATOR_STAGES.items():
        assert (fn.stage, fn.role) == (name, ANNOTATORS[name].role)
    assert roles() == ("policy", "completer", "judge", "critic")


def test_enabled_follows_the_manifest_in_stage_order():
    assert [s.name for s in enabled(manifest(judge={}, monte_carlo={}))] == ["monte_carlo",
                                                                            "judge"]
    assert enabled(manifest()) == []


def test_stages_that_read_labels_come_after_them():
    stages = LabelStages(manifest(monte_carlo={}, judge={}, consensus={}, critic={}),
                         out_dir="unused")
    # the critic reads the assembled trajectories: not a tag of the solutions' join
    assert [s.name for s in stages._specs("solution")] == ["judge", "monte_carlo"]
    assert stages._specs("problem") == []
    with_omega = LabelStages(manifest(omegaprm={}), out_dir="unused")
    assert [s.name for s in with_omega._specs("problem")] == ["omegaprm"]


def test_figures_plan_and_show_are_derived_from_the_specs():
    assert stats.COST_STAGES == ("policy", "mc", "judge")
    assert stats.TRUNCATION_STAGES == ("policy", "monte_carlo", "omegaprm", "judge", "critic")
    assert stats.TRUNCATION_SETTINGS["judge"] == ("judge", "judge.sampling.max_tokens")
    assert {"mc_first_error", "judge_first_error", "cost_mc", "cost_judge",
            "judge_finish_reasons", "mc_n_truncated"} <= set(stats.TRAJECTORY_COLUMNS)
    assert list(plan.STAGES) == ["policy", "monte_carlo", "omegaprm", "judge", "critic"]
    assert plan.ROW_COSTS == {"cost_policy": "policy", "cost_mc": "monte_carlo",
                              "cost_judge": "judge"}
    example = {"mc_first_error": 2, "omegaprm_first_error": None, "judge_first_error": 2}
    assert show.first_error_marks(example) == {2: ["MC", "judge"]}
    assert show.first_error_texts(example, str) == ["Monte Carlo 2", "judge 2"]


def test_truncation_hooks_count_samples_and_cut_offs():
    row = {"mc_n_total": [3, 2, 1], "mc_n_unknown": [1, 0, 0], "mc_n_truncated": [1, 0, 0],
           "judge_finish_reasons": ["stop", "length", "length"]}
    assert registry.MONTE_CARLO.truncation(row) == (6, 1)  # the last step is the solution
    assert registry.JUDGE.truncation(row) == (3, 2)
    assert registry.MONTE_CARLO.truncation({}) == (0, 0)


def test_a_new_annotator_is_one_spec():
    critic = AnnotatorSpec(name="critic", title="critic", mark="critic",
                           stage_label="Critic", role="critic", config_type=dict,
                           per="solution", version=lambda config: "critic/1",
                           truncated_what="critiques", cost_column="cost_critic")
    assert critic.cost_key == "critic"
    assert critic.max_tokens_setting == "critic.sampling.max_tokens"
    with pytest.raises(ValueError, match="per must be"):
        AnnotatorSpec(name="x", title="x", mark="x", stage_label="X", role="x",
                      config_type=dict, per="step", version=str, truncated_what="x")
    with pytest.raises(ValueError, match="after consensus"):
        AnnotatorSpec(name="x", title="x", mark="x", stage_label="X", role="x",
                      config_type=dict, per="problem", version=str, truncated_what="x",
                      outputs=("x",), after_consensus=True)
    with pytest.raises(ValueError, match="cost_column"):
        AnnotatorSpec(name="x", title="x", mark="x", stage_label="X", role="x",
                      config_type=dict, per="solution", version=str, truncated_what="x",
                      cost_column="x_cost")
