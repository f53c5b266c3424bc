"""Columnar image data sets for data too big for one machine.

A data set is a folder of Parquet files (``part-00000.parquet``, ...) with two columns:
``image`` (binary: encoded PNG/JPEG bytes) and ``label`` (int64). Write one from any
(image, label) source with :func:`write_parquet_dataset`, read it map-style on one machine with
:class:`ParquetImageDataset`, or stream it across a Ray cluster with :func:`read_ray_dataset`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import to_pil_image

from raycl.data.builder import (
    SOURCE_SPLIT,
    DatasetBundle,
    DatasetSpec,
    assemble,
    require_root,
    split_dirs,
)
from raycl.data.transforms import IMAGENET
from raycl.errors import DataError, first_line
from raycl.schema import DataConfig

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "PARQUET",
    "SCHEMA",
    "ParquetImageDataset",
    "decode_image_bytes",
    "encode_image",
    "read_ray_dataset",
    "write_parquet_dataset",
]

SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64())])


def encode_image(image: Any, image_format: str = "PNG") -> bytes:
    """Encode a PIL image, image tensor ``(C, H, W)`` or array ``(H, W[, C])`` to bytes.

    Already-encoded ``bytes`` pass through unchanged.
    """
    if isinstance(image, bytes):
        return image
    if isinstance(image, torch.Tensor):
        image = to_pil_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def decode_image_bytes(data: bytes) -> Image.Image:
    """Decode PNG/JPEG bytes to an RGB PIL image."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def write_parquet_dataset(
    images: Iterable[Any],
    labels: Iterable[int],
    path: str | Path,
    *,
    rows_per_file: int = 10_000,
    row_group_size: int = 256,
    image_format: str = "PNG",
) -> list[Path]:
    """Write paired ``images`` and ``labels`` as Parquet files under the folder ``path``.

    Images are anything :func:`encode_image` takes; both iterables are streamed and must
    have the same length. Row groups of ``row_group_size`` rows keep random access cheap for
    :class:`ParquetImageDataset`. Returns the files written, in order.
    """
    if rows_per_file < 1 or row_group_size < 1:
        raise ValueError("rows_per_file and row_group_size must be >= 1")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.parquet")):
        raise FileExistsError(f"'{out}' already holds .parquet files; write to an empty folder")
    rows = zip(images, labels, strict=True)
    files: list[Path] = []
    while chunk := list(itertools.islice(rows, rows_per_file)):
        table = pa.table(
            {
                "image": [encode_image(image, image_format) for image, _ in chunk],
                "label": [int(label) for _, label in chunk],
            },
            schema=SCHEMA,
        )
        files.append(out / f"part-{len(files):05d}.parquet")
        pq.write_table(table, files[-1], row_group_size=row_group_size)
    if not files:
        raise ValueError("no images to write")
    return files


def _parquet_files(path_or_files: str | Path | Iterable[str | Path]) -> list[Path]:
    """The sorted ``*.parquet`` files of a folder, a single file, or an explicit file list."""
    if isinstance(path_or_files, str | Path):
        path = Path(path_or_files)
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    else:
        files = [Path(f) for f in path_or_files]
    if not files:
        raise FileNotFoundError(f"no .parquet files in '{path_or_files}'")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"Parquet file(s) not found: {', '.join(missing)}")
    return files


@lru_cache(maxsize=2)
def _read_images(file: Path, row_group: int) -> pa.ChunkedArray:
    """The ``image`` column of one row group (cached per process for sequential reads)."""
    return pq.ParquetFile(file).read_row_group(row_group, columns=["image"]).column("image")


class ParquetImageDataset(Dataset):
    """Map-style data set over Parquet image files; items are ``(transform(image), label)``.

    Only the ``label`` column and file footers are read up front; images are read one row
    group at a time and decoded to RGB PIL images (``in_channels`` is always 3).
    """

    def __init__(
        self,
        path_or_files: str | Path | Iterable[str | Path],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.files = _parquet_files(path_or_files)
        self.transform = transform
        self.targets: list[int] = []
        self._groups: list[tuple[Path, int]] = []
        self._file_starts: dict[Path, int] = {}
        sizes: list[int] = []
        for file in self.files:
            try:
                parquet = pq.ParquetFile(file)
                labels = parquet.read(columns=["label"]).column("label").to_pylist()
            except (pa.ArrowException, OSError, KeyError) as err:
                columns = _columns(file)
                problem = (
                    f"has no 'label' column (columns: {columns})"
                    if columns is not None and "label" not in columns
                    else f"is not a readable Parquet file ({first_line(err)})"
                )
                raise DataError(f"data: {file} {problem}") from None
            self._file_starts[file] = len(self.targets)
            self.targets.extend(labels)
            for group in range(parquet.num_row_groups):
                self._groups.append((file, group))
                sizes.append(parquet.metadata.row_group(group).num_rows)
        self._group_starts = np.cumsum([0, *sizes])[:-1]
        self.classes = sorted(set(self.targets))

    def item_source(self, index: int) -> str:
        """Where item ``index`` is stored: its file and row."""
        group = int(np.searchsorted(self._group_starts, index, side="right")) - 1
        file, _ = self._groups[group]
        return f"{file} row {index - self._file_starts[file]}"

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        group = int(np.searchsorted(self._group_starts, index, side="right")) - 1
        data = _read_images(*self._groups[group])[index - int(self._group_starts[group])]
        image = decode_image_bytes(data.as_py())
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _columns(file: Path) -> list[str] | None:
    """The column names in ``file``'s footer, or None when even the footer is unreadable."""
    try:
        return pq.read_schema(file).names
    except (pa.ArrowException, OSError):
        return None


def read_ray_dataset(path: str | Path, **read_kwargs: Any) -> ray.data.Dataset:
    """Stream the Parquet data set at ``path`` (local or remote URI) as a Ray Dataset.

    Rows keep the raw columns (``image`` bytes, ``label``); decode them in ``map_batches``
    with :func:`decode_image_bytes`.
    """
    import ray.data

    return ray.data.read_parquet(str(path), **read_kwargs)


def build_parquet(data: DataConfig, seed: int) -> DatasetBundle:
    """``parquet``: ``root/train`` and ``root/test`` (or ``root/val``) folders of Parquet files
    (RGB)."""
    folder = split_dirs(require_root(data))
    datasets = assemble(
        data,
        lambda split, transform: ParquetImageDataset(folder[SOURCE_SPLIT[split]], transform),
        *IMAGENET.transforms(data.image_size),
    )
    num_classes = 1 + max(max(datasets[1].targets), max(datasets[2].targets))
    return DatasetBundle(*datasets, num_classes=num_classes, in_channels=3)


PARQUET = DatasetSpec(build_parquet, required=("root",), recipe=IMAGENET)
