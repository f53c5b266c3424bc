"""Generated data: tensors of any shape and class count, deterministic from a seed (no files).

Class ``c`` has a prototype ``p_c ~ N(0, I)`` of shape ``item_shape``; item ``i`` of a split has
label ``i mod num_classes`` and value ``p_label + noise · ε_i`` with ``ε_i ~ N(0, I)`` drawn
from a generator seeded by ``(seed, split, i)``. An item is generated when it is read, in
O(item size) time and memory, so a set of 65,536 (or millions of) items costs nothing to
open; the prototypes (``num_classes × item size`` floats) are the only thing held. Meant for
benchmarks, memory tests and GPU smoke tests: the classes are learnable but carry no meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticDataset", "held_out_size"]

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
        noise: float = 1.0,
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
        generator = torch.Generator().manual_seed(_item_seed(seed, -1, 0))
        self.prototypes = torch.randn(num_classes, *shape, generator=generator)

    @property
    def targets(self) -> list[int]:
        return [i % len(self.classes) for i in range(self.num_items)]

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        label = index % len(self.classes)
        generator = torch.Generator().manual_seed(
            _item_seed(self.seed, _SPLITS.index(self.split), index)
        )
        item = self.prototypes[label] + self.noise * torch.randn(
            self.item_shape, generator=generator
        )
        return (item if self.transform is None else self.transform(item)), label


def _item_seed(seed: int, split: int, index: int) -> int:
    """A distinct 63-bit generator seed per (seed, split, item); split -1 is the prototypes."""
    return ((seed % 2**20) * 4 + split + 1) * 2**40 + index


def held_out_size(num_items: int) -> int:
    """Held-out items generated beside ``num_items`` training items: a fifth, at least one."""
    return max(1, math.ceil(num_items / 5))
