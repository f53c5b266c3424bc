"""The pair structure of a contrastive batch: who is a positive, a negative, a same-view peer.

A batch of ``V`` views of ``N`` items is flattened view-major into ``M = V·N`` rows: row
``m = v·N + n`` is view ``v`` of item ``n``. Each row carries an *id* (the item index for
self-supervised batches, its class label for supervised ones), a *view* index, and a global
*index* (its position in the global batch, so that a row never counts itself even when rows
are local anchors and columns the gathered global batch).

For an anchor row ``i`` and the columns ``j``:

    others(i)    = { j : index_j ≠ index_i }                 (A(i) in the papers)
    positives(i) = { j ∈ others(i) : id_j = id_i }           (P(i))
    negatives(i) = { j : id_j ≠ id_i }                       (Neg(i))
    same_view(i) = { j ∈ others(i) : view_j = view_i }       (DHEL / KCL energy sets)
    cross_view(i) = { j : view_j ≠ view_i }                  (the other view or modality)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ColumnSet = Literal["others", "positives", "negatives", "same_view", "cross_view"]
COLUMN_SETS: tuple[ColumnSet, ...] = ("others", "positives", "negatives", "same_view", "cross_view")


@dataclass(frozen=True)
class PairStructure:
    """Ids, views and global positions of the rows of a flattened batch."""

    ids: Tensor
    index: Tensor
    views: Tensor | None = None

    def __len__(self) -> int:
        return self.ids.numel()

    @property
    def num_views(self) -> int:
        return 0 if self.views is None else int(self.views.max()) + 1

    def slice(self, start: int, stop: int) -> PairStructure:
        """The structure of rows ``start:stop``."""
        views = None if self.views is None else self.views[start:stop]
        return PairStructure(self.ids[start:stop], self.index[start:stop], views)


def flatten_batch(
    embeddings: Tensor | Sequence[Tensor], labels: Tensor | None = None
) -> tuple[Tensor, PairStructure]:
    """Validate a batch and flatten it into ``(z (M, d), PairStructure)``.

    ``embeddings`` is either views ``(V, N, d)`` (or a sequence of ``V`` tensors ``(N, d)``)
    with optional ``labels (N,)``, or a flat ``(M, d)`` tensor with ``labels (M,)``.
    """
    if isinstance(embeddings, list | tuple):
        if not embeddings:
            raise ValueError("embeddings: got an empty sequence of views; pass V >= 2 views")
        embeddings = torch.stack(list(embeddings))
    if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
        raise ValueError("embeddings must be a floating-point tensor of shape (V, N, d) or (M, d)")
    if embeddings.dim() == 3:
        num_views, num_items, dim = embeddings.shape
        if num_views < 2:
            raise ValueError(f"embeddings of shape (V, N, d) need V >= 2 views, got V={num_views}")
        item = torch.arange(num_items, device=embeddings.device)
        ids = item if labels is None else _check_labels(labels, num_items, "N")[item]
        ids = ids.repeat(num_views)
        views = torch.arange(num_views, device=embeddings.device).repeat_interleave(num_items)
        z = embeddings.reshape(num_views * num_items, dim)
    elif embeddings.dim() == 2:
        if labels is None:
            raise ValueError(
                "labels: flat embeddings (M, d) need labels (M,); pass views as (V, N, d) instead"
            )
        z, views = embeddings, None
        ids = _check_labels(labels, embeddings.shape[0], "M")
    else:
        raise ValueError(
            f"embeddings must have shape (V, N, d) or (M, d), got {tuple(embeddings.shape)}"
        )
    if z.shape[0] < 2 or z.shape[1] < 1:
        raise ValueError(f"embeddings: need at least 2 rows and 1 dimension, got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("embeddings contain NaN or inf")
    index = torch.arange(z.shape[0], device=z.device)
    return z, PairStructure(ids.to(z.device), index, views)


def _check_labels(labels: Tensor, expected: int, name: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dim() != 1:
        raise ValueError("labels must be a 1-D integer tensor")
    if labels.numel() != expected:
        raise ValueError(f"labels: got {labels.numel()} labels for {name}={expected} items")
    return labels.long()


def column_mask(rows: PairStructure, cols: PairStructure, which: ColumnSet) -> Tensor:
    """Boolean ``(len(rows), len(cols))`` mask of the column set ``which`` for every row."""
    if which == "negatives":
        return rows.ids[:, None] != cols.ids[None, :]
    if which == "cross_view":
        return _views(rows)[:, None] != _views(cols)[None, :]
    mask = rows.index[:, None] != cols.index[None, :]
    if which == "positives":
        mask &= rows.ids[:, None] == cols.ids[None, :]
    elif which == "same_view":
        mask &= _views(rows)[:, None] == _views(cols)[None, :]
    return mask


def column_counts(rows: PairStructure, cols: PairStructure, which: ColumnSet) -> Tensor:
    """Size of the column set ``which`` for every row, in O(M log M) without any M×M mask.

    Assumes every row also appears among the columns (true for a batch against itself and
    for local anchors against the gathered global batch).
    """
    if which == "others":
        return torch.full_like(rows.ids, len(cols) - 1)
    if which in ("same_view", "cross_view"):
        same_view = _occurrences(_views(rows), _views(cols))
        return same_view - 1 if which == "same_view" else len(cols) - same_view
    same_id = _occurrences(rows.ids, cols.ids)
    return same_id - 1 if which == "positives" else len(cols) - same_id


def _occurrences(values: Tensor, population: Tensor) -> Tensor:
    unique, counts = torch.unique(population, return_counts=True)
    return counts[torch.searchsorted(unique, values)]


def _views(structure: PairStructure) -> Tensor:
    if structure.views is None:
        raise ValueError("this loss needs view structure: pass embeddings as (V, N, d)")
    return structure.views
