"""The Ray driver: joins or starts a cluster and runs training on Ray Train.

:func:`train` checks what can be checked before Ray starts (:func:`check_inputs`: the data
set opens, holds a global batch and its items fit the model; then :mod:`raycl.resume`: the
run's lock, a rerun's config matches the run it resumes, bad checkpoints set aside), builds a
``TorchTrainer`` over :func:`raycl.train.train_loop_per_worker` from the typed config, shows
one progress bar with ETA and one line per epoch (fed from the Train controller through a Ray
queue), and writes ``metrics.parquet``/``.csv`` into the run directory. Rerunning with the same
``storage_path`` and ``name`` resumes from the latest good checkpoint; with
``cluster.max_failures`` a killed worker is replaced and training continues from it. An error
from a worker reaches the user as one line (:mod:`raycl.errors`), its traceback in the run's
``raycl-error.log``."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raycl.checkpoint import HISTORY_FILE
from raycl.cluster import connect_ray
from raycl.config import storage_path
from raycl.errors import (
    ConfigError,
    DataError,
    RayclError,
    TrainingDiverged,
    TrainingFailed,
    find_raycl_error,
    first_line,
    root_cause,
    run_log_dir,
    write_traceback,
)
from raycl.progress import progress_bar
from raycl.resume import (
    RunLock,
    check_resume,
    read_text,
    record_config,
    repair_checkpoints,
    resume_line,
    resume_point,
    run_directory,
)
from raycl.schema import TrainConfig
from raycl.train import train_loop_per_worker

ERROR_LOG = "raycl-error.log"


@dataclass
class TrainOutcome:
    """What a finished run leaves: its final metrics, per-epoch history and where it lives."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    initial: dict[str, float]
    path: str
    checkpoint_path: str | None


def epoch_line(metrics: dict[str, float], epochs: int) -> str:
    """One console line of progress for an epoch's report."""
    knn = f"  kNN {metrics['knn_top1']:.2f}%" if "knn_top1" in metrics else ""
    if "zero_shot_top1" in metrics:  # a two-tower run
        knn = f"  zero-shot {metrics['zero_shot_top1']:.2f}%{knn}"
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
    datasets = None
    if cfg.data.ingest == "ray_data":
        from raycl.data.ray_ingest import contrastive_dataset

        datasets = {"train": contrastive_dataset(cfg.data, cfg.model.context_length)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg},
        datasets=datasets,
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker={"CPU": cluster.cpus_per_worker} if cluster.num_workers else None,
            placement_strategy=cluster.placement_strategy,
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


@contextmanager
def _epoch_progress(cfg: TrainConfig) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar with ETA over the run's epochs; yields what shows one epoch's report."""
    with progress_bar(cfg.name, "epochs") as progress:
        task = progress.add_task("train", total=cfg.epochs)

        def show(metrics: dict[str, Any]) -> None:
            progress.console.print(epoch_line(metrics, cfg.epochs))
            progress.update(task, completed=metrics["epoch"] + 1)

        yield show


def _fit_workers(cfg: TrainConfig, trainer_callbacks: list) -> tuple[str, str | None]:
    """``trainer.fit()`` in a thread while this one shows the epochs the Train controller
    queues; the run's path and its latest checkpoint's."""
    import ray
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node: a worker node's failure must not take the progress queue with it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    reports = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    trainer = trainer_for(cfg, [*trainer_callbacks, _epoch_reports(reports)])
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the driver's thread below
            outcome["error"] = err

    worker = threading.Thread(target=fit, daemon=True)
    with _epoch_progress(cfg) as show:
        worker.start()
        while worker.is_alive() or not reports.empty():
            try:
                show(reports.get(timeout=0.5))
            except Empty:
                continue
        worker.join()
    reports.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    return result.path, None if result.checkpoint is None else result.checkpoint.path


def _fit_in_process(cfg: TrainConfig) -> tuple[str, str | None]:
    """``cluster.num_workers=0``: the loop in this process, no Ray; checkpoints are kept in
    the run directory and a rerun resumes from them, as with workers."""
    import torch

    from raycl.session import LocalSession
    from raycl.train import run_training

    run_dir = run_directory(cfg)
    if "://" in run_dir:
        raise ConfigError(
            "cluster.num_workers=0 trains in this process: storage_path must be a local path"
        )
    device = "cuda" if cfg.cluster.use_gpu and torch.cuda.is_available() else "cpu"
    with _epoch_progress(cfg) as show:
        session = LocalSession(device, run_dir=run_dir, on_report=show)
        run_training(cfg, session)
    latest = session.get_checkpoint()
    return run_dir, None if latest is None else latest.path


def check_inputs(cfg: TrainConfig) -> None:
    """What can fail before Ray starts, as one line each (also what ``--cfg`` checks): the
    data set opens and holds at least one global batch, and one of its items passes through
    the model."""
    import torch

    from raycl.data import build_datasets
    from raycl.losses import build_loss
    from raycl.models import build_model, models_for

    try:
        bundle = build_datasets(cfg.data, cfg.seed)
    except RayclError:
        raise
    except (OSError, KeyError, ValueError) as err:  # missing files, unreadable Parquet, ...
        raise DataError(f"data ({cfg.data.name}): {first_line(err)}") from None
    workers = max(1, cfg.cluster.num_workers)
    needed = workers * cfg.data.batch_size_per_worker
    size = len(bundle.train_contrastive)
    if size < needed:
        raise DataError(
            f"data.batch_size_per_worker={cfg.data.batch_size_per_worker} × {workers} "
            f"worker(s) = {needed} items exceeds the training set of {cfg.data.name!r} "
            f"({size} items)"
        )
    item = bundle.test_eval[0][0]
    head = build_loss(**cfg.loss).logit_head()
    model = build_model(cfg.model, bundle.in_channels, head, item.shape[-1]).eval()
    try:
        with torch.no_grad():
            model(item.unsqueeze(0))
    except (RuntimeError, IndexError, ValueError) as err:
        fitting = models_for(item.dim(), bundle.in_channels)
        raise ConfigError(
            f"model={cfg.model.name} does not take the items of data={cfg.data.name} (shape "
            f"{list(item.shape)}: {first_line(err)}); choose "
            + " or ".join(f"model={name}" for name in fitting)
        ) from None


def train(cfg: TrainConfig, callbacks: list | None = None) -> TrainOutcome:
    """Run (or resume) training on Ray Train; write ``metrics.parquet``/``.csv`` beside it.

    Holds the run's lock throughout; checks inputs, the resumed config and the checkpoints
    before Ray starts (:mod:`raycl.resume`)."""
    with RunLock(cfg):
        check_inputs(cfg)
        check_resume(cfg)
        repair_checkpoints(cfg)
        resumed = resume_point(cfg)
        if resumed is not None:
            done = len(_saved_history(str(resumed))["history"])
            print(resume_line(cfg, resumed, done), flush=True)
            if done >= cfg.epochs:
                return _outcome(run_directory(cfg), str(resumed))
        return _train(cfg, callbacks or [])


def _train(cfg: TrainConfig, callbacks: list) -> TrainOutcome:
    from raycl.tracking import train_callbacks

    in_process = cfg.cluster.num_workers == 0
    if not in_process:
        connect_ray(cfg.cluster.address, verbose=cfg.verbose)
    record_config(cfg)
    try:
        if in_process:
            path, checkpoint = _fit_in_process(cfg)
        else:
            path, checkpoint = _fit_workers(cfg, [*train_callbacks(cfg), *callbacks])
    except TrainingDiverged as err:  # in this process: the same words as from a worker
        raise TrainingDiverged(f"{err}; the last good checkpoint is kept") from None
    except RayclError:
        raise
    except Exception as err:
        raise explained(err, run_directory(cfg)) from None
    if checkpoint is None:
        raise TrainingFailed(f"training produced no checkpoint under {path}")
    return _outcome(path, checkpoint)


def _saved_history(checkpoint: str) -> dict[str, Any]:
    return json.loads(read_text(f"{checkpoint}/{HISTORY_FILE}"))


def _outcome(path: str, checkpoint: str) -> TrainOutcome:
    """The run at ``path`` as its ``checkpoint`` left it; its metrics tables written."""
    saved = _saved_history(checkpoint)
    outcome = TrainOutcome(
        metrics=saved["history"][-1],
        history=saved["history"],
        initial=saved["initial"],
        path=path,
        checkpoint_path=checkpoint,
    )
    write_history(outcome)
    return outcome


def explained(err: BaseException, run_dir: str) -> RayclError:
    """The one-line error for a failure from Ray: raycl's own error found inside Ray's
    wrappers, or the root cause's first line; the full traceback goes to the run's log (in
    the run directory, or this user's folder for the run when that is remote or read-only)."""
    log = write_traceback(err, run_log_dir(run_dir) / ERROR_LOG)
    found = find_raycl_error(err)
    if found is not None:
        kept = "; the last good checkpoint is kept" if found.exit_code == 1 else ""
        return type(found)(f"{found}{kept} (traceback: {log})")
    return TrainingFailed(f"training failed: {first_line(root_cause(err))} (traceback: {log})")


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
