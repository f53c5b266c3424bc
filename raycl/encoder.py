"""Use what was trained: a run's encoder with its input transform.

:func:`load_encoder` takes a run directory (``storage_path/name``) or one checkpoint directory
(``.../epoch-00029``) and returns ``(encoder, transform, info)``: the backbone without its
projection head (``with_head=True``: the whole model, ``(features, embeddings)`` out) in
eval mode, the run's evaluation transform for raw items (no augmentation), and an
:class:`EncoderInfo` (config, epoch, metrics, the checkpoint it came from, the input shape).
From a run directory it takes the best checkpoint by the run's ``checkpoint_metric`` and
``checkpoint_mode`` (the latest when no checkpoint recorded the metric); every checkpoint is
verified against its checksums first, as a resumed run does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raycl.errors import CheckpointError, first_line
from raycl.schema import TrainConfig
from raycl.train import HISTORY_FILE, RUN_FILE, STATE_FILE, verify_checkpoint


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


def is_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / RUN_FILE).is_file()


def is_run(path: Path) -> bool:
    """Whether ``path`` is a training run's directory (it holds checkpoints)."""
    return path.is_dir() and bool(run_checkpoints(path))


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (set-aside ``*.corrupt`` ones left out)."""
    return sorted(p for p in run_dir.glob("epoch-*") if p.is_dir() and p.name[6:].isdigit())


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best good checkpoint by its checkpoint metric and mode (ties and runs that
    never recorded the metric: the latest)."""
    good = [p for p in run_checkpoints(run_dir) if verify_checkpoint(p) is None]
    if not good:
        raise CheckpointError(f"{run_dir}: no checkpoint that verifies (is it a raycl run?)")
    config = recorded_config(good[-1])
    sign = 1.0 if config.checkpoint_mode == "max" else -1.0
    scored = [(p, _last_metrics(p).get(config.checkpoint_metric)) for p in good]
    scored = [(p, v) for p, v in scored if isinstance(v, int | float)]
    if not scored:
        return good[-1]
    return max(scored, key=lambda item: (sign * item[1], item[0].name))[0]


def load_encoder(
    path: str | Path, checkpoint: str | Path | None = None, with_head: bool = False
) -> tuple[nn.Module, Callable[[Any], torch.Tensor], EncoderInfo]:
    """``(encoder, transform, info)`` of a run directory or a checkpoint directory."""
    from raycl.data import evaluation_transform
    from raycl.models import build_model

    chosen = choose_checkpoint(Path(path), checkpoint)
    record = json.loads((chosen / RUN_FILE).read_text())
    config = recorded_config(chosen)
    model = build_model(config.model, record["in_channels"])
    state = torch.load(chosen / STATE_FILE, map_location="cpu", weights_only=False)
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
        metrics=_last_metrics(chosen),
        input_shape=record["input_shape"],
        in_channels=record["in_channels"],
        num_classes=record["num_classes"],
    )
    return (model if with_head else model.encoder), evaluation_transform(config.data), info


def choose_checkpoint(path: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint directory to load: ``checkpoint``, ``path`` itself, or the best of the
    run at ``path``; one line naming the path when it is none of these."""
    path = Path(checkpoint if checkpoint is not None else path).resolve()
    if is_checkpoint(path):
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CheckpointError(f"{path}: the checkpoint does not verify ({problem})")
        return path
    if is_run(path):
        chosen = best_checkpoint(path)
        print(f"raycl: using checkpoint {chosen}", flush=True)
        return chosen
    raise CheckpointError(f"{path}: not a raycl run directory or checkpoint")


def recorded_config(checkpoint: Path) -> TrainConfig:
    """The training config recorded in a checkpoint, typed again."""
    from omegaconf import OmegaConf

    recorded = json.loads((checkpoint / RUN_FILE).read_text())["config"]
    schema = OmegaConf.structured(TrainConfig)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = OmegaConf.merge(schema, {k: v for k, v in recorded.items() if k in fields})
    return OmegaConf.to_object(merged)


def recorded_input_shape(checkpoint: Path) -> list[int]:
    """The shape of one input item the checkpoint's encoder was trained on, e.g. [1, 8, 8]."""
    return list(json.loads((checkpoint / RUN_FILE).read_text())["input_shape"])


def _last_metrics(checkpoint: Path) -> dict[str, float]:
    history = json.loads((checkpoint / HISTORY_FILE).read_text())["history"]
    return dict(history[-1]) if history else {}
