"""``raycl export``: a trained encoder for programs that do not use raycl.

The output folder holds

* ``encoder.safetensors``: the backbone's weights in its own naming — a torchvision ResNet's
  keys are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...), so
  ``torchvision.models.resnet18().load_state_dict(weights, strict=False)`` loads it; the only
  keys it lacks are the classifier's (``fc.*``, removed: features are the pooled ``out_dim``
  vector), and a ``model.cifar_stem`` export needs the stem replaced first
  (``conv1 = Conv2d(in_channels, 64, 3, 1, 1, bias=False)``, ``maxpool = Identity()``),
  as ``encoder.json`` says;
* ``head.safetensors``: the projection head's weights (``nn.Sequential`` naming);
* ``encoder.json``: the model config, what a raw input item is (its range included), the
  input shape, normalisation, feature and embedding sizes, which checkpoint, epoch and metrics
  it came from, and ``loading``: Python that loads the weights, to run in the folder as
  written;
* with ``torchscript``: ``encoder.torchscript.pt``, the encoder traced in eval mode, which
  ``torch.jit.load`` runs with plain torch.

The folder is written under a temporary name and renamed when complete; an existing output
is replaced only with ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from raycl.data import DATASETS
from raycl.encoder import load_encoder
from raycl.errors import CheckpointError

TORCHVISION_BACKBONES = ("resnet18", "resnet50")


def normalisation(transform: Any) -> dict[str, list[float]] | None:
    """The mean and std of a transform's ``Normalize`` step (None when it has none)."""
    for step in getattr(transform, "transforms", []):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return {"mean": list(step.mean), "std": list(step.std)}
    return None


def export_encoder(
    path: str | Path,
    output: str | Path,
    checkpoint: str | Path | None = None,
    torchscript: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the encoder of the run (or checkpoint) at ``path`` into the folder ``output``."""
    from safetensors.torch import save_file

    out = Path(output)
    if out.exists() and not overwrite:
        raise CheckpointError(f"--output {out} exists; pass --overwrite to replace it")
    model, transform, info = load_encoder(path, checkpoint, with_head=True)
    name = info.config.model.name
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for part in ("encoder", "head"):
        weights = {k: v.contiguous() for k, v in getattr(model, part).state_dict().items()}
        save_file(weights, staging / f"{part}.safetensors", metadata={"raycl.model": name})
    description = {
        "model": dataclasses.asdict(info.config.model),
        "backbone": f"torchvision.models.{name}" if name in TORCHVISION_BACKBONES else name,
        "input": DATASETS[info.config.data.name].raw_input(),
        "input_shape": info.input_shape,
        "in_channels": info.in_channels,
        "normalization": normalisation(transform),
        "transform": repr(transform),
        "feature_dim": model.out_dim,
        "embedding_dim": model.embed_dim,
        "checkpoint": info.checkpoint,
        "epoch": info.epoch,
        "metrics": {k: v for k, v in info.metrics.items() if isinstance(v, int | float)},
        "loading": _loading_notes(name, info.config.model.cifar_stem),
    }
    (staging / "encoder.json").write_text(json.dumps(description, indent=2))
    if torchscript:
        example = torch.zeros(1, *info.input_shape)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, not gone
            traced = torch.jit.trace(model.encoder.eval(), example)
        traced.save(str(staging / "encoder.torchscript.pt"))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _loading_notes(name: str, cifar_stem: bool) -> str:
    """How to load ``encoder.safetensors``: Python to run in the export folder, as written."""
    if name not in TORCHVISION_BACKBONES:
        return (
            "import json; from safetensors.torch import load_file; from raycl.models import "
            "ENCODERS; from raycl.schema import ModelConfig; d = json.load(open('encoder.json'))"
            "; model = ENCODERS[d['model']['name']](ModelConfig(**d['model']), d['in_channels'])"
            "; model.load_state_dict(load_file('encoder.safetensors')); model.eval()  "
            "# or, with plain torch: torch.jit.load('encoder.torchscript.pt')"
        )
    stem = (
        "; model.conv1 = torch.nn.Conv2d(d['in_channels'], 64, 3, 1, 1, bias=False)"
        "; model.maxpool = torch.nn.Identity()"
        if cifar_stem
        else ""
    )
    return (
        "import json, torch, torchvision; from safetensors.torch import load_file; "
        f"d = json.load(open('encoder.json')); model = torchvision.models.{name}(){stem}"
        "; missing = model.load_state_dict(load_file('encoder.safetensors'), strict=False)"
        "; model.fc = torch.nn.Identity(); model.eval()  "
        "# only fc.* is missing: the classifier was removed, features are the pooled vector"
    )
