"""`raycl bench synthetic`: landscapes built to trap a local search are what their formulas
say, and CD's remedies (kicked restarts, a warm-up) do what they are for on them, in small
replays of the real searchers (no Ray cluster)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from raycl.bench.replay import Landscape, replay
from raycl.bench.synthetic import EPOCHS, SEEDS, SHAPES, SIGMA, metadata, synthetic_table
from raycl.schema import SearchConfig


@pytest.fixture(scope="module")
def landscapes() -> dict[str, Landscape]:
    return {
        name: Landscape.from_table(synthetic_table(name), metadata(name))
        for name in ("far", "corner", "plateau", "ridge")
    }


def units(landscape: Landscape, key: tuple) -> dict[str, float]:
    point = landscape.space.point(key)
    return {c.name: c.to_unit(point[c.name]) for c in landscape.space}


# where each formula puts its optimum: (log2 temperature, log2 weight); batch 256, MLP projector
OPTIMA = {"ridge": (-1.0, 2.0), "far": (-0.5, -2.5), "corner": (-4.0, 1.0), "plateau": (-1, 2.5)}


@pytest.mark.parametrize("name", list(OPTIMA))
def test_each_shape_is_complete_with_its_optimum_where_its_formula_puts_it(
    landscapes, name: str
) -> None:
    landscape = landscapes[name]
    assert set(SHAPES) == set(OPTIMA)
    assert landscape.missing() == 0 and landscape.seeds == SEEDS
    assert all(curve.shape == (SEEDS, EPOCHS) for curve in landscape.curves.values())
    # the table's best is the formula's optimum or, by seed noise, a neighbour within it
    t, w = OPTIMA[name]
    optimum = {"temperature": 2.0**t, "weight": 2.0**w, "batch_size": 256, "projector": "mlp"}
    assert landscape.regret(landscape.space.key(optimum)) < 1.5 * SIGMA
    best = units(landscape, landscape.best_key)
    assert abs(best["temperature"] - t) <= 0.5 + 1e-9 and abs(best["weight"] - w) <= 0.5 + 1e-9
    assert (best["batch_size"], best["projector"]) == (8.0, 2.0)
    assert landscape.sigma == pytest.approx(SIGMA, rel=0.25)
    assert landscape.gate().decides
    table = synthetic_table(name)
    assert table.equals(synthetic_table(name))  # deterministic


def test_the_corner_collapses_with_large_uneven_noise(landscapes) -> None:
    corner = landscapes["corner"]
    deep = corner.space.key(
        {"temperature": 2**-6, "weight": 8.0, "batch_size": 256, "projector": "mlp"}
    )
    assert corner.mean(deep) < 30  # every seed collapsed
    edge = [  # one step into the corner from the optimum: some seeds collapse
        c[:, -1]
        for k, c in corner.curves.items()
        if (units(corner, k)["temperature"], units(corner, k)["weight"])
        == pytest.approx((-4.5, 1.5), abs=1e-9)
    ]
    spread = np.array([values.std(ddof=1) for values in edge])
    assert np.median(spread) > 5 * SIGMA and corner.pooled_sigma > 5 * corner.sigma


def cd(**settings: Any) -> SimpleNamespace:
    return SimpleNamespace(
        **{**vars(SearchConfig()), "method": "cd", "metric": "score", "mode": "max", **settings}
    )


def final_regrets(landscape: Landscape, search: SimpleNamespace, replays: int = 6) -> list:
    return [
        replay(
            landscape,
            search,
            replay_index=r,
            concurrency=2,
            budget_epochs=None,
            budget_trials=40,
        ).final_regret
        for r in range(replays)
    ]


def test_a_warm_up_finds_the_peak_that_a_descent_on_the_plateau_cannot_see(landscapes) -> None:
    plateau = landscapes["plateau"]
    flat = final_regrets(plateau, cd(warmup=0))
    warm = final_regrets(plateau, cd())  # 2·d + 1 = 9 warm-up points
    assert min(flat) > 5.0  # the peak's slope never reaches the start's neighbours
    # the peak rises above the plateau on ~12 % of the (temperature, weight) plane: nine
    # spread points find it about two times in three
    assert sum(r < 2.0 for r in warm) >= len(warm) // 2
