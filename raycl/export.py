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

A two-tower run (``model=two_tower``) writes ``image_tower.safetensors``,
``text_tower.safetensors`` (open_clip's ``TextTransformer`` naming) and ``head.safetensors``
(the learnt logit scale and bias) instead, and ``encoder.json`` adds the text tower's open_clip
config, the tokenizer (open_clip's BPE ``SimpleTokenizer`` and its context length) and the
data set's zero-shot prompts.

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
from raycl.encoder import EncoderInfo, load_encoder
from raycl.errors import CheckpointError
from raycl.models import TWO_TOWER
from raycl.towers import TwoTowerModel, text_config

TORCHVISION_BACKBONES = ("resnet18", "resnet50")
# the files written, and the part of the model each holds
ENCODER_FILES = {"encoder": "encoder", "head": "head"}
TOWER_FILES = {"image_tower": "image", "text_tower": "text", "head": "head"}


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
    two_tower = name == TWO_TOWER
    if two_tower and torchscript:
        raise CheckpointError("--torchscript: a two-tower model's tokenizer is Python; drop it")
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file, part in (TOWER_FILES if two_tower else ENCODER_FILES).items():
        weights = {k: v.contiguous() for k, v in getattr(model, part).state_dict().items()}
        save_file(weights, staging / f"{file}.safetensors", metadata={"raycl.model": name})
    describe = _two_tower_description if two_tower else _encoder_description
    (staging / "encoder.json").write_text(json.dumps(describe(model, transform, info), indent=2))
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


def _encoder_description(model: Any, transform: Any, info: EncoderInfo) -> dict[str, Any]:
    """``encoder.json`` of a one-encoder run."""
    name = info.config.model.name
    return {
        "model": dataclasses.asdict(info.config.model),
        "backbone": f"torchvision.models.{name}" if name in TORCHVISION_BACKBONES else name,
        "input": DATASETS[info.config.data.name].raw_input(),
        "input_shape": info.input_shape,
        "in_channels": info.in_channels,
        "normalization": normalisation(transform),
        "transform": repr(transform),
        "feature_dim": model.out_dim,
        "embedding_dim": model.embed_dim,
        **_provenance(info),
        "loading": _loading_notes(name, info.config.model.cifar_stem),
    }


def _provenance(info: EncoderInfo) -> dict[str, Any]:
    return {
        "checkpoint": info.checkpoint,
        "epoch": info.epoch,
        "metrics": {k: v for k, v in info.metrics.items() if isinstance(v, int | float)},
    }


def _two_tower_description(
    model: TwoTowerModel, transform: Any, info: EncoderInfo
) -> dict[str, Any]:
    """``encoder.json`` of a two-tower run: both towers, the tokenizer and the prompts."""
    from raycl.data import build_datasets

    config = info.config
    captions = build_datasets(config.data, config.seed).captions
    return {
        "model": dataclasses.asdict(config.model),
        "loss": dict(config.loss),
        "input": DATASETS[config.data.name].raw_input(),
        "input_shape": info.input_shape,
        "in_channels": info.in_channels,
        "normalization": normalisation(transform),
        "transform": repr(transform),
        "embedding_dim": config.model.proj_dim,
        "text_tower": text_config(config.model),
        "tokenizer": {
            "name": "open_clip.tokenizer.SimpleTokenizer (BPE, bpe_simple_vocab_16e6)",
            "context_length": model.context_length,
        },
        "logits": model.head.metrics(),
        "prompts": captions.class_prompts if captions is not None else [],
        **_provenance(info),
        "loading": (
            "import raycl; model, transform, info = raycl.load_encoder(RUN_DIR)  # then "
            "model(images) -> (features, embeddings), model.embed_text(texts); without "
            "raycl: open_clip.model._build_text_tower(embedding_dim, "
            "open_clip.model.CLIPTextCfg(**text_tower)).load_state_dict("
            "safetensors.torch.load_file('text_tower.safetensors')), tokens from "
            "open_clip.tokenizer.SimpleTokenizer(context_length=...)"
        ),
    }


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
