"""The Ray driver: joins or starts a cluster and runs training on Ray Train.

:func:`train` builds a ``TorchTrainer`` over :func:`raycl.train.train_loop_per_worker` from the
typed config, shows one progress bar with ETA and one line per epoch (fed from the Train
controller through a Ray queue), and writes ``metrics.parquet``/``.csv`` into the run
directory. Rerunning with the same ``storage_path`` and ``name`` resumes from the latest
checkpoint; with ``cluster.max_failures`` a killed worker is replaced and training continues
from it. :func:`connect_ray` is the one place a driver (train, tune, the benches) starts Ray.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raycl.config import TrainConfig
from raycl.train import HISTORY_FILE, TrainingDiverged, train_loop_per_worker


@dataclass
class TrainOutcome:
    """What a finished run leaves: its final metrics, per-epoch history and where it lives."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    initial: dict[str, float]
    path: str
    checkpoint_path: str | None


def connect_ray(address: str | None = None, *, verbose: bool = False, **options: Any) -> None:
    """Join ``address`` (``auto`` or a URI), or start a fresh local Ray when it is None.

    Never ``ray.init()`` without an address: that joins whatever cluster ``ray start`` last
    recorded on the machine, even a dead one. Ray's own INFO lines (a line per report and per
    checkpoint) are shown only with ``verbose``; warnings and errors always are.
    """
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address or "local",
        logging_config=ray.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        **({} if verbose else {"include_dashboard": False}),
        **options,
    )


def storage_path(cfg: TrainConfig) -> str:
    """``cfg.storage_path`` made absolute (URIs such as ``s3://`` are kept)."""
    path = cfg.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def epoch_line(metrics: dict[str, float], epochs: int) -> str:
    """One console line of progress for an epoch's report."""
    knn = f"  kNN {metrics['knn_top1']:.2f}%" if "knn_top1" in metrics else ""
    return (
        f"epoch {metrics['epoch'] + 1:>3}/{epochs}  loss {metrics['loss']:.4f} "
        f"(pos {metrics['loss_pos']:.4f}, ent {metrics['loss_ent']:.4f}){knn}  "
        f"lr {metrics['lr']:.2e}"
    )


def trainer_for(cfg: TrainConfig, callbacks: list | None = None):
    """The ``TorchTrainer`` for a config, with extra Ray Train ``callbacks``."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    cluster = cfg.cluster
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg},
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker={"CPU": cluster.cpus_per_worker} if cluster.num_workers else None,
        ),
        run_config=RunConfig(
            name=cfg.name,
            callbacks=list(callbacks or []),
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoints_to_keep,
                checkpoint_score_attribute=cfg.checkpoint_metric,
                checkpoint_score_order=cfg.checkpoint_mode,
            ),
            # Ray Train's own lines (a report, a checkpoint, the worker group) only on request
            logging_config=LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
        ),
    )


def _epoch_reports(queue: Any):
    """A Ray Train callback that puts every epoch's metrics into ``queue`` (a Ray queue the
    driver reads; the callback runs in the Train controller, another process)."""
    from ray.train import UserCallback

    class EpochReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            queue.put(dict(metrics[0]))

    return EpochReports()


def _fit_with_progress(cfg: TrainConfig, trainer_callbacks: list):
    """``trainer.fit()`` in a thread, while this one draws the progress bar and epoch lines."""
    from ray.util.queue import Empty, Queue
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    reports = Queue()
    trainer = trainer_for(cfg, [*trainer_callbacks, _epoch_reports(reports)])
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the driver's thread below
            outcome["error"] = err

    worker = threading.Thread(target=fit, daemon=True)
    columns = (
        TextColumn(f"[bold]{cfg.name}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=cfg.epochs)
        worker.start()
        while worker.is_alive() or not reports.empty():
            try:
                metrics = reports.get(timeout=0.5)
            except Empty:
                continue
            progress.console.print(epoch_line(metrics, cfg.epochs))
            progress.update(task, completed=metrics["epoch"] + 1)
        worker.join()
    reports.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def train(cfg: TrainConfig, callbacks: list | None = None) -> TrainOutcome:
    """Run (or resume) training on Ray Train; write ``metrics.parquet``/``.csv`` beside it."""
    from ray.train import TrainingFailedError

    from raycl.tracking import train_callbacks

    connect_ray(cfg.cluster.address, verbose=cfg.verbose)
    try:
        result = _fit_with_progress(cfg, [*train_callbacks(cfg), *(callbacks or [])])
    except TrainingFailedError as err:
        diverged = re.search(r"loss became non-finite at epoch \d+, step \d+", str(err))
        if diverged:
            raise TrainingDiverged(
                f"{diverged.group(0)}; the last good checkpoint is kept"
            ) from None
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint under {result.path}")
    with result.checkpoint.as_directory() as directory:
        saved = json.loads((Path(directory) / HISTORY_FILE).read_text())
    outcome = TrainOutcome(
        metrics=saved["history"][-1],
        history=saved["history"],
        initial=saved["initial"],
        path=result.path,
        checkpoint_path=result.checkpoint.path,
    )
    write_history(outcome)
    return outcome


def write_history(outcome: TrainOutcome) -> None:
    """Per-epoch metrics as ``metrics.parquet`` and ``metrics.csv`` in the run directory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if "://" in outcome.path:
        return
    columns = sorted({key for row in outcome.history for key in row})
    table = pa.table({c: [row.get(c, math.nan) for row in outcome.history] for c in columns})
    pq.write_table(table, Path(outcome.path) / "metrics.parquet")
    pacsv.write_csv(table, Path(outcome.path) / "metrics.csv")
