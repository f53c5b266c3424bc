"""CLIP's symmetric InfoNCE over image–text pairs (Radford et al. 2021), as a positive term
plus a weighted entropy term.

With logits x_ij = t·cos(i, j) from :class:`~raycl.losses.logits.LogitHead` and the 2N rows
of a batch (N images, then their N captions), anchor i's positive p(i) is its pair and its
columns are the other modality:

    ℓ_i = −x_{i p(i)}  +  log Σ_{j ∈ other modality} exp(x_ij)
    pos = mean_i[ −x_{i p(i)} ]     ent = mean_i[ LSE_j x_ij ]     total = pos + weight · ent

At weight 1 the mean over the 2N anchors is CLIP's loss: the average of the image→text and
text→image cross-entropies (open_clip's ``ClipLoss``).

>>> import torch, torch.nn.functional as F
>>> from raycl.losses import CLIPLoss
>>> g = torch.Generator().manual_seed(0)
>>> image, text = torch.randn(2, 6, 8, dtype=torch.float64, generator=g)
>>> loss = CLIPLoss(temperature=0.07)
>>> out = loss(loss.logit_head().double()(image, text).transpose(0, 1))
>>> logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / 0.07
>>> labels = torch.arange(6)
>>> clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
>>> torch.allclose(out.total, clip)
True
"""

from __future__ import annotations

from typing import Unpack

from raycl.losses.aggregation import Aggregation
from raycl.losses.base import EngineOptions
from raycl.losses.paired import PairedLoss
from raycl.losses.reductions import Affine, RowReduction


class CLIPLoss(PairedLoss):
    """Symmetric image–text InfoNCE; the head learns t = 1/temperature unless fixed."""

    name = "clip"
    pair_term = RowReduction("cross_view", "logsumexp", Affine(1.0))

    def __init__(
        self,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        weight: float = 1.0,
        aggregation: Aggregation = "mean_per_term",
        **engine: Unpack[EngineOptions],
    ) -> None:
        super().__init__(
            temperature=temperature,
            learn_temperature=learn_temperature,
            max_logit_scale=max_logit_scale,
            weight=weight,
            aggregation=aggregation,
            **engine,
        )
