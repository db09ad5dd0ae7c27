"""The annotators of a job, as data: one :class:`AnnotatorSpec` per annotator.

The stage graph (``pipelines/stages.py``), the dataset's figures (``dataset/stats.py``), ``show``,
``inspect`` and ``plan`` iterate over :data:`ANNOTATORS` instead of naming Monte Carlo, OmegaPRM
and the judge one by one. A new annotator adds its module, its config, its spec here and its
Beam stage (a DoFn mapped to the spec's name in ``pipelines/stages.py``).

What stays outside the specs, because the annotators are genuinely different there: consensus
combines Monte Carlo's and the judge's first errors (``annotators/consensus.py``,
``annotators/stages.assemble_trajectory``, the judge-vs-MC confusion figure); OmegaPRM searches
per problem and writes its own outputs (states, pairs, searches, pre-filter rows) whose figures
and costs are its own in ``dataset/stats.py`` and ``dataset/plan.py``.

Pure data and small pure functions: no Beam, nothing from ``pipelines/`` or ``dataset/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from steplabel.annotators import monte_carlo, omegaprm
from steplabel.annotators.critic import CriticConfig, critic_version
from steplabel.annotators.judge import JudgeConfig, judge_version
from steplabel.annotators.monte_carlo import FINISH_LENGTH, MonteCarloConfig
from steplabel.annotators.omegaprm import OmegaPRMConfig


@dataclass(frozen=True)
class AnnotatorSpec:
    """One annotator, as the rest of the project sees it.

    - ``name``: its manifest section, stage and checkpoint folder (``_work/<name>/``), and its
      key in figures (``stats.json``'s ``truncation``, ``plan``'s stages);
    - ``title``: how text names it (``Monte Carlo``); ``mark``: its short name beside a step
      (``MC``); ``stage_label``: its Beam step (``Label/<stage_label>``);
    - ``role``: the engine role it runs on (``completer``, ``judge``; a role names a model in
      ``models:``); ``config_type``: its manifest config class;
    - ``per``: what one key of its stage is: ``solution`` (one policy sample, its labels are
      columns of the trajectory row) or ``problem`` (it writes its own ``outputs``);
    - ``columns``: the trajectory-row columns it fills (``per == "solution"``);
      ``first_error_column``: its first-error index on trajectory rows (-1: no error, null:
      unknown), None when it has none there; ``first_error_optional``: rows carry it only for
      some trajectories (shown only when set); ``cost_column``: its cost struct on trajectory
      rows (``cost_<key>``), None when its cost is not on trajectory rows;
    - ``outputs``: the dataset outputs it writes itself (``per == "problem"``, or
      ``after_consensus``);
    - ``after_consensus``: its stage reads the assembled trajectory rows (after consensus:
      it needs their trusted labels), one key per solution, and writes its own ``outputs``
      instead of trajectory columns (the critic: ``critiques/``); it is not a tag of the
      solutions' join, and its samples' truncation is counted from its own rows;
    - ``truncation``: ``row -> (samples, cut off at max_tokens)`` of one trajectory row (None
      when its samples are not on trajectory rows); ``truncation_columns``: the row columns
      it reads; ``truncated_what``: what its cut-off samples are, for the finished job's
      warning; the setting that bounds them is ``<name>.sampling.max_tokens``;
    - ``version``: config -> its name and code version, for provenance.
    """

    name: str
    title: str
    mark: str
    stage_label: str
    role: str
    config_type: type
    per: Literal["solution", "problem"]
    version: Callable[[Any], str]
    truncated_what: str
    columns: tuple[str, ...] = ()
    first_error_column: str | None = None
    first_error_optional: bool = False
    cost_column: str | None = None
    outputs: tuple[str, ...] = ()
    after_consensus: bool = False
    truncation: Callable[[dict], tuple[int, int]] | None = field(default=None, repr=False)
    truncation_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.per not in ("solution", "problem"):
            raise ValueError(f"per must be 'solution' or 'problem', got {self.per!r}")
        if self.cost_column is not None and not self.cost_column.startswith("cost_"):
            raise ValueError(f"cost_column must start with 'cost_', got {self.cost_column!r}")
        if self.after_consensus and (self.per != "solution" or self.columns
                                     or self.cost_column or not self.outputs):
            raise ValueError(f"{self.name}: an annotator after consensus is per solution and "
                             "writes its own outputs, not trajectory columns")

    @property
    def cost_key(self) -> str | None:
        """Its key among the trajectory costs (``cost_mc`` -> ``mc``)."""
        return self.cost_column[len("cost_"):] if self.cost_column else None

    @property
    def max_tokens_setting(self) -> str:
        return f"{self.name}.sampling.max_tokens"

    def config(self, manifest):
        """Its config in ``manifest``; None when the manifest does not enable it."""
        return getattr(manifest, self.name)


def _mc_truncation(row: dict) -> tuple[int, int]:
    """Rollouts recorded in the step counts (the last step's "rollout" is the solution)."""
    samples = sum((n or 0) + (u or 0) for n, u in zip((row.get("mc_n_total") or [])[:-1],
                                                      (row.get("mc_n_unknown") or [])[:-1]))
    return samples, sum(v or 0 for v in row.get("mc_n_truncated") or ())


def _judge_truncation(row: dict) -> tuple[int, int]:
    finish = row.get("judge_finish_reasons") or ()
    return len(finish), sum(1 for f in finish if f == FINISH_LENGTH)


MONTE_CARLO = AnnotatorSpec(
    name="monte_carlo", title="Monte Carlo", mark="MC", stage_label="MonteCarlo",
    role="completer", config_type=MonteCarloConfig, per="solution",
    version=lambda config: f"{monte_carlo.ANNOTATOR_NAME}/{monte_carlo.ANNOTATOR_VERSION}",
    truncated_what="Monte Carlo rollouts (counted unknown, not wrong)",
    columns=("mc_n_correct", "mc_n_total", "mc_n_unknown", "mc_n_truncated", "mc_values",
             "hard_labels", "soft_labels", "mc_first_error", "mc_posterior_mean",
             "mc_interval_low", "mc_interval_high", "mc_p_above", "mc_rollouts_spent",
             "mc_label_reasons", "cost_mc"),
    first_error_column="mc_first_error", cost_column="cost_mc",
    truncation=_mc_truncation,
    truncation_columns=("mc_n_truncated", "mc_n_total", "mc_n_unknown"),
)

OMEGAPRM = AnnotatorSpec(
    name="omegaprm", title="OmegaPRM", mark="OmegaPRM", stage_label="OmegaPRM",
    role="completer", config_type=OmegaPRMConfig, per="problem",
    version=lambda config: f"{omegaprm.ANNOTATOR_NAME}/{omegaprm.ANNOTATOR_VERSION}",
    truncated_what="OmegaPRM rollouts (counted unknown, not wrong)",
    first_error_column="omegaprm_first_error", first_error_optional=True,
    outputs=("omegaprm_states", "omegaprm_pairs", "omegaprm_searches"),
)

JUDGE = AnnotatorSpec(
    name="judge", title="judge", mark="judge", stage_label="Judge",
    role="judge", config_type=JudgeConfig, per="solution",
    version=judge_version,
    truncated_what="judge replies",
    columns=("judge_first_error", "judge_agreement", "judge_votes", "judge_replies",
             "judge_parse_reasons", "judge_reason", "judge_finish_reasons", "cost_judge"),
    first_error_column="judge_first_error", cost_column="cost_judge",
    truncation=_judge_truncation, truncation_columns=("judge_finish_reasons",),
)

CRITIC = AnnotatorSpec(
    name="critic", title="critic", mark="critic", stage_label="Critic",
    role="critic", config_type=CriticConfig, per="solution",
    version=critic_version,
    truncated_what="critiques (unusable, never kept)",
    outputs=("critiques",), after_consensus=True,
)

#: Every annotator, by name, in stage order (the order of figures and of failures chosen).
ANNOTATORS: dict[str, AnnotatorSpec] = {spec.name: spec for spec in (MONTE_CARLO, OMEGAPRM,
                                                                     JUDGE, CRITIC)}


def enabled(manifest) -> list[AnnotatorSpec]:
    """The annotators ``manifest`` runs, in stage order."""
    return [spec for spec in ANNOTATORS.values() if spec.config(manifest) is not None]


def with_cost_on_rows() -> list[AnnotatorSpec]:
    """The annotators whose cost is a column of trajectory rows, in stage order."""
    return [spec for spec in ANNOTATORS.values() if spec.cost_column]


def roles() -> tuple[str, ...]:
    """Every engine role: ``policy``, then each annotator's, first use first (``policy``,
    ``completer``, ``judge``, ``critic``)."""
    return tuple(dict.fromkeys(["policy", *(spec.role for spec in ANNOTATORS.values())]))
