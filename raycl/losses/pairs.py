"""Reductions over an explicit pair list: the positives of self-supervised batches.

With few positives per anchor (the other views of an item) the positive reductions need only
the similarities of the pairs ``(i, p)``, not a walk over the whole matrix:

    s_ip = z_i · z_p  for every listed pair   →   r_i = Σ_p f(s_ip)   or   log Σ_p exp(f(s_ip))

Forward and backward run over chunks of pairs and keep only the pair similarities (one number
per pair); the backward adds ``∂L/∂s_ip · z_p`` to row i's gradient and ``∂L/∂s_ip · z_i`` to
column p's, straight into the engine's gradient buffers. Peak memory: O(#pairs + chunk·d).
"""

from __future__ import annotations

import torch
from torch import Tensor

from raycl.losses.reductions import RowReduction, RowStat, accumulation
from raycl.losses.structure import PairStructure, column_counts

# Positives are reduced from an explicit pair list when there are at most this many per row.
SPARSE_POSITIVES_PER_ROW = 64


def few_positives(rows: PairStructure, cols: PairStructure) -> bool:
    """Whether the positives are few enough for a pair list (≤ 64 per anchor on average)."""
    total = int(column_counts(rows, cols, "positives").sum())
    return total <= SPARSE_POSITIVES_PER_ROW * len(rows)


def positive_pairs(rows: PairStructure, cols: PairStructure) -> tuple[Tensor, Tensor]:
    """Every (row, column) positive pair as two index vectors, in O(#pairs + M log M)."""
    sorted_ids, order = torch.sort(cols.ids)
    start = torch.searchsorted(sorted_ids, rows.ids)
    counts = torch.searchsorted(sorted_ids, rows.ids, right=True) - start
    row_idx = torch.repeat_interleave(torch.arange(len(rows), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(row_idx.numel(), device=counts.device) - first[row_idx]
    col_idx = order[start[row_idx] + offset]
    not_self = cols.index[col_idx] != rows.index[row_idx]
    return row_idx[not_self], col_idx[not_self]


class PairReductions:
    """The positive reductions of one batch, evaluated from its pair list."""

    def __init__(
        self, rows: PairStructure, cols: PairStructure, reductions: list[RowReduction], chunk: int
    ) -> None:
        self.row_idx, self.col_idx = positive_pairs(rows, cols)
        self.num_rows = len(rows)
        self.reductions = reductions
        self.chunk = chunk
        self.sims: Tensor | None = None

    def forward(self, rows_z: Tensor, cols_z: Tensor) -> list[RowStat]:
        acc = torch.promote_types(rows_z.dtype, torch.float32)
        self.sims = torch.empty(self.row_idx.numel(), dtype=acc, device=rows_z.device)
        for start, rows, cols in self._chunks():
            pair_r, pair_c = accumulation(rows_z[rows]), accumulation(cols_z[cols])
            self.sims[start : start + len(rows)] = (pair_r * pair_c).sum(1)
        return [self._reduce(r, self.sims) for r in self.reductions]

    def backward(
        self,
        rows_z: Tensor,
        cols_z: Tensor,
        grads: list[Tensor],
        grad_rows: Tensor,
        grad_cols: Tensor,
    ) -> None:
        assert self.sims is not None, "forward first"
        with torch.enable_grad():
            sims = self.sims.detach().requires_grad_(True)
            values = [self._reduce(r, sims).value for r in self.reductions]
            (grad_sims,) = torch.autograd.grad(values, sims, grads)
        for start, rows, cols in self._chunks():
            weights = grad_sims[start : start + len(rows), None]
            grad_rows.index_add_(0, rows, weights * cols_z[cols].to(grad_rows.dtype))
            grad_cols.index_add_(0, cols, weights * rows_z[rows].to(grad_cols.dtype))

    def _chunks(self):
        for start in range(0, self.row_idx.numel(), self.chunk):
            stop = start + self.chunk
            yield start, self.row_idx[start:stop], self.col_idx[start:stop]

    def _reduce(self, reduction: RowReduction, sims: Tensor) -> RowStat:
        values = reduction.fn(sims)
        out = values.new_zeros(self.num_rows)
        if reduction.kind == "sum":
            nonzero = self.row_idx.new_zeros(self.num_rows)
            nonzero.index_add_(0, self.row_idx, (values != 0).long())
            return RowStat(out.index_add(0, self.row_idx, values), nonzero)
        # log Σ exp with a detached per-row max shift (the shift cancels: gradients stay exact)
        shift = torch.full_like(out, float("-inf")).scatter_reduce(
            0, self.row_idx, values.detach(), "amax", include_self=True
        )
        safe_shift = shift.masked_fill(shift == float("-inf"), 0.0)
        total = out.index_add(0, self.row_idx, torch.exp(values - safe_shift[self.row_idx]))
        return RowStat(safe_shift + total.log(), None)
