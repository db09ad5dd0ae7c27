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

from steplabel.schemas.config import ConfigError

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


#: Grader name -> its config type.
GRADER_CONFIGS: dict[str, type[GraderConfig]] = {"math": MathGraderConfig}


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


Gold = Union[MathGold]
#: Grader name -> the type of its gold.
GOLD_TYPES: dict[str, type] = {"math": MathGold}


def gold_to_json(gold: Gold) -> dict:
    """A gold as JSON (checkpoints): its fields and the grader it belongs to."""
    return {"grader": gold.grader, **dataclasses.asdict(gold)}


def gold_from_json(data: Mapping[str, Any]) -> Gold:
    values = dict(data)
    kind = values.pop("grader")
    return GOLD_TYPES[kind](**values)
