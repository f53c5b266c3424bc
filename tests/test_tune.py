"""raycl tune: search configs (fast), the search benchmark's bookkeeping (fast), and real
Tune experiments on a local Ray cluster with each method (slow)."""

from __future__ import annotations

import pytest

from raycl.bench.search import (
    Reach,
    Trajectory,
    median_reach,
    recheck_table,
    summarise,
    verdict,
)
from raycl.config import ConfigError, load_config
from tests.conftest import TINY_TRAINING

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
        load_config(overrides, config_name="tune")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("loss", ["infonce", "supcon", "tcl", "dhel", "kcl", "margin"])
def test_every_loss_has_a_search_space(loss):
    cfg = load_config([f"loss={loss}"], config_name="tune")
    assert cfg.space.loss


def test_search_bookkeeping():
    runs = [
        Trajectory("cd", 0, [90.0, 95.0, 96.0], [6, 12, 18], {}),
        Trajectory("random", 0, [91.0, 92.0, 96.4, 95.0], [6, 12, 18, 24], {}),
        Trajectory("asha", 0, [80.0, 93.0], [1, 7], {}),
    ]
    assert runs[0].reach(95.9) == (Reach(3, True), Reach(18, True))
    assert runs[2].reach(95.9) == (Reach(2, False), Reach(7, False))
    assert runs[1].best_so_far() == [91.0, 92.0, 96.4, 96.4]
    text = summarise(runs, ["cd", "random", "asha"], tolerance=0.5)
    assert "over all searches (96.40)" in text
    assert "| cd | 1/1 | 3 | 18 | 96.00 | 3 |" in text
    assert "| asha | 0/1 | > 2 (not reached) | > 7 (not reached) | 93.00 | 2 |" in text
    assert "CD trials ≤ ⅓ of random search's: not met (ratio 1.00)" in text
    assert "CD epochs ≤ ½ of ASHA's: undetermined (ratio < 2.57" in text


def test_per_seed_targets_follow_each_seeds_best():
    runs = [
        Trajectory("cd", 0, [96.0], [5], {}),
        Trajectory("random", 0, [95.0, 96.4], [5, 10], {}),
        Trajectory("cd", 1, [90.0, 91.0], [5, 10], {}),
        Trajectory("random", 1, [89.0], [5], {}),
    ]
    text = summarise(runs, ["cd", "random"], tolerance=0.5, per_seed=True)
    assert "within its seed (96.40, 91.00)" in text
    # Seed 0's CD reaches 95.9 at trial 1, seed 1's reaches 90.5 at trial 2: upper median 2.
    assert "| cd | 2/2 | 2 | 10 |" in text
    assert "| random | 1/2 | > 1 (not reached) | > 5 (not reached) |" in text
    global_text = summarise(runs, ["cd", "random"], tolerance=0.5)
    assert "| cd | 1/2 | > 2 (not reached) |" in global_text


def test_median_search_counts_searches_that_never_reached_the_target_as_last():
    # Two of three searches never reached the target: the median search did not either.
    assert median_reach([Reach(3, True), Reach(9, False), Reach(4, False)]) == Reach(4, False)
    assert median_reach([Reach(30, True), Reach(2, True), Reach(4, False)]) == Reach(30, True)
    assert verdict(Reach(3, True), Reach(10, False), 1 / 3).startswith("met (ratio < 0.30")
    assert verdict(Reach(3, True), Reach(9, True), 1 / 3) == "met (ratio 0.33)"
    assert verdict(Reach(3, False), Reach(9, True), 1 / 3).startswith("not met")


def test_recheck_table_reports_each_search_and_the_noise():
    runs = [
        Trajectory("cd", 0, [90.0], [5], {}, rechecked=[91.0, 93.0]),
        Trajectory("cd", 1, [90.0], [5], {}, rechecked=[89.0, 89.0]),
        Trajectory("random", 0, [90.0], [5], {}, rechecked=[88.0, 90.0]),
    ]
    text = recheck_table(runs, ["cd", "random", "asha"])
    assert "2 fresh seeds" in text
    assert "(pooled): 0.82 points" in text  # sqrt(mean(1, 0, 1))
    assert "| cd | 90.50 | 92.00, 89.00 |" in text
    assert "| random | 89.00 | 89.00 |" in text
    assert "asha" not in text


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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "random", "asha"])
def test_real_search_with_each_method(ray_cluster, tmp_path, method):
    from raycl.search.tuner import run_search

    cfg = load_config(
        [*TINY, f"search={method}", "search.budget_trials=4", f"storage_path={tmp_path}"],
        config_name="tune",
    )
    outcome = run_search(cfg)
    assert 1 <= len(outcome.results) <= 4
    assert not outcome.results.errors
    assert 0 < outcome.best_metrics["knn_top1"] <= 100
    assert 0.015625 <= outcome.best_config["loss.temperature"] <= 1.0
    if method == "cd":
        assert outcome.searcher_path and outcome.searcher_path[0]["accepted"]
        assert (tmp_path / "raycl-tune" / "cd_path.json").exists()
