"""``raycl bench train``: training throughput for 1, 2, … workers at equal per-worker batch.

Every worker count trains the same config in the same run (a fresh Ray Train run each) on a
synthetic data set large enough for ``--steps`` steps per epoch at the largest worker count
(``data.*`` overrides replace it); throughput is items (each with V views) per second over
the training steps of the last epoch, evaluation excluded, and is reported against the first
worker count with the steps each row really ran.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import date

from raycl.bench.measure import cpu_model, publish
from raycl.config import load_config


def run(args: argparse.Namespace) -> list[dict]:
    """One short training per worker count; its last epoch's throughput."""
    import ray

    from raycl.cluster import connect_ray
    from raycl.runner import train

    connect_ray()
    rows = []
    batch = load_config(args.overrides).data.batch_size_per_worker
    items = args.steps * max(args.workers) * batch  # enough for --steps at every worker count
    with tempfile.TemporaryDirectory() as storage:
        for workers in args.workers:
            cfg = load_config(
                [
                    "data=synthetic",
                    f"data.num_items={items}",
                    f"cluster.num_workers={workers}",
                    f"epochs={args.epochs}",
                    f"max_steps_per_epoch={args.steps}",
                    "eval.linear_probe=false",
                    f"storage_path={storage}",
                    f"name=bench-{workers}",
                    *args.overrides,
                ]
            )
            last = train(cfg).history[-1]
            rows.append(
                {
                    "workers": workers,
                    "global_batch": last["global_batch"],
                    "steps": last["steps"],
                    "samples_per_s": last["samples_per_s"],
                }
            )
            print(f"{workers} worker(s): {last['samples_per_s']:.0f} items/s", flush=True)
    ray.shutdown()
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown table with speed-ups against the first row."""
    base = rows[0]["samples_per_s"]
    lines = [
        f"Date {date.today()}; machine: {cpu_model()}, {os.cpu_count()} cores; "
        f"up to {args.steps} steps per epoch, throughput of epoch {args.epochs}; data=synthetic "
        f"(1×8×8 items); overrides: {args.overrides or 'none (small_cnn, infonce, CPU)'}.",
        "",
        "| workers | global batch (items) | steps measured | items/s | speed-up vs 1st row "
        "| efficiency |",
        "|---|---|---|---|---|---|",
    ]
    first = rows[0]["workers"]
    for row in rows:
        speedup = row["samples_per_s"] / base
        lines.append(
            f"| {row['workers']} | {row['global_batch']} | {row['steps']} "
            f"| {row['samples_per_s']:.0f} "
            f"| {speedup:.2f}× | {speedup * first / row['workers']:.0%} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """Run, print the table, optionally save it."""
    publish("train", table(run(args), args), args.output)
