"""The embedded default data set: scikit-learn's handwritten digits (no download needed).

1797 grayscale 8x8 images of the digits 0-9 with pixel values 0..16, shipped inside
scikit-learn. Images stay at their native 8x8 resolution (no upsampling) and are kept as
scikit-learn gives them (pixel values 0..16): the transforms take such a raw item and scale it
to [0, 1] (:class:`~raycl.data.transforms.DigitsPixels`), so the evaluation transform a
trained encoder comes with takes ``load_digits().images[i]`` as it is. The train/test split is
fixed: a stratified 1437/360 split from ``train_test_split(test_size=0.2, random_state=0)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from raycl.data.builder import SOURCE_SPLIT, DatasetBundle, DatasetSpec, assemble
from raycl.data.transforms import digits_eval_transform, digits_transform
from raycl.schema import DataConfig

__all__ = ["DIGITS", "DigitsDataset"]

_SPLITS = ("train", "test")


@cache
def _load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 8, 8)`` in 0..16 and labels ``(N,)`` of one split (loaded once).
    scikit-learn is imported here, not with the module: it costs about a second, and every
    process that imports :mod:`raycl.data` (an embed actor, the CLI) would pay it."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


class DigitsDataset(Dataset):
    """One split of the digits; items are ``(transform(image), label)`` of the raw ``(8, 8)``
    image in 0..16 (no transform: the evaluation transform, a ``(1, 8, 8)`` image in [0, 1])."""

    def __init__(self, split: str = "train", transform: Callable[[Any], Any] | None = None):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
        images, labels = _load_split(split)
        self.split = split
        self.transform = transform if transform is not None else digits_eval_transform()
        self.data = torch.from_numpy(images).float()  # (N, 8, 8), 0..16 as scikit-learn has it
        self.targets: list[int] = labels.tolist()
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.data[index]), self.targets[index]


def build_digits(data: DataConfig, seed: int) -> DatasetBundle:
    """``digits``: scikit-learn digits, embedded, 1x8x8 (``root`` unused)."""
    datasets = assemble(
        data,
        lambda split, transform: DigitsDataset(SOURCE_SPLIT[split], transform),
        digits_transform(),
        digits_eval_transform(),
    )
    return DatasetBundle(*datasets, num_classes=10, in_channels=1)


DIGITS = DatasetSpec(
    build_digits,
    evaluation=digits_eval_transform,
    raw_item="an 8×8 digit with pixel values 0..16 (sklearn.datasets.load_digits().images[i])",
)
