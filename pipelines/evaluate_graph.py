"""The ``steplabel evaluate`` job's Beam graph and the per-item work its workers do.

::

    gold file paths ─► ReadGold ◄── answers table (ReadAnswers; a side input)
                         ├► gold items ─────► ProgressTotal ─► SpreadItems ─► gold items (below)
                         │                       ▲ total (a side input)
                         ├► counts per file ─► CountGold ─► _work/gold_read.json
                         └► unreadable records ─► dead_letter

    gold items ─► CheckGoldAnswers ─┬► (gold answer usable) PredictWithCompleter [completer] ─┐
                                    ├► PredictWithJudge [judge] ─────────────────────────────┤
                                    ├► PredictWithCritic [critic] ───────────────────────────┤
                                    └──────────────── CoGroupByKey ◄──────────────────────────┘
                                          └► AssemblePredictions ─► predictions, dead_letter

The engine stages run on the run job's machinery (:class:`~steplabel.pipelines.stages.
EngineStageFn`) and declare their role's resources as its stages do
(:func:`~steplabel.pipelines.runners.declare_engine_resources`). See
:mod:`steplabel.pipelines.evaluate` for the launcher and the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from steplabel.annotators.evaluation.answers import AnswerTable, join_gold_answers
from steplabel.annotators.evaluation.items import GoldItem, GoldReject
from steplabel.annotators.graders import GOLD_WARNING_PREFIX
from steplabel.annotators.evaluation.predict import (
    STATUS_SKIPPED,
    EvaluationSettings,
    NEEDS_GOLD,
    ItemPrediction,
    StagePredictions,
    annotator_versions,
    combine_predictions,
    completer_stage,
    critic_stage,
    gold_answer_warning,
    item_answer_check,
    judge_stage,
    stage_predictions_from_json,
    stage_predictions_to_json,
    usable_gold_answer,
)
from steplabel.dataset import storage
from steplabel.pipelines.checkpoints import EVALUATE_CRITIC, EVALUATE_JUDGE, EVALUATE_ROLLOUTS
from steplabel.pipelines.engine_pool import _acquire_pool
from steplabel.pipelines.evaluate_spec import (
    DEAD_LETTER,
    GOLD_READ_FILE,
    OUTPUTS,
    PREDICTIONS,
    EvaluationSpec,
    InputFile,
    answers_input,
    gold_inputs,
)
from steplabel.pipelines.gold_files import read_answers, read_gold_file
from steplabel.pipelines.runners import declare_engine_resources, stage_accelerators
from steplabel.pipelines.sink import WriteShards
from steplabel.pipelines.stages import EngineStageFn
from steplabel.schemas import rows as R
from steplabel.schemas.config import share_gpu_memory
from steplabel.schemas.evaluation import PREDICTION, Prediction
from steplabel.schemas.graders import GraderConfig
from steplabel.schemas.manifest import JobManifest
from steplabel.schemas.rows import as_row


def reject_row(reject: GoldReject, *, evaluation_hash: str) -> dict:
    """A dead-letter row (schema ``records.DEAD_LETTER``) for a record that cannot be read."""
    return R.dead_letter(
        stage="read", reason=reject.reason, error=reject.error,
        problem_id=f"{reject.source}/{reject.item_id}" if reject.item_id else None,
        source=reject.source, original=reject.original, manifest_hash=evaluation_hash)


# --------------------------------------------------------------------------------------------
# The per-item work (runs on workers)


def prediction_rows(prediction: ItemPrediction, *, evaluation_hash: str,
                    run_seed: int, judge_parser: str = "processbench") -> list[dict]:
    """One predictions row per annotator of an item: a
    :class:`~steplabel.schemas.evaluation.Prediction` as a dict."""
    item = prediction.item
    versions = annotator_versions(judge_parser)
    return [
        as_row(Prediction(
            problem_id=item.problem_id,
            item_id=item.item_id,
            source=item.source,
            gold_format=item.gold_format,
            generator=item.generator,
            problem=item.problem,
            steps=list(item.steps),
            num_steps=item.num_steps,
            label=item.label,
            ratings=list(item.ratings) if item.ratings is not None else None,
            final_answer_correct=item.final_answer_correct,
            gold_answer=item.gold_answer if prediction.gold_status == "ok" else None,
            gold_status=prediction.gold_status,
            answer_origin=item.answer_origin,
            annotator=name,
            annotator_version=versions[name],
            status=p.status,
            reason=p.reason,
            predicted_first_error=p.first_error,
            exact_match=None if p.status == STATUS_SKIPPED else p.first_error == item.label,
            cost=p.cost,
            model_id=p.model_id,
            details=json.dumps(p.details, sort_keys=True, default=str),
            evaluation_hash=evaluation_hash,
            run_seed=run_seed,
        ))
        for name, p in prediction.predictions.items()
    ]


@dataclass(frozen=True)
class CheckedItem:
    """A gold item with the gold answer its annotators run under (``gold_answer`` None:
    Monte Carlo, OmegaPRM and consensus are skipped; ``gold_status`` says why), and the
    warning reason of a gold that cannot tell right from wrong (``gold_warning``; counted)."""

    item: GoldItem
    gold_answer: str | None
    gold_status: str
    gold_warning: str | None = None

    @property
    def key(self) -> str:
        return self.item.problem_id


def check_item(item: GoldItem, annotators: tuple[str, ...],
               grader: GraderConfig | None = None) -> CheckedItem:
    """``item`` with the gold answer its annotators run under, checked as ``grader`` (the
    manifest's) reads it."""
    gold_answer, gold_status = usable_gold_answer(item, annotators,
                                                  answer_check=item_answer_check(grader))
    warning = gold_answer_warning(gold_answer, grader) if NEEDS_GOLD & set(annotators) else None
    return CheckedItem(item, gold_answer, gold_status, warning)


def dead_letter_row(item: GoldItem, failure, *, evaluation_hash: str) -> dict:
    """A dead-letter row (schema ``records.DEAD_LETTER``) for an item whose requests failed."""
    return R.dead_letter(stage="evaluate", reason=failure.reason, error=failure.error,
                         problem_id=item.problem_id, source=item.source,
                         original=item.original, manifest_hash=evaluation_hash)


def item_outputs(checked: CheckedItem, parts: list[StagePredictions], *,
                 annotators: tuple[str, ...], evaluation_hash: str, run_seed: int,
                 judge_parser: str = "processbench") -> tuple[dict[str, list[dict]],
                                                              dict[str, int]]:
    """One item's rows by output and its counters, from its engine stages' results
    (``parts``, completer before judge). A failed request in any stage (the first in that
    order) dead-letters the item (``engine_error``, ``prompt_too_long``)."""
    item = checked.item
    failure = next((p.failure for p in parts if p.failure is not None), None)
    if failure is not None:
        return ({DEAD_LETTER: [dead_letter_row(item, failure, evaluation_hash=evaluation_hash)]},
                {f"dead_letter_{failure.reason}": 1})
    done: dict[str, Any] = {}
    for part in parts:
        done.update(part.predictions)
    prediction = combine_predictions(item, annotators=annotators,
                                     gold_answer=checked.gold_answer,
                                     gold_status=checked.gold_status, done=done)
    rows = prediction_rows(prediction, evaluation_hash=evaluation_hash, run_seed=run_seed,
                           judge_parser=judge_parser)
    counters: dict[str, int] = {}
    for row in rows:
        name = f"predictions_{row['annotator']}_{row['status']}"
        counters[name] = counters.get(name, 0) + 1
    if prediction.gold_status != "ok":
        counters["items_without_gold_answer"] = 1
    if checked.gold_warning:
        counters[GOLD_WARNING_PREFIX + checked.gold_warning] = 1
    return {PREDICTIONS: rows}, counters


# --------------------------------------------------------------------------------------------
# Beam wiring

#: Tagged outputs of :class:`ReadGoldFileFn` beside the items.
REJECTS, COUNTS = "rejects", "counts"


class ReadGoldFileFn(beam.DoFn):
    """A gold file (:class:`InputFile`) -> its items, gold answers joined from ``answers``
    (the answers table, a side input; None without an answers file); tagged ``rejects``: the
    dead-letter rows of its records that cannot be read; tagged ``counts``: how many of each
    (``{"items": n, "rejects": m}``). A file that cannot be read at all fails the job
    (:class:`GoldFileError`)."""

    def __init__(self, *, answer_field: str, answer_format: str, evaluation_hash: str) -> None:
        self.answer_field = answer_field
        self.answer_format = answer_format
        self.evaluation_hash = evaluation_hash

    def process(self, file: InputFile, answers: AnswerTable | None = None):
        items, rejects = read_gold_file(file, answer_field=self.answer_field,
                                        answer_format=self.answer_format)
        if answers is not None:
            items = join_gold_answers(items, answers)
        yield from items
        for reject in rejects:
            yield beam.pvalue.TaggedOutput(
                REJECTS, reject_row(reject, evaluation_hash=self.evaluation_hash))
        yield beam.pvalue.TaggedOutput(COUNTS, {"items": len(items), "rejects": len(rejects)})


def sum_counts(counts) -> dict[str, int]:
    total = {"items": 0, "rejects": 0}
    for part in counts:
        for name, value in part.items():
            total[name] += value
    return total


def write_gold_counts(counts: dict[str, int], out_dir: str) -> dict[str, int]:
    storage.write_json_atomic(storage.join(out_dir, storage.WORK_DIR, GOLD_READ_FILE), counts)
    return counts


class ProgressTotalFn(beam.DoFn):
    """Gold items pass through; the gold count (a side input) becomes the total of this
    worker's progress display, which the engine stages after ``SpreadItems`` then find (one
    display per dataset and manifest). Display only: a worker that runs no bundle of this step
    shows its items without a total."""

    def __init__(self, manifest, *, out_dir: str, pool: shared.Shared) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self._pool_handle = pool

    def setup(self) -> None:
        self._progress = None

    def process(self, item: GoldItem, counts: dict[str, int]):
        if self._progress is None:
            self._progress = _acquire_pool(self._pool_handle).progress(
                self.out_dir, self.manifest, counts["items"])
        yield item


def evaluation_roles(manifest: JobManifest, annotators: tuple[str, ...], *,
                     pools: dict[str, str] | None = None) -> dict[str, Any]:
    """The engine config of each role the chosen annotators use (``completer`` for Monte Carlo
    and OmegaPRM, ``judge``), with each vLLM model's share of GPU memory set among these roles
    only: evaluate samples nothing, so the policy takes none. ``pools``: role -> worker pool
    (the runner's ``stage_accelerators``), as in the run job (``StageContext.roles``)."""
    roles = {}
    if {"mc", "omegaprm"} & set(annotators):
        roles["completer"] = manifest.models.completer_model
    if "judge" in annotators:
        roles["judge"] = manifest.models.judge_model
    if "critic" in annotators:
        roles["critic"] = manifest.models.critic_model
    return share_gpu_memory(roles, pools=pools)


class _PredictionStageFn(EngineStageFn):
    """An engine stage of the evaluate job: :class:`CheckedItem` -> (item key,
    (:class:`StagePredictions`, resumed)), checkpointed per item under ``_work/<stage>/``."""

    def __init__(self, manifest, *, annotators: tuple[str, ...], omegaprm_final_answer: str,
                 **kwargs) -> None:
        super().__init__(manifest, **kwargs)
        self.annotators = annotators
        self.omegaprm_final_answer = omegaprm_final_answer

    def engine_config(self):
        return evaluation_roles(self.manifest, self.annotators,
                                pools=self.placement or None)[self.role]

    def setup(self) -> None:
        super().setup()
        self.settings = EvaluationSettings.from_manifest(
            self.manifest, omegaprm_final_answer=self.omegaprm_final_answer)

    def key(self, checked: CheckedItem) -> str:
        return checked.key

    def encode(self, result: StagePredictions) -> dict:
        return stage_predictions_to_json(result)

    def decode(self, data: dict) -> StagePredictions:
        return stage_predictions_from_json(data)

    def emit(self, checked: CheckedItem, result: StagePredictions, *, resumed: bool):
        yield checked.key, (result, resumed)


class PredictWithCompleterFn(_PredictionStageFn):
    """Monte Carlo and OmegaPRM predictions of items with a usable gold answer, on the
    completer."""

    stage, role = EVALUATE_ROLLOUTS, "completer"

    def work(self, engine, checked: CheckedItem):
        return completer_stage(checked.item, annotators=self.annotators, engine=engine,
                               settings=self.settings, gold_answer=checked.gold_answer)


class PredictWithJudgeFn(_PredictionStageFn):
    """The judge's predictions, on the judge."""

    stage, role = EVALUATE_JUDGE, "judge"

    def work(self, engine, checked: CheckedItem):
        return judge_stage(checked.item, engine=engine, settings=self.settings)


class PredictWithCriticFn(_PredictionStageFn):
    """The critic's predictions (the first step its critiques call incorrect), on the critic."""

    stage, role = EVALUATE_CRITIC, "critic"

    def work(self, engine, checked: CheckedItem):
        return critic_stage(checked.item, engine=engine, settings=self.settings)


class AssemblePredictionsFn(beam.DoFn):
    """(item key, {checked, completer, judge}) -> ``(output, row)`` of the item; its counters
    become Beam counters, and the item counts in the progress display (``problems_resumed``
    when every engine stage replayed its checkpoint)."""

    def __init__(self, manifest, *, spec: EvaluationSpec, out_dir: str,
                 pool: shared.Shared) -> None:
        self.manifest = manifest
        self.annotators = spec.annotators
        self.evaluation_hash = spec.hash
        self.out_dir = out_dir
        self._pool_handle = pool

    def setup(self) -> None:
        judge = self.manifest.judge
        self.judge_parser = judge.parser if judge else "processbench"
        # This worker's display, its total set by ProgressTotalFn (None where it did not run).
        self._progress = _acquire_pool(self._pool_handle).progress(self.out_dir, self.manifest,
                                                                   None)

    def process(self, element):
        _, grouped = element
        (checked,) = grouped["checked"]
        stages = [*grouped["completer"], *grouped["judge"], *grouped.get("critic", ())]
        rows, counters = item_outputs(checked, [part for part, _ in stages],
                                      annotators=self.annotators,
                                      evaluation_hash=self.evaluation_hash,
                                      run_seed=self.manifest.seed,
                                      judge_parser=self.judge_parser)
        # An item no engine stage worked on (no gold answer, no judge) is computed each run.
        resumed = bool(stages) and all(replayed for _, replayed in stages)
        counters["problems_resumed" if resumed else "problems_labelled"] = 1
        for name, value in counters.items():
            Metrics.counter("steplabel", name).inc(value)
        self._progress.update(resumed=resumed)
        for output in OUTPUTS:
            for row in rows.get(output, []):
                yield output, row

    def teardown(self) -> None:
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.close()


class PredictFirstErrors(beam.PTransform):
    """Gold items -> ``(output, row)`` of ``predictions`` and ``dead_letter``: a pure check of
    the gold answers, one engine stage per role the annotators use (completer, judge; both
    read the checked items, so one worker keeps both kinds of request in flight), joined by
    item. ``pool``: the ``shared.Shared`` handle of the worker's engine pool (one per worker
    process, as in the run job); a new one by default. ``accelerators``: role -> the accelerator
    its engine stage declares (the runner's ``stage_accelerators`` by default), as the run job's
    stages do."""

    def __init__(self, spec: EvaluationSpec, *, out_dir: str,
                 pool: shared.Shared | None = None,
                 accelerators: dict[str, str] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.out_dir = out_dir
        self.pool = pool if pool is not None else shared.Shared()
        self.accelerators = (stage_accelerators(spec.manifest.runner) if accelerators is None
                             else dict(accelerators))

    def _stage(self, fn: _PredictionStageFn):
        return declare_engine_resources(beam.ParDo(fn), role=fn.role,
                                        accelerators=self.accelerators)

    def expand(self, items):
        spec, m = self.spec, self.spec.manifest
        annotators = spec.annotators
        pool = self.pool
        stage = dict(manifest=m, annotators=annotators,
                     omegaprm_final_answer=spec.omegaprm_final_answer, out_dir=self.out_dir,
                     pool=pool, max_in_flight=m.runner.max_in_flight,
                     placement=self.accelerators)
        checked = items | "CheckGoldAnswers" >> beam.Map(check_item, annotators, m.grader)
        joined = {"checked": checked | "KeyItems" >> beam.Map(lambda c: (c.key, c))}
        if {"mc", "omegaprm"} & set(annotators):
            joined["completer"] = (
                checked
                | "WithGoldAnswer" >> beam.Filter(lambda c: c.gold_answer is not None)
                | "PredictWithCompleter" >> self._stage(PredictWithCompleterFn(**stage)))
        else:
            joined["completer"] = items.pipeline | "NoCompleter" >> beam.Create([])
        if "judge" in annotators:
            joined["judge"] = checked | "PredictWithJudge" >> self._stage(
                PredictWithJudgeFn(**stage))
        else:
            joined["judge"] = items.pipeline | "NoJudge" >> beam.Create([])
        if "critic" in annotators:
            joined["critic"] = checked | "PredictWithCritic" >> self._stage(
                PredictWithCriticFn(**stage))
        return (joined
                | "JoinPredictions" >> beam.CoGroupByKey()
                | "AssemblePredictions" >> beam.ParDo(AssemblePredictionsFn(
                    m, spec=spec, out_dir=self.out_dir, pool=pool)))


def build_evaluation_pipeline(pipeline: beam.Pipeline, spec: EvaluationSpec, *, out_dir: str):
    """Apply the evaluate job to ``pipeline``; returns the PCollection of written shards.

    The graph holds the gold and answers files' paths and hashes, never their records: the
    workers read them (:class:`ReadGoldFileFn`; the answers table is a side input, read once),
    count what they read into ``_work/gold_read.json`` for the report, and spread the items
    over the workers before the engine stages."""
    extra = []
    answers = answers_input(spec)
    if answers is not None:
        table = (pipeline
                 | "AnswersFile" >> beam.Create([answers])
                 | "ReadAnswers" >> beam.Map(read_answers, answer_field=spec.answer_field,
                                             answer_format=spec.answer_format))
        extra.append(beam.pvalue.AsSingleton(table))
    read = (pipeline
            | "GoldFiles" >> beam.Create(gold_inputs(spec))
            | "ReadGold" >> beam.ParDo(
                ReadGoldFileFn(answer_field=spec.answer_field,
                               answer_format=spec.answer_format, evaluation_hash=spec.hash),
                *extra).with_outputs(REJECTS, COUNTS, main="items"))
    counts = (read[COUNTS]
              | "CountGold" >> beam.CombineGlobally(sum_counts)
              | "WriteGoldCounts" >> beam.Map(write_gold_counts, out_dir))
    pool = shared.Shared()  # one engine pool per worker process, as in the run job
    predicted = (
        read.items
        | "ProgressTotal" >> beam.ParDo(ProgressTotalFn(spec.manifest, out_dir=out_dir,
                                                        pool=pool),
                                        beam.pvalue.AsSingleton(counts))
        | "SpreadItems" >> beam.Reshuffle()
        | "PredictFirstErrors" >> PredictFirstErrors(spec, out_dir=out_dir, pool=pool)
    )
    rejected = read[REJECTS] | "ReadRejects" >> beam.Map(lambda row: (DEAD_LETTER, row))
    return ((predicted, rejected) | "MergeOutputs" >> beam.Flatten()
            | "WriteOutputs" >> WriteShards(out_dir, num_shards=spec.manifest.runner.num_shards,
                                            schemas={PREDICTIONS: PREDICTION}))
