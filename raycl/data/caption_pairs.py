"""``pairs``: image–caption pairs from files (:mod:`raycl.data.paired_files`), for two-tower
runs: ``root/train`` and ``root/test`` (or ``root/val``) folders of Parquet files or WebDataset
shards (``data.layout``).

Images are resized and centre-cropped to ``data.image_size`` (224 by default) with ImageNet's
statistics, in training too (CLIP-style training uses little augmentation). The test pairs
score retrieval; their images with their labels (``data.label_column`` or ``.cls`` members,
-1 where none) serve kNN and, when ``data.class_names`` names the classes, zero-shot
classification with :data:`PROMPT_TEMPLATES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from raycl.data.builder import CaptionEval, DatasetBundle, DatasetSpec, require_root, split_dirs
from raycl.data.paired_files import open_pairs
from raycl.data.transforms import IMAGENET
from raycl.schema import DataConfig

__all__ = ["PAIRS", "PROMPT_TEMPLATES", "PairImages"]

PROMPT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.")


class PairImages(Dataset):
    """The images of a paired data set with their labels: items ``(image, label)``."""

    def __init__(self, pairs: Dataset) -> None:
        self.pairs = pairs
        self.targets = list(getattr(pairs, "targets", []))

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        (image, _), label = self.pairs[index]
        return image, label

    def item_source(self, index: int) -> str:
        return self.pairs.item_source(index)  # type: ignore[attr-defined]


def pair_transform(data: DataConfig) -> Callable[[Any], Tensor]:
    """The image transform of every split: resize, centre crop, ImageNet's statistics."""
    return IMAGENET.transforms(data.image_size)[1]


def pair_columns(data: DataConfig) -> dict[str, str | None]:
    """The Parquet columns the ``data`` section names, as the readers take them (none for
    WebDataset: its members are found by extension, and the readers refuse column names)."""
    if data.layout == "webdataset":
        return {}
    return {
        "image_column": data.image_column,
        "caption_column": data.caption_column,
        "label_column": data.label_column,
    }


def build_pairs(data: DataConfig, seed: int) -> DatasetBundle:
    """``pairs``: the train and test folders of ``data.root`` in ``data.layout``."""
    folders = split_dirs(require_root(data))
    transform, columns = pair_transform(data), pair_columns(data)
    train, test = (
        open_pairs(folders[split], data.layout, transform, **columns) for split in ("train", "test")
    )
    names = data.class_names or []
    prompts = [[t.format(name) for t in PROMPT_TEMPLATES] for name in names]
    labels = [y for y in PairImages(test).targets if y >= 0]
    return DatasetBundle(
        train,
        PairImages(train),
        PairImages(test),
        num_classes=len(names) or 1 + max(labels, default=0),
        in_channels=3,
        captions=CaptionEval(test, prompts),
    )


PAIRS = DatasetSpec(build_pairs, required=("root",), recipe=IMAGENET, paired=True)
