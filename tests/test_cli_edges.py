"""The command line's edges, in process: unknown options, ``-v`` after the command, ``--version``,
help texts, and the clear errors (exit 2) for a file as ``--out``, a missing model folder, a
missing tokenizer folder and an unknown ``show --reason``. No pipeline starts in any of them."""

import json

import pytest
import yaml

from steplabel import __version__
from steplabel.pipelines import cli

pytestmark = pytest.mark.unit

SCRIPTED = {"kind": "custom", "factory": "fakes:arithmetic_engine"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's exits: --help, --version, usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_manifest(tmp_path, **overrides):
    (tmp_path / "problems.jsonl").write_text(
        json.dumps({"id": "p0", "question": "What is 1 + 2?", "answer": "3"}) + "\n")
    data = {"name": "edges", "seed": 3, "source": {"kind": "jsonl", "path": "problems.jsonl"},
            "models": {"policy": SCRIPTED}, "policy": {"samples": 1}, **overrides}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_refuses_a_misspelt_option_and_suggests_the_right_one(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", str(write_manifest(tmp_path)), "--overwirte")
    assert code == 2 and out == ""
    assert "unrecognized arguments: --overwirte (did you mean --overwrite?)" in err
    assert "Beam pipeline options go after --" in err


def test_other_commands_refuse_unknown_options_with_a_suggestion(capsys, tmp_path):
    code, _, err = run_cli(capsys, "show", str(tmp_path), "--limt", "3")
    assert code == 2 and "did you mean --limit?" in err


def test_beam_options_after_the_separator_reach_the_parser_untouched():
    parser = cli._parser()
    args = cli.parse_arguments(parser, ["run", "job.yaml", "--out", "o", "--",
                                        "--direct_num_workers=2", "--unknown_beam_flag"])
    assert args.command == "run" and args.out == "o"
    assert args.beam_args == ["--direct_num_workers=2", "--unknown_beam_flag"]
    assert cli.parse_arguments(parser, ["run", "job.yaml"]).beam_args == []


def test_only_run_takes_beam_options(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parse_arguments(cli._parser(), ["inspect", "d", "--", "--x=1"])
    assert exited.value.code == 2
    assert "only run takes Beam pipeline options after --" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-v", "show", "d"], ["show", "d", "-v"],
                                  ["show", "-v", "d"], ["run", "j.yaml", "--verbose"]])
def test_verbose_before_or_after_the_command(argv):
    assert cli.parse_arguments(cli._parser(), argv).verbose is True


def test_not_verbose_by_default():
    assert cli.parse_arguments(cli._parser(), ["show", "d"]).verbose is False


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"steplabel {__version__}"


@pytest.mark.parametrize("command,words", [
    ("run", ["Run a job manifest end to end", 'Beam pipeline options go after "--"']),
    ("demo-data", ["generated problem set", "deterministic for a seed", "--count"]),
])
def test_run_and_demo_data_help_describe_the_command(capsys, command, words):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    for word in words:
        assert word in out


def test_out_naming_a_file_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    for out_dir, says in (("afile", "--out afile is a file, not a directory"),
                          ("afile/sub", "--out afile/sub is inside afile, a file")):
        code, out, err = run_cli(capsys, "run", str(manifest), "--out", out_dir)
        assert code == 2 and out == ""
        assert f"steplabel: error: {says}" in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["/nonexistent/model-folder", "./models/missing",
                                   "~/no-such-steplabel-model", "a/b/c"])
def test_a_missing_local_model_folder_is_refused_at_launch(capsys, tmp_path, monkeypatch,
                                                            model):
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path, models={"policy": {"kind": "vllm", "model": model}})
    code, out, err = run_cli(capsys, "run", str(manifest), "--out", "out")
    assert code == 2 and out == ""
    assert f"models.policy.model {model} does not exist" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_hub_id_is_not_taken_for_a_missing_path():
    from steplabel.schemas.config import looks_like_local_path

    assert not looks_like_local_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not looks_like_local_path("gpt2")
    assert looks_like_local_path("/models/x") and looks_like_local_path("../x")


def test_an_error_inside_an_optional_section_prints_only_the_field(capsys, tmp_path):
    manifest = write_manifest(tmp_path, judge={"votes": "three"})
    code, _, err = run_cli(capsys, "run", str(manifest), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.strip() == "steplabel: error: judge.votes: must be an integer, got 'three'"


def test_export_tokenizer_that_does_not_exist(capsys, tmp_path):
    from steplabel.dataset.export import ExportError, load_tokenizer

    with pytest.raises(ExportError, match="--tokenizer /nonexistent does not exist"):
        load_tokenizer("/nonexistent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is not a folder"):
        load_tokenizer(str(tmp_path / "file"))


def test_show_refuses_an_unknown_reason_naming_the_valid_ones(capsys, tmp_path):
    code, out, err = run_cli(capsys, "show", str(tmp_path), "--reason", "bogus")
    assert code == 2 and out == ""
    assert "invalid choice: 'bogus'" in err
    for reason in ("agree", "disagree", "judge_unknown", "policy_truncated"):
        assert repr(reason) in err


def test_evaluate_refuses_a_missing_model_folder_and_a_file_as_out(capsys, tmp_path,
                                                                    monkeypatch):
    from pathlib import Path

    data = Path(__file__).resolve().parent / "data"
    monkeypatch.chdir(tmp_path)
    manifest = {"name": "eval-edges", "seed": 11,
                "models": {"policy": {"kind": "vllm", "model": "/nonexistent/model-folder"}},
                "monte_carlo": {"rollouts": 4}, "omegaprm": {"rollouts": 4}, "judge": {}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(manifest))
    gold = ["--gold", str(data / "processbench_small.json"), "--answers",
            str(data / "answers_small.jsonl"), "--manifest", "eval.yaml"]
    code, _, err = run_cli(capsys, "evaluate", *gold, "--out", "eval")
    assert code == 2 and "models.policy.model /nonexistent/model-folder does not exist" in err
    assert "Traceback" not in err and not (tmp_path / "eval").exists()
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(capsys, "evaluate", *gold, "--out", "afile")
    assert code == 2 and "--out afile is a file, not a directory" in err
