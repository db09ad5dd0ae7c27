"""The benchmark suite: one command, JSON per benchmark and a Markdown summary.

    .venv/bin/python benchmarks/run_all.py [--skip-setup]

Runs, one after another on a quiet machine (each figure is a ratio or a count measured side by
side within one run):
1. set-up and start-up: a fresh environment with scripts/setup.sh (pip's cache helps), the model
   conversion into an empty cache, engine start;
2. engine throughput of the embedded model (16 prompts × n=4 × 64 tokens);
3. engine saturation: the same request mix through the pipeline and the bare engine, and the
   Monte Carlo prefix-cache share;
4. annotation cost: scripted planted-error policy (M = 4..32) and the embedded model;
5. scale: 100, 1,000, 10,000 and 100,000 problems with an instant engine (10,000 also on the
   portable runner with two workers).
Writes benchmarks/results/*.json and benchmarks/results/SUMMARY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def run(script: str, *args: str) -> dict:
    started = time.perf_counter()
    print(f"[bench] {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"[bench] {script} done in {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads((RESULTS / script.replace(".py", ".json")).read_text())


def setup_times() -> dict:
    with tempfile.TemporaryDirectory(prefix="steplabel-setup-") as tmp:
        env = {**os.environ, "STEPLABEL_VENV": str(Path(tmp) / "venv"),
               "STEPLABEL_CACHE_DIR": str(Path(tmp) / "cache")}
        started = time.perf_counter()
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - started
        size = subprocess.run(["du", "-sm", str(Path(tmp) / "venv")], capture_output=True,
                              text=True, check=True).stdout.split()[0]
        venv_python = str(Path(tmp) / "venv" / "bin" / "python")
        started = time.perf_counter()
        subprocess.run([venv_python, "-m", "steplabel.models", "prepare", "--force"], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        convert = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([venv_python, "-m", "steplabel.models", "prepare"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        verify = time.perf_counter() - started
    report = {"setup_seconds": round(total, 1), "environment_mib": int(size),
              "model_conversion_seconds": round(convert, 1),
              "model_verify_seconds": round(verify, 1)}
    (RESULTS / "setup.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(results: dict) -> str:
    lines = ["# steplabel benchmarks", ""]
    if "setup" in results:
        s = results["setup"]
        lines += ["## Set-up and start-up", "",
                  f"- set-up (fresh venv, pip cache warm): {s['setup_seconds']} s; environment "
                  f"{s['environment_mib']} MiB",
                  f"- model conversion (GGUF → safetensors): {s['model_conversion_seconds']} s; "
                  f"verification on later runs: {s['model_verify_seconds']} s", ""]
    e = results["engine"]
    lines += ["## Engine", "",
              f"- engine start: {e['engine_start_s']} s",
              f"- {e['prompts']} prompts × n={e['n']} × {e['max_tokens']} tokens: "
              f"{e['generated_tokens_per_s']} generated tokens/s ({e['dtype']})", ""]
    t = results["saturation"]
    lines += ["## Saturation and prefix cache", "",
              f"{t.get('problems')} problems, {t.get('in_flight')} in flight, "
              f"{t.get('requests')} requests (`saturation.py --problems {t.get('problems')} "
              f"--in-flight {t.get('in_flight')}`)", "",
              "| | tokens/s | generated tokens | seconds |", "|---|---:|---:|---:|",
              f"| pipeline | {t['pipeline']['tokens_per_s']} | {t['pipeline']['generated_tokens']} "
              f"| {t['pipeline']['seconds']} |",
              f"| bare engine | {t['bare_engine']['tokens_per_s']} | "
              f"{t['bare_engine']['generated_tokens']} | {t['bare_engine']['seconds']} |", "",
              f"- saturation ratio, whole run: **{t['saturation_ratio']}**; steady state (10-90% "
              f"of tokens): **{t.get('steady_saturation_ratio')}** (target ≥ 0.90: whole run "
              f"{'met' if t['targets']['saturation_ratio_ge_0.90'] else 'NOT met'}, steady "
              f"{'met' if t['targets'].get('steady_saturation_ratio_ge_0.90') else 'NOT met'})",
              f"- Monte Carlo prompt tokens served from the prefix cache: "
              f"**{t['mc_prefix_cache_share']:.1%}** (target ≥ 80%: "
              f"{'met' if t['targets']['mc_prefix_cache_share_ge_0.80'] else 'NOT met'})", ""]
    a = results["annotation_cost"]
    lines += ["## Annotation cost, scripted planted-error policy", "",
              "| policy | M | MC acc | MC rollouts | BS acc | BS rollouts | MC/BS |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in a.get("rows", []):
        lines.append(f"| {row['policy']} | {row['num_steps']} | {row['mc_accuracy']:.3f} | "
                     f"{row['mc_rollouts_mean']:.1f} | {row['bs_accuracy']:.3f} | "
                     f"{row['bs_rollouts_mean']:.1f} | {row['mc_rollouts_mean'] / row['bs_rollouts_mean']:.1f}x |")
    lines += ["", "Monte Carlo stopping rules (k = 8, simulated judge; rollouts per kept step "
              "label, and the factor against fixed k):", "",
              "| policy | M | fixed | decided | + first-error-only | + consensus-guided "
              "| same kept labels |", "|---|---:|---:|---:|---:|---:|---|"]
    by_case: dict = {}
    for row in a.get("stopping_rows", []):
        by_case.setdefault((row["policy"], row["num_steps"]), {})[row["variant"]] = row
    for (policy, m), variants in by_case.items():
        fixed = variants["fixed"]["rollouts_per_localization"]
        cells = [f"{v['rollouts_per_kept_step_label']:.2f} "
                 f"({fixed / v['rollouts_per_localization']:.2f}x)"
                 if v["rollouts_per_kept_step_label"] is not None else "-"
                 for v in variants.values()]
        same = all(v.get("identical_kept_labels", True) for v in variants.values())
        lines.append(f"| {policy} | {m} | {' | '.join(cells)} | {same} |")
    c = results["embedded_cost"]
    lines += ["", "## Annotation cost, embedded model", "",
              "| manifest | variant | MC rollouts | kept labels | rollouts / kept step label "
              "| vs fixed | same kept labels |", "|---|---|---:|---:|---:|---:|---|"]
    for name, report in c.get("manifests", {}).items():
        for variant, v in report["variants"].items():
            lines.append(f"| {name} | {variant} | {v['rollouts']} | {v['kept_step_labels']} "
                         f"| {v['rollouts_per_kept_step_label']} | {v['factor_vs_fixed']}x "
                         f"| {v['identical_kept_labels_to_fixed']} |")
        o = report.get("omegaprm")
        if o:
            lines.append(f"| {name} | OmegaPRM binary search | {o['search_rollouts']} "
                         f"| {o['located']} first errors | {o['search_rollouts_per_localization']}"
                         f" per localization ({o['all_rollouts_per_localization']} with the "
                         f"pre-filter) | | |")
    lines.append("")
    sc = results["scale"]
    lines += ["## Scale (instant engine, full Beam pipeline)", "",
              "| runner | problems | wall s | ms/problem (wall) | ms/problem beyond fixed cost "
              "| launcher peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
    for row in sc["runs"] + sc.get("portable_runs", []):
        lines.append(f"| {row['runner']} | {row['problems']} | {row['seconds']} "
                     f"| {row['ms_per_problem']} | {row.get('ms_per_problem_beyond_fixed', '')} "
                     f"| {row['peak_rss_mib']} |")
    targets = sc["targets"]
    lines += ["", f"- time per problem beyond the fixed cost, 100,000 / 1,000: "
              f"{sc.get('time_per_problem_ratio_1000_to_last')} "
              f"({'met' if targets['time_per_problem_flat_within_20pct'] else 'NOT met'})",
              f"- CPU time per problem beyond the fixed cost, 100,000 / 1,000: "
              f"{sc.get('cpu_time_per_problem_ratio_1000_to_last')}",
              f"- launcher peak memory, 100,000 / 1,000: "
              f"{sc.get('launcher_peak_rss_ratio_1000_to_last')} "
              f"({'met' if targets['memory_flat_within_20pct'] else 'NOT met'})"]
    if sc.get("wave_size"):
        lines.append(f"- local runner waves of {sc['wave_size']:,} problems")
    repeated = [row for row in sc["runs"] if row.get("seconds_of_each_run")]
    if repeated:
        sizes = ", ".join(f"{row['problems']:,}" for row in repeated)
        lines.append(f"- {sizes} problems: the "
                     f"run of median wall time of {len(repeated[0]['seconds_of_each_run'])} "
                     f"runs each")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-setup", action="store_true")
    parser.add_argument("--reuse", nargs="*", default=[],
                        help="benchmarks whose results/*.json to reuse instead of rerunning "
                             "(e.g. setup engine_throughput)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    results = {}

    def get(name: str, script: str) -> dict:
        if name in args.reuse:
            return json.loads((RESULTS / f"{name}.json").read_text())
        return run(script)

    if "setup" in args.reuse:
        results["setup"] = json.loads((RESULTS / "setup.json").read_text())
    elif not args.skip_setup:
        print("[bench] set-up", flush=True)
        results["setup"] = setup_times()
    results["engine"] = get("engine_throughput", "engine_throughput.py")
    results["saturation"] = get("saturation", "saturation.py")
    results["annotation_cost"] = get("annotation_cost", "annotation_cost.py")
    if "embedded_cost" in args.reuse:
        results["embedded_cost"] = json.loads((RESULTS / "embedded_cost.json").read_text())
    else:
        for manifest in ("jobs/demo.yaml", "jobs/gsm8k.yaml"):
            results["embedded_cost"] = run("embedded_cost.py", str(ROOT / manifest))
    results["scale"] = get("scale", "scale.py")
    ran = [name for name in ("setup", "engine_throughput", "saturation", "annotation_cost",
                             "embedded_cost", "scale") if name not in args.reuse]
    text = summary(results) + (f"\nSuite time: {time.perf_counter() - started:.0f} s"
                               f" (rerun: {', '.join(ran) or 'none, every result reused'})\n")
    (RESULTS / "SUMMARY.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
