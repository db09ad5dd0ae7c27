"""Predicting first errors: the chosen annotators run on an item's steps as given.

**Annotators** (``mc``, ``omegaprm``, ``judge``, ``consensus``, ``critic``) run on the given
steps: nothing is resampled or re-split. The critic's first error is the first step its
critiques call incorrect, by the judge's vote over its samples
(:func:`~steplabel.annotators.critic.predict_first_error`). Monte Carlo, OmegaPRM and consensus
need a gold answer; on an item without a usable one only the judge and the critic run, and the
others record ``skipped``. A prediction is ``predicted`` (an index in ``-1..M-1``), ``unknown``
(None; scored as wrong) or ``skipped``.

:func:`predict_first_errors` runs them all on one item; the evaluate job runs the same parts as
separate stages, one per engine role (:func:`completer_stage`, :func:`judge_stage`,
:func:`critic_stage`), and joins them (:func:`combine_predictions`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from steplabel.annotators.consensus import consensus
from steplabel.annotators.critic import Critic, CriticConfig, critic_version
from steplabel.annotators.evaluation.items import GOLD_UNREADABLE, GoldItem, is_int
from steplabel.annotators.grading import Grade, check_answer_readable, grade
from steplabel.annotators.judge import (
    JUDGE_PARSER_VERSION,
    JUDGE_VOTE_VERSION,
    JudgeConfig,
    LLMJudge,
)
from steplabel.annotators.monte_carlo import (
    ANNOTATOR_NAME as MC_NAME,
    ANNOTATOR_VERSION as MC_VERSION,
    MonteCarloAnnotator,
    MonteCarloConfig,
)
from steplabel.annotators.omegaprm import (
    ANNOTATOR_NAME as OMEGAPRM_NAME,
    ANNOTATOR_VERSION as OMEGAPRM_VERSION,
    OmegaPRMConfig,
    locate_first_error,
)
from steplabel.annotators.prompts import build_solution_prompt, load_template
from steplabel.annotators.python_tests import PythonTestsGrader
from steplabel.annotators.splitting import Splitter, get_splitter
from steplabel.annotators.stages import Failure, failure_of
from steplabel.engines.base import EngineError
from steplabel.schemas.config import ConfigError
from steplabel.schemas.graders import GraderConfig, PythonTestsGold
from steplabel.schemas.rows import COST_FIELDS

#: Annotator names, in the order they are reported.
ANNOTATORS = ("mc", "omegaprm", "judge", "consensus", "critic")
#: What ``evaluate`` runs when ``--annotators`` is not given (the critic is asked for by name:
#: it needs a ``critic:`` section).
DEFAULT_ANNOTATORS = ("mc", "omegaprm", "judge", "consensus")
#: Annotators that grade rollouts against the gold answer.
NEEDS_GOLD = frozenset({"mc", "omegaprm", "consensus"})
#: Annotators another one is computed from.
DEPENDENCIES: dict[str, tuple[str, ...]] = {"consensus": ("mc", "judge")}

#: Prediction statuses: a known index, an unknown one (counts as wrong), or not run (not scored).
STATUS_PREDICTED = "predicted"
STATUS_UNKNOWN = "unknown"
STATUS_SKIPPED = "skipped"


def resolve_annotators(names: str | Sequence[str]) -> tuple[str, ...]:
    """The annotators to run, in report order: the named ones plus what they are computed from
    (``consensus`` adds ``mc`` and ``judge``). ``names`` is a list or a comma-separated string;
    an unknown or empty name raises :class:`ConfigError`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    chosen = set()
    for name in names:
        if name not in ANNOTATORS:
            raise ConfigError(f"annotators must be a comma-separated list of "
                              f"{', '.join(ANNOTATORS)}, got {name!r}")
        chosen.add(name)
        chosen.update(DEPENDENCIES.get(name, ()))
    if not chosen:
        raise ConfigError("annotators must name at least one of " + ", ".join(ANNOTATORS))
    return tuple(a for a in ANNOTATORS if a in chosen)


@dataclass(frozen=True)
class EvaluationSettings:
    """What the annotators need besides engines (taken from the job manifest).

    - ``run_seed``: every request's seed derives from it and the item's ``problem_id``.
    - ``policy_template``: the prompt template the completer continues a prefix under (the
      completer sees the solution as if it had written it; no ``response_prefix`` is added,
      since the given steps are the whole solution).
    - ``monte_carlo`` / ``omegaprm`` / ``judge``: the annotators' settings; each is required
      when its annotator runs (:meth:`check`). OmegaPRM uses ``rollouts`` and ``sampling``.
    - ``omegaprm_final_answer``: how OmegaPRM learns whether the solution's final answer is
      right (it only searches wrong solutions; a right one predicts -1 at no cost):
      ``grade`` (default) grades the joined steps against the gold answer as the labelling job
      does, falling back to the record's ``final_answer_correct`` when the grader cannot
      decide; ``item`` trusts the record's field and grades only when it is absent.
    - ``grader``: the manifest's grader (None: math). With ``python_tests`` an item's gold
      answer is its test source, and Monte Carlo and OmegaPRM run each completed solution's
      program against it in the sandbox (:func:`item_grader`).
    """

    run_seed: int
    policy_template: str = "policy_steps_v1"
    monte_carlo: MonteCarloConfig | None = None
    omegaprm: OmegaPRMConfig | None = None
    judge: JudgeConfig | None = None
    omegaprm_final_answer: Literal["grade", "item"] = "grade"
    critic: CriticConfig | None = None
    grader: GraderConfig | None = None

    def __post_init__(self) -> None:
        if self.grader is not None and self.grader.name not in ("math", "python_tests"):
            raise ConfigError(f"evaluate grades with math or python_tests, got grader "
                              f"{self.grader.name!r}")
        if not is_int(self.run_seed) or self.run_seed < 0:
            raise ConfigError(f"run_seed must be an integer >= 0, got {self.run_seed!r}")
        if self.omegaprm_final_answer not in ("grade", "item"):
            raise ConfigError("omegaprm_final_answer must be one of 'grade', 'item', got "
                              f"{self.omegaprm_final_answer!r}")

    @classmethod
    def from_manifest(cls, manifest, *, omegaprm_final_answer: str = "grade"
                      ) -> "EvaluationSettings":
        return cls(run_seed=manifest.seed, policy_template=manifest.policy.template,
                   monte_carlo=manifest.monte_carlo, omegaprm=manifest.omegaprm,
                   judge=manifest.judge, critic=manifest.critic, grader=manifest.grader,
                   omegaprm_final_answer=omegaprm_final_answer)  # type: ignore[arg-type]

    def check(self, annotators: Sequence[str]) -> None:
        """Raise :class:`ConfigError` naming the missing manifest section of an annotator."""
        sections = {"mc": ("monte_carlo", self.monte_carlo),
                    "omegaprm": ("omegaprm", self.omegaprm), "judge": ("judge", self.judge),
                    "critic": ("critic", self.critic)}
        for name in annotators:
            if name in sections and sections[name][1] is None:
                raise ConfigError(f"annotator {name} needs a {sections[name][0]} section in "
                                  f"the manifest (e.g. '{sections[name][0]}: {{}}' for the "
                                  "defaults)")


def annotator_versions(judge_parser: str = "processbench") -> dict[str, str]:
    """The name/version of the algorithm behind each evaluated annotator; the judge's names
    the configured parser's version and the voting rule's."""
    return {
        "mc": f"{MC_NAME}/{MC_VERSION}",
        "omegaprm": f"{OMEGAPRM_NAME}/{OMEGAPRM_VERSION}:locate_first_error",
        "judge": f"llm_judge/2;{JUDGE_PARSER_VERSION[judge_parser]};{JUDGE_VOTE_VERSION}",
        "consensus": "consensus/1",
        "critic": critic_version(),
    }


def item_grader(config: GraderConfig | None) -> Callable[[str, str | None], Grade]:
    """``grade(solution, gold_answer)`` for the items of a job with grader ``config``: math's
    final-answer check, or (``python_tests``) the solution's last program run against the
    item's test source in the sandbox, by the labelling job's verdicts."""
    if config is None or config.name == "math":
        return grade
    tests_grader = PythonTestsGrader(config)  # type: ignore[arg-type]

    def grade_tests(solution: str, tests: str | None) -> Grade:
        return tests_grader.grade(solution, PythonTestsGold(tests) if tests is not None else None)

    return grade_tests


def gold_answer_warning(gold_answer: str | None, config: GraderConfig | None) -> str | None:
    """A warning reason when an item's gold cannot tell right from wrong, as the labelling job
    checks it (python_tests: ``tests_pass_on_empty_program``, or ``tests_not_checked`` when
    the sandbox could not run them; one sandbox run), else None (math: never)."""
    if gold_answer is None or config is None or config.name != "python_tests":
        return None
    return PythonTestsGrader(config).gold_warning(  # type: ignore[arg-type]
        PythonTestsGold(gold_answer))


def _no_answer_check(answer: str) -> str | None:
    """Test source was checked when read (it compiles): nothing more to check."""
    return None


def item_answer_check(config: GraderConfig | None) -> Callable[[str], str | None]:
    """What checks an item's gold answer before the annotators that need it run: math's
    readability check, nothing for test source."""
    if config is not None and config.name == "python_tests":
        return _no_answer_check
    return check_answer_readable


def _zero_cost() -> dict[str, int]:
    return dict.fromkeys(COST_FIELDS, 0)


def add_costs(*costs: Mapping[str, int] | None) -> dict[str, int]:
    """Field-wise sum of cost dicts (``requests``, ``rollouts``, token counts); None is zero."""
    total = _zero_cost()
    for cost in costs:
        for key in total:
            total[key] += int((cost or {}).get(key) or 0)
    return total


@dataclass(frozen=True)
class AnnotatorPrediction:
    """One annotator's first-error prediction for one item.

    - ``status``: ``predicted`` (``first_error`` in ``-1..M-1``), ``unknown`` (``first_error``
      None; scored as wrong) or ``skipped`` (not run, e.g. no gold answer; not scored).
    - ``reason``: why (``ok``, a parse or search reason, a consensus reason, ``no_gold_answer``).
    - ``cost``: requests, rollouts and tokens this annotator spent on the item. Consensus
      spends nothing of its own; its cost is Monte Carlo's plus the judge's.
    - ``model_id``: the model that served it (None when skipped or for consensus).
    - ``details``: annotator-specific evidence (MC values, OmegaPRM probes, judge replies).
    """

    annotator: str
    status: str
    first_error: int | None
    reason: str
    cost: dict[str, int]
    model_id: str | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ItemPrediction:
    """Every chosen annotator's prediction for one item, and the gold answer status it ran
    under (``unreadable_answer`` when the grader cannot read the joined answer)."""

    item: GoldItem
    gold_status: str
    predictions: dict[str, AnnotatorPrediction]


def _known(index: int | None) -> str:
    return STATUS_PREDICTED if index is not None else STATUS_UNKNOWN


async def _predict_mc(item: GoldItem, *, engine, settings: EvaluationSettings,
                      splitter: Splitter, prompt, gold_answer: str,
                      grader: Callable[[str, str | None], Grade]) -> AnnotatorPrediction:
    annotator = MonteCarloAnnotator(engine, settings.monte_carlo, run_seed=settings.run_seed,
                                    grader=grader)
    result = await annotator.annotate(problem_id=item.problem_id, solution_index=0,
                                      prompt=prompt, steps=list(item.steps), splitter=splitter,
                                      gold_answer=gold_answer)
    index = result.first_error_index
    return AnnotatorPrediction(
        annotator="mc", status=_known(index), first_error=index,
        reason="ok" if index is not None else "step_value_unknown", cost=result.cost,
        model_id=result.model_id,
        details={"k": result.k, "values": result.values, "n_correct": result.n_correct,
                 "n_total": result.n_total, "n_unknown": result.n_unknown,
                 "hard_labels": result.hard_labels})


async def _predict_omegaprm(item: GoldItem, *, engine, settings: EvaluationSettings,
                            splitter: Splitter, prompt, gold_answer: str,
                            grader: Callable[[str, str | None], Grade]) -> AnnotatorPrediction:
    config = settings.omegaprm
    assert config is not None
    model_id = getattr(engine, "model_id", None)
    details: dict[str, Any] = {"final_answer_correct_item": item.final_answer_correct}
    if settings.omegaprm_final_answer == "item" and item.final_answer_correct is not None:
        final_answer_correct, origin = item.final_answer_correct, "item"
    else:
        graded = await asyncio.to_thread(grader, splitter.join(list(item.steps)), gold_answer)
        details.update(graded_verdict=graded.verdict, graded_reason=graded.reason)
        if graded.verdict != "unknown":
            final_answer_correct, origin = graded.verdict == "correct", "grader"
        elif item.final_answer_correct is not None:
            final_answer_correct, origin = item.final_answer_correct, "item_fallback"
        else:
            return AnnotatorPrediction("omegaprm", STATUS_UNKNOWN, None, "final_answer_unknown",
                                       _zero_cost(), model_id, details)
    details.update(final_answer_correct=final_answer_correct, final_answer_origin=origin)
    search = await locate_first_error(
        engine, prompt=prompt, pieces=list(item.steps), gold_answer=gold_answer,
        run_seed=settings.run_seed, problem_id=item.problem_id, solution_index=0,
        splitter=splitter, rollouts=config.rollouts, sampling=config.sampling,
        final_answer_correct=final_answer_correct, grader=grader,
        truncated=config.truncated)
    details.update(probe_lengths=search.probe_lengths, probe_values=search.probe_values,
                   rollouts=search.rollouts)
    index = search.first_error_index
    return AnnotatorPrediction("omegaprm", _known(index), index, search.reason, search.cost,
                               model_id, details)


async def _predict_judge(item: GoldItem, *, engine,
                         settings: EvaluationSettings) -> AnnotatorPrediction:
    judge = LLMJudge(engine, settings.judge, run_seed=settings.run_seed)
    verdict = await judge.judge(problem_id=item.problem_id, solution_index=0,
                                question=item.problem, steps=list(item.steps))
    index = verdict.first_error_index
    return AnnotatorPrediction(
        "judge", _known(index), index, verdict.reason, verdict.cost, verdict.model_id,
        {"votes": verdict.votes, "agreement": verdict.agreement,
         "min_agreement": verdict.min_agreement, "parse_reasons": verdict.parse_reasons,
         "finish_reasons": verdict.finish_reasons, "replies": verdict.raw_replies,
         "template_id": verdict.template_id, "template_sha256": verdict.template_sha256,
         "parser": verdict.parser, "parser_version": verdict.parser_version})


async def _predict_critic(item: GoldItem, *, engine,
                          settings: EvaluationSettings) -> AnnotatorPrediction:
    """The critic's first error: the first step its critiques call incorrect, voted over its
    samples; nothing to check them against (every critique is ``no_trusted_labels``)."""
    critic = Critic(engine, settings.critic, run_seed=settings.run_seed)
    result = await critic.critique(problem_id=item.problem_id, solution_index=0,
                                   question=item.problem, steps=list(item.steps))
    index = result.prediction.first_error
    return AnnotatorPrediction("critic", _known(index), index, result.prediction.reason,
                               dict(result.cost), result.model_id,
                               result.evaluation_details())


def _skipped(name: str, reason: str) -> AnnotatorPrediction:
    return AnnotatorPrediction(name, STATUS_SKIPPED, None, reason, _zero_cost())


@dataclass(frozen=True)
class Engines:
    """The engines the evaluated annotators talk to: ``completer`` (Monte Carlo and OmegaPRM
    rollouts) and ``judge``; ``policy`` is carried for callers that hold one (evaluate samples
    nothing)."""

    policy: Any
    completer: Any
    judge: Any
    critic: Any = None  # None: the judge's engine (the critic's model defaults to the judge's)


def usable_gold_answer(item: GoldItem, annotators: Sequence[str], *,
                       answer_check: Callable[[str], str | None] = check_answer_readable
                       ) -> tuple[str | None, str]:
    """``(gold answer, gold status)`` the annotators run under: the item's answer, or None with
    status ``unreadable_answer`` when an annotator that needs it is chosen and the grader
    cannot read it (``answer_check`` returns a reason)."""
    gold_answer, gold_status = item.gold_answer, item.gold_status
    if gold_answer is not None and NEEDS_GOLD & set(annotators):
        if answer_check(gold_answer) is not None:
            gold_answer, gold_status = None, GOLD_UNREADABLE
    return gold_answer, gold_status


async def predict_with_completer(item: GoldItem, *, annotators: Sequence[str], engine,
                                 settings: EvaluationSettings, gold_answer: str | None,
                                 grader: Callable[[str, str | None], Grade] | None = None
                                 ) -> dict[str, AnnotatorPrediction]:
    """The completer's predictions of ``item`` (``mc`` and ``omegaprm`` among ``annotators``,
    run concurrently); none without a usable ``gold_answer``. ``grader`` (None: the settings'
    grader, :func:`item_grader`) grades completed solutions. Engine failures propagate."""
    if gold_answer is None or not {"mc", "omegaprm"} & set(annotators):
        return {}
    grader = grader or item_grader(settings.grader)
    prompt = build_solution_prompt(engine, load_template(settings.policy_template),
                                   item.problem, "")
    common = dict(engine=engine, settings=settings, splitter=get_splitter(item.splitter_name),
                  prompt=prompt, gold_answer=gold_answer, grader=grader)
    jobs: dict[str, Any] = {}
    if "mc" in annotators:
        jobs["mc"] = _predict_mc(item, **common)
    if "omegaprm" in annotators:
        jobs["omegaprm"] = _predict_omegaprm(item, **common)
    return dict(zip(jobs, await asyncio.gather(*jobs.values())))


async def predict_with_judge(item: GoldItem, *, engine, settings: EvaluationSettings
                             ) -> dict[str, AnnotatorPrediction]:
    """The judge's prediction of ``item``. Engine failures propagate."""
    return {"judge": await _predict_judge(item, engine=engine, settings=settings)}


async def predict_with_critic(item: GoldItem, *, engine, settings: EvaluationSettings
                              ) -> dict[str, AnnotatorPrediction]:
    """The critic's prediction of ``item``. Engine failures propagate."""
    return {"critic": await _predict_critic(item, engine=engine, settings=settings)}


def combine_predictions(item: GoldItem, *, annotators: Sequence[str], gold_answer: str | None,
                        gold_status: str, done: Mapping[str, AnnotatorPrediction]
                        ) -> ItemPrediction:
    """Every chosen annotator's prediction from what the engines predicted (``done``): Monte
    Carlo, OmegaPRM and consensus ``skipped`` without a usable gold answer, consensus from Monte
    Carlo's and the judge's indices."""
    predictions: dict[str, AnnotatorPrediction] = {}
    for name in annotators:
        if name in done:
            predictions[name] = done[name]
        elif name in NEEDS_GOLD and gold_answer is None:
            predictions[name] = _skipped(name, "no_gold_answer")
        elif name == "consensus":
            mc, judge = done["mc"], done["judge"]
            decision = consensus(mc.first_error, judge.first_error)
            predictions[name] = AnnotatorPrediction(
                "consensus", _known(decision.first_error), decision.first_error,
                decision.reason, add_costs(mc.cost, judge.cost), None,
                {"mc_first_error": mc.first_error, "judge_first_error": judge.first_error})
    return ItemPrediction(item=item, gold_status=gold_status, predictions=predictions)


async def predict_first_errors(
    item: GoldItem,
    *,
    annotators: Sequence[str],
    engines,
    settings: EvaluationSettings,
    grader: Callable[[str, str | None], Grade] | None = None,
    answer_check: Callable[[str], str | None] | None = None,
) -> ItemPrediction:
    """Run the chosen annotators on ``item``'s steps as given and collect their predictions.

    ``engines`` has ``completer`` (Monte Carlo and OmegaPRM rollouts) and ``judge`` attributes
    (:class:`Engines`). The steps are joined with the separator of the item's format
    (:data:`~.items.JOIN_SPLITTERS`); nothing is resampled or re-split. Monte Carlo, OmegaPRM
    and the judge run concurrently. Without a usable gold answer (missing, unparseable, ambiguous, or
    one the grader cannot read, checked with ``answer_check``), Monte Carlo, OmegaPRM and
    consensus are ``skipped`` with reason ``no_gold_answer``.

    The evaluate job runs the same parts as separate stages (:func:`usable_gold_answer`,
    :func:`predict_with_completer`, :func:`predict_with_judge`, :func:`combine_predictions`).
    Engine failures (:class:`~steplabel.engines.base.EngineError`) propagate: the caller
    dead-letters the item.
    """
    chosen = resolve_annotators(annotators)
    settings.check(chosen)
    gold_answer, gold_status = await asyncio.to_thread(
        usable_gold_answer, item, chosen,
        answer_check=answer_check or item_answer_check(settings.grader))
    jobs = [predict_with_completer(item, annotators=chosen, engine=engines.completer,
                                   settings=settings, gold_answer=gold_answer, grader=grader)]
    if "judge" in chosen:
        jobs.append(predict_with_judge(item, engine=engines.judge, settings=settings))
    if "critic" in chosen:
        jobs.append(predict_with_critic(item, engine=engines.critic or engines.judge,
                                        settings=settings))
    done: dict[str, AnnotatorPrediction] = {}
    for part in await asyncio.gather(*jobs):
        done.update(part)
    return combine_predictions(item, annotators=chosen, gold_answer=gold_answer,
                               gold_status=gold_status, done=done)


# --------------------------------------------------------------------------------------------
# The evaluate job's engine stages (one per engine role), checkpointed as JSON


@dataclass(frozen=True)
class StagePredictions:
    """What one engine stage predicted for one item: ``predictions`` by annotator, or the
    ``failure`` (:class:`~steplabel.annotators.stages.Failure`) of its requests, which
    dead-letters the item. Plain JSON values, so that a fresh result and its replayed
    checkpoint are equal."""

    predictions: dict = field(default_factory=dict)  # annotator -> AnnotatorPrediction
    failure: Any = None


def stage_predictions_to_json(result: StagePredictions) -> dict:
    return {"predictions": {name: asdict(p) for name, p in result.predictions.items()},
            "failure": asdict(result.failure) if result.failure is not None else None}


def stage_predictions_from_json(data: dict) -> StagePredictions:
    failure = data.get("failure")
    return StagePredictions(
        predictions={name: AnnotatorPrediction(**p) for name, p in data["predictions"].items()},
        failure=Failure(**failure) if failure else None)


def _plain_predictions(predictions: Mapping[str, AnnotatorPrediction]) -> StagePredictions:
    """Tuples to lists and other values to strings (as the predictions output stores
    ``details``), so that the result equals its checkpoint."""
    return stage_predictions_from_json(json.loads(json.dumps(
        stage_predictions_to_json(StagePredictions(dict(predictions))), default=str)))


async def _stage(work) -> StagePredictions:
    try:
        return _plain_predictions(await work)
    except EngineError as exc:  # a refused request; a dead engine is not one and propagates
        return StagePredictions(failure=failure_of(exc))


async def completer_stage(item: GoldItem, *, annotators: Sequence[str], engine,
                          settings: EvaluationSettings,
                          gold_answer: str | None) -> StagePredictions:
    """:func:`predict_with_completer` as a stage: engine refusals are the result's failure."""
    return await _stage(predict_with_completer(item, annotators=annotators, engine=engine,
                                               settings=settings, gold_answer=gold_answer))


async def judge_stage(item: GoldItem, *, engine, settings: EvaluationSettings
                      ) -> StagePredictions:
    """:func:`predict_with_judge` as a stage: engine refusals are the result's failure."""
    return await _stage(predict_with_judge(item, engine=engine, settings=settings))


async def critic_stage(item: GoldItem, *, engine, settings: EvaluationSettings
                       ) -> StagePredictions:
    """:func:`predict_with_critic` as a stage: engine refusals are the result's failure."""
    return await _stage(predict_with_critic(item, engine=engine, settings=settings))
