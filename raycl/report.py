"""What the user sees at the end of a run: rich tables of results."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from raycl.runner import TrainOutcome
from raycl.search.tuner import SearchOutcome

SUMMARY_METRICS = (
    ("zero_shot_top1", "zero-shot top-1 (%)"),
    ("recall_i2t@1", "image→text R@1 (%)"),
    ("recall_t2i@1", "text→image R@1 (%)"),
    ("knn_top1", "kNN top-1 (%)"),
    ("linear_probe", "linear probe (%)"),
    ("effective_rank", "effective rank"),
    ("uniformity", "uniformity"),
    ("tolerance", "tolerance"),
)


def print_training_summary(outcome: TrainOutcome, cfg: Any) -> None:
    """The trained encoder beside the same encoder untrained, and where the run lives."""
    table = Table(title=f"raycl train: {cfg.loss['name']} on {cfg.data.name}, {cfg.epochs} epochs")
    table.add_column("metric")
    table.add_column("untrained", justify="right")
    table.add_column("trained", justify="right")
    rows = [*SUMMARY_METRICS]
    rows += [(k, k) for k in sorted(outcome.metrics) if k.startswith("recall@")]
    for key, label in rows:
        if key in outcome.metrics:
            before = outcome.initial.get(key)
            table.add_row(
                label, "" if before is None else f"{before:.2f}", f"{outcome.metrics[key]:.2f}"
            )
    console = Console()
    console.print(table)
    console.print(f"run: {outcome.path}\ncheckpoint: {outcome.checkpoint_path}")


def print_search_summary(outcome: SearchOutcome, cfg: Any) -> None:
    """The best configuration found and its metrics."""
    metric = cfg.search.metric
    table = Table(title=f"raycl tune ({cfg.search.method}): best of {len(outcome.results)} trials")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in sorted(outcome.best_config.items()):
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for key in (metric, "loss", "loss_pos", "loss_ent", "training_iteration", "trials"):
        if key in outcome.best_metrics:
            table.add_row(key, f"{outcome.best_metrics[key]:.4g}")
    console = Console()
    console.print(table)
    console.print(f"experiment: {outcome.path}")
