"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023) as a positive term plus a weighted
entropy term.

With logits x_ij = t·cos(i, j) + b from :class:`~raycl.losses.logits.LogitHead`, SigLIP scores
every image–text pair as a binary decision: −log σ(x_ii) for a pair, −log σ(−x_ij) =
softplus(x_ij) for a non-pair. Since −log σ(x) = softplus(x) − x, the same sum splits into a
linear positive term and a term over *all* cross-modal pairs, with no cancellation:

    Σ_i −log σ(x_ii) + Σ_{i≠j} softplus(x_ij)  =  Σ_i −x_ii  +  Σ_{i,j} softplus(x_ij)

Over the 2N rows of a batch (images, then captions; each pair seen from both ends):

    pos = mean_i[ −x_{i p(i)} ]     ent = mean_i[ Σ_{j ∈ other modality} softplus(x_ij) ]
    total = pos + weight · ent

At weight 1 this is open_clip's ``SigLipLoss`` (its sum over pairs divided by N). ``pos`` and
``ent`` are this split, not the paper's pair / non-pair terms (−log σ(x_ii) and the softplus
over i ≠ j), which would differ from them by Σ_i softplus(x_ii).

>>> import torch, torch.nn.functional as F
>>> from raycl.losses import SigLIPLoss
>>> g = torch.Generator().manual_seed(0)
>>> image, text = torch.randn(2, 6, 8, dtype=torch.float64, generator=g)
>>> loss = SigLIPLoss(temperature=0.1, bias=-10.0)
>>> out = loss(loss.logit_head().double()(image, text).transpose(0, 1))
>>> logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / 0.1 - 10
>>> signs = 2 * torch.eye(6, dtype=torch.float64) - 1
>>> torch.allclose(out.total, -F.logsigmoid(signs * logits).sum() / 6)
True
"""

from __future__ import annotations

from typing import Unpack

from raycl.losses.aggregation import Aggregation
from raycl.losses.base import EngineOptions, check_bool, check_number
from raycl.losses.logits import LogitHead
from raycl.losses.paired import PairedLoss
from raycl.losses.reductions import RowReduction, Softplus


class SigLIPLoss(PairedLoss):
    """Pairwise sigmoid loss; the head learns t = 1/temperature and the bias b unless fixed."""

    name = "siglip"
    pair_term = RowReduction("cross_view", "sum", Softplus())

    def __init__(
        self,
        temperature: float = 0.1,
        bias: float = -10.0,
        learn_temperature: bool = True,
        learn_bias: bool = True,
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
        self.bias = check_number("bias", bias)
        self.learn_bias = check_bool("learn_bias", learn_bias)

    def logit_head(self) -> LogitHead:
        return LogitHead(
            self.temperature,
            self.learn_temperature,
            self.max_logit_scale,
            self.bias,
            self.learn_bias,
        )

    def hparams(self) -> dict[str, object]:
        return {"bias": self.bias, "learn_bias": self.learn_bias, **super().hparams()}
