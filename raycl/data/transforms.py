"""Augmentation recipes built from ``torchvision.transforms.v2``.

Every recipe accepts a PIL image or an image tensor ``(C, H, W)`` (uint8 or float in [0, 1])
and returns a plain float32 tensor ``(C, H, W)``. :class:`MultiViewTransform` turns a recipe
into the contrastive input: ``V`` independently augmented views stacked as ``(V, C, H, W)``.
:class:`TensorJitter` augments generated tensors of any shape (shift + noise, no image ops).
A :class:`Recipe` holds one photo data set family's settings of both transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

__all__ = [
    "IMAGENET",
    "DigitsPixels",
    "MultiViewTransform",
    "Recipe",
    "TensorJitter",
    "digits_eval_transform",
    "digits_transform",
    "eval_transform",
    "simclr_transform",
]


class MultiViewTransform:
    """Apply ``transform`` ``num_views`` times to one image and stack the views as (V, C, H, W)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], num_views: int = 2) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.transform = transform
        self.num_views = num_views

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.num_views)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_views={self.num_views}, transform={self.transform})"


def _finish(
    steps: list[v2.Transform],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> v2.Compose:
    """Wrap ``steps`` (run on an image tv_tensor) into PIL/tensor in, float tensor out."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together")
    tail: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        tail.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose([v2.ToImage(), *steps, *tail, v2.ToPureTensor()])


def simclr_transform(
    size: int,
    *,
    strength: float = 1.0,
    min_scale: float = 0.08,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> v2.Compose:
    """SimCLR augmentation (Chen et al. 2020, appendix A) for RGB images.

    Random resized crop to ``size`` (area fraction in ``[min_scale, 1]``), horizontal flip,
    colour jitter of ``strength`` s (brightness/contrast/saturation 0.8 s, hue 0.2 s) with
    probability ``jitter_p``, grayscale with probability ``grayscale_p`` and, with probability
    ``blur_p``, a Gaussian blur with a kernel of 10 % of ``size`` (SimCLR uses 0.5 on ImageNet and
    none on CIFAR). ``mean``/``std`` add a final normalisation.
    """
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply(
            [v2.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)],
            p=jitter_p,
        ),
        v2.RandomGrayscale(p=grayscale_p),
    ]
    if blur_p > 0:
        kernel = 2 * (size // 20) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    return _finish(steps, mean, std)


class DigitsPixels:
    """A raw digit as scikit-learn gives it — ``load_digits().images[i]`` (8×8) or
    ``.data[i]`` (64 values), pixel values 0..16, array or tensor — as a float32 image
    ``(1, 8, 8)`` in [0, 1]."""

    def __call__(self, item: Any) -> torch.Tensor:
        return torch.as_tensor(item, dtype=torch.float32).reshape(1, 8, 8) / 16.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def digits_transform(
    size: int = 8,
    *,
    min_scale: float = 0.5,
    degrees: float = 15.0,
    translate: float = 0.1,
) -> v2.Compose:
    """Augmentation for the 1-channel 8x8 digits, from the raw item (:class:`DigitsPixels`):
    small affine warp and resized crop only.

    No flips (they change a digit's identity) and no colour operations (one channel).
    """
    warp = _finish(
        [
            v2.RandomAffine(
                degrees=degrees,
                translate=(translate, translate),
                interpolation=v2.InterpolationMode.BILINEAR,
            ),
            v2.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(0.8, 1.25), antialias=True),
        ]
    )
    return v2.Compose([DigitsPixels(), warp])


def digits_eval_transform() -> v2.Compose:
    """The digits' evaluation transform: the raw item (:class:`DigitsPixels`) as it is."""
    return v2.Compose([DigitsPixels(), eval_transform()])


def eval_transform(
    size: int | None = None,
    *,
    crop_fraction: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> v2.Compose:
    """Deterministic evaluation transform.

    With ``size`` the shorter side is resized to ``size / crop_fraction`` and the centre
    ``size`` x ``size`` crop is kept (ImageNet style: ``crop_fraction=0.875``); without it the
    image keeps its resolution. ``mean``/``std`` add a final normalisation.
    """
    steps: list[v2.Transform] = []
    if size is not None:
        steps = [v2.Resize(round(size / crop_fraction), antialias=True), v2.CenterCrop(size)]
    return _finish(steps, mean, std)


class TensorJitter:
    """Augmentation for generated tensors ``(C, *spatial)`` of any shape: a random circular
    shift of up to ``max_shift`` positions along every spatial axis, then additive Gaussian
    noise of standard deviation ``noise``. Tensor in, float32 tensor out; no image semantics
    (no crops, flips or colour), so it suits any channel count and 1-D or 2-D items.
    """

    def __init__(self, max_shift: int = 1, noise: float = 0.1) -> None:
        if max_shift < 0 or noise < 0:
            raise ValueError(f"max_shift and noise must be >= 0, got {max_shift}, {noise}")
        self.max_shift, self.noise = max_shift, noise

    def __call__(self, item: torch.Tensor) -> torch.Tensor:
        item = torch.as_tensor(item, dtype=torch.float32)
        dims = tuple(range(1, item.dim()))
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (len(dims),)).tolist()
        shifted = torch.roll(item, shifts, dims) if dims else item
        return shifted + self.noise * torch.randn_like(shifted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_shift={self.max_shift}, noise={self.noise})"


@dataclass(frozen=True)
class Recipe:
    """Augmentation settings of one data set family."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    strength: float = 1.0  # SimCLR colour-jitter strength (0.5 on CIFAR)
    blur_p: float = 0.5  # SimCLR blur probability (none on CIFAR)
    crop_fraction: float = 0.875  # evaluation centre-crop fraction (1 for small images)

    def transforms(self, image_size: int | None) -> tuple[Callable, Callable]:
        """(contrastive augmentation, evaluation transform) at ``image_size`` or the default."""
        size = image_size or self.size
        stats = {"mean": self.mean, "std": self.std}
        return (
            simclr_transform(size, strength=self.strength, blur_p=self.blur_p, **stats),
            eval_transform(size, crop_fraction=self.crop_fraction, **stats),
        )


# Photos of any size (image folders, Parquet): ImageNet's statistics, 224 crops.
IMAGENET = Recipe(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
