"""Exact blockwise evaluation of row reductions, never holding the similarity matrix.

The forward pass walks ``(row block, column block)`` tiles of ``S = Z_rows · Z_colsᵀ`` and keeps
only per-row running state: an online log-sum-exp (running max ``m`` and rescaled sum ``a``,
``a ← a·e^{m−m'} + Σ_j e^{v_j−m'}``) or a running sum. The backward pass recomputes each tile
and forms its gradient ``∂L/∂S_tile`` from the saved per-row results:

    logsumexp:  ∂L/∂s_ij = g_i · exp(f(s_ij) − r_i) · f'(s_ij)      sum:  ∂L/∂s_ij = g_i · f'(s_ij)

(f' by autograd on the tile), then ``∂L/∂Z_rows += G·Z_cols`` and ``∂L/∂Z_cols += Gᵀ·Z_rows``.
Memory is O(M·d + block²). When rows and columns are the same batch, S is symmetric and so
are the column sets: only tiles on and above the diagonal are visited, each serving both its
rows and (transposed) its columns, so forward + backward cost two M×M×d GEMMs instead of four.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raycl.losses.reductions import RowReduction, RowStat, accumulation
from raycl.losses.structure import PairStructure

NEG_INF = float("-inf")


def default_block_size(device: torch.device) -> int:
    """Tile edge: large enough to keep GEMMs efficient, small enough to stay in cache/memory."""
    return 8192 if device.type == "cuda" else 1024


def reduce_rows_tiled(
    rows_z: Tensor,
    cols_z: Tensor,
    rows: PairStructure,
    cols: PairStructure,
    reductions: list[RowReduction],
    block_size: int | None = None,
) -> list[RowStat]:
    """Blockwise twin of :func:`raycl.losses.reductions.reduce_rows_materialised`."""
    block = block_size or default_block_size(rows_z.device)
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    plan = _Plan(rows, cols, reductions, block, symmetric=cols_z is rows_z and cols is rows)
    inputs = (rows_z,) if plan.symmetric else (rows_z, cols_z)
    outputs = _TiledReductions.apply(plan, *inputs)
    values, nonzeros = outputs[: len(reductions)], outputs[len(reductions) :]
    nonzero = iter(nonzeros)
    return [
        RowStat(v, next(nonzero) if r.kind == "sum" else None)
        for v, r in zip(values, reductions, strict=True)
    ]


@dataclass
class _Plan:
    rows: PairStructure
    cols: PairStructure
    reductions: list[RowReduction]
    block: int
    symmetric: bool

    def tiles(self) -> list[tuple[int, int, int, int, bool]]:
        """``(row start, row stop, col start, col stop, mirrored)`` for every tile to visit."""
        row_starts = range(0, len(self.rows), self.block)
        tiles = []
        for r0 in row_starts:
            c_first = r0 if self.symmetric else 0
            for c0 in range(c_first, len(self.cols), self.block):
                r1, c1 = min(r0 + self.block, len(self.rows)), min(c0 + self.block, len(self.cols))
                tiles.append((r0, r1, c0, c1, self.symmetric and c0 != r0))
        return tiles

    def masks(self, r0: int, r1: int, c0: int, c1: int) -> dict[str, Tensor | None]:
        """The column-set masks of one tile; ``None`` where every entry counts."""
        rows, cols = self.rows.slice(r0, r1), self.cols.slice(c0, c1)
        has_self = _ranges_overlap(rows.index, cols.index)
        not_self = rows.index[:, None] != cols.index[None, :] if has_self else None
        masks: dict[str, Tensor | None] = {}
        for which in {r.columns for r in self.reductions}:
            if which == "others":
                masks[which] = not_self
            elif which == "negatives":
                masks[which] = rows.ids[:, None] != cols.ids[None, :]
            else:
                key = rows.ids if which == "positives" else rows.views
                col_key = cols.ids if which == "positives" else cols.views
                mask = key[:, None] == col_key[None, :]
                masks[which] = mask if not_self is None else mask & not_self
        return masks


def _ranges_overlap(a: Tensor, b: Tensor) -> bool:
    return bool(a.min() <= b.max()) and bool(b.min() <= a.max())


def _apply(reduction: RowReduction, sim: Tensor, mask: Tensor | None) -> Tensor:
    """f(s) on a tile, with entries outside the column set at -inf (logsumexp) or 0 (sum)."""
    if mask is None:
        return reduction.fn(sim)
    values = reduction.fn(sim.where(mask, 0.0))
    return values.masked_fill(~mask, NEG_INF if reduction.kind == "logsumexp" else 0.0)


class _OnlineLogSumExp:
    """Running log-sum-exp over column blocks for a set of rows (and, mirrored, columns)."""

    def __init__(self, like: Tensor) -> None:
        self.max = torch.full_like(like, NEG_INF)
        self.sum = torch.zeros_like(like)

    def update(self, start: int, values: Tensor, dim: int) -> None:
        stop = start + values.shape[1 - dim]
        old = self.max[start:stop]
        new = torch.maximum(old, values.amax(dim))
        shift = new.masked_fill(new == NEG_INF, 0.0)
        rescaled = self.sum[start:stop] * torch.exp(old - shift)
        self.sum[start:stop] = rescaled + torch.exp(values - shift.unsqueeze(dim)).sum(dim)
        self.max[start:stop] = new

    def result(self) -> Tensor:
        return self.max + self.sum.log()


class _TiledReductions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, rows_z: Tensor, cols_z: Tensor | None = None):
        cols_z = rows_z if cols_z is None else cols_z
        acc_dtype = torch.promote_types(rows_z.dtype, torch.float32)
        like = torch.zeros(len(plan.rows), dtype=acc_dtype, device=rows_z.device)
        states: list[_OnlineLogSumExp | tuple[Tensor, Tensor]] = [
            _OnlineLogSumExp(like) if r.kind == "logsumexp" else (like.clone(), like.clone())
            for r in plan.reductions
        ]
        for r0, r1, c0, c1, mirrored in plan.tiles():
            sim = accumulation(rows_z[r0:r1] @ cols_z[c0:c1].T)
            masks = plan.masks(r0, r1, c0, c1)
            for reduction, state in zip(plan.reductions, states, strict=True):
                values = _apply(reduction, sim, masks[reduction.columns])
                if isinstance(state, _OnlineLogSumExp):
                    state.update(r0, values, dim=1)
                    if mirrored:
                        state.update(c0, values, dim=0)
                    continue
                total, nonzero = state
                total[r0:r1] += values.sum(1)
                nonzero[r0:r1] += (values != 0).sum(1)
                if mirrored:
                    total[c0:c1] += values.sum(0)
                    nonzero[c0:c1] += (values != 0).sum(0)
        results = [s.result() if isinstance(s, _OnlineLogSumExp) else s[0] for s in states]
        nonzeros = [s[1].long() for s in states if not isinstance(s, _OnlineLogSumExp)]
        ctx.plan = plan
        ctx.save_for_backward(rows_z, cols_z, *results)
        ctx.mark_non_differentiable(*nonzeros)
        return (*results, *nonzeros)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        plan: _Plan = ctx.plan
        rows_z, cols_z, *results = ctx.saved_tensors
        grads = grads[: len(plan.reductions)]
        acc_dtype = torch.promote_types(rows_z.dtype, torch.float32)
        grad_rows = torch.zeros(rows_z.shape, dtype=acc_dtype, device=rows_z.device)
        grad_cols = grad_rows if plan.symmetric else grad_rows.new_zeros(cols_z.shape)
        # Entries of empty log-sum-exp rows are all -inf; a 0 shift keeps exp() at exactly 0.
        shifts = [r.masked_fill(r == NEG_INF, 0.0) for r in results]
        for r0, r1, c0, c1, mirrored in plan.tiles():
            z_r, z_c = rows_z[r0:r1], cols_z[c0:c1]
            masks = plan.masks(r0, r1, c0, c1)
            with torch.enable_grad():
                sim = accumulation(z_r @ z_c.T).detach().requires_grad_(True)
                surrogate = sim.new_zeros(())
                for reduction, grad, shift in zip(plan.reductions, grads, shifts, strict=True):
                    values = _apply(reduction, sim, masks[reduction.columns])
                    surrogate = surrogate + _surrogate(
                        reduction, values, grad, shift, r0, c0, mirrored
                    )
                (grad_sim,) = torch.autograd.grad(surrogate, sim)
            grad_sim = grad_sim.to(rows_z.dtype)
            grad_rows[r0:r1] += grad_sim @ z_c
            grad_cols[c0:c1] += grad_sim.T @ z_r
        grad_rows = grad_rows.to(rows_z.dtype)
        if plan.symmetric:
            return None, grad_rows
        return None, grad_rows, grad_cols.to(cols_z.dtype)


def _surrogate(
    reduction: RowReduction,
    values: Tensor,
    grad: Tensor,
    shift: Tensor,
    r0: int,
    c0: int,
    mirrored: bool,
) -> Tensor:
    """A scalar whose gradient w.r.t. the tile is this reduction's share of ∂L/∂S_tile."""
    n_r, n_c = values.shape
    g_rows = grad[r0 : r0 + n_r, None]
    if reduction.kind == "logsumexp":
        total = (g_rows * torch.exp(values - shift[r0 : r0 + n_r, None])).sum()
        if mirrored:
            total = (
                total
                + (grad[None, c0 : c0 + n_c] * torch.exp(values - shift[None, c0 : c0 + n_c])).sum()
            )
        return total
    weights = g_rows + grad[None, c0 : c0 + n_c] if mirrored else g_rows
    return (weights * values).sum()
