"""The labelling stages as Beam stages: one DoFn per model stage, rows through Beam.

::

    problems ─► SampleSolutions [policy] ─► solutions KV((problem_id, i), Solution)
             └► OmegaPRM [completer] ─────► pieces KV(problem_id, Piece)
    solutions (usable) ─ Reshuffle ─► Judge [judge] ─► KV((problem_id, i), Labels) ─┐
                                   └─────────── CoGroupByKey (consensus-guided) ◄─┘
                                                   └► MonteCarlo [completer] ─► KV(.., Labels)
    CoGroupByKey(solutions, mc, verdicts) ─► AssembleTrajectories (consensus) ─► pieces
                   └► CritiqueTasks (trusted labels) ─ Reshuffle ─► Critic [critic] ─► pieces
    (trust: omegaprm) OmegaPRM's searched rollouts ─┘
    GroupByKey(pieces by problem) ─► MergeProblems ─► (output, row), counters

**Critic** (issue #25, ``critic:``): after consensus, on the assembled trajectories, keyed by
(problem_id, i): trajectories without trusted labels are skipped under ``critic.only_trusted``
and counted (``critic_solutions_skipped``, ``critic_rollouts_not_spent``); the others' critiques
go to ``critiques/``. Under ``critic.trust: omegaprm`` the critic also reads OmegaPRM's pieces:
OmegaPRM searches its own rollouts, never the policy's samples, so its searched rollouts (with
their located first errors) are the trajectories it has labels for.

**Engines.** A model stage is one :class:`EngineStageFn` subclass. Its engine comes from an
:class:`~steplabel.pipelines.engine_pool.EnginePool` that one ``shared.Shared`` handle keeps per
worker process, keyed by the model's ``EngineConfig``: stages naming the same model share one
engine on one machine. The engine starts the first time a key needs work (a fully checkpointed
stage never starts it). Many keys are in flight at once on the pool's event loop (futures
drained as they finish, bounded by ``runner.max_in_flight`` problems; per-solution stages
multiply it by ``policy.samples``, and Monte Carlo with decided stopping by k too), so the
engine's continuous batching stays fed inside each stage: Beam's FnApiRunner runs fused stages
one after another. With consensus, Monte Carlo follows the judge
(``monte_carlo.consensus_guided``: no rollouts where consensus cannot keep the labels), joined
by key; without it, MonteCarlo and Judge read one ``Reshuffle`` and fuse, so one worker keeps
both kinds of request in flight.

**Placement.** Each model stage, and each role's ``IdentifyEngines`` step
(:mod:`steplabel.pipelines.engine_pool`; it starts the role's engine), declares
``with_resource_hints(accelerator=...)`` when the runner names an accelerator for its role
(``stage_accelerators``; one helper for ``run`` and ``evaluate``:
``runners.declare_engine_resources``): on Dataflow, steps with different hints are not fused,
and *right fitting* gives each its own worker pool, e.g. the judge on larger GPUs
(``type:nvidia-a100-80gb;count:1;install-nvidia-driver``) and sampling and Monte Carlo on L4s.
The ``Reshuffle`` between engine stages lets each scale on its own.

**Resume.** Every model stage checkpoints each finished key under ``_work/<stage>/`` on the
output filesystem (Beam ``FileSystems``), appended to a segment file per bundle
(:class:`~steplabel.pipelines.checkpoints.SegmentWriter`); the stage reads the segments once at
setup (:class:`~steplabel.pipelines.checkpoints.StageCheckpoints`) and replays a finished key
instead of recomputing it. A dead engine (``EngineDiedError``) is dropped from the pool (the
retried bundle builds a new one) after the other in-flight keys that still finish are
checkpointed; then the bundle fails.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from steplabel.annotators import stages as st
from steplabel.annotators.registry import (
    ANNOTATORS,
    CRITIC,
    JUDGE,
    MONTE_CARLO,
    OMEGAPRM,
    AnnotatorSpec,
)
from steplabel.dataset.stats import COLUMNS
from steplabel.engines.base import EngineDiedError
from steplabel.pipelines.checkpoints import SegmentWriter
from steplabel.pipelines.engine_pool import IdentifyEngines, _acquire_pool
from steplabel.pipelines.runners import declare_engine_resources
from steplabel.pipelines.shuffle import PackedCoGroupByKey, PackedGroupByKey, PackedReshuffle
from steplabel.schemas.annotators import TRUST_OMEGAPRM

log = logging.getLogger(__name__)

#: After a key's work raised (a dead engine, a bug): how long the other in-flight keys get to
#: finish and be checkpointed before the bundle fails, in seconds.
SETTLE_TIMEOUT_S = 30.0


def expected_requests(manifest, total: int | None) -> dict[str, int]:
    """Requests the labelling job makes by role, where known before it runs (``total``: input
    rows): one policy request per problem, and one judge request per sampled solution; fewer
    when input rows are dead letters or solutions are cut off at max_tokens (not judged).
    Monte Carlo's depend on the solutions' steps."""
    if not total:
        return {}
    expected = {"policy": total}
    if manifest.judge is not None and manifest.policy is not None:
        expected["judge"] = total * manifest.policy.samples
    return expected



# A model stage


class EngineStageFn(beam.DoFn):
    """One model stage: keys in, results out, many keys in flight against one engine.

    Subclasses name the ``stage`` and the engine ``role`` and define :meth:`key`,
    :meth:`bind` (engine -> what :meth:`work` needs, built once per engine), :meth:`work`
    (a coroutine whose result is a record, checkpointed as JSON), :meth:`decode` (checkpoint
    -> record) and :meth:`emit` (element, record -> outputs).
    """

    stage = ""
    role = ""

    def __init__(self, manifest, *, out_dir: str, pool: shared.Shared,
                 max_in_flight: int, total: int | None = None,
                 placement: dict[str, str] | None = None) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self.max_in_flight = max_in_flight
        self.total = total
        self._pool_handle = pool
        # role -> worker pool (the runner's stage_accelerators): roles on one pool share its
        # GPUs' memory; a role on a pool of its own gets all of it.
        self.placement = dict(placement or {})

    # -- per stage ------------------------------------------------------------------------

    def key(self, element) -> str:
        raise NotImplementedError

    def bind(self, engine):
        return engine

    def work(self, bound, element):
        raise NotImplementedError

    def encode(self, result):
        """The checkpoint of ``result``: JSON data, or a dataclass record (written field by
        field, without ``dataclasses.asdict``'s deep copy)."""
        return result

    def decode(self, data: dict):
        raise NotImplementedError

    def emit(self, element, result, *, resumed: bool):
        raise NotImplementedError

    # -- machinery ------------------------------------------------------------------------

    def engine_config(self):
        """The engine config of this stage's role, its share of GPU memory set."""
        return self.ctx.roles(self.placement or None)[self.role]

    def setup(self) -> None:
        self.ctx = st.StageContext(self.manifest)
        self._config = self.engine_config()
        self._pool = _acquire_pool(self._pool_handle)
        self._progress = self._pool.progress(self.out_dir, self.manifest, self.total)
        self._checkpoints = self._pool.checkpoints(self.out_dir, self.stage)
        self._engine = self._bound = None

    def _bind(self):
        """The engine-bound helpers, starting the engine if this worker has none (first use,
        or the last one died)."""
        if self._engine is None or not self._pool.is_current(self._config, self._engine):
            self._engine = self._pool.engine(self._config, self.role)
            self._bound = self.bind(self._engine)
        return self._bound

    def start_bundle(self) -> None:
        self._pending: dict[concurrent.futures.Future, tuple[str, object]] = {}
        self._checkpoints.refresh(if_needed=True)  # a retry after a failure
        self._writer = SegmentWriter(self._checkpoints)

    def process(self, element):
        key = self.key(element)
        data = self._checkpoints.load(key)
        if data is not None:
            Metrics.counter("steplabel", f"stage_{self.stage}_resumed").inc()
            yield from self.emit(element, self.decode(data), resumed=True)
            return
        future = self._pool.submit(self.work(self._bind(), element))
        self._pending[future] = (key, element)
        yield from self._drain(until=self.max_in_flight - 1)

    def finish_bundle(self):
        for output in self._drain(until=0):
            yield GlobalWindows.windowed_value(output)
        self._writer.close()
        self._count_engine_work()

    def _count_engine_work(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            for name, value in pool.engine_counter_deltas().items():
                Metrics.counter("steplabel", name).inc(value)

    def _finished(self, future, key: str, element):
        result = future.result()
        self._writer.add(key, self.encode(result))
        Metrics.counter("steplabel", f"stage_{self.stage}_computed").inc()
        yield from self.emit(element, result, resumed=False)

    def _drain(self, *, until: int):
        while len(self._pending) > until:
            done, _ = concurrent.futures.wait(self._pending, timeout=self._progress.poll_s,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:  # long keys: still show that the engines are working
                self._progress.update(force=True)
                self._writer.flush_if_due()
                continue
            failed = None
            for future in sorted(done, key=lambda f: self._pending[f][0]):
                key, element = self._pending.pop(future)
                if future.exception() is not None:
                    failed = failed or future
                    continue
                yield from self._finished(future, key, element)
            if failed is not None:
                self._fail(failed)

    def _fail(self, failed: concurrent.futures.Future) -> None:
        """A key's work raised instead of returning a result: a dead engine or a bug, never a
        request error (those are results). Checkpoint every other in-flight key that still
        finishes, drop a dead engine from the pool (a retry builds a new one), raise."""
        pending, self._pending = self._pending, {}
        done, not_done = concurrent.futures.wait(pending, timeout=SETTLE_TIMEOUT_S)
        saved = 0
        for future in done:
            if future.exception() is None:
                key, _ = pending[future]
                self._writer.add(key, self.encode(future.result()))
                saved += 1
        for future in not_done:
            future.cancel()
        self._writer.close()
        self._checkpoints.failed()
        error = failed.exception()
        if isinstance(error, EngineDiedError):
            self._pool.discard(self._config)
            self._engine = self._bound = None
        self._count_engine_work()
        log.error("stage %s stopped: %s: %s (%d in-flight keys checkpointed, %d cancelled)",
                  self.stage, type(error).__name__, error, saved, len(not_done))
        raise error


class SampleSolutionsFn(EngineStageFn):
    """Problem -> (problem, :class:`~steplabel.annotators.stages.Sampled`) on the policy."""

    stage, role = st.SAMPLE, "policy"

    def key(self, problem) -> str:
        return problem.problem_id

    def work(self, engine, problem):
        return st.sample_solutions(self.ctx, engine, problem)

    def decode(self, data):
        return st.sampled_from_json(data)

    def emit(self, problem, sampled, *, resumed: bool):
        Metrics.counter("steplabel", "problems_resumed" if resumed else "problems_labelled").inc()
        yield problem, sampled, resumed


class MonteCarloFn(EngineStageFn):
    """(solution, judge :class:`Labels` or None) -> ((problem_id, i), Monte Carlo
    :class:`Labels`) on the completer (the verdict guides the rollouts under
    ``consensus_guided``)."""

    stage, role = MONTE_CARLO.name, MONTE_CARLO.role
    #: The annotators whose labels its input joins (the judge's verdict guides it).
    reads = (JUDGE.name,)

    @staticmethod
    def inputs(stages: "LabelStages", usable, labels: dict):
        """(solution, judge verdict or None): joined with the judge's labels under
        ``consensus_guided`` (no rollouts where consensus cannot keep the labels; the join is
        the shuffle between the two engine stages), else None."""
        if not stages.ctx.mc_config.consensus_guided:
            return usable | "Unguided" >> beam.Map(lambda s: (s, None))
        return ({"solution": usable | "KeyUsable" >> beam.Map(lambda s: (s.key, s)),
                 "judge": labels[JUDGE.name]}
                | "JoinVerdicts" >> PackedCoGroupByKey()
                | "GuidedSolutions" >> beam.MapTuple(
                    lambda _, g: (list(g["solution"])[0], next(iter(g["judge"]), None))))

    @staticmethod
    def in_flight(stages: "LabelStages") -> int:
        """Decided stopping sends a solution's rollouts in small waves (1, 1, 2, ...), one step
        at a time under first-error-only: k times more solutions in flight keep about as many
        samples at the engine as fixed k would, so waves do not starve its batches."""
        config = stages.ctx.mc_config
        return stages.per_solution * (config.rollouts if config.stopping == "decided" else 1)

    def key(self, element) -> str:
        solution, _ = element
        return json.dumps([solution.problem_id, solution.index])

    def bind(self, engine):
        return engine, self.ctx.mc_annotator(engine)

    def work(self, bound, element):
        engine, annotator = bound
        solution, verdict = element
        # The completer continues prefixes in its own chat template (it may be another model).
        prompt = self.ctx.solution_prompt(engine, solution.question)
        return st.monte_carlo_labels(self.ctx, annotator, prompt, solution, verdict)

    def decode(self, data):
        return st.labels_from_json(data)

    def emit(self, element, labels, *, resumed: bool):
        yield element[0].key, labels


class JudgeFn(EngineStageFn):
    """Solution -> ((problem_id, i), judge :class:`Labels`) on the judge."""

    stage, role = JUDGE.name, JUDGE.role
    reads = ()

    @staticmethod
    def inputs(stages: "LabelStages", usable, labels: dict):
        return usable

    @staticmethod
    def in_flight(stages: "LabelStages") -> int:
        return stages.per_solution

    def key(self, solution) -> str:
        return json.dumps([solution.problem_id, solution.index])

    def bind(self, engine):
        return self.ctx.judge(engine)

    def work(self, judge, solution):
        return st.judge_labels(judge, solution)

    def decode(self, data):
        return st.labels_from_json(data)

    def emit(self, solution, labels, *, resumed: bool):
        yield solution.key, labels


class OmegaPRMFn(EngineStageFn):
    """Problem -> (problem_id, OmegaPRM :class:`Piece`) on the completer."""

    stage, role = OMEGAPRM.name, OMEGAPRM.role

    def key(self, problem) -> str:
        return problem.problem_id

    def bind(self, engine):
        return engine, self.ctx.omegaprm_annotator(engine), st.engine_identity(engine)[0]

    def work(self, bound, problem):
        engine, annotator, model_id = bound
        prompt = self.ctx.solution_prompt(engine, problem.question)
        return st.omegaprm_rows(self.ctx, annotator, prompt, problem, completer_model=model_id)

    def decode(self, data):
        return st.piece_from_json(data)

    def emit(self, problem, piece, *, resumed: bool):
        yield problem.problem_id, piece


class CriticFn(EngineStageFn):
    """:class:`~steplabel.schemas.stages.CritiqueTask` (an assembled trajectory with its
    trusted labels) -> (problem_id, ("piece", critiques :class:`Piece`)) on the critic."""

    stage, role = CRITIC.name, CRITIC.role

    @staticmethod
    def in_flight(stages: "LabelStages") -> int:
        return stages.per_solution

    def key(self, task) -> str:
        return json.dumps(list(task.key))  # [problem_id, i] (an OmegaPRM rollout: + its id)

    def bind(self, engine):
        return self.ctx.critic(engine)

    def work(self, critic, task):
        return st.critique_piece(self.ctx, critic, task)

    def decode(self, data):
        return st.piece_from_json(data)

    def emit(self, task, piece, *, resumed: bool):
        yield task.problem_id, ("piece", piece)


#: The Beam stage of each annotator (:data:`~steplabel.annotators.registry.ANNOTATORS`).
#: A ``per: solution`` stage reads solutions (``inputs``: usable solutions, possibly joined
#: with the labels of the annotators it ``reads``) and emits ``((problem_id, i), Labels)``;
#: a ``per: problem`` stage reads problems and emits ``(problem_id, Piece)``; an
#: ``after_consensus`` stage reads :class:`CritiqueTask` s of the assembled trajectories and
#: emits ``(problem_id, ("piece", Piece))``.
ANNOTATOR_STAGES: dict[str, type[EngineStageFn]] = {
    MONTE_CARLO.name: MonteCarloFn, OMEGAPRM.name: OmegaPRMFn, JUDGE.name: JudgeFn,
    CRITIC.name: CriticFn}


class AssembleTrajectoriesFn(beam.DoFn):
    """(key, {solution, monte_carlo, judge}) -> (problem_id, ("piece", Piece)): consensus and
    the row (consensus combines exactly these two annotators' labels)."""

    def __init__(self, manifest) -> None:
        self.manifest = manifest

    def setup(self) -> None:
        self.ctx = st.StageContext(self.manifest)

    def process(self, item):
        (problem_id, _), grouped = item
        solutions = list(grouped["solution"])
        labels = {name: next(iter(grouped[name]), None) for name in grouped
                  if name != "solution"}
        # The job's provenance, the same on every row, is added by the sink (WriteShards): rows
        # carry only their own part (the policy seed) through the shuffles.
        piece = st.assemble_trajectory(self.ctx, solutions[0], labels.get(MONTE_CARLO.name),
                                       labels.get(JUDGE.name), {})
        yield problem_id, ("piece", piece)


def figure_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A problem's rows, reduced to the columns the dataset's figures read."""
    return {output: [{c: row.get(c) for c in COLUMNS[output]} for row in items]
            for output, items in rows.items()}


class MergeProblemsFn(beam.DoFn):
    """(problem_id, [("problem", Problem) | ("piece", Piece)]) -> (output, row); the problem's
    counters become Beam counters, and all its rows go together to the ``problems`` output
    (``(problem_id, {output: rows})``, for the dataset's figures)."""

    PROBLEMS = "problems"

    def __init__(self, manifest, *, out_dir: str, pool: shared.Shared,
                 total: int | None = None, close_progress: bool = True) -> None:
        self.manifest = manifest
        self.out_dir = out_dir
        self.total = total
        self._pool_handle = pool
        self.close_progress = close_progress

    def setup(self) -> None:
        self.ctx = st.StageContext(self.manifest)
        self._progress = _acquire_pool(self._pool_handle).progress(self.out_dir, self.manifest,
                                                                   self.total)
        self._progress.expect(expected_requests(self.manifest, self.total))

    def process(self, item):
        problem_id, parts = item
        problem, resumed = next(value for kind, value in parts if kind == "problem")
        pieces = [value for kind, value in parts if kind == "piece"]
        rows, counters = st.merge_problem(self.ctx, problem_id, pieces, source=problem.source,
                                          original=problem.original)
        for name, value in counters.items():
            Metrics.counter("steplabel", name).inc(value)
        self._progress.update(resumed=resumed)
        for output in sorted(rows):
            for row in rows[output]:
                yield output, row
        # The figures read a few columns: only those cross to the Figures combiner.
        yield beam.pvalue.TaggedOutput(self.PROBLEMS, (problem_id, figure_rows(rows)))

    def teardown(self) -> None:
        # The last stage of the labelling is over: the final progress line, bars closed.
        progress = getattr(self, "_progress", None)
        if progress is not None and self.close_progress:
            progress.close()


class LabelStages(beam.PTransform):
    """Validated problems -> ``(output, row)`` for every output of the labelling stages (the
    main output) and ``problems``: ``(problem_id, {output: rows})`` per problem."""

    def __init__(self, manifest, *, out_dir: str, total: int | None = None,
                 accelerators: dict[str, str] | None = None, pool: shared.Shared | None = None,
                 close_progress: bool = True) -> None:
        super().__init__()
        self.manifest = manifest
        self.out_dir = out_dir
        self.total = total
        self.accelerators = dict(accelerators or {})
        self.pool = pool
        self.close_progress = close_progress

    def _specs(self, per: str) -> list[AnnotatorSpec]:
        """The annotators with a stage per ``per``: those the manifest runs for ``problem``;
        all for ``solution`` (each is a tag of the join; an annotator reading others' labels
        comes after them)."""
        specs = [spec for spec in ANNOTATORS.values()
                 if spec.per == per and not spec.after_consensus]
        if per == "problem":
            return [spec for spec in specs if spec.config(self.manifest) is not None]
        ordered: list[AnnotatorSpec] = []
        while len(ordered) < len(specs):
            ready = [spec for spec in specs if spec not in ordered and all(
                name in [o.name for o in ordered]
                for name in ANNOTATOR_STAGES[spec.name].reads)]
            if not ready:
                raise ValueError("annotator stages read each other's labels in a circle")
            ordered += ready[:1]
        return ordered

    def _stage(self, fn: EngineStageFn):
        return declare_engine_resources(beam.ParDo(fn), role=fn.role,
                                        accelerators=self.accelerators)

    def _annotate(self, fn_class, stage_input, **options):
        spec = ANNOTATORS[fn_class.stage]
        return stage_input | spec.stage_label >> self._stage(fn_class(**options))

    def _after_consensus(self, spec: AnnotatorSpec, assembled, engine_stage: dict,
                         problems, searched) -> list:
        """The pieces of an annotator that reads the assembled trajectories (the critic): its
        tasks, the skipped ones counted, the others through its engine stage. ``searched``:
        OmegaPRM's ``(problem_id, Piece)`` (None without OmegaPRM); under ``trust: omegaprm``
        its searched rollouts are tasks too, joined with their problems."""
        config, label = spec.config(self.manifest), spec.stage_label
        tasks = assembled | f"{label}Tasks" >> beam.FlatMap(
            lambda item: st.critique_tasks(config, item[1][1]))
        if searched is not None and config.trust == TRUST_OMEGAPRM:
            keyed = problems | f"{label}KeyProblems" >> beam.Map(lambda p: (p.problem_id, p))
            rollouts = ({"problem": keyed, "omegaprm": searched}
                        | f"{label}JoinOmegaPRM" >> PackedCoGroupByKey()
                        | f"{label}OmegaPRMTasks" >> beam.FlatMap(
                            lambda item: [task for problem in item[1]["problem"]
                                          for piece in item[1]["omegaprm"]
                                          for task in st.omegaprm_critique_tasks(
                                              config, problem, piece)]))
            tasks = (tasks, rollouts) | f"{label}AllTasks" >> beam.Flatten()
        skipped = (tasks
                   | f"{label}Skipped" >> beam.Filter(
                       lambda task: not st.needs_critique(config, task))
                   | f"{label}SkippedPiece" >> beam.Map(lambda task: (
                       task.problem_id, ("piece", st.skipped_critique_piece(config, task)))))
        chosen = (tasks
                  | f"{label}Chosen" >> beam.Filter(lambda task: st.needs_critique(config, task))
                  | f"Spread{label}Tasks" >> PackedReshuffle())
        fn_class = ANNOTATOR_STAGES[spec.name]
        return [skipped, self._annotate(fn_class, chosen, **engine_stage,
                                        max_in_flight=fn_class.in_flight(self))]

    def expand(self, problems):
        m = self.manifest
        # One pool per worker process: one engine per model config (the caller's handle keeps
        # engines loaded from one pipeline to the next, e.g. the local runner's waves).
        pool = self.pool or shared.Shared()
        common = dict(manifest=m, out_dir=self.out_dir, pool=pool)
        engine_stage = dict(common, total=self.total, placement=self.accelerators)
        per_problem = m.runner.max_in_flight
        self.per_solution = m.runner.max_in_flight * m.policy.samples
        self.ctx = ctx = st.StageContext(m)
        roles = sorted(ctx.roles())
        identities = problems.pipeline | "IdentifyEngines" >> IdentifyEngines(
            m, roles=roles, out_dir=self.out_dir, pool=pool, accelerators=self.accelerators)

        sampled = problems | "SampleSolutions" >> self._stage(
            SampleSolutionsFn(**engine_stage, max_in_flight=per_problem))
        solutions = sampled | "Solutions" >> beam.FlatMap(lambda ps: ps[1].solutions)
        parts = [
            sampled | "ProblemOf" >> beam.Map(
                lambda ps: (ps[0].problem_id, ("problem", (ps[0], ps[2])))),
            sampled | "SamplingPiece" >> beam.Map(
                lambda ps: (ps[0].problem_id, ("piece", st.sampled_piece(ps[1])))),
        ]
        per_problem_pieces = {}  # name -> KV(problem_id, Piece)
        for spec in self._specs("problem"):  # their own rows, per problem
            per_problem_pieces[spec.name] = self._annotate(
                ANNOTATOR_STAGES[spec.name], problems, **engine_stage, max_in_flight=per_problem)
            parts.append(per_problem_pieces[spec.name]
                         | f"{spec.stage_label}Piece" >> beam.MapTuple(
                             lambda pid, piece: (pid, ("piece", piece))))
        usable = (solutions
                  | "Usable" >> beam.Filter(lambda s: not s.truncated)
                  | "SpreadSolutions" >> PackedReshuffle())
        joined = {"solution": solutions | "KeySolutions" >> beam.Map(lambda s: (s.key, s))}
        labels: dict = {}  # name -> KV((problem_id, i), Labels), every per-solution annotator
        for spec in self._specs("solution"):
            fn_class = ANNOTATOR_STAGES[spec.name]
            if spec.config(m) is None:
                labels[spec.name] = problems.pipeline | f"No{spec.stage_label}" >> beam.Create([])
                continue
            labels[spec.name] = self._annotate(
                fn_class, fn_class.inputs(self, usable, labels), **engine_stage,
                max_in_flight=fn_class.in_flight(self))
        joined.update(labels)
        assembled = (joined
                     | "JoinSolutionLabels" >> PackedCoGroupByKey()
                     | "AssembleTrajectories" >> beam.ParDo(AssembleTrajectoriesFn(m)))
        parts.append(assembled)
        for spec in ANNOTATORS.values():  # after consensus: they read the assembled rows
            if spec.after_consensus and spec.config(m) is not None:
                parts.extend(self._after_consensus(
                    spec, assembled, engine_stage, problems,
                    per_problem_pieces.get(OMEGAPRM.name)))
        # The provenance every trajectory row shares, for the sink (see AssembleTrajectoriesFn).
        self.provenance = (identities
                           | "EngineIdentities" >> beam.combiners.ToDict()
                           | "Provenance" >> beam.Map(
                               lambda found: st.StageContext(m).provenance(found)))
        return (tuple(parts)
                | "GroupByProblem" >> PackedGroupByKey()
                | "MergeProblems" >> beam.ParDo(MergeProblemsFn(
                    **common, total=self.total, close_progress=self.close_progress))
                .with_outputs(MergeProblemsFn.PROBLEMS, main="rows"))
