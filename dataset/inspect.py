"""``steplabel inspect DATASET [--json] [--html FILE]``: label statistics of a dataset.

Prints, for the whole dataset and for each source, the figures of
:func:`steplabel.dataset.stats.compute_stats`: rows and steps, positive-step rate, labels by
step index, first-error position histogram, Monte Carlo value distribution (share of exact 0
and 1), judge-vs-Monte-Carlo first-error confusion, consensus keep rate and reject reasons,
pre-filter drop rate, dead-letter reasons, outcome-correct trajectories that still carry a
negative step, and cost per label. ``--json`` prints the same figures as JSON; ``--html FILE``
writes one self-contained report (plots as PNG embedded in the page, no network needed).

The statistics are recomputed from the Parquet shards, streaming (memory stays flat), so they
describe the dataset as it is on disk, whatever version wrote its ``stats.json``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from typing import Any

from steplabel.annotators.sandbox import OUTCOMES
from steplabel.dataset import storage
from steplabel.dataset.card import rewrite_card
from steplabel.dataset.stats import (
    INDEX_BUCKETS,
    MC_BUCKETS,
    add_omegaprm_cost,
    WIDTH_BUCKETS,
    compute_stats,
    truncation_warnings,
)
from steplabel.dataset.show import (
    SYMBOLS,
    critiqued_name,
    first_error_marks,
    first_error_texts,
    sample_trajectories,
    select_critiques,
)
from steplabel.schemas.records import OUTPUTS

#: Sources beyond this many get tables but no plots in the HTML report (keeps it readable).
MAX_SOURCES_WITH_PLOTS = 20


class InspectError(RuntimeError):
    """The directory is not a dataset that can be inspected."""


def dataset_report(dataset_dir: str) -> dict:
    """Everything ``inspect`` shows: identity of the dataset plus the streamed statistics."""
    if not any(storage.output_files(dataset_dir, output) for output in OUTPUTS):
        raise InspectError(f"{dataset_dir} holds no steplabel output shards")
    info = storage.read_json_if_exists(storage.join(dataset_dir, "info.json")) or {}
    written = storage.read_json_if_exists(storage.join(dataset_dir, "stats.json")) or {}
    stats = compute_stats(dataset_dir)
    stats["overall"] = add_omegaprm_cost(stats["overall"], written.get("counters", {}))
    return {
        "dataset": dataset_dir,
        "name": info.get("name"),
        "manifest_hash": info.get("manifest_hash"),
        "schema_version": info.get("schema_version"),
        "content_hash": info.get("content_hash"),
        "completed": storage.exists(storage.join(dataset_dir, storage.COMPLETED)),
        **stats,
        # Beam counters of the run that wrote the dataset (not recomputable from the shards).
        "run_counters": written.get("counters", {}),
        # What the run measured that depends on scheduling (prefix-cache hits): not the data's.
        "run": written.get("run", {}),
        "warnings": written.get("warnings") or truncation_warnings(stats),
        # python_tests jobs: programs run in the sandbox, by outcome (stats.json's sandbox).
        "sandbox": written.get("sandbox"),
    }


# ---------------------------------------------------------------------------------------------
# Text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pairs(mapping: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"


#: Stage names in text figures.
STAGE_LABELS = {"mc": "MC", "omegaprm": "OmegaPRM"}


def _judge_parse_lines(parse: dict) -> list[str]:
    """How the judge's votes were read: one row per parse reason, most frequent first."""
    votes = parse.get("votes") or 0
    if not votes:
        return []
    reasons = parse["reasons"]
    width = max(len(reason) for reason in reasons)
    lines = [f"judge votes by parse reason ({votes} votes; only ok is a readable verdict):"]
    lines += [f"  {reason:<{width}} {count:>6} {_pct(count / votes):>7}"
              for reason, count in reasons.items()]
    return lines


def render_group(title: str, s: dict) -> str:
    """One group's figures as text."""
    steps = s["steps"]
    lines = [f"== {title} ==",
             f"problems: {s['problems']}",
             f"rows: {_pairs({k: v for k, v in s['rows'].items() if v})}",
             f"steps: {steps['all']} in all trajectories, {steps['kept']} in kept ones, "
             f"{steps['labelled']} labelled ({steps['positive']} positive, "
             f"{steps['negative']} negative)",
             f"positive-step rate: {_pct(s['positive_step_rate'])}"]
    if s["labels_by_step_index"]:
        lines.append("labels by step index (kept trajectories):")
        lines.append(f"  {'index':>6} {'positive':>9} {'negative':>9} {'positive rate':>14}")
        for index, cell in s["labels_by_step_index"].items():
            lines.append(f"  {index:>6} {cell['positive']:>9} {cell['negative']:>9} "
                         f"{_pct(cell['positive_rate']):>14}")
    lines.append(f"first-error position (kept, final labels): "
                 f"{_pairs(s['first_error_histogram'])}")
    mc = s["mc_values"]
    lines.append(f"Monte Carlo values: {mc['count']} values, exact 0 "
                 f"{_pct(mc['share_exact_0'])}, exact 1 {_pct(mc['share_exact_1'])}")
    if mc["count"]:
        lines.append("  " + " | ".join(f"{k}: {v}" for k, v in mc["histogram"].items()))
    lines += posterior_lines(s.get("mc_posterior"))
    confusion = s["judge_vs_mc_first_error"]
    if confusion["matrix"]:
        columns = [k for k in INDEX_BUCKETS
                   if any(k in row for row in confusion["matrix"].values())]
        lines.append("judge vs Monte Carlo first error (rows: Monte Carlo, columns: judge):")
        corner = "MC/judge"
        lines.append("  " + f"{corner:>10}" + "".join(f"{c:>8}" for c in columns))
        for mc_key, row in confusion["matrix"].items():
            lines.append("  " + f"{mc_key:>10}" + "".join(f"{row.get(c, 0):>8}" for c in columns))
        lines.append(f"  agreement: {_pct(confusion['agreement_rate'])} of "
                     f"{confusion['both_known']} with both indices known")
    truncation = s.get("truncation") or {}
    if truncation:
        lines.append("cut off at max_tokens: " + "; ".join(
            f"{stage.replace('_', ' ')} {c['truncated']} of {c['samples']} "
            f"({_pct(c['share'])})" for stage, c in truncation.items() if c["samples"]))
    consensus = s["consensus"]
    lines.append(f"consensus: kept {consensus['kept']} of {consensus['evaluated']} "
                 f"({_pct(consensus['keep_rate'])}); reject reasons: "
                 f"{_pairs(consensus['reject_reasons'])}")
    lines += _judge_parse_lines(s.get("judge_parse_reasons") or {})
    prefilter = s["prefilter"]
    lines.append(f"pre-filter: dropped {prefilter['dropped']} of {prefilter['checked']} "
                 f"questions ({_pct(prefilter['drop_rate'])}); filtered rows: "
                 f"{_pairs(s['filtered'])}")
    lines.append(f"dead letters: {_pairs(s['dead_letter'])}")
    outcome = s["correct_outcome_with_negative_step"]
    lines.append("correct final answer but a negative step: " + "; ".join(
        f"{name.replace('_', ' ')} {cell['with_negative_step']} of {cell['correct_outcome']} "
        f"({_pct(cell['rate'])})" for name, cell in outcome.items()))
    lines.append("cost: " + "; ".join(
        f"{stage} {c['rollouts']} rollouts, {c['generated_tokens']} generated tokens, "
        f"{c['prompt_tokens']} prompt tokens"
        for stage, c in s["cost"].items() if c["requests"] or c["rollouts"]))
    per_label = s["cost_per_label"]
    with_omegaprm = per_label.get("with_omegaprm")
    lines.append(f"cost per kept step label ({per_label['kept_step_labels']} labels): "
                 f"{_num(per_label['rollouts'])} rollouts, "
                 f"{_num(per_label['generated_tokens'], 1)} generated tokens"
                 + (" without OmegaPRM" if with_omegaprm else ""))
    if with_omegaprm:
        lines.append(f"  with OmegaPRM: {_num(with_omegaprm['rollouts'])} rollouts, "
                     f"{_num(with_omegaprm['generated_tokens'], 1)} generated tokens; "
                     "generated tokens by stage: " + ", ".join(
                         f"{STAGE_LABELS.get(stage, stage)} {_num(c['generated_tokens'], 1)}"
                         for stage, c in per_label["by_stage"].items()))
    omega = s["omegaprm"]
    if omega["states"] or omega["rollouts"]:
        lines.append(f"OmegaPRM: states {_pairs(omega['states'])}; {omega['labelled_states']} "
                     f"labelled ({_pct(omega['positive_state_rate'])} positive); "
                     f"{omega['rollouts']} rollouts, {_num(omega['rollouts_per_state_label'])} "
                     "per state label")
        if omega.get("estimated_states"):  # schema 1.4: the states' posterior
            lines.append(f"  posterior: {omega['estimated_states']} states estimated, mean 90% "
                         f"interval width {_num(omega['interval_width_mean'])}, "
                         f"{omega['undecided_probes']} probes undecided")
    lines += critique_lines(s.get("critiques") or {})
    return "\n".join(lines)


def posterior_lines(posterior: dict | None) -> list[str]:
    """The posterior's figures (#26) as text: rollouts per estimated step, undecided steps,
    90% interval widths; nothing for a dataset without them (before schema 1.3)."""
    if not posterior or not posterior["estimated_steps"]:
        return []
    rollouts, undecided = posterior["rollouts_per_step"], posterior["undecided"]
    width = posterior["interval_width"]
    lines = [f"Monte Carlo posterior: {posterior['estimated_steps']} steps estimated, "
             f"{_num(rollouts['mean'])} rollouts per step "
             f"({_pairs({f'{k}:': v for k, v in rollouts['histogram'].items()})}); "
             f"undecided {undecided['count']} ({_pct(undecided['share'])})"]
    if width["count"]:
        lines.append(f"  90% interval width: mean {_num(width['mean'])}; " + " | ".join(
            f"{k}: {v}" for k, v in width["histogram"].items() if v))
    return lines


def critique_lines(c: dict) -> list[str]:
    """The critiques' figures as text lines (none when the dataset has no critiques)."""
    if not c.get("critiques"):
        return []
    lines = [f"critiques: kept {c['kept']} of {c['critiques']} ({_pct(c['keep_rate'])}), on "
             f"{c['solutions_with_kept']} of {c['solutions']} critiqued trajectories",
             f"  not kept: {_pairs(c['not_kept_reasons'])}",
             f"  tokens per kept critique: {_num(c['tokens_per_kept'], 1)} "
             f"({_num(c['generated_tokens_per_kept'], 1)} generated)"]
    if c["agreement_by_step_position"]:
        lines.append("  step verdicts agreeing with the trusted labels, by step index:")
        lines.append(f"  {'index':>6} {'checked':>8} {'agree':>6} {'rate':>7}")
        for index, cell in c["agreement_by_step_position"].items():
            lines.append(f"  {index:>6} {cell['checked']:>8} {cell['agree']:>6} "
                         f"{_pct(cell['rate']):>7}")
    return lines


def critic_skipped(counters: dict) -> str | None:
    """What ``critic.only_trusted`` saved, from the run's counters (None: nothing skipped)."""
    skipped = counters.get("critic_solutions_skipped")
    if not skipped:
        return None
    return (f"critic: {skipped} trajectories without trusted labels skipped "
            f"({counters.get('critic_requests_not_spent', 0)} requests, "
            f"{counters.get('critic_rollouts_not_spent', 0)} samples not spent; "
            f"{counters.get('critic_solutions', 0)} critiqued)")


def rollouts_saved(counters: dict) -> dict | None:
    """Monte Carlo rollouts spent and not needed (by why), from the run's counters; None when
    the run had no Monte Carlo. ``fixed_k``: what fixed k on every estimable step would spend."""
    if "mc_rollouts" not in counters:
        return None
    saved = {why: counters.get(f"mc_rollouts_saved_{why}", 0)
             for why in ("decided", "first_error", "consensus")}
    spent = counters["mc_rollouts"]
    fixed = spent + sum(saved.values())
    return {"spent": spent, "saved": saved, "fixed_k": fixed,
            "factor": round(fixed / spent, 2) if spent else None}


def _saved_line(saved: dict) -> str:
    why = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in saved["saved"].items() if v)
    factor = f", {saved['factor']}x fewer" if saved["factor"] else ""
    return (f"{saved['spent']} spent of {saved['fixed_k']} with fixed k{factor}"
            f"{f' (not needed: {why})' if why else ''}")


def sandbox_line(sandbox: dict) -> str:
    """``61 programs run: passed 13, failed 34, timeout 5, killed 9, unknown 0; 5 without a
    program; 0.21 s per run`` (a python_tests job's stats.json ``sandbox``)."""
    counts = sandbox["outcomes"]
    outcomes = ", ".join(f"{name} {counts.get(name, 0)}" for name in OUTCOMES)
    per_run = sandbox.get("wall_s_per_run")
    return (f"{sandbox['runs']} programs run: {outcomes}; {sandbox.get('no_program', 0)} "
            f"without a program" + (f"; {per_run:.2f} s per run" if per_run else ""))


def render_text(report: dict) -> str:
    head = [f"dataset: {report['dataset']} (name {report['name']!r}, manifest "
            f"{(report['manifest_hash'] or '')[:12]}, "
            f"{'COMPLETED' if report['completed'] else 'not completed'})"]
    if not report["grouping_exact"]:
        head.append("note: some shard is not sorted by problem_id; per-problem counts may "
                    "count a problem twice")
    head += [f"warning: {w}" for w in report.get("warnings") or ()]
    if report.get("content_hash"):
        head.append(f"content hash: {report['content_hash']}")
    cache = ((report.get("run") or {}).get("prefix_cache") or {}).get("all")
    if cache and cache.get("prompt_tokens"):
        head.append(f"prefix cache (the run that wrote it): {cache['cached_tokens']} of "
                    f"{cache['prompt_tokens']} prompt tokens ({_pct(cache['cached_share'])})")
    saved = rollouts_saved(report.get("run_counters") or {})
    if saved:
        head.append(f"Monte Carlo rollouts: {_saved_line(saved)}")
    if report.get("sandbox"):
        head.append(f"sandbox: {sandbox_line(report['sandbox'])}")
    skipped = critic_skipped(report.get("run_counters") or {})
    if skipped:
        head.append(skipped)
    parts = ["\n".join(head), render_group("whole dataset", report["overall"])]
    parts += [render_group(f"source {name}", s) for name, s in report["per_source"].items()]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# HTML


def _png(fig) -> str:
    """A matplotlib figure as a ``data:`` URI (PNG, base64)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.0, height: float = 3.2):
    # Figure + the Agg canvas directly: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


POSITIVE, NEGATIVE, NEUTRAL = "#3a923a", "#c03d3e", "#3274a1"
STAGE_NAMES = {"mc": "Monte Carlo", "omegaprm": "OmegaPRM",
               "omegaprm_prefilter_dropped": "pre-filter\n(dropped)"}


def _integer_counts(ax, axis: str = "y") -> None:
    """Whole-number ticks on a count axis (one item would get 0.2, 0.4, ...)."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def plot_labels_by_index(s: dict) -> str | None:
    cells = s["labels_by_step_index"]
    if not cells:
        return None
    fig = _figure()
    ax = fig.subplots()
    keys = list(cells)
    positive = [cells[k]["positive"] for k in keys]
    negative = [cells[k]["negative"] for k in keys]
    ax.bar(keys, positive, color=POSITIVE, label="positive")
    ax.bar(keys, negative, bottom=positive, color=NEGATIVE, label="negative")
    ax.set_xlabel("step index")
    ax.set_ylabel("labelled steps")
    ax.set_title("Labels by step index (kept trajectories)")
    _integer_counts(ax)
    ax.legend()
    return _png(fig)


def plot_first_error(s: dict) -> str | None:
    histogram = s["first_error_histogram"]
    if not histogram:
        return None
    fig = _figure()
    ax = fig.subplots()
    keys = list(histogram)
    ax.bar(keys, [histogram[k] for k in keys],
           color=[POSITIVE if k == "none" else NEGATIVE for k in keys])
    ax.set_xlabel("first wrong step (none: every step correct)")
    ax.set_ylabel("trajectories")
    ax.set_title("First-error position (kept, final labels)")
    _integer_counts(ax)
    return _png(fig)


def plot_mc_values(s: dict) -> str | None:
    mc = s["mc_values"]
    if not mc["count"]:
        return None
    fig = _figure(7.0)
    ax = fig.subplots()
    ax.bar(MC_BUCKETS, [mc["histogram"][k] for k in MC_BUCKETS],
           color=[NEGATIVE if k == "0" else POSITIVE if k == "1" else NEUTRAL
                  for k in MC_BUCKETS])
    ax.set_xlabel("Monte Carlo value (exact 0 and 1 apart)")
    ax.set_ylabel("steps")
    ax.tick_params(axis="x", labelrotation=45)
    _integer_counts(ax)
    ax.set_title(f"Monte Carlo values: exact 0 {_pct(mc['share_exact_0'])}, "
                 f"exact 1 {_pct(mc['share_exact_1'])}")
    return _png(fig)


def plot_posterior(s: dict) -> str | None:
    """Rollouts per estimated step and the widths of the steps' 90% intervals (#26)."""
    posterior = s.get("mc_posterior")
    if not posterior or not posterior["estimated_steps"]:
        return None
    fig = _figure(7.0)
    left, right = fig.subplots(1, 2)
    rollouts = posterior["rollouts_per_step"]["histogram"]
    left.bar(list(rollouts), list(rollouts.values()), color=NEUTRAL)
    left.set_xlabel("rollouts")
    left.set_ylabel("estimated steps")
    undecided = posterior["undecided"]
    left.set_title(f"Rollouts per step (undecided {_pct(undecided['share'])})")
    widths = posterior["interval_width"]["histogram"]
    right.bar(WIDTH_BUCKETS, [widths[k] for k in WIDTH_BUCKETS], color=NEUTRAL)
    right.set_xlabel("width of the 90% credible interval")
    right.tick_params(axis="x", labelrotation=45)
    right.set_title("Posterior interval widths")
    return _png(fig)


def plot_confusion(s: dict) -> str | None:
    matrix = s["judge_vs_mc_first_error"]["matrix"]
    if not matrix:
        return None
    rows = [k for k in INDEX_BUCKETS if k in matrix]
    columns = [k for k in INDEX_BUCKETS if any(k in row for row in matrix.values())]
    values = [[matrix[r].get(c, 0) for c in columns] for r in rows]
    fig = _figure(max(4.0, 1.5 + 0.6 * len(columns)), max(3.2, 1.2 + 0.5 * len(rows)))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("judge first error")
    ax.set_ylabel("Monte Carlo first error")
    top = max(max(row) for row in values) or 1
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > top / 2 else "black")
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    _integer_counts(bar.ax)
    ax.set_title("Judge vs Monte Carlo first error")
    return _png(fig)


def plot_consensus(s: dict) -> str | None:
    consensus = s["consensus"]
    if not consensus["evaluated"]:
        return None
    fig = _figure()
    ax = fig.subplots()
    keys = ["kept"] + list(consensus["reject_reasons"])
    counts = [consensus["kept"]] + list(consensus["reject_reasons"].values())
    ax.bar(keys, counts, color=[POSITIVE] + [NEGATIVE] * (len(keys) - 1))
    ax.set_ylabel("trajectories")
    ax.set_title(f"Consensus: keep rate {_pct(consensus['keep_rate'])}")
    _integer_counts(ax)
    return _png(fig)


def plot_cost(s: dict) -> str | None:
    """Rollouts and generated tokens by stage. With OmegaPRM's cost (run counters), its bar
    holds its pre-filter too, so the dropped questions' pre-filter is not drawn again."""
    stages = {k: v for k, v in s["cost"].items() if v["requests"] or v["rollouts"]}
    if "omegaprm" in stages:
        stages.pop("omegaprm_prefilter_dropped", None)
    if not stages:
        return None
    fig = _figure(7.0)
    left, right = fig.subplots(1, 2)
    keys = list(stages)
    names = [STAGE_NAMES.get(k, k) for k in keys]
    left.bar(names, [stages[k]["rollouts"] for k in keys], color=NEUTRAL)
    left.set_title("Rollouts by stage")
    right.bar(names, [stages[k]["generated_tokens"] for k in keys], color=NEUTRAL)
    right.set_title("Generated tokens by stage")
    for ax in (left, right):
        _integer_counts(ax)
    return _png(fig)


def plot_sources(per_source: dict) -> str | None:
    if len(per_source) < 2:
        return None
    figures = {
        "positive-step rate": lambda s: s["positive_step_rate"],
        "consensus keep rate": lambda s: s["consensus"]["keep_rate"],
        "pre-filter drop rate": lambda s: s["prefilter"]["drop_rate"],
        "correct answer, negative step": lambda s: s["correct_outcome_with_negative_step"][
            "final_labels"]["rate"],
    }
    names = list(per_source)[:MAX_SOURCES_WITH_PLOTS]
    fig = _figure(max(6.0, 1.2 * len(names)), 3.5)
    ax = fig.subplots()
    width = 0.8 / len(figures)
    for i, (label, value) in enumerate(figures.items()):
        ax.bar([x + i * width for x in range(len(names))],
               [value(per_source[n]) or 0 for n in names], width=width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    ax.set_ylim(0, 1)
    ax.set_title("Rates by source")
    ax.legend(fontsize="small")
    return _png(fig)


PLOTS = [plot_labels_by_index, plot_first_error, plot_mc_values, plot_confusion, plot_consensus,
         plot_cost, plot_posterior]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-top: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.k { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td class='k'>{html.escape(str(k))}</td><td>{html.escape(str(v))}"
                   "</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _omegaprm_cost_rows(per_label: dict) -> list[tuple[str, Any]]:
    """Cost per kept step label with OmegaPRM, and generated tokens by stage (when the run's
    counters gave OmegaPRM's cost: :func:`~steplabel.dataset.stats.add_omegaprm_cost`)."""
    with_omegaprm = per_label.get("with_omegaprm")
    if not with_omegaprm:
        return []
    rows = [("rollouts per kept step label, with OmegaPRM", _num(with_omegaprm["rollouts"])),
            ("generated tokens per kept step label, with OmegaPRM",
             _num(with_omegaprm["generated_tokens"], 1))]
    rows += [(f"generated tokens per kept step label: {STAGE_NAMES.get(stage, stage)}",
              _num(c["generated_tokens"], 1)) for stage, c in per_label["by_stage"].items()]
    return rows


def _group_html(title: str, s: dict, *, plots: bool) -> str:
    consensus, prefilter = s["consensus"], s["prefilter"]
    per_label, outcome = s["cost_per_label"], s["correct_outcome_with_negative_step"]
    without = " (without OmegaPRM)" if per_label.get("with_omegaprm") else ""
    rows = [
        ("problems", s["problems"]),
        *[(f"rows: {k}", v) for k, v in s["rows"].items()],
        ("steps (all / kept / labelled)",
         f"{s['steps']['all']} / {s['steps']['kept']} / {s['steps']['labelled']}"),
        ("positive-step rate", _pct(s["positive_step_rate"])),
        ("MC values: share exact 0 / exact 1",
         f"{_pct(s['mc_values']['share_exact_0'])} / {_pct(s['mc_values']['share_exact_1'])}"),
        ("judge-MC first-error agreement", _pct(s["judge_vs_mc_first_error"]["agreement_rate"])),
        *_posterior_rows(s.get("mc_posterior")),
        *[(f"cut off at max_tokens: {stage.replace('_', ' ')}",
           f"{_pct(c['share'])} ({c['truncated']} of {c['samples']})")
          for stage, c in (s.get("truncation") or {}).items() if c["samples"]],
        ("consensus keep rate", f"{_pct(consensus['keep_rate'])} "
                                f"({consensus['kept']} of {consensus['evaluated']})"),
        ("reject reasons", _pairs(consensus["reject_reasons"])),
        ("pre-filter drop rate", f"{_pct(prefilter['drop_rate'])} "
                                 f"({prefilter['dropped']} of {prefilter['checked']})"),
        ("filtered rows", _pairs(s["filtered"])),
        ("dead letters", _pairs(s["dead_letter"])),
        *[(f"correct answer with a negative step ({name.replace('_', ' ')})",
           f"{_pct(cell['rate'])} ({cell['with_negative_step']} of {cell['correct_outcome']})")
          for name, cell in outcome.items()],
        (f"rollouts per kept step label{without}", _num(per_label["rollouts"])),
        (f"generated tokens per kept step label{without}",
         _num(per_label["generated_tokens"], 1)),
        *_omegaprm_cost_rows(per_label),
        ("OmegaPRM rollouts per state label", _num(s["omegaprm"]["rollouts_per_state_label"])),
    ]
    parts = [f"<h2>{html.escape(title)}</h2>", _table(rows)]
    if s["labels_by_step_index"]:
        header = "<tr><th>step index</th><th>positive</th><th>negative</th><th>rate</th></tr>"
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{c['positive']}</td>"
                       f"<td>{c['negative']}</td><td>{_pct(c['positive_rate'])}</td></tr>"
                       for k, c in s["labels_by_step_index"].items())
        parts.append(f"<table>{header}{body}</table>")
    parts.append(_critiques_html(s.get("critiques") or {}))
    if plots:
        images = [uri for uri in (plot(s) for plot in PLOTS) if uri]
        parts.append("<div class='plots'>" + "".join(
            f'<img src="{uri}" alt="plot">' for uri in images) + "</div>")
    return "\n".join(parts)


def _posterior_rows(posterior: dict | None) -> list[tuple[str, Any]]:
    if not posterior or not posterior["estimated_steps"]:
        return []
    undecided = posterior["undecided"]
    return [("MC rollouts per estimated step", _num(posterior["rollouts_per_step"]["mean"])),
            ("MC steps undecided (adaptive budget)",
             f"{_pct(undecided['share'])} ({undecided['count']} of "
             f"{posterior['estimated_steps']})"),
            ("MC 90% interval width (mean)", _num(posterior["interval_width"]["mean"]))]


def _critiques_html(c: dict) -> str:
    """The critiques' figures (keep rate, reasons, tokens, agreement by step position)."""
    if not c.get("critiques"):
        return ""
    rows = [("critiques kept", f"{_pct(c['keep_rate'])} ({c['kept']} of {c['critiques']})"),
            ("trajectories with a kept critique",
             f"{c['solutions_with_kept']} of {c['solutions']}"),
            ("not kept, by reason", _pairs(c["not_kept_reasons"])),
            ("tokens per kept critique (all spent / kept)", _num(c["tokens_per_kept"], 1)),
            ("generated tokens per kept critique", _num(c["generated_tokens_per_kept"], 1))]
    parts = ["<h3>Critiques</h3>", _table(rows)]
    if c["agreement_by_step_position"]:
        header = "<tr><th>step index</th><th>verdicts checked</th><th>agree</th><th>rate</th></tr>"
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{cell['checked']}</td>"
                       f"<td>{cell['agree']}</td><td>{_pct(cell['rate'])}</td></tr>"
                       for k, cell in c["agreement_by_step_position"].items())
        parts.append(f"<table>{header}{body}</table>")
    return "\n".join(parts)


EXAMPLE_STYLE = """
.legend span.chip, .strip span { display: inline-block; width: 1.4em; height: 1.4em;
  line-height: 1.4em; text-align: center; color: #fff; font-size: 0.8em; border-radius: 2px;
  margin-right: 1px; vertical-align: middle; }
.legend { margin: 0.5em 0 1em; } .legend span.item { margin-right: 1.2em; }
details.example { border: 1px solid #ddd; border-left: 5px solid #999; border-radius: 4px;
  margin: 0.4em 0; padding: 0.3em 0.6em; }
details.example.kept { border-left-color: #3a923a; }
details.example.rejected { border-left-color: #c03d3e; }
details.example summary { cursor: pointer; }
.badge { display: inline-block; padding: 0 0.5em; border-radius: 3px; color: #fff;
  font-size: 0.85em; margin-right: 0.4em; }
.badge.kept { background: #3a923a; } .badge.rejected { background: #c03d3e; }
.strip { margin-left: 0.8em; white-space: nowrap; }
.strip.scale span { width: 2.4em; }
table.steps { width: 100%; } table.steps td { vertical-align: top; }
table.steps td.text { text-align: left; white-space: pre-wrap; font-family: ui-monospace,
  monospace; font-size: 0.85em; width: 75%; }
table.steps pre.code { margin: 0; padding: 0.2em 0.4em; background: #f4f4f4;
  white-space: pre; overflow-x: auto; }
table.steps td.lab { color: #fff; text-align: center; font-weight: bold; width: 1.6em; }
td.positive, span.positive { background: #3a923a; }
td.negative, span.negative { background: #c03d3e; }
td.unknown, span.unknown { background: #7a5ea8; }
td.no_label, span.no_label { background: #aaa; }
.mark { color: #c03d3e; font-weight: bold; white-space: nowrap; }
p.meta { margin: 0.3em 0; color: #444; } p.question { font-weight: bold; }
"""

LABEL_WORDS = {"positive": "positive", "negative": "negative", "unknown": "not estimated",
               "no_label": "no label (after the first error)"}


def _mc_colour(value: float | None) -> str:
    """Red (0) to green (1) through amber; grey when not estimated."""
    if value is None:
        return "#bbbbbb"
    v = min(1.0, max(0.0, value))
    low, mid, high = (0xc0, 0x3d, 0x3e), (0xe0, 0xb0, 0x30), (0x3a, 0x92, 0x3a)
    a, b, t = (low, mid, v / 0.5) if v < 0.5 else (mid, high, (v - 0.5) / 0.5)
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def _first_error_text(value) -> str:
    return "unknown" if value is None else "none" if value < 0 else str(value)


def _judge_votes(example: dict) -> str:
    votes = example["judge_votes"]
    return f" (votes {', '.join('?' if v is None else str(v) for v in votes)})" if votes else ""


def _step_text_html(step: dict) -> str:
    """A step's text; a code step (``show.trajectory_example``'s ``code``) in a ``<pre>``."""
    if step.get("code"):
        return f"<pre class='code'>{html.escape(step['text'])}</pre>"
    return html.escape(step["text"])


def _example_html(example: dict, *, open_: bool) -> str:

    e = html.escape
    status = "kept" if example["kept"] else "rejected"
    cells = []
    for step in example["steps"]:
        symbol = SYMBOLS[step["label_state"]][0]
        value = step["mc_value"]
        counts = (f" ({step['mc_n_correct']}/{step['mc_n_total']})"
                  if step["mc_n_total"] is not None else "")
        tip = (f"step {step['index']}: MC {'not estimated' if value is None else f'{value:.2f}'}"
               f"{counts}, {LABEL_WORDS[step['label_state']]}")
        cells.append(f"<span style='background:{_mc_colour(value)}' title='{e(tip)}'>"
                     f"{symbol}</span>")
    marks = first_error_marks(example)
    rows = []
    for step in example["steps"]:
        value = step["mc_value"]
        counts = ""
        if step["mc_n_total"] is not None:
            counts = f"{step['mc_n_correct']}/{step['mc_n_total']}"
            extra = [f"{step[k]} {w}" for k, w in (("mc_n_unknown", "unknown"),
                                                   ("mc_n_truncated", "cut off")) if step[k]]
            counts += f" ({', '.join(extra)})" if extra else ""
        mark = (f"  <span class='mark'>◀ first error: {e(', '.join(marks[step['index']]))}"
                "</span>" if step["index"] in marks else "")
        rows.append(
            f"<tr><td class='lab {step['label_state']}' "
            f"title='{LABEL_WORDS[step['label_state']]}'>"
            f"{SYMBOLS[step['label_state']][0]}</td><td>{step['index']}</td>"
            f"<td style='background:{_mc_colour(value)}33'>"
            f"{'–' if value is None else f'{value:.2f}'}</td><td>{e(counts)}</td>"
            f"<td class='text'>{_step_text_html(step)}{mark}</td></tr>")
    correct = example["final_answer_correct"]
    verdict = "correct" if correct else "unknown" if correct is None else "incorrect"
    labels_from = {"final": "final labels", "monte_carlo": "Monte Carlo labels (not kept)"}.get(
        example["labels_from"], "no labels")
    first_errors = " · ".join(e(part) for part in first_error_texts(
        example, _first_error_text, {"judge": _judge_votes}))
    summary = (f"<span class='badge {status}'>{status} · "
               f"{e(example['consensus_reason'] or 'no reason')}</span>"
               f"{e(str(example['problem_id']))} · solution {example['solution_index']} · "
               f"first error {_first_error_text(example['first_error'])}"
               f"<span class='strip'>{''.join(cells)}</span>")
    return (
        f"<details class='example {status}'{' open' if open_ else ''}><summary>{summary}"
        f"</summary><p class='meta question'>{e(example['question'] or '')}</p>"
        f"<p class='meta'>gold answer <b>{e(str(example['gold_answer']))}</b> · final answer "
        f"<b>{e('—' if example['final_answer'] is None else str(example['final_answer']))}"
        f"</b> ({verdict}"
        f"{': ' + e(example['outcome_reason']) if example['outcome_reason'] else ''})"
        f"{' · cut off at max_tokens' if example['policy_truncated'] else ''} · {labels_from}"
        f"</p><table class='steps'><tr><th>label</th><th>step</th><th>MC</th>"
        f"<th title='correct / graded rollouts from the step prefix'>counts</th>"
        f"<th style='text-align:left'>step text</th></tr>{''.join(rows)}</table>"
        f"<p class='meta'>first errors: {first_errors} · consensus: {status} "
        f"({e(example['consensus_reason'] or 'no reason recorded')})</p></details>")


def examples_html(examples: dict[str, list[dict]], totals: dict[str, int]) -> str:
    """The browsable examples section: kept and rejected trajectories, labels colour-coded,
    a strip of per-step Monte Carlo values in each summary line."""

    legend = "".join(
        f"<span class='item'><span class='chip {state}'>{SYMBOLS[state][0]}</span> "
        f"{LABEL_WORDS[state]}</span>" for state in LABEL_WORDS)
    scale = "".join(f"<span style='background:{_mc_colour(v / 4)}'>{v / 4:g}</span>"
                    for v in range(5))
    parts = ["<h2 id='examples'>Example trajectories</h2>",
             f"<div class='legend'>{legend}<br>strip: one cell per step, coloured by its Monte "
             f"Carlo value <span class='strip scale'>{scale}</span>, grey when not estimated, "
             "marked with the step's label; step indices are 0-based</div>"]
    for output, title in (("trajectories", "Kept"), ("rejected", "Rejected")):
        chosen = examples.get(output) or []
        parts.append(f"<h3>{title} ({len(chosen)} of {totals.get(output, 0)})</h3>")
        if not chosen:
            parts.append("<p>none</p>")
        parts += [_example_html(example, open_=index == 0)
                  for index, example in enumerate(chosen)]
    return "\n".join(parts)


def critique_examples_html(critiques: list[dict]) -> str:
    """Kept critiques (examples of :func:`steplabel.dataset.show.critique_example`): per step
    the critic's verdict and the trusted label, then the critique's text."""
    words = {True: "correct", False: "incorrect", None: "&mdash;"}
    parts = [f"<h2 id='critiques'>Example critiques ({len(critiques)} kept)</h2>"]
    for index, example in enumerate(critiques):
        summary = (f"{html.escape(str(example['problem_id']))} &middot; "
                   f"{html.escape(critiqued_name(example))} &middot; critique "
                   f"{example['sample_index']}: "
                   f"first error {_first_error_text(example['critique_first_error'])} "
                   f"(trusted, {html.escape(str(example['trusted_source']))}: "
                   f"{_first_error_text(example['trusted_first_error'])})")
        question = ((example["trajectory"] or {}).get("question") or example.get("question")
                    or "")
        rows = "".join(
            f"<tr><td>{step['index']}</td><td>{words[step['verdict']]}</td>"
            f"<td>{words[step['trusted']]}</td><td>{html.escape(step['text'])}</td></tr>"
            for step in example["steps"])
        parts.append(
            f"<details{' open' if index == 0 else ''}><summary>{summary}</summary>"
            f"<p>{html.escape(question)}</p><table><tr><th>step</th><th>critic</th>"
            f"<th>trusted</th><th>text</th></tr>{rows}</table>"
            f"<pre>{html.escape(example['critique'] or '')}</pre></details>")
    return "\n".join(parts)


def render_html(report: dict, examples: dict[str, list[dict]] | None = None,
                critiques: list[dict] | None = None) -> str:
    """One self-contained HTML page: tables, embedded PNG plots, example trajectories (when
    ``examples`` maps ``trajectories`` / ``rejected`` to examples of
    :func:`steplabel.dataset.show.trajectory_example`), the JSON figures."""
    title = f"steplabel dataset report: {report['name'] or report['dataset']}"
    sections = [_group_html("Whole dataset", report["overall"], plots=True)]
    if examples is not None:
        sections.append(examples_html(examples, report["overall"]["rows"]))
    if critiques:
        sections.append(critique_examples_html(critiques))
    comparison = plot_sources(report["per_source"])
    if comparison:
        sections.append(f"<h2>Sources compared</h2><div class='plots'>"
                        f'<img src="{comparison}" alt="rates by source"></div>')
    for index, (name, s) in enumerate(report["per_source"].items()):
        sections.append(_group_html(f"Source {name}", s,
                                    plots=index < MAX_SOURCES_WITH_PLOTS))
    saved = rollouts_saved(report.get("run_counters") or {})
    meta = _table([("dataset", report["dataset"]), ("name", report["name"]),
                   ("manifest hash", report["manifest_hash"]),
                   ("content hash", report.get("content_hash")),
                   ("completed", report["completed"]),
                   *([("Monte Carlo rollouts", _saved_line(saved))] if saved else []),
                   *([("sandbox", sandbox_line(report["sandbox"]))]
                     if report.get("sandbox") else []),
                   *([("critic", critic_skipped(report.get("run_counters") or {}))]
                     if critic_skipped(report.get("run_counters") or {}) else [])])
    figures = html.escape(json.dumps(report, indent=2, sort_keys=True, default=str))
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}{EXAMPLE_STYLE}</style></head>"
            f"<body>"
            f"<h1>{html.escape(title)}</h1>{meta}{''.join(sections)}"
            f"<h2>All figures (JSON)</h2><details><summary>show</summary><pre>{figures}</pre>"
            f"</details></body></html>\n")


# ---------------------------------------------------------------------------------------------
# Command line


def write_report(path: str, page: str) -> None:
    """Write the page atomically (local path or any Beam filesystem)."""
    if "://" not in path:
        from pathlib import Path

        path = str(Path(path).resolve())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes_atomic(path, page.encode("utf-8"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a steplabel dataset directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report with plots and example "
                        "trajectories to FILE")
    parser.add_argument("--write-card", action="store_true",
                        help="(re)write the dataset card DATASET/README.md (the configs header "
                        "datasets.load_dataset reads), e.g. for a dataset written before "
                        "cards existed")
    parser.add_argument("--examples", type=int, default=12, metavar="N",
                        help="example trajectories of each kind (kept, rejected) in the HTML "
                        "report (default 12)")


def run(args: argparse.Namespace) -> int:
    try:
        report = dataset_report(args.dataset)
    except InspectError as exc:
        print(f"steplabel inspect: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        print(render_text(report))
    if args.write_card:
        print(f"[steplabel] dataset card written to {rewrite_card(args.dataset)}",
              file=sys.stderr)
    if args.html:
        examples = {output: sample_trajectories(args.dataset, output, args.examples)
                    for output in ("trajectories", "rejected")} if args.examples > 0 else None
        critiques = (select_critiques(args.dataset, limit=args.examples)
                     if args.examples > 0 and storage.output_files(args.dataset, "critiques")
                     else None)
        write_report(args.html, render_html(report, examples, critiques))
        print(f"[steplabel] HTML report written to {args.html}", file=sys.stderr)
    return 0
