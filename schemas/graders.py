"""What a grader is configured with, the gold it reads, and the grade it gives.

A grader decides whether a finished solution is right. The manifest picks one by name
(``grader: {name: math}``, the default); each grader has its own config type, its own typed
gold (what a problem carries for it to grade against) and gives a :class:`Grade`. The graders
themselves (the logic) are in :mod:`steplabel.annotators.graders`; this module holds only their
shapes, so that the manifest and the stage records can name them.

Adding a grader here: its config dataclass (a subclass of :class:`GraderConfig` with
``name: Literal["<name>"]``) in :data:`GRADER_CONFIGS`, its gold dataclass (``grader`` class
attribute, ``text`` property: what the ``gold_answer`` column shows) in :data:`GOLD_TYPES`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Union

from steplabel.schemas.config import ConfigError, check

Verdict = Literal["correct", "incorrect", "unknown"]
DEFAULT_GRADER = "math"


@dataclass(frozen=True)
class Grade:
    """A grader's verdict on one solution, always with a reason.

    ``unknown`` (a gold or an answer the grader cannot read, a timeout, a sandbox that could not
    run) is never coerced to ``incorrect``. ``predicted`` and ``gold`` are what was compared, as
    text, when the grader has them (math: the extracted answers)."""

    verdict: Verdict
    reason: str
    predicted: str | None = None
    gold: str | None = None

    @property
    def correct(self) -> bool | None:
        """True (correct), False (incorrect) or None (unknown)."""
        return None if self.verdict == "unknown" else self.verdict == "correct"

    @property
    def is_correct(self) -> bool:
        return self.verdict == "correct"


@dataclass(frozen=True)
class GoldRejected:
    """Why a record's gold cannot be graded against: a dead-letter ``reason`` (a named drop
    counter, e.g. ``unparseable_gold``) and the ``error`` that explains it."""

    reason: str
    error: str


# --------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class GraderConfig:
    """Which grader a job uses (``name``) and its settings (the subclass of that name).

    A mapping from a manifest becomes the config class its ``name`` picks
    (:meth:`config_variant`); an unknown name is a ConfigError naming ``grader.name``."""

    name: str = DEFAULT_GRADER
    #: What a job with this grader uses where its manifest names nothing: section -> keys
    #: (``splitter``, ``policy``, ``judge``; the judge's only when the judge is enabled).
    job_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def config_variant(cls, data: Mapping[str, Any], path: str) -> type:
        name = data.get("name", DEFAULT_GRADER)
        if not isinstance(name, str) or name not in GRADER_CONFIGS:
            raise ConfigError(f"{path}.name must be one of {', '.join(sorted(GRADER_CONFIGS))}, "
                              f"got {name!r}")
        return GRADER_CONFIGS[name]


@dataclass(frozen=True)
class MathGraderConfig(GraderConfig):
    """The final answer against a gold answer (``annotators/grading.py``): exact numbers, then
    math-verify. No settings yet."""

    name: Literal["math"] = "math"


@dataclass(frozen=True)
class PythonTestsGraderConfig(GraderConfig):
    """A solution's last ```` ```python ```` block run against the problem's tests in the
    sandbox (``annotators/python_tests.py``). ``timeout_s``: CPU seconds per run (a program past
    it is incorrect, ``timeout``); ``memory_mb``: address space per run (at least 64)."""

    name: Literal["python_tests"] = "python_tests"
    timeout_s: float = 5.0
    memory_mb: int = 512
    #: Code steps (``annotators/code_splitting.py`` says why top-level statements), a policy
    #: prompt that asks for reasoning then one program, the judge's code-review prompt.
    job_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "splitter": {"name": "python_statements"},
        "policy": {"template": "policy_code_v1", "response_prefix": ""},
        "judge": {"template_id": "judge_code_review_v1"},
    }

    def __post_init__(self) -> None:
        check(0 < self.timeout_s <= 600, "timeout_s", "must be in (0, 600] seconds",
              self.timeout_s)
        check(64 <= self.memory_mb <= 65536, "memory_mb",
              "must be in [64, 65536] (the interpreter itself needs about 64)", self.memory_mb)


#: Grader name -> its config type.
GRADER_CONFIGS: dict[str, type[GraderConfig]] = {"math": MathGraderConfig,
                                                  "python_tests": PythonTestsGraderConfig}


# --------------------------------------------------------------------------------------------
# Gold


@dataclass(frozen=True)
class MathGold:
    """The gold of the math grader: the answer, already extracted from the source's format."""

    answer: str
    grader: ClassVar[str] = "math"

    @property
    def text(self) -> str:
        """What the rows' ``gold_answer`` column holds."""
        return self.answer


@dataclass(frozen=True)
class PythonTestsGold:
    """The gold of the python_tests grader: test source whose asserts must pass, and the
    function they test (HumanEval's ``check(candidate)`` is called with it; None: the tests
    call the program's functions themselves, as MBPP's asserts do)."""

    tests: str
    entry_point: str | None = None
    grader: ClassVar[str] = "python_tests"

    @property
    def text(self) -> str:
        """What the rows' ``gold_answer`` column holds: the tests."""
        return self.tests


Gold = Union[MathGold, PythonTestsGold]
#: Grader name -> the type of its gold.
GOLD_TYPES: dict[str, type] = {"math": MathGold, "python_tests": PythonTestsGold}


def gold_to_json(gold: Gold) -> dict:
    """A gold as JSON (checkpoints): its fields and the grader it belongs to."""
    return {"grader": gold.grader, **dataclasses.asdict(gold)}


def gold_from_json(data: Mapping[str, Any]) -> Gold:
    values = dict(data)
    kind = values.pop("grader")
    return GOLD_TYPES[kind](**values)
