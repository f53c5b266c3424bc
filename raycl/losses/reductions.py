"""Row reductions: the only thing a loss asks of the similarity matrix.

Every raycl loss is assembled from a few per-anchor reductions over a column set of the
similarity matrix ``S = Z_rows · Z_colsᵀ``:

    logsumexp:  r_i = log Σ_{j ∈ C(i)} exp(f(s_ij))       (entropy of InfoNCE, TCL, DHEL)
    sum:        r_i =     Σ_{j ∈ C(i)} f(s_ij)  (+ #nonzero)  (positive, kernel, hinge terms)

with ``f`` an elementwise map and ``C(i)`` one of the column sets of
:mod:`raycl.losses.structure`. Two engines evaluate them and agree to rounding:
:func:`reduce_rows_materialised` (the whole matrix at once, simple and fast for small batches)
and :mod:`raycl.losses.engine` (blockwise, memory O(M·d)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from raycl.losses.structure import ColumnSet, PairStructure, column_mask

ReductionKind = Literal["logsumexp", "sum"]


@dataclass(frozen=True)
class Affine:
    """The map ``f(s) = scale·s + shift``; engines recognise it and take closed forms."""

    scale: float
    shift: float = 0.0

    def __call__(self, s: Tensor) -> Tensor:
        return s * self.scale + self.shift if self.shift else s * self.scale


@dataclass(frozen=True)
class Hinge:
    """The map ``f(s) = [sign·(s − margin)]_+`` with its derivative (no autograd on tiles)."""

    margin: float
    sign: float

    def __call__(self, s: Tensor) -> Tensor:
        return (s - self.margin if self.sign > 0 else self.margin - s).clamp_min_(0)

    def derivative(self, s: Tensor) -> Tensor:
        """f'(s) = sign where the hinge is active, else 0."""
        if self.sign > 0:
            return (s > self.margin).to(s.dtype)
        return (s < self.margin).to(s.dtype).neg_()


@dataclass(frozen=True)
class Softplus:
    """The map ``f(s) = log(1 + e^s)`` with ``f'(s) = σ(s)`` (SigLIP's pair term; no autograd
    on tiles)."""

    def __call__(self, s: Tensor) -> Tensor:
        return F.softplus(s)

    def derivative(self, s: Tensor) -> Tensor:
        return torch.sigmoid(s)


@dataclass(frozen=True)
class RowReduction:
    """``kind`` over the columns ``columns`` of ``fn(similarity)`` for every anchor row."""

    columns: ColumnSet
    kind: ReductionKind
    fn: Callable[[Tensor], Tensor] | Affine | Hinge | Softplus


class RowStat(NamedTuple):
    """Per-row result: the reduced value (``-inf`` for an empty log-sum-exp) and, for sums,
    how many of the summed elements were non-zero (for the ``mean_nonzero`` aggregation)."""

    value: Tensor
    nonzero: Tensor | None


def reduce_rows_materialised(
    rows_z: Tensor,
    cols_z: Tensor,
    rows: PairStructure,
    cols: PairStructure,
    reductions: list[RowReduction],
) -> list[RowStat]:
    """Evaluate ``reductions`` on the full ``(len(rows), len(cols))`` similarity matrix."""
    sim = accumulation(rows_z @ cols_z.T)
    return [_reduce(sim, column_mask(rows, cols, r.columns), r) for r in reductions]


def accumulation(x: Tensor) -> Tensor:
    """``x`` in the accumulation dtype: fp32 for half-precision inputs, else unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _reduce(sim: Tensor, mask: Tensor, reduction: RowReduction) -> RowStat:
    # A non-affine f is applied to masked-out entries replaced by 0, so singular maps (Riesz at
    # s = 1) never put inf * 0 = NaN into the gradient of entries that do not count.
    affine = isinstance(reduction.fn, Affine)
    values = reduction.fn(sim if affine else sim.where(mask, 0.0))
    if reduction.kind == "sum":
        values = values.where(mask, 0.0)
        return RowStat(values.sum(1), (values != 0).sum(1))
    logits = values.masked_fill(~mask, float("-inf"))
    nonempty = mask.any(1)
    if not bool(nonempty.all()):
        logits = logits.where(nonempty[:, None], 0.0)
    return RowStat(torch.logsumexp(logits, 1).masked_fill(~nonempty, float("-inf")), None)
