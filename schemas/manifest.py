"""The job manifest: YAML in, typed objects out.

Unknown keys are errors, not silently ignored; every bad value raises :class:`ConfigError` naming
the field path and the value. A stage is enabled by its presence: ``monte_carlo: {}`` runs Monte
Carlo with the defaults, leaving the key out skips it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from steplabel.schemas.annotators import (
    TRUST_CONSENSUS,
    TRUST_MONTE_CARLO,
    TRUST_OMEGAPRM,
    CriticConfig,
    JudgeConfig,
    MonteCarloConfig,
    OmegaPRMConfig,
)
from steplabel.schemas.config import (
    OMIT_DEFAULT,
    ConfigError,
    EngineConfig,
    SamplingConfig,
    check,
    from_mapping,
    to_mapping,
)
from steplabel.schemas.graders import GRADER_CONFIGS, GraderConfig, MathGraderConfig
from steplabel.schemas.templates import load_template

#: The splitters a manifest may name (``annotators/splitting.py`` implements each one).
SPLITTER_NAMES = ("lines", "paragraphs", "python_statements", "step_markers")


@dataclass(frozen=True)
class FieldMapping:
    """Which input fields hold the problem id, question and gold answer. ``id: null`` numbers
    the problems by their position in the source (``<source>-<index>``)."""

    id: str | None = "id"
    question: str = "question"
    answer: str = "answer"


@dataclass(frozen=True)
class SourceConfig:
    """Where problems come from.

    - ``jsonl`` / ``parquet``: ``path`` is a file or glob (local or any Beam filesystem);
    - ``hf``: ``path`` is a local ``datasets`` folder or data file(s) loaded with ``builder``
      (``json``/``parquet``/``csv``), or ``dataset`` is a hub id that must be pinned with
      ``revision`` (network needed).
    """

    kind: Literal["jsonl", "parquet", "hf"] = "jsonl"
    path: str | None = None
    dataset: str | None = None
    revision: str | None = None
    builder: str | None = None
    split: str = "train"
    name: str | None = None
    fields: FieldMapping = field(default_factory=FieldMapping)
    answer_format: Literal["plain", "gsm8k", "boxed"] = "plain"
    limit: int | None = None
    #: How records are laid out: ``plain`` (``fields`` name the id, question and gold),
    #: ``humaneval`` (``task_id``, ``prompt``, ``test``, ``entry_point``) or ``mbpp``
    #: (``task_id``, ``text``, ``test_list``), read directly for the ``python_tests`` grader.
    layout: Literal["plain", "humaneval", "mbpp"] = "plain"

    def __post_init__(self) -> None:
        if self.kind in ("jsonl", "parquet"):
            check(bool(self.path), "path", f"is required for a {self.kind} source", self.path)
        if self.kind == "hf":
            check(bool(self.path) != bool(self.dataset), "path",
                  "or dataset (exactly one) is required for an hf source", self.path)
            if self.dataset:
                check(bool(self.revision), "revision",
                      "must pin a hub dataset to a revision (commit or tag)", self.revision)
        if self.limit is not None:
            check(self.limit >= 1, "limit", "must be >= 1", self.limit)

    @property
    def source_name(self) -> str:
        if self.name:
            return self.name
        return Path(self.path or self.dataset or "source").stem


@dataclass(frozen=True)
class ModelsConfig:
    """The models of a job. ``completer`` and ``judge`` default to the policy's model (one
    engine is then shared); ``critic`` defaults to the judge's."""

    policy: EngineConfig = field(default_factory=EngineConfig)
    completer: EngineConfig | None = None
    judge: EngineConfig | None = None
    # Left out of the canonical form while unset: manifests without it keep their hash.
    critic: EngineConfig | None = field(default=None, metadata={OMIT_DEFAULT: True})

    @property
    def completer_model(self) -> EngineConfig:
        return self.completer or self.policy

    @property
    def judge_model(self) -> EngineConfig:
        return self.judge or self.policy

    @property
    def critic_model(self) -> EngineConfig:
        return self.critic or self.judge_model


@dataclass(frozen=True)
class PolicyConfig:
    """Sampling chain-of-thought solutions from the policy.

    ``response_prefix`` is written at the start of the assistant's reply (``"Step 1:"`` makes
    small models follow the step format); it is part of the solution text.
    """

    samples: int = 4
    template: str = "policy_steps_v1"
    response_prefix: str = "Step 1:"
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.8, max_tokens=256)
    )

    def __post_init__(self) -> None:
        check(1 <= self.samples <= 1024, "samples", "must be in [1, 1024]", self.samples)
        # Checked here, not first in a worker when the job is already running.
        try:
            load_template(self.template)
        except ValueError as exc:
            raise ConfigError(f"template {exc}") from None


@dataclass(frozen=True)
class SplitterConfig:
    name: str = "step_markers"

    def __post_init__(self) -> None:
        check(self.name in SPLITTER_NAMES, "name", f"must be one of {', '.join(SPLITTER_NAMES)}",
              self.name)


@dataclass(frozen=True)
class ConsensusConfig:
    """Keep trajectories whose Monte Carlo and judge first-error indices agree."""

    expected_keep_rate_min: float = 0.2
    expected_keep_rate_max: float = 0.8


@dataclass(frozen=True)
class RunnerConfig:
    """How the Beam job runs. ``local`` is Beam's FnApiRunner (offline); ``portable``,
    ``dataflow`` and ``flink`` take their options from a runner profile in ``jobs/runners/``."""

    runner: Literal["local", "portable", "dataflow", "flink"] = "local"
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"
    direct_num_workers: int = 1
    max_in_flight: int = 64
    num_shards: int = 4
    #: Local runner: problems per wave (``pipelines/waves.py``: memory bounded by a wave, not
    #: by the input); 0: one pipeline over the whole input. Other runners ignore it.
    wave_size: int = 1000
    profile: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.max_in_flight >= 1, "max_in_flight", "must be >= 1", self.max_in_flight)
        check(self.num_shards >= 1, "num_shards", "must be >= 1", self.num_shards)
        check(self.wave_size >= 0, "wave_size", "must be >= 0 (0: no waves)", self.wave_size)
        check(self.direct_num_workers >= 1, "direct_num_workers", "must be >= 1",
              self.direct_num_workers)


@dataclass(frozen=True)
class JobManifest:
    name: str
    source: SourceConfig
    seed: int = 0
    models: ModelsConfig = field(default_factory=ModelsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    splitter: SplitterConfig = field(default_factory=SplitterConfig)
    #: Which grader decides whether a finished solution is right (``grader: {name: math}``).
    grader: GraderConfig = field(default_factory=MathGraderConfig)
    monte_carlo: MonteCarloConfig | None = None
    omegaprm: OmegaPRMConfig | None = None
    judge: JudgeConfig | None = None
    consensus: ConsensusConfig | None = None
    #: Verified critiques (issue #25), after consensus; left out of the canonical form while
    #: unset, so that manifests without it keep their hash.
    critic: CriticConfig | None = field(default=None, metadata={OMIT_DEFAULT: True})
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    #: Columns whose values may differ between two runs of this manifest, as ``fnmatch``
    #: patterns over the column names ``regenerate --verify`` reports (``judge_replies``,
    #: ``judge_*``, ``cost_judge.*``): for an engine that cannot be deterministic (bf16, a
    #: remote server that ignores seeds). Verify accepts differences there and only there.
    #: Not in :attr:`hash`: it says how to compare the dataset, not what is computed.
    nondeterministic_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must be non-empty", self.name)
        for pattern in self.nondeterministic_columns:
            check(isinstance(pattern, str) and bool(pattern.strip()),
                  "nondeterministic_columns", "must hold non-empty column patterns", pattern)
        check(self.seed >= 0, "seed", "must be >= 0", self.seed)
        if self.consensus is not None:
            check(self.monte_carlo is not None and self.judge is not None, "consensus",
                  "needs both monte_carlo and judge enabled", "monte_carlo/judge missing")
        if self.source.layout != "plain":
            check(self.grader.name == "python_tests", "source.layout",
                  "humaneval and mbpp records carry tests: they need grader python_tests",
                  self.source.layout)
        if self.monte_carlo is not None and self.monte_carlo.consensus_guided:
            check(self.consensus is not None, "monte_carlo.consensus_guided",
                  "needs consensus (follows the judge's verdict)", True)
        if self.critic is not None:
            trusted_by = {TRUST_CONSENSUS: self.consensus, TRUST_MONTE_CARLO: self.monte_carlo,
                          TRUST_OMEGAPRM: self.omegaprm}[self.critic.trust]
            check(trusted_by is not None, "critic.trust",
                  f"needs the {self.critic.trust} section enabled (its labels are the trusted "
                  "ones)", self.critic.trust)
            if self.critic.trust == TRUST_OMEGAPRM:
                # The critic verifies OmegaPRM's searched rollouts paragraph by paragraph: their
                # pieces must be steps, not runs of tokens cut mid-sentence.
                check(self.omegaprm.step_unit == "steps", "omegaprm.step_unit",
                      "must be 'steps' under critic.trust: omegaprm (the critic verifies "
                      "OmegaPRM's searched rollouts step by step)", self.omegaprm.step_unit)

    def to_dict(self) -> dict[str, Any]:
        """The canonical mapping. The default grader is left out, so that a manifest that does
        not choose one has the same form, hash and lock as before the grader was a setting."""
        data = to_mapping(self)
        if data["grader"] == to_mapping(MathGraderConfig()):
            del data["grader"]
        if data["source"]["layout"] == "plain":  # likewise for the source's layout
            del data["source"]["layout"]
        return data

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON form: what the job computes, not how it runs."""
        data = self.to_dict()
        data.pop("runner", None)
        data.pop("nondeterministic_columns", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def with_runner(self, **changes: Any) -> "JobManifest":
        return replace(self, runner=replace(self.runner, **changes))


def read_manifest_data(path: str | Path) -> Any:
    """The YAML of a manifest file, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"manifest {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"manifest {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"manifest {path} is not UTF-8: {exc}") from None
    except RecursionError:
        raise ConfigError(f"manifest {path} is nested too deeply to be a manifest") from None


def load_manifest(path: str | Path) -> JobManifest:
    """Read and validate a manifest file; relative source paths resolve against its folder."""
    path = Path(path)
    data = read_manifest_data(path)
    manifest = manifest_from_dict(data)
    source = manifest.source
    if source.path and "://" not in source.path and not Path(source.path).is_absolute():
        manifest = replace(
            manifest, source=replace(source, path=str((path.parent / source.path).resolve()))
        )
    return manifest


def manifest_from_dict(data: Any) -> JobManifest:
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: a manifest must be a mapping, got {type(data).__name__}")
    return from_mapping(JobManifest, with_grader_defaults(data))


def with_grader_defaults(data: dict) -> dict:
    """``data`` with its grader's :attr:`~steplabel.schemas.graders.GraderConfig.job_defaults`
    filled in where the manifest names nothing (a python_tests job splits at statements unless
    it names a splitter). Done on the mapping, so the canonical form and the hash hold them."""
    grader = data.get("grader")
    if not isinstance(grader, dict) or grader.get("name") not in GRADER_CONFIGS:
        return data
    data = dict(data)
    for section, defaults in GRADER_CONFIGS[grader["name"]].job_defaults.items():
        current = data.get(section, {} if section != "judge" else None)
        if isinstance(current, dict):  # a disabled stage (missing, null) stays disabled
            data[section] = {**defaults, **current}
    return data
