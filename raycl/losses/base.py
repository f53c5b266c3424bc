"""The common shape of every raycl loss: ``total = pos + weight · ent``.

A loss names the row reductions it needs (:mod:`raycl.losses.reductions`), turns their
per-row results into the element sums of its positive and entropy terms, and lets
:func:`raycl.losses.aggregation.aggregate` reduce them over the batch. The engine that
evaluates the reductions (materialised or tiled) is chosen per call and gives the same result.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, NamedTuple, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raycl.losses.aggregation import Aggregation, TermSum, aggregate
from raycl.losses.engine import reduce_rows_tiled
from raycl.losses.logits import LogitHead
from raycl.losses.reductions import (
    RowReduction,
    RowStat,
    accumulation,
    reduce_rows_materialised,
)
from raycl.losses.structure import ColumnSet, PairStructure, column_counts, flatten_batch

Impl = Literal["auto", "materialised", "tiled"]
IMPLS: tuple[Impl, ...] = ("auto", "materialised", "tiled")
# With impl="auto", batches whose similarity matrix has more entries than this are tiled.
AUTO_TILE_ENTRIES = 4096 * 4096
CountReducer = Callable[[Tensor], Tensor]


class EngineOptions(TypedDict, total=False):
    """The engine knobs every loss takes by keyword (:class:`ContrastiveLoss`)."""

    impl: Impl  # auto | materialised | tiled
    block_size: int | None  # tile edge of the tiled engine (None: the device's default)
    normalize: bool  # L2-normalise embeddings first (cosine similarity)


ENGINE_OPTIONS: tuple[str, ...] = tuple(EngineOptions.__annotations__)


class LossTerms(NamedTuple):
    """A loss value with its two sub-losses: ``total = pos + weight · ent``."""

    total: Tensor
    pos: Tensor
    ent: Tensor


class ContrastiveLoss(nn.Module, ABC):
    """Base class: validation, normalisation, engine dispatch and aggregation.

    Subclasses define :meth:`reductions` and :meth:`term_sums`, and may scale the aggregated
    terms with ``pos_scale`` / :meth:`ent_scale` to reproduce a paper's constants. Every
    family's constructor takes its own balance knobs and passes the engine knobs
    (:class:`EngineOptions`) on by keyword, so all share one validated signature.
    """

    name: ClassVar[str]
    aggregations: ClassVar[tuple[Aggregation, ...]] = ("sum", "mean", "mean_per_term")
    # impl="auto" tiles batches whose similarity matrix has more entries than this
    auto_tile_entries: ClassVar[int] = AUTO_TILE_ENTRIES
    accepts_labels: ClassVar[bool] = True
    paired: ClassVar[bool] = False  # image–text pairs from a two-tower model (PairedLoss)
    pos_scale: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        weight: float,
        aggregation: Aggregation,
        impl: Impl = "auto",
        block_size: int | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
        ):
            raise ValueError(f"block_size must be an integer >= 1 or None, got {block_size!r}")
        self.block_size = block_size
        self.weight = check_number("weight", weight, minimum=0.0)
        self.aggregation = check_choice("aggregation", aggregation, self.aggregations)
        self.impl = check_choice("impl", impl, IMPLS)
        self.normalize = check_bool("normalize", normalize)

    def forward(self, embeddings: Tensor | Sequence[Tensor], labels: Tensor | None = None):
        """Loss of a batch: views ``(V, N, d)`` (+ optional labels ``(N,)``) or ``(M, d)`` + labels.

        Returns :class:`LossTerms` ``(total, pos, ent)``.
        """
        if labels is not None and not self.accepts_labels:
            raise ValueError(f"labels: {self.name} is self-supervised and takes no labels")
        z, structure = flatten_batch(embeddings, labels)
        return self.compute(z, structure)

    def compute(
        self,
        rows_z: Tensor,
        rows: PairStructure,
        cols_z: Tensor | None = None,
        cols: PairStructure | None = None,
        reduce_counts: CountReducer | None = None,
    ) -> LossTerms:
        """Loss of the anchors ``rows`` against the columns ``cols`` (default: the rows).

        In data-parallel training ``rows`` are a worker's local anchors, ``cols`` the gathered
        global batch, and ``reduce_counts`` all-reduces element counts so that every
        aggregation normalises by global counts.
        """
        cols_z, cols = (rows_z, rows) if cols_z is None else (cols_z, cols)
        stats = self._reduce_rows(rows_z, cols_z, rows, cols)
        pos, ent = self.term_sums(stats, rows, cols)
        if reduce_counts is not None:
            pos, ent = (
                TermSum(t.total, reduce_counts(t.count), reduce_counts(t.nonzero))
                for t in (pos, ent)
            )
        if int(pos.count) == 0:
            raise ValueError(f"{self.name}: the batch has no positive pair")
        if int(ent.count) == 0:
            raise ValueError(f"{self.name}: the entropy term has no elements (no negative pair)")
        pos_value, ent_value = aggregate(pos, ent, self.aggregation)
        pos_value = self.pos_scale * pos_value
        ent_value = self.ent_scale(cols) * ent_value
        return LossTerms(pos_value + self.weight * ent_value, pos_value, ent_value)

    def logit_head(self) -> LogitHead | None:
        """The logit head a two-tower model takes from this loss (None: the loss scores one
        encoder's embeddings; :class:`~raycl.losses.paired.PairedLoss` gives one)."""
        return None

    def check_structure(self, rows: PairStructure, cols: PairStructure) -> None:
        """Raise ValueError if the anchors ``rows`` cannot be scored against ``cols`` (e.g. an
        anchor without a positive); called before any collective the loss makes, so that
        data-parallel ranks can agree on it first (:func:`raycl.distributed.distributed_loss`)."""

    @abstractmethod
    def reductions(self) -> list[RowReduction]:
        """The row reductions this loss needs, in the order :meth:`term_sums` reads them."""

    @abstractmethod
    def term_sums(
        self, stats: list[RowStat], rows: PairStructure, cols: PairStructure
    ) -> tuple[TermSum, TermSum]:
        """Element sums of the positive and entropy terms from the row reductions."""

    def ent_scale(self, cols: PairStructure) -> float:
        """Constant factor on the aggregated entropy term (1 unless a paper's form needs one)."""
        return 1.0

    def _reduce_rows(
        self, rows_z: Tensor, cols_z: Tensor, rows: PairStructure, cols: PairStructure
    ) -> list[RowStat]:
        tiled = self.impl == "tiled" or (
            self.impl == "auto" and len(rows) * len(cols) > self.auto_tile_entries
        )
        if tiled:  # normalises inside, at its memory floor
            return reduce_rows_tiled(
                rows_z, cols_z, rows, cols, self.reductions(), self.block_size, self.normalize
            )
        symmetric = cols_z is rows_z
        rows_z = self._normalised(rows_z)
        cols_z = rows_z if symmetric else self._normalised(cols_z)
        return reduce_rows_materialised(rows_z, cols_z, rows, cols, self.reductions())

    def _normalised(self, z: Tensor) -> Tensor:
        # Normalise in fp32 (fp32 accumulation for bf16/fp16 inputs); similarities are then
        # computed in the input dtype and reduced in fp32 by the engines.
        return F.normalize(accumulation(z), dim=-1).to(z.dtype) if self.normalize else z

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, object]:
        """The loss's hyper-parameters, for logging and reports."""
        return {"weight": self.weight, "aggregation": self.aggregation}


def anchor_term(values: Tensor, members: Tensor | None = None) -> TermSum:
    """A term with one element per anchor (``members`` selects the anchors that have one)."""
    if members is not None:
        values = values[members]
    count = torch.tensor(values.numel(), device=values.device)
    return TermSum(values.sum(), count, count)


def pair_term(stat: RowStat, counts: Tensor) -> TermSum:
    """A term with one element per (anchor, column) pair of a ``sum`` reduction."""
    return TermSum(stat.value.sum(), counts.sum(), stat.nonzero.sum())


def positive_counts(rows: PairStructure, cols: PairStructure, name: str) -> Tensor:
    """``|P(i)|`` for every anchor; raises if an anchor has none (never a silent zero loss)."""
    counts = column_counts(rows, cols, "positives")
    missing = int((counts == 0).sum())
    if missing:
        raise ValueError(
            f"{name}: {missing} of {len(rows)} anchors have no positive; every anchor needs "
            "another view or another sample with the same label"
        )
    return counts


def entropy_value(
    lse: Tensor, rows: PairStructure, cols: PairStructure, columns: ColumnSet, log_mean_exp: bool
) -> Tensor:
    """The log-sum-exp ``lse`` over each anchor's columns ``C(i)``, or with ``log_mean_exp``
    the log-*mean*-exp ``lse − log |C(i)|`` (same gradients; comparable across batch sizes)."""
    if not log_mean_exp:
        return lse
    return lse - column_counts(rows, cols, columns).to(lse.dtype).clamp_min(1).log()


def check_number(
    name: str, value: float, *, minimum: float | None = None, strict: bool = False
) -> float:
    """A finite float, optionally bounded below; a one-line ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def check_bool(name: str, value: bool) -> bool:
    """``value`` if it is a bool; a one-line ValueError otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``; a one-line ValueError naming both otherwise."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value
