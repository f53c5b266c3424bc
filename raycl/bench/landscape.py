"""``raycl bench landscape``: every lattice point of a search space, trained with several seeds.

A *tabular benchmark* (Klein & Hutter 2019; NAS-Bench, HPOBench): the metric of every
configuration a search could propose is computed once, with ``--seeds`` seeds and every
epoch's metrics kept, so that searches can then be replayed hundreds of times by looking
results up (:mod:`raycl.bench.replay`) instead of training. The configurations are those of
``raycl tune`` with the same overrides: the space's lattice (:meth:`SearchSpace.lattice`),
each trained by the real training loop (:func:`raycl.train.run_training`). The work runs on
one long-lived Ray actor per CPU (no per-run start-up), each finished run is appended to a
JSON-lines file at once (``--resume`` skips what is there), and the Parquet table is
rewritten atomically as runs finish. Jobs go seed by seed, so a partial table covers the whole
lattice with its first seeds.

The table has one row per (configuration, seed, epoch): the searched keys as columns, then
``seed``, ``epoch`` (1-based: Tune's ``training_iteration``), the reported metrics and
``run_seconds`` (the run's wall time in its actor) and ``code``, the commit that trained it
(:func:`raycl.bench.measure.code_version`): a table built in pieces over sessions says which
code built which runs, since a change to the training code moves a (point, seed)'s numbers.
Its schema metadata holds the overrides, the space and how it was built.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from raycl.bench.measure import code_version, cpu_model

METADATA_KEY = b"raycl.landscape"


def tune_config(overrides: list[str]):
    """The ``raycl tune`` config the landscape tabulates (same defaults and space)."""
    from raycl.search.tuner import load_tune_config

    return load_tune_config(overrides)


def jobs(cfg, seeds: int) -> list[tuple[dict[str, Any], int]]:
    """(lattice point, seed) pairs, seed-major: each seed covers the whole lattice first."""
    from raycl.search.space import space_from_config

    space = space_from_config(cfg)
    return [(point, cfg.seed + s) for s in range(seeds) for point in space.lattice()]


def _train_run(base: Any, point: dict[str, Any], seed: int) -> dict[str, Any]:
    """One training run in this process: its per-epoch reports and wall time."""
    import torch

    from raycl.config import trial_config
    from raycl.session import LocalSession
    from raycl.train import run_training

    torch.set_num_threads(1)
    config = trial_config(base, {**point, "seed": seed})
    session = LocalSession()
    started = time.perf_counter()
    run_training(config, session)
    return {
        "point": point,
        "seed": seed,
        "reports": session.reports,
        "run_seconds": time.perf_counter() - started,
    }


def rows_of(run: dict[str, Any], code: str) -> list[dict[str, Any]]:
    """The table rows of one finished run (one per epoch), trained by ``code``."""
    return [
        {
            **run["point"],
            "seed": run["seed"],
            **{k: v for k, v in report.items() if isinstance(v, int | float)},
            "epoch": int(report["epoch"]) + 1,
            "run_seconds": run["run_seconds"],
            "code": code,
        }
        for report in run["reports"]
    ]


def read_rows(output: Path) -> list[dict[str, Any]]:
    """Rows of the runs finished so far (the JSON lines beside ``output``)."""
    return rows_in(_partial(output))


def rows_in(runs: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file of runs (one run's rows a line); none if it is absent."""
    if not runs.exists():
        return []
    return [row for line in runs.read_text().splitlines() for row in json.loads(line)]


def write_table(
    rows: list[dict[str, Any]] | pd.DataFrame, output: Path, metadata: dict[str, Any]
) -> None:
    """The Parquet table, written under a temporary name and renamed (never half-written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata).encode()}
    )
    tmp = output.with_name(output.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(output)


def runs_by_code(table: pd.DataFrame, metadata: dict[str, Any]) -> str:
    """How many runs of ``table`` each code version trained, e.g. ``"3 by abc, 1 unrecorded"``."""
    if table.empty:
        return "none"
    codes = table.get("code", pd.Series(index=table.index, dtype=object)).fillna("unrecorded")
    runs = codes.groupby([table[name] for name in [*metadata["space"], "seed"]]).first()
    return ", ".join(
        f"{n} {'unrecorded' if code == 'unrecorded' else f'by {code}'}"
        for code, n in runs.value_counts().items()
    )


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A landscape table and its metadata (overrides, space, metric, ...)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = json.loads((table.schema.metadata or {})[METADATA_KEY])
    return table.to_pandas(), metadata


def _partial(output: Path) -> Path:
    return output.with_name(output.name + ".partial.jsonl")


def _metadata(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from raycl.search.space import space_config

    return {
        "overrides": args.overrides,
        "space": space_config(cfg),
        "metric": cfg.search.metric,
        "mode": cfg.search.mode,
        "epochs": cfg.epochs,
        "seeds": args.seeds,
        "command": "raycl bench landscape " + " ".join(_argv(args)),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "date": str(date.today()),
    }


def run(args: argparse.Namespace) -> Path:
    """Train the missing (point, seed) runs on Ray actors; return the table's path."""
    from raycl.config import training_config

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cfg = tune_config(args.overrides)
    metadata = _metadata(args, cfg)
    if not args.resume:
        _partial(output).unlink(missing_ok=True)
    rows = read_rows(output)
    done = {(_point_id(_point_of(row, metadata)), row["seed"]) for row in rows}
    todo = [(p, s) for p, s in jobs(cfg, args.seeds) if (_point_id(p), s) not in done]
    code = code_version()
    print(
        f"landscape: {len(done)} runs done ({runs_by_code(pd.DataFrame(rows), metadata)}), "
        f"{len(todo)} to train on {args.workers} actors with code {code}"
    )

    def flush(finished: int) -> None:
        if finished % args.flush_every == 0:
            write_table(rows, output, metadata)

    rows += train_runs(training_config(cfg), todo, _partial(output), args, code, flush)
    write_table(rows, output, metadata)
    return output


def train_runs(
    base: Any,
    todo: list[tuple[dict[str, Any], int]],
    partial: Path,
    args: argparse.Namespace,
    code: str,
    after_each: Any = None,
) -> list[dict[str, Any]]:
    """Train ``todo`` on ``args.workers`` Ray actors; each finished run's rows are appended to
    ``partial`` at once (JSON lines) and returned together."""
    import ray
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from raycl.cluster import connect_ray

    if not todo:
        return []
    connect_ray(args.address)
    trainer = ray.remote(num_cpus=1)(_Trainer)
    pool = ray.util.ActorPool([trainer.remote() for _ in range(args.workers)])
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    rows: list[dict[str, Any]] = []
    with Progress(*columns) as progress, partial.open("a") as file:
        task = progress.add_task("landscape", total=len(todo))
        runs = pool.map_unordered(lambda a, job: a.train.remote(base, *job), todo)
        for finished, result in enumerate(runs, 1):
            new = rows_of(result, code)
            file.write(json.dumps(new) + "\n")
            file.flush()
            rows += new
            progress.advance(task)
            if after_each is not None:
                after_each(finished)
    ray.shutdown()
    return rows


def recheck(args: argparse.Namespace) -> bool:
    """Retrain ``args.recheck`` seed-0 runs of the table, drawn at random (seeded), with
    today's code and compare each final metric with the table's: seed 0 is kept if every
    rerun lies within 2σ of its row (σ: the median point's seed SD, from the points with two
    seeds or more), else it is to be rebuilt. Reruns go to ``<output>.recheck.jsonl``
    (resumable) and the comparison is printed; whether seed 0 is kept."""
    import numpy as np

    from raycl.bench.replay import Landscape
    from raycl.config import training_config

    output = Path(args.output)
    cfg = tune_config(args.overrides)
    metadata = _metadata(args, cfg)
    rows = pd.DataFrame(read_rows(output))
    landscape = Landscape.from_table(rows, metadata)
    metric = cfg.search.metric

    def finals(runs: list[dict[str, Any]]) -> dict[str, float]:
        """Each run's final metric by its point's id."""
        return {
            _point_id(_point_of(r, metadata)): r[metric] for r in runs if r["epoch"] == cfg.epochs
        }

    first = [r for r in rows.to_dict("records") if r["seed"] == cfg.seed]
    table = finals(first)
    points = [_point_of(r, metadata) for r in first if r["epoch"] == cfg.epochs]
    drawn = np.random.default_rng(args.recheck_seed).choice(
        len(points), size=args.recheck, replace=False
    )
    chosen = [points[i] for i in sorted(drawn)]
    again_path = output.with_name(output.name + ".recheck.jsonl")
    again = rows_in(again_path)
    done = {_point_id(_point_of(r, metadata)) for r in again}
    todo = [(p, cfg.seed) for p in chosen if _point_id(p) not in done]
    code = code_version()
    print(f"recheck: {len(chosen) - len(todo)} of {len(chosen)} reruns done; code {code}")
    again += train_runs(training_config(cfg), todo, again_path, args, code)
    final = finals(again)
    sigma = landscape.sigma  # the median point's seed SD
    print(
        f"σ = {sigma:.2f} (median seed SD over {len(landscape.seed_sds)} points); 2σ = "
        f"{2 * sigma:.2f}\n"
    )
    print(f"| point | table (seed {cfg.seed}) | rerun | Δ | within 2σ |\n|---|---|---|---|---|")
    within = []
    for point in chosen:
        old, new = table[_point_id(point)], final[_point_id(point)]
        within.append(abs(new - old) <= 2 * sigma)
        shown = ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in point.items())
        print(
            f"| {shown} | {old:.2f} | {new:.2f} | {new - old:+.2f} | "
            f"{'yes' if within[-1] else 'NO'} |"
        )
    keep = all(within)
    print(
        f"\n{sum(within)} of {len(within)} within 2σ: "
        + ("keep seed 0" if keep else "rebuild seed 0 at one commit")
    )
    return keep


class _Trainer:
    """A Ray actor that trains one landscape run after another in its own process."""

    def train(self, base: Any, point: dict[str, Any], seed: int) -> dict[str, Any]:
        return _train_run(base, point, seed)


def _point_of(row: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in metadata["space"]}


def _point_id(point: dict[str, Any]) -> str:
    """A point as a hashable, order-free id (its sorted JSON)."""
    return json.dumps(point, sort_keys=True)


def _argv(args: argparse.Namespace) -> Iterable[str]:
    yield f"--seeds {args.seeds} --workers {args.workers} --output {args.output}"
    yield from args.overrides


def main(args: argparse.Namespace) -> None:
    """Build (or complete) the table, or recheck its first seed at today's code."""
    if args.recheck:
        recheck(args)
        return
    print(f"wrote {run(args)}")
