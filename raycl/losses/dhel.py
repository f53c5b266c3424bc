"""Decoupled Hyperspherical Energy Loss (Koromilas et al., ICML 2024), official code's form.

For views u (view 0) and v (view 1) of N items:

    L = −(1/N) Σ_i log [ exp(u_i·v_i/τ) / ( Σ_{j≠i} exp(u_i·u_j/τ) · Σ_{j≠i} exp(v_i·v_j/τ) ) ]

The energy (denominator) holds only same-view pairs: no positive, no cross-view term, so the
alignment gradient is the constant −1/τ. Split over anchors i of every view:

    pos = agg_i[ −mean_{p∈P(i)} s_ip/τ ]
    ent = c · agg_i[ LSE_{j ∈ same_view(i)} s_ij/τ − (log|same_view(i)| if log_mean_exp) ]
    total = pos + weight · ent

With ``include_augs=True`` (code default) every anchor has an energy element and c = V (one
energy per view, as in the formula); with ``include_augs=False`` only view-0 anchors do, c = 1.

At the defaults (τ = 0.3, V = 2) the loss is the formula above:

>>> import torch, torch.nn.functional as F
>>> from raycl.losses import DHELLoss
>>> views = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> u, v = F.normalize(views, dim=-1)
>>> def energy(x):
...     return (x @ x.T / 0.3).fill_diagonal_(float("-inf")).logsumexp(1)
>>> expected = (-(u * v).sum(1) / 0.3 + energy(u) + energy(v)).mean()
>>> torch.allclose(DHELLoss()(views).total, expected)
True
"""

from __future__ import annotations

from typing import Unpack

from torch import Tensor

from raycl.losses.aggregation import Aggregation
from raycl.losses.base import EngineOptions
from raycl.losses.infonce import InfoNCELoss
from raycl.losses.structure import PairStructure


class DHELLoss(InfoNCELoss):
    """DHEL: InfoNCE-style alignment, energy decoupled to same-view pairs."""

    name = "dhel"
    accepts_labels = True
    entropy_columns = "same_view"

    def __init__(
        self,
        temperature: float = 0.3,
        include_augs: bool = True,
        weight: float = 1.0,
        aggregation: Aggregation = "mean_per_term",
        log_mean_exp: bool = False,
        **engine: Unpack[EngineOptions],
    ) -> None:
        super().__init__(
            temperature=temperature,
            weight=weight,
            aggregation=aggregation,
            log_mean_exp=log_mean_exp,
            **engine,
        )
        self.include_augs = bool(include_augs)

    def entropy_members(self, rows: PairStructure) -> Tensor | None:
        return None if self.include_augs else rows.views == 0

    def ent_scale(self, cols: PairStructure) -> float:
        return float(cols.num_views) if self.include_augs else 1.0

    def hparams(self) -> dict[str, object]:
        return {"include_augs": self.include_augs, **super().hparams()}
