"""What a data set's builder returns (:class:`DatasetBundle`), its registry entry
(:class:`DatasetSpec`), and the split helpers the builders share.

A builder ``(data: DataConfig, seed) -> DatasetBundle`` opens three splits through one
``open_split(split, transform)``: ``"contrastive"`` (training data with multi-view
augmentation), ``"train"`` and ``"test"`` (evaluation transform). For every source but
STL-10 (which adds its unlabeled images) ``"contrastive"`` reads the same files as ``"train"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from raycl.data.transforms import MultiViewTransform, Recipe
from raycl.schema import DataConfig

__all__ = [
    "SOURCE_SPLIT",
    "CaptionEval",
    "DatasetBundle",
    "DatasetSpec",
    "OpenSplit",
    "assemble",
    "require_root",
    "split_dirs",
]


class CaptionEval(NamedTuple):
    """What a paired data set adds for evaluating a two-tower model."""

    pairs: Dataset  # held-out pairs, items ((image (C, H, W), caption), label)
    class_prompts: list[list[str]]  # per class, the zero-shot prompts (held-out templates)


class DatasetBundle(NamedTuple):
    """What :func:`~raycl.data.build_datasets` returns."""

    train_contrastive: Dataset  # train split, items (views (V, C, H, W), label) or, paired,
    # ((image (C, H, W), caption), label)
    train_eval: Dataset  # train split, items (image (C, H, W), label)
    test_eval: Dataset  # test split, items (image (C, H, W), label)
    num_classes: int
    in_channels: int
    captions: CaptionEval | None = None  # paired data sets only


def _float_tensor() -> Callable[[Any], torch.Tensor]:
    return partial(torch.as_tensor, dtype=torch.float32)


@dataclass(frozen=True)
class DatasetSpec:
    """A :data:`~raycl.data.DATASETS` entry: how to build one data set and what it needs."""

    build: Callable[[DataConfig, int], DatasetBundle]
    required: tuple[str, ...] = ()  # data.* keys it cannot do without
    # photo sets: the augmentation and evaluation transform of a decoded image
    recipe: Recipe | None = None
    # other sets: the evaluation transform of a raw item (an array or tensor)
    evaluation: Callable[[], Callable[[Any], torch.Tensor]] = _float_tensor
    # what the evaluation transform takes, in a user's words (encoder.json says it); None:
    # a decoded image for photo sets, else an array of the item's shape
    raw_item: str | None = None
    # items are image–caption pairs (a two-tower model and a paired loss train on it)
    paired: bool = False

    def raw_input(self) -> str:
        """What the data set's evaluation transform takes: a raw item as a user holds it."""
        if self.raw_item is not None:
            return self.raw_item
        if self.recipe is not None:
            return "a PIL image, or a uint8 image tensor (C, H, W) with values 0..255"
        return "a float array or tensor of the item's shape, values as the data set has them"


OpenSplit = Callable[[str, Callable | None], Dataset]
SOURCE_SPLIT = {"contrastive": "train", "train": "train", "test": "test"}


def assemble(
    data: DataConfig,
    open_split: OpenSplit,
    train_transform: Callable,
    test_transform: Callable | None,
) -> tuple[Dataset, Dataset, Dataset]:
    """The contrastive (``data.num_views`` views of ``train_transform``), train and test splits."""
    views = MultiViewTransform(train_transform, data.num_views)
    return (
        open_split("contrastive", views),
        open_split("train", test_transform),
        open_split("test", test_transform),
    )


def require_root(data: DataConfig) -> Path:
    """``data.root``, which a data set read from files cannot do without."""
    if data.root is None:
        raise ValueError(f"data.root is required for data set {data.name!r}")
    return Path(data.root)


def split_dirs(root: Path) -> dict[str, Path]:
    """``root/train`` and the first of ``root/test``, ``root/val`` that exists, by split."""
    test = next((root / d for d in ("test", "val") if (root / d).is_dir()), root / "test")
    return {"train": root / "train", "test": test}
