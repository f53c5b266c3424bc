"""``raycl tune``: the balance search as a Ray Tune experiment.

Every method of :mod:`raycl.search.methods` (``cd``, ``random``, ``asha``, ``tpe``, ``gp``)
runs over the same space, trainable and budget, so they can be compared. Every trial is a
real training run (:func:`raycl.train.run_training`) reporting once per epoch: in the trial's
own process (``cluster.num_workers=0``) or as a ``TorchTrainer`` worker
group whose reports reach Tune through ``TuneReportCallback``. A budget in epochs
(``search.budget_epochs``) stops the whole experiment once that many epochs were trained
over all trials, so methods compare at equal compute.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from raycl.cluster import connect_ray
from raycl.config import (
    SEARCH_MARKER,
    ConfigError,
    load_config,
    storage_path,
    training_config,
    trial_config,
)
from raycl.runner import trainer_for
from raycl.schema import TrainConfig, TuneRunConfig
from raycl.search.methods import build_search, check_search
from raycl.search.progress import SearchProgress
from raycl.search.searcher import SEED_KEY, CoordinateDescentSearcher
from raycl.search.space import space_from_config
from raycl.tracking import tune_callbacks
from raycl.train import run_training

SEARCHER_PATH_FILE = "cd_path.json"


def load_tune_config(
    overrides: list[str] | None = None, config_dirs: list[str] | None = None
) -> TuneRunConfig:
    """The ``tune`` config (``raycl/conf/tune.yaml`` + overrides), its ``search`` and ``space``
    sections checked: one-line :class:`~raycl.config.ConfigError` naming the key."""
    cfg = load_config(overrides, config_name="tune", config_dirs=config_dirs)
    try:
        check_search(cfg.search)
        space_from_config(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.data.ingest != "loader":  # a trial is one process: no Ray Train dataset shards
        raise ConfigError("data.ingest must be loader for raycl tune, got 'ray_data'")
    return cfg


@dataclass
class SearchOutcome:
    """A finished search: Tune's results, the best trial and (for CD) the searcher's moves."""

    results: Any  # ray.tune.ResultGrid
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    path: str
    searcher_path: list[dict[str, Any]] | None


def run_trial(overrides: dict[str, Any], base: TrainConfig) -> None:
    """A Tune function trainable: one training run reporting every epoch."""
    from raycl.session import TuneSession

    config = trial_config(base, overrides)
    if config.cluster.num_workers == 0:
        run_training(config, TuneSession(use_gpu=config.cluster.use_gpu))
        return
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    config = dataclasses.replace(
        config, storage_path=str(trial_dir.parent), name=f"{trial_dir.name}-train"
    )
    trainer_for(config, callbacks=[TuneReportCallback()]).fit()


class EpochBudget(Stopper):
    """A Tune stopper ending the experiment after ``budget`` epochs over all trials."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.used += 1  # one report per epoch
        return False

    def stop_all(self) -> bool:
        return self.used >= self.budget


def make_trainable(cfg: TuneRunConfig):
    """The Tune trainable: :func:`run_trial` bound to the training part of ``cfg``.

    Local trials reserve ``search.cpus_per_trial`` (and a GPU with ``cluster.use_gpu``); a
    trial that drives a TorchTrainer reserves nothing itself (its workers reserve their own).
    """
    from ray import tune

    base = training_config(cfg)
    local = cfg.cluster.num_workers == 0
    resources = {
        "CPU": cfg.search.cpus_per_trial if local else 0,
        "GPU": 1 if local and cfg.cluster.use_gpu else 0,
    }
    return tune.with_resources(tune.with_parameters(run_trial, base=base), resources)


def build_tuner(cfg: TuneRunConfig, callbacks: list | None = None):
    """The ``ray.tune.Tuner`` (and the CD searcher, if any) for a ``tune`` config, with extra
    Tune ``callbacks``."""
    from ray import tune

    search = cfg.search
    plan = build_search(space_from_config(cfg), search, cfg.seed, cfg.epochs)
    tuner = tune.Tuner(
        make_trainable(cfg),
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            search_alg=plan.searcher,
            scheduler=plan.scheduler,
            num_samples=search.budget_trials or -1,
            max_concurrent_trials=search.max_concurrent_trials,
            reuse_actors=search.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path(cfg),
            stop=EpochBudget(search.budget_epochs) if search.budget_epochs else None,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            callbacks=[
                SearchProgress(search.metric, search.budget_trials, search.budget_epochs),
                *tune_callbacks(cfg),
                *(callbacks or []),
            ],
            verbose=1 if cfg.verbose else 0,
        ),
    )
    cd = plan.searcher if isinstance(plan.searcher, CoordinateDescentSearcher) else None
    return tuner, cd


def point_key(config: dict[str, Any]) -> tuple:
    """A trial config's identity as a point of the space: its settings without the seed."""
    return tuple(sorted((k, v) for k, v in config.items() if k not in (SEARCH_MARKER, SEED_KEY)))


def best_mean(points: dict[Any, list[float]], mode: str) -> Any:
    """The key of ``points`` (point -> its trials' metrics) with the best mean metric."""
    sign = 1.0 if mode == "max" else -1.0
    return max(points, key=lambda key: sign * statistics.fmean(points[key]))


def best_point(
    results: Iterable[Any], metric: str, mode: str, epochs: int | None = None
) -> tuple[dict, dict]:
    """The best configuration and its metrics, from trials' last reports.

    Trials of one configuration with different seeds (``search.repeats``, CD's
    confirmations) form one point, scored by the mean of their ``metric``; its metrics are
    the means over those trials, plus ``trials``. Only trials that trained all ``epochs``
    count when there are any (a trial ASHA stopped early is a lower-fidelity measurement).
    """
    finished = [
        (r.config, r.metrics) for r in results if r.error is None and metric in (r.metrics or {})
    ]
    full = [(c, m) for c, m in finished if m.get("training_iteration") == epochs]
    pairs = full or finished
    if not pairs:
        raise RuntimeError(f"no trial reported search.metric {metric!r}")
    points: dict[tuple, list[dict[str, Any]]] = {}
    for config, report in pairs:
        points.setdefault(point_key(config), []).append(report)
    key = best_mean({k: [r[metric] for r in v] for k, v in points.items()}, mode)
    chosen = points[key]
    numeric = [
        k for k, v in chosen[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    means = {
        k: statistics.mean(r[k] for r in chosen) for k in numeric if all(k in r for r in chosen)
    }
    return dict(key), {**means, "trials": len(chosen)}


def run_search(cfg: TuneRunConfig, callbacks: list | None = None) -> SearchOutcome:
    """Run (or, with ``search.resume=true``, resume) the search and return its outcome;
    ``callbacks``: extra Ray Tune callbacks (a resumed search keeps its own)."""
    import json

    from ray import tune

    connect_ray(cfg.cluster.address, verbose=cfg.verbose)
    experiment = f"{storage_path(cfg)}/{cfg.name}"
    if cfg.search.resume:
        if not tune.Tuner.can_restore(experiment):
            raise FileNotFoundError(f"search.resume=true but no experiment at {experiment}")
        # The searcher's state (and so the CD path so far) comes back from the experiment.
        tuner, searcher = (
            tune.Tuner.restore(experiment, trainable=make_trainable(cfg), resume_errored=True),
            None,
        )
    else:
        tuner, searcher = build_tuner(cfg, callbacks)
    results = tuner.fit()
    best_config, best_metrics = best_point(results, cfg.search.metric, cfg.search.mode, cfg.epochs)
    moves = searcher.path if searcher is not None else None
    if moves is not None and "://" not in experiment:
        Path(experiment, SEARCHER_PATH_FILE).write_text(json.dumps(moves, default=str))
    return SearchOutcome(
        results=results,
        best_config=best_config,
        best_metrics=best_metrics,
        path=experiment,
        searcher_path=moves,
    )
