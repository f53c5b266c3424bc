"""Reductions over the positive pairs alone: few positives per anchor need no tile walk.

With few positives per anchor (the other views of an item, or a label shared by a few items)
the positive reductions need only the similarities of the pairs ``(i, p)``:

    s_ip = z_i · z_p  for every positive pair   →   r_i = Σ_p f(s_ip)   or   log Σ_p exp(f(s_ip))

Rows are visited in chunks of about ``chunk`` pairs; a chunk's pairs are listed from the
columns sorted by id, its similarities computed from two gathers, and its rows' results are
complete (every pair of a row is in the row's chunk). The backward recomputes each chunk and
adds ``∂L/∂s_ip · z_p`` to row i's gradient and ``∂L/∂s_ip · z_i`` to column p's, straight into
the engine's buffers. Peak memory: O(M) (the sorted ids) plus one chunk's pairs × d.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from raycl.losses.reductions import RowReduction, RowStat, accumulation
from raycl.losses.structure import PairStructure, column_counts

# Positives are reduced from their pairs when there are at most this many per row.
SPARSE_POSITIVES_PER_ROW = 64


def few_positives(rows: PairStructure, cols: PairStructure) -> bool:
    """Whether the positives are few enough to be reduced pair by pair (≤ 64 per anchor on
    average; more are cheaper on the tiles the entropy term walks anyway)."""
    total = int(column_counts(rows, cols, "positives").sum())
    return total <= SPARSE_POSITIVES_PER_ROW * len(rows)


class PairReductions:
    """The positive reductions of one batch, evaluated pair by pair in chunks of rows."""

    def __init__(
        self, rows: PairStructure, cols: PairStructure, reductions: list[RowReduction], chunk: int
    ) -> None:
        self.rows, self.cols, self.reductions = rows, cols, reductions
        self.sorted_ids, self.order = torch.sort(cols.ids)
        # Same-id columns per row (the row itself included when it is among the columns).
        self.start = torch.searchsorted(self.sorted_ids, rows.ids)
        self.same_id = torch.searchsorted(self.sorted_ids, rows.ids, right=True) - self.start
        ends = torch.cumsum(self.same_id, 0).cpu()
        self.bounds = _chunk_bounds(ends, chunk)

    def forward(self, rows_z: Tensor, cols_z: Tensor) -> list[RowStat]:
        acc = torch.promote_types(rows_z.dtype, torch.float32)
        values = [
            torch.empty(len(self.rows), dtype=acc, device=rows_z.device) for _ in self.reductions
        ]
        nonzeros = [
            torch.zeros(len(self.rows), dtype=torch.long, device=rows_z.device)
            if r.kind == "sum"
            else None
            for r in self.reductions
        ]
        for r0, r1, row_idx, col_idx in self._chunks():
            sims = _similarities(rows_z, cols_z, r0 + row_idx, col_idx)
            for k, reduction in enumerate(self.reductions):
                stat = _reduce(reduction, sims, row_idx, r1 - r0)
                values[k][r0:r1] = stat.value
                if stat.nonzero is not None:
                    nonzeros[k][r0:r1] = stat.nonzero
        return [RowStat(v, n) for v, n in zip(values, nonzeros, strict=True)]

    def backward(
        self,
        rows_z: Tensor,
        cols_z: Tensor,
        grads: list[Tensor],
        grad_rows: Tensor,
        grad_cols: Tensor,
    ) -> None:
        for r0, r1, row_idx, col_idx in self._chunks():
            rows = r0 + row_idx
            with torch.enable_grad():
                sims = _similarities(rows_z, cols_z, rows, col_idx).requires_grad_(True)
                values = [_reduce(r, sims, row_idx, r1 - r0).value for r in self.reductions]
                (grad_sims,) = torch.autograd.grad(values, sims, [g[r0:r1] for g in grads])
            weights = grad_sims[:, None]
            grad_rows.index_add_(0, rows, weights * cols_z[col_idx].to(grad_rows.dtype))
            grad_cols.index_add_(0, col_idx, weights * rows_z[rows].to(grad_cols.dtype))

    def _chunks(self) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """``(row start, row stop, row of each pair (chunk-local), column of each pair)``."""
        for r0, r1 in self.bounds:
            counts = self.same_id[r0:r1]
            row_idx = torch.repeat_interleave(torch.arange(r1 - r0, device=counts.device), counts)
            first = torch.cumsum(counts, 0) - counts
            offset = torch.arange(row_idx.numel(), device=counts.device) - first[row_idx]
            col_idx = self.order[self.start[r0:r1][row_idx] + offset]
            not_self = self.cols.index[col_idx] != self.rows.index[r0 + row_idx]
            yield r0, r1, row_idx[not_self], col_idx[not_self]


def _chunk_bounds(ends: Tensor, chunk: int) -> list[tuple[int, int]]:
    """Row ranges of about ``chunk`` pairs each (at least one row), from the rows' cumulative
    pair counts ``ends``."""
    bounds, start, done = [], 0, 0
    while start < len(ends):
        stop = int(torch.searchsorted(ends, done + chunk, right=True))
        stop = max(stop, start + 1)
        bounds.append((start, stop))
        start, done = stop, int(ends[stop - 1])
    return bounds


def _similarities(rows_z: Tensor, cols_z: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    return (accumulation(rows_z[rows]) * accumulation(cols_z[cols])).sum(1)


def _reduce(reduction: RowReduction, sims: Tensor, row_idx: Tensor, num_rows: int) -> RowStat:
    """``reduction`` of each row's pairs: ``sims[p]`` belongs to row ``row_idx[p]``."""
    values = reduction.fn(sims)
    out = values.new_zeros(num_rows)
    if reduction.kind == "sum":
        nonzero = row_idx.new_zeros(num_rows).index_add_(0, row_idx, (values != 0).long())
        return RowStat(out.index_add(0, row_idx, values), nonzero)
    # log Σ exp with a detached per-row max shift (the shift cancels: gradients stay exact)
    shift = torch.full_like(out, float("-inf")).scatter_reduce(
        0, row_idx, values.detach(), "amax", include_self=True
    )
    safe_shift = shift.masked_fill(shift == float("-inf"), 0.0)
    total = out.index_add(0, row_idx, torch.exp(values - safe_shift[row_idx]))
    return RowStat(safe_shift + total.log(), None)
