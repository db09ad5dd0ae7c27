"""Beam options for each runner: local (FnApiRunner, offline), portable (Beam's job service and
a worker pool on this machine), Dataflow, Flink.

A runner profile is a YAML mapping of Beam pipeline options (``jobs/runners/*.yaml``); the
manifest's ``runner.options`` and then command-line arguments override it. A profile's string
values may name environment variables, ``${NAME}`` or ``${NAME:-default}`` (the portable
profile reads the endpoints that ``scripts/portable_services.sh start`` prints).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from steplabel.annotators.registry import roles
from steplabel.schemas.config import ConfigError


def _as_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        if isinstance(value, bool):
            if value:
                args.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            args.extend(f"--{key}={item}" for item in value)
        elif value is not None:
            args.append(f"--{key}={value}")
    return args


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(value, *, where: str):
    """``${NAME}`` and ``${NAME:-default}`` in strings (also inside lists) replaced from the
    environment; an unset variable without a default is an error naming it."""
    if isinstance(value, list):
        return [expand_variables(item, where=where) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"runner.profile: {where} needs the environment variable {name}, "
                              "which is not set")
        return default

    return _VARIABLE.sub(replace, value)


def load_profile(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"runner.profile: file {path} does not exist")
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("options", {}), dict):
        raise ConfigError(f"runner.profile: {path} must be a mapping with an 'options' mapping")
    unknown = set(data) - {"runner", "description", "options", "stage_accelerators"}
    if unknown:
        raise ConfigError(f"runner.profile: unknown key(s) {', '.join(sorted(unknown))} in {path}")
    data["options"] = {key: expand_variables(value, where=f"option {key} in {path}")
                       for key, value in (data.get("options") or {}).items()}
    return data


@dataclass(frozen=True)
class RunnerSettings:
    """What a runner gives a job, its profile read once: ``args``, the Beam options as
    command-line arguments (the profile's, then the manifest's ``runner.options``); and
    ``accelerators``, per engine role the accelerator its stages declare
    (:func:`stage_accelerators`)."""

    args: list[str]
    accelerators: dict[str, str]


def runner_settings(runner) -> RunnerSettings:
    """The :class:`RunnerSettings` of ``runner`` (a RunnerConfig)."""
    if runner.runner == "local":
        args = [f"--direct_running_mode={runner.direct_running_mode}",
                f"--direct_num_workers={runner.direct_num_workers}"]
        return RunnerSettings(args + _as_args(runner.options), {})
    if not runner.profile:
        raise ConfigError(f"runner.profile is required for the {runner.runner} runner "
                          f"(see jobs/runners/{runner.runner}.yaml)")
    profile = load_profile(runner.profile)
    if profile.get("runner") not in (None, runner.runner):
        raise ConfigError(f"runner.profile {runner.profile} is for {profile['runner']}, "
                          f"not {runner.runner}")
    options = {**profile.get("options", {}), **runner.options}
    return RunnerSettings(_as_args(options), _accelerators(profile, runner.profile))


def runner_options(runner) -> list[str]:
    """Beam command-line style options for ``runner`` (a RunnerConfig)."""
    return runner_settings(runner).args


def pipeline_options(runner, extra_args: list[str] | None = None) -> PipelineOptions:
    """Beam options for ``runner`` (a RunnerConfig): a profile's options, then the manifest's,
    then command-line arguments (later wins)."""
    return PipelineOptions(runner_options(runner) + list(extra_args or []))


#: Engine roles a profile may place on their own accelerators (``stage_accelerators``).
ROLES = roles()


def stage_accelerators(runner) -> dict[str, str]:
    """Per engine role, the Beam ``accelerator`` resource hint its stages declare (a runner
    profile's ``stage_accelerators``, e.g. ``judge: "type:nvidia-a100-80gb;count:1;
    install-nvidia-driver"``). Dataflow gives steps with different hints their own worker pools
    (right fitting); runners without resource hints ignore them. Local runs: none."""
    if runner.runner == "local" or not runner.profile:
        return {}
    return _accelerators(load_profile(runner.profile), runner.profile)


def _accelerators(profile: dict, path: str) -> dict[str, str]:
    hints = profile.get("stage_accelerators") or {}
    if not isinstance(hints, dict):
        raise ConfigError(f"runner.profile: stage_accelerators in {path} must be a "
                          "mapping of role to accelerator")
    unknown = set(hints) - set(ROLES)
    if unknown:
        raise ConfigError(f"runner.profile: stage_accelerators in {path} names "
                          f"{', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")
    return {role: str(value) for role, value in hints.items()}


def engine_resource_hints(role: str, accelerators: Mapping[str, str]) -> dict[str, str]:
    """The Beam resource hints of a stage that starts the engine of ``role``: the accelerator
    ``accelerators`` (:func:`stage_accelerators`) names for the role, none when it names none."""
    if role not in ROLES:
        raise ValueError(f"engine role must be one of {', '.join(ROLES)}, got {role!r}")
    accelerator = accelerators.get(role)
    return {"accelerator": accelerator} if accelerator else {}


def declare_engine_resources(transform, *, role: str, accelerators: Mapping[str, str]):
    """``transform`` (a stage that starts the engine of ``role``) with the role's resource hints
    (:func:`engine_resource_hints`): every engine-starting stage of ``run`` and ``evaluate``
    declares its resources here, so that the runner places each on a worker pool that has the
    role's accelerator. Without hints, the transform as it is."""
    hints = engine_resource_hints(role, accelerators)
    return transform.with_resource_hints(**hints) if hints else transform
