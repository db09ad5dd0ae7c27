"""The ``steplabel`` command line. Flags are read here only; stages get typed config."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from steplabel.pipelines import logs

#: Commands that live in their own modules (``steplabel.<package>.<module>``) provide
#: ``add_arguments(parser)`` and ``run(args) -> int`` (exit status).
COMMAND_MODULES = {
    "regenerate": ("dataset.regenerate", "rerun a job from its manifest.lock.json and verify the result"),
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
    module, _ = COMMAND_MODULES[name]
    try:
        return importlib.import_module(f"steplabel.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"steplabel.{module}":
            return None
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steplabel",
        description="Manufacture step-labelled reasoning data for process reward models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show library and engine logs on the terminal (they always "
                        "go to the dataset's logs/ folder), steplabel's at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a job manifest end to end (Beam pipeline)")
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

    data = sub.add_parser("demo-data", help="write the generated arithmetic (or, with --code, "
                          "Python) problem set")
    data.add_argument("--out", required=True, help="JSONL file to write")
    data.add_argument("--code", action="store_true",
                      help="small Python functions with tests (grader python_tests)")
    data.add_argument("--count", type=int, default=None, help="problems (24; --code: 16)")
    data.add_argument("--seed", type=int, default=0)

    for name, (_, text) in COMMAND_MODULES.items():
        module = _command_module(name)
        if module is None:
            cmd = sub.add_parser(name, help=f"{text} (not built yet)")
            cmd.add_argument("args", nargs="*")
        else:
            module.add_arguments(sub.add_parser(name, help=text, description=text))
    return parser


def _run(args) -> int:
    from steplabel.pipelines.job import JobError, describe, run_job
    from steplabel.schemas.config import ConfigError
    from steplabel.schemas.manifest import load_manifest

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
        beam_args = [a for a in args.beam_args if a != "--"]  # Beam's own options
        result = run_job(manifest, out_dir=out, overwrite=args.overwrite, beam_args=beam_args)
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
        # Options steplabel does not know are Beam pipeline options (run only).
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "run":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.beam_args = extra
        command_logs.set_verbose(args.verbose)
        with logs.results_on_stdout():
            try:
                return _dispatch(parser, args)
            finally:
                # Engines still running (the job's workers keep theirs) stop now, while their
                # shutdown's records still reach the log file; at exit would be too late.
                from steplabel.engines.vllm_engine import shutdown_live_engines

                shutdown_live_engines()


def _dispatch(parser: argparse.ArgumentParser, args) -> int:
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "run":
        return _run(args)
    if args.command == "demo-data":
        from steplabel.demo_data import write_code_problems, write_problems

        if args.code:
            count = write_code_problems(args.out, count=args.count or 16, seed=args.seed)
        else:
            count = write_problems(args.out, count=args.count or 24, seed=args.seed)
        print(f"[steplabel] wrote {count} problems to {args.out}")
        return 0
    module = _command_module(args.command)
    out_argument = LOGGED_COMMANDS.get(args.command)
    if module is not None and out_argument and getattr(args, out_argument, None):
        logs.use_dataset_dir(getattr(args, out_argument), args.command)
    if module is None:
        print(f"steplabel {args.command}: not built yet ({COMMAND_MODULES[args.command][1]})",
              file=sys.stderr)
        return 2
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
