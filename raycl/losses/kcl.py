"""Kernel Contrastive Learning (Koromilas et al., ICML 2024), official code's form.

With d²_ij = ‖z_i − z_j‖² = 2 − 2 s_ij on the sphere, an alignment kernel φ_A and an energy
kernel φ_E:

    L = −2 · mean_{(i,p) positive} φ_A(d²_ip)  +  γ · Σ_views mean_{i≠j same view} φ_E(d²_ij)

    pos = −2 · agg_{(i,p)}[φ_A]      ent = V · agg_{(i,j) same view}[φ_E]
    total = pos + weight · ent        (weight is the paper's γ, default 16)

Kernels (t is the width): gaussian exp(−t·d²); log −½·log(t·d²+1) (energy) and −log(t·d²+1)
(alignment); imq c/√(c²+d²) with c = t; riesz d^(−s) with s = t (−d^(−s) for s < 0);
gaussian_riesz: riesz energy, gaussian alignment with t = 2. The energy mean is over pairs, so
the expected loss does not depend on the batch size.

At the defaults (gaussian kernel, t = 2, γ = 16, V = 2) the loss is the official code's:

>>> import torch, torch.nn.functional as F
>>> from raycl.losses import KCLLoss
>>> views = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> u, v = F.normalize(views, dim=-1)
>>> def kernel_mean(d):
...     return torch.exp(-2 * d**2).mean()
>>> expected = -2 * kernel_mean((u - v).norm(dim=1)) + 16 * (
...     kernel_mean(torch.pdist(u)) + kernel_mean(torch.pdist(v))
... )
>>> torch.allclose(KCLLoss()(views).total, expected)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack

import torch
from torch import Tensor

from raycl.losses.aggregation import Aggregation, TermSum
from raycl.losses.base import (
    ContrastiveLoss,
    EngineOptions,
    check_choice,
    check_number,
    pair_term,
)
from raycl.losses.reductions import Affine, RowReduction, RowStat
from raycl.losses.structure import PairStructure, column_counts

Kernel = Callable[[Tensor, float], Tensor]


def gaussian(d2: Tensor, t: float) -> Tensor:
    """exp(−t·d²)."""
    return torch.exp(-t * d2)


def log_energy(d2: Tensor, t: float) -> Tensor:
    """−½·log(t·d² + 1)."""
    return -0.5 * torch.log1p(t * d2)


def log_alignment(d2: Tensor, t: float) -> Tensor:
    """−log(t·d² + 1)."""
    return -torch.log1p(t * d2)


def imq(d2: Tensor, c: float) -> Tensor:
    """c / √(c² + d²)."""
    return c / torch.sqrt(c * c + d2)


def riesz(d2: Tensor, s: float) -> Tensor:
    """d^(−s), and −d^(−s) for s < 0."""
    value = d2.pow(-s / 2)
    return -value if s < 0 else value


def gaussian_t2(d2: Tensor, t: float) -> Tensor:
    """exp(−2·d²): the alignment of ``gaussian_riesz`` ignores t."""
    return gaussian(d2, 2.0)


KERNELS: dict[str, tuple[Kernel, Kernel]] = {
    "gaussian": (gaussian, gaussian),
    "log": (log_energy, log_alignment),
    "imq": (imq, imq),
    "riesz": (riesz, riesz),
    "gaussian_riesz": (riesz, gaussian_t2),
}


class KCLLoss(ContrastiveLoss):
    """KCL with a kernel of width ``t`` and balance ``weight`` (= γ). The kernels take
    ``d² = ‖z_i − z_j‖² = 2 − 2·s_ij``, which holds for unit embeddings: with
    ``normalize=False`` the inputs must already be unit vectors."""

    name = "kcl"
    pos_scale = -2.0

    def __init__(
        self,
        t: float = 2.0,
        kernel: str = "gaussian",
        weight: float = 16.0,
        aggregation: Aggregation = "mean_per_term",
        **engine: Unpack[EngineOptions],
    ) -> None:
        super().__init__(weight=weight, aggregation=aggregation, **engine)
        self.kernel = check_choice("kernel", kernel, list(KERNELS))
        self.t = check_number("t", t)
        if kernel in ("gaussian", "log", "imq") and self.t <= 0:
            raise ValueError(f"t must be > 0 for the {kernel} kernel, got {t!r}")
        self._energy, self._alignment = KERNELS[kernel]

    def energy(self, s: Tensor) -> Tensor:
        """φ_E(2 − 2s)."""
        return self._energy((2 - 2 * s).clamp_min(0), self.t)

    def alignment(self, s: Tensor) -> Tensor:
        """φ_A(2 − 2s)."""
        return self._alignment((2 - 2 * s).clamp_min(0), self.t)

    def reductions(self) -> list[RowReduction]:
        if self.kernel == "gaussian":
            # Σ_j exp(−t·d²_ij) = exp(LSE_j(2t·s_ij − 2t)): an Affine log-sum-exp, the engines'
            # fastest path.
            energy = RowReduction("same_view", "logsumexp", Affine(2 * self.t, -2 * self.t))
        else:
            energy = RowReduction("same_view", "sum", self.energy)
        return [RowReduction("positives", "sum", self.alignment), energy]

    def term_sums(
        self, stats: list[RowStat], rows: PairStructure, cols: PairStructure
    ) -> tuple[TermSum, TermSum]:
        alignment, energy = stats
        if energy.nonzero is None:
            energy = RowStat(energy.value.exp(), column_counts(rows, cols, "same_view"))
        return (
            pair_term(alignment, column_counts(rows, cols, "positives")),
            pair_term(energy, column_counts(rows, cols, "same_view")),
        )

    def ent_scale(self, cols: PairStructure) -> float:
        return float(cols.num_views)

    def hparams(self) -> dict[str, object]:
        return {"t": self.t, "kernel": self.kernel, **super().hparams()}
