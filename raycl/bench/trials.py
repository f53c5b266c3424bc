"""``raycl bench trials``: what a Tune trial costs beyond its training, with and without
reusing actors.

Runs the same small random search (``search.max_concurrent_trials=1``, so trials do not
share the cores) twice — ``search.reuse_actors=false`` then ``true`` — and reports per trial
its wall time (the experiment's wall time over its trials, Tune's scheduling, actor start-up,
data set and model set-up and the untrained model's evaluation included) against its
training time (the epochs' training steps plus their per-epoch evaluation, as the trial
reports them). The overhead is the difference; the target is at most 20 % of the trial.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date

from raycl.bench.measure import cpu_model, publish

TARGET_OVERHEAD = 0.20
DEFAULT_OVERRIDES = ["data=mnist1d", "model=conv1d", "optim.lr=0.02", "eval.knn_k=20"]


def run(args: argparse.Namespace) -> list[dict]:
    """One search per reuse setting; per-trial wall, training and overhead seconds."""
    from raycl.cluster import connect_ray
    from raycl.search.tuner import load_tune_config, run_search

    connect_ray()
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for reuse in (False, True):
            cfg = load_tune_config(
                [
                    *DEFAULT_OVERRIDES,
                    "search=random",
                    f"search.budget_trials={args.trials}",
                    "search.max_concurrent_trials=1",
                    f"search.reuse_actors={str(reuse).lower()}",
                    f"epochs={args.epochs}",
                    f"storage_path={storage}",
                    f"name=trials-reuse-{reuse}",
                    *args.overrides,
                ]
            )
            started = time.perf_counter()
            outcome = run_search(cfg)
            wall = time.perf_counter() - started
            training = sum(
                float((frame["train_seconds"] + frame["eval_seconds"]).sum())
                for frame in (r.metrics_dataframe for r in outcome.results)
            )
            trials = len(outcome.results)
            rows.append(
                {
                    "reuse_actors": reuse,
                    "trials": trials,
                    "wall": wall / trials,
                    "training": training / trials,
                }
            )
            print(f"reuse_actors={reuse}: {wall / trials:.1f} s a trial", flush=True)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: per-trial wall and training seconds, overhead, and the verdict."""
    lines = [
        f"Date {date.today()}; machine: {cpu_model()}, {os.cpu_count()} cores; random search, "
        f"{args.trials} trials of {args.epochs} epochs, one at a time; overrides: "
        f"{' '.join([*DEFAULT_OVERRIDES, *args.overrides])}. Target: overhead ≤ "
        f"{TARGET_OVERHEAD:.0%} of a trial's wall time.",
        "",
        "| reuse_actors | trials | wall s / trial | training s / trial | overhead s | "
        "overhead share | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        overhead = row["wall"] - row["training"]
        share = overhead / row["wall"]
        verdict = "met" if share <= TARGET_OVERHEAD else "not met"
        lines.append(
            f"| {row['reuse_actors']} | {row['trials']} | {row['wall']:.1f} "
            f"| {row['training']:.1f} | {overhead:.1f} | {share:.0%} | {verdict} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """Run, print the table, optionally save it."""
    publish("trials", table(run(args), args), args.output)
