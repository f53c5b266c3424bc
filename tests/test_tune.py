"""raycl tune: search configs and the best point (fast), and real Tune experiments on a local
Ray cluster with each method (slow)."""

from __future__ import annotations

import pytest
from ray.tune import Callback

from raycl.config import ConfigError
from raycl.losses import LOSSES
from raycl.search.tuner import load_tune_config
from tests.conftest import TINY_TRAINING, paired_partners

TINY = [*TINY_TRAINING, "search.max_concurrent_trials=2"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["space.loss.temperature.lower=2"], "field 'lower' must be <= upper"),
        (["space.loss.temperature.lower=0.1", "space.loss.temperature.upper=0.1"], "range"),
        (["space.loss.weight.scale=cubic"], "scale"),
        (
            ["+space.loss.bogus={scale:log2,lower:1,upper:2,start:1}"],
            "'loss.bogus' is not a config key",
        ),
        (["search.method=grid"], "search.method must be one of"),
        (["search.budget_trials=null"], "budget"),
        (["search.mode=best"], "search.mode"),
    ],
)
def test_bad_search_configs_are_one_line_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_tune_config(overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_has_a_search_space_with_the_batch_size(loss):
    cfg = load_tune_config([*paired_partners("loss", loss), f"loss={loss}"])
    assert cfg.space["loss"] and cfg.space["data"]["batch_size_per_worker"]["scale"] == "pow2"


def test_best_point_averages_a_configurations_seeds():
    from types import SimpleNamespace as Result

    from raycl.search.tuner import best_point

    def trial(t, seed, knn, error=None):
        config = {"raycl_search": "cd", "loss.temperature": t, "seed": seed}
        return Result(config=config, metrics={"knn_top1": knn, "loss": 1.0}, error=error)

    results = [
        trial(0.1, 0, 95.0),  # the luckiest single trial ...
        trial(0.1, 1, 85.0),  # ... of a point whose mean is 90
        trial(0.2, 0, 92.0),
        trial(0.2, 1, 91.0),  # the best point: mean 91.5
        trial(0.4, 0, 99.0, error=RuntimeError("died")),  # errored trials never count
    ]
    config, metrics = best_point(results, "knn_top1", "max")
    assert config == {"loss.temperature": 0.2}
    assert metrics == {"knn_top1": 91.5, "loss": 1.0, "trials": 2}
    assert best_point(results, "knn_top1", "min")[0] == {"loss.temperature": 0.1}
    with pytest.raises(RuntimeError, match=r"no trial reported search\.metric 'accuracy'"):
        best_point(results, "accuracy", "max")


def test_best_point_prefers_trials_that_trained_every_epoch():
    from types import SimpleNamespace as Result

    from raycl.search.tuner import best_point

    def trial(t, knn, epochs):
        metrics = {"knn_top1": knn, "training_iteration": epochs}
        return Result(config={"loss.temperature": t, "seed": 0}, metrics=metrics, error=None)

    stopped_early = trial(0.1, 99.0, 1)  # ASHA stopped it: a lower-fidelity measurement
    results = [stopped_early, trial(0.2, 80.0, 3), trial(0.4, 85.0, 3)]
    assert best_point(results, "knn_top1", "max", epochs=3)[0] == {"loss.temperature": 0.4}
    # without a full-length trial, every trial counts
    assert best_point([stopped_early], "knn_top1", "max", epochs=3)[0] == {"loss.temperature": 0.1}


class Concurrency(Callback):
    """The most trials Tune ever had running at once."""

    def __init__(self) -> None:
        self.running, self.most = 0, 0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running += 1
        self.most = max(self.most, self.running)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running -= 1

    on_trial_error = on_trial_complete


def assert_a_real_search(outcome, budget: int) -> None:
    assert 1 <= len(outcome.results) <= budget
    assert not outcome.results.errors
    assert 0 < outcome.best_metrics["knn_top1"] <= 100
    assert 0.015625 <= outcome.best_config["loss.temperature"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "asha"])
def test_real_search_with_each_method(ray_cluster, tmp_path, method):
    """End to end through Tune: CD (a Searcher of raycl's) and ASHA (a scheduler); TPE (an
    Optuna sampler through OptunaSearch) below; every method's decisions under Tune's own
    executor are tested against its replay in tests/test_replay.py."""
    from raycl.search.tuner import run_search

    cfg = load_tune_config(
        [*TINY, f"search={method}", "search.budget_trials=4", f"storage_path={tmp_path}"]
    )
    outcome = run_search(cfg)
    assert_a_real_search(outcome, 4)
    if method == "cd":
        kinds = [e["kind"] for e in outcome.searcher_path]
        # the start and one spread point (2·d + 1, capped at half the budget of 4), either first
        assert sorted(kinds[:2]) == ["start", "warmup"]
        assert any(e["accepted"] for e in outcome.searcher_path)
        assert (tmp_path / "raycl-tune" / "cd_path.json").exists()


@pytest.mark.slow
def test_tpe_runs_the_configured_number_of_trials_at_once(ray_cluster, tmp_path):
    """OptunaSearch was once stuck at one concurrent trial under Tune (ray-project/ray#46965):
    with search.max_concurrent_trials=2, two trials run at once (trials long enough that the
    second starts before the first ends). Also the end-to-end check of an Optuna method."""
    from raycl.search.tuner import run_search

    cfg = load_tune_config(
        [
            *TINY,
            "max_steps_per_epoch=12",
            "search=tpe",
            "search.budget_trials=3",
            f"storage_path={tmp_path}",
        ]
    )
    concurrency = Concurrency()
    outcome = run_search(cfg, callbacks=[concurrency])
    assert concurrency.most == 2
    assert_a_real_search(outcome, 3)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["siglip"])
def test_a_search_over_a_paired_space(ray_cluster, tmp_path, loss):
    """The shipped two-tower space under CD, unchanged: two trials on image–caption pairs,
    ranked by zero-shot accuracy."""
    from raycl.search.tuner import run_search

    cfg = load_tune_config(
        [
            *TINY,
            *paired_partners("loss", loss),
            f"loss={loss}",
            "model.text_layers=1",
            "epochs=1",
            "search.budget_trials=2",
            "search.metric=zero_shot_top1",
            f"storage_path={tmp_path}",
        ]
    )
    outcome = run_search(cfg)
    assert len(outcome.results) == 2 and not outcome.results.errors
    assert 0 <= outcome.best_metrics["zero_shot_top1"] <= 100
    assert {"loss.bias", "loss.temperature", "loss.weight"} <= set(outcome.best_config)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_every_method_suggests_points_of_a_paired_space(loss):
    """The shipped two-tower spaces (a categorical fixed-or-learnt temperature, the bias) work
    with every search method unchanged: each suggests valid points."""
    from raycl.search.methods import METHODS, build_search
    from raycl.search.space import space_from_config

    for method in METHODS:
        cfg = load_tune_config([*paired_partners("loss", loss), f"loss={loss}", f"search={method}"])
        space = space_from_config(cfg)
        searcher = build_search(space, cfg.search, 0, cfg.epochs).searcher
        searcher.set_search_properties("zero_shot_top1", "max", {})
        for trial in range(3):
            point = searcher.suggest(f"t{trial}")
            assert {c.name for c in space.coordinates} <= set(point), (method, point)
            assert 0.015625 <= point["loss.temperature"] <= 0.5
