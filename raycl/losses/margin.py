"""Contrastive margin loss (Hadsell et al. 2006) on cosine similarity.

    pos = agg_{(i,p) positive} [ m_pos − s_ip ]_+      (pull positives above m_pos)
    ent = agg_{(i,n) negative} [ s_in − m_neg ]_+      (push negatives below m_neg)
    total = pos + weight · ent

The entropy term is a short-range repulsive pair potential. Defaults follow
pytorch-metric-learning's ContrastiveLoss with cosine similarity (pos_margin=1,
neg_margin=0, each term averaged over its non-zero elements).

Two items in 2-D: each positive pair has s = 0.6, so pos = 1 − 0.6 = 0.4; the negatives have
s = 0 (inactive, left out of the mean), 0.8, 0.8 and 0.96, so ent = 2.56 / 3:

>>> import torch
>>> from raycl.losses import MarginLoss
>>> views = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])
>>> out = MarginLoss()(views)
>>> round(out.pos.item(), 4), round(out.ent.item(), 4), round(out.total.item(), 4)
(0.4, 0.8533, 1.2533)
"""

from __future__ import annotations

from typing import Unpack

from raycl.losses.aggregation import AGGREGATIONS, Aggregation, TermSum
from raycl.losses.base import ContrastiveLoss, EngineOptions, check_number, pair_term
from raycl.losses.reductions import Hinge, RowReduction, RowStat
from raycl.losses.structure import PairStructure, column_counts


class MarginLoss(ContrastiveLoss):
    """Hinge on positive and negative similarities with margins ``pos_margin``, ``neg_margin``."""

    name = "margin"
    aggregations = AGGREGATIONS

    def __init__(
        self,
        pos_margin: float = 1.0,
        neg_margin: float = 0.0,
        weight: float = 1.0,
        aggregation: Aggregation = "mean_nonzero",
        **engine: Unpack[EngineOptions],
    ) -> None:
        super().__init__(weight=weight, aggregation=aggregation, **engine)
        self.pos_margin = check_number("pos_margin", pos_margin)
        self.neg_margin = check_number("neg_margin", neg_margin)

    def reductions(self) -> list[RowReduction]:
        return [
            RowReduction("positives", "sum", Hinge(self.pos_margin, sign=-1.0)),
            RowReduction("negatives", "sum", Hinge(self.neg_margin, sign=1.0)),
        ]

    def term_sums(
        self, stats: list[RowStat], rows: PairStructure, cols: PairStructure
    ) -> tuple[TermSum, TermSum]:
        positives, negatives = stats
        return (
            pair_term(positives, column_counts(rows, cols, "positives")),
            pair_term(negatives, column_counts(rows, cols, "negatives")),
        )

    def hparams(self) -> dict[str, object]:
        return {"pos_margin": self.pos_margin, "neg_margin": self.neg_margin, **super().hparams()}
