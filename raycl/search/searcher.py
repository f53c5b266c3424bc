"""Coordinate-descent balance search as a Ray Tune ``Searcher`` (spec §2.4, a reconstruction).

Evaluate the start point, then sweep the coordinates in order. For each coordinate, evaluate
both neighbours ``x ± step`` (handed out together, so Tune can run them concurrently); if the
better one beats the best by more than ``eps``, keep stepping that way while it improves. A sweep
that improves nothing halves every step (down to ``min_step``); a sweep that improves nothing
with every step at ``min_step`` ends the search (``Searcher.FINISHED``), and so does
``max_trials``.

Each point is evaluated with ``repeats`` seeds (config key ``seed``) and scored by the mean.
Evaluated points are cached by their snapped config, so no config is ever suggested twice.
Errored trials, and results without a finite metric, score worst possible.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ray.tune.search import UNDEFINED_METRIC_MODE, Searcher
from ray.tune.search.sample import Domain

from raycl.search.space import SearchSpace, as_search_space

SEED_KEY = "seed"

Phase = Literal["start", "probe", "extend", "finished"]
PointKey = tuple[float | int, ...]


@dataclass
class _Candidate:
    """A point the search waits for, and the move from the centre that produced it."""

    point: dict[str, Any]
    key: PointKey
    coordinate: str | None = None
    direction: int = 0
    step: float | None = None
    cached: bool = False  # evaluated before this move asked for it


@dataclass
class _Evaluation:
    """Outcome of one point over all its repeats."""

    score: float  # to maximise: the mean metric, negated for mode "min"; -inf on error
    metric: float | None  # the mean metric as reported; None on error


@dataclass
class _State:
    """Where the coordinate descent stands and which points it waits for."""

    center: dict[str, Any]
    steps: dict[str, float]
    batch: list[_Candidate] = field(default_factory=list)
    phase: Phase = "start"
    coord_index: int = 0
    improved_in_sweep: bool = False
    best_score: float = -math.inf
    best_metric: float | None = None


def _defines_search_space(config: Mapping[str, Any]) -> bool:
    return any(
        isinstance(v, Domain)
        or (isinstance(v, Mapping) and ("grid_search" in v or _defines_search_space(v)))
        for v in config.values()
    )


class CoordinateDescentSearcher(Searcher):
    """Coordinate-descent search over a ``SearchSpace`` (spec §2.4).

    Args:
        space: the coordinates, or their plain-dict form (``SearchSpace.from_dict``).
        metric, mode: what to optimise; may also come from ``tune.TuneConfig``.
        eps: a move is accepted only if it improves the best metric by more than this.
        repeats: trials per point, with config ``seed`` = ``seed``, ``seed + 1``, ...;
            the point's metric is their mean.
        max_trials: stop suggesting after this many trials.
        seed: the first seed.
        constants: fixed config entries added to every suggestion.
    """

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Mapping[str, Any]],
        metric: str | None = None,
        mode: str | None = None,
        eps: float = 0.0,
        repeats: int = 1,
        max_trials: int | None = None,
        seed: int = 0,
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        if eps < 0:
            raise ValueError(f"eps must be >= 0 (got {eps})")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1 (got {repeats})")
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"max_trials must be >= 1 or None (got {max_trials})")
        self._space = as_search_space(space)
        self._constants = dict(constants or {})
        clashes = sorted(set(self._constants) & {*self._space.names, SEED_KEY})
        if clashes:
            raise ValueError(f"constants must not set searched keys or {SEED_KEY!r}: {clashes}")
        self._eps = eps
        self._repeats = repeats
        self._max_trials = max_trials
        self._seed = seed

        self._evaluated: dict[PointKey, _Evaluation] = {}  # the cache
        self._repeat_metrics: dict[PointKey, dict[int, float | None]] = {}
        self._handed_out: set[tuple[PointKey, int]] = set()
        self._pending: dict[str, tuple[PointKey, int]] = {}  # trial id -> (point, repeat)
        self._num_trials = 0
        self._path: list[dict[str, Any]] = []
        start = self._space.start_point()
        self._state = _State(center=start, steps=self._space.initial_steps())
        self._state.batch = [self._candidate(start)]

    # -- public read-only view ----------------------------------------------------------------

    @property
    def space(self) -> SearchSpace:
        """The searched coordinates."""
        return self._space

    @property
    def path(self) -> list[dict[str, Any]]:
        """Every decided move, in order.

        Entries: ``config``, ``metric`` (mean over repeats; None on error), ``coordinate``,
        ``direction`` (+1/-1; 0 and coordinate None for the start), ``step``, ``accepted`` and
        ``cached`` (served from the cache, no new trial).
        """
        return [dict(entry) for entry in self._path]

    @property
    def best_config(self) -> dict[str, Any] | None:
        """Best config found so far (without ``seed``); None before the start is evaluated."""
        if self._state.phase == "start":
            return None
        return {**self._constants, **self._state.center}

    @property
    def best_result(self) -> float | None:
        """Metric of ``best_config`` (mean over repeats); None if not evaluated or errored."""
        return self._state.best_metric

    @property
    def num_trials(self) -> int:
        """Trials suggested so far."""
        return self._num_trials

    # -- Searcher API ---------------------------------------------------------------------------

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Take ``metric``/``mode`` from Tune.

        The space is fixed at construction: returns False for a ``config`` that defines search
        domains (Tune then raises), True otherwise (Tune merges constant entries into trials).
        """
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return not _defines_search_space(config)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Next trial config; None while waiting for results; ``FINISHED`` when done."""
        if not self._metric or self._mode not in ("min", "max"):
            raise RuntimeError(
                UNDEFINED_METRIC_MODE.format(
                    cls=type(self).__name__, metric=self._metric, mode=self._mode
                )
            )
        if self._state.phase == "finished" or (
            self._max_trials is not None and self._num_trials >= self._max_trials
        ):
            return Searcher.FINISHED
        job = self._next_job()
        if job is None:
            return None
        candidate, repeat = job
        self._handed_out.add((candidate.key, repeat))
        self._pending[trial_id] = (candidate.key, repeat)
        self._num_trials += 1
        return {**self._constants, **candidate.point, SEED_KEY: self._seed + repeat}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Record a finished trial; advance the search once its point has all its repeats."""
        job = self._pending.pop(trial_id, None)
        if job is None:
            return
        key, repeat = job
        metrics = self._repeat_metrics.setdefault(key, {})
        metrics[repeat] = None if error else self._metric_of(result)
        if len(metrics) == self._repeats:
            self._evaluated[key] = self._summarise(self._repeat_metrics.pop(key).values())
            self._advance()

    def save(self, checkpoint_path: str) -> None:
        """Pickle the whole search state."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        """Load a state written by ``save``; the search continues exactly where it was."""
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # -- evaluation bookkeeping -----------------------------------------------------------------

    def _candidate(
        self,
        point: dict[str, Any],
        coordinate: str | None = None,
        direction: int = 0,
        step: float | None = None,
    ) -> _Candidate:
        key = self._space.key(point)
        return _Candidate(point, key, coordinate, direction, step, key in self._evaluated)

    def _next_job(self) -> tuple[_Candidate, int] | None:
        """A (point, repeat) of the current batch not handed out yet."""
        for candidate in self._state.batch:
            if candidate.key in self._evaluated:
                continue
            for repeat in range(self._repeats):
                if (candidate.key, repeat) not in self._handed_out:
                    return candidate, repeat
        return None

    def _metric_of(self, result: dict | None) -> float | None:
        try:
            value = float((result or {})[self._metric])
        except (KeyError, TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def _summarise(self, metrics: Iterable[float | None]) -> _Evaluation:
        values = list(metrics)
        if any(v is None for v in values):
            return _Evaluation(score=-math.inf, metric=None)
        mean = math.fsum(values) / len(values)
        return _Evaluation(score=mean if self._mode == "max" else -mean, metric=mean)

    def _record(self, candidate: _Candidate, accepted: bool) -> None:
        self._path.append(
            {
                "config": {**self._constants, **candidate.point},
                "metric": self._evaluated[candidate.key].metric,
                "coordinate": candidate.coordinate,
                "direction": candidate.direction,
                "step": candidate.step,
                "accepted": accepted,
                "cached": candidate.cached,
            }
        )

    # -- the coordinate-descent state machine ---------------------------------------------------

    def _advance(self) -> None:
        """Decide every phase whose points are all evaluated (cached ones need no trial)."""
        state = self._state
        while state.phase != "finished" and all(c.key in self._evaluated for c in state.batch):
            if state.phase == "start":
                self._decide_start()
            else:
                self._decide_move()

    def _decide_start(self) -> None:
        start = self._state.batch[0]
        evaluation = self._evaluated[start.key]
        self._state.best_score, self._state.best_metric = evaluation.score, evaluation.metric
        self._record(start, accepted=True)
        self._enter_coordinate(0)

    def _decide_move(self) -> None:
        """Accept the best candidate if it beats the best by more than eps, then step on."""
        state = self._state
        best = max(state.batch, key=lambda c: self._evaluated[c.key].score)  # ties: +1 first
        evaluation = self._evaluated[best.key]
        improved = evaluation.score > state.best_score + self._eps
        for candidate in state.batch:
            self._record(candidate, accepted=improved and candidate is best)
        if improved:
            state.center = best.point
            state.best_score, state.best_metric = evaluation.score, evaluation.metric
            state.improved_in_sweep = True
            further = self._space.move(best.point, best.coordinate, best.direction, best.step)
            if further is not None:
                state.phase = "extend"
                state.batch = [self._candidate(further, best.coordinate, best.direction, best.step)]
                return
        self._enter_coordinate(state.coord_index + 1)

    def _enter_coordinate(self, index: int) -> None:
        """Probe both neighbours along coordinate ``index``, starting new sweeps as needed."""
        state = self._state
        while True:
            if index == len(self._space):
                if not self._start_sweep():
                    state.phase, state.batch = "finished", []
                    return
                index = 0
            name = self._space.coordinates[index].name
            step = state.steps[name]
            batch = [
                self._candidate(point, name, direction, step)
                for direction in (1, -1)
                if (point := self._space.move(state.center, name, direction, step)) is not None
            ]
            if batch:
                state.phase, state.coord_index, state.batch = "probe", index, batch
                return
            index += 1

    def _start_sweep(self) -> bool:
        """Begin a sweep, halving the steps after one that improved nothing; False: converged."""
        state = self._state
        if not state.improved_in_sweep:
            refined = {c.name: c.refine(state.steps[c.name]) for c in self._space}
            if refined == state.steps:
                return False
            state.steps = refined
        state.improved_in_sweep = False
        return True
