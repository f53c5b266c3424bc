"""The shape of a landscape table (raycl.bench.shape) on tables whose shape is known."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from raycl.bench.replay import Landscape
from raycl.bench.shape import landscape_shape, shape_report
from raycl.search.space import SearchSpace
from tests.test_replay import SPACE

# Steps from the start (0.5, 1, 64) along temperature, weight and batch size.
Steps = tuple[float, float, float]


def table_of(f: Callable[[Steps], float], seed_offsets: tuple[float, ...] = (0.0, 0.0)):
    """A two-epoch landscape whose final metric is ``f(steps) + offset`` for each seed."""
    rows = []
    for point in SearchSpace.from_dict(SPACE).lattice():
        steps = (
            math.log2(point["loss.temperature"] / 0.5),
            math.log2(point["loss.weight"]),
            math.log2(point["data.batch_size_per_worker"] / 64),
        )
        for seed, offset in enumerate(seed_offsets):
            for epoch in (1, 2):
                rows.append({**point, "seed": seed, "epoch": epoch, "acc": f(steps) + offset})
    metadata = {"space": SPACE, "metric": "acc", "mode": "max", "epochs": 2}
    return Landscape.from_table(pd.DataFrame(rows), metadata)


def test_a_quadratic_is_recovered_exactly() -> None:
    # f = 80 − 3u² − 2v² + uv − b² in steps from the start:
    # H = [[−6, 1, 0], [1, −4, 0], [0, 0, −2]].
    def f(s: Steps) -> float:
        return 80 - 3 * s[0] ** 2 - 2 * s[1] ** 2 + s[0] * s[1] - s[2] ** 2

    shape = landscape_shape(table_of(f))
    assert shape.r2 == pytest.approx(1.0)
    assert shape.curvature == pytest.approx(
        {"loss.temperature": -6.0, "loss.weight": -4.0, "data.batch_size_per_worker": -2.0}
    )
    assert shape.coupling[("loss.temperature", "loss.weight")] == pytest.approx(1 / math.sqrt(24))
    assert shape.coupling[("loss.temperature", "data.batch_size_per_worker")] == 0.0
    rows = {line.split(" | ")[0]: line for line in shape_report(shape).splitlines()}
    couplings = "loss.temperature +0.20, data.batch_size_per_worker +0.00"  # 1/√24 = 0.204
    assert rows["| loss.weight"].endswith(f"| -4.00 | {couplings} |")


def test_main_effects_are_the_ranges_of_the_marginal_means() -> None:
    # Temperature steps −2..1 give −3·{4, 1, 0, 1}: range 12; the weight is flat.
    shape = landscape_shape(table_of(lambda s: 80 - 3 * s[0] ** 2 - s[2]))
    assert shape.main_effects["loss.temperature"] == pytest.approx(12.0)
    assert shape.main_effects["loss.weight"] == pytest.approx(0.0)
    assert shape.main_effects["data.batch_size_per_worker"] == pytest.approx(2.0)  # −1..1


def test_noise_and_shares_near_the_best() -> None:
    # Seeds 1 apart: every point's SD is 1/√2; only the optimum's 5 weights lie within 0.5.
    landscape = table_of(lambda s: 80 - 3 * s[0] ** 2 - 2 * s[2] ** 2, seed_offsets=(0.0, 1.0))
    shape = landscape_shape(landscape, deltas=(0.5,))
    assert shape.sigma == shape.median_sd == shape.best_sd == pytest.approx(1 / math.sqrt(2))
    assert shape.shares[0.5] == pytest.approx(5 / 60)
    assert set(shape.shares) == {0.5, shape.sigma}
    report = shape_report(shape)
    assert "pooled σ = 0.71" in report and "8.3% within 0.50" in report
    again = landscape_shape(landscape, deltas=(0.5, round(shape.sigma, 2)))  # σ given as δ
    assert shape_report(again).count("within 0.71") == 1
    assert "| loss.weight | 0.00 |" in report


def test_a_flat_coordinate_has_no_curvature_and_no_coupling() -> None:
    # The weight is exactly flat: least squares leaves ~1e-14 of rounding in its H_ii, which
    # the fit sets to 0 (CURVATURE_RTOL), so its couplings are nan on every platform.
    shape = landscape_shape(table_of(lambda s: 80 - s[0] ** 2 - s[2] ** 2))
    assert shape.curvature["loss.weight"] == 0.0
    assert np.isnan(shape.coupling[("loss.temperature", "loss.weight")])
    assert np.isnan(shape.coupling[("loss.weight", "data.batch_size_per_worker")])
    assert shape.coupling[("loss.temperature", "data.batch_size_per_worker")] == 0.0
    rows = {line.split(" | ")[0]: line for line in shape_report(shape).splitlines()}
    assert rows["| loss.weight"].endswith("| +0.00 | — |")
    assert rows["| loss.temperature"].endswith("| data.batch_size_per_worker +0.00 |")


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_a_near_flat_coordinate_above_the_tolerance_keeps_its_coupling(scale: float) -> None:
    # f = 80 − u² − εv² + εuv − b² (times scale): H_vv = −2ε, H_uv = ε, ρ_uv = ε/√(4ε) = √ε/2.
    # ε = 1e-6 is ~12× CURVATURE_RTOL · max|f| (a real, if tiny, effect); ε = 1e-12 is below it.
    def table(eps: float) -> Landscape:
        return table_of(
            lambda s: scale * (80 - s[0] ** 2 - eps * s[1] ** 2 + eps * s[0] * s[1] - s[2] ** 2)
        )

    shape = landscape_shape(table(1e-6))
    assert shape.curvature["loss.weight"] == pytest.approx(-2e-6 * scale, rel=1e-6)
    assert shape.coupling[("loss.temperature", "loss.weight")] == pytest.approx(5e-4, rel=1e-6)
    below = landscape_shape(table(1e-12))
    assert below.curvature["loss.weight"] == 0.0
    assert np.isnan(below.coupling[("loss.temperature", "loss.weight")])
