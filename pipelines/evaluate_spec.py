"""What ``steplabel evaluate`` evaluates: its manifest, the spec that pins the gold and answers
files by content hash (:class:`EvaluationSpec`), the files as the pipeline gets them, and the
names of its outputs. Shared by the job graph (:mod:`steplabel.pipelines.evaluate_graph`) and
the launcher (:mod:`steplabel.pipelines.evaluate`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steplabel.annotators.evaluation.gold import GoldFileError
from steplabel.annotators.evaluation.items import ANSWER_FORMAT_TESTS, ANSWER_FORMATS
from steplabel.annotators.evaluation.predict import EvaluationSettings, resolve_annotators
from steplabel.pipelines.gold_files import InputFile, is_file, sha256_file, source_name
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import JobManifest, manifest_from_dict, read_manifest_data

EVALUATION_VERSION = 1

#: The outputs, each a folder of Parquet shards.
PREDICTIONS = "predictions"
DEAD_LETTER = "dead_letter"
OUTPUTS = (PREDICTIONS, DEAD_LETTER)
#: Where the pipeline writes how many gold records it read (``{"items": N, "rejects": M}``).
GOLD_READ_FILE = "gold_read.json"

#: A manifest written only for evaluate may leave ``source`` out; this stands in for it.
_NO_SOURCE = {"kind": "jsonl", "path": "<steplabel evaluate --gold>", "name": "evaluate"}


def load_evaluation_manifest(path: str | Path) -> JobManifest:
    """A job manifest for evaluate: validated like ``run``'s, ``source`` optional."""
    data = read_manifest_data(path)
    if isinstance(data, dict) and "source" not in data:
        data = {**data, "source": dict(_NO_SOURCE)}
    return manifest_from_dict(data)


@dataclass(frozen=True)
class EvaluationSpec:
    """Everything that decides the predictions, hashed into :attr:`hash`.

    Gold and answers files are identified by source name and content hash (not by path), so a
    moved file still resumes and an edited one is refused. ``runner`` settings and the unused
    ``source`` are not part of the hash. The launcher reads the files only to hash them; the
    pipeline's workers read their records and check them against these hashes.
    """

    manifest: JobManifest
    annotators: tuple[str, ...]
    gold_files: dict[str, str]  # source name -> path
    answers_file: str | None = None
    answer_field: str = "answer"
    answer_format: str = "plain"
    omegaprm_final_answer: str = "grade"
    input_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"evaluate-{self.manifest.name}"

    def to_dict(self) -> dict[str, Any]:
        manifest = self.manifest.to_dict()
        manifest.pop("runner", None)
        manifest.pop("source", None)
        return {
            "evaluation_version": EVALUATION_VERSION,
            "manifest": manifest,
            "annotators": list(self.annotators),
            "gold_files": {name: self.input_hashes.get(path)
                           for name, path in sorted(self.gold_files.items())},
            "answers_file": self.input_hashes.get(self.answers_file)
            if self.answers_file else None,
            "answer_field": self.answer_field,
            "answer_format": self.answer_format,
            "omegaprm_final_answer": self.omegaprm_final_answer,
        }

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def gold_answer_reading(manifest: JobManifest, answer_field: str, answer_format: str
                        ) -> tuple[str, str]:
    """``(answer field, answer format)`` of the gold and answers records for ``manifest``'s
    grader. A ``python_tests`` job's gold is test source: the field defaults to ``tests``
    (``answer``, the math default, is taken to mean it) and the format is ``python_tests``; a
    math format named for such a job, or ``python_tests`` for a math job, is an error."""
    tests_job = manifest.grader.name == "python_tests"
    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"answer format must be one of {', '.join(ANSWER_FORMATS)}, "
                          f"got {answer_format!r}")
    if tests_job:
        if answer_format not in ("plain", ANSWER_FORMAT_TESTS):
            raise ConfigError(f"answer format {answer_format!r} reads a math answer, but the "
                              "manifest's grader is python_tests: its gold is the items' "
                              "tests (leave --answer-format out)")
        return ("tests" if answer_field == "answer" else answer_field), ANSWER_FORMAT_TESTS
    if answer_format == ANSWER_FORMAT_TESTS:
        raise ConfigError("answer format python_tests needs a manifest with "
                          "'grader: {name: python_tests}'")
    return answer_field, answer_format


def make_spec(manifest: JobManifest, *, gold_files: list[str], annotators: str | list[str],
              answers_file: str | None = None, answer_field: str = "answer",
              answer_format: str = "plain", omegaprm_final_answer: str = "grade"
              ) -> EvaluationSpec:
    """Validate the inputs and build the spec; errors name the bad value."""
    chosen = resolve_annotators(annotators)
    settings = EvaluationSettings.from_manifest(manifest,
                                                omegaprm_final_answer=omegaprm_final_answer)
    settings.check(chosen)
    answer_field, answer_format = gold_answer_reading(manifest, answer_field, answer_format)
    if not gold_files:
        raise ConfigError("at least one --gold file is required")
    named: dict[str, str] = {}
    for path in gold_files:
        name = source_name(path)
        if name in named:
            raise ConfigError(f"gold files {named[name]} and {path} have the same name "
                              f"{name!r}; sources are reported by file name, rename one")
        named[name] = path
    hashes = {}
    for path in [*gold_files, *([answers_file] if answers_file else [])]:
        if not is_file(path):
            raise GoldFileError(f"{path} does not exist or is not a file")
        hashes[path] = sha256_file(path)
    return EvaluationSpec(manifest=manifest, annotators=chosen, gold_files=named,
                          answers_file=answers_file, answer_field=answer_field,
                          answer_format=answer_format,
                          omegaprm_final_answer=omegaprm_final_answer, input_hashes=hashes)


def _input_path(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def gold_inputs(spec: EvaluationSpec) -> list[InputFile]:
    """The gold files the pipeline reads, in the spec's order (paths and hashes only)."""
    return [InputFile(_input_path(path), spec.input_hashes[path], name)
            for name, path in spec.gold_files.items()]


def answers_input(spec: EvaluationSpec) -> InputFile | None:
    if not spec.answers_file:
        return None
    return InputFile(_input_path(spec.answers_file), spec.input_hashes[spec.answers_file])
