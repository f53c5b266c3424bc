"""raycl tune: search configs (fast), the search benchmark's bookkeeping (fast), and real
Tune experiments on a local Ray cluster with each method (slow)."""

from __future__ import annotations

import pytest

from raycl.bench.search import Trajectory, summarise
from raycl.config import ConfigError, load_config

TINY = [
    "epochs=2",
    "data.batch_size=128",
    "max_steps_per_epoch=2",
    "eval.linear_probe=false",
    "eval.knn_k=20",
    "search.max_concurrent_trials=2",
]


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
    assert runs[0].reach(95.9) == (3, 18)
    assert runs[2].reach(95.9) == (None, None)
    assert runs[1].best_so_far() == [91.0, 92.0, 96.4, 96.4]
    text, best = summarise(runs, ["cd", "random", "asha"], tolerance=0.5)
    assert best == 96.4
    assert "| cd | 1/1 | 3 | 18 | 96 | 3 |" in text
    assert "| asha | 0/1 | — | — | 93 | 2 |" in text


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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
