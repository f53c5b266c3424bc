"""Row reductions: the only thing a loss asks of the similarity matrix.

Every raycl loss is assembled from a few per-anchor reductions over a column set of the
similarity matrix ``S = Z_rows · Z_colsᵀ``:

    logsumexp:  r_i = log Σ_{j ∈ C(i)} exp(f(s_ij))       (entropy of InfoNCE, TCL, DHEL)
    sum:        r_i =     Σ_{j ∈ C(i)} f(s_ij)  (+ #nonzero)  (positive, kernel, hinge terms)

with ``f`` an elementwise map and ``C(i)`` one of the column sets of
:mod:`raycl.losses.structure`. Two engines evaluate them and agree to rounding:
:func:`reduce_rows_materialised` (the whole matrix at once, simple and fast for small batches)
and :mod:`raycl.losses.tiled` (blockwise, memory O(M·d)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from raycl.losses.structure import ColumnSet, PairStructure, column_mask

ReductionKind = Literal["logsumexp", "sum"]


@dataclass(frozen=True)
class RowReduction:
    """``kind`` over the columns ``columns`` of ``fn(similarity)`` for every anchor row."""

    columns: ColumnSet
    kind: ReductionKind
    fn: Callable[[Tensor], Tensor]


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
    # f is applied to masked-out entries replaced by 0, so singular maps (Riesz at s = 1) never
    # put inf * 0 = NaN into the gradient of entries that do not count.
    values = reduction.fn(sim.where(mask, 0.0))
    if reduction.kind == "sum":
        values = values.where(mask, 0.0)
        return RowStat(values.sum(1), (values != 0).sum(1))
    nonempty = mask.any(1, keepdim=True)
    logits = values.masked_fill(~mask, float("-inf")).where(nonempty, 0.0)
    lse = torch.logsumexp(logits, 1).masked_fill(~nonempty[:, 0], float("-inf"))
    return RowStat(lse, None)
