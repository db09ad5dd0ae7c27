"""What a worker's engines served, and the live progress of a job's model stages.

- :class:`EngineClock`: engine-busy time and samples in flight (``steplabel plan`` derives
  throughput from it).
- :class:`MeteredEngine`: an engine wrapper counting requests, rollouts and tokens per role
  (prefix-cache hits included: a run metric, not a row value).
- :func:`engine_counter_totals`: a worker's engine counters, for Beam counters (stats.json).
- :class:`Progress`: the progress bars or lines, one per job and worker process.

The engines themselves live in the worker's
:class:`~steplabel.pipelines.engine_pool.EnginePool`, which builds these.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time

log = logging.getLogger(__name__)


class EngineClock:
    """Engine-busy time of one worker (``steplabel plan`` derives throughput from it).

    ``busy_seconds()``: seconds during which at least one request was outstanding on the
    worker's engines (engine start-up and idle gaps excluded); ``sample_seconds()``: the time
    integral of outstanding samples (a request of ``n`` counts ``n``), so that
    ``sample_seconds / busy_seconds`` is the mean number of samples in flight. Requests enter
    and leave on the engine host's event loop; the lock only guards reads from other threads.

    Per request it also notes how throughput depends on concurrency (a pilot has fewer samples
    in flight than the full job): ``b``, the mean samples in flight during the request's life,
    and ``y``, its seconds per decode step (duration / (longest sample's tokens + 1 for the
    prefill)), summed for a least-squares fit of ``y = a + c·b`` weighted by steps
    (:meth:`counters`); and ``tokens / b`` summed, for the token-weighted harmonic mean of
    ``b`` (the concurrency the pilot's tokens were generated at).
    """

    #: Requests of fewer decode steps (judge verdicts) are mostly prefill: not in the fit.
    MIN_FIT_STEPS = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = self._samples = 0
        self._busy = self._sample_time = 0.0
        self._since = 0.0
        # sum w, w·b, w·y, w·b², w·b·y (w = steps); tokens and tokens / b of timed requests
        self._fit = [0.0] * 5
        self._tokens = self._tokens_over_b = 0.0
        self._prompt: dict[str, list[int]] = {}  # role -> [prompt tokens, cached of them]

    def served(self, role: str, *, prompt_tokens: int, cached_tokens: int) -> None:
        """One request of ``role`` was served: its prompt tokens and the prefix-cache hits."""
        with self._lock:
            tally = self._prompt.setdefault(role or "engine", [0, 0])
            tally[0] += prompt_tokens
            tally[1] += cached_tokens

    def _advance(self, now: float) -> None:
        if self._requests:
            self._busy += now - self._since
            self._sample_time += self._samples * (now - self._since)
        self._since = now

    def enter(self, samples: int) -> tuple[float, float]:
        """A request of ``samples`` samples starts; returns its start mark for :meth:`leave`."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            self._requests += 1
            self._samples += samples
            return now, self._sample_time

    def leave(self, samples: int, started: tuple[float, float] | None = None, *,
              steps: int = 0, tokens: int = 0) -> None:
        """The request ends; ``steps``: its longest sample's generated tokens (0 if it failed),
        ``tokens``: all its samples' generated tokens."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            self._requests -= 1
            self._samples -= samples
            if started is None or now <= started[0]:
                return
            b = (self._sample_time - started[1]) / (now - started[0])
            if tokens and b > 0:
                self._tokens += tokens
                self._tokens_over_b += tokens / b
            if steps >= self.MIN_FIT_STEPS:
                y = (now - started[0]) / (steps + 1)
                for i, value in enumerate((1.0, b, y, b * b, b * y)):
                    self._fit[i] += steps * value

    def busy_seconds(self) -> float:
        with self._lock:
            self._advance(time.monotonic())
            return self._busy

    def sample_seconds(self) -> float:
        with self._lock:
            self._advance(time.monotonic())
            return self._sample_time

    def counters(self) -> dict[str, int]:
        """Totals so far, as Beam counters (integers: ms, and milli-/micro-units of the fit
        sums, ``b`` in milli-samples and ``y`` in microseconds): ``engine_busy_ms``,
        ``engine_sample_ms``, ``engine_fit_w``, ``engine_fit_wb``, ``engine_fit_wy``,
        ``engine_fit_wbb``, ``engine_fit_wby``, ``engine_fit_tokens``,
        ``engine_fit_tokens_over_b`` (milli), and per role ``engine_prompt_tokens_<role>`` and
        ``engine_cached_tokens_<role>`` (prefix-cache hits). Sums over workers add up."""
        busy, samples = self.busy_seconds(), self.sample_seconds()
        with self._lock:
            w, wb, wy, wbb, wby = self._fit
            tokens, tokens_over_b = self._tokens, self._tokens_over_b
            prompt = {role: tuple(tally) for role, tally in self._prompt.items()}
        served = {}
        for role, (prompt_tokens, cached_tokens) in sorted(prompt.items()):
            served[f"engine_prompt_tokens_{role}"] = prompt_tokens
            served[f"engine_cached_tokens_{role}"] = cached_tokens
        return {
            "engine_busy_ms": round(1000 * busy),
            "engine_sample_ms": round(1000 * samples),
            "engine_fit_w": round(w),
            "engine_fit_wb": round(1e3 * wb),
            "engine_fit_wy": round(1e6 * wy),
            "engine_fit_wbb": round(1e6 * wbb),
            "engine_fit_wby": round(1e9 * wby),
            "engine_fit_tokens": round(tokens),
            "engine_fit_tokens_over_b": round(1e3 * tokens_over_b),
            **served,
        }


class MeteredEngine:
    """An engine that counts what it served (for live progress); otherwise transparent.

    ``role`` says what the requests are for (``policy``: one request per problem, its samples;
    ``completer``: one per Monte Carlo step prefix or OmegaPRM estimate; ``judge``: one per
    trajectory): one wrapper per role, so the progress display can count stages even when the
    roles share one engine. ``clock`` (shared by a worker's wrappers) times engine-busy time."""

    def __init__(self, engine, *, role: str = "", clock: EngineClock | None = None) -> None:
        self._engine = engine
        self.role = role
        self.clock = clock
        self.model_id = engine.model_id
        self.requests = 0
        self.rollouts = 0
        self.generated_tokens = 0

    async def generate(self, request):
        if self.clock is None:
            result = await self._engine.generate(request)
        else:
            started, result = self.clock.enter(request.n), None
            try:
                result = await self._engine.generate(request)
            finally:
                self.clock.leave(request.n, started,
                                 steps=max(result.generated_tokens, default=0) if result else 0,
                                 tokens=result.total_generated_tokens if result else 0)
        self.requests += 1
        self.rollouts += len(result.texts)
        self.generated_tokens += result.total_generated_tokens
        if self.clock is not None:
            self.clock.served(self.role, prompt_tokens=result.prompt_tokens,
                              cached_tokens=result.cached_prompt_tokens)
        return result

    def __getattr__(self, name):
        return getattr(self._engine, name)


def engine_counter_totals(engines, clock) -> dict[str, int]:
    """Cumulative engine counters of one worker, for Beam counters (stats.json):
    ``engine_workers`` (1), ``engine_start_ms`` (the engines' ``start_seconds``, where an engine
    has it: vLLM does, custom engines may not), the clock's counters
    (:meth:`EngineClock.counters`, for ``steplabel plan``), and ``engine_requests``,
    ``engine_attempts``, ``engine_retries``, ``engine_failures`` and ``engine_retry_<reason>``
    of the engines that keep :class:`~steplabel.engines.openai_engine.EngineCounters`
    (``counters``)."""
    totals: dict[str, int] = {
        "engine_workers": 1,
        "engine_start_ms": round(1000 * sum(
            getattr(e, "start_seconds", 0.0) or 0.0 for e in engines)),
        **clock.counters(),
    }
    for engine in engines:
        counters = getattr(engine, "counters", None)
        if counters is None:
            continue
        for name in ("requests", "attempts", "retries", "failures"):
            totals[f"engine_{name}"] = totals.get(f"engine_{name}", 0) + getattr(
                counters, name, 0)
        for reason, count in getattr(counters, "retry_reasons", {}).items():
            key = "engine_retry_" + re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")
            totals[key] = totals.get(key, 0) + count
    return totals


class Progress:
    """Live progress of the labelling stage, on ``stream`` (stderr).

    On a terminal (``bars``, default: ``stream.isatty()``): tqdm bars, one per stage. ``problems``
    counts problems done of ``total`` (resumed ones apart) with rollouts/s, tokens/s and an ETA
    from tqdm's smoothed rate; ``sampled`` counts problems whose policy samples came back;
    ``steps labelled`` counts Monte Carlo estimates of step prefixes (OmegaPRM's estimates
    included); ``judged`` counts judged trajectories. ``expected`` (role -> requests the job
    will make, when known: the judge's is problems x policy samples, fewer when solutions are
    cut off) gives a stage's bar and count a total, so that progress shows before the first
    problem is done. The bars are redrawn at most every ``refresh_s`` seconds (tqdm's own rate
    limit). Elsewhere (a log file, CI): a plain line at a growing interval (``interval_s``,
    doubled after each line up to ``max_interval_s``), at each tenth of the problems done
    (at most one a second), and at the end.

    Either way, the plain line also goes to the ``steplabel.progress`` logger, marked
    ``file_only`` (the dataset's log file gets it, the terminal does not: it has the bars).

    ``served() -> (rollouts, generated tokens)`` and ``stages() -> {role: requests}`` read the
    engines' meters (:class:`MeteredEngine`).
    """

    #: (role in ``stages()``, label), in display order under the problems bar.
    STAGES = (("policy", "sampled"), ("completer", "steps labelled"),
              ("judge", "trajectories judged"), ("critic", "trajectories critiqued"))

    def __init__(self, total: int | None, *, interval_s: float = 5.0,
                 max_interval_s: float = 30.0, stream=None, served=None, stages=None,
                 expected: dict[str, int] | None = None, bars: bool | None = None,
                 refresh_s: float = 0.5, clock=time.monotonic) -> None:
        self.total = total
        self.served = served  # () -> (rollouts, generated tokens) served by the engines so far
        self.stages = stages  # () -> {role: requests served}
        self.expected = {role: n for role, n in (expected or {}).items() if n}
        self.interval_s = interval_s
        self.max_interval_s = max(interval_s, max_interval_s)
        self._next_interval_s = interval_s  # plain lines: grows after each one
        self._tenths = 0  # plain lines: tenths of the problems done when the last was printed
        self.stream = stream or sys.stderr
        if bars is None:
            isatty = getattr(self.stream, "isatty", None)
            bars = bool(isatty and isatty())
        self.bars = bars
        self.refresh_s = refresh_s
        self.clock = clock  # seconds, monotonic (a test passes its own)
        self.started = clock()
        self.last_print = 0.0
        self.done = self.resumed = self.rollouts = self.tokens = 0
        self.stage_counts: dict[str, int] = {}
        self.closed = self.closing = False
        self._lock = threading.Lock()
        self._bars: dict[str, object] = {}
        from tqdm.std import EMA

        # Smoothed rate of computed (not resumed) problems, as tqdm smooths its own: an
        # exponential moving average of problems done and of seconds taken, then their ratio.
        self._ema_dn, self._ema_dt = EMA(0.3), EMA(0.3)
        self._last_rate_at = (self.started, 0)

    def expect(self, expected: dict[str, int]) -> None:
        """Requests by role the job will make, where known (the labelling job sets them; a
        stage's bar then has a total)."""
        with self._lock:
            self.expected.update({role: n for role, n in expected.items() if n})

    @property
    def poll_s(self) -> float:
        """How long the labelling loop may wait before calling :meth:`update` again."""
        return min(self.interval_s, 1.0) if self.bars else self.interval_s

    def update(self, *, resumed: bool = False, force: bool = False) -> None:
        """One more problem done (``resumed``: replayed from its checkpoint); ``force``: no
        problem, only show the engines' progress."""
        with self._lock:
            if self.closed:
                return
            self.done += not force
            self.resumed += resumed and not force
            self._read_meters()
            now = self.clock()
            if not force and not resumed:
                self._feed_rate(now)
            finished = self.total is not None and self.done >= self.total
            if self.bars:
                self._draw()
            tenths = self.done * 10 // self.total if self.total else 0
            since = now - self.last_print
            # A new tenth prints too, but not within a second of the last line (problems that
            # finish together: one line, not one each).
            if (since >= self._next_interval_s or finished
                    or (tenths > self._tenths and since >= min(1.0, self.interval_s))):
                self.last_print = now
                self._tenths = tenths
                self._next_interval_s = min(self.max_interval_s, self._next_interval_s * 2)
                self._plain(self.line(now))
            if finished:
                self._close_bars()

    def close(self) -> None:
        """Final state: the last plain line, bars closed (left on screen)."""
        with self._lock:
            if self.closed:
                return
            self._read_meters()
            self.closing = True
            if self.bars:
                self._draw()
            self._plain(self.line() + ", labelling done")
            self._close_bars()

    # -----------------------------------------------------------------------------------------

    def _read_meters(self) -> None:
        if self.served is not None:
            self.rollouts, self.tokens = self.served()
        if self.stages is not None:
            self.stage_counts = dict(self.stages())

    def _feed_rate(self, now: float) -> None:
        at, computed = self._last_rate_at
        done_now = self.done - self.resumed
        self._ema_dn(done_now - computed)
        self._ema_dt(now - at)
        self._last_rate_at = (now, done_now)

    def eta_s(self) -> float | None:
        """Seconds left, from the smoothed rate of computed problems; None before the first
        computed problem and once all are done."""
        if (not self.total or self.done >= self.total or self.done == self.resumed
                or self.closing):
            return None
        dt = self._ema_dt()
        rate = self._ema_dn() / dt if dt > 0 else 0.0
        return max(0.0, (self.total - self.done) / rate) if rate > 0 else None

    def _plain(self, text: str) -> None:
        logging.getLogger("steplabel.progress").info(text, extra={"file_only": True})  # logs.FILE_ONLY
        if not self.bars:
            print(text, file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-6, (now or self.clock()) - self.started)
        total = f"/{self.total}" if self.total else ""
        eta = self.eta_s()
        counts = self._counts()
        stages = ", ".join(
            f"{label} {counts[role]}" + (f"/{self.expected[role]}" if role in self.expected else "")
            for role, label in self.STAGES if counts.get(role))
        return (f"[steplabel] problems {self.done}{total} ({self.resumed} resumed), "
                + (f"{stages}, " if stages else "")
                + f"{self.rollouts / elapsed:.1f} rollouts/s, {self.tokens / elapsed:.0f} "
                f"tokens/s, {elapsed:.1f}s elapsed"
                + (f", ETA {eta:.0f}s" if eta is not None else ""))

    def _counts(self) -> dict[str, int]:
        """Requests by role, those of resumed problems included (replayed from checkpoints,
        they were made before): a problem's policy request, and its share of the judge's."""
        counts = dict(self.stage_counts)
        if counts.get("policy") or self.resumed:
            counts["policy"] = counts.get("policy", 0) + self.resumed
        if self.resumed and self.total and "judge" in self.expected:
            counts["judge"] = (counts.get("judge", 0)
                               + self.resumed * self.expected["judge"] // self.total)
        return counts

    def _draw(self) -> None:
        from tqdm import tqdm

        known = self.total is not None
        with_total = "{desc:>19}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
        count_only = "{desc:>19}: {n_fmt} "
        counted = with_total if known else count_only
        common = dict(file=self.stream, dynamic_ncols=True, mininterval=self.refresh_s,
                      leave=True, unit="")
        if not self._bars:
            self._bars["problems"] = self._since_start(tqdm(
                total=self.total, desc="problems", position=0,
                bar_format=counted + "[{elapsed}{postfix}]", **common))
        elapsed = max(1e-6, self.clock() - self.started)
        problems = self._bars["problems"]
        eta = self.eta_s()
        problems.set_postfix_str(
            f"{self.resumed} resumed, {self.rollouts / elapsed:.1f} rollouts/s, "
            f"{self.tokens / elapsed:.0f} tokens/s"
            + (f", ETA {_clock(eta)}" if eta is not None else ""), refresh=False)
        self._advance(problems, self.done)
        counts = self._counts()
        for role, label in self.STAGES:
            if role not in self._bars and counts.get(role):
                # A stage's bar appears once it has work (evaluate samples no solutions).
                expected = self.total if role == "policy" else self.expected.get(role)
                self._bars[role] = self._since_start(tqdm(
                    total=expected, desc=label, position=len(self._bars),
                    bar_format=(with_total if expected else count_only)
                    + "[{rate_noinv_fmt}]", **common))
            if role in self._bars:
                self._advance(self._bars[role], counts.get(role, 0))

    def _since_start(self, bar):
        """A bar's clock (elapsed time, average rate) starts with the labelling stage, not
        when the bar is first drawn."""
        bar.start_t -= max(0.0, self.clock() - self.started)
        bar.last_print_t = bar.start_t
        return bar

    @staticmethod
    def _advance(bar, count: int) -> None:
        if count > bar.n:
            bar.update(count - bar.n)  # tqdm redraws at most every mininterval
        else:
            bar.refresh()

    def _close_bars(self) -> None:
        self.closed = True
        for bar in self._bars.values():  # top to bottom, or tqdm garbles the lines
            bar.close()
        self._bars = {}


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}")


#: This process's progress displays, one per dataset directory and manifest
#: (``EnginePool.progress``): every stage of a job on this worker updates the same one.
_PROGRESS: dict[str, Progress] = {}
