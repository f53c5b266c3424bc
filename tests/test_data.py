"""Data layer: every loader runs on tiny files written here in the real on-disk format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10, CIFAR100, STL10
from torchvision.datasets.utils import calculate_md5

from raycl.data import (
    ClassSplitImageFolder,
    DigitsDataset,
    MultiViewTransform,
    ParquetImageDataset,
    SyntheticDataset,
    TensorJitter,
    build_datasets,
    digits_transform,
    eval_transform,
    open_torchvision,
    read_ray_dataset,
    simclr_transform,
    write_parquet_dataset,
)
from raycl.data.parquet import decode_image_bytes
from raycl.schema import DataConfig

RNG = np.random.default_rng(0)


def data(name: str, root: Path | None = None, **settings) -> DataConfig:
    """A ``data`` config section (what ``build_datasets`` takes)."""
    return DataConfig(name=name, root=None if root is None else str(root), **settings)


def _images(n: int, size: int) -> np.ndarray:
    """``n`` random RGB images, (N, H, W, 3) uint8."""
    return RNG.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _pin_md5s(monkeypatch: pytest.MonkeyPatch, cls: type, root: Path) -> None:
    """Make ``cls`` expect the md5s of the fake files (torchvision pins the real ones)."""
    folder = root / cls.base_folder
    for attr in ("train_list", "test_list"):
        pinned = [[name, calculate_md5(folder / name)] for name, _ in getattr(cls, attr)]
        monkeypatch.setattr(cls, attr, pinned)
    if hasattr(cls, "meta"):
        meta = dict(cls.meta, md5=calculate_md5(folder / cls.meta["filename"]))
        monkeypatch.setattr(cls, "meta", meta)


def _write_cifar(root: Path, cls: type, per_file: int) -> dict[str, tuple[np.ndarray, list]]:
    """CIFAR python pickles: ``data`` (N, 3072) uint8 in CHW order plus labels and meta."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    num_classes = 10 if cls is CIFAR10 else 100
    label_key = "labels" if cls is CIFAR10 else "fine_labels"
    written = {}
    for name, _ in cls.train_list + cls.test_list:
        images = _images(per_file, 32)
        labels = RNG.integers(0, num_classes, per_file).tolist()
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(per_file, -1), label_key: labels}
        (folder / name).write_bytes(pickle.dumps(entry))
        written[name] = (images, labels)
    names = {cls.meta["key"]: [f"class{i}" for i in range(num_classes)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(names))
    return written


def _write_stl10(root: Path, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """STL-10 binaries: uint8 images stored column-major (N, 3, W, H), labels 1..10."""
    folder = root / STL10.base_folder
    folder.mkdir(parents=True)
    written = {}
    for split, n in counts.items():
        images = _images(n, 96)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(np.arange(1, n + 1, dtype=np.uint8).tobytes())
        written[split] = images
    (folder / STL10.class_names_file).write_text("\n".join(f"c{i}" for i in range(10)))
    return written


def _write_folder(root: Path, classes: list[str], per_class: int, size: int = 12) -> None:
    """ImageFolder tree ``root/<class>/<i>.png`` of small RGB PNGs."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for i, image in enumerate(_images(per_class, size)):
            Image.fromarray(image).save(root / name / f"{i}.png")


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1], as eval_transform() returns."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


# --- transforms ---------------------------------------------------------------------------


def test_multiview_stacks_independent_views() -> None:
    image = Image.fromarray(_images(1, 32)[0])
    views = MultiViewTransform(simclr_transform(24), num_views=3)(image)
    assert views.shape == (3, 3, 24, 24)
    assert views.dtype == torch.float32
    assert not torch.equal(views[0], views[1])
    with pytest.raises(ValueError, match="num_views"):
        MultiViewTransform(simclr_transform(24), num_views=0)


def test_simclr_and_eval_transforms_accept_pil_and_uint8_tensors() -> None:
    image = _images(1, 40)[0]
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for source in (Image.fromarray(image), tensor):
        out = simclr_transform(32, blur_p=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)(source)
        assert out.shape == (3, 32, 32) and type(out) is torch.Tensor
    evaluate = eval_transform(32, crop_fraction=0.875)
    assert torch.equal(evaluate(tensor), evaluate(Image.fromarray(image)))
    assert evaluate(tensor).shape == (3, 32, 32)
    assert torch.allclose(eval_transform()(tensor), tensor / 255)
    with pytest.raises(ValueError, match="mean and std"):
        eval_transform(mean=(0.5,))


def test_digits_transform_keeps_one_channel_in_unit_range() -> None:
    image = DigitsDataset("train")[0][0]
    out = digits_transform()(image)
    assert out.shape == (1, 8, 8)
    assert out.min() >= 0 and out.max() <= 1


# --- digits -------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_stratified() -> None:
    train, test = DigitsDataset("train"), DigitsDataset("test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.classes == [str(d) for d in range(10)]
    image, label = test[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int)
    assert train.data.min() == 0 and train.data.max() == 16  # raw, as scikit-learn has it
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.5  # scaled by /16
    assert torch.equal(DigitsDataset("test").data, test.data)
    counts = np.bincount(test.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsDataset("val")


def test_build_digits_batches_views() -> None:
    train, train_eval, test, num_classes, in_channels, _ = build_datasets(
        data("digits", num_views=3)
    )
    views, labels = next(iter(DataLoader(train, batch_size=8)))
    assert views.shape == (8, 3, 1, 8, 8)
    assert labels.shape == (8,)
    assert train_eval[0][0].shape == test[0][0].shape == (1, 8, 8)
    assert torch.equal(train_eval[5][0], DigitsDataset("train")[5][0])
    assert (num_classes, in_channels) == (10, 1)


# --- synthetic ----------------------------------------------------------------------------


def test_synthetic_items_are_deterministic_per_seed_split_and_index() -> None:
    data = SyntheticDataset(65_536, (1, 8, 8), 10, seed=3)
    assert len(data) == 65_536
    assert data.prototypes.shape == (10, 1, 8, 8)  # the only thing held: no per-item storage
    image, label = data[65_535]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label == 5
    assert torch.equal(SyntheticDataset(65_536, (1, 8, 8), 10, seed=3)[65_535][0], image)
    assert not torch.equal(SyntheticDataset(65_536, (1, 8, 8), 10, seed=4)[65_535][0], image)
    test = SyntheticDataset(100, (1, 8, 8), 10, seed=3, split="test")
    assert torch.equal(test.prototypes, data.prototypes)
    assert not torch.equal(test[5][0], data[5][0])
    assert data.targets[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # Items of one class scatter around their prototype: with little noise, nearest to it.
    quiet = SyntheticDataset(200, (1, 8, 8), 10, seed=3, noise=1.0)
    items = torch.stack([quiet[i][0] for i in range(200)]).flatten(1)
    nearest = torch.cdist(items, quiet.prototypes.flatten(1)).argmin(1)
    assert (nearest == torch.tensor(quiet.targets)).float().mean() > 0.95
    with pytest.raises(IndexError):
        data[65_536]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_items": 0}, "data.num_items"),
        ({"item_shape": (8,)}, "data.item_shape"),
        ({"item_shape": (1, 0, 8)}, "data.item_shape"),
        ({"num_classes": 0}, "data.num_classes"),
        ({"split": "val"}, "split must be one of"),
    ],
)
def test_synthetic_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"num_items": 8, "item_shape": (1, 8, 8), "num_classes": 2, **kwargs}
    split = args.pop("split", "train")
    with pytest.raises(ValueError, match=match):
        SyntheticDataset(**args, split=split)


def test_tensor_jitter_shifts_and_adds_noise() -> None:
    item = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    shifted = TensorJitter(max_shift=1, noise=0.0)(item)
    rolls = [torch.roll(item, (dy, dx), (1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert any(torch.equal(shifted, r) for r in rolls)
    noisy = TensorJitter(max_shift=0, noise=0.1)(item)
    assert noisy.shape == item.shape and 0 < (noisy - item).std() < 0.2
    assert TensorJitter()(torch.zeros(3, 16)).shape == (3, 16)  # 1-D items too
    with pytest.raises(ValueError, match="max_shift"):
        TensorJitter(max_shift=-1)


def test_build_synthetic_batches_views() -> None:
    bundle = build_datasets(
        data("synthetic", num_items=40, item_shape=[3, 4, 4], num_classes=4), seed=1
    )
    views, labels = next(iter(DataLoader(bundle.train_contrastive, batch_size=8)))
    assert views.shape == (8, 2, 3, 4, 4) and labels.tolist() == [0, 1, 2, 3] * 2
    assert not torch.equal(views[:, 0], views[:, 1])
    plain = SyntheticDataset(40, (3, 4, 4), 4, seed=1)
    assert torch.equal(bundle.train_eval[7][0], plain[7][0])  # evaluation: no augmentation
    assert (len(bundle.train_eval), len(bundle.test_eval)) == (40, 8)
    assert (bundle.num_classes, bundle.in_channels) == (4, 3)
    with pytest.raises(ValueError, match=r"data\.num_items is required"):
        build_datasets(data("synthetic", item_shape=[1, 8, 8], num_classes=2))


# --- torchvision formats ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CIFAR10, CIFAR100])
def test_cifar_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    written = _write_cifar(tmp_path, cls, per_file=3)
    with pytest.raises(RuntimeError, match="corrupted"):  # the md5 check really runs
        open_torchvision(cls, tmp_path, train=False)
    _pin_md5s(monkeypatch, cls, tmp_path)

    name = "cifar10" if cls is CIFAR10 else "cifar100"
    train, train_eval, test, num_classes, in_channels, _ = build_datasets(data(name, tmp_path))
    assert len(train) == len(train_eval) == 3 * len(cls.train_list)
    assert len(test) == 3
    assert train[0][0].shape == (2, 3, 32, 32)
    assert test[0][0].shape == (3, 32, 32)
    assert (num_classes, in_channels) == (10 if cls is CIFAR10 else 100, 3)

    test_name = cls.test_list[0][0]
    images, labels = written[test_name]
    raw = open_torchvision(cls, tmp_path, train=False, transform=eval_transform())
    assert raw.targets == labels
    assert torch.allclose(torch.stack([raw[i][0] for i in range(3)]), _as_tensor(images))


def test_stl10_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _write_stl10(tmp_path, {"train": 3, "unlabeled": 2, "test": 2})
    _pin_md5s(monkeypatch, STL10, tmp_path)
    train, train_eval, test, num_classes, in_channels, _ = build_datasets(data("stl10", tmp_path))
    assert (len(train), len(train_eval), len(test)) == (5, 3, 2)
    assert train[0][0].shape == (2, 3, 96, 96)
    assert [train[i][1] for i in range(5)] == [0, 1, 2, -1, -1]
    assert test[1][0].shape == (3, 96, 96) and test[1][1] == 1
    assert (num_classes, in_channels) == (10, 3)
    raw = open_torchvision(STL10, tmp_path, split="test", transform=eval_transform())
    assert torch.allclose(torch.stack([raw[i][0] for i in range(2)]), _as_tensor(written["test"]))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_missing_torchvision_files_name_root_and_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"under '{tmp_path}'; pass download=true"):
        build_datasets(data(name, tmp_path))


# --- folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_imagefolder_train_test(tmp_path: Path, test_dir: str) -> None:
    _write_folder(tmp_path / "train", ["cat", "dog", "owl"], per_class=2)
    _write_folder(tmp_path / test_dir, ["cat", "dog", "owl"], per_class=1)
    train, train_eval, test, num_classes, in_channels, _ = build_datasets(
        data("imagefolder", tmp_path, num_views=4, image_size=8)
    )
    assert (len(train), len(train_eval), len(test)) == (6, 6, 3)
    assert train[0][0].shape == (4, 3, 8, 8)
    assert test[2][0].shape == (3, 8, 8) and test[2][1] == 2
    assert (num_classes, in_channels) == (3, 3)


def test_class_split_is_class_disjoint(tmp_path: Path) -> None:
    classes = [f"{i:03d}.class" for i in range(6)]
    _write_folder(tmp_path, classes, per_class=2)
    train = ClassSplitImageFolder(tmp_path, "train", num_train_classes=4)
    test = ClassSplitImageFolder(tmp_path, "test", num_train_classes=4)
    assert train.classes == classes[:4] and test.classes == classes[4:]
    assert sorted(set(train.targets)) == [0, 1, 2, 3]
    assert sorted(set(test.targets)) == [0, 1]
    train_dirs = {Path(p).parent.name for p, _ in train.samples}
    test_dirs = {Path(p).parent.name for p, _ in test.samples}
    assert train_dirs.isdisjoint(test_dirs) and train_dirs | test_dirs == set(classes)
    with pytest.raises(ValueError, match=r"num_train_classes must be in \[1, 5\]"):
        ClassSplitImageFolder(tmp_path, "train", num_train_classes=6)
    with pytest.raises(ValueError, match="split must be one of"):
        ClassSplitImageFolder(tmp_path, "val", num_train_classes=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClassSplitImageFolder(tmp_path / "missing", "train", num_train_classes=4)


def test_cub200_default_split_is_100_100(tmp_path: Path) -> None:
    _write_folder(tmp_path, [f"{i:03d}.bird" for i in range(1, 201)], per_class=1, size=4)
    train, train_eval, test, num_classes, *_ = build_datasets(
        data("cub200", tmp_path, image_size=4)
    )
    assert len(train) == len(train_eval) == len(test) == num_classes == 100
    assert train[0][0].shape == (2, 3, 4, 4)
    assert test.classes[0] == "101.bird"


@pytest.mark.parametrize("name", ["cars196", "sop"])
def test_other_metric_learning_sets_take_num_train_classes(tmp_path: Path, name: str) -> None:
    _write_folder(tmp_path, ["a", "b", "c"], per_class=1, size=4)
    bundle = build_datasets(data(name, tmp_path, image_size=4, num_train_classes=1))
    assert (len(bundle.train_eval), len(bundle.test_eval), bundle.num_classes) == (1, 2, 2)


# --- parquet ------------------------------------------------------------------------------


@pytest.fixture
def parquet_dir(tmp_path: Path) -> tuple[Path, np.ndarray, list[int]]:
    images = _images(12, 10)
    labels = [i % 3 for i in range(12)]
    sources = [Image.fromarray(images[0]), torch.from_numpy(images[1]).permute(2, 0, 1)]
    sources += list(images[2:])
    files = write_parquet_dataset(sources, labels, tmp_path, rows_per_file=5, row_group_size=2)
    assert [f.name for f in files] == [f"part-0000{i}.parquet" for i in range(3)]
    return tmp_path, images, labels


def test_parquet_roundtrip(parquet_dir: tuple[Path, np.ndarray, list[int]]) -> None:
    path, images, labels = parquet_dir
    dataset = ParquetImageDataset(path, transform=eval_transform())
    assert len(dataset) == 12 and dataset.targets == labels and dataset.classes == [0, 1, 2]
    order = [11, 0, 7, 3, 3, 10]  # across files and row groups, out of order
    decoded = torch.stack([dataset[i][0] for i in order])
    assert torch.allclose(decoded, _as_tensor(images[order]))
    assert [dataset[i][1] for i in order] == [labels[i] for i in order]
    assert len(ParquetImageDataset(sorted(path.glob("*.parquet"))[1:])) == 7
    with pytest.raises(IndexError):
        dataset[12]


def test_parquet_errors(parquet_dir: tuple[Path, np.ndarray, list[int]], tmp_path: Path) -> None:
    path, images, labels = parquet_dir
    with pytest.raises(FileExistsError, match="already holds"):
        write_parquet_dataset(images, labels, path)
    with pytest.raises(ValueError):
        write_parquet_dataset(images, labels[:-1], tmp_path / "short")
    with pytest.raises(FileNotFoundError, match=r"no \.parquet files"):
        ParquetImageDataset(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match=r"not found: .*nope\.parquet"):
        ParquetImageDataset([path / "nope.parquet"])


def test_build_parquet(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("test", 4)):
        write_parquet_dataset(_images(n, 12), [i % 4 for i in range(n)], tmp_path / split)
    train, train_eval, test, num_classes, in_channels, _ = build_datasets(
        data("parquet", tmp_path, image_size=8)
    )
    assert (len(train), len(train_eval), len(test)) == (6, 6, 4)
    assert train[0][0].shape == (2, 3, 8, 8) and test[3][0].shape == (3, 8, 8)
    assert (num_classes, in_channels) == (4, 3)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_read_ray_dataset(ray_local, parquet_dir: tuple[Path, np.ndarray, list[int]]) -> None:
    path, _, labels = parquet_dir
    dataset = read_ray_dataset(path)
    rows = sorted(dataset.take_all(), key=lambda row: row["image"])
    assert len(rows) == 12
    assert sorted(row["label"] for row in rows) == sorted(labels)
    assert decode_image_bytes(rows[0]["image"]).size == (10, 10)


# --- registry -----------------------------------------------------------------------------


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match=r"data\.name must be one of \['digits', .*got 'mnist'"):
        build_datasets(data("mnist"))
    with pytest.raises(ValueError, match=r"data\.root is required"):
        build_datasets(data("cifar10"))


# -- MNIST-1D ----------------------------------------------------------------------------------


def test_mnist1d_generation_is_cached_by_its_arguments(tmp_path: Path) -> None:
    from raycl.data.mnist1d import Mnist1dSpec, load_mnist1d

    spec = Mnist1dSpec(num_train=60, num_test=40)
    first = load_mnist1d(spec, tmp_path / "a")
    again = load_mnist1d(spec, tmp_path / "b")  # generated afresh elsewhere
    for name in ("x_train", "y_train", "x_test", "y_test"):
        same = (tmp_path / "a" / spec.key / f"{name}.npy").read_bytes()
        assert same == (tmp_path / "b" / spec.key / f"{name}.npy").read_bytes()
        np.testing.assert_array_equal(first[name], again[name])
    assert first["x_train"].shape == (60, 40) and first["x_test"].shape == (40, 40)
    assert first["x_train"].dtype == np.float32 and set(first["y_train"]) <= set(range(10))
    other = Mnist1dSpec(num_train=60, num_test=40, seed=7)
    assert other.key != spec.key
    assert not np.array_equal(load_mnist1d(other, tmp_path / "a")["x_train"], first["x_train"])
    # the generator's global seeding leaves the caller's random streams alone
    state = np.random.get_state()[1].copy()
    load_mnist1d(Mnist1dSpec(num_train=30, num_test=20), tmp_path / "c")
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_mnist1d_spec_rejects_tiny_splits() -> None:
    from raycl.data.mnist1d import Mnist1dSpec

    with pytest.raises(ValueError, match="num_test must be >= 10"):
        Mnist1dSpec(num_train=100, num_test=3)


def test_signal_augment_shifts_scales_and_jitters() -> None:
    from raycl.data.mnist1d import SignalAugment

    torch.manual_seed(0)
    x = torch.sin(torch.linspace(0, 6.0, 40)).reshape(1, 40) + 0.5
    plain = SignalAugment(max_shift=0, scale=0.0, noise=0.0, slope=0.0, offset=0.0)(x)
    assert plain.mean().abs() < 1e-6  # offset and trend removed ...
    t = torch.arange(40.0) - 19.5
    assert (plain * t).sum().abs() < 1e-3
    shifted = SignalAugment(max_shift=5, scale=0.0, noise=0.0, slope=0.0, offset=0.0)
    rolls = set()
    for _ in range(40):
        view = shifted(x)
        rolls.add(next(k for k in range(6) if torch.allclose(torch.roll(plain, k, -1), view)))
    assert rolls == set(range(6))  # a circular shift by 0..5 samples, each drawn
    views = [SignalAugment()(x) for _ in range(3)]
    assert all(v.shape == (1, 40) for v in views) and not torch.allclose(views[0], views[1])


def test_build_mnist1d_and_its_class_disjoint_split(tmp_path: Path) -> None:
    bundle = build_datasets(data("mnist1d", tmp_path, num_items=80, num_test_items=50))
    views, label = bundle.train_contrastive[0]
    signal, _ = bundle.test_eval[0]
    assert views.shape == (2, 1, 40) and signal.shape == (1, 40) and 0 <= label < 10
    assert (len(bundle.train_contrastive), len(bundle.train_eval), len(bundle.test_eval)) == (
        80,
        80,
        50,
    )
    assert bundle.num_classes == 10 and bundle.in_channels == 1
    split = build_datasets(
        data("mnist1d", tmp_path, num_items=80, num_test_items=50, num_train_classes=6)
    )
    assert set(split.train_eval.targets) <= set(range(6))
    assert set(split.test_eval.targets) <= set(range(4)) and split.num_classes == 4
    assert split.test_eval.classes == ["6", "7", "8", "9"]
    with pytest.raises(ValueError, match=r"data.num_train_classes must be in \[1, 9\] for mnist1d"):
        build_datasets(
            data("mnist1d", tmp_path, num_items=80, num_test_items=50, num_train_classes=10)
        )


def test_the_evaluation_transform_takes_raw_items_as_a_user_holds_them(tmp_path: Path) -> None:
    from raycl.data import DATASETS, evaluation_transform
    from raycl.data.mnist1d import Mnist1dSpec, load_mnist1d

    data = DataConfig(name="mnist1d", num_items=60, num_test_items=40, root=str(tmp_path))
    bundle = build_datasets(data)
    raw = load_mnist1d(Mnist1dSpec(num_train=60, num_test=40), tmp_path)["x_test"][5]
    assert raw.shape == (40,)  # what make_dataset gives
    transform = evaluation_transform(data)
    torch.testing.assert_close(transform(raw), bundle.test_eval[5][0], rtol=0, atol=0)
    assert "40 floats" in DATASETS["mnist1d"].raw_input()
    assert "0..16" in DATASETS["digits"].raw_input()
    assert "0..255" in DATASETS["cifar10"].raw_input()
