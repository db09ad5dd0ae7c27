"""How the judge's votes were read, in ``show``'s and ``inspect``'s text (not only in --json and
Parquet): each vote with its parse reason, and a table of parse reasons."""

import pytest

from steplabel.dataset.inspect import dataset_report, render_text
from steplabel.dataset.show import Style, render_trajectory, select_trajectories, verdict_text
from steplabel.dataset.stats import compute_stats
from test_inspect import trajectory, write_dataset

pytestmark = pytest.mark.unit


def judged(problem_id, *, votes, reasons, replies, keep=False):
    row = trajectory(problem_id, 0, "s", labels=[True, True] if keep else None, mc=-1,
                     judge=None, keep=keep)
    row.update(judge_votes=votes, judge_parse_reasons=reasons, judge_replies=replies,
               consensus_reason="agree" if keep else "judge_unknown")
    return row


@pytest.mark.parametrize("reply,shown", [
    ("The earliest wrong paragraph is \\boxed{k}", "k"),
    ("first \\boxed{1} then \\boxed{14}", "14"),
    ("14}", "14"),  # forced into the box by response_prefix: the reply is the verdict
    ("\\boxed{a very long verdict text}", "a very long…"),
    ("a long analysis without any box at all", ""),
    ("", ""),
    (None, ""),
])
def test_verdict_text(reply, shown):
    assert verdict_text(reply) == shown


def test_show_gives_each_vote_with_its_parse_reason(tmp_path):
    write_dataset(tmp_path, {"rejected": [judged(
        "p1", votes=[0, None, None, None],
        reasons=["ok", "verdict_not_integer", "out_of_range", "no_verdict"],
        replies=["\\boxed{0}", "so \\boxed{k}", "\\boxed{14}", "I cannot tell."])]})
    [example] = select_trajectories(str(tmp_path), kept=False)
    text = render_trajectory(example, style=Style(False), width=100)
    line = next(l for l in text.splitlines() if l.startswith("first errors:"))
    assert line.endswith("judge unknown (votes 0 ✓, k ✗ verdict_not_integer, "
                         "14 ✗ out_of_range, ✗ no_verdict)")  # a sentence is no verdict
    assert example["judge_verdicts"] == ["0", "k", "14", ""]


def test_inspect_text_has_a_table_of_parse_reasons(tmp_path):
    write_dataset(tmp_path, {
        "rejected": [judged("p1", votes=[None, None], reasons=["out_of_range", "out_of_range"],
                            replies=["\\boxed{14}", "\\boxed{9}"])],
        "trajectories": [judged("p2", votes=[1, None], reasons=["ok", "verdict_not_integer"],
                                replies=["\\boxed{1}", "\\boxed{k}"], keep=True)],
    })
    parse = compute_stats(str(tmp_path))["overall"]["judge_parse_reasons"]
    assert parse == {"votes": 4, "reasons": {"out_of_range": 2, "ok": 1,
                                             "verdict_not_integer": 1}}
    text = render_text(dataset_report(str(tmp_path)))
    lines = text.splitlines()
    at = lines.index("judge votes by parse reason (4 votes; only ok is a readable verdict):")
    assert [l.split() for l in lines[at + 1:at + 4]] == [
        ["out_of_range", "2", "50.0%"], ["ok", "1", "25.0%"], ["verdict_not_integer", "1", "25.0%"]]
