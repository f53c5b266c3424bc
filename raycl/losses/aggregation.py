"""Batch aggregation: how per-element loss values become the positive and entropy terms.

A loss's positive and entropy terms are each a collection of *elements* (per anchor for the
log-sum-exp losses, per pair for the pairwise ones), summarised by ``TermSum`` = (Σ values,
#elements, #non-zero elements). With ``P`` and ``E`` those of the two terms:

    sum            pos = ΣP                 ent = ΣE                  (grows with batch size)
    mean           pos = ΣP / (nP + nE)     ent = ΣE / (nP + nE)      (one global mean)
    mean_per_term  pos = ΣP / nP            ent = ΣE / nE             (batch-size invariant)
    mean_nonzero   pos = ΣP / max(zP, 1)    ent = ΣE / max(zE, 1)     (hinge losses, PML default)

Counts are tensors so that a distributed caller can all-reduce them to global counts.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

Aggregation = Literal["sum", "mean", "mean_per_term", "mean_nonzero"]
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "mean", "mean_per_term", "mean_nonzero")


class TermSum(NamedTuple):
    """Sum, element count and non-zero count of one loss term's elements."""

    total: Tensor
    count: Tensor
    nonzero: Tensor


def aggregate(pos: TermSum, ent: TermSum, aggregation: Aggregation) -> tuple[Tensor, Tensor]:
    """Reduce the two terms' element sums to ``(pos, ent)`` with ``aggregation``."""
    if aggregation == "sum":
        return pos.total, ent.total
    if aggregation == "mean":
        count = pos.count + ent.count
        return pos.total / count, ent.total / count
    if aggregation == "mean_per_term":
        return pos.total / pos.count, ent.total / ent.count
    if aggregation == "mean_nonzero":
        return pos.total / pos.nonzero.clamp_min(1), ent.total / ent.nonzero.clamp_min(1)
    raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
