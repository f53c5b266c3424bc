"""Generated data: tensors of any shape and class count, deterministic from a seed (no files).

Class ``c`` has a prototype ``p_c ~ N(0, I)`` of shape ``item_shape``; item ``i`` of a split has
label ``i mod num_classes`` and value ``p_label + noise · ε_i`` with ``ε_i ~ N(0, I)`` drawn
from numpy's generator seeded by the tuple ``(seed, split, i)`` (a ``SeedSequence``: no
two items share a stream). An item is generated when it is read, in
O(item size) time and memory, so a set of 65,536 (or millions of) items costs nothing to
open; the prototypes (``num_classes × item size`` floats) are the only thing held. Meant for
benchmarks, memory tests and GPU smoke tests: the classes are learnable but carry no meaning.
The default ``noise=3`` keeps them from being trivial: kNN on raw 1×8×8 items of 10 classes
scores about 75 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from raycl.data.builder import SOURCE_SPLIT, DatasetBundle, DatasetSpec, assemble
from raycl.data.transforms import TensorJitter
from raycl.schema import DataConfig

__all__ = ["SYNTHETIC", "SyntheticDataset", "held_out_size"]

_SPLITS = ("train", "test")


class SyntheticDataset(Dataset):
    """``num_items`` generated items ``(transform(x), label)``, ``x`` a float tensor ``item_shape``.

    The same ``(num_classes, item_shape, seed)`` give the same prototypes for every split and
    the same item ``i`` of a split every time, on every process.
    """

    def __init__(
        self,
        num_items: int,
        item_shape: Sequence[int],
        num_classes: int,
        *,
        split: str = "train",
        seed: int = 0,
        noise: float = 3.0,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
        if not isinstance(num_items, int) or num_items < 1:
            raise ValueError(f"data.num_items must be an integer >= 1, got {num_items!r}")
        shape = tuple(item_shape)
        if len(shape) < 2 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(
                f"data.item_shape must be (channels, *spatial) positive integers, got {shape}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"data.num_classes must be an integer >= 1, got {num_classes!r}")
        self.split, self.seed, self.noise, self.transform = split, seed, noise, transform
        self.num_items, self.item_shape = num_items, shape
        self.classes = [str(c) for c in range(num_classes)]
        self.prototypes = _normal((num_classes, *shape), seed, len(_SPLITS), 0)

    @property
    def targets(self) -> list[int]:
        return [i % len(self.classes) for i in range(self.num_items)]

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        label = index % len(self.classes)
        noise = _normal(self.item_shape, self.seed, _SPLITS.index(self.split), index)
        item = self.prototypes[label] + self.noise * noise
        return (item if self.transform is None else self.transform(item)), label


def _normal(shape: tuple[int, ...], seed: int, stream: int, index: int) -> torch.Tensor:
    """Standard normal float32 draws of ``shape`` from the stream ``(seed, stream, index)``:
    stream 0 / 1 are the train / test items, 2 the prototypes. (Not torch's CPU generator:
    it keeps only 32 bits of a seed, so distinct items would share streams.)"""
    rng = np.random.default_rng((seed % 2**64, stream, index))
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))


def held_out_size(num_items: int) -> int:
    """Held-out items generated beside ``num_items`` training items: a fifth, at least one."""
    return max(1, math.ceil(num_items / 5))


def build_synthetic(data: DataConfig, seed: int) -> DatasetBundle:
    """``synthetic``: ``num_items`` generated tensors of ``item_shape`` in ``num_classes``
    classes, deterministic from ``seed``, plus a held-out fifth for evaluation; two views by
    :class:`~raycl.data.transforms.TensorJitter` (random shift + Gaussian noise)."""
    sizes = {"train": data.num_items, "test": held_out_size(data.num_items)}

    def open_split(split: str, transform: Callable) -> Dataset:
        source = SOURCE_SPLIT[split]
        return SyntheticDataset(
            sizes[source],
            data.item_shape,
            data.num_classes,
            split=source,
            seed=seed,
            transform=transform,
        )

    datasets = assemble(data, open_split, TensorJitter(), None)
    return DatasetBundle(*datasets, num_classes=data.num_classes, in_channels=data.item_shape[0])


SYNTHETIC = DatasetSpec(build_synthetic, required=("num_items", "item_shape", "num_classes"))
