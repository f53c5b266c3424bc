"""MNIST-1D (Greydanus 2020): ten 1-D digit templates warped into 40-sample signals.

Generated locally by the ``mnist1d`` package's ``make_dataset`` with its documented default
arguments (``get_dataset_args()``: padding, scaling, translation, correlated and iid noise,
shear, 40 output samples, seed 42), changing only how many signals are drawn and how they are
split; never its ``get_dataset``, which downloads. Harder than the 8x8 digits: logistic
regression reaches ~32 %, raw-signal kNN ~60 %, a small CNN ~94 %. The generated arrays are
cached as ``.npy`` files under ``cache_dir/<key>/``, where the key hashes the generation
arguments: the same arguments give the same bytes, and no signal is generated twice.

Two-view augmentation (:class:`SignalAugment`), the same kinds of change MNIST-1D's own
construction applies to its templates, on a finished signal ``x`` of length ``L`` with
``t = (i − (L−1)/2) / L``:

1. remove the signal's own offset and linear trend (so the jitter below sets them);
2. circular shift by a uniform integer in ``[0, max_shift]`` samples;
3. scale the amplitude by ``1 + scale · (u − ½)``, ``u ~ U(0, 1)``;
4. add iid Gaussian noise of standard deviation ``noise``;
5. add a random slope ``a · t`` and offset ``b``, ``a ~ N(0, slope²)``, ``b ~ N(0, offset²)``.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from raycl.data.builder import SOURCE_SPLIT, DatasetBundle, DatasetSpec, assemble
from raycl.schema import DataConfig

__all__ = ["MNIST1D", "MNIST1DDataset", "Mnist1dSpec", "SignalAugment", "load_mnist1d"]

DEFAULT_CACHE = Path("~/.cache/raycl/mnist1d")
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Mnist1dSpec:
    """How many signals to generate and how to split them (everything else: the defaults)."""

    num_train: int = 5000
    num_test: int = 10000
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("num_train", "num_test"):
            if getattr(self, name) < 10:
                raise ValueError(f"mnist1d: {name} must be >= 10, got {getattr(self, name)}")

    @property
    def key(self) -> str:
        """A short hash of the generation arguments: the cache folder's name."""
        text = json.dumps({**asdict(self), "generator": "mnist1d.make_dataset"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _generate(spec: Mnist1dSpec) -> dict[str, np.ndarray]:
    """Run ``make_dataset`` with the documented defaults; the global RNGs are left as found."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    total = spec.num_train + spec.num_test
    # make_dataset draws num_samples // 10 signals per class, then shuffles and splits.
    args.num_samples = 10 * -(-total // 10)
    args.train_split = spec.num_train / args.num_samples
    args.seed = spec.seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {
        "x_train": data["x"][: spec.num_train].astype(np.float32),
        "y_train": data["y"][: spec.num_train].astype(np.int64),
        "x_test": data["x_test"][: spec.num_test].astype(np.float32),
        "y_test": data["y_test"][: spec.num_test].astype(np.int64),
    }


def load_mnist1d(spec: Mnist1dSpec, cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``spec``: read from the cache, or generated once and cached.

    The cache folder is written under a temporary name and renamed when complete, so
    concurrent workers never read a half-written cache.
    """
    root = Path(cache_dir or DEFAULT_CACHE).expanduser()
    folder = root / spec.key
    if not all((folder / f"{name}.npy").is_file() for name in _ARRAYS):
        arrays = _generate(spec)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=root))
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array)
        (staging / "spec.json").write_text(json.dumps(asdict(spec), sort_keys=True))
        try:
            staging.rename(folder)
        except OSError:  # another process finished first: keep its (identical) copy
            for file in staging.iterdir():
                file.unlink()
            staging.rmdir()
    return {name: np.load(folder / f"{name}.npy") for name in _ARRAYS}


class SignalAugment:
    """One random view of a signal ``(C, L)`` (the module docstring lists the steps)."""

    def __init__(
        self,
        max_shift: int = 10,
        scale: float = 0.4,
        noise: float = 0.05,
        slope: float = 0.04,
        offset: float = 0.3,
    ) -> None:
        self.max_shift, self.scale, self.noise = max_shift, scale, noise
        self.slope, self.offset = slope, offset

    def __call__(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        t = torch.arange(length, dtype=x.dtype) - (length - 1) / 2
        centred = x - x.mean(-1, keepdim=True)
        trend = (centred * t).sum(-1, keepdim=True) / (t * t).sum()
        x = centred - trend * t
        x = torch.roll(x, int(torch.randint(0, self.max_shift + 1, ())), dims=-1)
        x = x * (1 + self.scale * (torch.rand(()) - 0.5))
        x = x + self.noise * torch.randn_like(x)
        return x + self.slope * torch.randn(()) * t + self.offset * torch.randn(())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_shift={self.max_shift}, scale={self.scale}, "
            f"noise={self.noise}, slope={self.slope}, offset={self.offset})"
        )


class MNIST1DDataset(Dataset):
    """One split of MNIST-1D; items are ``(transform(signal), label)``, signal ``(1, 40)``.

    ``classes`` (optional) keeps only those labels, re-indexed from 0 in the given order
    (the class-disjoint split of deep metric learning).
    """

    def __init__(
        self,
        split: str,
        spec: Mnist1dSpec | None = None,
        transform: Callable[[Any], Any] | None = None,
        classes: list[int] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be one of ['train', 'test'], got {split!r}")
        arrays = load_mnist1d(spec or Mnist1dSpec(), cache_dir)
        signals, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if classes is not None:
            keep = np.isin(labels, classes)
            remap = {c: i for i, c in enumerate(classes)}
            signals, labels = signals[keep], np.array([remap[int(y)] for y in labels[keep]])
        self.data = torch.from_numpy(np.ascontiguousarray(signals)).unsqueeze(1)
        self.targets: list[int] = [int(y) for y in labels]
        self.classes = [str(c) for c in (classes if classes is not None else range(10))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        signal = self.data[index]
        if self.transform is not None:
            signal = self.transform(signal)
        return signal, self.targets[index]


def build_mnist1d(data: DataConfig, seed: int) -> DatasetBundle:
    """``mnist1d``: 1x40 signals, ``num_items`` training and ``num_test_items`` test signals
    (default 5,000 and 10,000), cached under ``root`` (default ``~/.cache/raycl/mnist1d``);
    ``num_train_classes`` gives the class-disjoint split (train on the first classes, test on
    the rest)."""
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
        source = SOURCE_SPLIT[split]
        classes = train_classes if source == "train" else test_classes
        return MNIST1DDataset(source, spec, transform, classes, cache)

    datasets = assemble(data, open_split, SignalAugment(), None)
    return DatasetBundle(*datasets, num_classes=len(datasets[2].classes), in_channels=1)


class SignalItem:
    """A raw MNIST-1D signal — ``make_dataset(...)["x"][i]``, 40 values — as the float32
    ``(1, 40)`` item the encoders take (a ``(1, 40)`` item passes as it is)."""

    def __call__(self, item: Any) -> torch.Tensor:
        signal = torch.as_tensor(item, dtype=torch.float32)
        return signal if signal.ndim == 2 else signal.reshape(1, -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


MNIST1D = DatasetSpec(
    build_mnist1d,
    evaluation=SignalItem,
    raw_item="a signal of 40 floats (mnist1d's make_dataset(...)['x'][i])",
)
