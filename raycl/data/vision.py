"""Real image data sets through torchvision.

* :func:`open_torchvision` opens a torchvision data set class (``CIFAR10``, ``CIFAR100``,
  ``STL10``, ...) in its own on-disk format, failing with a one-line message when the files
  are absent and ``download`` is off.
* :func:`image_folder` opens an ``ImageFolder`` tree (one sub-folder of images per class).
* :class:`ClassSplitImageFolder` is the class-disjoint split of deep metric learning
  (CUB-200-2011, Cars196, Stanford Online Products arranged as one folder per class).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torchvision.datasets import ImageFolder, VisionDataset

__all__ = ["ClassSplitImageFolder", "image_folder", "open_torchvision"]

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
    return ImageFolder(_require_dir(root), transform=transform)


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
