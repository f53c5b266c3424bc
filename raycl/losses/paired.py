"""What the two-tower losses share: image–text pairs as two views, logits from the head.

A paired batch is views ``(2, N, d')``: view 0 the images, view 1 the texts, item n a pair,
each row already a logit embedding of :class:`~raycl.losses.logits.LogitHead` (so the loss
does not normalise, and its similarities are the logits ``t·cos + b``). An anchor's positive
is its pair's other half; its entropy or negative terms range over the other modality
(the ``cross_view`` columns). The loss keeps the head's knobs and builds the head
(:meth:`PairedLoss.logit_head`) that the two-tower model owns.
"""

from __future__ import annotations

from typing import ClassVar, Unpack

from raycl.losses.aggregation import Aggregation, TermSum
from raycl.losses.base import (
    ContrastiveLoss,
    EngineOptions,
    anchor_term,
    check_bool,
    check_number,
    positive_counts,
)
from raycl.losses.logits import LogitHead
from raycl.losses.reductions import Affine, RowReduction, RowStat
from raycl.losses.structure import PairStructure


class PairedLoss(ContrastiveLoss):
    """Base of :class:`~raycl.losses.clip.CLIPLoss` and :class:`~raycl.losses.siglip.SigLIPLoss`."""

    accepts_labels = False
    paired = True
    pair_term: ClassVar[RowReduction]  # the entropy term's reduction over the other modality
    # Always tiled under impl="auto": the materialised engine would also compute the
    # same-modality blocks, three quarters of the matrix, which no term reads; the tiles skip
    # them (4-10× faster at 256-2048 pairs on a CPU).
    auto_tile_entries: ClassVar[int] = 0

    def __init__(
        self,
        *,
        temperature: float,
        learn_temperature: bool,
        max_logit_scale: float,
        weight: float,
        aggregation: Aggregation,
        **engine: Unpack[EngineOptions],
    ) -> None:
        if engine.setdefault("normalize", False):
            raise ValueError(
                f"normalize: {self.name}'s inputs are the logit head's embeddings, already "
                "normalised and scaled; must be false"
            )
        super().__init__(weight=weight, aggregation=aggregation, **engine)
        self.temperature = check_number("temperature", temperature, minimum=0.0, strict=True)
        self.learn_temperature = check_bool("learn_temperature", learn_temperature)
        self.max_logit_scale = check_number("max_logit_scale", max_logit_scale, minimum=1.0)
        if 1.0 / self.temperature > self.max_logit_scale:
            raise ValueError(
                f"temperature: 1/temperature = {1 / self.temperature:g} exceeds "
                f"max_logit_scale = {self.max_logit_scale:g}"
            )

    def logit_head(self) -> LogitHead:
        """The head that turns the towers' embeddings into this loss's inputs (its learnable
        scale, initialised as the loss's knobs say)."""
        return LogitHead(self.temperature, self.learn_temperature, self.max_logit_scale)

    def check_structure(self, rows: PairStructure, cols: PairStructure) -> None:
        positive_counts(rows, cols, self.name)

    def reductions(self) -> list[RowReduction]:
        """The pair's logit (summed over the one positive) and the family's reduction over the
        other modality: [x_{i p(i)}, pair_term_i]."""
        return [RowReduction("positives", "sum", Affine(1.0)), self.pair_term]

    def term_sums(
        self, stats: list[RowStat], rows: PairStructure, cols: PairStructure
    ) -> tuple[TermSum, TermSum]:
        """pos_i = −x_{i p(i)}, ent_i = the family's reduction over the other modality."""
        positives, pairs = stats
        pos = anchor_term(-positives.value / positive_counts(rows, cols, self.name))
        return pos, anchor_term(pairs.value)

    def hparams(self) -> dict[str, object]:
        return {
            "temperature": self.temperature,
            "learn_temperature": self.learn_temperature,
            "max_logit_scale": self.max_logit_scale,
            **super().hparams(),
        }
