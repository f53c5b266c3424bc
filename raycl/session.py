"""Where a training loop runs: a Ray Train worker, a single-process Ray Tune trial, or a
plain process without Ray.

The loop in :mod:`raycl.train` talks to a :class:`Session` only, so the same code trains on a
multi-node Ray Train worker group (DDP, ``ray.train.report``), inside a Tune trial in one
process (``ray.tune.report``), which is how cheap search trials run, and in one process with
no Ray installed (:class:`LocalSession`, used by ``raycl.bench.gpu``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from raycl.data import training_loader
from raycl.schema import DataConfig


def use_assigned_cpus() -> int:
    """Set torch's threads to the CPUs Ray gave this task or actor, and return that number.

    Ray starts a worker with ``OMP_NUM_THREADS`` = its CPUs unless the environment already set
    it (a user's ``export OMP_NUM_THREADS=1`` then leaves a four-CPU actor on one thread);
    in a driver, outside Ray, or with fractional CPUs, torch keeps its threads.
    """
    import ray

    context = ray.get_runtime_context() if ray.is_initialized() else None
    if context is None or context.worker.mode != ray.WORKER_MODE:  # a driver: no resources
        return torch.get_num_threads()
    cpus = int(context.get_assigned_resources().get("CPU", 0))
    if cpus >= 1:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


class Session(Protocol):
    """The services a training loop needs from whatever runs it."""

    rank: int
    world_size: int
    device: torch.device

    def get_checkpoint(self) -> Any: ...

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None
    ):
        """Report an epoch's metrics and the checkpoint written to ``checkpoint_dir`` (which
        exists only during the call)."""

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def training_batches(self, dataset: Dataset, data: DataConfig, seed: int) -> Iterable:
        """This worker's epoch of ``(views, labels)`` batches (``len`` = batches an epoch)."""
        ...


class RayTrainSession:
    """A Ray Train worker: DDP model, distributed sampler, ``ray.train.report``."""

    def __init__(self, verbose: bool = False) -> None:
        import ray.train
        import ray.train.torch

        self._train, self._torch = ray.train, ray.train.torch
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        use_assigned_cpus()  # a thread per CPU of cluster.cpus_per_worker
        if not verbose:
            _quiet_worker_logs()

    def get_checkpoint(self) -> Any:
        return self._train.get_checkpoint()

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None
    ):
        checkpoint = _ray_checkpoint(checkpoint_dir)
        self._train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return self._torch.prepare_model(model)

    def training_batches(self, dataset: Dataset, data: DataConfig, seed: int) -> Iterable:
        """A ``DistributedSampler``-sharded loader of ``dataset``, or with
        ``data.ingest=ray_data`` this worker's Ray Data shard of it."""
        if data.ingest == "ray_data":
            from raycl.data import DATASETS
            from raycl.data.ray_ingest import ShardBatches

            shard = self._train.get_dataset_shard("train")
            paired = DATASETS[data.name].paired
            size = data.batch_size_per_worker
            return ShardBatches(shard, size, len(dataset), self.world_size, paired)
        # The step moves inputs to the device itself; on a GPU the wrapper's copy stream
        # overlaps the copy with compute, on a CPU it would only prefetch a batch ahead
        # (a batch more than the epoch's steps read) and walk every batch's items.
        loader = training_loader(dataset, data, seed)
        return self._torch.prepare_data_loader(loader, move_to_device=self.device.type != "cpu")


class TuneSession:
    """A single-process Ray Tune trial: ``ray.tune.report`` and ``ray.tune.get_checkpoint``."""

    rank, world_size = 0, 1

    def __init__(self, use_gpu: bool = False) -> None:
        import ray.tune

        self._tune = ray.tune
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        use_assigned_cpus()  # a thread per CPU of the trial's resources

    def get_checkpoint(self) -> Any:
        return self._tune.get_checkpoint()

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None
    ):
        self._tune.report(metrics, checkpoint=_ray_checkpoint(checkpoint_dir))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def training_batches(self, dataset: Dataset, data: DataConfig, seed: int) -> Iterable:
        return training_loader(dataset, data, seed)


class LocalSession:
    """One process without Ray: rank 0 of 1 on ``device``; the model is moved there and the
    reported metrics are kept in :attr:`reports`. With ``run_dir`` every reported checkpoint
    is copied to ``run_dir/<name>`` (under a temporary name, then renamed: never half
    written) and a new session resumes from the newest one, as Ray Train would; without it
    checkpoints are dropped. ``on_report`` is called with each epoch's metrics."""

    rank, world_size = 0, 1

    def __init__(
        self,
        device: str | torch.device = "cpu",
        run_dir: str | Path | None = None,
        on_report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.reports: list[dict[str, Any]] = []
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.on_report = on_report

    def get_checkpoint(self) -> Any:
        """The newest checkpoint in ``run_dir`` (None without one)."""
        found = sorted(self.run_dir.glob("epoch-*[0-9]")) if self.run_dir else []
        return LocalCheckpoint(found[-1]) if found else None

    def report(
        self, metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None
    ):
        if self.run_dir is not None and checkpoint_dir is not None:
            final = self.run_dir / (name or f"checkpoint-{len(self.reports):06d}")
            staging = final.with_name(final.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint_dir, staging)
            staging.replace(final)
        self.reports.append(dict(metrics))
        if self.on_report is not None:
            self.on_report(dict(metrics))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def training_batches(self, dataset: Dataset, data: DataConfig, seed: int) -> Iterable:
        return training_loader(dataset, data, seed)


class LocalCheckpoint:
    """A checkpoint directory on this machine, with Ray's ``Checkpoint`` interface."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.filesystem = None  # this machine's

    @contextmanager
    def as_directory(self) -> Iterator[str]:
        yield self.path


def _quiet_worker_logs() -> None:
    """Drop two of Ray Train's console lines in this worker: the per-report INFO line (its
    logger is named after its file, so ``RunConfig(logging_config=...)``, which filters
    ``ray.train.*``, misses it) and the traceback it logs for an error in the training
    function (the driver shows that error as one line and writes the traceback to the run's
    log file)."""
    import logging

    from ray.train.v2._internal import util
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(util.__name__).setLevel(logging.CRITICAL)


def _ray_checkpoint(directory: str | None) -> Any:
    import ray.train

    return None if directory is None else ray.train.Checkpoint.from_directory(directory)
