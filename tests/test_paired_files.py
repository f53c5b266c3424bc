"""Image–caption pairs in img2dataset's and Hugging Face's Parquet layouts and in WebDataset
tar shards: the map-style readers give back what the writers wrote, bad items raise where
``data.on_bad_item`` applies, and Ray Data streams the same pairs."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raycl.data.guard import GuardedDataset
from raycl.data.paired_files import (
    ParquetPairs,
    WebDatasetPairs,
    decode_pair_row,
    open_pairs,
    read_pairs_ray,
    write_parquet_pairs,
    write_webdataset_shard,
)
from raycl.errors import DataError

COUNT = 5
CAPTIONS = ["a red square", "ünïcödé, comma", "", "line\nbreak", "the fifth"]
LABELS = [3, 0, 7, 3, 1]
JPEG_TOLERANCE = 0.05  # largest per-pixel error (of 1) after JPEG, for these smooth images


def _image(i: int, size: int = 16) -> Image.Image:
    """A smooth image (JPEG keeps it close), different for each ``i``."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([40 * i + 4 * x, 220 - 40 * i + 0 * y, 6 * y + 3 * x], axis=-1)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


IMAGES = [_image(i) for i in range(COUNT)]


def pixels(image: Image.Image) -> torch.Tensor:
    """The transform: an RGB image as floats (C, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def _assert_items(dataset, image_format: str, labels: list[int]) -> None:
    """Every item is what was written: captions exact, pixels exact (PNG) or close (JPEG)."""
    assert len(dataset) == COUNT and dataset.targets == labels
    tolerance = JPEG_TOLERANCE if image_format == "JPEG" else 0.0
    for i in [4, 0, 2, 1, 3]:  # out of order, across files and row groups
        (image, caption), label = dataset[i]
        assert caption == CAPTIONS[i] and label == labels[i]
        assert torch.allclose(image, pixels(IMAGES[i]), atol=tolerance, rtol=0)
    with pytest.raises(IndexError):
        dataset[COUNT]


def _write_parquet(root: Path, layout: str, image_format: str, labels=LABELS) -> Path:
    """The pairs in two files (3 + 2 rows, row groups of 2)."""
    for name, part in (("00000", slice(0, 3)), ("00001", slice(3, COUNT))):
        write_parquet_pairs(
            root / f"{name}.parquet",
            IMAGES[part],
            CAPTIONS[part],
            None if labels is None else labels[part],
            layout,
            image_format=image_format,
            row_group_size=2,
        )
    return root


def _write_shards(root: Path, image_format: str, labels=LABELS) -> Path:
    for name, part in (("00000", slice(0, 2)), ("00001", slice(2, COUNT))):
        write_webdataset_shard(
            root / f"{name}.tar",
            IMAGES[part],
            CAPTIONS[part],
            None if labels is None else labels[part],
            image_format=image_format,
        )
    return root


# --- the layouts as written ---------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
@pytest.mark.parametrize("layout", ["img2dataset", "huggingface"])
def test_parquet_layouts_read_back_what_was_written(
    tmp_path: Path, layout: str, image_format: str
) -> None:
    _write_parquet(tmp_path, layout, image_format)
    image = {"JPEG": "jpg", "PNG": "png"}[image_format]  # img2dataset names it by format
    columns = {
        "img2dataset": ["key", "url", "caption", "status", "width", "height", image, "label"],
        "huggingface": ["image", "text", "label"],
    }
    assert pq.read_schema(tmp_path / "00000.parquet").names == columns[layout]
    dataset = open_pairs(tmp_path, "parquet", pixels, label_column="label")  # columns found
    assert isinstance(dataset, ParquetPairs)
    _assert_items(dataset, image_format, LABELS)
    assert dataset.item_source(4) == f"{tmp_path / '00001.parquet'} row 1"


def test_huggingface_image_struct_keeps_its_path(tmp_path: Path) -> None:
    file = write_parquet_pairs(
        tmp_path / "train.parquet", IMAGES[:1], CAPTIONS[:1], None, "huggingface"
    )
    image = pq.read_table(file).column("image")[0].as_py()
    assert image["path"] == "000000000.jpg" and image["bytes"][:2] == b"\xff\xd8"  # JPEG
    assert b"huggingface" in pq.read_schema(file).metadata


def test_labels_default_to_minus_one(tmp_path: Path) -> None:
    parquet = open_pairs(
        _write_parquet(tmp_path / "p", "img2dataset", "PNG", None), "parquet", pixels
    )
    shards = open_pairs(_write_shards(tmp_path / "w", "PNG", None), "webdataset", pixels)
    for dataset in (parquet, shards):
        _assert_items(dataset, "PNG", [-1] * COUNT)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_webdataset_reads_back_what_was_written(tmp_path: Path, image_format: str) -> None:
    _write_shards(tmp_path, image_format)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        extension = {"JPEG": "jpg", "PNG": "png"}[image_format]
        assert tar.getnames() == [
            f"00000000{i}.{s}" for i in (0, 1) for s in (extension, "txt", "cls")
        ]
    dataset = open_pairs(tmp_path, "webdataset", pixels)
    assert isinstance(dataset, WebDatasetPairs)
    _assert_items(dataset, image_format, LABELS)
    assert dataset.item_source(2) == f"{tmp_path / '00001.tar'} sample 000000000"
    # the open shards stay behind: a pickled copy (a spawned worker, a Ray task) opens its own
    copy = pickle.loads(pickle.dumps(dataset))
    assert "_handles" in dataset.__dict__ and "_handles" not in copy.__dict__
    _assert_items(copy, image_format, LABELS)


# --- bad items and bad settings -----------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    IMAGES[i].save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_items_raise_for_the_guard(tmp_path: Path) -> None:
    table = pa.table(
        {
            "key": ["0", "1", "2", "3"],
            "jpg": [_png(0), b"not an image", _png(2), _png(3)[:60]],  # 3: truncated
            "caption": ["fine", "bad image", None, "truncated"],
        }
    )
    pq.write_table(table, tmp_path / "bad.parquet")
    parquet = ParquetPairs([tmp_path / "bad.parquet"], pixels)
    shard = _tar(
        tmp_path / "bad.tar",
        {
            "a.png": _png(0), "a.txt": b"fine",
            "b.png": b"not an image", "b.txt": b"bad image",
            "c.png": _png(2),  # no caption
            "d.txt": b"no image",
            "e.png": _png(4), "e.txt": b"\xff\xfe",  # not UTF-8
            "f.png": _png(1), "f.txt": b"bad label", "f.cls": b"seven",
            "g.json": b"{}",  # neither image nor caption: not a sample
        },
    )  # fmt: skip
    shards = WebDatasetPairs([shard], pixels)
    assert shards.keys == ["a", "b", "c", "d", "e", "f"]
    for dataset, bad in ((parquet, [1, 2, 3]), (shards, [1, 2, 3, 4, 5])):
        assert dataset[0][0][1] == "fine"
        for index in bad:
            with pytest.raises((OSError, ValueError)):
                dataset[index]
        with pytest.raises(DataError, match=rf"bad item 1 \({re.escape(dataset.item_source(1))}\)"):
            GuardedDataset(dataset, "error")[1]
        skipping = GuardedDataset(dataset, "skip")
        assert skipping[bad[0]][0][1] == "fine" and skipping.skipped == len(bad)  # wraps to 0


def test_decode_pair_row_raises_for_bad_rows() -> None:
    (image, caption), label = decode_pair_row(
        {"image": _png(1), "caption": "x", "label": 2}, pixels
    )
    assert torch.equal(image, pixels(IMAGES[1])) and (caption, label) == ("x", 2)
    good = {"image": _png(1), "caption": "x", "label": -1}
    for bad, error in (
        ({"image": b"junk"}, OSError),
        ({"image": None}, ValueError),
        ({"caption": None}, ValueError),
        ({"label": None}, ValueError),
    ):
        with pytest.raises(error):
            decode_pair_row({**good, **bad}, pixels)


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    _write_parquet(tmp_path / "p", "img2dataset", "JPEG")
    pq.write_table(pa.table({"jpg": [_png(0)], "alt": ["x"]}), tmp_path / "nocaption.parquet")
    file = tmp_path / "p" / "00000.parquet"
    cases = [
        ({"image_column": "photo"}, rf"data\.image_column: no column 'photo' in {file} \(columns"),
        ({"image_column": "caption"}, r"data\.image_column: column 'caption' .* is string, not"),
        ({"caption_column": "width"}, r"data\.caption_column: column 'width' .* not a string"),
        ({"label_column": "key"}, r"data\.label_column: column 'key' .* not an integer"),
    ]
    for columns, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            open_pairs(tmp_path / "p", "parquet", pixels, **columns)
        assert "\n" not in str(error.value)
    with pytest.raises(
        ValueError, match=r"data\.caption_column: none of \['caption', 'txt', 'text'\]"
    ):
        open_pairs(tmp_path / "nocaption.parquet", "parquet", pixels)
    with pytest.raises(
        ValueError, match=r"data\.layout must be one of \['parquet', 'webdataset'\], got 'tfrecord'"
    ):
        open_pairs(tmp_path, "tfrecord", pixels)
    with pytest.raises(ValueError, match=r"data\.root: no \*\.tar files under"):
        open_pairs(tmp_path / "p", "webdataset", pixels)
    with pytest.raises(
        ValueError, match=r"data\.image_column applies to data\.layout=parquet only"
    ):
        open_pairs(tmp_path, "webdataset", pixels, image_column="jpg")
    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "x.tar", mode="w:gz"):
        pass
    with pytest.raises(ValueError, match=r"not a readable uncompressed tar file"):
        open_pairs(tmp_path / "gz", "webdataset", pixels)


# --- Ray Data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _decoded(row: dict) -> dict:
    """``map`` on a Ray worker: what the streaming ingest does with a row."""
    (image, caption), label = decode_pair_row(row, pixels)
    return {"image": image.numpy(), "caption": caption, "label": label, "path": row["path"]}


@pytest.mark.slow
def test_read_pairs_ray_streams_both_layouts(ray_local, tmp_path: Path) -> None:
    sources = {
        "img2dataset": (_write_parquet(tmp_path / "i", "img2dataset", "PNG"), "parquet"),
        "huggingface": (_write_parquet(tmp_path / "h", "huggingface", "PNG", None), "parquet"),
        "webdataset": (_write_shards(tmp_path / "w", "PNG"), "webdataset"),
    }
    for name, (root, layout) in sources.items():
        label_column = "label" if name == "img2dataset" else None
        dataset = read_pairs_ray(root, layout, label_column=label_column, include_paths=True)
        rows = dataset.map(_decoded).take_all()
        expected = open_pairs(root, layout, pixels, label_column=label_column)
        by_caption = {row["caption"]: row for row in rows}
        assert sorted(by_caption) == sorted(CAPTIONS), name
        for i, caption in enumerate(CAPTIONS):
            row = by_caption[caption]
            assert row["label"] == expected.targets[i], name
            assert np.array_equal(row["image"], pixels(IMAGES[i]).numpy()), name
            assert row["path"].startswith(str(root)), name
