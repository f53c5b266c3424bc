"""Coordinate-descent balance search as a Ray Tune ``Searcher``.

Evaluate the start point, then sweep the coordinates in order. For each coordinate, evaluate
both neighbours ``x ± step`` (handed out together, so Tune runs them concurrently); if the
better one beats the incumbent, move there and keep stepping that way while it improves. A
sweep that moves nothing halves every step (down to ``min_step``); a sweep that moves nothing
with every step at ``min_step`` ends the search (``Searcher.FINISHED``), and so does
``max_trials``. A move must beat the incumbent by more than ``eps``.

Four additions to plain coordinate descent make it hold up on real, noisy landscapes:

* **Pattern move** (Hooke & Jeeves 1961). One-coordinate moves zig-zag along a valley that
  runs diagonally and stall where no single coordinate improves. After a sweep the searcher
  tries a move along a *pattern* ``d``, extended while it improves: the net displacement of
  the sweep when this sweep and the one before it both moved (after the first moving sweep
  alone the pattern would overshoot on separable landscapes, where one sweep reaches the
  optimum, and cost trials for nothing), or, after a sweep that moved nothing, the better
  probe of every coordinate whose two probes differ by more than the noise (a sign-gradient
  step along a valley no single coordinate can follow). Only patterns on ≥ 2 coordinates are
  tried: a one-coordinate pattern is a coordinate move, already exhausted.
* **Noise control**. A candidate that beats the incumbent by more than ``eps`` but by no more
  than the noise is measured once more on a fresh seed before it is accepted, and is accepted
  only if the mean of its measurements still beats the incumbent by more than ``eps``: one
  lucky trial cannot steer the rest of the search. The noise is ``noise`` (the standard
  deviation of one trial's metric across seeds) or, when None, estimated from the points
  measured more than once (pooled within-point standard deviation), divided by √n for a
  mean of n; 0 turns confirmation off.
* **No idle slots**. With ``k`` concurrent trials (Tune tells the searcher through
  ``set_max_concurrency``), an extension hands out ``x + step, …, x + k·step`` together; they
  are then judged in order, and the walk stops at the first that does not improve. A probe
  batch covers ``k // 2`` coordinates at once (their best probe decides, as a pattern
  search's poll), and the warm-up grows to fill the first wave.
* **A spread start and restart rounds**. Before the first descent, ``warmup`` lattice points
  spread over the space (a Latin hypercube; 2·d + 1 by default, TPE's number of start-up trials,
  at most half of ``max_trials``) are evaluated with the start, and the descent starts from the
  best of them. Where a round would finish, the budget it would leave unused starts another
  descent at the initial steps, ``rounds`` times (None: until ``max_trials`` or Tune stops; a
  search whose every trial errored ends anyway). With ``restart="kick"`` (the default; iterated
  local search, Lourenço, Martin & Stützle 2003) a round starts from the best warm-up point at
  least two initial steps from every optimum found so far (measured already: the round costs no
  trial to start) or, when none is left, from the best point so far moved ±2 initial steps along
  half the coordinates (drawn from the seed and the round, on a point not measured yet), so a
  descent that converged on a local optimum gets out of its basin; a round that needs no new
  trial ends the search. With ``restart="incumbent"`` (CD before issue 26, with ``warmup=0``;
  retrospective approximation: Chen & Schmeiser 2001, Pasupathy 2010) round ``r`` re-descends
  from the incumbent with every point it compares measured ``r·repeats`` times, re-deciding on
  means of more seeds what single noisy trials decided — and confirming, by design, the optimum
  it started in.

Each point is evaluated with ``repeats`` seeds (config key ``seed`` = ``seed``, ``seed + 1``,
…; a confirmation or a later round adds the next seeds) and scored by the mean of its
measurements. Evaluated points are cached by their snapped config, so no (config, seed) is
suggested twice. Errored trials, and results without a finite metric, score worst possible.

The saved state (``save``/``restore``, Tune's experiment checkpoint) is JSON, so restoring a
search runs no code from its file: what JSON has no type for is a one-key object,
``{"__tuple__": [...]}``, ``{"__set__": [...]}``, ``{"__dict__": [[key, value], ...]}`` (a
dict whose keys are not all strings, e.g. the cache's point tuples and repeat numbers),
``{"__float__": "inf" | "-inf" | "nan"}``, and the searcher's own records
``{"__class__": name, "fields": {...}}`` for exactly :data:`_SAVED_CLASSES`. Finite floats
are written by ``repr`` and read back bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ray.tune.search import UNDEFINED_METRIC_MODE, Searcher
from ray.tune.search.sample import Domain

from raycl.errors import CheckpointError
from raycl.search.space import Coordinate, SearchSpace, as_search_space

SEED_KEY = "seed"

Phase = Literal["warmup", "start", "probe", "extend", "pattern", "confirm", "final", "finished"]
RESTARTS = ("kick", "incumbent")
Verdict = Literal["accept", "confirm", "reject"]
PointKey = tuple[float | int, ...]
Move = dict[str, float]  # a displacement in each coordinate's unit


@dataclass
class _Candidate:
    """A point the search waits for, and the move from the incumbent that produced it."""

    point: dict[str, Any]
    key: PointKey
    kind: str = "start"  # warmup | start | restart | probe | extend | pattern | final
    move: Move = field(default_factory=dict)
    cached: bool = False  # evaluated before this move asked for it


@dataclass
class _State:
    """Where the coordinate descent stands and which points it waits for."""

    center: dict[str, Any]
    steps: dict[str, float]
    batch: list[_Candidate] = field(default_factory=list)
    phase: Phase = "start"
    round: int = 1
    round_trials: int = 0  # trials suggested before this round began
    coord_index: int = 0
    sweep_start: dict[str, Any] = field(default_factory=dict)
    moved_in_sweep: bool = False
    last_sweep_moved: bool = False
    probe_directions: dict[str, int] = field(default_factory=dict)
    confirming: _Candidate | None = None
    best_score: float = -math.inf
    best_metric: float | None = None
    optima: list[dict[str, Any]] = field(default_factory=list)  # where earlier rounds ended
    warmup: list[dict[str, Any]] = field(default_factory=list)  # warm-up points not started from


def defines_search_space(config: Mapping[str, Any]) -> bool:
    return any(
        isinstance(v, Domain)
        or (isinstance(v, Mapping) and ("grid_search" in v or defines_search_space(v)))
        for v in config.values()
    )


class CoordinateDescentSearcher(Searcher):
    """Coordinate-descent search over a ``SearchSpace`` (the module docstring has the method).

    Args:
        space: the coordinates, or their plain-dict form (``SearchSpace.from_dict``).
        metric, mode: what to optimise; may also come from ``tune.TuneConfig``.
        eps: a move is accepted only if it improves the incumbent by more than this.
        repeats: trials per point, with config ``seed`` = ``seed``, ``seed + 1``, ...;
            the point's metric is their mean.
        noise: the standard deviation of one trial's metric across seeds; a move that
            improves by no more than ``noise / √n`` (n: measurements a point has in this
            round) is re-measured before it is accepted. None estimates it from the points
            measured more than once (none in round 1 when ``repeats`` is 1).
        rounds: descents; None: until ``max_trials`` (or Tune) stops the search.
        restart: where a new round's descent starts: ``"kick"`` (iterated local search: the
            best warm-up point away from every optimum found so far, else the best point so
            far moved two initial steps along half the coordinates, drawn from ``seed`` and
            the round; points keep ``repeats`` measurements) or
            ``"incumbent"`` (the earlier CD: the incumbent, with one more ``repeats`` per
            point each round).
        warmup: lattice points spread over the space (a Latin hypercube on each coordinate's
            lattice, seeded) evaluated with the start before the first descent, which starts
            from the best of them; later rounds start from the best of them far from every
            optimum found so far. None: 2·d + 1 for d coordinates (TPE's start-up trials)
            or, when more trials run at once, enough to fill every slot, at most half of
            ``max_trials``; 0: descend from the start.
        final_checks: the last trials of ``max_trials`` (or of a search that ends by itself)
            re-measure this many of the best points so far on a fresh seed each, so the
            recommendation, the best mean, rests on more than one lucky trial. None: a tenth
            of ``max_trials`` (at least 1; 0 without ``max_trials``); 0: none.
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
        noise: float | None = None,
        rounds: int | None = 1,
        restart: str = "kick",
        warmup: int | None = None,
        final_checks: int | None = None,
        max_trials: int | None = None,
        seed: int = 0,
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        if eps < 0:
            raise ValueError(f"eps must be >= 0 (got {eps})")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1 (got {repeats})")
        if noise is not None and not noise >= 0:
            raise ValueError(f"noise must be >= 0 or None (got {noise})")
        if rounds is not None and rounds < 1:
            raise ValueError(f"rounds must be >= 1 or None (got {rounds})")
        if restart not in RESTARTS:
            raise ValueError(f"restart must be one of {list(RESTARTS)} (got {restart!r})")
        if warmup is not None and warmup < 0:
            raise ValueError(f"warmup must be >= 0 or None (got {warmup})")
        if max_trials is not None and max_trials < 1:
            raise ValueError(f"max_trials must be >= 1 or None (got {max_trials})")
        if final_checks is not None and final_checks < 0:
            raise ValueError(f"final_checks must be >= 0 or None (got {final_checks})")
        if final_checks is None:
            final_checks = 0 if max_trials is None else max(1, max_trials // 10)
        self._space = as_search_space(space)
        self._constants = dict(constants or {})
        clashes = sorted(set(self._constants) & {*self._space.names, SEED_KEY})
        if clashes:
            raise ValueError(f"constants must not set searched keys or {SEED_KEY!r}: {clashes}")
        self._eps = eps
        self._repeats = repeats
        self._noise = noise
        self._rounds = rounds
        self._restart_from = restart
        self._max_trials = max_trials
        self._final_checks = final_checks
        self._seed = seed
        self._slots = 1  # concurrent trials; Tune sets it through set_max_concurrency

        self._measurements: dict[PointKey, dict[int, float | None]] = {}  # the cache
        self._wanted: dict[PointKey, int] = {}  # measurements a point needs
        self._handed_out: dict[PointKey, set[int]] = {}
        self._pending: dict[str, tuple[PointKey, int]] = {}  # trial id -> (point, repeat)
        self._num_trials = 0
        self._path: list[dict[str, Any]] = []
        start = self._space.start_point()
        self._state = _State(
            center=start, steps=self._space.initial_steps(), sweep_start=dict(start)
        )
        self._warmup = warmup
        self._begin()

    def _begin(self) -> None:
        """The first batch: the start and the warm-up points (``warmup`` None: 2·d + 1, or
        enough to fill every slot but the start's, at most half the budget)."""
        start = self._space.start_point()
        self._wanted.clear()
        self._state.phase, self._state.batch = "start", [self._candidate(start)]
        count = self._warmup
        if count is None:
            count = max(2 * len(self._space) + 1, self._slots - 1)
            if self._max_trials is not None:
                count = min(count, (self._max_trials - 1) // 2)
        drawn = self._space_filling(start, count) if count else []
        self._state.warmup = drawn
        if drawn:
            self._state.phase = "warmup"
            self._state.batch += [self._candidate(p, "warmup") for p in drawn]

    # -- public read-only view ----------------------------------------------------------------

    @property
    def space(self) -> SearchSpace:
        """The searched coordinates."""
        return self._space

    @property
    def path(self) -> list[dict[str, Any]]:
        """Every decided candidate, in order.

        Entries: ``config``, ``metric`` (mean over its measurements; None on error), ``kind``
        (warmup, start, restart, probe, extend, pattern or final), ``move`` (``{coordinate:
        displacement in units}``), ``measurements``, ``accepted``, ``cached`` (served from
        the cache, no new trial) and ``round``.
        """
        return [dict(entry) for entry in self._path]

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The measured point with the best mean so far, over every round (without
        ``seed``); the start while every trial errored; None before the start is evaluated."""
        if not self._path:
            return None
        best = self._best_key()
        point = self._state.center if best is None else self._space.point(best)
        return {**self._constants, **point}

    @property
    def best_result(self) -> float | None:
        """Metric of ``best_config`` (mean over its measurements); None if errored."""
        best = self._best_key()
        return None if best is None else self._mean(best)

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
        return not defines_search_space(config)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Learn how many trials run at once: extensions and probes fill that many slots, and
        a default warm-up (before the first trial) grows to fill them."""
        self._slots = max(1, int(max_concurrent))
        if self._num_trials == 0:
            self._begin()
        return True

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
        self._begin_final_checks()
        job = self._next_job()
        if job is None:
            return None
        candidate, repeat = job
        self._handed_out.setdefault(candidate.key, set()).add(repeat)
        self._pending[trial_id] = (candidate.key, repeat)
        self._num_trials += 1
        return {**self._constants, **candidate.point, SEED_KEY: self._seed + repeat}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Record a finished trial; advance the search once its batch is evaluated."""
        job = self._pending.pop(trial_id, None)
        if job is None:
            return
        key, repeat = job
        self._measurements.setdefault(key, {})[repeat] = None if error else self._metric_of(result)
        self._advance()

    def save(self, checkpoint_path: str) -> None:
        """The whole search state as JSON (the module docstring has the encoding)."""
        state = {"format": _STATE_FORMAT, "state": _to_json(self.__dict__)}
        Path(checkpoint_path).write_text(json.dumps(state, allow_nan=False))

    def restore(self, checkpoint_path: str) -> None:
        """Load a state written by ``save``; the search continues exactly where it was.
        Anything else (a state pickled by an older raycl included) is one line naming the file."""
        try:
            saved = json.loads(Path(checkpoint_path).read_text())
            if not isinstance(saved, dict) or saved.get("format") != _STATE_FORMAT:
                raise ValueError("not a saved coordinate-descent search")
            state = _from_json(saved["state"])
        except (OSError, LookupError, AttributeError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{checkpoint_path}: cannot restore the search from it ({err}); "
                "a search saved by raycl before its state was JSON cannot be resumed"
            ) from None
        self.__dict__.update(state)

    # -- measurements ---------------------------------------------------------------------------

    def _per_point(self) -> int:
        """Measurements every point compared in this round needs."""
        return self._repeats * (self._state.round if self._restart_from == "incumbent" else 1)

    def _candidate(self, point: dict[str, Any], kind: str = "start", move: Move | None = None):
        key = self._space.key(point)
        if not self._errored(key):  # a point whose trial errored gets no more seeds
            self._wanted[key] = max(self._wanted.get(key, 0), self._per_point())
        return _Candidate(point, key, kind, dict(move or {}), self._evaluated(key))

    def _errored(self, key: PointKey) -> bool:
        return None in self._measurements.get(key, {}).values()

    def _evaluated(self, key: PointKey) -> bool:
        return len(self._measurements.get(key, {})) >= self._wanted[key]

    def _next_job(self) -> tuple[_Candidate, int] | None:
        """A (point, repeat) of the current batch not handed out yet."""
        for candidate in self._state.batch:
            given = self._handed_out.setdefault(candidate.key, set())
            measured = self._measurements.get(candidate.key, {})
            for repeat in range(self._wanted[candidate.key]):
                if repeat not in given and repeat not in measured:
                    return candidate, repeat
        return None

    def _begin_final_checks(self) -> None:
        """With ``final_checks`` trials of the budget left, stop descending and re-measure
        the best points (trials already running still count)."""
        state = self._state
        due = self._max_trials is not None and (
            self._max_trials - self._num_trials <= self._final_checks
        )
        idle = len(self._pending) < self._slots  # Tune may ask with every slot taken
        if due and idle and state.phase not in ("warmup", "final", "finished"):
            self._final_phase()

    def _final_phase(self) -> bool:
        """Re-measure the ``final_checks`` best points so far, each once more on a fresh
        seed, best first; False when there is nothing to re-measure."""
        state = self._state
        best = sorted(self._measured(), key=self._score, reverse=True)[: self._final_checks]
        if not best:
            return False
        state.phase, state.confirming, state.batch = "final", None, []
        for key in best:
            self._wanted[key] = len(self._measurements[key]) + 1
            state.batch.append(_Candidate(self._space.point(key), key, "final"))
        return True

    def _metric_of(self, result: dict | None) -> float | None:
        try:
            value = float((result or {})[self._metric])
        except (KeyError, TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def _mean(self, key: PointKey) -> float | None:
        values = list(self._measurements[key].values())
        return None if any(v is None for v in values) else math.fsum(values) / len(values)

    def _score(self, key: PointKey) -> float:
        """The point's mean metric, to maximise (negated for mode "min"); -inf on error."""
        mean = self._mean(key)
        if mean is None:
            return -math.inf
        return mean if self._mode == "max" else -mean

    def _noise_level(self) -> float:
        """The standard deviation of a mean of this round's measurements: ``noise``, or the
        pooled within-point standard deviation of the points measured more than once, / √n."""
        if self._noise is not None:
            sigma = self._noise
        else:
            variances = [
                statistics.variance(values.values())
                for values in self._measurements.values()
                if len(values) >= 2 and None not in values.values()
            ]
            sigma = math.sqrt(statistics.fmean(variances)) if variances else 0.0
        return sigma / math.sqrt(self._per_point())

    def _verdict(self, candidate: _Candidate) -> Verdict:
        """Accept, confirm (measure once more) or reject ``candidate`` against the incumbent."""
        score = self._score(candidate.key)
        margin = score - self._state.best_score
        if score == -math.inf or margin <= self._eps:  # an error never wins, not even a tie
            return "reject"
        confirmed = len(self._measurements[candidate.key]) > self._per_point()
        if confirmed or margin > max(self._eps, self._noise_level()):
            return "accept"
        return "confirm"

    def _record(self, candidate: _Candidate, accepted: bool) -> None:
        self._path.append(
            {
                "config": {**self._constants, **candidate.point},
                "metric": self._mean(candidate.key),
                "kind": candidate.kind,
                "move": dict(candidate.move),
                "measurements": len(self._measurements[candidate.key]),
                "accepted": accepted,
                "cached": candidate.cached,
                "round": self._state.round,
            }
        )

    # -- the coordinate-descent state machine ---------------------------------------------------

    def _advance(self) -> None:
        """Decide every phase whose points are all evaluated (cached ones need no trial)."""
        state = self._state
        while state.phase != "finished" and all(self._evaluated(c.key) for c in state.batch):
            if state.phase == "warmup":  # descend from the best of the warm-up points
                best = max(state.batch, key=lambda c: self._score(c.key))  # ties: the start
                for candidate in state.batch:
                    if candidate is not best:
                        self._record(candidate, accepted=False)
                state.center, state.sweep_start = dict(best.point), dict(best.point)
                state.warmup = [p for p in state.warmup if self._space.key(p) != best.key]
                state.phase, state.batch = "start", [best]
            elif state.phase == "start":
                start = state.batch[0]
                state.best_score, state.best_metric = self._score(start.key), self._mean(start.key)
                self._record(start, accepted=True)
                self._enter_coordinate(0)
            elif state.phase == "final":
                for candidate in state.batch:
                    self._record(candidate, accepted=candidate.key == self._best_key())
                state.phase, state.batch = "finished", []
            elif state.phase == "probe":
                self._decide_probe()
            elif state.phase == "confirm":
                self._decide_confirm()
            else:
                self._decide_chain()

    def _decide_probe(self) -> None:
        """The best probe of the batch (one coordinate's neighbours, or several
        coordinates' when the slots allow): accept, confirm or move on."""
        state = self._state
        best = max(state.batch, key=lambda c: self._score(c.key))  # ties: +1 first
        verdict = self._verdict(best)
        for candidate in state.batch:
            if candidate is not best or verdict == "reject":
                self._record(candidate, accepted=False)
        if verdict == "accept":
            self._accept(best)
        elif verdict == "confirm":
            self._confirm(best)
        else:
            self._note_direction(state.batch)
            self._enter_coordinate(state.coord_index + 1)

    def _decide_chain(self) -> None:
        """An extension (or pattern) batch, judged in order: the walk stops at the first
        candidate that does not improve."""
        state = self._state
        batch, kind = state.batch, state.phase
        for i, candidate in enumerate(batch):
            verdict = self._verdict(candidate)
            if verdict == "accept":
                self._record(candidate, accepted=True)
                self._move_to(candidate)
                continue
            if verdict == "confirm":
                self._confirm(candidate)
            else:
                for rest in batch[i:]:
                    self._record(rest, accepted=False)
                self._end_walk(kind)
            return
        last = batch[-1]
        if not self._extend(last, kind):
            self._end_walk(kind)

    def _decide_confirm(self) -> None:
        state = self._state
        candidate = state.confirming
        assert candidate is not None
        state.confirming = None
        if self._verdict(candidate) == "accept":
            self._record(candidate, accepted=True)
            self._accept(candidate, recorded=True)
        else:
            self._record(candidate, accepted=False)
            self._end_walk("probe" if candidate.kind == "probe" else candidate.kind)

    def _accept(self, candidate: _Candidate, recorded: bool = False) -> None:
        """Make ``candidate`` the incumbent and keep walking the way it moved."""
        if not recorded:
            self._record(candidate, accepted=True)
        self._move_to(candidate)
        kind = "pattern" if candidate.kind == "pattern" else "extend"
        if not self._extend(candidate, kind):
            self._end_walk(kind)

    def _move_to(self, candidate: _Candidate) -> None:
        state = self._state
        state.center = candidate.point
        state.best_score = self._score(candidate.key)
        state.best_metric = self._mean(candidate.key)
        state.moved_in_sweep = True

    def _confirm(self, candidate: _Candidate) -> None:
        """Measure ``candidate`` once more (the next seed) before deciding."""
        state = self._state
        self._wanted[candidate.key] = len(self._measurements[candidate.key]) + 1
        state.phase, state.confirming, state.batch = "confirm", candidate, [candidate]

    def _extend(self, origin: _Candidate, kind: str) -> bool:
        """Hand out up to ``slots`` further steps along ``origin.move``; False at a bound."""
        state = self._state
        batch, point = [], origin.point
        for _ in range(self._slots):
            point = self._space.shift(point, origin.move)
            if point is None:
                break
            batch.append(self._candidate(point, kind, origin.move))
        if not batch:
            return False
        state.phase, state.batch = ("pattern" if kind == "pattern" else "extend"), batch
        return True

    def _end_walk(self, kind: str) -> None:
        """A coordinate's walk ended: the next coordinate; a pattern walk ended: a new sweep."""
        if kind == "pattern":
            self._start_sweep()
        else:
            self._enter_coordinate(self._state.coord_index + 1)

    def _note_direction(self, probes: list[_Candidate]) -> None:
        """Remember which way each probed coordinate that did not move slopes, if its two
        probes say so."""
        by_coordinate: dict[str, list[_Candidate]] = {}
        for probe in probes:
            by_coordinate.setdefault(next(iter(probe.move)), []).append(probe)
        for name, pair in by_coordinate.items():
            if len(pair) != 2:
                continue
            up, down = pair
            gap = abs(self._score(up.key) - self._score(down.key))
            rounding = 1e-9 * max(1.0, abs(self._state.best_score))
            if gap > max(self._eps, self._noise_level(), rounding):
                better = up if self._score(up.key) > self._score(down.key) else down
                self._state.probe_directions[name] = 1 if better.move[name] > 0 else -1

    def _enter_coordinate(self, index: int) -> None:
        """Probe both neighbours along coordinate ``index`` — and along the next coordinates
        too while their two probes fit the free slots (``k`` slots: ``k // 2`` coordinates at
        once, the best probe of them all decides); after the last, the pattern."""
        state = self._state
        while index < len(self._space):
            batch, last = [], index
            for j in range(index, len(self._space)):
                if batch and len(batch) + 2 > self._slots:
                    break
                batch += self._probes(j)
                last = j
            if batch:
                state.phase, state.coord_index, state.batch = "probe", last, batch
                return
            index = last + 1
        state.coord_index = index
        if not self._try_pattern():
            self._start_sweep()

    def _probes(self, index: int) -> list[_Candidate]:
        """The neighbours ``center ± step`` along coordinate ``index`` (fewer at a bound)."""
        state = self._state
        name = self._space.coordinates[index].name
        step = state.steps[name]
        return [
            self._candidate(point, "probe", {name: direction * step})
            for direction in (1, -1)
            if (point := self._space.move(state.center, name, direction, step)) is not None
        ]

    def _pattern(self) -> Move:
        """The sweep's pattern (see the module docstring); empty when there is none."""
        state = self._state
        if state.moved_in_sweep:
            if not state.last_sweep_moved:
                return {}
            pattern = {
                c.name: c.to_unit(state.center[c.name]) - c.to_unit(state.sweep_start[c.name])
                for c in self._space
            }
        else:
            pattern = {
                name: direction * state.steps[name]
                for name, direction in state.probe_directions.items()
            }
        pattern = {name: delta for name, delta in pattern.items() if delta != 0}
        return pattern if len(pattern) >= 2 else {}

    def _try_pattern(self) -> bool:
        pattern = self._pattern()
        if not pattern:
            return False
        origin = _Candidate(self._state.center, (), "pattern", pattern)
        return self._extend(origin, "pattern")

    def _start_sweep(self) -> None:
        """Begin a sweep, halving the steps after one that moved nothing; or the next round;
        or finish."""
        state = self._state
        if not state.moved_in_sweep:
            refined = {c.name: c.refine(state.steps[c.name]) for c in self._space}
            if refined == state.steps:
                last = self._rounds is not None and state.round >= self._rounds
                # a kicked round that needed no new trial: its region is known, stop
                stale = self._restart_from == "kick" and self._num_trials == state.round_trials
                if last or stale or state.best_score == -math.inf:  # nothing measurable
                    if not self._final_phase():
                        state.phase, state.batch = "finished", []
                else:
                    self._restart()
                return
            state.steps = refined
        self._reset_sweep(last_sweep_moved=state.moved_in_sweep)
        self._enter_coordinate(0)

    def _reset_sweep(self, last_sweep_moved: bool) -> None:
        """A sweep begins at the incumbent: nothing moved in it yet, no probe direction known."""
        state = self._state
        state.last_sweep_moved, state.moved_in_sweep = last_sweep_moved, False
        state.sweep_start = dict(state.center)
        state.probe_directions = {}

    def _restart(self) -> None:
        """The next round, a descent at the initial steps from the best warm-up point away
        from every optimum found so far or else the kicked best point so far
        (``restart="kick"``), or from the incumbent measured again with every compared point
        at ``round · repeats`` measurements (``"incumbent"``)."""
        state = self._state
        state.optima.append(dict(state.center))
        state.round += 1
        state.round_trials = self._num_trials
        state.steps = self._space.initial_steps()
        if self._restart_from == "kick":
            state.center = self._promising() or self._kicked(self._best_point())
        self._reset_sweep(last_sweep_moved=False)
        state.phase, state.batch = "start", [self._candidate(state.center, "restart")]

    def _space_filling(self, start: dict[str, Any], count: int) -> list[dict[str, Any]]:
        """``count`` distinct lattice points other than ``start``: a Latin hypercube on the
        lattice (each coordinate's lattice cut into ``count`` equal strata, every stratum used
        once, in a seeded random order; McKay, Beckman & Conover 1979), a point that repeats
        one already drawn replaced by a uniform draw (fewer when the lattice is smaller)."""
        draw = random.Random(f"{self._seed}/warmup")
        lattices = {c.name: c.lattice() for c in self._space}
        strata = {name: draw.sample(range(count), count) for name in lattices}
        seen, points = {self._space.key(start)}, []
        for i in range(100 * count):
            if len(points) == count:
                break
            point = {
                name: values[int((strata[name][i] + draw.random()) * len(values) / count)]
                if i < count
                else draw.choice(values)
                for name, values in lattices.items()
            }
            if (key := self._space.key(point)) not in seen:
                seen.add(key)
                points.append(point)
        return points

    def _promising(self) -> dict[str, Any] | None:
        """The best measured warm-up point at least two initial steps (along some coordinate)
        from every optimum an earlier round ended on; None when there is none."""
        steps = self._space.initial_steps()

        def far(point: dict[str, Any], optimum: dict[str, Any]) -> bool:
            return any(
                abs(c.to_unit(point[c.name]) - c.to_unit(optimum[c.name])) >= 2 * steps[c.name]
                for c in self._space
            )

        keys = {self._space.key(p): p for p in self._state.warmup}
        usable = [
            key
            for key, point in keys.items()
            if not self._errored(key) and all(far(point, o) for o in self._state.optima)
        ]
        if not usable:
            return None
        best = max(usable, key=self._score)
        self._state.warmup = [p for k, p in keys.items() if k != best]
        return keys[best]

    def _measured(self) -> list[PointKey]:
        """The points measured so far whose trials all finished without an error."""
        return [k for k, v in self._measurements.items() if v and None not in v.values()]

    def _best_key(self) -> PointKey | None:
        """The measured point with the best mean so far (errored points never); None when
        there is none."""
        measured = self._measured()
        return max(measured, key=self._score) if measured else None

    def _best_point(self) -> dict[str, Any]:
        best = self._best_key()
        assert best is not None, "a restart follows a measured round"
        return self._space.point(best)

    def _kicked(self, point: dict[str, Any]) -> dict[str, Any]:
        """``point`` moved by ±2 initial steps along half its coordinates (at least two, or
        every one of a smaller space), drawn from the seed and the round; clipped at the
        bounds, and drawn again while it lands on a point already measured (after 100 draws,
        any point the kick changes)."""
        names = self._space.names
        count = min(len(names), max(2, math.ceil(len(names) / 2)))
        changed = point
        for attempt in range(100):
            draw = random.Random(f"{self._seed}/{self._state.round}/{attempt}")
            kicked = dict(point)
            for name in draw.sample(names, count):
                kicked = self._space.move(kicked, name, draw.choice((-2, 2))) or kicked
            key = self._space.key(kicked)
            if key not in self._measurements:
                return kicked
            if key != self._space.key(point):
                changed = kicked
        return changed


# -- the saved state as JSON ---------------------------------------------------------------------

_STATE_FORMAT = "raycl.CoordinateDescentSearcher/1"
_SAVED_CLASSES = {c.__name__: c for c in (_State, _Candidate, SearchSpace, Coordinate)}
_TAGS = ("__tuple__", "__set__", "__dict__", "__float__", "__class__")


def _to_json(value: Any) -> Any:
    """``value`` as JSON data, tagged where JSON has no type for it (module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, set | frozenset):
        return {"__set__": [_to_json(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _to_json(v) for k, v in value.items()}
        return {"__dict__": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if _SAVED_CLASSES.get(type(value).__name__) is type(value):
        fields = {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__class__": type(value).__name__, "fields": fields}
    raise TypeError(f"the search state holds a {type(value).__name__}, which JSON cannot keep")


def _from_json(data: Any) -> Any:
    """The value :func:`_to_json` wrote; any other tag or class is a ``ValueError``."""
    if isinstance(data, list):
        return [_from_json(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__class__" in data:
        cls = _SAVED_CLASSES.get(data["__class__"])
        if cls is None or set(data) != {"__class__", "fields"}:
            raise ValueError(f"unknown record {data['__class__']!r}")
        return cls(**{k: _from_json(v) for k, v in data["fields"].items()})
    if len(data) == 1 and next(iter(data)) in _TAGS:
        tag, items = next(iter(data.items()))
        if tag == "__float__":
            if items not in ("inf", "-inf", "nan"):
                raise ValueError(f"not a non-finite float: {items!r}")
            return float(items)
        if tag == "__tuple__":
            return tuple(_from_json(v) for v in items)
        if tag == "__set__":
            return {_from_json(v) for v in items}
        return {_from_json(k): _from_json(v) for k, v in items}
    return {k: _from_json(v) for k, v in data.items()}
