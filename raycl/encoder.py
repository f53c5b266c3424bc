"""Use what was trained: a run's encoder with its input transform.

:func:`load_encoder` takes a run directory (``storage_path/name``) or one checkpoint directory
(``.../epoch-00029``) and returns ``(encoder, transform, info)``: the backbone without its
projection head (``with_head=True``: the whole model, ``(features, embeddings)`` out) in
eval mode, the run's evaluation transform for raw items (no augmentation), and an
:class:`EncoderInfo` (config, epoch, metrics, the checkpoint it came from, the input shape).
From a run directory it takes the best checkpoint by the run's ``checkpoint_metric`` and
``checkpoint_mode`` (the latest when no checkpoint recorded the metric); every checkpoint is
verified against its checksums first, as a resumed run does (:mod:`raycl.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raycl.checkpoint import (
    choose_checkpoint,
    last_metrics,
    load_state,
    recorded_config,
    run_record,
)
from raycl.errors import CheckpointError, first_line
from raycl.schema import TrainConfig


@dataclass
class EncoderInfo:
    """What an encoder is: the run's config, where and when it was saved, what it scored."""

    config: TrainConfig
    checkpoint: str  # the checkpoint directory it was loaded from
    epoch: int
    metrics: dict[str, float]  # the checkpoint epoch's reported metrics
    input_shape: list[int]  # one item after the transform, e.g. [3, 32, 32]
    in_channels: int
    num_classes: int


def load_encoder(
    path: str | Path, checkpoint: str | Path | None = None, with_head: bool = False
) -> tuple[nn.Module, Callable[[Any], torch.Tensor], EncoderInfo]:
    """``(encoder, transform, info)`` of a run directory or a checkpoint directory.

    A two-tower run's encoder is its whole :class:`~raycl.towers.TwoTowerModel`, with or
    without ``with_head``: ``encoder(images)`` gives the image tower's ``(features,
    embeddings)`` and ``encoder.embed_text(texts)`` the text tower's embeddings of strings.
    """
    from raycl.data import evaluation_transform
    from raycl.losses import build_loss
    from raycl.models import TWO_TOWER, build_model

    chosen = choose_checkpoint(Path(path), checkpoint)
    record = run_record(chosen)
    config = recorded_config(chosen)
    two_tower = config.model.name == TWO_TOWER
    head = build_loss(**config.loss).logit_head()
    model = build_model(config.model, record["in_channels"], head, record["input_shape"][-1])
    state = load_state(chosen)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{chosen}: its weights do not fit model {config.model.name!r} "
            f"({first_line(err).split(':', 2)[-1].strip()})"
        ) from None
    model.eval()
    info = EncoderInfo(
        config=config,
        checkpoint=str(chosen),
        epoch=int(state["epoch"]),
        metrics=last_metrics(chosen),
        input_shape=record["input_shape"],
        in_channels=record["in_channels"],
        num_classes=record["num_classes"],
    )
    encoder = model if with_head or two_tower else model.encoder
    return encoder, evaluation_transform(config.data), info
