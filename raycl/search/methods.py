"""Search methods by name: the Ray Tune searcher (and scheduler) of each, over one space.

=========  ==========================================================  ====================
name       searcher                                                    scheduler
=========  ==========================================================  ====================
``cd``     :class:`~raycl.search.CoordinateDescentSearcher`            —
``random`` Optuna's ``RandomSampler`` through Tune's ``OptunaSearch``  —
``asha``   as ``random``                                               ``ASHAScheduler``
``tpe``    Optuna's ``TPESampler`` (multivariate, constant liar)       —
``gp``     Optuna's ``GPSampler`` (Gaussian-process BO)                —
=========  ==========================================================  ====================

On the same terms for every method: the space's start point is evaluated first; the points
are those of the space's lattice (:meth:`SearchSpace.lattice`, what coordinate descent can
reach), so no method can propose a configuration another cannot; ``search.repeats = r`` trains
every point with seeds ``seed … seed + r − 1`` and hands the searcher their mean (CD does it
itself, the others through :class:`SeedRepeater`, Ray Tune's ``Repeater``). Optuna sees one
integer per coordinate, the index into that coordinate's lattice — ordered, so TPE's and GP's
models treat neighbours as neighbours (``tune.choice`` would make them unordered
categoricals) — and starts with ``2·d + 1`` random points (``d`` coordinates), as Optuna's
authors advise for TPE, instead of its default 10. A new method is one function here and one
``raycl/conf/search/<name>.yaml``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune.search import Repeater, Searcher
from ray.tune.search.repeater import TRIAL_INDEX

from raycl.config import SEARCH_MARKER
from raycl.search.searcher import (
    RESTARTS,
    SEED_KEY,
    CoordinateDescentSearcher,
    defines_search_space,
)
from raycl.search.space import SearchSpace


@dataclass(frozen=True)
class SearchPlan:
    """What Tune needs for one method: a searcher, an optional scheduler, constant entries."""

    searcher: Searcher
    scheduler: Any | None  # a ray.tune TrialScheduler
    param_space: dict[str, Any]


class LatticeSearcher(Searcher):
    """An Optuna sampler over the lattice indices of a :class:`SearchSpace`, through Tune's
    ``OptunaSearch``: Optuna sees indices, Tune sees values (and ``seed``)."""

    def __init__(
        self,
        space: SearchSpace,
        sampler: Any,
        metric: str,
        mode: str,
        seed: int = 0,
    ) -> None:
        import optuna
        from optuna.distributions import CategoricalDistribution, IntDistribution
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study
        super().__init__(metric=metric, mode=mode)
        self._lattices = {c.name: c.lattice() for c in space}
        distributions = {
            c.name: CategoricalDistribution(list(range(len(self._lattices[c.name]))))
            if c.scale == "categorical"
            else IntDistribution(0, len(self._lattices[c.name]) - 1)
            for c in space
        }
        start = {name: self._lattices[name].index(v) for name, v in space.start_point().items()}
        self._seed = seed
        self._optuna = OptunaSearch(
            space=distributions,
            metric=metric,
            mode=mode,
            sampler=sampler,
            points_to_evaluate=[start],
        )

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """The space, metric and mode are fixed at construction; constants are welcome."""
        return not defines_search_space(config)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        indices = self._optuna.suggest(trial_id)
        if not isinstance(indices, dict):
            return indices
        point = {name: self._lattices[name][index] for name, index in indices.items()}
        return {**point, SEED_KEY: self._seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._optuna.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self._optuna.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        self._optuna.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self._optuna.restore(checkpoint_path)


class SeedRepeater(Repeater):
    """Ray Tune's ``Repeater`` with the repeat index added to raycl's ``seed``: every point
    is trained ``repeat`` times with consecutive seeds, and the searcher sees their mean."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config[SEED_KEY] = config.get(SEED_KEY, 0) + config.pop(TRIAL_INDEX)
        return config


def _optuna(sampler_for: Callable[[SearchSpace, int], Any]):
    """A builder for an Optuna-sampler method (repeats through :class:`SeedRepeater`)."""

    def build(space: SearchSpace, search: Any, seed: int, epochs: int) -> SearchPlan:
        searcher: Searcher = LatticeSearcher(
            space, sampler_for(space, seed), search.metric, search.mode, seed
        )
        if search.repeats > 1:
            searcher = SeedRepeater(searcher, repeat=search.repeats)
        return SearchPlan(searcher, None, {SEARCH_MARKER: search.method})

    return build


def _startup_trials(space: SearchSpace) -> int:
    return 2 * len(space) + 1


def _random_sampler(space: SearchSpace, seed: int) -> Any:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _tpe_sampler(space: SearchSpace, seed: int) -> Any:
    from optuna.exceptions import ExperimentalWarning
    from optuna.samplers import TPESampler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # multivariate TPE
        return TPESampler(
            seed=seed,
            n_startup_trials=_startup_trials(space),
            multivariate=True,
            constant_liar=True,
        )


def _gp_sampler(space: SearchSpace, seed: int) -> Any:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed, n_startup_trials=_startup_trials(space))


def _cd(space: SearchSpace, search: Any, seed: int, epochs: int) -> SearchPlan:
    searcher = CoordinateDescentSearcher(
        space,
        eps=search.eps,
        repeats=search.repeats,
        noise=search.noise,
        rounds=search.rounds,
        restart=search.restart,
        warmup=search.warmup,
        final_checks=search.final_checks,
        max_trials=search.budget_trials,
        seed=seed,
    )
    return SearchPlan(searcher, None, {SEARCH_MARKER: search.method})


def _asha(space: SearchSpace, search: Any, seed: int, epochs: int) -> SearchPlan:
    from ray.tune.schedulers import ASHAScheduler

    plan = _optuna(_random_sampler)(space, search, seed, epochs)
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=epochs,
        grace_period=search.grace_period,
        reduction_factor=search.reduction_factor,
    )
    return SearchPlan(plan.searcher, scheduler, plan.param_space)


SearchBuilder = Callable[[SearchSpace, Any, int, int], SearchPlan]

METHODS: dict[str, SearchBuilder] = {
    "cd": _cd,
    "random": _optuna(_random_sampler),
    "asha": _asha,
    "tpe": _optuna(_tpe_sampler),
    "gp": _optuna(_gp_sampler),
}


def build_search(space: SearchSpace, search: Any, seed: int, epochs: int) -> SearchPlan:
    """The :class:`SearchPlan` of ``search.method`` over ``space`` (``search`` is the config's
    ``search`` section; ``epochs`` is a full trial's length)."""
    if search.method not in METHODS:
        raise ValueError(f"search.method must be one of {list(METHODS)}, got {search.method!r}")
    return METHODS[search.method](space, search, seed, epochs)


def check_search(search: Mapping[str, Any] | Any) -> None:
    """One-line errors for a bad ``search`` section (the schema checks the types)."""
    checks = [
        ("search.method", search.method in METHODS, f"must be one of {list(METHODS)}"),
        ("search.mode", search.mode in ("max", "min"), "must be max or min"),
        ("search.repeats", search.repeats >= 1, "must be >= 1"),
        ("search.eps", search.eps >= 0, "must be >= 0"),
        ("search.noise", search.noise is None or search.noise >= 0, "must be >= 0 or null"),
        ("search.rounds", search.rounds is None or search.rounds >= 1, "must be >= 1 or null"),
        ("search.restart", search.restart in RESTARTS, f"must be one of {list(RESTARTS)}"),
        ("search.warmup", search.warmup is None or search.warmup >= 0, "must be >= 0 or null"),
        (
            "search.final_checks",
            search.final_checks is None or search.final_checks >= 0,
            "must be >= 0 or null",
        ),
        ("search.max_concurrent_trials", search.max_concurrent_trials >= 1, "must be >= 1"),
        ("search.grace_period", search.grace_period >= 1, "must be >= 1"),
        ("search.reduction_factor", search.reduction_factor >= 2, "must be >= 2"),
        (
            "search.budget_trials",
            search.budget_trials is None or search.budget_trials >= 1,
            "must be >= 1 or null",
        ),
        (
            "search.budget_epochs",
            search.budget_epochs is None or search.budget_epochs >= 1,
            "must be >= 1 or null",
        ),
    ]
    for key, ok, rule in checks:
        if not ok:
            value = getattr(search, key.split(".")[1])
            raise ValueError(f"{key} {rule}, got {value!r}")
    if search.budget_trials is None and search.budget_epochs is None:
        raise ValueError("search: set search.budget_trials or search.budget_epochs")
