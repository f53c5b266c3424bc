"""Where a training loop runs: a Ray Train worker or a single-process Ray Tune trial.

The loop in :mod:`raycl.train` talks to a :class:`Session` only, so the same code trains on a
multi-node Ray Train worker group (DDP, ``ray.train.report``) and inside a Tune trial in one
process (``ray.tune.report``), which is how cheap search trials run.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader


class Session(Protocol):
    """The services a training loop needs from whatever runs it."""

    rank: int
    world_size: int
    device: torch.device

    def get_checkpoint(self) -> Any: ...

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, name: str | None = None): ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def prepare_data_loader(self, loader: DataLoader) -> DataLoader: ...


class RayTrainSession:
    """A Ray Train worker: DDP model, distributed sampler, ``ray.train.report``."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self._train, self._torch = ray.train, ray.train.torch
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def get_checkpoint(self) -> Any:
        return self._train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, name: str | None = None):
        self._train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return self._torch.prepare_model(model)

    def prepare_data_loader(self, loader: DataLoader) -> DataLoader:
        return self._torch.prepare_data_loader(loader)


class TuneSession:
    """A single-process Ray Tune trial: ``ray.tune.report`` and ``ray.tune.get_checkpoint``."""

    rank, world_size = 0, 1

    def __init__(self, use_gpu: bool = False) -> None:
        import ray.tune

        self._tune = ray.tune
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def get_checkpoint(self) -> Any:
        return self._tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, name: str | None = None):
        self._tune.report(metrics, checkpoint=checkpoint)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def prepare_data_loader(self, loader: DataLoader) -> DataLoader:
        return loader
