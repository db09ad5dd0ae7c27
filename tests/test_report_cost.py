"""The report's cost figures hold OmegaPRM (its cost comes from the run's counters: its rows
carry no tokens) and count plots have whole-number ticks."""

import pytest

from steplabel.dataset import inspect as inspect_module
from steplabel.dataset.inspect import _group_html, render_group
from steplabel.dataset.stats import LabelStats, add_omegaprm_cost

pytestmark = pytest.mark.unit

COUNTERS = {"omegaprm_rollouts": 300, "omegaprm_prompt_tokens": 9000,
            "omegaprm_generated_tokens": 11400}


def summary_with_cost():
    summary = LabelStats().summary()
    summary["cost"]["policy"].update(requests=36, rollouts=36, generated_tokens=3600)
    summary["cost"]["mc"].update(requests=20, rollouts=110, generated_tokens=1100)
    summary["cost"]["judge"].update(requests=29, rollouts=29, generated_tokens=700)
    summary["cost_per_label"]["kept_step_labels"] = 10
    summary["cost_per_label"]["rollouts"] = 17.5
    summary["cost_per_label"]["generated_tokens"] = 540.0
    return summary


def test_omegaprm_cost_from_the_counters_joins_the_stages_and_the_cost_per_label():
    summary = add_omegaprm_cost(summary_with_cost(), COUNTERS)
    assert summary["cost"]["omegaprm"] == {"requests": None, "rollouts": 300,
                                           "prompt_tokens": 9000, "generated_tokens": 11400}
    per_label = summary["cost_per_label"]
    assert per_label["by_stage"]["omegaprm"] == {"rollouts": 30.0, "generated_tokens": 1140.0}
    assert per_label["by_stage"]["policy"] == {"rollouts": 3.6, "generated_tokens": 360.0}
    # (36 + 110 + 29 + 300) rollouts and (3600 + 1100 + 700 + 11400) tokens over 10 labels
    assert per_label["with_omegaprm"] == {"rollouts": 47.5, "generated_tokens": 1680.0}
    assert per_label["rollouts"] == 17.5  # the trajectories' own figure stays


def test_without_omegaprm_counters_nothing_changes():
    summary = summary_with_cost()
    assert add_omegaprm_cost(summary, {"policy_samples": 36}) is summary


def test_text_and_html_show_omegaprm_cost():
    summary = add_omegaprm_cost(summary_with_cost(), COUNTERS)
    text = render_group("whole dataset", summary)
    assert "omegaprm 300 rollouts, 11400 generated tokens, 9000 prompt tokens" in text
    assert ("  with OmegaPRM: 47.50 rollouts, 1680.0 generated tokens; generated tokens by "
            "stage: policy 360.0, MC 110.0, judge 70.0, OmegaPRM 1140.0") in text
    html = _group_html("whole dataset", summary, plots=False)
    assert "generated tokens per kept step label: OmegaPRM</td><td>1140.0" in html
    assert "generated tokens per kept step label, with OmegaPRM</td><td>1680.0" in html


def test_cost_plot_has_an_omegaprm_bar_holding_its_prefilter(monkeypatch):
    monkeypatch.setattr(inspect_module, "_png", lambda fig: fig)
    summary = add_omegaprm_cost(summary_with_cost(), COUNTERS)
    summary["cost"]["omegaprm_prefilter_dropped"].update(requests=1, rollouts=8)
    fig = inspect_module.plot_cost(summary)
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert names == ["policy", "Monte Carlo", "judge", "OmegaPRM"]
    heights = [bar.get_height() for bar in fig.axes[1].patches]
    assert heights == [3600, 1100, 700, 11400]


@pytest.mark.parametrize("plot,change", [
    ("plot_first_error", lambda s: s.update(first_error_histogram={"1": 1})),
    ("plot_consensus", lambda s: s["consensus"].update(evaluated=1, kept=1, keep_rate=1.0)),
    ("plot_labels_by_index", lambda s: s.update(labels_by_step_index={
        "0": {"positive": 1, "negative": 0, "positive_rate": 1.0}})),
    ("plot_cost", lambda s: s["cost"]["judge"].update(requests=1, rollouts=1,
                                                      generated_tokens=3)),
])
def test_count_plots_with_one_item_have_whole_number_ticks(monkeypatch, plot, change):
    monkeypatch.setattr(inspect_module, "_png", lambda fig: fig)
    summary = LabelStats().summary()
    change(summary)
    fig = getattr(inspect_module, plot)(summary)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = ax.get_yticks()
        assert len(ticks) and all(float(t).is_integer() for t in ticks), (plot, ticks)


def test_dataset_card_gives_the_cost_per_kept_step_label_with_omegaprm():
    from steplabel.dataset.card import _statistics

    lines = _statistics({"overall": summary_with_cost(), "counters": COUNTERS})
    assert "- Cost per kept step label with OmegaPRM: 47.5 rollouts, 1680.0 generated " \
           "tokens." in lines
    assert not any("with OmegaPRM" in line for line in _statistics(
        {"overall": summary_with_cost(), "counters": {}}))
