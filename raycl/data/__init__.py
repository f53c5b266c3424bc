"""Data sets for contrastive training and evaluation: the :data:`DATASETS` registry and
:func:`build_datasets`.

A contrastive training item is ``(views, label)`` with ``views`` a float tensor
``(V, C, H, W)`` of ``V`` augmented views of one image; an evaluation item is
``(image, label)`` with ``image`` ``(C, H, W)`` from a deterministic transform. Each data set
is a :class:`~raycl.data.builder.DatasetSpec` (builder, required keys, transforms) in its
own module: :mod:`~raycl.data.digits`, :mod:`~raycl.data.mnist1d`, :mod:`~raycl.data.vision`
(torchvision sets, image folders, class-split retrieval sets), :mod:`~raycl.data.parquet`,
:mod:`~raycl.data.synthetic`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from raycl.data import caption_pairs, digit_pairs, digits, mnist1d, parquet, synthetic, vision
from raycl.data.builder import DatasetBundle, DatasetSpec
from raycl.data.digits import DigitsDataset
from raycl.data.guard import ON_BAD_ITEM, GuardedDataset
from raycl.data.mnist1d import MNIST1DDataset
from raycl.data.paired_files import LAYOUTS
from raycl.data.parquet import ParquetImageDataset, read_ray_dataset, write_parquet_dataset
from raycl.data.synthetic import SyntheticDataset
from raycl.data.transforms import (
    MultiViewTransform,
    TensorJitter,
    digits_transform,
    eval_transform,
    simclr_transform,
)
from raycl.data.vision import ClassSplitImageFolder, image_folder, open_torchvision
from raycl.schema import DataConfig

__all__ = [
    "DATASETS",
    "ClassSplitImageFolder",
    "DatasetBundle",
    "DatasetSpec",
    "DigitsDataset",
    "MNIST1DDataset",
    "MultiViewTransform",
    "ParquetImageDataset",
    "SyntheticDataset",
    "TensorJitter",
    "build_datasets",
    "check_data",
    "contrastive_augmentation",
    "digits_transform",
    "eval_transform",
    "evaluation_transform",
    "image_folder",
    "open_torchvision",
    "read_ray_dataset",
    "simclr_transform",
    "training_loader",
    "write_parquet_dataset",
]

DATASETS: dict[str, DatasetSpec] = {
    "digits": digits.DIGITS,
    "digit_pairs": digit_pairs.DIGIT_PAIRS,
    "mnist1d": mnist1d.MNIST1D,
    "cifar10": vision.CIFAR10,
    "cifar100": vision.CIFAR100,
    "stl10": vision.STL10,
    "imagefolder": vision.IMAGEFOLDER,
    "cub200": vision.CUB200,
    "cars196": vision.CARS196,
    "sop": vision.SOP,
    "parquet": parquet.PARQUET,
    "pairs": caption_pairs.PAIRS,
    "synthetic": synthetic.SYNTHETIC,
}


def contrastive_augmentation(data: DataConfig) -> MultiViewTransform:
    """The multi-view augmentation of a photo data set's training split (``data.num_views``
    views): what its contrastive split applies to a decoded image."""
    check_data(data)
    recipe = DATASETS[data.name].recipe
    if recipe is None:
        raise ValueError(f"data.name: {data.name!r} has no photo augmentation")
    return MultiViewTransform(recipe.transforms(data.image_size)[0], data.num_views)


def evaluation_transform(data: DataConfig) -> Callable[[Any], torch.Tensor]:
    """The deterministic transform the ``data`` set's evaluation splits apply to a raw item
    (a PIL image for photos, an array for digits, signals and generated items): what an
    encoder trained on it expects as input."""
    check_data(data)
    spec = DATASETS[data.name]
    if spec.recipe is not None:
        return spec.recipe.transforms(data.image_size)[1]
    return spec.evaluation()


def build_datasets(data: DataConfig, seed: int = 0) -> DatasetBundle:
    """Build ``(train_contrastive, train_eval, test_eval, num_classes, in_channels)`` for the
    ``data`` section; ``data.name`` is one of :data:`DATASETS`, whose builders say what each
    reads (e.g. :func:`~raycl.data.vision.build_torchvision`).

    ``image_size`` overrides the crop size of the photo data sets (224 for folders/Parquet);
    ``download`` is passed to torchvision's downloaders. Every split is a
    :class:`~raycl.data.guard.GuardedDataset` (``data.on_bad_item``).
    """
    check_data(data)
    bundle = DATASETS[data.name].build(data, seed)
    train = GuardedDataset(bundle.train_contrastive, data.on_bad_item)
    return DatasetBundle(
        train,
        GuardedDataset(bundle.train_eval, data.on_bad_item, same_items_as=train),
        GuardedDataset(bundle.test_eval, data.on_bad_item),
        num_classes=bundle.num_classes,
        in_channels=bundle.in_channels,
        captions=bundle.captions,
    )


def training_loader(dataset: Dataset, data: DataConfig, seed: int) -> DataLoader:
    """The in-worker loader of contrastive items (``data.ingest = loader``): shuffled with a
    ``seed``-ed generator, ``data.batch_size_per_worker`` items a batch, last partial dropped;
    ``data.loader_workers`` processes, at most one per CPU this process may run on."""
    return DataLoader(
        dataset,
        batch_size=data.batch_size_per_worker,
        shuffle=True,
        drop_last=True,
        num_workers=min(data.loader_workers, len(os.sched_getaffinity(0))),
        generator=torch.Generator().manual_seed(seed),
    )


INGESTS = ("loader", "ray_data")


def check_data(data: DataConfig) -> None:
    """One-line ``ValueError`` naming the ``data.*`` key of a bad ``data`` section."""
    if data.name not in DATASETS:
        raise ValueError(f"data.name must be one of {list(DATASETS)}, got {data.name!r}")
    checks = [
        ("num_views", data.num_views >= 2, "must be >= 2"),
        ("batch_size_per_worker", data.batch_size_per_worker >= 2, "must be >= 2"),
        ("loader_workers", data.loader_workers >= 0, "must be >= 0"),
        ("ingest", data.ingest in INGESTS, f"must be one of {list(INGESTS)}"),
        ("on_bad_item", data.on_bad_item in ON_BAD_ITEM, f"must be one of {list(ON_BAD_ITEM)}"),
        ("layout", data.layout in LAYOUTS, f"must be one of {list(LAYOUTS)}"),
        (
            "ingest",
            data.ingest == "loader" or data.name in ("parquet", "pairs"),
            "ray_data streams files only (data=parquet or data=pairs)",
        ),
        (
            "num_train_classes",
            data.name != "mnist1d" or data.num_train_classes in (None, *range(1, 10)),
            "must be in [1, 9] for mnist1d",
        ),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ValueError(f"data.{key} {rule}, got {getattr(data, key)!r}")
    for key in DATASETS[data.name].required:
        if getattr(data, key) is None:
            raise ValueError(f"data.{key} is required for data set {data.name!r}")
