"""The tiled engine: every row reduction of a loss in one autograd node, at the memory floor.

Each reduction is evaluated by the cheapest exact method that applies:

* ``sum`` of an :class:`~raycl.losses.reductions.Affine` map → a closed form in O(M·d)
  (:mod:`raycl.losses.affine`), unless it sums positives over many keys (self-supervised ids:
  per-key sums of half the batch) that are few per anchor;
* positives that are few (self-supervised views) → their pair list (:mod:`raycl.losses.pairs`);
* anything else → a walk over the similarity tiles (:mod:`raycl.losses.tiled`).

The node owns the whole O(M·d) state, so it keeps only what the exact computation needs:

    forward     ẑ = z / ‖z‖ (one copy, none with ``normalize=False``), per-row results, tiles
    backward    one gradient buffer G (per input; one for a batch against itself) that every
                method adds into, then ∂L/∂z = (G − ẑ·(ẑ·G)) / ‖z‖ in place, chunk by chunk

so forward + backward hold the embeddings, ẑ and G: two M×d arrays above the inputs (the
gradient becomes the inputs' ``.grad``), plus O(M) per-row state, the pair list, and a few
block² tiles. A bf16/fp16 batch keeps G in float32 (one half-size cast back at the end).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

from raycl.losses.affine import AffineSums, few_keys
from raycl.losses.pairs import PairReductions, few_positives
from raycl.losses.reductions import Affine, RowReduction, RowStat, accumulation
from raycl.losses.structure import PairStructure
from raycl.losses.tiled import TilePlan, TileReductions, default_block_size

# F.normalize's floor on the norm: a smaller norm divides by this instead.
NORM_EPS = 1e-12


class Method(Protocol):
    """What each method gives the engine: its reductions' per-row results, and their share of
    the gradient added into the engine's buffers (``grad_rows is grad_cols`` for a batch
    against itself)."""

    def forward(self, rows_z: Tensor, cols_z: Tensor) -> list[RowStat]: ...

    def backward(
        self,
        rows_z: Tensor,
        cols_z: Tensor,
        grads: list[Tensor],
        grad_rows: Tensor,
        grad_cols: Tensor,
    ) -> None: ...


def reduce_rows_tiled(
    rows_z: Tensor,
    cols_z: Tensor,
    rows: PairStructure,
    cols: PairStructure,
    reductions: list[RowReduction],
    block_size: int | None = None,
    normalize: bool = False,
) -> list[RowStat]:
    """Blockwise twin of :func:`raycl.losses.reductions.reduce_rows_materialised`.

    ``normalize`` L2-normalises the embeddings inside the engine (and promises unit norms to
    the fixed-shift path); pass ``cols_z is rows_z`` and ``cols is rows`` for a batch against
    itself (the symmetric fast path).
    """
    block = block_size or default_block_size(rows_z.device)
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    engine = _Engine(rows, cols, reductions, block, cols_z is rows_z and cols is rows, normalize)
    inputs = (rows_z,) if engine.symmetric else (rows_z, cols_z)
    outputs = _EngineFunction.apply(engine, *inputs)
    counts = iter(outputs[len(reductions) :])
    return [
        RowStat(value, next(counts) if has_count else None)
        for value, has_count in zip(outputs, engine.has_count, strict=False)
    ]


class _Engine:
    """Which method evaluates which reduction, and the state the backward reads."""

    def __init__(
        self,
        rows: PairStructure,
        cols: PairStructure,
        reductions: list[RowReduction],
        block: int,
        symmetric: bool,
        normalize: bool,
    ) -> None:
        self.symmetric, self.normalize, self.block = symmetric, normalize, block
        pairs = any(r.columns == "positives" for r in reductions) and few_positives(rows, cols)
        closed = [
            k
            for k, r in enumerate(reductions)
            if r.kind == "sum"
            and isinstance(r.fn, Affine)
            and (r.columns != "positives" or not pairs or few_keys(cols, r.columns))
        ]
        on_pairs = [
            k
            for k, r in enumerate(reductions)
            if pairs and r.columns == "positives" and k not in closed
        ]
        on_tiles = [k for k in range(len(reductions)) if k not in on_pairs + closed]
        self.parts: list[tuple[list[int], Method]] = []  # (its reductions' indices, method)
        if on_pairs:
            part = PairReductions(rows, cols, [reductions[k] for k in on_pairs], block)
            self.parts.append((on_pairs, part))
        for k in closed:
            self.parts.append(([k], AffineSums(rows, cols, reductions[k], block)))
        if on_tiles:
            plan = TilePlan(
                rows, cols, [reductions[k] for k in on_tiles], block, symmetric, normalize
            )
            self.parts.append((on_tiles, TileReductions(plan)))
        self.num_reductions = len(reductions)
        self.has_count: list[bool] = []
        self.unit: list[Tensor] = []  # ẑ of rows (and columns) when normalised
        self.norms: list[Tensor] = []

    def forward(self, rows_z: Tensor, cols_z: Tensor) -> list[RowStat]:
        stats: list[RowStat | None] = [None] * self.num_reductions
        for ks, part in self.parts:
            for k, stat in zip(ks, part.forward(rows_z, cols_z), strict=True):
                stats[k] = stat
        return stats  # type: ignore[return-value]

    def backward(
        self, rows_z: Tensor, cols_z: Tensor, grads: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(rows_z.dtype, torch.float32)
        grad_rows = torch.zeros(rows_z.shape, dtype=dtype, device=rows_z.device)
        grad_cols = grad_rows if self.symmetric else grad_rows.new_zeros(cols_z.shape)
        for ks, part in self.parts:
            part.backward(rows_z, cols_z, [grads[k] for k in ks], grad_rows, grad_cols)
        return grad_rows, grad_cols

    def chunks(self, size: int) -> Iterator[slice]:
        for start in range(0, size, self.block):
            yield slice(start, start + self.block)


def _normalised(engine: _Engine, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(ẑ, max(‖z‖, eps))`` as ``F.normalize`` computes them: ẑ in z's dtype, the norms in
    the accumulation dtype."""
    unit = torch.empty_like(z)
    norms = torch.empty(len(z), dtype=torch.promote_types(z.dtype, torch.float32), device=z.device)
    for rows in engine.chunks(len(z)):
        block = accumulation(z[rows])
        norms[rows] = torch.linalg.vector_norm(block, dim=1).clamp_min_(NORM_EPS)
        unit[rows] = block / norms[rows, None]
    return unit, norms


def _normalise_backward_(engine: _Engine, grad: Tensor, unit: Tensor, norms: Tensor) -> None:
    """``grad ← (grad − ẑ·(ẑ·grad)) / ‖z‖`` in place (``grad / eps`` where ‖z‖ ≤ eps)."""
    for rows in engine.chunks(len(grad)):
        g, u = grad[rows], accumulation(unit[rows])
        projection = (g * u).sum(1, keepdim=True)
        projection.masked_fill_(norms[rows, None] <= NORM_EPS, 0.0)
        g.sub_(u * projection).div_(norms[rows, None])


class _EngineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, engine: _Engine, rows_z: Tensor, cols_z: Tensor | None = None):
        inputs = [rows_z] if cols_z is None else [rows_z, cols_z]
        if engine.normalize:
            normalised = [_normalised(engine, z) for z in inputs]
            engine.unit = [u for u, _ in normalised]
            engine.norms = [n for _, n in normalised]
            views = engine.unit
        else:
            views = inputs
        stats = engine.forward(views[0], views[-1])
        engine.has_count = [s.nonzero is not None for s in stats]
        counts = [s.nonzero for s in stats if s.nonzero is not None]
        ctx.engine = engine
        ctx.save_for_backward(*inputs)
        ctx.mark_non_differentiable(*counts)
        return (*(s.value for s in stats), *counts)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        engine: _Engine = ctx.engine
        inputs = ctx.saved_tensors
        views = engine.unit if engine.normalize else list(inputs)
        grads = list(grads[: engine.num_reductions])
        grad_rows, grad_cols = engine.backward(views[0], views[-1], grads)
        out = [grad_rows] if engine.symmetric else [grad_rows, grad_cols]
        if engine.normalize:
            for grad, unit, norms in zip(out, engine.unit, engine.norms, strict=True):
                _normalise_backward_(engine, grad, unit, norms)
        return None, *(g.to(z.dtype) for g, z in zip(out, inputs, strict=True))
