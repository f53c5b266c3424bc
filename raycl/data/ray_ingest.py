"""``data.ingest=ray_data``: the contrastive training split streamed through Ray Data.

The driver builds the pipeline (:func:`contrastive_dataset`): ``read_parquet`` of
``data.root/train`` → ``randomize_block_order`` → ``map_batches`` of :func:`decode_views` in
Ray Data's CPU task pool (decode the image bytes, apply the data set's multi-view
augmentation — the same one the in-worker loader applies — and emit ``views``
(B, V, C, H, W) float32 and ``label``; as many tasks as free CPUs allow).
``TorchTrainer(datasets={"train": …})`` splits it across the
workers; each worker iterates its shard (:class:`ShardBatches`) in batches of
``data.batch_size_per_worker`` through a local shuffle buffer, last partial batch dropped.
Decoding and augmentation thus run on every CPU of the cluster, not only on the GPU
workers' nodes. Augmentation randomness comes from the Ray Data tasks, so this path is not
bit-reproducible the way the seeded in-worker loader is.

Image–caption pairs (``data=pairs``, Parquet or WebDataset) take the same route through
:func:`~raycl.data.paired_files.read_pairs_ray` and :func:`decode_pairs`, which decodes each
image, applies the evaluation transform and tokenises the caption with the text tower's
tokenizer (``model.context_length``) in the Ray Data tasks: a worker's batch is
``((images, tokens), labels)``.

A row that does not decode is an error naming its file (``data.on_bad_item=error``) or is
dropped with a warning (``skip``; dropped rows are not in the ``bad_items`` metric).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raycl.data.guard import LOAD_ERRORS
from raycl.data.parquet import decode_image_bytes
from raycl.errors import DataError, first_line

if TYPE_CHECKING:
    import ray.data

    from raycl.schema import DataConfig

SHUFFLE_BUFFER_BATCHES = 4  # the local shuffle buffer holds this many batches' rows


def _bad_item(data: DataConfig, path: str, err: BaseException) -> None:
    """Raise for a row that does not decode (``on_bad_item=error``), else say it is skipped."""
    if data.on_bad_item == "error":
        raise DataError(
            f"data: bad item in {path}: {first_line(err)}; data.on_bad_item=skip skips such items"
        ) from None
    print(f"raycl: skipped a bad item in {path}", file=sys.stderr)


def decode_views(batch: dict[str, np.ndarray], data: DataConfig) -> dict[str, np.ndarray]:
    """``map_batches`` function: image bytes → ``data.num_views`` augmented views per row."""
    from raycl.data import contrastive_augmentation

    augment = contrastive_augmentation(data)
    views, labels = [], []
    for image, label, path in zip(batch["image"], batch["label"], batch["path"], strict=True):
        try:
            decoded = decode_image_bytes(image)
        except LOAD_ERRORS as err:
            _bad_item(data, path, err)
            continue
        views.append(augment(decoded).numpy())
        labels.append(int(label))
    return {"views": np.stack(views), "label": np.asarray(labels, dtype=np.int64)}


def decode_pairs(
    batch: dict[str, np.ndarray], data: DataConfig, context_length: int
) -> dict[str, np.ndarray]:
    """``map_batches`` function: encoded pairs → images, caption tokens and labels."""
    from raycl.data.caption_pairs import pair_transform
    from raycl.data.paired_files import decode_pair_row
    from raycl.towers import tokenizer

    transform = pair_transform(data)
    images, captions, labels = [], [], []
    rows = len(batch["image"])
    for row in ({key: column[i] for key, column in batch.items()} for i in range(rows)):
        try:
            (image, caption), label = decode_pair_row(row, transform)
        except LOAD_ERRORS as err:
            _bad_item(data, row["path"], err)
            continue
        images.append(image.numpy())
        captions.append(caption)
        labels.append(label)
    tokens = tokenizer(context_length)(captions).numpy()
    return {"image": np.stack(images), "tokens": tokens, "label": np.asarray(labels, np.int64)}


def contrastive_dataset(data: DataConfig, context_length: int | None = None) -> ray.data.Dataset:
    """The training split of ``data`` as a Ray Dataset: augmented views of Parquet images, or
    image–caption pairs tokenised to ``context_length`` tokens (``data=pairs``)."""
    from raycl.data import DATASETS
    from raycl.data.caption_pairs import pair_columns
    from raycl.data.paired_files import read_pairs_ray
    from raycl.data.parquet import read_ray_dataset

    root = str(data.root or ".").rstrip("/")  # a local path or a URI such as s3://bucket/set
    if DATASETS[data.name].paired:
        columns = pair_columns(data)
        source = read_pairs_ray(f"{root}/train", data.layout, include_paths=True, **columns)
        decode, options = decode_pairs, {"data": data, "context_length": context_length}
    else:
        source = read_ray_dataset(f"{root}/train", include_paths=True)
        decode, options = decode_views, {"data": data}
    return source.randomize_block_order().map_batches(
        decode, fn_kwargs=options, batch_size=data.batch_size_per_worker, batch_format="numpy"
    )


class ShardBatches:
    """One worker's epoch of ``(views, labels)`` batches — ``((images, tokens), labels)`` for
    pairs — from its Ray Train dataset shard; ``len`` is the number of full batches its
    ``num_items // world_size`` rows make."""

    def __init__(
        self, shard: Any, batch_size: int, num_items: int, world_size: int, paired: bool = False
    ) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.batches = num_items // world_size // batch_size
        self.paired = paired

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.shard.iter_torch_batches(
            batch_size=self.batch_size,
            drop_last=True,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_BATCHES * self.batch_size,
        )
        for batch in batches:
            if self.paired:
                yield (batch["image"], batch["tokens"]), batch["label"]
            else:
                yield batch["views"], batch["label"]
