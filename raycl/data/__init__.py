"""Data sets for contrastive training and evaluation, and the :func:`build_datasets` registry.

A contrastive training item is ``(views, label)`` with ``views`` a float tensor
``(V, C, H, W)`` of ``V`` augmented views of one image; an evaluation item is
``(image, label)`` with ``image`` ``(C, H, W)`` from a deterministic transform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, CIFAR100, STL10, VisionDataset

from raycl.data.digits import DigitsDataset
from raycl.data.guard import ON_BAD_ITEM, GuardedDataset
from raycl.data.mnist1d import MNIST1DDataset, Mnist1dSpec, SignalAugment
from raycl.data.parquet import ParquetImageDataset, read_ray_dataset, write_parquet_dataset
from raycl.data.synthetic import SyntheticDataset, held_out_size
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


class DatasetBundle(NamedTuple):
    """What :func:`build_datasets` returns (unpacks as a 5-tuple)."""

    train_contrastive: Dataset  # train split, items (views (V, C, H, W), label)
    train_eval: Dataset  # train split, items (image (C, H, W), label)
    test_eval: Dataset  # test split, items (image (C, H, W), label)
    num_classes: int
    in_channels: int


def _root(data: DataConfig) -> Path:
    if data.root is None:
        raise ValueError(f"data.root is required for data set {data.name!r}")
    return Path(data.root)


@dataclass(frozen=True)
class _Recipe:
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


_IMAGENET = _Recipe(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_STL10 = _Recipe(96, _IMAGENET.mean, _IMAGENET.std, crop_fraction=1.0)
_CIFAR10 = _Recipe(
    size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    strength=0.5,
    blur_p=0.0,
    crop_fraction=1.0,
)
_CIFAR100 = replace(_CIFAR10, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))

# open_split(split, transform) opens one of three splits: "contrastive" (training data with
# multi-view augmentation), "train" and "test" (evaluation transform). For every source but
# STL-10 (which adds its unlabeled images) "contrastive" reads the same files as "train".
_OpenSplit = Callable[[str, Callable | None], Dataset]
_SOURCE_SPLIT = {"contrastive": "train", "train": "train", "test": "test"}


def _assemble(
    data: DataConfig,
    open_split: _OpenSplit,
    train_transform: Callable,
    test_transform: Callable | None,
) -> tuple[Dataset, Dataset, Dataset]:
    views = MultiViewTransform(train_transform, data.num_views)
    return (
        open_split("contrastive", views),
        open_split("train", test_transform),
        open_split("test", test_transform),
    )


def _digits(data: DataConfig, seed: int) -> DatasetBundle:
    datasets = _assemble(
        data,
        lambda split, transform: DigitsDataset(_SOURCE_SPLIT[split], transform),
        digits_transform(),
        eval_transform(),
    )
    return DatasetBundle(*datasets, num_classes=10, in_channels=1)


def _mnist1d(data: DataConfig, seed: int) -> DatasetBundle:
    """MNIST-1D, generated locally; with ``num_train_classes`` the class-disjoint split."""
    spec = Mnist1dSpec(
        num_train=data.num_items or Mnist1dSpec.num_train,
        num_test=data.num_test_items or Mnist1dSpec.num_test,
    )
    train_classes = test_classes = None
    if data.num_train_classes is not None:  # in [1, 9]: check_data
        n = data.num_train_classes
        train_classes, test_classes = list(range(n)), list(range(n, 10))
    cache = data.root  # None: ~/.cache/raycl/mnist1d

    def open_split(split: str, transform: Callable | None) -> Dataset:
        source = _SOURCE_SPLIT[split]
        classes = train_classes if source == "train" else test_classes
        return MNIST1DDataset(source, spec, transform, classes, cache)

    datasets = _assemble(data, open_split, SignalAugment(), None)
    return DatasetBundle(*datasets, num_classes=len(datasets[2].classes), in_channels=1)


def _synthetic(data: DataConfig, seed: int) -> DatasetBundle:
    """Generated items (:mod:`raycl.data.synthetic`); views by :class:`TensorJitter`."""
    sizes = {"train": data.num_items, "test": held_out_size(data.num_items)}

    def open_split(split: str, transform: Callable) -> Dataset:
        source = _SOURCE_SPLIT[split]
        return SyntheticDataset(
            sizes[source],
            data.item_shape,
            data.num_classes,
            split=source,
            seed=seed,
            transform=transform,
        )

    datasets = _assemble(data, open_split, TensorJitter(), None)
    return DatasetBundle(*datasets, num_classes=data.num_classes, in_channels=data.item_shape[0])


def _torchvision(
    cls: type[VisionDataset],
    split_kwargs: dict[str, dict[str, Any]],
    recipe: _Recipe,
    num_classes: int,
    data: DataConfig,
    seed: int,
) -> DatasetBundle:
    root = _root(data)

    def open_split(split: str, transform: Callable) -> Dataset:
        return open_torchvision(
            cls, root, download=data.download, transform=transform, **split_kwargs[split]
        )

    datasets = _assemble(data, open_split, *recipe.transforms(data.image_size))
    return DatasetBundle(*datasets, num_classes=num_classes, in_channels=3)


def _split_dirs(root: Path) -> dict[str, Path]:
    """``root/train`` and the first of ``root/test``, ``root/val`` that exists, by split."""
    test = next((root / d for d in ("test", "val") if (root / d).is_dir()), root / "test")
    return {"train": root / "train", "test": test}


def _imagefolder(data: DataConfig, seed: int) -> DatasetBundle:
    folder = _split_dirs(_root(data))
    datasets = _assemble(
        data,
        lambda split, transform: image_folder(folder[_SOURCE_SPLIT[split]], transform),
        *_IMAGENET.transforms(data.image_size),
    )
    return DatasetBundle(*datasets, num_classes=len(datasets[1].classes), in_channels=3)


def _class_split(default_train_classes: int, data: DataConfig, seed: int) -> DatasetBundle:
    """Class-disjoint split; ``num_classes`` counts the test classes (as NMI / recall use)."""
    root = _root(data)
    num_train = data.num_train_classes or default_train_classes
    datasets = _assemble(
        data,
        lambda split, transform: ClassSplitImageFolder(
            root, _SOURCE_SPLIT[split], num_train, transform
        ),
        *_IMAGENET.transforms(data.image_size),
    )
    return DatasetBundle(*datasets, num_classes=len(datasets[2].classes), in_channels=3)


def _parquet(data: DataConfig, seed: int) -> DatasetBundle:
    folder = _split_dirs(_root(data))
    datasets = _assemble(
        data,
        lambda split, transform: ParquetImageDataset(folder[_SOURCE_SPLIT[split]], transform),
        *_IMAGENET.transforms(data.image_size),
    )
    num_classes = 1 + max(max(datasets[1].targets), max(datasets[2].targets))
    return DatasetBundle(*datasets, num_classes=num_classes, in_channels=3)


_CIFAR_SPLITS = {"contrastive": {"train": True}, "train": {"train": True}, "test": {"train": False}}
_STL10_SPLITS = {
    "contrastive": {"split": "train+unlabeled"},
    "train": {"split": "train"},
    "test": {"split": "test"},
}

DATASETS: dict[str, Callable[[DataConfig, int], DatasetBundle]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "cifar10": partial(_torchvision, CIFAR10, _CIFAR_SPLITS, _CIFAR10, 10),
    "cifar100": partial(_torchvision, CIFAR100, _CIFAR_SPLITS, _CIFAR100, 100),
    "stl10": partial(_torchvision, STL10, _STL10_SPLITS, _STL10, 10),
    "imagefolder": _imagefolder,
    "cub200": partial(_class_split, 100),
    "cars196": partial(_class_split, 98),
    "sop": partial(_class_split, 11318),
    "parquet": _parquet,
    "synthetic": _synthetic,
}


_PHOTO_RECIPES = {
    "cifar10": _CIFAR10,
    "cifar100": _CIFAR100,
    "stl10": _STL10,
    "imagefolder": _IMAGENET,
    "cub200": _IMAGENET,
    "cars196": _IMAGENET,
    "sop": _IMAGENET,
    "parquet": _IMAGENET,
}


def contrastive_augmentation(data: DataConfig) -> MultiViewTransform:
    """The multi-view augmentation of a photo data set's training split (``data.num_views``
    views): what its contrastive split applies to a decoded image."""
    check_data(data)
    if data.name not in _PHOTO_RECIPES:
        raise ValueError(f"data.name: {data.name!r} has no photo augmentation")
    return MultiViewTransform(
        _PHOTO_RECIPES[data.name].transforms(data.image_size)[0], data.num_views
    )


def evaluation_transform(data: DataConfig) -> Callable[[Any], torch.Tensor]:
    """The deterministic transform the ``data`` set's evaluation splits apply to a raw item
    (a PIL image for photos, an array for digits, signals and generated items): what an
    encoder trained on it expects as input."""
    check_data(data)
    if data.name == "digits":
        return eval_transform()
    if data.name in _PHOTO_RECIPES:
        return _PHOTO_RECIPES[data.name].transforms(data.image_size)[1]
    return partial(torch.as_tensor, dtype=torch.float32)


def build_datasets(data: DataConfig, seed: int = 0) -> DatasetBundle:
    """Build ``(train_contrastive, train_eval, test_eval, num_classes, in_channels)`` for the
    ``data`` section; ``data.name`` is one of :data:`DATASETS`:

    * ``digits``: scikit-learn digits, embedded, 1x8x8 (``root`` unused).
    * ``mnist1d``: MNIST-1D generated locally, 1x40 signals; ``num_items`` training and
      ``num_test_items`` test signals (default 5,000 and 10,000), cached under ``root``
      (default ``~/.cache/raycl/mnist1d``); ``num_train_classes`` gives the class-disjoint
      split (train on the first classes, test on the rest).
    * ``cifar10``, ``cifar100``: torchvision's python pickles under ``root``, 32x32.
    * ``stl10``: torchvision's binaries under ``root``; contrastive training on
      train+unlabeled (label -1 for unlabeled images), evaluation on train/test; 96x96.
    * ``imagefolder``: ``root/train`` and ``root/test`` (or ``root/val``) ImageFolder trees.
    * ``cub200``, ``cars196``, ``sop``: one ImageFolder tree at ``root`` split by class
      (first 100 / 98 / 11318 sorted classes train, the rest test; ``num_train_classes``
      overrides); ``num_classes`` is the number of test classes.
    * ``parquet``: ``root/train`` and ``root/test`` folders of Parquet files (RGB).
    * ``synthetic``: ``num_items`` generated tensors of ``item_shape`` in ``num_classes``
      classes, deterministic from ``seed`` (:mod:`raycl.data.synthetic`), plus a held-out fifth
      for evaluation; two views by :class:`TensorJitter` (random shift + Gaussian noise).

    ``image_size`` overrides the crop size of the photo data sets (224 for folders/Parquet);
    ``download`` is passed to torchvision's downloaders. Every split is a
    :class:`~raycl.data.guard.GuardedDataset` (``data.on_bad_item``).
    """
    check_data(data)
    bundle = DATASETS[data.name](data, seed)
    guarded = (GuardedDataset(d, data.on_bad_item) for d in bundle[:3])
    return DatasetBundle(*guarded, num_classes=bundle.num_classes, in_channels=bundle.in_channels)


def training_loader(dataset: Dataset, data: DataConfig, seed: int) -> DataLoader:
    """The in-worker loader of contrastive items (``data.ingest = loader``): shuffled with a
    ``seed``-ed generator, ``data.batch_size_per_worker`` items a batch, last partial dropped."""
    return DataLoader(
        dataset,
        batch_size=data.batch_size_per_worker,
        shuffle=True,
        drop_last=True,
        num_workers=data.loader_workers,
        generator=torch.Generator().manual_seed(seed),
    )


# Settings a data set cannot do without, by name.
_REQUIRED = {
    "synthetic": ("num_items", "item_shape", "num_classes"),
    **{name: ("root",) for name in ("imagefolder", "cub200", "cars196", "sop", "parquet")},
    **{name: ("root",) for name in ("cifar10", "cifar100", "stl10")},
}
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
        (
            "ingest",
            data.ingest == "loader" or data.name == "parquet",
            "ray_data streams Parquet files only (data=parquet)",
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
    for key in _REQUIRED.get(data.name, ()):
        if getattr(data, key) is None:
            raise ValueError(f"data.{key} is required for data set {data.name!r}")
