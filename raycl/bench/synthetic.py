"""``raycl bench synthetic``: landscapes built to trap a local search, as landscape tables.

Each is a known function of a raycl-like balance space — temperature and entropy weight on
log2 lattices (half steps), batch size on a pow2 one, a categorical projector — with seed
noise and learning curves, written in :mod:`raycl.bench.landscape`'s format so
``raycl bench search`` replays every method on it (ASHA included: 10 epochs a trial). In units
``t = log2 temperature`` ∈ [−6, 0], ``w = log2 weight`` ∈ [−3, 3], ``b = log2 batch`` ∈ [5, 10]
and the projector's index ``p``, the final metric (to maximise, in points) is a shape ``f(t, w)``
plus separable effects larger than the noise, ``−0.5·(b − 8)² − 3·[p = 0] + [p = 2]`` (best at
batch 256 with the MLP projector), floored at chance level (10 points):

* ``ridge``: ``80 − 8·r² − 0.5·(s − 1)²`` with ``r = t − w + 3`` and ``s = t + w``: a narrow
  diagonal ridge (temperature and weight coupled, as in every contrastive loss) rising towards
  ``(t, w) = (−1, 2)``; one coordinate's step off the ridge costs more than it gains along it.
* ``far``: ``max(76 − 0.6·|x − (−3, 0)|², 80 − 3·|x − (−0.5, −2.5)|²)``: a broad local
  optimum around the default start and a narrower global one across a valley.
* ``corner``: ``80 − 0.5·(t + 4)² − 0.5·(w − 1)²``, best next to a collapsing corner
  (``t ≤ −4.5`` and ``w ≥ 1.5``) where each run collapses to ~20 points with a probability that
  grows into the corner, and the noise grows from 0.5 to 2.5 points towards it: large, uneven.
* ``plateau``: ``max(72, 80 − 6·|x − (−1, 2.5)|²)``: flat within the noise almost everywhere,
  one small peak.

Seed noise: a run's final metric is ``f`` plus ``N(0, σ²)`` (σ = 0.5 points; the corner's
grows); epoch ``e`` of ``E`` sees ``final − (final − 10)·exp(−e/τ)`` with ``τ = 1 + 0.4·(b − 5)``
(larger batches learn slower per epoch, so early epochs rank them lower than their end) plus
``N(0, (σ/2)²)`` per epoch. Deterministic: the same name writes the same table.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRIC = "score"
EPOCHS = 10
SEEDS = 4
SIGMA = 0.5
FLOOR = 10.0  # chance level: no run scores below it
SPACE: dict[str, dict[str, Any]] = {
    "temperature": {"scale": "log2", "lower": 2**-6, "upper": 1.0, "start": 0.125}
    | {"step": 1.0, "min_step": 0.5},
    "weight": {"scale": "log2", "lower": 0.125, "upper": 8.0, "start": 1.0}
    | {"step": 1.0, "min_step": 0.5},
    "batch_size": {"scale": "pow2", "lower": 32, "upper": 1024, "start": 128},
    "projector": {"scale": "categorical", "values": ["none", "linear", "mlp"]}
    | {"start": "linear"},
}


def _distance2(t: np.ndarray, w: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    return (t - centre[0]) ** 2 + (w - centre[1]) ** 2


def ridge(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 80 - 8 * (t - w + 3) ** 2 - 0.5 * (t + w - 1) ** 2


def far(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.maximum(76 - 0.6 * _distance2(t, w, (-3, 0)), 80 - 3 * _distance2(t, w, (-0.5, -2.5)))


def corner(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 80 - 0.5 * (t + 4) ** 2 - 0.5 * (w - 1) ** 2


def plateau(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.maximum(72, 80 - 6 * _distance2(t, w, (-1, 2.5)))


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ridge": ridge,
    "far": far,
    "corner": corner,
    "plateau": plateau,
}


def _corner_depth(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """How far into the collapsing corner a point lies (0 outside it, in units)."""
    return np.clip(-4 - t, 0, None) * np.clip(w - 1, 0, None)


def synthetic_table(name: str) -> pd.DataFrame:
    """Rows (point, seed, epoch, ``score``) of the synthetic landscape ``name``."""
    from raycl.search.space import SearchSpace

    space = SearchSpace.from_dict(SPACE)
    values = [c.lattice() for c in space]
    points = np.array(list(itertools.product(*(range(len(v)) for v in values))))
    units = np.array(
        [[c.to_unit(v[i]) for c, v, i in zip(space, values, row, strict=True)] for row in points]
    )
    t, w, b, p = units.T
    final = SHAPES[name](t, w) - 0.5 * (b - 8) ** 2 - 3 * (p == 0) + 1 * (p == 2)
    final = np.maximum(final, FLOOR)
    rng = np.random.default_rng(list(SHAPES).index(name))
    sigma = np.full_like(final, SIGMA)
    collapse = np.zeros((len(final), SEEDS), dtype=bool)
    if name == "corner":
        depth = _corner_depth(t, w)
        sigma = SIGMA + 2.0 * (1 - np.exp(-depth))
        collapse = rng.random((len(final), SEEDS)) < (1 - np.exp(-2 * depth))[:, None]
    runs = final[:, None] + rng.normal(0, 1, (len(final), SEEDS)) * sigma[:, None]
    runs = np.where(collapse, 20 + rng.normal(0, 5, runs.shape), runs)
    epochs = np.arange(1, EPOCHS + 1)
    tau = 1 + 0.4 * (b - 5)
    rise = np.exp(-epochs[None, :] / tau[:, None])  # points × epochs
    curves = runs[:, :, None] - (runs[:, :, None] - 10) * rise[:, None, :]
    curves = curves + rng.normal(0, SIGMA / 2, curves.shape)
    curves[:, :, -1] = runs  # the last epoch is the run's final metric
    index = np.indices(curves.shape).reshape(3, -1)
    table = pd.DataFrame(
        {
            c.name: np.array(v, dtype=object)[points[index[0], k]]
            for k, (c, v) in enumerate(zip(space, values, strict=True))
        }
    )
    table["seed"] = index[1]
    table["epoch"] = epochs[index[2]]
    table[METRIC] = curves.reshape(-1)
    for c in space:
        if c.scale != "categorical":
            table[c.name] = table[c.name].astype(float if c.scale == "log2" else int)
    return table


def metadata(name: str) -> dict[str, Any]:
    return {
        "overrides": [],  # no raycl config: the searchers use the search defaults
        "space": SPACE,
        "metric": METRIC,
        "mode": "max",
        "epochs": EPOCHS,
        "seeds": SEEDS,
        "command": f"raycl bench synthetic {name}",
        "source": f"raycl.bench.synthetic.{name} (a known function with seed noise)",
        "date": str(date.today()),
    }


def main(args: argparse.Namespace) -> None:
    """Write the table in the landscape format."""
    from raycl.bench.landscape import write_table

    if args.shape not in SHAPES:
        raise ValueError(f"synthetic: shape must be one of {list(SHAPES)} (got {args.shape!r})")
    output = Path(args.output or f"/tmp/landscape-synthetic-{args.shape}.parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    table = synthetic_table(args.shape)
    write_table(table, output, metadata(args.shape))
    final = table[table["epoch"] == EPOCHS].groupby(list(SPACE))[METRIC].mean()
    print(
        f"wrote {output}: {len(final)} points × {SEEDS} seeds × {EPOCHS} epochs; "
        f"best mean {final.max():.2f}, median {final.median():.2f}"
    )
