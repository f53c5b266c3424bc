"""Sums of an affine map in closed form, O(M·d), without any tile.

For ``f(s) = a·s + b`` a row's sum over its column set is one dot product with that set's
column sum:

    r_i = Σ_{j∈C(i)} (a·z_i·z_j + b) = a · z_i·c_i + b·|C(i)|
    c_i = α·Σ_j z_j + β·S_{key(i)} − γ·z_i

where ``S_k`` sums the columns with key k (id, or view for ``same_view`` and ``cross_view``)
and (α, β, γ) is (1, 0, 1) for others, (0, 1, 1) for positives and same_view, (1, −1, 0) for
negatives and cross_view. The
backward needs the same per-key sums of the weighted rows ``a·g_i·z_i``:

    ∂L/∂z_i (row) = a·g_i·c_i      ∂L/∂z_j (column) = α·Σ_i a·g_i·z_i + β·H_{key(j)} − γ·a·g_j·z_j

Only per-key sums (keys × d) are held, and only while a pass runs: the backward recomputes them
(one O(M·d) pass) rather than keeping them from the forward, since a set keyed by ids can have
half a batch of keys. Rows are visited in chunks and their gradients added to the engine's
buffers. ``cols.index`` must be ``arange``: column k is global row k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raycl.losses.reductions import Affine, RowReduction, RowStat, accumulation
from raycl.losses.structure import PairStructure, column_counts

# (α, β, γ) of each column set: c_i = α·total + β·S_key(i) − γ·z_i.
COEFFICIENTS = {
    "others": (1.0, 0.0, 1.0),
    "positives": (0.0, 1.0, 1.0),
    "same_view": (0.0, 1.0, 1.0),
    "negatives": (1.0, -1.0, 0.0),
    "cross_view": (1.0, -1.0, 0.0),
}


# Per-key sums are held for at most this fraction of the columns' count (×d each).
MAX_KEYS_FRACTION = 1 / 16


def few_keys(cols: PairStructure, which: str) -> bool:
    """Whether the column set's per-key sums are small (≤ M/16 keys: labels, views), so that
    the closed form holds far less than a copy of the embeddings."""
    if which in ("others", "same_view", "cross_view"):
        return True
    return int(torch.unique(cols.ids).numel()) <= MAX_KEYS_FRACTION * len(cols)


class AffineSums:
    """Row sums of one affine map over one column set, in closed form."""

    def __init__(
        self, rows: PairStructure, cols: PairStructure, reduction: RowReduction, chunk: int
    ) -> None:
        assert isinstance(reduction.fn, Affine) and reduction.kind == "sum"
        self.fn: Affine = reduction.fn
        self.alpha, self.beta, self.gamma = COEFFICIENTS[reduction.columns]
        self.rows, self.chunk = rows, chunk
        self.counts = column_counts(rows, cols, reduction.columns)
        keys = _keys(rows, cols, reduction.columns)
        self.col_key, self.row_key, self.num_keys = keys

    def forward(self, rows_z: Tensor, cols_z: Tensor) -> list[RowStat]:
        total, per_key = self._column_sums(cols_z)
        value = torch.empty(len(self.rows), dtype=total.dtype, device=rows_z.device)
        for start, stop in self._chunks():
            column_sums = self._set_sums(total, per_key, cols_z, start, stop)
            value[start:stop] = (accumulation(rows_z[start:stop]) * column_sums).sum(1)
        value.mul_(self.fn.scale)
        if self.fn.shift:
            value += self.fn.shift * self.counts.to(value.dtype)
        return [RowStat(value, None)]

    def backward(
        self,
        rows_z: Tensor,
        cols_z: Tensor,
        grads: list[Tensor],
        grad_rows: Tensor,
        grad_cols: Tensor,
    ) -> None:
        total, per_key = self._column_sums(cols_z)
        weights = self.fn.scale * grads[0].to(total.dtype)
        weighted_total = torch.zeros_like(total)
        weighted_per_key = torch.zeros_like(per_key) if per_key is not None else None
        for start, stop in self._chunks():
            column_sums = self._set_sums(total, per_key, cols_z, start, stop)
            grad_rows[start:stop] += weights[start:stop, None] * column_sums
            weighted = weights[start:stop, None] * accumulation(rows_z[start:stop])
            weighted_total += weighted.sum(0)
            if weighted_per_key is not None:
                weighted_per_key.index_add_(0, self.row_key[start:stop], weighted)
            if self.gamma:
                grad_cols.index_add_(0, self.rows.index[start:stop], weighted, alpha=-self.gamma)
        for start in range(0, len(grad_cols), self.chunk):
            stop = start + self.chunk
            if self.alpha:
                grad_cols[start:stop] += self.alpha * weighted_total
            if weighted_per_key is not None:
                grad_cols[start:stop] += self.beta * weighted_per_key[self.col_key[start:stop]]

    def _chunks(self):
        for start in range(0, len(self.rows), self.chunk):
            yield start, min(start + self.chunk, len(self.rows))

    def _column_sums(self, cols_z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Σ_j z_j and, where β ≠ 0, the per-key sums S (keys × d), in the accumulation dtype."""
        dtype = torch.promote_types(cols_z.dtype, torch.float32)
        total = torch.zeros(cols_z.shape[1], dtype=dtype, device=cols_z.device)
        per_key = None
        if self.beta:
            per_key = cols_z.new_zeros(self.num_keys, cols_z.shape[1], dtype=dtype)
        for start in range(0, len(cols_z), self.chunk):
            block = accumulation(cols_z[start : start + self.chunk])
            total += block.sum(0)
            if per_key is not None:
                per_key.index_add_(0, self.col_key[start : start + self.chunk], block)
        return total, per_key

    def _set_sums(
        self, total: Tensor, per_key: Tensor | None, cols_z: Tensor, start: int, stop: int
    ) -> Tensor:
        """c_i for the rows ``start:stop``."""
        sums = (self.alpha * total).expand(stop - start, -1).clone()
        if per_key is not None:
            sums += self.beta * per_key[self.row_key[start:stop]]
        if self.gamma:
            sums -= self.gamma * accumulation(cols_z[self.rows.index[start:stop]])
        return sums


def _keys(rows: PairStructure, cols: PairStructure, which: str) -> tuple[Tensor, Tensor, int]:
    """Each column's and each row's key as an index into the distinct column keys."""
    if which == "others":
        return cols.ids.new_zeros(len(cols)), rows.ids.new_zeros(len(rows)), 1
    by_view = which in ("same_view", "cross_view")
    col_key, row_key = (cols.views, rows.views) if by_view else (cols.ids, rows.ids)
    if col_key is None or row_key is None:
        raise ValueError("this loss needs view structure: pass embeddings as (V, N, d)")
    unique, inverse = torch.unique(col_key, return_inverse=True)
    return inverse, torch.searchsorted(unique, row_key), len(unique)
