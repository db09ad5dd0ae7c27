"""Property-based tests (hypothesis): splitters, answer extraction, the judge parser and the
manifest loader hold their contracts on arbitrary input, not only on the examples we thought of.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from steplabel.annotators.grading import extract_final_answer, grade, parse_gold
from steplabel.annotators.judge import PARSE_REASONS, JudgeParse, parse_judge_reply
from steplabel.annotators.splitting import SPLITTERS, get_splitter, normalize_newlines
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import JobManifest, load_manifest, manifest_from_dict

pytestmark = pytest.mark.unit

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text that looks like model output: words, numbers, LaTeX, step markers, blank lines.
_PIECES = ["Step 1:", "Step 2:", "step 3)", "\n", "\n\n", " ", "\t", "\r\n", "\r", "\\boxed{", "}",
           "{", "$", "####", "The answer is", ":", "-", "1", "10", "42", "x", "=", "+",
           "\\frac", ".", "answer", "is"]
model_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(_PIECES) | st.text(max_size=5), max_size=60).map("".join),
)


# --------------------------------------------------------------------------------------------
# Splitters


@FAST
@given(name=st.sampled_from(sorted(SPLITTERS)), text=model_text)
def test_steps_are_never_empty_and_come_from_the_text(name, text):
    steps = get_splitter(name).split(text)
    normalised = normalize_newlines(text)
    for step in steps:
        assert step and step == step.strip()
        assert step in normalised


@FAST
@given(name=st.sampled_from(sorted(SPLITTERS)), text=model_text)
@example(name="paragraphs", text="a\r\r\n\r\r\nb")  # found by hand: CRLF replaced only once
@example(name="step_markers", text="a\r\r\n\r\r\nb")
def test_splitting_is_idempotent(name, text):
    splitter = get_splitter(name)
    steps = splitter.split(text)
    assert splitter.split(splitter.join(steps)) == steps


_step_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                            blacklist_characters="\r"), min_size=1, max_size=40)


@FAST
@given(steps=st.lists(_step_text.map(str.strip).filter(bool)
                      .filter(lambda s: not re.search(r"\n[ \t]*\n", s)),
                      min_size=1, max_size=8))
def test_paragraphs_round_trip(steps):
    splitter = get_splitter("paragraphs")
    assert splitter.split(splitter.join(steps)) == steps
    for k in range(1, len(steps) + 1):  # every prefix the completer sees splits back
        assert splitter.split(splitter.join(steps[:k])) == steps[:k]


@FAST
@given(steps=st.lists(_step_text.filter(lambda s: "\n" not in s).map(str.strip).filter(bool),
                      min_size=1, max_size=8))
def test_lines_round_trip(steps):
    splitter = get_splitter("lines")
    assert splitter.split(splitter.join(steps)) == steps


@FAST
@given(bodies=st.lists(_step_text.filter(lambda s: "\n" not in s), min_size=1, max_size=8))
def test_step_markers_round_trip(bodies):
    splitter = get_splitter("step_markers")
    steps = [f"Step {k + 1}: {body}".strip() for k, body in enumerate(bodies)]
    assert splitter.split(splitter.join(steps)) == steps


# --------------------------------------------------------------------------------------------
# Answer extraction


@FAST
@given(text=model_text)
def test_extraction_never_raises_and_returns_a_piece_of_the_text(text):
    answer = extract_final_answer(text)
    if answer is not None:
        assert answer and answer == answer.strip()
        assert answer in text
    for fmt in ("plain", "gsm8k", "boxed"):
        gold = parse_gold(text, fmt)
        assert gold is None or (gold and gold in text)


integers = st.integers(min_value=-10**12, max_value=10**12)


@FAST
@given(a=integers, filler=st.text(alphabet="abc xyz,;", max_size=40))
def test_a_stated_integer_is_extracted_whole(a, filler):
    for text in (f"{filler}\nThe answer is: {a}", f"{filler} \\boxed{{{a}}}",
                 f"{filler}\n#### {a}", f"{filler} The final answer is ${a}$."):
        assert extract_final_answer(text) == str(a), text


@st.composite
def different_integers(draw):
    """Pairs (a, b), a != b, often with b's digits a substring of a's (1 vs 10, 3 vs 34)."""
    a = draw(st.integers(min_value=0, max_value=10**9))
    digits = str(a)
    if draw(st.booleans()) and len(digits) > 1:
        start = draw(st.integers(0, len(digits) - 1))
        end = draw(st.integers(start + 1, len(digits)))
        b = int(digits[start:end])
    else:
        b = draw(st.integers(min_value=0, max_value=10**9))
    assume(a != b)
    return a, b


@FAST
@given(pair=different_integers())
def test_no_substring_matches(pair):
    a, b = pair
    for completion in (f"The answer is: {a}", f"\\boxed{{{a}}}", f"#### {a}"):
        result = grade(completion, str(b))
        assert (result.verdict, result.reason) == ("incorrect", "numeric_differ"), completion
    assert grade(f"The answer is: {a}", str(a)).verdict == "correct"


@FAST
@given(a=integers, b=integers)
def test_the_last_box_wins(a, b):
    assert extract_final_answer(f"\\boxed{{{a}}} no, wait: \\boxed{{{b}}}") == str(b)


@FAST
@given(a=st.integers(min_value=0, max_value=10**6), b=st.integers(min_value=1, max_value=999))
def test_equal_numbers_in_other_spellings_are_correct(a, b):
    decimal = f"{a}.{b:03d}"
    thousands = f"{a:,}.{b:03d}"
    assert grade(f"The answer is: {thousands}", decimal).verdict == "correct"
    assert grade(f"\\boxed{{{decimal}0}}", thousands).verdict == "correct"


# --------------------------------------------------------------------------------------------
# Judge parser


_analysis = model_text.filter(lambda t: "\\boxed" not in t)


@FAST
@given(analysis=_analysis, before=model_text, after=model_text,
       num_steps=st.integers(min_value=1, max_value=12), data=st.data())
def test_injected_text_around_a_verdict_never_changes_it_to_another_index(
        analysis, before, after, num_steps, data):
    verdict = data.draw(st.integers(min_value=-1, max_value=num_steps - 1))
    clean = f"{analysis}\n\\boxed{{{verdict}}}"
    assert parse_judge_reply(clean, num_steps) == JudgeParse(verdict, "ok")
    parsed = parse_judge_reply(before + clean + after, num_steps)
    assert parsed.index in (verdict, None)
    assert parsed.reason in PARSE_REASONS


@FAST
@given(reply=st.one_of(st.none(), st.integers(), st.binary(max_size=20),
                       st.lists(st.text(max_size=5), max_size=3)),
       num_steps=st.integers(min_value=0, max_value=5))
def test_a_reply_that_is_not_text_is_unknown(reply, num_steps):
    assert parse_judge_reply(reply, num_steps) == JudgeParse(None, "empty_reply")


# --------------------------------------------------------------------------------------------
# Manifest loader

VALID = {
    "name": "p",
    "source": {"kind": "jsonl", "path": "problems.jsonl"},
    "models": {"policy": {"kind": "custom", "factory": "fakes:arithmetic_engine"}},
    "policy": {"samples": 2},
    "monte_carlo": {"rollouts": 2},
    "omegaprm": {"rollouts": 2},
    "judge": {},
    "consensus": {},
    "runner": {"num_shards": 2},
}

_FIELD_NAMES = ["name", "source", "kind", "path", "fields", "id", "question", "answer",
                "answer_format", "limit", "models", "policy", "completer", "judge", "model",
                "max_model_len", "base_url", "factory", "samples", "template", "template_id",
                "sampling", "temperature", "top_p", "max_tokens", "stop", "splitter",
                "monte_carlo", "rollouts", "omegaprm", "votes", "consensus", "runner",
                "num_shards", "max_in_flight", "options", "seed", "dataset", "revision"]

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["jsonl", "parquet", "hf", "vllm", "openai", "custom", "plain", "boxed",
                     "step_markers", "fakes:arithmetic_engine", "policy_steps_v1",
                     "judge_processbench_v1", "local", "-1", "0", "1e3"]),
)
yaml_keys = st.one_of(st.sampled_from(_FIELD_NAMES), st.text(max_size=8), st.integers(),
                      st.none(), st.booleans())
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(yaml_keys, children, max_size=5)),
    max_leaves=25,
)


def _mutate(data: dict, path: list, value):
    node = data
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value
    return data


@st.composite
def manifests(draw):
    """Valid manifests with a few values replaced, keys added or removed, anywhere."""
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.lists(st.sampled_from(_FIELD_NAMES), min_size=1, max_size=4))
        if draw(st.booleans()):
            _mutate(data, path, draw(yaml_values))
        elif path[0] in data and draw(st.booleans()):
            del data[path[0]]
    return data


def _check_loaded(data) -> None:
    try:
        manifest = manifest_from_dict(data)
    except ConfigError as exc:
        assert str(exc)  # the message names the field
        return
    assert isinstance(manifest, JobManifest)
    assert len(manifest.hash) == 64
    # What loads can be written out and loaded back to the same job.
    again = manifest_from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.hash == manifest.hash


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=manifests())
def test_mutated_manifests_load_or_raise_config_error(data):
    _check_loaded(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(yaml_values, st.dictionaries(yaml_keys, yaml_values, max_size=8)))
def test_arbitrary_yaml_values_load_or_raise_config_error(data):
    _check_loaded(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200),
                      st.lists(st.sampled_from(["name: p\n", "source:\n", "  kind: jsonl\n",
                                                "  path: x\n", "- ", "[", "]", "{", "}", ": ",
                                                "!!python/object:os.system ", "&a ", "*a ",
                                                "\t", "'", '"', "!!binary ", "? "]),
                               max_size=30).map("".join)))
def test_arbitrary_manifest_files_load_or_raise_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "job.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_manifest(path)
        except ConfigError:
            pass


def test_nan_and_infinity_are_rejected_where_a_range_is_checked():
    with pytest.raises(ConfigError, match="temperature"):
        manifest_from_dict(_mutate(json.loads(json.dumps(VALID)),
                                   ["policy", "sampling", "temperature"], math.nan))
