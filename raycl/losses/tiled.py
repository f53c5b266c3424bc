"""The similarity tiles of the tiled engine: reductions that need every entry of ``S``.

The forward pass walks ``(row block, column block)`` tiles of ``S = Z_rows · Z_colsᵀ`` and keeps
only per-row state: a running sum, or an online log-sum-exp (running max ``m`` and rescaled
sum ``a ← a·e^{m−m'} + Σ_j e^{v_j−m'}``). The backward pass recomputes each tile and forms
``∂L/∂S_tile`` from the saved per-row results ``r_i`` and upstream gradients ``g_i``:

    logsumexp:  ∂L/∂s_ij = g_i · exp(f(s_ij) − r_i) · f'(s_ij)      sum:  ∂L/∂s_ij = g_i · f'(s_ij)

then ``∂L/∂Z_rows += G·Z_cols`` and ``∂L/∂Z_cols += Gᵀ·Z_rows``, added straight into the
engine's gradient buffers (:mod:`raycl.losses.engine`). Memory: O(M) per-row state and a few
block² tiles; the embeddings are read, never copied.

Fast paths, all exact:

* rows and columns are the same batch → S and every column set are symmetric: only tiles on
  and above the diagonal are visited, each serving its rows and (transposed) its columns, so
  forward + backward cost two M×M×d GEMMs instead of four;
* ``logsumexp`` of an :class:`Affine` map → a fixed shift ``c ≥ max f`` replaces the running
  max (no overflow, no underflow while the range of f is ≤ 80), one ``exp`` per entry serves
  rows and columns, and f' is the constant ``a``. Similarities are bounded by 1 for unit-norm
  embeddings, else by ``max‖z_rows‖ · max‖z_cols‖`` (Cauchy–Schwarz; one pass over the
  embeddings per call: the logit embeddings of the two-tower losses carry their scale);
* ``sum`` of a map that knows its derivative (:class:`Hinge`, :class:`Softplus`) → no autograd
  on the tile.

Other maps get f' from autograd on the tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raycl.losses.reductions import Affine, RowReduction, RowStat, accumulation
from raycl.losses.structure import PairStructure

NEG_INF = float("-inf")
# A fixed log-sum-exp shift is exact while exp(f − c) stays a normal fp32 number for every f.
FIXED_SHIFT_MAX_RANGE = 80.0


def default_block_size(device: torch.device) -> int:
    """Tile edge: large enough to keep GEMMs efficient, small enough to stay in cache/memory."""
    return 8192 if device.type == "cuda" else 1024


def tile_grid(
    num_rows: int, num_cols: int, block: int, symmetric: bool
) -> list[tuple[int, int, int, int, bool]]:
    """The tiles the engine visits: ``(row start, row stop, col start, col stop, mirrored)``.

    Symmetric: the tiles on and above the diagonal, off-diagonal ones ``mirrored`` (they also
    serve their columns). Each visited tile costs one GEMM forward and three backward
    (recompute, ``G·Z_cols``, ``Gᵀ·Z_rows``): two M×M×d GEMMs in all when symmetric.
    """
    tiles = []
    for r0 in range(0, num_rows, block):
        for c0 in range(r0 if symmetric else 0, num_cols, block):
            r1, c1 = min(r0 + block, num_rows), min(c0 + block, num_cols)
            tiles.append((r0, r1, c0, c1, symmetric and c0 != r0))
    return tiles


@dataclass
class TilePlan:
    """The tile reductions of one batch: their rows, columns, tile edge and fast paths."""

    rows: PairStructure
    cols: PairStructure
    reductions: list[RowReduction]
    block: int
    symmetric: bool
    unit_norm: bool

    def fixed_shift(self, reduction: RowReduction, bound: float = 1.0) -> float | None:
        """The constant log-sum-exp shift ``max f`` over similarities ``|s| ≤ bound`` where it
        is exact, else ``None``."""
        fn = reduction.fn
        if not _affine_logsumexp(reduction):
            return None
        spread = abs(fn.scale) * bound
        return spread + fn.shift if 2 * spread <= FIXED_SHIFT_MAX_RANGE else None

    def fixed_shifts(self, rows_z: Tensor, cols_z: Tensor) -> list[float | None]:
        """:meth:`fixed_shift` of every reduction, with the similarity bound of these inputs
        (its pass over the embeddings only where a reduction could take a fixed shift)."""
        if not any(_affine_logsumexp(r) for r in self.reductions):
            return [None] * len(self.reductions)
        bound = self.similarity_bound(rows_z, cols_z)
        return [self.fixed_shift(r, bound) for r in self.reductions]

    def similarity_bound(self, rows_z: Tensor, cols_z: Tensor) -> float:
        """A bound on ``|s_ij|``: 1 for unit norms, else the product of the largest norms."""
        if self.unit_norm:
            return 1.0
        largest = [
            max(float(torch.linalg.vector_norm(accumulation(z[i : i + self.block]), dim=1).max())
                for i in range(0, len(z), self.block))
            for z in (rows_z, cols_z)
        ]  # fmt: skip
        return largest[0] * largest[1]

    def tiles(self) -> list[tuple[int, int, int, int, bool]]:
        """``(row start, row stop, col start, col stop, mirrored)`` for every tile to visit."""
        return tile_grid(len(self.rows), len(self.cols), self.block, self.symmetric)

    def __post_init__(self) -> None:
        # Host copies of the keys, so each tile's masks can be planned without device syncs.
        self._host = {
            key: (getattr(self.rows, key).cpu(), getattr(self.cols, key).cpu())
            for key in ("index", "ids", "views")
            if getattr(self.rows, key) is not None
        }

    def masks(self, r0: int, r1: int, c0: int, c1: int) -> dict[str, Tensor | bool | None]:
        """The column-set masks of one tile: ``None`` where every entry counts, ``False``
        where none does (the tile is skipped for that reduction), else a boolean tile."""
        rows, cols = self.rows.slice(r0, r1), self.cols.slice(c0, c1)

        def relation(key: str) -> str:
            row_keys, col_keys = self._host[key]
            a, b = row_keys[r0:r1], col_keys[c0:c1]
            a_min, a_max, b_min, b_max = int(a.min()), int(a.max()), int(b.min()), int(b.max())
            if a_max < b_min or b_max < a_min:
                return "disjoint"
            return "same" if a_min == a_max == b_min == b_max else "mixed"

        not_self = None
        if relation("index") != "disjoint":
            not_self = rows.index[:, None] != cols.index[None, :]
        masks: dict[str, Tensor | bool | None] = {}
        for which in {r.columns for r in self.reductions}:
            if which == "others":
                masks[which] = not_self
                continue
            key = "views" if which in ("same_view", "cross_view") else "ids"
            kind = relation(key)
            if which in ("negatives", "cross_view"):  # a different key: never the row itself
                masks[which] = {"disjoint": None, "same": False}.get(kind)
                if kind == "mixed":
                    masks[which] = getattr(rows, key)[:, None] != getattr(cols, key)[None, :]
            elif kind == "disjoint":
                masks[which] = False
            elif kind == "same":
                masks[which] = not_self
            else:
                mask = getattr(rows, key)[:, None] == getattr(cols, key)[None, :]
                masks[which] = mask if not_self is None else mask & not_self
        return masks


def _affine_logsumexp(reduction: RowReduction) -> bool:
    return reduction.kind == "logsumexp" and isinstance(reduction.fn, Affine)


def _apply(reduction: RowReduction, sim: Tensor, mask: Tensor | None) -> Tensor:
    """f(s) on a tile, with entries outside the column set at -inf (logsumexp) or 0 (sum)."""
    if mask is None:
        return reduction.fn(sim)
    values = reduction.fn(sim.where(mask, 0.0))
    return values.masked_fill(~mask, NEG_INF if reduction.kind == "logsumexp" else 0.0)


def _shifted_exp(
    reduction: RowReduction,
    sim: Tensor | None,
    mask: Tensor | None,
    shift: float,
    z_r: Tensor,
    z_c: Tensor,
) -> Tensor:
    """exp(f(s) − c) on a tile for an Affine f, 0 outside the column set: from ``sim`` when the
    tile's similarities are at hand, else with f fused into the GEMM (one pass over the tile
    fewer, and no similarity tile)."""
    fn = reduction.fn
    assert isinstance(fn, Affine)
    if sim is None:
        out = torch.addmm(z_r.new_full((1, 1), fn.shift - shift), z_r, z_c.T, alpha=fn.scale)
    else:
        out = sim.mul(fn.scale).add_(fn.shift - shift)
    out.exp_()
    return out if mask is None else out.masked_fill_(~mask, 0.0)


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


def _add_reduced(target: Tensor, values: Tensor, r0: int, c0: int, mirrored: bool) -> None:
    """Row sums of a tile into ``target[rows]`` (and column sums into ``target[cols]``)."""
    target[r0 : r0 + values.shape[0]] += values.sum(1)
    if mirrored:
        target[c0 : c0 + values.shape[1]] += values.sum(0)


class TileReductions:
    """The reductions that need the similarity tiles, walked block by block (module doc)."""

    def __init__(self, plan: TilePlan) -> None:
        self.plan = plan
        self.shifts: list[float | None] = []
        self.results: list[Tensor] = []

    def forward(self, rows_z: Tensor, cols_z: Tensor) -> list[RowStat]:
        plan = self.plan
        shifts = self.shifts = plan.fixed_shifts(rows_z, cols_z)
        acc_dtype = torch.promote_types(rows_z.dtype, torch.float32)
        zeros = torch.zeros(len(plan.rows), dtype=acc_dtype, device=rows_z.device)
        online = [
            _OnlineLogSumExp(zeros) if r.kind == "logsumexp" and c is None else None
            for r, c in zip(plan.reductions, shifts, strict=True)
        ]
        sums = [zeros.clone() for _ in plan.reductions]
        nonzeros = [zeros.clone() if r.kind == "sum" else None for r in plan.reductions]
        fused = self._fused(rows_z)
        for r0, r1, c0, c1, mirrored in plan.tiles():
            masks = plan.masks(r0, r1, c0, c1)
            if all(m is False for m in masks.values()):
                continue  # no column of this tile counts for any reduction
            z_r, z_c = rows_z[r0:r1], cols_z[c0:c1]
            sim = None if fused else accumulation(z_r @ z_c.T)
            for k, reduction in enumerate(plan.reductions):
                mask = masks[reduction.columns]
                if mask is False:
                    continue
                if shifts[k] is not None:
                    tile = _shifted_exp(reduction, sim, mask, shifts[k], z_r, z_c)
                    _add_reduced(sums[k], tile, r0, c0, mirrored)
                    continue
                assert sim is not None
                values = _apply(reduction, sim, mask)
                if online[k] is not None:
                    online[k].update(r0, values, dim=1)
                    if mirrored:
                        online[k].update(c0, values, dim=0)
                    continue
                _add_reduced(sums[k], values, r0, c0, mirrored)
                _add_reduced(nonzeros[k], (values != 0).to(acc_dtype), r0, c0, mirrored)
            masks = sim = tile = values = None  # this tile's buffers go before the next's
        self.results = [
            lse.result() if lse is not None else (s.log() + c if c is not None else s)
            for lse, s, c in zip(online, sums, shifts, strict=True)
        ]
        return [
            RowStat(value, None if n is None else n.long())
            for value, n in zip(self.results, nonzeros, strict=True)
        ]

    def _fused(self, z: Tensor) -> bool:
        """Whether the one reduction on tiles is a fixed-shift log-sum-exp whose map can be
        fused into the GEMM (full-precision embeddings: the GEMM's output is the tile)."""
        single = len(self.shifts) == 1 and self.shifts[0] is not None
        return single and z.dtype in (torch.float32, torch.float64)

    def backward(
        self,
        rows_z: Tensor,
        cols_z: Tensor,
        grads: list[Tensor],
        grad_rows: Tensor,
        grad_cols: Tensor,
    ) -> None:
        plan, shifts, results = self.plan, self.shifts, self.results
        fused = self._fused(rows_z)
        # Per-row weights of the fixed-shift path: ∂L/∂s_ij = exp(f − c) · a·g_i·e^{c − r_i}.
        row_weights = [
            None
            if c is None
            else (r.fn.scale * g * torch.exp(c - res)).masked_fill(res == NEG_INF, 0.0)
            for r, g, res, c in zip(plan.reductions, grads, results, shifts, strict=True)
        ]
        # Entries of empty log-sum-exp rows are all -inf; a 0 shift keeps exp() at exactly 0.
        row_shifts = [res.masked_fill(res == NEG_INF, 0.0) for res in results]
        # Sums of maps that know their derivative (hinges) skip autograd; the rest use it.
        explicit = [
            k
            for k, r in enumerate(plan.reductions)
            if r.kind == "sum" and hasattr(r.fn, "derivative")
        ]
        generic = [k for k, c in enumerate(shifts) if c is None and k not in explicit]
        for r0, r1, c0, c1, mirrored in plan.tiles():
            masks = plan.masks(r0, r1, c0, c1)
            active = {k for k, r in enumerate(plan.reductions) if masks[r.columns] is not False}
            if not active:
                continue
            z_r, z_c = rows_z[r0:r1], cols_z[c0:c1]
            sim = None if fused else accumulation(z_r @ z_c.T)
            parts = []  # each active reduction's share of ∂L/∂S on this tile
            for k, weights in enumerate(row_weights):
                if weights is not None and k in active:
                    reduction = plan.reductions[k]
                    mask = masks[reduction.columns]
                    tile = _shifted_exp(reduction, sim, mask, shifts[k], z_r, z_c)
                    coefficient = weights[r0:r1, None]
                    if mirrored:
                        coefficient = coefficient + weights[None, c0:c1]
                    parts.append(tile.mul_(coefficient))
            for k in active.intersection(explicit):
                reduction = plan.reductions[k]
                mask = masks[reduction.columns]
                slope = reduction.fn.derivative(sim)
                weights = grads[k][r0:r1, None]
                if mirrored:
                    weights = weights + grads[k][None, c0:c1]
                parts.append(
                    (slope if mask is None else slope.masked_fill_(~mask, 0.0)).mul_(weights)
                )
            if active.intersection(generic):
                with torch.enable_grad():
                    leaf = sim.detach().requires_grad_(True)
                    surrogate = sum(
                        _surrogate(plan, k, leaf, masks, grads[k], row_shifts[k], r0, c0, mirrored)
                        for k in active.intersection(generic)
                    )
                    parts.append(torch.autograd.grad(surrogate, leaf)[0])
            grad_sim = parts[0]
            for part in parts[1:]:
                grad_sim += part
            grad_sim = grad_sim.to(rows_z.dtype)
            if grad_rows.dtype == grad_sim.dtype:  # accumulate in place, no product tensor
                grad_rows[r0:r1].addmm_(grad_sim, z_c)
                grad_cols[c0:c1].addmm_(grad_sim.T, z_r)
            else:
                grad_rows[r0:r1] += grad_sim @ z_c
                grad_cols[c0:c1] += grad_sim.T @ z_r
            # this tile's buffers go before the next's: one tile's worth is alive at a time
            masks = sim = parts = grad_sim = tile = slope = coefficient = leaf = None


def _surrogate(
    plan: TilePlan,
    k: int,
    sim: Tensor,
    masks: dict[str, Tensor | bool | None],
    grad: Tensor,
    row_shift: Tensor,
    r0: int,
    c0: int,
    mirrored: bool,
) -> Tensor:
    """A scalar whose gradient w.r.t. the tile is reduction k's share of ∂L/∂S_tile."""
    reduction = plan.reductions[k]
    values = _apply(reduction, sim, masks[reduction.columns])
    n_r, n_c = values.shape
    g_rows, g_cols = grad[r0 : r0 + n_r, None], grad[None, c0 : c0 + n_c]
    if reduction.kind == "sum":
        return ((g_rows + g_cols if mirrored else g_rows) * values).sum()
    total = (g_rows * torch.exp(values - row_shift[r0 : r0 + n_r, None])).sum()
    if mirrored:
        total = total + (g_cols * torch.exp(values - row_shift[None, c0 : c0 + n_c])).sum()
    return total
