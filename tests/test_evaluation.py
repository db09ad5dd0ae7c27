"""Evaluation against human first-error labels: formats, answer joining, prediction, metrics."""

import asyncio
import dataclasses
import json
import re
from pathlib import Path

import pytest

from fakes import ScriptedEngine, arithmetic_engine
from steplabel.annotators.evaluation.answers import AnswerTable, answer_table, join_gold_answers
from steplabel.annotators.evaluation.gold import GoldFileError, parse_gold_record, parse_gold_text
from steplabel.annotators.evaluation.items import GoldItem, GoldReject, label_from_ratings
from steplabel.annotators.evaluation.metrics import (
    average_scores,
    first_error_scores,
    harmonic_f1,
    predicted_negatives,
    step_negative_scores,
)
from steplabel.annotators.evaluation.predict import (
    Engines,
    EvaluationSettings,
    predict_first_errors,
    resolve_annotators,
)
from steplabel.annotators.evaluation.report import build_report, render_report_markdown
from steplabel.annotators.judge import JudgeConfig
from steplabel.annotators.monte_carlo import MonteCarloConfig
from steplabel.annotators.omegaprm import OmegaPRMConfig
from steplabel.pipelines.gold_files import load_answers_file, load_gold_file
from steplabel.schemas.config import ConfigError

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------------------------------
# Metrics: a hand-computed example


# Source A: 3 erroneous items (labels 2, 0, 1), 2 correct ones.
#   predictions 2 (hit), 1 (miss), 1 (hit)  -> error_acc   = 2/3 = 66.67
#   predictions -1 (hit), None (unknown)    -> correct_acc = 1/2 = 50.00
#   F1 = 2 * 66.67 * 50 / (66.67 + 50) = 400/7 = 57.14
SOURCE_A = [(2, 2), (0, 1), (-1, -1), (-1, None), (1, 1)]
# Source B: no erroneous items -> error_acc None, F1 None.
SOURCE_B = [(-1, -1), (-1, 0)]
# Source C: no correct items -> correct_acc None, F1 None.
SOURCE_C = [(0, 0), (1, 0)]
# Source D: both accuracies 0 -> F1 0 (not a division by zero).
SOURCE_D = [(1, 0), (-1, 0)]


def test_scores_match_hand_computed_example():
    s = first_error_scores(SOURCE_A)
    assert (s.n_items, s.n_error, s.n_correct) == (5, 3, 2)
    assert (s.error_hits, s.correct_hits, s.n_unknown) == (2, 1, 1)
    assert s.error_acc == pytest.approx(200 / 3)
    assert s.correct_acc == pytest.approx(50.0)
    assert s.f1 == pytest.approx(400 / 7)
    assert s.coverage == pytest.approx(80.0)  # 4 of 5 known
    assert s.known_acc == pytest.approx(75.0)  # 3 of the 4 known are exact


def test_no_erroneous_items():
    s = first_error_scores(SOURCE_B)
    assert (s.n_error, s.n_correct) == (0, 2)
    assert s.error_acc is None
    assert s.correct_acc == pytest.approx(50.0)
    assert s.f1 is None


def test_no_correct_items():
    s = first_error_scores(SOURCE_C)
    assert (s.n_error, s.n_correct) == (2, 0)
    assert s.error_acc == pytest.approx(50.0)
    assert s.correct_acc is None
    assert s.f1 is None


def test_both_accuracies_zero_give_f1_zero():
    s = first_error_scores(SOURCE_D)
    assert s.error_acc == 0.0 and s.correct_acc == 0.0 and s.f1 == 0.0


def test_no_items_at_all():
    s = first_error_scores([])
    assert s.n_items == 0
    assert s.error_acc is s.correct_acc is s.f1 is s.coverage is s.known_acc is None


def test_harmonic_f1():
    assert harmonic_f1(60.0, 40.0) == pytest.approx(48.0)
    assert harmonic_f1(None, 40.0) is None
    assert harmonic_f1(40.0, None) is None
    assert harmonic_f1(0.0, 0.0) == 0.0


def test_average_over_sources_skips_none():
    average = average_scores([first_error_scores(p) for p in (SOURCE_A, SOURCE_B, SOURCE_C)])
    assert average["error_acc"] == pytest.approx((200 / 3 + 50) / 2)  # A and C
    assert average["correct_acc"] == pytest.approx((50 + 50) / 2)  # A and B
    assert average["f1"] == pytest.approx(400 / 7)  # only A has an F1
    assert (average["sources_error_acc"], average["sources_correct_acc"],
            average["sources_f1"]) == (2, 2, 1)
    nothing = average_scores([first_error_scores(SOURCE_B), first_error_scores(SOURCE_C)])
    assert nothing["f1"] is None and nothing["sources_f1"] == 0


def test_labels_are_checked():
    with pytest.raises(ValueError, match="label"):
        first_error_scores([(-2, -1)])


def test_predicted_negatives():
    assert predicted_negatives(-1, 3) == [False, False, False]
    assert predicted_negatives(1, 4) == [False, True, None, None]
    assert predicted_negatives(None, 2) == [None, None]
    with pytest.raises(ValueError):
        predicted_negatives(3, 3)


def test_step_scores_hand_computed():
    pairs = [
        # gold negative at 1; predicted first error 1 -> steps 0 (tn), 1 (tp); 2 unlabelled
        ([1, -1, None], 1),
        # gold all fine (0 counts as not negative); predicted error at 0 -> 1 fp
        ([0, 1, 1], 0),
        # gold negative at 2; predicted -1 -> 3 steps compared, 1 fn
        ([1, 0, -1], -1),
        # unknown prediction: nothing compared
        ([-1, None], None),
    ]
    s = step_negative_scores(pairs)
    assert s.steps_compared == 2 + 1 + 3
    assert (s.true_negatives_found, s.false_alarms, s.missed_negatives) == (1, 1, 1)
    assert s.precision == pytest.approx(50.0)
    assert s.recall == pytest.approx(50.0)
    empty = step_negative_scores([([1, 1], -1)])
    assert empty.precision is None and empty.recall is None and empty.steps_compared == 2


# --------------------------------------------------------------------------------------------
# Reading both formats


def test_processbench_fixture():
    items, rejects = load_gold_file(DATA / "processbench_small.json")
    assert [i.item_id for i in items] == ["pb-1", "pb-2", "pb-3", "pb-4", "pb-5"]
    first = items[0]
    assert first.problem_id == "processbench_small/pb-1"
    assert first.source == "processbench_small"
    assert first.gold_format == "processbench" and first.splitter_name == "paragraphs"
    assert first.steps == ("We add 2 and 3.", "2 + 3 = 5.", "The answer is: 5")
    assert first.label == -1 and first.final_answer_correct is True
    assert first.gold_answer == "5" and first.gold_status == "ok"
    assert first.answer_origin == "gold_file" and first.ratings is None
    assert [i.label for i in items] == [-1, 1, -1, 0, 0]
    assert [i.gold_status for i in items] == ["ok", "ok", "missing", "missing", "missing"]
    assert [(r.reason, r.item_id) for r in rejects] == [("bad_label", "pb-6")]
    assert json.loads(rejects[0].original)["id"] == "pb-6"


def test_step_ratings_fixture():
    items, rejects = load_gold_file(DATA / "step_ratings_small.jsonl")
    by_id = {i.item_id: i for i in items}
    assert sorted(by_id) == ["sr-1", "sr-2", "sr-3"]
    assert by_id["sr-1"].ratings == (1, 0, 1) and by_id["sr-1"].label == -1  # 0 is not negative
    assert by_id["sr-2"].ratings == (1, -1, None) and by_id["sr-2"].label == 1
    assert by_id["sr-3"].label == 0
    assert all(i.gold_format == "step_ratings" and i.splitter_name == "lines" for i in items)
    assert sorted(r.reason for r in rejects) == [
        "label_ratings_conflict", "malformed_json", "unrated_step_before_error"]
    malformed = next(r for r in rejects if r.reason == "malformed_json")
    assert malformed.original.startswith('{"id": "sr-4"')


def test_label_from_ratings():
    assert label_from_ratings([1, 0, 1]) == -1
    assert label_from_ratings([1, 0, -1, -1]) == 2
    assert label_from_ratings([-1, None]) == 0


@pytest.mark.parametrize("record, reason", [
    ([1, 2], "not_an_object"),
    ({"problem": "p", "steps": ["a"], "label": -1}, "missing_id"),
    ({"id": True, "problem": "p", "steps": ["a"], "label": -1}, "bad_id_type"),
    ({"id": "x", "steps": ["a"], "label": -1}, "missing_problem"),
    ({"id": "x", "problem": "  ", "steps": ["a"], "label": -1}, "empty_problem"),
    ({"id": "x", "problem": "p", "label": -1}, "missing_steps"),
    ({"id": "x", "problem": "p", "steps": "a\n\nb", "label": -1}, "bad_steps"),
    ({"id": "x", "problem": "p", "steps": [], "label": -1}, "empty_steps"),
    ({"id": "x", "problem": "p", "steps": ["a", " "], "label": -1}, "empty_step"),
    ({"id": "x", "problem": "p", "steps": ["a"]}, "missing_label"),
    ({"id": "x", "problem": "p", "steps": ["a"], "label": 1}, "bad_label"),
    ({"id": "x", "problem": "p", "steps": ["a"], "label": True}, "bad_label"),
    ({"id": "x", "problem": "p", "steps": ["a"], "ratings": [2]}, "bad_ratings"),
    ({"id": "x", "problem": "p", "steps": ["a", "b"], "ratings": [1]}, "bad_ratings"),
    ({"id": "x", "problem": "p", "steps": ["a", "b"], "ratings": [None, -1]},
     "unrated_step_before_error"),
    ({"id": "x", "problem": "p", "steps": ["a"], "ratings": [-1], "label": -1},
     "label_ratings_conflict"),
    ({"id": "x", "problem": "p", "steps": ["a"], "label": 0, "final_answer_correct": "yes"},
     "bad_final_answer_correct"),
])
def test_bad_records_are_rejected_with_reason(record, reason):
    parsed = parse_gold_record(record, source="s", position=0)
    assert isinstance(parsed, GoldReject)
    assert parsed.reason == reason
    assert parsed.error.startswith("record 0:")


def test_both_label_and_ratings_when_they_agree():
    parsed = parse_gold_record({"id": 7, "problem": "p", "steps": ["a", "b"],
                                "ratings": [0, -1], "label": 1}, source="s", position=0)
    assert isinstance(parsed, GoldItem)
    assert parsed.item_id == "7" and parsed.label == 1 and parsed.gold_format == "step_ratings"


def test_answer_formats_and_unparseable_answers():
    record = {"id": "x", "problem": "p", "steps": ["a"], "label": -1,
              "solution": "so 3 + 4 = 7\n#### 7"}
    parsed = parse_gold_record(record, source="s", position=0, answer_field="solution",
                               answer_format="gsm8k")
    assert parsed.gold_answer == "7" and parsed.gold_status == "ok"
    parsed = parse_gold_record({**record, "solution": "no marker"}, source="s", position=0,
                               answer_field="solution", answer_format="gsm8k")
    assert parsed.gold_answer is None and parsed.gold_status == "unparseable_answer"
    numeric = parse_gold_record({"id": "x", "problem": "p", "steps": ["a"], "label": -1,
                                 "answer": 12}, source="s", position=0)
    assert numeric.gold_answer == "12"


def test_duplicate_ids():
    same = {"id": "d", "problem": "p", "steps": ["a"], "label": -1}
    text = json.dumps([same, same, {"id": "e", "problem": "p", "steps": ["a"], "label": -1},
                       {"id": "e", "problem": "q", "steps": ["a"], "label": -1}])
    items, rejects = parse_gold_text(text, source="s")
    assert [i.item_id for i in items] == ["d"]
    assert sorted((r.reason, r.item_id) for r in rejects) == [
        ("conflicting_duplicate_id", "e"), ("conflicting_duplicate_id", "e"),
        ("duplicate_id", "d")]


def test_jsonl_and_json_list_read_alike():
    records = [{"id": "a", "problem": "p", "steps": ["x", "y"], "label": 1},
               {"id": "b", "problem": "q", "steps": ["z"], "ratings": [1]}]
    from_list, _ = parse_gold_text(json.dumps(records), source="s")
    from_lines, _ = parse_gold_text("\n".join(json.dumps(r) for r in records) + "\n\n",
                                    source="s")
    assert from_list == from_lines


def test_unreadable_files_raise(tmp_path):
    with pytest.raises(GoldFileError, match="does not exist"):
        load_gold_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,')
    with pytest.raises(GoldFileError, match="not valid JSON"):
        load_gold_file(broken)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(GoldFileError, match="not UTF-8"):
        load_gold_file(latin)


# --------------------------------------------------------------------------------------------
# The PRM800K release files (layout of the openai/prm800k README)


def test_prm800k_phase2_release_file():
    items, rejects = load_gold_file(DATA / "prm800k_phase2_small.jsonl")
    by_id = {i.item_id: i for i in items}
    assert sorted(by_id) == ["prm800k-0", "prm800k-1", "prm800k-2", "prm800k-5"]
    first = by_id["prm800k-0"]
    assert first.problem_id == "prm800k_phase2_small/prm800k-0"
    assert first.gold_format == "prm800k" and first.splitter_name == "lines"
    assert first.problem == "What is 4 + 4?"
    assert (first.gold_answer, first.gold_status, first.answer_origin) == ("8", "ok",
                                                                           "gold_file")
    # The error step's alternatives are not used; the whole pre-generated solution follows.
    assert first.steps == ("I need to add 4 and 4.", "4 + 4 = 9.",
                           "So the sum is 9.\n\n# Answer\n\n9")
    assert first.ratings == (0, -1, None) and first.label == 1  # 0 (neutral) is not negative
    assert first.final_answer_correct is None and first.generator == "prm800k-phase2"
    solved = by_id["prm800k-1"]
    assert (solved.label, solved.ratings, solved.final_answer_correct) == (-1, (0, 1, 1), True)
    assert (by_id["prm800k-2"].label, by_id["prm800k-2"].ratings) == (0, (-1, None))
    quality_control = by_id["prm800k-5"]  # kept like any other record
    assert (quality_control.label, quality_control.ratings) == (2, (1, 0, -1))
    assert sorted((r.item_id, r.reason) for r in rejects) == [
        ("prm800k-3", "gave_up_before_error"), ("prm800k-4", "bad_problem"),
        ("prm800k-6", "unrated_step_before_error")]
    assert all(json.loads(r.original)["label"]["finish_reason"] for r in rejects)


def test_prm800k_phase1_release_file():
    items, rejects = load_gold_file(DATA / "prm800k_phase1_small.jsonl")
    by_id = {i.item_id: i for i in items}
    human = by_id["prm800k-0"]
    # Both completions of step 1 are rated -1; the labeler's own step (+1) is on the
    # trajectory instead, so the solution as rebuilt has no error.
    assert human.steps == ("I add 7 and 5.", "7 + 5 = 12.",
                           "So the sum is 12.\n\n# Answer\n\n12")
    assert (human.ratings, human.label, human.final_answer_correct) == ((1, 1, 1), -1, True)
    assert human.generator == "prm800k-phase1"
    chosen = by_id["prm800k-1"]  # the trajectory goes on with the chosen alternative
    assert chosen.steps[1] == "8 + 6 = 14." and chosen.ratings == (0, 1, -1)
    assert chosen.label == 2
    gave_up = by_id["prm800k-2"]  # a human step given as an object; an error before give_up
    assert gave_up.steps[0] == "2 + 9 = 11." and gave_up.ratings == (1, -1, 0)
    assert gave_up.label == 1
    assert [(r.item_id, r.reason) for r in rejects] == [("prm800k-3", "bad_steps")]
    assert "chosen_completion" in rejects[0].error


def _prm(steps, finish="found_error", **question):
    return {"question": {"problem": "What is 1 + 2?", "ground_truth_answer": "3", **question},
            "label": {"steps": steps, "finish_reason": finish}}


def _step(*completions, chosen=0, human=None):
    return {"completions": [{"text": t, "rating": r, "flagged": None} for t, r in completions],
            "chosen_completion": chosen, "human_completion": human}


@pytest.mark.parametrize("record, reason", [
    ({"question": "What is 1 + 2?", "label": {"steps": []}}, "missing_question"),
    ({"question": {"problem": "p"}, "label": 3}, "missing_label"),
    (_prm([_step(("a", 1))]) | {"question": {"ground_truth_answer": "3"}}, "missing_problem"),
    (_prm([_step(("a", 1))], problem="  "), "empty_problem"),
    (_prm([_step(("a", 1))], finish="done"), "bad_finish_reason"),
    (_prm([_step(("a", 1))], finish=None), "bad_finish_reason"),
    (_prm("a\nb"), "bad_steps"),
    (_prm([]), "empty_steps"),
    (_prm([_step(("a", 2))]), "bad_steps"),
    (_prm([_step(("a", 1), chosen=True)]), "bad_steps"),
    (_prm([{"completions": [{"rating": 1}], "chosen_completion": 0}]), "bad_steps"),
    (_prm([_step(("a", 1), chosen=None), _step(("b", -1))]), "unchosen_step_before_end"),
    (_prm([_step(("a", 1)), _step(("b", 0))]), "found_error_without_negative"),
    (_prm([_step(("a", 1)), _step(("  ", -1))]), "empty_step"),
    (_prm([_step(("a", 1), chosen=None, human=7)], finish="solution"), "bad_steps"),
])
def test_bad_prm800k_records_are_rejected_with_reason(record, reason):
    parsed = parse_gold_record(record, source="s", position=4)
    assert isinstance(parsed, GoldReject)
    assert (parsed.reason, parsed.item_id) == (reason, "prm800k-4")


def test_prm800k_pre_generated_steps_follow_only_a_matching_trajectory():
    # The labelled steps are not a prefix of the pre-generated solution: the trajectory as
    # labelled is the solution.
    record = _prm([_step(("x", 1)), _step(("y", -1), chosen=None)],
                  pre_generated_steps=["other", "y", "z"])
    item = parse_gold_record(record, source="s", position=0)
    assert (item.steps, item.ratings, item.label) == (("x", "y"), (1, -1), 1)
    matching = _prm([_step(("x", 1)), _step(("w", 1), ("y", -1), chosen=None)],
                    pre_generated_steps=["x", "y", "z"])
    item = parse_gold_record(matching, source="s", position=0)
    # At the unchosen last step the trajectory's own step is the pre-generated one.
    assert (item.steps, item.ratings, item.label) == (("x", "y", "z"), (1, -1, None), 1)


def test_prm800k_items_are_annotated_on_their_lines():
    items, _ = load_gold_file(DATA / "prm800k_phase2_small.jsonl")
    item = next(i for i in items if i.item_id == "prm800k-0")
    engine = arithmetic_engine(None)
    result = predict(item, ["mc", "judge"], engine)
    assert result.gold_status == "ok"
    assert any(r.prompt.endswith("I need to add 4 and 4.\n4 + 4 = 9.\n")
               for r in engine.requests)  # steps joined as lines, given as they are
    judge_prompt = next(r.prompt for r in engine.requests if "<paragraph_0>" in r.prompt)
    assert "<paragraph_2>\nSo the sum is 9.\n\n# Answer\n\n9\n</paragraph_2>" in judge_prompt


# --------------------------------------------------------------------------------------------
# Joining gold answers


def test_answers_join_by_id_and_by_problem_text():
    items, _ = load_gold_file(DATA / "processbench_small.json")
    table = load_answers_file(DATA / "answers_small.jsonl")
    assert table.by_id == {"pb-3": "8"}
    assert table.by_problem == {"What is 6 + 5?": "11"}
    assert table.ambiguous_problems == {"What is 3 + 9?"}
    assert table.unusable == 1  # the record without an answer
    joined = {i.item_id: i for i in join_gold_answers(items, table)}
    assert (joined["pb-1"].gold_answer, joined["pb-1"].answer_origin) == ("5", "gold_file")
    assert (joined["pb-3"].gold_answer, joined["pb-3"].answer_origin) == ("8", "answers_by_id")
    assert (joined["pb-4"].gold_answer, joined["pb-4"].answer_origin) == (
        "11", "answers_by_problem")
    assert joined["pb-5"].gold_answer is None
    assert joined["pb-5"].gold_status == "ambiguous_answer"


def test_gold_file_answer_wins_and_id_beats_problem_text():
    item = parse_gold_record({"id": "a", "problem": " What is 1 + 1? ", "steps": ["s"],
                              "label": -1}, source="s", position=0)
    table = answer_table([{"id": "a", "answer": "2"},
                          {"problem": "What is 1 + 1?", "answer": "3"}])
    (joined,) = join_gold_answers([item], table)
    assert (joined.gold_answer, joined.answer_origin) == ("2", "answers_by_id")
    # exact problem text, surrounding whitespace ignored
    (by_text,) = join_gold_answers([item], answer_table(
        [{"question": "What is 1 + 1?", "answer": "2"}]))
    assert by_text.answer_origin == "answers_by_problem"
    assert join_gold_answers([item], answer_table(
        [{"problem": "what is 1 + 1?", "answer": "2"}]))[0].gold_answer is None
    own = parse_gold_record({"id": "a", "problem": "p", "steps": ["s"], "label": -1,
                             "answer": "9"}, source="s", position=0)
    assert join_gold_answers([own], table)[0].gold_answer == "9"


def test_conflicting_answer_ids_join_nothing():
    table = answer_table([{"id": "a", "answer": "1"}, {"id": "a", "answer": "2"},
                          {"id": "b", "answer": "5"}, {"id": "b", "answer": "5.0"}])
    assert table.ambiguous_ids == {"a", "b"}  # compared as extracted text
    assert isinstance(table, AnswerTable) and len(table) == 0


# --------------------------------------------------------------------------------------------
# Predicting first errors on the given steps


def test_resolve_annotators():
    assert resolve_annotators("judge") == ("judge",)
    assert resolve_annotators("consensus") == ("mc", "judge", "consensus")
    assert resolve_annotators(["judge", "omegaprm"]) == ("omegaprm", "judge")
    with pytest.raises(ConfigError, match="got 'prm'"):
        resolve_annotators("mc,prm")
    with pytest.raises(ConfigError):
        resolve_annotators("")


def settings(**changes) -> EvaluationSettings:
    base = dict(run_seed=5, monte_carlo=MonteCarloConfig(rollouts=4),
                omegaprm=OmegaPRMConfig(rollouts=4), judge=JudgeConfig())
    base.update(changes)
    return EvaluationSettings(**base)


def test_missing_manifest_section_is_named():
    with pytest.raises(ConfigError, match="monte_carlo section"):
        settings(monte_carlo=None).check(("mc",))
    settings(monte_carlo=None).check(("judge",))


def predict(item, annotators, engine, **changes):
    return asyncio.run(predict_first_errors(
        item, annotators=annotators, engines=Engines(engine, engine, engine),
        settings=settings(**changes), answer_check=lambda answer: None))


def item_of(record, source="s"):
    parsed = parse_gold_record(record, source=source, position=0)
    assert isinstance(parsed, GoldItem)
    return parsed


WRONG = {"id": "w", "problem": "What is 4 + 4?",
         "steps": ["We add 4 and 4.", "4 + 4 = 9.", "The answer is: 9"], "label": 1,
         "answer": "8", "final_answer_correct": False}


def test_steps_are_used_as_given_and_joined_by_their_format():
    engine = arithmetic_engine(None)
    result = predict(item_of(WRONG), ["mc"], engine)
    mc = result.predictions["mc"]
    # The scripted completer stays wrong only after the stated wrong answer: last step.
    assert (mc.status, mc.first_error, mc.reason) == ("predicted", 2, "ok")
    assert 0 < mc.cost["rollouts"] == sum(r.n for r in engine.requests) <= 4 * 2
    # Rollouts start from the given prefixes (nothing sampled anew or re-split), never from
    # the complete solution, which is labelled by its own final answer.
    prefixes = {"We add 4 and 4.\n\n", "We add 4 and 4.\n\n4 + 4 = 9.\n\n"}
    for request in engine.requests:
        assert any(request.prompt.endswith(prefix) for prefix in prefixes)
        assert "The answer is: 9" not in request.prompt

    lines = arithmetic_engine(None)
    rated = item_of({**{k: v for k, v in WRONG.items() if k != "label"},
                     "ratings": [1, -1, None]})
    predict(rated, ["mc"], lines)
    assert any(r.prompt.endswith("We add 4 and 4.\n4 + 4 = 9.\n") for r in lines.requests)


def test_omegaprm_searches_only_wrong_solutions():
    engine = arithmetic_engine(None)
    result = predict(item_of(WRONG), ["omegaprm"], engine)
    om = result.predictions["omegaprm"]
    assert (om.first_error, om.reason) == (2, "located")
    assert om.details["final_answer_origin"] == "grader"
    assert om.cost["rollouts"] == 4 * len(om.details["probe_lengths"])

    right = item_of({**WRONG, "steps": ["4 + 4 = 8.", "The answer is: 8"], "label": -1,
                     "final_answer_correct": True})
    free = arithmetic_engine(None)
    om = predict(right, ["omegaprm"], free).predictions["omegaprm"]
    assert (om.first_error, om.reason, om.cost["rollouts"]) == (-1, "final_answer_correct", 0)
    assert free.requests == []


def test_omegaprm_can_trust_the_item_field():
    # The record says the final answer is right although it grades wrong.
    lying = item_of({**WRONG, "final_answer_correct": True})
    om = predict(lying, ["omegaprm"], arithmetic_engine(None),
                 omegaprm_final_answer="item").predictions["omegaprm"]
    assert (om.first_error, om.details["final_answer_origin"]) == (-1, "item")
    om = predict(lying, ["omegaprm"], arithmetic_engine(None)).predictions["omegaprm"]
    assert (om.first_error, om.details["final_answer_origin"]) == (2, "grader")


_STATED = re.compile(r"The answer is: \d")


def judge_says(index: int) -> ScriptedEngine:
    """A judge that always names ``index``, and a completer that answers 8 unless the prefix
    already states an answer (then it adds nothing, so the prefix's own answer is graded)."""

    def respond(request, sample):
        if "<paragraph_0>" in request.prompt:
            return f"Paragraph analysis.\n\\boxed{{{index}}}"
        return "" if _STATED.search(request.prompt) else "The answer is: 8"

    return ScriptedEngine(respond)


def test_consensus_keeps_agreement_and_abstains_otherwise():
    wrong_last = item_of({**WRONG, "steps": ["We add 4 and 4.", "The answer is: 9"],
                          "label": 1})
    # The always-right completer gives MC > 0 up to the stated wrong answer: MC says 1.
    agree = predict(wrong_last, ["consensus"], judge_says(1)).predictions
    assert list(agree) == ["mc", "judge", "consensus"]
    assert (agree["mc"].first_error, agree["judge"].first_error) == (1, 1)
    assert (agree["consensus"].status, agree["consensus"].first_error) == ("predicted", 1)
    assert agree["consensus"].cost["rollouts"] == (agree["mc"].cost["rollouts"]
                                                   + agree["judge"].cost["rollouts"])
    disagree = predict(wrong_last, ["consensus"], judge_says(0)).predictions["consensus"]
    assert (disagree.status, disagree.first_error, disagree.reason) == (
        "unknown", None, "disagree")


def test_items_without_gold_answer_are_judged_only():
    engine = judge_says(-1)
    no_answer = item_of({k: v for k, v in WRONG.items() if k != "answer"})
    result = predict(no_answer, ["mc", "omegaprm", "judge", "consensus"], engine)
    assert result.gold_status == "missing"
    statuses = {name: (p.status, p.reason) for name, p in result.predictions.items()}
    assert statuses == {"mc": ("skipped", "no_gold_answer"),
                        "omegaprm": ("skipped", "no_gold_answer"),
                        "judge": ("predicted", "ok"),
                        "consensus": ("skipped", "no_gold_answer")}
    assert len(engine.requests) == 1 and "<paragraph_0>" in engine.requests[0].prompt


def test_an_unreadable_gold_answer_counts_as_missing():
    engine = judge_says(-1)
    result = asyncio.run(predict_first_errors(
        item_of(WRONG), annotators=["mc", "judge"], engines=Engines(engine, engine, engine),
        settings=settings(), answer_check=lambda answer: "unreadable"))
    assert result.gold_status == "unreadable_answer"
    assert result.predictions["mc"].status == "skipped"
    assert result.predictions["judge"].status == "predicted"


def test_unparseable_judge_reply_is_unknown_with_reason():
    engine = ScriptedEngine(lambda request, sample: "I think paragraph one.")
    judge = predict(item_of(WRONG), ["judge"], engine).predictions["judge"]
    assert (judge.status, judge.first_error, judge.reason) == ("unknown", None, "no_verdict")


def test_predictions_are_reproducible():
    first = predict(item_of(WRONG), ["mc", "omegaprm", "judge"], arithmetic_engine(None))
    again = predict(item_of(WRONG), ["mc", "omegaprm", "judge"], arithmetic_engine(None))

    def without_cache_counts(prediction):
        # Prefix-cache hits depend on how Monte Carlo's and OmegaPRM's concurrent requests
        # interleave (as on a real engine); every text, index and other count must repeat.
        return {name: dataclasses.replace(p, cost={k: v for k, v in p.cost.items()
                                                   if k != "cached_tokens"})
                for name, p in prediction.predictions.items()}

    assert first.item == again.item and first.gold_status == again.gold_status
    assert without_cache_counts(first) == without_cache_counts(again)


# --------------------------------------------------------------------------------------------
# The report


def report_rows():
    rows = []

    def add(source, pid, label, annotator, predicted, *, status=None, ratings=None,
            gold_status="ok"):
        rows.append({"problem_id": f"{source}/{pid}", "source": source, "label": label,
                     "annotator": annotator, "predicted_first_error": predicted,
                     "status": status or ("predicted" if predicted is not None else "unknown"),
                     "reason": "no_gold_answer" if status == "skipped" else "ok",
                     "ratings": ratings, "gold_status": gold_status,
                     "cost": {"requests": 1, "rollouts": 2, "prompt_tokens": 10,
                              "generated_tokens": 3, "cached_tokens": 0}})

    for n, (label, predicted) in enumerate(SOURCE_A):
        add("a", n, label, "judge", predicted)
    for n, (label, predicted) in enumerate(SOURCE_B):
        add("b", n, label, "judge", predicted)
    add("b", 9, 0, "judge", 0, gold_status="missing")
    add("b", 9, 0, "mc", None, status="skipped", gold_status="missing")
    add("c", 0, 1, "judge", 1, ratings=[1, -1, None])
    add("c", 0, 1, "mc", 0, ratings=[1, -1, None])
    return rows


def test_report_per_source_average_and_edge_cases():
    dead = [{"source": "a", "reason": "bad_label"}]
    report = build_report(report_rows(), annotators=["mc", "judge"], dead_letters=dead)
    items = report["items"]
    assert items["evaluated"] == 5 + 2 + 1 + 1
    assert items["without_gold_answer"] == 1
    assert items["without_gold_answer_reasons"] == {"missing": 1}
    assert items["dead_letter"] == 1 and items["per_source"]["a"]["dead_letter"] == 1
    judge = report["annotators"]["judge"]
    a = judge["per_source"]["a"]
    assert a["f1"] == pytest.approx(400 / 7) and a["n_unknown"] == 1
    b = judge["per_source"]["b"]  # one erroneous item (the one without a gold answer)
    assert (b["error_acc"], b["correct_acc"]) == (pytest.approx(100.0), pytest.approx(50.0))
    c = judge["per_source"]["c"]
    assert c["correct_acc"] is None and c["f1"] is None
    assert c["step"]["precision"] == pytest.approx(100.0)
    assert judge["average"]["f1"] == pytest.approx((400 / 7 + 2 * 100 * 50 / 150) / 2)
    assert judge["cost"]["rollouts"] == 2 * 9
    assert (judge["items"], judge["items_predicted"], judge["items_unknown"],
            judge["items_skipped"]) == (9, 8, 1, 0)
    assert judge["coverage"] == pytest.approx(800 / 9)
    mc = report["annotators"]["mc"]
    # Monte Carlo is scored on the same 9 items: skipped (no gold answer) and items it has no
    # row for count as wrong predictions.
    for source in ("a", "b", "c"):
        assert mc["per_source"][source]["n_items"] == judge["per_source"][source]["n_items"]
    mb = mc["per_source"]["b"]
    assert (mb["n_items"], mb["skipped"], mb["n_unknown"]) == (3, 3, 0)
    assert mb["skipped_reasons"] == {"no_gold_answer": 1, "no_prediction_row": 2}
    assert (mb["error_acc"], mb["correct_acc"], mb["f1"], mb["coverage"]) == (0.0, 0.0, 0.0, 0.0)
    assert mb["known_acc"] is None
    assert mc["per_source"]["a"]["f1"] == 0.0
    assert mc["per_source"]["c"]["error_acc"] == 0.0 and mc["per_source"]["c"]["f1"] is None
    assert mc["per_source"]["c"]["step"] == {
        "steps_compared": 1, "true_negatives_found": 0, "false_alarms": 1,
        "missed_negatives": 0, "precision": 0.0, "recall": None}
    assert mc["average"]["f1"] == 0.0 and mc["average"]["sources_f1"] == 2
    assert (mc["items"], mc["items_predicted"], mc["items_skipped"]) == (9, 1, 8)
    assert mc["coverage"] == pytest.approx(100 / 9)
    assert mc["cost"]["rollouts"] == 2 * 2 and mc["cost"]["rollouts_per_item"] == 4.0  # 1 run
    assert judge["average"]["step_precision"] == pytest.approx(100.0)
    assert mc["average"]["step_precision"] == 0.0 and mc["average"]["step_recall"] is None
    assert mc["average"]["sources_step_recall"] == 0
    markdown = render_report_markdown(report)
    assert "| judge | **average** |" in markdown and "n/a" in markdown
    assert "| mc | **average** | 9 | 0.0 | 0.0 | **0.0** | 11.1 | 0 | 8 |" in markdown
    assert "Step level" in markdown
    json.dumps(report)  # JSON-ready


def test_annotators_share_one_denominator_and_unscored_items_count_as_wrong():
    # Four items, two without a gold answer. The judge predicts all four right; Monte Carlo
    # predicts the two it can run on right and skips the others.
    rows = []
    for n, (label, gold) in enumerate([(1, "ok"), (-1, "ok"), (0, "missing"), (-1, "missing")]):
        common = {"problem_id": f"s/{n}", "source": "s", "label": label, "ratings": None,
                  "gold_status": gold, "cost": None}
        rows.append({**common, "annotator": "judge", "status": "predicted", "reason": "ok",
                     "predicted_first_error": label})
        skipped = gold != "ok"
        rows.append({**common, "annotator": "mc", "status": "skipped" if skipped else
                     "predicted", "reason": "no_gold_answer" if skipped else "ok",
                     "predicted_first_error": None if skipped else label})
    report = build_report(rows, annotators=["mc", "judge"])
    judge = report["annotators"]["judge"]["per_source"]["s"]
    mc = report["annotators"]["mc"]["per_source"]["s"]
    assert judge["n_items"] == mc["n_items"] == 4
    assert (judge["error_acc"], judge["correct_acc"], judge["coverage"]) == (100.0, 100.0, 100.0)
    # Before, Monte Carlo scored 100/100 on its own two items; now the skipped two are misses.
    assert (mc["error_acc"], mc["correct_acc"], mc["f1"]) == (50.0, 50.0, 50.0)
    assert (mc["coverage"], mc["known_acc"], mc["skipped"]) == (50.0, 100.0, 2)
    assert report["annotators"]["mc"]["coverage"] == 50.0


def test_first_error_scores_count_skipped_apart_from_unknown():
    s = first_error_scores([(1, 1), (1, None), (-1, None, True), (-1, 5, True)])
    assert (s.n_items, s.n_unknown, s.n_skipped) == (4, 1, 2)
    assert (s.error_acc, s.correct_acc, s.coverage, s.known_acc) == (50.0, 0.0, 25.0, 100.0)
