"""Annotation cost on the embedded model: Monte Carlo's stopping rules side by side with
OmegaPRM's binary search, on a job manifest (the demo, ``jobs/gsm8k.yaml``).

    .venv/bin/python benchmarks/embedded_cost.py jobs/demo.yaml [--dataset DIR]

1. Runs the manifest with ``steplabel run`` (or reads a finished dataset of it: ``--dataset``).
2. Starts the manifest's completer (vLLM, float32) and labels every usable solution of that
   dataset again with four Monte Carlo variants, the same seeds for all: ``fixed`` (k rollouts
   per step), ``decided`` (stop when the hard label is decided), ``+ first-error-only`` (no
   rollout after the first step decided negative) and ``+ consensus-guided`` (the judge's
   verdict, read from the dataset, first: no rollout consensus cannot use; the job's default).
3. For each: Monte Carlo rollouts and generated tokens, the trajectories and step labels
   consensus keeps (MC's first error = the judge's), rollouts per kept step label and per
   first-error localization, and whether the kept labels are identical to fixed k's (they must
   be, by construction). The guided variant must also reproduce the job's own kept rows.
4. Where the guided variant's rollouts go: per step decided positive, negative, unknown.
5. OmegaPRM, from the job's rows: rollouts per located first error, pre-filter included.

Writes ``benchmarks/results/embedded_cost.json`` (one entry per manifest name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "embedded_cost.json"

VARIANTS = {
    "fixed": dict(stopping="fixed", first_error_only=False, consensus_guided=False),
    "decided": dict(stopping="decided", first_error_only=False, consensus_guided=False),
    "+ first-error-only": dict(stopping="decided", first_error_only=True,
                               consensus_guided=False),
    "+ consensus-guided": dict(stopping="decided", first_error_only=True,
                               consensus_guided=True),
}
FINAL_VERDICT = {True: "correct", False: "incorrect", None: "unknown"}


def run_job(manifest_path: str, out: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "steplabel", "run", manifest_path, "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def usable_solutions(dataset: str) -> list[dict]:
    """Every labelled solution of the dataset (kept and rejected, not cut-off samples)."""
    from steplabel.dataset import storage

    rows = [*storage.iter_rows(dataset, "trajectories"), *storage.iter_rows(dataset, "rejected")]
    rows = [r for r in rows if not r.get("policy_truncated")]
    return sorted(rows, key=lambda r: (r["problem_id"], r["solution_index"]))


async def label_all(engine, manifest, config, rows) -> list:
    from steplabel.annotators.monte_carlo import MonteCarloAnnotator
    from steplabel.annotators.stages import StageContext

    ctx = StageContext(manifest)
    annotator = MonteCarloAnnotator(engine, config, run_seed=manifest.seed)

    async def one(row):
        guide = ({"judge_first_error": row["judge_first_error"]}
                 if config.consensus_guided else {})
        return await annotator.annotate(
            problem_id=row["problem_id"], solution_index=row["solution_index"],
            prompt=ctx.solution_prompt(engine, row["question"]), steps=list(row["steps"]),
            splitter=ctx.splitter, gold_answer=row["gold_answer"],
            final_verdict=FINAL_VERDICT[row["final_answer_correct"]], **guide)

    return await asyncio.gather(*(one(row) for row in rows))


def kept_labels(results, rows) -> list:
    from steplabel.annotators.consensus import consensus, consensus_labels

    out = []
    for result, row in zip(results, rows):
        decision = consensus(result.first_error_index, row["judge_first_error"],
                             mc_stopped=result.stopped)
        out.append(consensus_labels(decision.first_error, result.num_steps)
                   if decision.keep else None)
    return out


def where_rollouts_go(results, k: int) -> dict:
    """Rollouts of the estimated steps by their decision, and how many were cut off."""
    out = {"positive": 0, "negative": 0, "unknown": 0, "steps_positive": 0,
           "steps_negative": 0, "steps_unknown": 0, "cut_off": 0}
    for r in results:
        for t in range(r.num_steps - 1):
            spent = r.n_total[t] + r.n_unknown[t]
            if spent == 0:
                continue
            kind = ("unknown" if r.hard_labels[t] is None
                    else "positive" if r.hard_labels[t] else "negative")
            out[kind] += spent
            out[f"steps_{kind}"] += 1
            out["cut_off"] += r.n_truncated[t]
    return out


def omegaprm_costs(dataset: str) -> dict:
    from steplabel.dataset import storage

    searches = list(storage.iter_rows(dataset, "omegaprm_searches"))
    filtered = [r for r in storage.iter_rows(dataset, "filtered")
                if r["stage"] == "omegaprm_prefilter"]
    figures = json.loads(Path(dataset, "stats.json").read_text())
    located = [s for s in searches if s["first_error"] is not None]
    rollouts = figures.get("counters", {}).get("omegaprm_rollouts")
    return {
        "searches": len(searches),
        "located": len(located),
        "questions_filtered_by_prefilter": len(filtered),
        "search_rollouts": sum(s["rollouts_used"] for s in searches),
        "search_rollouts_per_localization": round(
            sum(s["rollouts_used"] for s in searches) / len(located), 2) if located else None,
        "all_rollouts_incl_prefilter": rollouts,
        "all_rollouts_per_localization": round(rollouts / len(located), 2)
        if located and rollouts is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--dataset", help="a finished dataset of MANIFEST (skips the run)")
    args = parser.parse_args(argv)

    from steplabel.engines.host import EngineHost
    from steplabel.schemas.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    if manifest.monte_carlo is None or manifest.judge is None or manifest.consensus is None:
        parser.error("the manifest needs monte_carlo, judge and consensus")
    # No machine paths in the results: the manifest as the repository names it.
    path = Path(args.manifest).resolve()
    shown = (str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent)
             else f"jobs/{path.name}")
    report: dict = {"manifest": shown, "name": manifest.name,
                    "dataset": "read from a finished run" if args.dataset else "run here"}
    with tempfile.TemporaryDirectory(prefix="steplabel-cost-") as tmp:
        dataset = args.dataset or str(Path(tmp, "out"))
        if not args.dataset:
            report["job_seconds"] = round(run_job(args.manifest, dataset), 1)
        rows = usable_solutions(dataset)
        report["omegaprm"] = omegaprm_costs(dataset) if manifest.omegaprm else None
        job_kept = [r["labels"] if r["consensus_keep"] else None for r in rows]

        host = EngineHost()
        engine = host.engine(manifest.models.completer_model)
        base = manifest.monte_carlo
        results, variants = {}, {}
        for name, settings in VARIANTS.items():
            config = replace(base, **settings)
            started = time.perf_counter()
            results[name] = host.run(label_all(engine, manifest, config, rows))
            seconds = time.perf_counter() - started
            kept = kept_labels(results[name], rows)
            rollouts = sum(r.rollouts for r in results[name])
            kept_steps = sum(len(labels) for labels in kept if labels is not None)
            localized = sum(r.first_error_index is not None for r in results[name])
            variants[name] = {
                "rollouts": rollouts,
                "generated_tokens": sum(r.cost.get("generated_tokens", 0)
                                        for r in results[name]),
                "seconds": round(seconds, 1),
                "kept_trajectories": sum(labels is not None for labels in kept),
                "kept_step_labels": kept_steps,
                "rollouts_per_kept_step_label": round(rollouts / kept_steps, 2)
                if kept_steps else None,
                "first_errors_known": localized,
                "rollouts_per_localization": round(rollouts / localized, 2)
                if localized else None,
                "identical_kept_labels_to_fixed": kept == kept_labels(results["fixed"], rows),
            }
        fixed = results["fixed"]
        variants["decided"]["identical_hard_labels_to_fixed"] = all(
            a.hard_labels == b.hard_labels for a, b in zip(results["decided"], fixed))
        variants["+ consensus-guided"]["identical_kept_rows_to_the_job"] = (
            kept_labels(results["+ consensus-guided"], rows) == job_kept)
        for name, figures in variants.items():
            figures["factor_vs_fixed"] = round(
                variants["fixed"]["rollouts"] / max(1, figures["rollouts"]), 2)
        report.update(
            solutions=len(rows),
            steps=sum(len(r["steps"]) for r in rows),
            estimable_steps=sum(len(r["steps"]) - 1 for r in rows),
            k=base.rollouts,
            judge_verdicts={str(v): sum(r["judge_first_error"] == v for r in rows)
                            for v in sorted({r["judge_first_error"] for r in rows},
                                            key=lambda v: (v is not None, v or 0))},
            variants=variants,
            guided_rollouts_by_decision=where_rollouts_go(results["+ consensus-guided"],
                                                          base.rollouts),
            fixed_rollouts_by_decision=where_rollouts_go(fixed, base.rollouts),
        )
    everything = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "manifests" not in everything:
        everything = {"manifests": {}}
    everything["manifests"][manifest.name] = report
    RESULTS.write_text(json.dumps(everything, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
