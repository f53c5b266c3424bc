"""Image–caption pairs for two-tower (CLIP-style) training, in the files the standard download
tools write, so a data set fetched with img2dataset or from the Hugging Face hub trains as is.

- Parquet (:class:`ParquetPairs`): img2dataset's output (``key``, ``jpg``, ``caption``, ...)
  or a Hugging Face image data set (``image`` a struct ``{bytes, path}``, ``caption`` or
  ``text``). Columns are found by name (:data:`IMAGE_COLUMNS`, :data:`CAPTION_COLUMNS`) or
  given; a label column is optional.
- WebDataset tar shards (:class:`WebDatasetPairs`): members ``<key>.jpg`` (or ``.png``,
  ``.jpeg``, ``.webp``) and ``<key>.txt``, optionally ``<key>.cls`` (an integer label).

An item is ``((transform(RGB image), caption), label)``, label -1 where there is none. A bad
item (image bytes that do not decode, no caption) raises from ``__getitem__``, so
:class:`~raycl.data.guard.GuardedDataset` applies ``data.on_bad_item``. :func:`read_pairs_ray`
streams the same pairs as a Ray Dataset of raw rows that :func:`decode_pair_row` decodes on
the worker.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from raycl.data.parquet import decode_image_bytes, encode_image
from raycl.errors import DataError, first_line

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "CAPTION_COLUMNS",
    "IMAGE_COLUMNS",
    "LAYOUTS",
    "ParquetPairs",
    "WebDatasetPairs",
    "decode_pair_row",
    "open_pairs",
    "read_pairs_ray",
    "write_parquet_pairs",
    "write_webdataset_shard",
]

IMAGE_COLUMNS = ("jpg", "png", "jpeg", "webp", "image")  # the first present is the image
CAPTION_COLUMNS = ("caption", "txt", "text")  # the first present is the caption
IMAGE_EXTENSIONS = ("jpg", "png", "jpeg", "webp")  # WebDataset image members, first wins
NO_LABEL = -1
PARQUET_LAYOUTS = ("img2dataset", "huggingface")  # what write_parquet_pairs writes
MAX_OPEN_SHARDS = 32  # tar files a process keeps open (least recently read closed first)
_EXTENSION = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

Transform = Callable[[Image.Image], torch.Tensor]
Item = tuple[tuple[torch.Tensor, str], int]


def _pair(image: Any, caption: Any, label: int, transform: Transform) -> Item:
    """One item from raw values: image bytes (or a Hugging Face ``{bytes, path}`` struct)."""
    if isinstance(image, dict):  # Hugging Face Image feature
        path, image = image.get("path"), image.get("bytes")
        if image is None:
            raise ValueError(f"image has no bytes (path only: {path!r})")
    if not isinstance(image, bytes):
        raise ValueError("image is missing")
    if not isinstance(caption, str):
        raise ValueError("caption is missing")
    return (transform(decode_image_bytes(image)), caption), label


# --- Parquet ------------------------------------------------------------------------------


def _is_image(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        return index >= 0 and _is_image(kind.field(index).type)
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _column(
    schema: pa.Schema,
    field: str,
    given: str | None,
    candidates: tuple[str, ...],
    accepts: Callable[[pa.DataType], bool],
    what: str,
    where: Any,
) -> str:
    """The column ``data.<field>`` names (or the first of ``candidates``), checked for type."""
    if given is None:
        name = next((name for name in candidates if name in schema.names), None)
        if name is None:
            raise DataError(
                f"data.{field}: none of {list(candidates)} is a column of {where} "
                f"(columns: {schema.names}); set data.{field}"
            )
    elif given not in schema.names:
        raise DataError(f"data.{field}: no column {given!r} in {where} (columns: {schema.names})")
    else:
        name = given
    kind = schema.field(name).type
    if not accepts(kind):
        raise DataError(f"data.{field}: column {name!r} of {where} is {kind}, not {what}")
    return name


def _columns(
    schema: pa.Schema,
    where: Any,
    image_column: str | None,
    caption_column: str | None,
    label_column: str | None,
) -> tuple[str, str, str | None]:
    """The (image, caption, label) columns of a Parquet schema."""
    image = _column(
        schema, "image_column", image_column, IMAGE_COLUMNS, _is_image, "image bytes", where
    )
    caption = _column(
        schema, "caption_column", caption_column, CAPTION_COLUMNS, _is_text, "a string", where
    )
    label = None
    if label_column is not None:
        label = _column(
            schema, "label_column", label_column, (), pa.types.is_integer, "an integer", where
        )
    return image, caption, label


@lru_cache(maxsize=2)
def _read_pairs(file: Path, row_group: int, columns: tuple[str, str]) -> pa.Table:
    """The image and caption columns of one row group (cached per process)."""
    return pq.ParquetFile(file).read_row_group(row_group, columns=list(columns))


class ParquetPairs(Dataset):
    """Map-style image–caption pairs over Parquet files (img2dataset or Hugging Face layout).

    Only footers and the label column are read up front; images and captions are read one
    row group at a time and decoded per item. Peak memory: two row groups' image and caption
    columns per process (the cache), so shuffled access over large row groups re-reads them;
    stream with :func:`read_pairs_ray` instead.
    """

    def __init__(
        self,
        files: list[Path],
        transform: Transform,
        image_column: str | None = None,
        caption_column: str | None = None,
        label_column: str | None = None,
    ) -> None:
        if not files:
            raise DataError("data.root: no *.parquet files given")
        self.files = [Path(file) for file in files]
        self.transform = transform
        self.targets: list[int] = []
        self._columns: list[tuple[str, str]] = []
        self._groups: list[tuple[int, int]] = []  # (file index, row group)
        self._file_starts: list[int] = []
        sizes: list[int] = []
        for index, file in enumerate(self.files):
            try:
                parquet = pq.ParquetFile(file)
            except (pa.ArrowException, OSError) as err:
                raise DataError(
                    f"data: {file} is not a readable Parquet file ({first_line(err)})"
                ) from None
            image, caption, label = _columns(
                parquet.schema_arrow, file, image_column, caption_column, label_column
            )
            self._columns.append((image, caption))
            self._file_starts.append(len(self.targets))
            if label is None:
                self.targets.extend([NO_LABEL] * parquet.metadata.num_rows)
            else:
                labels = parquet.read(columns=[label]).column(label).fill_null(NO_LABEL)
                self.targets.extend(labels.to_pylist())
            for group in range(parquet.num_row_groups):
                self._groups.append((index, group))
                sizes.append(parquet.metadata.row_group(group).num_rows)
        self._group_starts = np.cumsum([0, *sizes])[:-1]

    def _locate(self, index: int) -> tuple[int, int, int]:
        """(file index, row group, row in the group) of item ``index``."""
        group = int(np.searchsorted(self._group_starts, index, side="right")) - 1
        return *self._groups[group], index - int(self._group_starts[group])

    def item_source(self, index: int) -> str:
        """Where item ``index`` is stored: its file and row."""
        file, _, _ = self._locate(index)
        return f"{self.files[file]} row {index - self._file_starts[file]}"

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        file, group, row = self._locate(index)
        image, caption = self._columns[file]
        table = _read_pairs(self.files[file], group, (image, caption))
        return _pair(
            table.column(image)[row].as_py(),
            table.column(caption)[row].as_py(),
            self.targets[index],
            self.transform,
        )


# --- WebDataset ---------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str] | None:
    """A tar member's (sample key, extension): the key ends at the first dot of the base
    name, as WebDataset (and Ray's reader) group members."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not stem or not dot:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension


class WebDatasetPairs(Dataset):
    """Map-style image–caption pairs over uncompressed WebDataset tar shards.

    One pass over each shard's headers (and its ``.cls`` members) at construction builds the
    index: per sample, the byte ranges of its image and caption members. Items are read with
    ``os.pread`` from files each process opens when it first needs them (so DataLoader workers
    and Ray tasks may share nothing but the index, which pickles). Memory: the index, about 40
    bytes and a key per sample.
    """

    def __init__(self, files: list[Path], transform: Transform) -> None:
        if not files:
            raise DataError("data.root: no *.tar files given")
        self.files = [Path(file) for file in files]
        self.transform = transform
        self.keys: list[str] = []
        self.targets: list[int] = []
        self._bad_labels: dict[int, str] = {}
        rows: list[tuple[int, int, int, int, int]] = []
        for shard, file in enumerate(self.files):
            for key, members in self._scan(file).items():
                image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), (-1, -1))
                caption = members.get("txt", (-1, -1))
                if image[0] < 0 and caption[0] < 0:
                    continue  # neither image nor caption (e.g. a lone .json): not a pair
                label = NO_LABEL
                if "cls" in members:
                    text = self._read(shard, *members["cls"])
                    try:
                        label = int(text)
                    except ValueError:
                        self._bad_labels[len(self.keys)] = text[:40].decode(errors="replace")
                self.keys.append(key)
                self.targets.append(label)
                rows.append((shard, *image, *caption))
        self._members = np.asarray(rows, dtype=np.int64).reshape(-1, 5)

    @staticmethod
    def _scan(file: Path) -> dict[str, dict[str, tuple[int, int]]]:
        """Per sample key in the shard, its members' extension → (data offset, size)."""
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(file, mode="r:") as tar:
                for member in tar:
                    parts = _split_member(member.name) if member.isreg() else None
                    if parts is not None:
                        key, extension = parts
                        samples.setdefault(key, {})[extension] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as err:
            raise DataError(
                f"data: {file} is not a readable uncompressed tar file ({first_line(err)})"
            ) from None
        return samples

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of shard ``shard``, opening it in this process."""
        handles = self.__dict__.setdefault("_handles", OrderedDict())
        handle: BinaryIO | None = handles.pop(shard, None)
        if handle is None:
            handle = open(self.files[shard], "rb")  # noqa: SIM115 - kept open across reads
            if len(handles) >= MAX_OPEN_SHARDS:
                handles.popitem(last=False)[1].close()
        handles[shard] = handle
        data = os.pread(handle.fileno(), size, offset)  # no shared file position: fork-safe
        if len(data) != size:
            raise OSError(f"{self.files[shard]} is truncated")
        return data

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name != "_handles"}

    def item_source(self, index: int) -> str:
        """Where item ``index`` is stored: its shard and sample key."""
        return f"{self.files[int(self._members[index, 0])]} sample {self.keys[index]}"

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        if index in self._bad_labels:
            raise ValueError(f".cls is not an integer: {self._bad_labels[index]!r}")
        shard, image_offset, image_size, caption_offset, caption_size = self._members[index]
        image = self._read(shard, image_offset, image_size) if image_offset >= 0 else None
        caption = None
        if caption_offset >= 0:
            caption = self._read(shard, caption_offset, caption_size).decode("utf-8")
        return _pair(image, caption, self.targets[index], self.transform)


# --- layouts ------------------------------------------------------------------------------


LAYOUTS: dict[str, tuple[str, type[Dataset]]] = {
    "parquet": ("parquet", ParquetPairs),
    "webdataset": ("tar", WebDatasetPairs),
}
"""``data.layout`` → (file extension, map-style data set)."""


def _check_layout(layout: str) -> str:
    """The file extension of ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"data.layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout][0]


def _given_columns(**columns: str | None) -> dict[str, str]:
    return {name: value for name, value in columns.items() if value is not None}


def _parquet_only(layout: str, columns: dict[str, str]) -> None:
    if columns and layout != "parquet":
        raise ValueError(f"data.{next(iter(columns))} applies to data.layout=parquet only")


def open_pairs(
    root: Path,
    layout: str,
    transform: Transform,
    image_column: str | None = None,
    caption_column: str | None = None,
    label_column: str | None = None,
) -> Dataset:
    """The map-style pairs of the sorted ``*.parquet`` or ``*.tar`` files in the folder
    ``root`` (not its subfolders, so that splits in sibling folders stay apart)."""
    extension = _check_layout(layout)
    columns = _given_columns(
        image_column=image_column, caption_column=caption_column, label_column=label_column
    )
    _parquet_only(layout, columns)
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.glob(f"*.{extension}"))
    if not files:
        raise DataError(f"data.root: no *.{extension} files under {root}")
    return LAYOUTS[layout][1](files, transform, **columns)


# --- Ray Data -----------------------------------------------------------------------------


def _parquet_rows(
    batch: pa.Table, image: str, caption: str, label: str | None, path: bool
) -> pa.Table:
    """``map_batches``: a Parquet batch → ``image`` (bytes), ``caption``, ``label`` (-1: none)."""
    images = batch.column(image)
    if pa.types.is_struct(images.type):
        images = pc.struct_field(images, "bytes")
    labels = (
        batch.column(label).cast(pa.int64()).fill_null(NO_LABEL)
        if label is not None
        else pa.array(np.full(batch.num_rows, NO_LABEL, dtype=np.int64))
    )
    rows = {
        "image": images.cast(pa.binary()),
        "caption": batch.column(caption).cast(pa.string()),
        "label": labels,
    }
    if path:
        rows["path"] = batch.column("path")
    return pa.table(rows)


def _webdataset_row(row: dict[str, Any], path: bool) -> dict[str, Any]:
    """``map``: a raw WebDataset sample → ``image`` (bytes), ``caption``, ``label``.

    Never raises: a missing or non-UTF-8 caption is None, a ``.cls`` that is not an integer
    makes the label None, and :func:`decode_pair_row` raises for them where ``on_bad_item``
    applies.
    """
    image = next((row[e] for e in IMAGE_EXTENSIONS if isinstance(row.get(e), bytes)), None)
    caption, label = row.get("txt"), row.get("cls")
    try:
        caption = caption.decode("utf-8") if isinstance(caption, bytes) else None
    except UnicodeDecodeError:
        caption = None
    try:
        label = int(label) if isinstance(label, bytes) else NO_LABEL
    except ValueError:
        label = None
    pair = {"image": image, "caption": caption, "label": label}
    if path:
        pair["path"] = f"{row['__url__']}:{row['__key__']}"
    return pair


def _read_parquet_ray(
    paths: Any, columns: dict[str, str], include_paths: bool, read_kwargs: dict[str, Any]
) -> ray.data.Dataset:
    import ray.data

    source = ray.data.read_parquet(paths, include_paths=include_paths, **read_kwargs)
    image, caption, label = _columns(
        source.schema().base_schema,
        paths,
        columns.get("image_column"),
        columns.get("caption_column"),
        columns.get("label_column"),
    )
    keep = [image, caption, *([label] if label else []), *(["path"] if include_paths else [])]
    return source.select_columns(keep).map_batches(
        _parquet_rows,
        fn_kwargs={"image": image, "caption": caption, "label": label, "path": include_paths},
        batch_format="pyarrow",
    )


def _read_webdataset_ray(
    paths: Any, columns: dict[str, str], include_paths: bool, read_kwargs: dict[str, Any]
) -> ray.data.Dataset:
    import ray.data

    read_kwargs.setdefault("file_extensions", ["tar"])
    source = ray.data.read_webdataset(paths, decoder=None, **read_kwargs)  # raw bytes
    return source.map(_webdataset_row, fn_kwargs={"path": include_paths})


_RAY_READERS = {"parquet": _read_parquet_ray, "webdataset": _read_webdataset_ray}


def read_pairs_ray(
    paths: str | Path | Sequence[str | Path],
    layout: str,
    image_column: str | None = None,
    caption_column: str | None = None,
    label_column: str | None = None,
    include_paths: bool = False,
    **read_kwargs: Any,
) -> ray.data.Dataset:
    """The pairs at ``paths`` (files or folders, local or URIs) as a Ray Dataset of rows
    ``{"image": bytes, "caption": str, "label": int}`` (and ``"path"``, the file and for
    WebDataset the sample key, with ``include_paths``); images stay encoded, for
    :func:`decode_pair_row` to decode where the rows are consumed.

    ``read_kwargs`` go to ``ray.data.read_parquet`` or ``ray.data.read_webdataset``. Parquet
    columns are found in the schema as :class:`ParquetPairs` finds them. WebDataset rows with a
    missing caption or image, or a ``.cls`` that is not an integer, come through with None
    there, and :func:`decode_pair_row` raises for them.
    """
    _check_layout(layout)
    columns = _given_columns(
        image_column=image_column, caption_column=caption_column, label_column=label_column
    )
    _parquet_only(layout, columns)
    sources = str(paths) if isinstance(paths, str | Path) else [str(p) for p in paths]
    return _RAY_READERS[layout](sources, columns, include_paths, dict(read_kwargs))


def decode_pair_row(row: dict[str, Any], transform: Transform) -> Item:
    """One row of :func:`read_pairs_ray` as an item ``((transform(image), caption), label)``;
    raises ValueError or OSError for a bad row, as the map-style data sets do."""
    label = row.get("label", NO_LABEL)
    if label is None:
        raise ValueError("label is not an integer")
    return _pair(row.get("image"), row.get("caption"), int(label), transform)


# --- writers (tests, benchmarks) ----------------------------------------------------------


def _encoded(
    images: Sequence[Image.Image], captions: Sequence[str], image_format: str
) -> list[bytes]:
    if len(captions) != len(images):
        raise ValueError(f"captions: {len(captions)} for {len(images)} images")
    if image_format not in _EXTENSION:
        raise ValueError(f"image_format must be one of {list(_EXTENSION)}, got {image_format!r}")
    return [encode_image(image.convert("RGB"), image_format) for image in images]


def _labels(labels: Sequence[int] | None, count: int) -> list[int] | None:
    if labels is not None and len(labels) != count:
        raise ValueError(f"labels: {len(labels)} for {count} images")
    return None if labels is None else [int(label) for label in labels]


def write_parquet_pairs(
    path: Path,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    labels: Sequence[int] | None = None,
    layout: str = "img2dataset",
    *,
    image_format: str = "JPEG",
    row_group_size: int = 256,
) -> Path:
    """Write one Parquet file of pairs as the tools do: ``img2dataset`` (``key``, ``url``,
    ``caption``, ``status``, ``width``, ``height`` and the image under its format's name,
    ``jpg`` for JPEG) or ``huggingface`` (``image`` a struct ``{bytes, path}``, ``text``, the
    features in the schema's ``huggingface`` metadata); ``label`` (int64) with ``labels``."""
    if layout not in PARQUET_LAYOUTS:
        raise ValueError(f"layout must be one of {list(PARQUET_LAYOUTS)}, got {layout!r}")
    encoded = _encoded(images, captions, image_format)
    labels = _labels(labels, len(images))
    extension = _EXTENSION[image_format]
    if layout == "img2dataset":
        columns: dict[str, Any] = {
            "key": pa.array([f"{i:09d}" for i in range(len(images))], pa.string()),
            "url": pa.nulls(len(images), pa.string()),
            "caption": pa.array(list(captions), pa.string()),
            "status": pa.array(["success"] * len(images), pa.string()),
            "width": pa.array([image.width for image in images], pa.int64()),
            "height": pa.array([image.height for image in images], pa.int64()),
            extension: pa.array(encoded, pa.binary()),
        }
        metadata = None
    else:
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        paths = [f"{i:09d}.{extension}" for i in range(len(images))]
        columns = {
            "image": pa.array(
                [{"bytes": b, "path": p} for b, p in zip(encoded, paths, strict=True)],
                image_type,
            ),
            "text": pa.array(list(captions), pa.string()),
        }
        features: dict[str, Any] = {
            "image": {"_type": "Image"},
            "text": {"dtype": "string", "_type": "Value"},
        }
        if labels is not None:
            features["label"] = {"dtype": "int64", "_type": "Value"}
        metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
    table = pa.table(columns, metadata=metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_webdataset_shard(
    path: Path,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    image_format: str = "JPEG",
) -> Path:
    """Write one uncompressed WebDataset tar shard: per sample ``<key>.jpg`` (the format's
    extension), ``<key>.txt`` (UTF-8) and with ``labels`` ``<key>.cls``, keys ``000000000``, ...
    in order, each sample's members adjacent (as the WebDataset format requires)."""
    encoded = _encoded(images, captions, image_format)
    labels = _labels(labels, len(images))
    extension = _EXTENSION[image_format]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w") as tar:
        for i, (image, caption) in enumerate(zip(encoded, captions, strict=True)):
            members = {extension: image, "txt": caption.encode("utf-8")}
            if labels is not None:
                members["cls"] = str(labels[i]).encode()
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{i:09d}.{suffix}")
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
    return path
