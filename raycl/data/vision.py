"""Real image data sets through torchvision.

* :func:`open_torchvision` opens a torchvision data set class (``CIFAR10``, ``CIFAR100``,
  ``STL10``, ...) in its own on-disk format, failing with a one-line message when the files
  are absent and ``download`` is off.
* :func:`image_folder` opens an ``ImageFolder`` tree (one sub-folder of images per class).
* :class:`ClassSplitImageFolder` is the class-disjoint split of deep metric learning
  (CUB-200-2011, Cars196, Stanford Online Products arranged as one folder per class).

The data sets built on them: ``cifar10``, ``cifar100``, ``stl10`` (torchvision's files),
``imagefolder`` (train/test trees) and ``cub200``, ``cars196``, ``sop`` (one tree split by
class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets import ImageFolder, VisionDataset

from raycl.data.builder import (
    SOURCE_SPLIT,
    DatasetBundle,
    DatasetSpec,
    assemble,
    require_root,
    split_dirs,
)
from raycl.data.transforms import IMAGENET, Recipe
from raycl.schema import DataConfig

__all__ = [
    "CARS196",
    "CIFAR10",
    "CIFAR100",
    "CUB200",
    "IMAGEFOLDER",
    "SOP",
    "STL10",
    "ClassSplitImageFolder",
    "image_folder",
    "open_torchvision",
]

D = TypeVar("D", bound=VisionDataset)


def open_torchvision(cls: type[D], root: str | Path, *, download: bool = False, **kwargs: Any) -> D:
    """Instantiate ``cls(root=root, download=download, **kwargs)``.

    ``cls`` is a torchvision data set class with a ``base_folder`` (its folder under
    ``root``). Without ``download`` a missing folder raises ``FileNotFoundError``; files that
    are present but fail torchvision's md5 check raise torchvision's own ``RuntimeError``.
    """
    if not download and not (Path(root) / cls.base_folder).is_dir():
        raise FileNotFoundError(
            f"{cls.__name__} not found: no '{cls.base_folder}' folder under '{root}'; "
            "pass download=true to fetch it"
        )
    return cls(root=root, download=download, **kwargs)


def _require_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder '{path}' does not exist")
    return path


def image_folder(root: str | Path, transform: Callable[[Any], Any] | None = None) -> ImageFolder:
    """An ``ImageFolder`` over ``root/<class>/<image>``; a missing ``root`` fails clearly."""
    root = _require_dir(root)
    try:
        return ImageFolder(root, transform=transform)
    except FileNotFoundError as err:  # no class folders, or folders without images
        raise FileNotFoundError(f"image folder '{root}' holds no images ({err})") from None


class ClassSplitImageFolder(ImageFolder):
    """One side of a class-disjoint split of an ``ImageFolder`` tree (deep metric learning).

    Class folders are sorted by name; the first ``num_train_classes`` form the ``train``
    split and the rest the ``test`` split, e.g. CUB-200-2011 100/100, Cars196 98/98 and
    Stanford Online Products 11318/11316. Name the folders so that sorting gives the official
    class order (CUB's ``001.Black_footed_Albatross`` does; zero-padded class ids always do).
    Labels are re-indexed from 0 within each split.
    """

    splits = ("train", "test")

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_train_classes: int,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"split must be one of {list(self.splits)}, got {split!r}")
        self.split = split
        self.num_train_classes = num_train_classes
        super().__init__(_require_dir(root), transform=transform)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        """The sorted classes of this split and their split-local indices."""
        classes, _ = super().find_classes(directory)
        n = self.num_train_classes
        if not 0 < n < len(classes):
            raise ValueError(
                f"num_train_classes must be in [1, {len(classes) - 1}] for the {len(classes)} "
                f"classes in '{directory}', got {n}"
            )
        kept = classes[:n] if self.split == "train" else classes[n:]
        return kept, {name: index for index, name in enumerate(kept)}


# --- the data sets ---------------------------------------------------------------------------


def build_torchvision(
    cls: type[VisionDataset],
    split_kwargs: dict[str, dict[str, Any]],
    recipe: Recipe,
    num_classes: int,
    data: DataConfig,
    seed: int,
) -> DatasetBundle:
    """``cifar10``, ``cifar100``: torchvision's python pickles under ``root``, 32x32.
    ``stl10``: torchvision's binaries under ``root``; contrastive training on train+unlabeled
    (label -1 for unlabeled images), evaluation on train/test; 96x96."""
    root = require_root(data)

    def open_split(split: str, transform: Callable) -> Dataset:
        return open_torchvision(
            cls, root, download=data.download, transform=transform, **split_kwargs[split]
        )

    splits = assemble(data, open_split, *recipe.transforms(data.image_size))
    return DatasetBundle(*splits, num_classes=num_classes, in_channels=3)


def _torchvision_set(
    cls: type[VisionDataset],
    split_kwargs: dict[str, dict[str, Any]],
    recipe: Recipe,
    num_classes: int,
) -> DatasetSpec:
    build = partial(build_torchvision, cls, split_kwargs, recipe, num_classes)
    return DatasetSpec(build, required=("root",), recipe=recipe)


def build_imagefolder(data: DataConfig, seed: int) -> DatasetBundle:
    """``imagefolder``: ``root/train`` and ``root/test`` (or ``root/val``) ImageFolder trees."""
    folder = split_dirs(require_root(data))
    splits = assemble(
        data,
        lambda split, transform: image_folder(folder[SOURCE_SPLIT[split]], transform),
        *IMAGENET.transforms(data.image_size),
    )
    return DatasetBundle(*splits, num_classes=len(splits[1].classes), in_channels=3)


def build_class_split(default_train_classes: int, data: DataConfig, seed: int) -> DatasetBundle:
    """``cub200``, ``cars196``, ``sop``: one ImageFolder tree at ``root`` split by class (first
    ``default_train_classes`` sorted classes train, the rest test; ``num_train_classes``
    overrides); ``num_classes`` counts the test classes (as NMI / recall use)."""
    root = require_root(data)
    num_train = data.num_train_classes or default_train_classes
    splits = assemble(
        data,
        lambda split, transform: ClassSplitImageFolder(
            root, SOURCE_SPLIT[split], num_train, transform
        ),
        *IMAGENET.transforms(data.image_size),
    )
    return DatasetBundle(*splits, num_classes=len(splits[2].classes), in_channels=3)


def _class_split_set(default_train_classes: int) -> DatasetSpec:
    build = partial(build_class_split, default_train_classes)
    return DatasetSpec(build, required=("root",), recipe=IMAGENET)


_CIFAR_SPLITS = {"contrastive": {"train": True}, "train": {"train": True}, "test": {"train": False}}
_STL10_SPLITS = {
    "contrastive": {"split": "train+unlabeled"},
    "train": {"split": "train"},
    "test": {"split": "test"},
}
_CIFAR10_RECIPE = Recipe(
    size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    strength=0.5,
    blur_p=0.0,
    crop_fraction=1.0,
)
_CIFAR100_RECIPE = replace(
    _CIFAR10_RECIPE, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)
)
_STL10_RECIPE = Recipe(96, IMAGENET.mean, IMAGENET.std, crop_fraction=1.0)

CIFAR10 = _torchvision_set(datasets.CIFAR10, _CIFAR_SPLITS, _CIFAR10_RECIPE, 10)
CIFAR100 = _torchvision_set(datasets.CIFAR100, _CIFAR_SPLITS, _CIFAR100_RECIPE, 100)
STL10 = _torchvision_set(datasets.STL10, _STL10_SPLITS, _STL10_RECIPE, 10)
IMAGEFOLDER = DatasetSpec(build_imagefolder, required=("root",), recipe=IMAGENET)
CUB200 = _class_split_set(100)
CARS196 = _class_split_set(98)
SOP = _class_split_set(11318)
