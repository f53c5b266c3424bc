"""Tuned Contrastive Learning (Animesh & Chandraker), in the official code's form.

    L_i = −(1/|P(i)|) Σ_{p∈P(i)} log [ exp(s_ip/τ) / D_i ]
    D_i = Σ_{p∈P(i)} exp(s_ip/τ) + k1 · Σ_{p∈P(i)} exp(−s_ip) + k2 · Σ_{n∈Neg(i)} exp(s_in/τ)

(no τ in the k1 term, as in the code). Split as pos = agg_i[−mean_p s_ip/τ] and
ent = agg_i[log D_i − (log|A(i)| if log_mean_exp)]; total = pos + weight · ent.
k1 strengthens the pull on hard positives, k2 the push from negatives; k1=0, k2=1 is SupCon.
Positives come from labels (supervised) or, without labels, from the other views.

k1 = 0, k2 = 1 is SupCon exactly; the default k1 = 5000 adds the hard-positive term to D_i
(the positive term is the same, the entropy term larger):

>>> import torch
>>> from raycl.losses import SupConLoss, TCLLoss
>>> views = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> labels = torch.tensor([0, 0, 1, 1])
>>> supcon = SupConLoss()(views, labels)
>>> torch.allclose(TCLLoss(k1=0.0, k2=1.0)(views, labels).total, supcon.total)
True
>>> tcl = TCLLoss()(views, labels)
>>> torch.allclose(tcl.pos, supcon.pos), bool(tcl.ent > supcon.ent)
(True, True)
"""

from __future__ import annotations

import math
from typing import Unpack

import torch
from torch import Tensor

from raycl.losses.aggregation import Aggregation, TermSum
from raycl.losses.base import EngineOptions, anchor_term, check_number, entropy_value
from raycl.losses.infonce import InfoNCELoss
from raycl.losses.reductions import RowReduction, RowStat
from raycl.losses.structure import PairStructure


class TCLLoss(InfoNCELoss):
    """TCL with temperature τ and the tuning parameters k1 (hard positives), k2 (negatives)."""

    name = "tcl"
    accepts_labels = True

    def __init__(
        self,
        temperature: float = 0.1,
        k1: float = 5000.0,
        k2: float = 1.0,
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
        self.k1 = check_number("k1", k1, minimum=0.0)
        self.k2 = check_number("k2", k2, minimum=0.0)

    def positive_logit(self, s: Tensor) -> Tensor:
        """log(exp(s/τ) + k1·exp(−s)): a positive's share of D_i."""
        log_k1 = math.log(self.k1) if self.k1 > 0 else float("-inf")
        return torch.logaddexp(s / self.temperature, log_k1 - s)

    def reductions(self) -> list[RowReduction]:
        return [
            RowReduction("positives", "sum", self.scaled),
            RowReduction("positives", "logsumexp", self.positive_logit),
            RowReduction("negatives", "logsumexp", self.scaled),
        ]

    def term_sums(
        self, stats: list[RowStat], rows: PairStructure, cols: PairStructure
    ) -> tuple[TermSum, TermSum]:
        positives, positive_mass, negative_mass = stats
        log_k2 = math.log(self.k2) if self.k2 > 0 else float("-inf")
        log_d = torch.logaddexp(positive_mass.value, log_k2 + negative_mass.value)
        ent = entropy_value(log_d, rows, cols, "others", self.log_mean_exp)
        return self.positive_term(positives, rows, cols), anchor_term(ent)

    def hparams(self) -> dict[str, object]:
        return {"k1": self.k1, "k2": self.k2, **super().hparams()}
