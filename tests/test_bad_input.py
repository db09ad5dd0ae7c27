"""A corpus of bad input through the whole job: every bad record becomes a dead-letter row with
its reason (or, for a manifest, a ConfigError naming the field), the good ones finish, and rows
in = problems out + filtered + dead letter (``accounting.assert_reconciled``) in every job.

Input rules these tests pin down (see ``pipelines/sources.py``):

- blank lines of a JSONL file are not records (not counted as rows in);
- numbers in ``id``/``question``/``answer`` are accepted as their text (``7`` -> ``"7"``);
  booleans, lists, objects and null are not;
- duplicate ids: identical copies are one problem (the first kept, the others ``duplicate_id``);
  copies that differ are all dead-lettered as ``conflicting_duplicate_id``;
- a lone surrogate (JSON ``"\\ud800"``) is not UTF-8 text: ``not_utf8``, like undecodable bytes;
- a prompt longer than the model's context is the engine's ``ContextLengthError``: the problem
  is dead-lettered at the ``label`` stage as ``prompt_too_long`` and the others finish.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from accounting import assert_reconciled, dead_reasons
from steplabel.dataset import storage
from steplabel.pipelines.cli import main as cli_main
from steplabel.pipelines.job import run_job
from steplabel.pipelines.sources import MAX_QUESTION_CHARS
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import load_manifest, manifest_from_dict

pytestmark = pytest.mark.pipeline

#: The arithmetic engine with a context window of ``max_model_len`` fake (whitespace) tokens.
ENGINE = {"kind": "custom", "factory": "fakes:arithmetic_engine_with_faults",
          "max_model_len": 400}


def good(i: int) -> bytes:
    return json.dumps({"id": f"p{i}", "question": f"What is {i} + {i + 2}?",
                       "answer": str(2 * i + 2)}).encode()


def line(**record) -> bytes:
    return json.dumps(record).encode()


#: (raw JSONL line, the dead-letter reason it must get at validation; None: it is labelled)
CORPUS: list[tuple[bytes, str | None]] = [
    *[(good(i), None) for i in range(5)],
    # malformed JSON and JSON that is not an object
    (b"{not json", "malformed_json"),
    (b'{"id": "t1", "question": "What is 1 + 1?", "answer": "2"', "malformed_json"),
    (b"null", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"[1, 2]", "not_an_object"),
    (b"42", "not_an_object"),
    # missing and empty fields
    (b"{}", "missing_question"),
    (line(id="m1", question="What is 1 + 1?"), "missing_answer"),
    (line(id="m2", question="What is 1 + 1?", answer=None), "missing_answer"),
    (line(question="What is 3 + 4?", answer="7"), "missing_id"),
    (line(id="e1", question="", answer="2"), "empty_question"),
    (line(id="e2", question="   \n\t", answer="2"), "empty_question"),
    (line(id="e3", question="What is 1 + 1?", answer=" "), "empty_answer"),
    (line(id="", question="What is 1 + 1?", answer="2"), "empty_id"),
    # wrong types
    (line(id="w1", question=["What is 1 + 1?"], answer="2"), "bad_question_type"),
    (line(id="w2", question={"text": "What is 1 + 1?"}, answer="2"), "bad_question_type"),
    (line(id="w3", question=True, answer="2"), "bad_question_type"),
    (line(id="w4", question="What is 1 + 1?", answer={"value": 2}), "bad_answer_type"),
    (line(id=["w5"], question="What is 1 + 1?", answer="2"), "bad_id_type"),
    (b'{"id": 7, "question": "What is 3 + 4?", "answer": 7}', None),  # numbers are text
    # bytes that are not UTF-8 text
    (b'\xff\xfe{"id": "u1", "question": "What is 1 + 1?", "answer": "2"}', "not_utf8"),
    (b'{"id": "u2", "question": "What is 1 + 1, caf\xe9?", "answer": "2"}', "not_utf8"),
    (b'{"id": "u3", "question": "What is 1 + 1? \\ud800", "answer": "2"}', "not_utf8"),
    (b'{"id": "u4", "question": "What is 1 + 1?", "answer": "2\\udfff"}', "not_utf8"),
    # duplicate ids: an identical copy of p0, a conflicting copy of p1, three copies of d1
    (good(0), "duplicate_id"),
    (line(id="p1", question="What is 9 + 9?", answer="18"), "conflicting_duplicate_id"),
    (line(id="d1", question="What is 20 + 22?", answer="42"), None),
    (line(id="d1", question="What is 20 + 22?", answer="42"), "duplicate_id"),
    (line(id="d1", question="What is 20 + 22?", answer="42"), "duplicate_id"),
    # unparseable and pathological gold answers
    (line(id="g1", question="What is 1 + 1?", answer="\\frac{"), "unparseable_gold"),
    (line(id="g2", question="What is 1 + 1?", answer="???"), "unparseable_gold"),
    (line(id="g3", question="What is 1 + 1?", answer="{" * 200 + "1" + "}" * 200),
     "pathological_gold"),
    (line(id="g4", question="What is 1 + 1?", answer="\\frac{1}{2}+" * 5000 + "1"),
     "pathological_gold"),
    # a question too long to send anywhere, and one too long for this model's context
    (line(id="q1", question="What is 1 + 1? " + "very " * (MAX_QUESTION_CHARS // 5),
          answer="2"), "question_too_long"),
    (line(id="c1", question="What is 5 + 6? " + "Think hard. " * 300, answer="11"), None),
]
# p1's own good line is dead-lettered too: its copies disagree, so neither is trusted.
CONFLICTING = {"p1"}
#: Labelled at the label stage as prompt_too_long (the engine's context is 400 fake tokens).
TOO_LONG_FOR_MODEL = {"c1"}


def write_corpus(path: Path, corpus, *, blank_lines: bool = True) -> int:
    """Write the corpus as JSONL (with blank lines, which are not records); rows in."""
    with open(path, "wb") as handle:
        for raw, _ in corpus:
            handle.write(raw + b"\n")
            if blank_lines:
                handle.write(b"   \n")
    return len(corpus)


def manifest_for(path: Path, **overrides):
    data = {
        "name": "bad-input",
        "seed": 5,
        "source": {"kind": "jsonl", "path": str(path)},
        "models": {"policy": ENGINE},
        "policy": {"samples": 2},
        "monte_carlo": {"rollouts": 2},
        "omegaprm": {"rollouts": 2, "prefilter_rollouts": 4, "search_limit": 1},
        "judge": {},
        "consensus": {},
        "runner": {"num_shards": 2},
    }
    data.update(overrides)
    return manifest_from_dict(data)


@pytest.fixture(scope="module")
def corpus_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-input")
    rows_in = write_corpus(base / "problems.jsonl", CORPUS)
    out = str(base / "out")
    result = run_job(manifest_for(base / "problems.jsonl"), out_dir=out)
    return result, out, rows_in


def test_every_bad_record_is_dead_lettered_with_its_reason(corpus_job):
    result, out, rows_in = corpus_job
    counted = assert_reconciled(result, out, rows_in=rows_in)
    expected = [reason for _, reason in CORPUS if reason is not None]
    expected += ["conflicting_duplicate_id"] * len(CONFLICTING)
    assert dead_reasons(counted, stage="validate") == sorted(expected)
    # The original record is kept, readable, for every dead letter: bytes that are not UTF-8
    # are kept with backslash escapes.
    originals = {row["original"] for row in counted["dead_rows"]}
    assert "{not json" in originals
    assert any("\\xff\\xfe" in original for original in originals)


def test_prompt_longer_than_the_context_is_dead_lettered_and_the_rest_finish(corpus_job):
    result, out, rows_in = corpus_job
    counted = assert_reconciled(result, out, rows_in=rows_in)
    label_dead = [row for row in counted["dead_rows"] if row["stage"] == "label"]
    assert [(row["problem_id"], row["reason"]) for row in label_dead] == [
        ("c1", "prompt_too_long")]
    assert "maximum context length is 400" in label_dead[0]["error"]
    assert result.stats["counters"]["dead_letter_prompt_too_long"] == 1
    assert counted["labelled"] | counted["filtered"] == {"p0", "p2", "p3", "p4", "d1", "7"}


def test_pipeline_counters_name_every_drop_reason(corpus_job):
    result, _, _ = corpus_job
    counters = result.stats["counters"]
    expected = {}
    for _, reason in CORPUS:
        if reason is not None:
            expected[reason] = expected.get(reason, 0) + 1
    expected["conflicting_duplicate_id"] += len(CONFLICTING)
    for reason, count in expected.items():
        assert counters[f"dead_letter_{reason}"] == count, reason


@pytest.mark.parametrize("answer_format, answers", [
    ("gsm8k", [("He has 3 + 4 = 7 apples.\n#### 7", None), ("7", "unparseable_gold"),
               ("#### ", "unparseable_gold")]),
    ("boxed", [("So the sum is $\\boxed{7}$.", None), ("7", "unparseable_gold"),
               ("\\boxed{7", "unparseable_gold"), ("\\boxed{}", "unparseable_gold")]),
])
def test_gold_answers_without_their_format_marker(tmp_path, answer_format, answers):
    corpus = [(line(id=f"a{i}", question="What is 3 + 4?", answer=answer), reason)
              for i, (answer, reason) in enumerate(answers)]
    rows_in = write_corpus(tmp_path / "p.jsonl", corpus, blank_lines=False)
    manifest = manifest_for(tmp_path / "p.jsonl", policy={"samples": 1}, monte_carlo=None,
                            omegaprm=None, judge=None, consensus=None,
                            source={"kind": "jsonl", "path": str(tmp_path / "p.jsonl"),
                                    "answer_format": answer_format})
    result = run_job(manifest, out_dir=str(tmp_path / "out"))
    counted = assert_reconciled(result, str(tmp_path / "out"), rows_in=rows_in)
    assert dead_reasons(counted) == sorted(r for _, r in corpus if r)
    assert counted["labelled"] == {"a0"}


def test_parquet_rows_with_wrong_types_and_nulls(tmp_path):
    # Two files, two schemas: the reader takes each row as it is and validation judges it.
    pq.write_table(pa.table({
        "id": ["a", "b", "c", None],
        "question": ["What is 1 + 2?", None, "   ", "What is 2 + 2?"],
        "answer": ["3", "5", "6", "4"],
    }), tmp_path / "part-1.parquet")
    pq.write_table(pa.table({
        "id": ["d", "e"],
        "question": [["What is 1 + 2?"], ["What is 4 + 4?"]],
        "answer": [3, 8],
    }), tmp_path / "part-2.parquet")
    manifest = manifest_for(tmp_path / "x", policy={"samples": 1}, monte_carlo=None,
                            omegaprm=None, judge=None, consensus=None,
                            source={"kind": "parquet", "path": str(tmp_path / "part-*.parquet")})
    result = run_job(manifest, out_dir=str(tmp_path / "out"))
    counted = assert_reconciled(result, str(tmp_path / "out"), rows_in=6)
    assert dead_reasons(counted) == sorted(["missing_question", "empty_question", "missing_id",
                                            "bad_question_type", "bad_question_type"])
    assert counted["labelled"] == {"a"}


# --------------------------------------------------------------------------------------------
# Manifests: wrong or unknown keys are a ConfigError naming the field (and the CLI says so)

MINIMAL = {"name": "m", "source": {"kind": "jsonl", "path": "p.jsonl"},
           "models": {"policy": ENGINE}}


def with_change(path: str, value) -> dict:
    """MINIMAL with ``value`` set at the dotted ``path`` (dicts created on the way)."""
    data = json.loads(json.dumps(MINIMAL))
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


BAD_MANIFESTS = [
    # (dotted path, value, text the error must contain)
    ("colour", "blue", "unknown key(s) colour"),
    ("source.fileds", {"id": "x"}, "unknown key(s) source.fileds"),
    ("monte_carlo.rolouts", 8, "unknown key(s) monte_carlo.rolouts"),
    ("models.policy.temprature", 0.5, "unknown key(s) models.policy.temprature"),
    ("runner.num_shards", "four", "runner.num_shards: must be an integer, got 'four'"),
    ("runner.num_shards", 0, "runner.num_shards must be >= 1, got 0"),
    ("source.kind", "csv", "source.kind: must be one of 'jsonl', 'parquet', 'hf', got 'csv'"),
    ("source.answer_format", "latex", "source.answer_format: must be one of"),
    ("source.path", None, "source.path is required for a jsonl source"),
    ("policy.sampling.top_p", 1.5, "policy.sampling.top_p must be in (0, 1], got 1.5"),
    ("policy.samples", 0, "policy.samples must be in [1, 1024], got 0"),
    ("policy.template", "nope", "policy.template prompt template must be one of"),
    ("judge.template_id", "../../README", "judge.template_id prompt template must be one of"),
    ("models.policy.kind", "tgi", "models.policy.kind: must be one of 'vllm', 'openai', 'custom'"),
    ("models.policy", {"kind": "openai"}, "models.policy.base_url is required"),
    ("models.policy.max_model_len", 8, "models.policy.max_model_len must be >= 64, got 8"),
    ("splitter.name", "sentences", "splitter.name must be one of"),
    ("consensus", {}, "consensus needs both monte_carlo and judge"),
    ("seed", "7", "seed: must be an integer, got '7'"),
    ("seed", True, "seed: must be an integer, got True"),
    ("monte_carlo", [8], "monte_carlo: must be a mapping, got list"),
    ("name", "", "name must be non-empty"),
]


@pytest.mark.parametrize("path, value, message", BAD_MANIFESTS,
                         ids=[f"{p}={v!r:.20}" for p, v, _ in BAD_MANIFESTS])
def test_bad_manifest_is_a_config_error_naming_the_field(tmp_path, path, value, message):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(with_change(path, value)))
    with pytest.raises(ConfigError) as caught:
        load_manifest(manifest)
    assert message in str(caught.value)


@pytest.mark.parametrize("content, message", [
    (b"", "a manifest must be a mapping, got NoneType"),
    (b"- name: m\n", "a manifest must be a mapping, got list"),
    (b"name: [unclosed\n", "not valid YAML"),
    (b"name: caf\xe9\n", "is not UTF-8"),
    (b"name: m\n" + b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"name: m\n", "missing required key(s): source"),
])
def test_unreadable_manifest_files(tmp_path, content, message):
    manifest = tmp_path / "job.yaml"
    manifest.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_manifest(manifest)
    assert message in str(caught.value)


def test_cli_reports_a_bad_manifest_and_exits_non_zero(tmp_path, capsys):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(with_change("monte_carlo.rolouts", 8)))
    status = cli_main(["run", str(manifest), "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err
    assert "steplabel: error:" in err and "monte_carlo.rolouts" in err
    assert not (tmp_path / "out").exists()  # nothing was started
