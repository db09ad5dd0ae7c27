"""The grader seam: chosen in the manifest, handed to every stage that grades, recorded in
provenance and the lock; and the layering rule that schemas/ imports nothing outside it."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from fakes import ScriptedEngine
from steplabel.annotators import graders, grading
from steplabel.annotators import stages as st
from steplabel.annotators.splitting import SPLITTERS
from steplabel.dataset import stats
from steplabel.pipelines.lock import annotator_settings
from steplabel.pipelines.sources import RawItem, validate_item
from steplabel.schemas import rows as R
from steplabel.schemas.config import ConfigError, to_mapping
from steplabel.schemas.graders import (
    GRADER_CONFIGS,
    GoldRejected,
    Grade,
    GraderConfig,
    MathGold,
    MathGraderConfig,
)
from steplabel.schemas.manifest import SPLITTER_NAMES, FieldMapping, manifest_from_dict
from steplabel.schemas.stages import Sampled, Solution, sampled_from_json, to_json

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
BASE = {"name": "g", "source": {"kind": "jsonl", "path": "unused.jsonl"},
        "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
        "policy": {"samples": 2, "response_prefix": ""}}


def test_default_grader_is_math_and_leaves_the_manifest_hash_alone():
    default = manifest_from_dict(BASE)
    explicit = manifest_from_dict({**BASE, "grader": {"name": "math"}})
    assert default.grader == explicit.grader == MathGraderConfig()
    grader = graders.get_grader(default.grader)
    assert isinstance(grader, graders.MathGrader)
    assert (grader.name, grader.version) == ("math", grading.GRADER_VERSION)
    # A job that does not choose a grader has the form and hash it had before the setting.
    assert "grader" not in default.to_dict()
    assert default.hash == explicit.hash
    assert graders.get_grader(None).name == "math"


@pytest.mark.parametrize("grader, message", [
    ({"name": "pyhton_tests"}, "grader.name must be one of math, python_tests, got 'pyhton_tests'"),
    ({"name": 3}, "grader.name must be one of math, python_tests, got 3"),
    ({"name": "math", "timeout_s": 5}, "unknown key(s) grader.timeout_s"),
    ("math", "grader: must be a mapping"),
])
def test_a_bad_grader_section_is_a_config_error_naming_the_field(grader, message):
    with pytest.raises(ConfigError) as info:
        manifest_from_dict({**BASE, "grader": grader})
    assert message in str(info.value)


def test_math_grader_reads_and_checks_the_gold():
    math = graders.get_grader()
    fields = FieldMapping()
    assert math.parse_gold({"answer": "#### 1,000"}, fields=fields,
                           answer_format="gsm8k") == MathGold("1,000")
    assert math.parse_gold({"answer": 7}, fields=fields, answer_format="plain") == MathGold("7")
    rejected = [math.parse_gold(r, fields=fields, answer_format="plain")
                for r in ({}, {"answer": "  "}, {"answer": [1]}, {"answer": "{" * 40 + "1"})]
    assert [r.reason for r in rejected] == ["missing_answer", "empty_answer", "bad_answer_type",
                                            "pathological_gold"]
    assert all(isinstance(r, GoldRejected) and r.error for r in rejected)
    assert math.grade("So the answer is 7.", MathGold("7")) == Grade(
        "correct", "numeric_equal", "7", "7")
    assert math.grade("So the answer is 7.", None).correct is None
    assert math.grade("So the answer is 8.", MathGold("7")).correct is False


# --------------------------------------------------------------------------------------------
# A grader registered from outside: the footprint of the next one


@dataclass(frozen=True)
class LastLineConfig(GraderConfig):
    name: Literal["last_line"] = "last_line"
    ignore_case: bool = False


@dataclass(frozen=True)
class LastLineGold:
    expected: str
    grader = "last_line"

    @property
    def text(self) -> str:
        return self.expected


class LastLineGrader:
    """Correct when the solution's last line is the record's ``expected`` field."""

    name = "last_line"
    version = "last-line-grader/1"

    def __init__(self, config: LastLineConfig) -> None:
        self.config = config
        self.graded: list[str] = []

    def parse_gold(self, record, *, fields, answer_format):
        expected = record.get("expected")
        if not isinstance(expected, str) or not expected:
            return GoldRejected("missing_expected", "field 'expected' is missing or empty")
        return LastLineGold(expected)

    def grade(self, solution, gold):
        self.graded.append(solution)
        if gold is None:
            return Grade("unknown", "gold_missing")
        last = solution.strip().splitlines()[-1] if solution.strip() else ""
        if self.config.ignore_case:
            last, expected = last.lower(), gold.expected.lower()
        else:
            expected = gold.expected
        return Grade("correct" if last == expected else "incorrect", "last_line", last,
                     gold.expected)


@pytest.fixture
def last_line(monkeypatch):
    from steplabel.schemas import graders as schema_graders

    monkeypatch.setitem(GRADER_CONFIGS, "last_line", LastLineConfig)
    monkeypatch.setitem(schema_graders.GOLD_TYPES, "last_line", LastLineGold)
    monkeypatch.setitem(graders.GRADERS, "last_line", LastLineGrader)
    return manifest_from_dict({**BASE, "grader": {"name": "last_line", "ignore_case": True},
                               "monte_carlo": {"rollouts": 2}, "omegaprm": {}})


def test_a_registered_grader_is_chosen_by_name_with_its_config(last_line):
    assert last_line.grader == LastLineConfig(ignore_case=True)
    assert last_line.to_dict()["grader"] == {"name": "last_line", "ignore_case": True}
    assert last_line.hash != manifest_from_dict(BASE).hash
    with pytest.raises(ConfigError, match="grader: unknown key"):
        manifest_from_dict({**BASE, "grader": {"name": "last_line", "timeout_s": 1}})


def test_validation_sampling_and_monte_carlo_grade_with_the_job_grader(last_line):
    ctx = st.StageContext(last_line)
    assert isinstance(ctx.grader, LastLineGrader)
    item = RawItem("s", 0, {"id": "p1", "question": "Say done.", "expected": "DONE"})
    problem, dead = validate_item(item, fields=last_line.source.fields, answer_format="plain",
                                  manifest_hash=last_line.hash, grader=ctx.grader)
    assert dead is None and problem.gold == LastLineGold("DONE")
    assert problem.gold_answer == "DONE"
    _, dead = validate_item(RawItem("s", 1, {"id": "p2", "question": "q"}),
                            fields=last_line.source.fields, answer_format="plain",
                            manifest_hash=last_line.hash, grader=ctx.grader)
    assert (dead["stage"], dead["reason"]) == ("validate", "missing_expected")
    assert set(dead) == set(R.schema_of(R.DeadLetter).names)

    def respond(request, index):
        return "Step 1: think\nStep 2: say it\n" + ("done" if index == 0 else "nope")

    engine = ScriptedEngine(respond)
    sampled = asyncio.run(st.sample_solutions(ctx, engine, problem))
    assert [s.final_answer_correct for s in sampled.solutions] == [True, False]
    assert [s.outcome_reason for s in sampled.solutions] == ["last_line", "last_line"]
    graded = len(ctx.grader.graded)
    prompt = ctx.solution_prompt(engine, problem.question)
    labels = asyncio.run(st.monte_carlo_labels(ctx, ctx.mc_annotator(engine), prompt,
                                               sampled.solutions[1]))
    assert labels.failure is None
    assert len(ctx.grader.graded) > graded  # the rollouts went through the job's grader
    # the job's grader, counted by outcome (graders.tallied)
    assert ctx.omegaprm_annotator(engine).grader is ctx.grade
    assert ctx.grade.__wrapped__ == ctx.grader.grade
    # The typed gold survives the stage's JSON checkpoint.
    assert sampled_from_json(to_json(sampled)) == sampled


def test_the_grader_name_and_version_go_into_provenance_and_the_lock(last_line):
    for manifest, name, version in ((manifest_from_dict(BASE), "math", grading.GRADER_VERSION),
                                    (last_line, "last_line", "last-line-grader/1")):
        ctx = st.StageContext(manifest)
        provenance = ctx.provenance({"policy": ("scripted", None, None)})
        assert provenance["grader_version"] == version
        versions = annotator_settings(ctx)["versions"]
        assert (versions["grader_name"], versions["grader"]) == (name, version)


# --------------------------------------------------------------------------------------------
# One source of record shapes


def test_the_gold_round_trips_with_its_grader():
    solution = Solution(problem_id="p", source="s", question="q", gold=MathGold("7"),
                        original="", index=0, solution="7", steps=["7"], policy_seed=1,
                        cost_policy=R.as_row(R.Cost()))
    sampled = Sampled(solutions=[solution], counters={"policy_samples": 1})
    data = to_json(sampled)
    assert data["solutions"][0]["gold"] == {"grader": "math", "answer": "7"}
    assert sampled_from_json(data) == sampled
    assert solution.gold_answer == "7" and solution.problem().gold == MathGold("7")


def test_annotator_columns_are_trajectory_columns():
    trajectory = {f.name: f.metadata["arrow"] for f in dataclasses.fields(R.Trajectory)}
    for record in (R.MonteCarloColumns, R.JudgeColumns):
        assert set(R.columns_of(record)) <= set(trajectory)
    assert not set(R.columns_of(R.MonteCarloColumns)) & set(R.columns_of(R.JudgeColumns))


def test_one_cost_record_and_one_dead_letter_constructor():
    assert R.COST_FIELDS == tuple(to_mapping(R.Cost()))
    assert stats.COST_FIELDS is R.COST_FIELDS
    assert set(R.COST_TOKEN_FIELDS) < set(R.COST_FIELDS)
    row = R.dead_letter(stage="label", reason="engine_error", error="boom", manifest_hash="h")
    assert list(row) == R.schema_of(R.DeadLetter).names
    assert row["problem_id"] is None


def test_splitter_names_are_the_splitters():
    assert sorted(SPLITTER_NAMES) == sorted(SPLITTERS)


def _project_imports(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found.update(f"{path.name}: {n}" for n in names if n.startswith("steplabel."))
    return found


def test_schemas_import_nothing_outside_schemas():
    assert {i for i in _project_imports("schemas")
            if not i.split(": ")[1].startswith("steplabel.schemas")} == set()


def test_annotators_import_neither_pipelines_nor_dataset():
    assert {i for i in _project_imports("annotators")
            if i.split(": ")[1].startswith(("steplabel.pipelines", "steplabel.dataset"))} == set()
