"""InfoNCE / NT-Xent (SimCLR), with V ≥ 2 views, split into a positive and an entropy term.

For anchor i with positives P(i) (its other views) and all other rows A(i):

    ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} s_ip/τ  +  log Σ_{a∈A(i)} exp(s_ia/τ)
          └──────── positive term ─────┘     └────── entropy term ──────┘

    pos = agg_i[ −mean_p s_ip/τ ]   ent = agg_i[ LSE_{A(i)}(s/τ) − (log|A(i)| if log_mean_exp) ]
    total = pos + weight · ent

The defaults (weight=1, aggregation='mean_per_term', log_mean_exp=False) give NT-Xent
exactly. The log-mean-exp (``log_mean_exp=True``) shifts the value by log|A(i)| only: same
gradients, values comparable across batch sizes. ``weight`` decouples the balance from the
temperature.

At the defaults it is cross-entropy over the rows of S/τ with the diagonal masked out and the
other view as the target (2 views of 4 items):

>>> import torch, torch.nn.functional as F
>>> from raycl.losses import InfoNCELoss
>>> views = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> z = F.normalize(views.reshape(8, 8), dim=1)
>>> logits = (z @ z.T / 0.1).fill_diagonal_(float("-inf"))
>>> nt_xent = F.cross_entropy(logits, torch.arange(8).roll(4))
>>> torch.allclose(InfoNCELoss(temperature=0.1)(views).total, nt_xent)
True
>>> out = InfoNCELoss(weight=0.5)(views)
>>> torch.allclose(out.total, out.pos + 0.5 * out.ent)
True
"""

from __future__ import annotations

from typing import ClassVar, Unpack

from torch import Tensor

from raycl.losses.aggregation import Aggregation, TermSum
from raycl.losses.base import (
    ContrastiveLoss,
    EngineOptions,
    anchor_term,
    check_bool,
    check_number,
    entropy_value,
    positive_counts,
)
from raycl.losses.reductions import Affine, RowReduction, RowStat
from raycl.losses.structure import ColumnSet, PairStructure


class InfoNCELoss(ContrastiveLoss):
    """NT-Xent over V views; self-supervised (positives are the other views of an item)."""

    name = "infonce"
    accepts_labels = False
    entropy_columns: ClassVar[ColumnSet] = "others"

    def __init__(
        self,
        temperature: float = 0.1,
        weight: float = 1.0,
        aggregation: Aggregation = "mean_per_term",
        log_mean_exp: bool = False,
        **engine: Unpack[EngineOptions],
    ) -> None:
        super().__init__(weight=weight, aggregation=aggregation, **engine)
        self.temperature = check_number("temperature", temperature, minimum=0.0, strict=True)
        self.log_mean_exp = check_bool("log_mean_exp", log_mean_exp)

    def check_structure(self, rows: PairStructure, cols: PairStructure) -> None:
        positive_counts(rows, cols, self.name)

    @property
    def scaled(self) -> Affine:
        """s ↦ s/τ."""
        return Affine(1.0 / self.temperature)

    def reductions(self) -> list[RowReduction]:
        return [
            RowReduction("positives", "sum", self.scaled),
            RowReduction(self.entropy_columns, "logsumexp", self.scaled),
        ]

    def term_sums(
        self, stats: list[RowStat], rows: PairStructure, cols: PairStructure
    ) -> tuple[TermSum, TermSum]:
        positives, entropy = stats
        ent = entropy_value(entropy.value, rows, cols, self.entropy_columns, self.log_mean_exp)
        return self.positive_term(positives, rows, cols), anchor_term(
            ent, self.entropy_members(rows)
        )

    def positive_term(self, positives: RowStat, rows: PairStructure, cols: PairStructure):
        """Per anchor −mean_{p∈P(i)} s_ip/τ from the row sums of s/τ over positives."""
        return anchor_term(-positives.value / positive_counts(rows, cols, self.name))

    def entropy_members(self, rows: PairStructure) -> Tensor | None:
        """The anchors that carry an entropy element (None: every anchor)."""
        return None

    def hparams(self) -> dict[str, object]:
        return {
            "temperature": self.temperature,
            "log_mean_exp": self.log_mean_exp,
            **super().hparams(),
        }
