"""The critic stage through the whole Beam job (issue #25): a scripted critic with the faults of
real models gives exactly the expected kept and rejected critiques; skipped trajectories are
counted; the stage resumes from its checkpoints; engine refusals become dead letters."""

import json
from pathlib import Path

import pytest

from fakes import CRITIC_SCRIPT, arithmetic_first_error
from steplabel.annotators.judge import tag_steps
from steplabel.dataset import storage
from steplabel.pipelines.job import run_job
from steplabel.pipelines.checkpoints import stage_checkpoint_counts
from steplabel.schemas.manifest import manifest_from_dict
from test_pipeline import write_problems

pytestmark = pytest.mark.pipeline

ARITHMETIC = {"kind": "custom", "factory": "fakes:arithmetic_engine"}
CRITIC = {"kind": "custom", "factory": "fakes:critic_engine"}
SAMPLES = len(CRITIC_SCRIPT)


def critic_manifest(path: Path, critic: dict | None = None, critic_model: dict | None = None,
                    **sections):
    return manifest_from_dict({**sections,
        "name": "critic-scripted",
        "seed": 3,
        "source": {"kind": "jsonl", "path": str(path)},
        "models": {"policy": ARITHMETIC, "critic": critic_model or CRITIC},
        "policy": {"samples": 3},
        "monte_carlo": {"rollouts": 4},
        "judge": {},
        "consensus": {},
        "critic": {"samples": SAMPLES, "sampling": {"max_tokens": 64}, **(critic or {})},
        "runner": {"num_shards": 2},
    })


def rows(out: str, output: str) -> list[dict]:
    return list(storage.iter_rows(out, output))


def truth_of(trajectory: dict) -> int:
    """The arithmetic world's first error of a two-step solution: its answer step when the
    answer is wrong (the scripted critic's reading, ``fakes.arithmetic_first_error``)."""
    assert len(trajectory["steps"]) == 2
    return -1 if trajectory["final_answer_correct"] else 1


def expected_reasons(truth: int, trusted: int | None, *, keep: int = 1,
                     steps: int = 2) -> list[str]:
    """Each sample's reason, from the script (``fakes.CRITIC_SCRIPT``) and the trusted first
    error, written out by hand: steps after the first error are not checked; the quota keeps
    the lowest sample indices among the agreeing ones."""
    wrong = steps - 1 if truth < 0 else -1  # the wrong_verdicts sample's first error
    verdict = verdict_against(trusted)
    reasons = [verdict(truth), "unusable:truncated", "unusable:missing_verdict",
               "unusable:contradiction", verdict(wrong), verdict(truth),
               "unusable:two_verdicts_for_step"]
    return with_quota(reasons, keep)


def verdict_against(trusted: int | None):
    """A usable critique's reason from its first error, against the trusted one."""
    def verdict(first_error: int) -> str:
        if trusted is None:
            return "no_trusted_labels"
        if first_error == trusted:
            return "kept"
        return f"disagrees_at_step_{min(i for i in (first_error, trusted) if i != -1)}"
    return verdict


def with_quota(reasons: list[str], keep: int) -> list[str]:
    """The agreeing critiques past the first ``keep`` (lowest sample indices) are over quota."""
    kept = 0
    out = []
    for reason in reasons:
        if reason == "kept":
            kept += 1
            if kept > keep:
                reason = "not_kept_quota"
        out.append(reason)
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    base = tmp_path_factory.mktemp("critic")
    source = write_problems(base / "problems.jsonl", 6)
    out = str(base / "out")
    result = run_job(critic_manifest(source), out_dir=out)
    return source, out, result


def test_every_critique_gets_exactly_its_expected_verdict(job):
    _, out, result = job
    critiques = rows(out, "critiques")
    kept_trajectories = rows(out, "trajectories")
    assert kept_trajectories and critiques
    by_solution: dict = {}
    for row in critiques:
        by_solution.setdefault((row["problem_id"], row["solution_index"]), []).append(row)
    # only_trusted: exactly the consensus-kept trajectories were critiqued
    assert set(by_solution) == {(t["problem_id"], t["solution_index"])
                                for t in kept_trajectories}
    for trajectory in kept_trajectories:
        key = (trajectory["problem_id"], trajectory["solution_index"])
        samples = sorted(by_solution[key], key=lambda r: r["sample_index"])
        assert [r["sample_index"] for r in samples] == list(range(SAMPLES))
        trusted = trajectory["mc_first_error"]
        assert all(r["trusted_first_error"] == trusted and r["trusted_source"] == "consensus"
                   for r in samples)
        assert [r["reason"] for r in samples] == expected_reasons(truth_of(trajectory),
                                                                  trusted)
        assert [r["kept"] for r in samples] == [r["reason"] == "kept" for r in samples]
        assert samples[1]["finish_reason"] == "length"
        assert samples[1]["step_verdicts"] is None and samples[1]["agrees"] is None
        labels = trajectory["labels"]
        assert samples[0]["trusted_labels"] == labels
        assert samples[0]["steps"] == trajectory["steps"]
        assert samples[0]["critic_model"] == "scripted-critic"
        # the request's cost is on sample 0; every sample is one rollout
        assert [r["cost"]["requests"] for r in samples] == [1] + [0] * (SAMPLES - 1)
        assert all(r["cost"]["rollouts"] == 1 for r in samples)
    counters = result.stats["counters"]
    kept = sum(r["kept"] for r in critiques)
    assert counters["critic_kept"] == kept
    assert counters["critic_critiques"] == len(critiques)
    assert counters["critic_unusable_truncated"] == len(by_solution)
    figures = result.stats["overall"]["critiques"]
    assert figures["critiques"] == len(critiques) and figures["kept"] == kept
    assert figures["not_kept_reasons"]["unusable:contradiction"] == len(by_solution)
    assert result.stats["overall"]["truncation"]["critic"] == {
        "samples": len(critiques), "truncated": len(by_solution),
        "share": round(len(by_solution) / len(critiques), 6)}


def test_untrusted_trajectories_are_skipped_and_counted(job):
    _, out, result = job
    untrusted = [r for r in rows(out, "rejected") if not r["policy_truncated"]]
    assert untrusted  # consensus rejected some: the critic did not run on them
    counters = result.stats["counters"]
    assert counters["critic_solutions_skipped"] == len(untrusted)
    assert counters["critic_requests_not_spent"] == len(untrusted)
    assert counters["critic_rollouts_not_spent"] == SAMPLES * len(untrusted)
    assert counters["critic_solutions"] == len(rows(out, "trajectories"))


def test_output_card_and_lock_know_the_critic(job):
    _, out, result = job
    info = json.loads((Path(out) / "info.json").read_text())
    assert info["outputs"]["critiques"] == "critiques"
    assert info["rows"]["critiques"] == len(rows(out, "critiques"))
    lock = json.loads((Path(out) / "manifest.lock.json").read_text())
    assert lock["sampling"]["stages"]["critic"]["max_tokens"] == 64
    assert lock["annotators"]["versions"]["critic"].startswith("critic/1;")
    assert "critic_thinkprm_v1" in lock["prompt_templates"]
    card = (Path(out) / "README.md").read_text()
    assert "config_name: critiques" in card


def test_resume_replays_the_critic_keys(job, tmp_path):
    source, out, first = job
    again = str(tmp_path / "again")
    run_job(critic_manifest(source), out_dir=again)
    keys = stage_checkpoint_counts(again)["critic"]
    assert keys == first.stats["counters"]["critic_solutions"]
    (Path(again) / "COMPLETED").unlink()
    second = run_job(critic_manifest(source), out_dir=again)
    counters = second.stats["counters"]
    assert counters["stage_critic_resumed"] == keys
    assert "stage_critic_computed" not in counters
    assert sorted(map(json.dumps, rows(again, "critiques")), key=str) == sorted(
        map(json.dumps, rows(out, "critiques")), key=str)


def test_without_only_trusted_untrusted_critiques_are_unverified(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 4)
    out = str(tmp_path / "out")
    result = run_job(critic_manifest(source, {"only_trusted": False, "keep_per_solution": 2}),
                     out_dir=out)
    assert "critic_solutions_skipped" not in result.stats["counters"]
    rejected = {(r["problem_id"], r["solution_index"]): r for r in rows(out, "rejected")
                if not r["policy_truncated"]}
    kept = {(r["problem_id"], r["solution_index"]): r for r in rows(out, "trajectories")}
    seen: dict = {}
    for row in rows(out, "critiques"):
        seen.setdefault((row["problem_id"], row["solution_index"]), []).append(row)
    assert set(seen) == set(rejected) | set(kept)
    for key, samples in seen.items():
        samples.sort(key=lambda r: r["sample_index"])
        if key in rejected:
            truth = truth_of(rejected[key])
            assert [r["reason"] for r in samples] == expected_reasons(truth, None)
            assert not any(r["kept"] for r in samples)
        else:
            truth = truth_of(kept[key])
            assert [r["reason"] for r in samples] == expected_reasons(
                truth, kept[key]["mc_first_error"], keep=2)


def test_a_refused_critic_request_is_a_dead_letter_beside_the_trajectories(tmp_path):
    source = write_problems(tmp_path / "p.jsonl", 3)
    out = str(tmp_path / "out")
    small = {**CRITIC, "max_model_len": 64}  # every critic prompt is longer
    result = run_job(critic_manifest(source, critic_model=small), out_dir=out)
    trajectories = rows(out, "trajectories")
    assert trajectories and not rows(out, "critiques")
    dead = [r for r in rows(out, "dead_letter") if r["stage"] == "critic"]
    assert sorted((r["problem_id"], json.loads(r["original"])["solution_index"])
                  for r in dead) == sorted((t["problem_id"], t["solution_index"])
                                           for t in trajectories)
    assert {r["reason"] for r in dead} == {"prompt_too_long"}
    assert result.stats["counters"]["dead_letter_critic_prompt_too_long"] == len(dead)
    assert result.stats["reconciliation"]["ok"]


def test_show_prints_a_kept_critique_beside_its_trajectory(job, capsys):
    from steplabel.pipelines.cli import main

    _, out, _ = job
    kept = [r for r in rows(out, "critiques") if r["kept"]]
    assert main(["show", out, "--critiques", "--limit", "1", "--color", "never"]) == 0
    text = capsys.readouterr().out
    first = kept[0]  # the first kept critique in shard order
    assert f"critique {first['sample_index']} of {first['problem_id']} · solution " \
           f"{first['solution_index']} · kept" in text
    assert first["question"] in text and "Paragraph 0:" in text
    assert text.index("question:") < text.index("critic trusted  step")  # trajectory first
    assert main(["show", out, "--all-critiques", "--limit", "0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown) == len(rows(out, "critiques"))
    assert all(e["trajectory"]["kept"] for e in shown)  # only_trusted: kept ones only
    assert {e["reason"] for e in shown} >= {"kept", "unusable:truncated"}


def test_inspect_has_a_critiques_section(job, tmp_path, capsys):
    from steplabel.pipelines.cli import main

    _, out, result = job
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    figures = result.stats["overall"]["critiques"]
    assert f"critiques: kept {figures['kept']} of {figures['critiques']}" in text
    assert "unusable:contradiction" in text and "by step index" in text
    assert f"critic: {result.stats['counters']['critic_solutions_skipped']} trajectories " \
           "without trusted labels skipped" in text
    page = tmp_path / "report.html"
    assert main(["inspect", out, "--html", str(page), "--examples", "1"]) == 0
    html = page.read_text()
    assert "<h3>Critiques</h3>" in html and "verdicts checked" in html
    assert "Example critiques (1 kept)" in html and "Paragraph 0:" in html


def test_critique_figures_by_hand():
    from steplabel.dataset.stats import LabelStats, ProblemRows

    cost = {"requests": 1, "rollouts": 1, "prompt_tokens": 100, "generated_tokens": 40}
    no_cost = {"requests": 0, "rollouts": 1, "prompt_tokens": 0, "generated_tokens": 60}
    critiques = [
        # trusted first error 1: steps 0 and 1 are checked, step 2 never
        {"solution_index": 0, "step_verdicts": [True, False, None], "trusted_first_error": 1,
         "kept": True, "reason": "kept", "parse_reason": "ok", "finish_reason": "stop",
         "cost": cost},
        {"solution_index": 0, "step_verdicts": [False, None, None], "trusted_first_error": 1,
         "kept": False, "reason": "disagrees_at_step_0", "parse_reason": "ok",
         "finish_reason": "stop", "cost": no_cost},
        {"solution_index": 0, "step_verdicts": None, "trusted_first_error": 1, "kept": False,
         "reason": "unusable:truncated", "parse_reason": "truncated", "finish_reason": "length",
         "cost": no_cost},
        # no error: every step checked
        {"solution_index": 1, "step_verdicts": [True, True], "trusted_first_error": -1,
         "kept": False, "reason": "not_kept_quota", "parse_reason": "ok",
         "finish_reason": "stop", "cost": cost},
    ]
    problem = ProblemRows("p")
    problem.rows["critiques"] = [{"problem_id": "p", **row} for row in critiques]
    stats = LabelStats()
    stats.add_problem(problem)
    figures = stats.summary()["critiques"]
    assert figures["critiques"] == 4 and figures["kept"] == 1 and figures["keep_rate"] == 0.25
    assert (figures["solutions"], figures["solutions_with_kept"]) == (2, 1)
    assert figures["not_kept_reasons"] == {"disagrees_at_step_0": 1, "not_kept_quota": 1,
                                           "unusable:truncated": 1}
    assert figures["agreement_by_step_position"] == {
        "0": {"checked": 3, "agree": 2, "rate": round(2 / 3, 6)},
        "1": {"checked": 2, "agree": 2, "rate": 1.0}}
    assert figures["tokens_per_kept"] == 200 + 200  # all four critiques' tokens, one kept
    assert figures["generated_tokens_per_kept"] == 200
    assert stats.summary()["truncation"]["critic"] == {"samples": 4, "truncated": 1,
                                                       "share": 0.25}


def test_regenerate_verify_finds_the_critiques_identical(job, tmp_path, capsys):
    from steplabel.pipelines.cli import main

    _, out, result = job
    status = main(["regenerate", str(Path(out) / "manifest.lock.json"), "--out",
                   str(tmp_path / "again"), "--verify", out])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    count = result.info["rows"]["critiques"]
    line = next(l for l in stdout.splitlines() if l.strip().startswith("critiques "))
    assert f"{count} vs {count} rows: {count} identical, 0 differing" in line


# --------------------------------------------------------------------------------------------
# critic.constrain_form: the same scripted critic, its form forced by the per-solution regex

FORM = {"constrain_form": True, "max_step_chars": 400}


def expected_constrained_reasons(truth: int, trusted: int | None) -> list[str]:
    """Each sample's reason under the forced form (``fakes.constrain_to_regex``), worked out
    by hand from ``fakes.CRITIC_SCRIPT`` on a two-step solution:

    - truthful, wrong_verdicts: already in form, unchanged.
    - cut_off: "Paragraph 0: " and 400 characters of rambling are over 64 tokens: truncated.
    - missing_verdict: its "Paragraph 1: ..." becomes paragraph 0's verification ("Paragraph
      0: 1: ..."), with its verdict (incorrect when the truth is 1: first error 0); when that
      verdict is correct, the spent script leaves paragraph 1 to the shortest ending, correct.
    - contradiction: the form ends at its incorrect verdict for paragraph 0, before "All steps
      are correct.": a usable first error 0.
    - two_verdicts: its second "Paragraph 0" line becomes paragraph 1: first error -1.
    """
    wrong = 1 if truth < 0 else -1
    verdict = verdict_against(trusted)
    reasons = [verdict(truth), "unusable:truncated", verdict(-1 if truth < 0 else 0),
               verdict(0), verdict(wrong), verdict(truth), verdict(-1)]
    return with_quota(reasons, 1)


@pytest.fixture(scope="module")
def constrained_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("critic_form")
    source = write_problems(base / "problems.jsonl", 6)
    out = str(base / "out")
    result = run_job(critic_manifest(source, FORM), out_dir=out)
    return out, result


def test_constrained_critiques_get_exactly_their_expected_verdicts(constrained_job):
    import re

    import regex

    from steplabel.annotators.critic import CRITIC_FORM_VERSION, critique_form_regex

    out, result = constrained_job
    critiques = rows(out, "critiques")
    kept_trajectories = rows(out, "trajectories")
    assert kept_trajectories and critiques
    pattern = critique_form_regex(2, 400)
    by_solution: dict = {}
    for row in critiques:
        by_solution.setdefault((row["problem_id"], row["solution_index"]), []).append(row)
    assert set(by_solution) == {(t["problem_id"], t["solution_index"])
                                for t in kept_trajectories}
    truths = set()
    for trajectory in kept_trajectories:
        samples = sorted(by_solution[(trajectory["problem_id"], trajectory["solution_index"])],
                         key=lambda r: r["sample_index"])
        truth = truth_of(trajectory)
        truths.add(truth)
        assert [r["reason"] for r in samples] == expected_constrained_reasons(
            truth, trajectory["mc_first_error"])
        for row in samples:  # every critique is in form: whole, or a prefix when cut off
            if row["finish_reason"] == "stop":
                assert re.fullmatch(pattern, row["critique"]), row["critique"]
                assert row["parse_reason"] == "ok"
            else:
                assert regex.fullmatch(pattern, row["critique"], partial=True)
                assert not re.fullmatch(pattern, row["critique"])
                assert row["parse_reason"] == "truncated"
            assert json.loads(row["critic_sampling"])["constrain_form"] is True
            assert row["critic_version"].endswith(CRITIC_FORM_VERSION)
    assert truths == {-1, 1}  # both kinds of trajectory were critiqued
    counters = result.stats["counters"]
    assert counters["critic_unusable_truncated"] == len(by_solution)
    assert "critic_unusable_contradiction" not in counters
    assert "critic_unusable_missing_verdict" not in counters
    lock = json.loads((Path(out) / "manifest.lock.json").read_text())
    assert lock["annotators"]["critic"]["constrain_form"] is True
    assert lock["annotators"]["versions"]["critic"].endswith(CRITIC_FORM_VERSION)


# --------------------------------------------------------------------------------------------
# critic.trust: omegaprm. OmegaPRM searches its own rollouts, never the policy's samples: the
# critic verifies those rollouts against the first errors OmegaPRM located; the policy's
# samples have no OmegaPRM labels (unverified, or skipped under only_trusted).

OMEGAPRM = {"rollouts": 4, "prefilter_rollouts": 8, "search_limit": 2}


def omegaprm_manifest(path: Path, critic: dict):
    return critic_manifest(path, {"trust": "omegaprm", **critic}, omegaprm=OMEGAPRM)


def expected_reasons_of(steps: list, question: str, trusted: int | None) -> list[str]:
    """:func:`expected_reasons` for any number of steps: the scripted critic's truth is
    ``fakes.arithmetic_first_error`` of what it is shown."""
    count, truth = arithmetic_first_error(f"{question}\n{tag_steps(steps)}")
    assert count == len(steps)
    return expected_reasons(truth, trusted, steps=count)


@pytest.fixture(scope="module")
def omegaprm_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("critic_omegaprm")
    source = write_problems(base / "problems.jsonl", 6)
    out = str(base / "out")
    result = run_job(omegaprm_manifest(source, {"only_trusted": False}), out_dir=out)
    return source, out, result


def by_trajectory(critiques: list[dict]) -> dict:
    grouped: dict = {}
    for row in critiques:
        key = (row["problem_id"], row["omegaprm_rollout_id"], row["solution_index"])
        grouped.setdefault(key, []).append(row)
    return {key: sorted(samples, key=lambda r: r["sample_index"])
            for key, samples in grouped.items()}


def test_trust_omegaprm_verifies_omegaprm_rollouts_against_their_first_errors(omegaprm_job):
    _, out, result = omegaprm_job
    searches = rows(out, "omegaprm_searches")
    assert any(s["reason"] == "located" for s in searches)
    grouped = by_trajectory(rows(out, "critiques"))
    searched = {key: samples for key, samples in grouped.items() if key[1] is not None}
    assert set(searched) == {(s["problem_id"], s["rollout_id"], s["search_index"])
                             for s in searches if s["pieces"]}
    kept = 0
    for search in (s for s in searches if s["pieces"]):
        samples = searched[(search["problem_id"], search["rollout_id"], search["search_index"])]
        assert [r["sample_index"] for r in samples] == list(range(SAMPLES))
        assert all(r["steps"] == search["pieces"] and r["trusted_source"] == "omegaprm"
                   and r["trusted_first_error"] == search["first_error"] for r in samples)
        assert [r["reason"] for r in samples] == expected_reasons_of(
            search["pieces"], samples[0]["question"], search["first_error"])
        kept += sum(r["kept"] for r in samples)
    assert kept >= 1  # the truthful critic agrees with OmegaPRM's located errors
    assert result.stats["counters"]["critic_kept"] == kept


def test_trust_omegaprm_leaves_policy_samples_unverified_never_rejected(omegaprm_job):
    _, out, _ = omegaprm_job
    grouped = by_trajectory(rows(out, "critiques"))
    policy = {(t["problem_id"], None, t["solution_index"]): t
              for output in ("trajectories", "rejected") for t in rows(out, output)
              if not t["policy_truncated"]}
    assert policy and set(policy) <= set(grouped)
    for key, trajectory in policy.items():
        samples = grouped[key]
        assert all(r["trusted_source"] == "omegaprm" and r["trusted_first_error"] is None
                   and r["trusted_labels"] is None and not r["kept"] and r["agrees"] is None
                   for r in samples)
        assert [r["reason"] for r in samples] == expected_reasons_of(
            trajectory["steps"], trajectory["question"], None)
        assert not any(r["reason"].startswith("disagrees") for r in samples)


def test_trust_omegaprm_only_trusted_spends_nothing_on_unlabelled_trajectories(
        omegaprm_job, tmp_path):
    source, first_out, _ = omegaprm_job
    out = str(tmp_path / "out")
    result = run_job(omegaprm_manifest(source, {}), out_dir=out)
    searches = rows(out, "omegaprm_searches")
    located = {(s["problem_id"], s["rollout_id"], s["search_index"]) for s in searches
               if s["first_error"] is not None}
    unlocated = sum(1 for s in searches if s["first_error"] is None and s["pieces"])
    policy = [t for output in ("trajectories", "rejected") for t in rows(out, output)
              if not t["policy_truncated"]]
    critiques = rows(out, "critiques")
    assert set(by_trajectory(critiques)) == located
    counters = result.stats["counters"]
    assert counters["critic_solutions_skipped"] == len(policy) + unlocated
    assert counters["critic_rollouts_not_spent"] == SAMPLES * (len(policy) + unlocated)
    # the same rollouts, seeds and critiques as with only_trusted off (another manifest hash)
    again = [r for r in rows(first_out, "critiques") if r["omegaprm_rollout_id"] is not None
             and r["trusted_first_error"] is not None]

    def text(row: dict) -> str:
        return json.dumps({k: v for k, v in row.items() if k != "manifest_hash"})

    assert sorted(map(text, critiques)) == sorted(map(text, again))
    # resume: the OmegaPRM rollouts' critic keys replay from their checkpoints
    keys = stage_checkpoint_counts(out)["critic"]
    assert keys == len(located)
    (Path(out) / "COMPLETED").unlink()
    resumed = run_job(omegaprm_manifest(source, {}), out_dir=out)
    assert resumed.stats["counters"]["stage_critic_resumed"] == keys
    assert "stage_critic_computed" not in resumed.stats["counters"]
    assert sorted(map(text, rows(out, "critiques"))) == sorted(map(text, critiques))


def test_omegaprm_critiques_in_figures_show_and_inspect(omegaprm_job, capsys, tmp_path):
    from steplabel.pipelines.cli import main

    _, out, result = omegaprm_job
    critiques = rows(out, "critiques")
    figures = result.stats["overall"]["critiques"]
    # a policy sample and an OmegaPRM rollout with the same index are two trajectories
    assert figures["solutions"] == len(by_trajectory(critiques))
    assert main(["show", out, "--all-critiques", "--limit", "0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    searched = [e for e in shown if e["omegaprm_rollout_id"] is not None]
    assert searched and all(e["trajectory"] is None and e["question"] for e in searched)
    assert all(e["trajectory"] is not None for e in shown if e["omegaprm_rollout_id"] is None)
    assert main(["show", out, "--critiques", "--limit", "1", "--color", "never"]) == 0
    text = capsys.readouterr().out
    first = next(r for r in critiques if r["kept"])
    assert f"OmegaPRM rollout {first['omegaprm_rollout_id']} · kept" in text
    assert "question: " in text
    page = tmp_path / "report.html"
    assert main(["inspect", out, "--html", str(page), "--examples", "1"]) == 0
    html = page.read_text()
    assert "OmegaPRM rollout " in html and first["question"] in html
