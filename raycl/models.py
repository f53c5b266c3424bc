"""Encoders, projection heads and the two-output contrastive model.

Every encoder maps items ``(N, *item_shape)`` — images ``(N, C, H, W)``, or signals
``(N, C, L)`` for 1-D encoders — to features ``(N, out_dim)`` and exposes ``out_dim`` and
``item_dims`` (3 for images, 2 for signals). :class:`ContrastiveModel` adds a projection head;
the loss sees the head's (unnormalised) embeddings, evaluation uses the encoder's features.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torchvision import models

from raycl.losses.logits import LogitHead
from raycl.schema import ModelConfig
from raycl.towers import OPEN_CLIP_VISION, TwoTowerModel, build_two_tower, check_towers

__all__ = [
    "ENCODERS",
    "MODELS",
    "ContrastiveModel",
    "Conv1DEncoder",
    "ProjectionHead",
    "SmallCNN",
    "build_model",
    "check_model",
    "resnet",
]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (``width``, 2x, 4x channels; strides 1, 2, 2) + global pool.

    Sized for the 8x8 digits (8 -> 4 -> 2 pixels) but accepts any image size.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.out_dim = 4 * width
        self.net = nn.Sequential(
            *_conv_bn_relu(in_channels, width, stride=1),
            *_conv_bn_relu(width, 2 * width, stride=2),
            *_conv_bn_relu(2 * width, self.out_dim, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv1DEncoder(nn.Module):
    """Three strided 1-D conv-BN-ReLU blocks, flattened (MNIST-1D's small CNN, plus BN).

    Kernel 5 then 3 and 3, stride 2 each (40 samples -> 20 -> 10 -> 5 positions), ``width``
    channels; an adaptive average pool to 5 positions keeps ``out_dim = 5 * width`` for any
    signal length. Flattening keeps where along the signal a feature fired. BatchNorm makes
    contrastive training on MNIST-1D far less seed-dependent (kNN seed SD ~3 -> ~1 point).
    """

    item_dims = 2

    def __init__(
        self, in_channels: int = 1, width: int = 64, positions: int = 5, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.out_dim = positions * width
        layers: list[nn.Module] = []
        for i, kernel in enumerate((5, 3, 3)):
            layers.append(nn.Conv1d(width if i else in_channels, width, kernel, 2, kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(positions), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_RESNETS = {"resnet18": models.resnet18, "resnet50": models.resnet50}


def resnet(name: str = "resnet18", cifar_stem: bool = False, in_channels: int = 3) -> nn.Module:
    """A randomly initialised torchvision ResNet with ``fc`` replaced by ``Identity``.

    ``cifar_stem`` swaps the 7x7 stride-2 stem convolution and the max-pool for a 3x3
    stride-1 convolution (SimCLR on 32x32 images). The returned module has ``out_dim``
    (512 for resnet18, 2048 for resnet50).
    """
    if name not in _RESNETS:
        raise ValueError(f"resnet name must be one of {list(_RESNETS)}, got {name!r}")
    net = _RESNETS[name](weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class ProjectionHead(nn.Sequential):
    """MLP ``in_dim -> hidden_dim (x num_layers-1) -> out_dim`` with BN + ReLU between layers.

    ``num_layers=1`` is a single linear map (SimCLR's "linear" head); 2 is SimCLR v1's head,
    3 SimCLR v2's.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim


class ContrastiveModel(nn.Module):
    """Encoder + projection head; ``forward`` returns ``(features, embeddings)``.

    Input ``(N, C, H, W)`` gives ``(N, F)`` features and ``(N, D)`` embeddings; multi-view
    input ``(B, V, C, H, W)`` is encoded as one batch of ``B * V`` images and comes back as
    ``(B, V, F)`` and ``(B, V, D)`` (likewise for 1-D encoders, whose items are ``(C, L)``).
    Embeddings are not normalised (the loss does that).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.out_dim: int = encoder.out_dim
        self.embed_dim: int = head.out_dim
        self.item_dims: int = getattr(encoder, "item_dims", 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = x.shape[: x.dim() - self.item_dims]
        features = self.encoder(x.flatten(0, -1 - self.item_dims))
        embeddings = self.head(features)
        return features.unflatten(0, lead), embeddings.unflatten(0, lead)


def _resnet_encoder(name: str, model: ModelConfig, channels: int) -> nn.Module:
    return resnet(name, cifar_stem=model.cifar_stem, in_channels=channels)


# Encoder builders by name: ``(model section, input channels) -> encoder``.
ENCODERS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "small_cnn": lambda model, channels: SmallCNN(channels, model.width),
    "conv1d": lambda model, channels: Conv1DEncoder(channels, model.width),
    **{name: partial(_resnet_encoder, name) for name in _RESNETS},
}
TWO_TOWER = "two_tower"  # an image and a text tower (raycl.towers), for the paired losses
MODELS = (*ENCODERS, TWO_TOWER)
IMAGE_TOWERS = (*(name for name in ENCODERS if name != "conv1d"), *OPEN_CLIP_VISION)


def models_for(item_dims: int, in_channels: int) -> list[str]:
    """The encoders that take items of ``item_dims`` dimensions (2: signals, 3: images)."""
    return [
        name
        for name, build in ENCODERS.items()
        if getattr(build(ModelConfig(name=name), in_channels), "item_dims", 3) == item_dims
    ]


def check_model(model: ModelConfig) -> None:
    """One-line ``ValueError`` naming the ``model.*`` key of a bad ``model`` section."""
    if model.name not in MODELS:
        raise ValueError(f"model.name must be one of {list(MODELS)}, got {model.name!r}")
    checks = [
        (
            "image_tower",
            model.name != TWO_TOWER or model.image_tower in IMAGE_TOWERS,
            f"must be one of {list(IMAGE_TOWERS)}",
        ),
        ("width", model.width >= 1, "must be >= 1"),
        ("proj_dim", model.proj_dim >= 1, "must be >= 1"),
        ("proj_layers", model.proj_layers >= 1, "must be >= 1"),
        (
            "proj_hidden_dim",
            model.proj_hidden_dim is None or model.proj_hidden_dim >= 1,
            "must be >= 1 or null",
        ),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ValueError(f"model.{key} {rule}, got {getattr(model, key)!r}")
    if model.name == TWO_TOWER:
        check_towers(model)


def build_model(
    model: ModelConfig,
    in_channels: int,
    logit_head: LogitHead | None = None,
    image_size: int | None = None,
) -> ContrastiveModel | TwoTowerModel:
    """The encoder ``model.name`` (one of :data:`MODELS`) for ``in_channels`` inputs, plus
    its projection head (hidden width: ``proj_hidden_dim`` or the encoder's ``out_dim``).

    ``width`` applies to ``small_cnn`` and ``conv1d`` (1-D signals), ``cifar_stem`` to the
    ResNets. ``two_tower`` builds :func:`raycl.towers.build_two_tower` around ``logit_head``
    (the paired loss's) for images of ``image_size`` pixels.
    """
    check_model(model)
    if model.name == TWO_TOWER:
        if logit_head is None or image_size is None:
            raise ValueError("model.name: two_tower needs a paired loss (loss=clip or siglip)")
        encoder = None
        if model.image_tower not in OPEN_CLIP_VISION:
            encoder = ENCODERS[model.image_tower](model, in_channels)
        return build_two_tower(model, in_channels, image_size, logit_head, encoder)
    encoder = ENCODERS[model.name](model, in_channels)
    head = ProjectionHead(
        encoder.out_dim,
        model.proj_hidden_dim or encoder.out_dim,
        model.proj_dim,
        num_layers=model.proj_layers,
    )
    return ContrastiveModel(encoder, head)
