"""Balance searches replayed on a landscape table: the real searchers, no training.

A replay drives one method's real Tune objects — built by
:func:`raycl.search.methods.build_search` exactly as ``raycl tune`` builds them, behind Tune's
own ``ConcurrencyLimiter`` — through the calls Tune's controller makes (``suggest``,
``on_trial_result``, ``on_trial_complete``; a scheduler's ``on_trial_add``,
``on_trial_result``, ``on_trial_complete``), on a simulated clock of one time unit per epoch
with ``concurrency`` trials in flight. A trial's per-epoch metrics are looked up in the table
(:mod:`raycl.bench.landscape`): each lookup draws one of the point's seeds, without
replacement until they are used up, so a repeat or a confirmation sees another seed; with
``crn`` (common random numbers, as one real search sees them) a trial with seed ``s`` sees table
seed ``s`` mod the number of seeds (replay ``r`` searches with seed ``r``).

The incumbent after each finished trial is what ``raycl tune`` would recommend then
(:func:`raycl.search.tuner.best_mean` over full-length trials); its *regret* is the best table
mean minus the incumbent's table mean, in metric points: what the recommendation really costs,
free of the luck of the trial that made it look best (as FCNet and HPOBench score it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from raycl.search.space import SearchSpace

PointKey = tuple


@dataclass
class Landscape:
    """Every lattice point's per-epoch metric curves (seeds × epochs), from a table."""

    space: SearchSpace
    metric: str
    mode: str
    epochs: int
    curves: dict[PointKey, np.ndarray]
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def from_table(cls, table: pd.DataFrame, metadata: dict[str, Any]) -> Landscape:
        """The landscape of a table written by ``raycl bench landscape``."""
        space = SearchSpace.from_dict(metadata["space"])
        metric, epochs = metadata["metric"], int(metadata["epochs"])
        # one row per (point, seed), one column per epoch; a run missing an epoch is dropped
        wide = table.pivot_table(
            index=[*space.names, "seed"], columns="epoch", values=metric, aggfunc="first"
        ).reindex(columns=range(1, epochs + 1))
        wide = wide[wide.notna().all(axis=1)]
        values = wide.to_numpy(float)
        points = wide.index.droplevel("seed")
        curves: dict[PointKey, np.ndarray] = {}
        starts = np.flatnonzero(~points.duplicated()) if len(points) else np.array([], int)
        for begin, end in zip(starts, [*starts[1:], len(points)], strict=True):
            point = dict(zip(space.names, points[begin], strict=True))
            curves[space.key(point)] = values[begin:end]
        return cls(space, metric, metadata["mode"], epochs, curves, metadata.get("overrides", []))

    @property
    def sign(self) -> float:
        """+1 when larger metrics are better, -1 otherwise."""
        return 1.0 if self.mode == "max" else -1.0

    def mean(self, key: PointKey) -> float:
        """The point's final-epoch metric, mean over its seeds."""
        return self._means[key]

    @cached_property
    def _means(self) -> dict[PointKey, float]:
        return {key: float(curve[:, -1].mean()) for key, curve in self.curves.items()}

    @cached_property
    def best_key(self) -> PointKey:
        return max(self.curves, key=lambda k: self.sign * self.mean(k))

    @property
    def start_key(self) -> PointKey:
        return self.space.key(self.space.start_point())

    def regret(self, key: PointKey) -> float:
        """How much worse the point's table mean is than the best point's (>= 0)."""
        return self.sign * (self.mean(self.best_key) - self.mean(key))

    @property
    def seeds(self) -> int:
        """Seeds per point (the median over points: a table still being built has fewer)."""
        return int(np.median([len(c) for c in self.curves.values()]))

    @property
    def seed_sds(self) -> np.ndarray:
        """Each point's standard deviation of one run's final metric across its seeds
        (the points with two seeds or more)."""
        return np.array([c[:, -1].std(ddof=1) for c in self.curves.values() if len(c) >= 2])

    @property
    def sigma(self) -> float:
        """The gate's σ: the median over lattice points of each point's seed SD (issue 26's
        rule, fixed before any table was read: a collapsing corner is part of the landscape,
        not its noise)."""
        return float(np.median(self.seed_sds))

    @property
    def pooled_sigma(self) -> float:
        """Pooled within-point standard deviation of one run's final metric (the earlier
        gate's σ, which one collapsing corner can set)."""
        return math.sqrt(float(np.mean(self.seed_sds**2)))

    @cached_property
    def _positions(self) -> list[dict[Any, int]]:
        """Per coordinate: a lattice key's index in that coordinate's lattice."""
        return [{c.key(v): i for i, v in enumerate(c.lattice())} for c in self.space.coordinates]

    def lattice_index(self, key: PointKey) -> tuple[int, ...]:
        """The point's position on the lattice: each coordinate's index in its lattice."""
        return tuple(p[value] for p, value in zip(self._positions, key, strict=True))

    def starts(self, delta: float, sigma: float) -> list[PointKey]:
        """The start points replays draw from, fixed by rule before any replay: regret at
        least 3σ and, in lattice steps, at least 2 from every point within δ of the best
        along some coordinate (L∞ distance ≥ 2), so no start is next to the optimum region."""
        from scipy.ndimage import maximum_filter

        keys = list(self.curves)
        index = np.array([self.lattice_index(k) for k in keys])
        regret = np.array([self.regret(k) for k in keys])
        near = np.zeros([len(p) for p in self._positions], dtype=np.uint8)
        near[tuple(index[regret <= delta].T)] = 1
        # a cell within one step of a near point along every coordinate (L∞ ≤ 1): a 3^d box
        close = maximum_filter(near, size=3, mode="constant", cval=0)[tuple(index.T)]
        chosen = (close == 0) & (regret >= 3 * sigma)
        return sorted(k for k, ok in zip(keys, chosen, strict=True) if ok)

    def held_out(self, observed: int) -> tuple[Landscape, Landscape]:
        """(what searchers see: each point's first ``observed`` seeds, what scores their
        recommendations: the remaining seeds), for tables with seeds to spare."""
        if min(len(c) for c in self.curves.values()) <= observed:
            raise ValueError(f"every point needs more than {observed} seeds to hold one out")
        split = [
            {k: c[:observed] for k, c in self.curves.items()},
            {k: c[observed:] for k, c in self.curves.items()},
        ]
        return tuple(  # type: ignore[return-value]
            Landscape(self.space, self.metric, self.mode, self.epochs, curves, self.overrides)
            for curves in split
        )

    def is_local_optimum(self, key: PointKey) -> bool:
        """No point one initial step away along one coordinate has a better table mean."""
        point = self.space.point(key)
        moved = (self.space.move(point, name, k) for name in self.space.names for k in (1, -1))
        return all(
            self.sign * self.mean(self.space.key(neighbour)) <= self.sign * self.mean(key)
            for neighbour in moved
            if neighbour is not None
        )

    def share_within(self, delta: float) -> float:
        """Share of the lattice whose table mean is within ``delta`` of the best."""
        return float(np.mean([self.regret(k) <= delta for k in self.curves]))

    def missing(self) -> int:
        """Lattice points with no complete run in the table."""
        return len(self.space.lattice()) - len(self.curves)

    def gate(self, delta: float | None = None, *, pooled: bool = False) -> Gate:
        """Whether the landscape can decide between search methods (see :class:`Gate`); σ is
        :attr:`sigma` (or :attr:`pooled_sigma`), δ = σ unless given."""
        sigma = self.pooled_sigma if pooled else self.sigma
        delta = sigma if delta is None else delta
        return Gate(
            sigma_name="pooled seed SD" if pooled else "median point's seed SD",
            sigma=sigma,
            delta=delta,
            start=self.mean(self.start_key),
            best=self.mean(self.best_key),
            start_sigmas=self.regret(self.start_key) / sigma,
            share=self.share_within(delta),
            starts=len(self.starts(delta, sigma)),
            points=len(self.curves),
            seeds=self.seeds,
            missing=self.missing(),
        )


MIN_STARTS = 20  # start points a table must offer (issue 26)


@dataclass(frozen=True)
class Gate:
    """The landscape decides only if at least :data:`MIN_STARTS` lattice points qualify as
    starts (:meth:`Landscape.starts`: ≥ 3σ below the best, ≥ 2 lattice steps from the region
    within δ) and at most 5 % of the lattice lies within δ of the best (else search is
    trivial). The shipped default start is one more case, not a criterion."""

    sigma_name: str
    sigma: float
    delta: float
    start: float
    best: float
    start_sigmas: float
    share: float
    starts: int
    points: int
    seeds: int
    missing: int = 0  # lattice points without a complete run (a table still being built)

    @property
    def passes(self) -> bool:
        """The two criteria hold on the points tabulated so far."""
        return self.starts >= MIN_STARTS and self.share <= 0.05

    @property
    def decides(self) -> bool:
        return self.passes and not self.missing

    def report(self) -> str:
        verdict = "passes: the landscape can decide" if self.passes else "FAILS"
        if self.missing:
            so_far = "passes" if self.passes else "fails"
            verdict = f"{so_far} so far ({self.missing} points to come)"
        return "\n".join(
            [
                f"Gate ({self.points} lattice points × {self.seeds} seeds): {verdict}.",
                f"- σ = {self.sigma_name} = {self.sigma:.3g}; δ = {self.delta:.3g}",
                f"- starts (≥ 3σ worse than the best, {self.best:.4g}, and ≥ 2 lattice steps "
                f"from every point within δ): {self.starts} (needs ≥ {MIN_STARTS})",
                f"- share of the lattice within δ of the best: {self.share:.1%} (needs ≤ 5 %)",
                f"- the default start, {self.start:.4g}: {self.start_sigmas:.1f} σ from the best",
            ]
        )


@dataclass
class Trace:
    """One replay: after each finished trial, the epochs spent, the simulated wall clock (one
    unit per epoch, ``concurrency`` trials training at once) and the incumbent's regret."""

    method: str
    replay: int
    epochs: list[int] = field(default_factory=list)  # all trials' epochs so far
    clock: list[int] = field(default_factory=list)  # wall-clock time, in epochs of one trial
    regret: list[float] = field(default_factory=list)  # math.inf before a full trial
    recommended: PointKey | None = None
    trials: list[tuple[int, PointKey, int]] = field(default_factory=list)  # (start, point, epochs)

    def reach(self, delta: float) -> tuple[int, int, int] | None:
        """(finished trials, epochs, clock) when the regret first fell to ``delta``; None if
        never."""
        for i, regret in enumerate(self.regret):
            if regret <= delta:
                return i + 1, self.epochs[i], self.clock[i]
        return None

    @property
    def final_regret(self) -> float:
        return self.regret[-1] if self.regret else math.inf

    def regret_after(self, trials: int) -> float:
        """The incumbent's regret after ``trials`` finished trials (the last, if the search
        ended sooner)."""
        return self.regret[min(trials, len(self.regret)) - 1] if self.regret else math.inf


@dataclass
class _Trial:
    trial_id: str
    key: PointKey
    curve: np.ndarray
    started: int  # clock time
    order: int
    done: int = 0  # epochs reported


class _Lookup:
    """Draws a point's seed for each lookup: without replacement until used up (or, with
    ``crn``, the trial's own seed modulo the table's seeds)."""

    def __init__(self, landscape: Landscape, rng: np.random.Generator, crn: bool) -> None:
        self.landscape, self.rng, self.crn = landscape, rng, crn
        self.unused: dict[PointKey, list[int]] = {}

    def curve(self, key: PointKey, seed: int) -> np.ndarray:
        curves = self.landscape.curves[key]
        if self.crn:
            return curves[seed % len(curves)]
        unused = self.unused.get(key) or list(self.rng.permutation(len(curves)))
        self.unused[key] = unused
        return curves[unused.pop()]


def replay(
    landscape: Landscape,
    search: Any,
    *,
    replay_index: int,
    concurrency: int,
    budget_epochs: int | None,
    budget_trials: int | None,
    crn: bool = False,
    start: PointKey | None = None,
    scoring: Landscape | None = None,
) -> Trace:
    """One search of ``search.method`` (a ``search`` config section) on the landscape.

    ``start``: the search starts there instead of the space's start; CD then also sweeps
    its coordinates in an order shuffled by the replay's index (the space's order would
    otherwise favour whichever coordinate comes first). ``scoring``: the landscape whose
    means score the recommendations (held-out seeds, :meth:`Landscape.held_out`)."""
    from ray.tune.search import ConcurrencyLimiter, Searcher

    from raycl.search.methods import build_search
    from raycl.search.searcher import SEED_KEY
    from raycl.search.tuner import best_mean

    space = landscape.space
    if start is not None:
        space = space.starting_at(space.point(start))
        if search.method == "cd":
            order = np.random.default_rng(replay_index).permutation(len(space.names))
            space = space.reordered([space.names[i] for i in order])
    scoring = scoring or landscape
    plan = build_search(space, search, replay_index, landscape.epochs)
    searcher = ConcurrencyLimiter(plan.searcher, max_concurrent=concurrency)
    searcher.set_search_properties(landscape.metric, landscape.mode, dict(plan.param_space))
    scheduler = plan.scheduler
    if scheduler is not None:
        scheduler.set_search_properties(landscape.metric, landscape.mode)
    lookup = _Lookup(landscape, np.random.default_rng(replay_index), crn)
    trace = Trace(search.method, replay_index)
    observed: dict[PointKey, list[float]] = {}
    running: list[_Trial] = []
    started = spent = clock = 0
    exhausted = False

    def fill() -> None:
        nonlocal started, exhausted
        while not exhausted and len(running) < concurrency:
            if budget_trials is not None and started >= budget_trials:
                exhausted = True
                return
            trial_id = f"t{started:05d}"
            config = searcher.suggest(trial_id)
            if config == Searcher.FINISHED:
                exhausted = True
                return
            if config is None:
                return
            key = landscape.space.key(config)
            curve = lookup.curve(key, int(config.get(SEED_KEY, replay_index)))
            trial = _Trial(trial_id, key, curve, clock, started)
            running.append(trial)
            started += 1
            if scheduler is not None:
                scheduler.on_trial_add(None, SimpleNamespace(trial_id=trial_id))

    fill()
    while running:
        trial = min(running, key=lambda t: (t.started + t.done + 1, t.order))
        clock = trial.started + trial.done + 1
        trial.done += 1
        spent += 1
        result = {
            landscape.metric: float(trial.curve[trial.done - 1]),
            "training_iteration": trial.done,
        }
        searcher.on_trial_result(trial.trial_id, result)
        stop = trial.done == landscape.epochs
        if scheduler is not None:
            action = scheduler.on_trial_result(
                None, SimpleNamespace(trial_id=trial.trial_id), result
            )
            stop = stop or action == "STOP"
        if stop:
            running.remove(trial)
            searcher.on_trial_complete(trial.trial_id, result)
            if scheduler is not None:
                scheduler.on_trial_complete(None, SimpleNamespace(trial_id=trial.trial_id), result)
            if trial.done == landscape.epochs:
                observed.setdefault(trial.key, []).append(result[landscape.metric])
            incumbent = best_mean(observed, landscape.mode) if observed else None
            trace.epochs.append(spent)
            trace.clock.append(clock)
            trace.regret.append(math.inf if incumbent is None else scoring.regret(incumbent))
            trace.recommended = incumbent
            trace.trials.append((trial.order, trial.key, trial.done))
        if budget_epochs is not None and spent >= budget_epochs:
            break  # Tune's stop_all: the experiment ends, running trials with it
        fill()
    return trace


def replays(
    landscape: Landscape,
    searches: list[Any],
    count: int,
    starts: list[PointKey] | None = None,
    **options: Any,
) -> Iterator[Trace]:
    """``count`` replays of every search, replay-major (so partial results stay balanced);
    replay ``r`` of every method starts at the same point, drawn from ``starts`` in a fixed
    shuffled order (a permutation seeded with 0, cycled: the whole set before any repeat,
    spread over the space rather than its first corner in sorted order); at the space's
    start without ``starts``."""
    order = np.random.default_rng(0).permutation(len(starts)) if starts else []
    for index in range(count):
        start = starts[order[index % len(starts)]] if starts else None
        for search in searches:
            yield replay(landscape, search, replay_index=index, start=start, **options)
