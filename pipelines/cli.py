"""The ``steplabel`` command line. Flags are read here only; stages get typed config."""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys

from steplabel.demo_data import write_code_problems, write_problems
from steplabel.engines.vllm_engine import shutdown_live_engines
from steplabel import __version__
from steplabel.pipelines import logs
from steplabel.schemas.config import ConfigError
from steplabel.schemas.manifest import load_manifest

#: Commands that live in their own modules (``steplabel.<package>.<module>``) provide
#: ``add_arguments(parser)`` and ``run(args) -> int`` (exit status).
COMMAND_MODULES = {
    "regenerate": ("dataset.regenerate",
                   "rerun a job from its manifest.lock.json and verify the result"),
    "inspect": ("dataset.inspect", "print label statistics of a dataset (text, --json, --html)"),
    "export": ("dataset.export", "export a dataset to TRL / OpenRLHF / Math-Shepherd formats"),
    "evaluate": ("pipelines.evaluate", "evaluate annotators against human first-error labels"),
    "show": ("dataset.show", "print labelled trajectories and OmegaPRM searches of a dataset"),
    "plan": ("dataset.plan", "project a job's rollouts, tokens, time and accelerator-hours from a "
             "pilot"),
}

#: Commands that write a directory and log into it (``DIR/logs/<command>.log``): the output
#: directory's argument. ``run`` and ``evaluate`` call :func:`logs.use_dataset_dir` themselves
#: once they know their (default) directory.
LOGGED_COMMANDS = {"regenerate": "out"}


def _command_module(name: str):
    """The module of command ``name``, imported once logging is set up (Beam logs as it is
    imported). A module not where ``COMMAND_MODULES`` says is an import error, not a command
    quietly left out."""
    module, _ = COMMAND_MODULES[name]
    return importlib.import_module(f"steplabel.{module}")


RUN_DESCRIPTION = """\
Run a job manifest end to end: read the problems, sample the policy's solutions, label their
steps (Monte Carlo, OmegaPRM, the judge, consensus) and write the dataset directory --out
(trajectories, rejected, dead letters, statistics, manifest.lock.json, COMPLETED last). An
interrupted run resumes from its checkpoints when rerun with the same --out.

Apache Beam pipeline options go after "--", e.g.
  steplabel run jobs/demo.yaml --out out/demo -- --direct_num_workers=2
any other option steplabel does not know is an error."""

DEMO_DATA_DESCRIPTION = (
    "Write a generated problem set, deterministic for a seed (JSONL): the demo job's one-step "
    "additions (--kind addition, jobs/data/addition.jsonl), the benchmarks' one-operation "
    "arithmetic (--kind arithmetic) or small Python functions with tests (--kind code).")


def _verbose_parent() -> argparse.ArgumentParser:
    """``-v`` accepted after the command too; SUPPRESS keeps the value given before it."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show library and engine logs on the terminal")
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steplabel",
        description="Manufacture step-labelled reasoning data for process reward models.",
    )
    parser.add_argument("--version", action="version", version=f"steplabel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show library and engine logs on the terminal (they always "
                        "go to the dataset's logs/ folder), steplabel's at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    verbose = [_verbose_parent()]

    run = sub.add_parser("run", help="run a job manifest end to end (Beam pipeline)",
                         description=RUN_DESCRIPTION, parents=verbose,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         usage="%(prog)s [options] manifest [-- BEAM_OPTIONS ...]")
    run.add_argument("manifest", help="job manifest (YAML)")
    run.add_argument("--out", help="dataset directory (default: out/<manifest name>)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a COMPLETED dataset or another manifest's work in --out")
    run.add_argument("--runner", choices=["local", "portable", "dataflow", "flink"],
                     help="override the manifest's runner")
    run.add_argument("--runner-profile", help="runner profile YAML (jobs/runners/*.yaml)")
    run.add_argument("--direct-running-mode",
                     choices=["in_memory", "multi_threading", "multi_processing"],
                     help="local runner mode")
    run.add_argument("--max-in-flight", type=int, help="problems in flight per worker")
    run.add_argument("--json", action="store_true",
                     help="print the result (rows, statistics, reconciliation) as JSON")

    data = sub.add_parser("demo-data", help="write a generated problem set (the demo's data)",
                          description=DEMO_DATA_DESCRIPTION, parents=verbose)
    data.add_argument("--out", required=True, help="JSONL file to write")
    data.add_argument("--kind", choices=["addition", "arithmetic", "code"], default="addition",
                      help="addition: one-step sums of 1..9 (the demo's, jobs/data/addition.jsonl);"
                      " arithmetic: six one-operation kinds up to 19 (the benchmarks'); code: "
                      "small Python functions with tests (grader python_tests, "
                      "jobs/data/code.jsonl)")
    data.add_argument("--code", action="store_const", const="code", dest="kind",
                      help="the same as --kind code")
    data.add_argument("--count", type=int, default=None,
                      help="problems to write (default 24; code: 16)")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the generator (default 0; the demo jobs' files use 0)")

    for name, (_, text) in COMMAND_MODULES.items():
        _command_module(name).add_arguments(sub.add_parser(name, help=text, description=text,
                                                           parents=verbose))
    parser.set_defaults(command_parsers=sub.choices)  # name -> its parser, for suggestions
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    unknown: list[str]) -> None:
    """Exit 2 naming the unknown arguments, with the closest option of the command."""
    command = args.command
    if command is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    sub = args.command_parsers[command]
    first = unknown[0]
    message = f"unrecognized arguments: {' '.join(unknown)}"
    if first.startswith("-"):
        known = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(first.split("=", 1)[0], known, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]}?)"
    if command == "run" and first.startswith("-"):
        message += "; Beam pipeline options go after --, e.g. run job.yaml -- --option=value"
    sub.error(message)


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse steplabel's arguments; those after the first ``--`` are Beam pipeline options
    (``run`` only). Unknown options are refused with a suggestion."""
    argv = list(argv)
    beam_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, beam_args = argv[:at], argv[at + 1:]
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, args, unknown)
    if beam_args and args.command != "run":
        parser.error(f"only run takes Beam pipeline options after --, got: {' '.join(beam_args)}")
    args.beam_args = beam_args
    return args


def _run(args) -> int:
    # Imported here, as the other commands' modules are (_command_module): Beam logs as it is
    # imported, and main() sets up logging first.
    from steplabel.pipelines.job import JobError, describe, run_job

    log_file = None
    try:
        manifest = load_manifest(args.manifest)
        changes = {}
        if args.runner:
            changes["runner"] = args.runner
        if args.runner_profile:
            changes["profile"] = args.runner_profile
        if args.direct_running_mode:
            changes["direct_running_mode"] = args.direct_running_mode
        if args.max_in_flight:
            changes["max_in_flight"] = args.max_in_flight
        if changes:
            manifest = manifest.with_runner(**changes)
        out = args.out or os.path.join("out", manifest.name)
        log_file = logs.use_dataset_dir(out, "run")
        result = run_job(manifest, out_dir=out, overwrite=args.overwrite,
                         beam_args=args.beam_args)  # Beam's own options, after --
    except (ConfigError, JobError, FileNotFoundError) as exc:
        print(f"steplabel: error: {exc}", file=sys.stderr)
        if log_file and os.path.exists(log_file):
            print(f"steplabel: engine and library logs: {log_file}", file=sys.stderr)
        return 2
    ok = result.stats["reconciliation"]["ok"]
    if args.json:
        print(json.dumps({"dataset": out, "completed": ok, "seconds": round(result.seconds, 3),
                          "log_file": log_file, "info": result.info, "stats": result.stats},
                         indent=2, sort_keys=True, default=str))
    else:
        print(describe(result))
    for warning in result.stats.get("warnings", ()):
        print(f"steplabel: warning: {warning}", file=sys.stderr)
    if not ok:
        print("steplabel: error: problems in and problems accounted for differ; the dataset "
              "is not marked COMPLETED", file=sys.stderr)
        return 1
    print(f"[steplabel] dataset written to {out}" + (
        f" (engine and library logs: {log_file})" if log_file else ""),
        file=sys.stderr if args.json else sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    # Logging first: importing the commands (Beam) already logs.
    with logs.command_logging(verbose=False) as command_logs:
        parser = _parser()
        args = parse_arguments(parser, sys.argv[1:] if argv is None else argv)
        command_logs.set_verbose(args.verbose)
        with logs.results_on_stdout():
            try:
                return _dispatch(parser, args)
            finally:
                # Engines still running (the job's workers keep theirs) stop now, while their
                # shutdown's records still reach the log file; at exit would be too late.
                shutdown_live_engines()


def _dispatch(parser: argparse.ArgumentParser, args) -> int:
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "run":
        return _run(args)
    if args.command == "demo-data":
        if args.kind == "code":
            count = write_code_problems(args.out, count=args.count or 16, seed=args.seed)
        else:
            count = write_problems(args.out, count=args.count or 24, seed=args.seed,
                                   kind=args.kind)
        print(f"[steplabel] wrote {count} problems to {args.out}")
        return 0
    module = _command_module(args.command)
    out_argument = LOGGED_COMMANDS.get(args.command)
    if out_argument and getattr(args, out_argument, None):
        logs.use_dataset_dir(getattr(args, out_argument), args.command)
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
