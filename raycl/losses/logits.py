"""The logit head of a two-tower model: CLIP's learnable scale and SigLIP's bias, folded into
the embeddings so that every raycl engine computes the logits with its own GEMM.

With ẑ the L2-normalised embeddings of each tower, ``t = exp(logit_scale)`` (clamped to
``max_logit_scale``) and ``b`` the bias:

    u_img = [√t · ẑ_img, b]        u_txt = [√t · ẑ_txt, 1]
    u_img · u_txt = t · cos(img, txt) + b                      (the image–text logit)

The losses (:mod:`raycl.losses.clip`, :mod:`raycl.losses.siglip`) only ever pair an image row
with a text row (the ``cross_view`` columns), so the bias coordinate's products within one
tower (b², 1) never enter them. Because t and b act through ordinary tensor operations before
the loss, their gradients are exact under every engine, the all-gather and gradient caching,
and they train, synchronise and checkpoint as model parameters (open_clip keeps them on the
model too). Without a bias the embeddings keep their dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LogitHead(nn.Module):
    """``(image (N, d), text (N, d)) -> (N, 2, d')``: the pair's logit embeddings (module doc).

    ``temperature`` is the initial 1/t; ``learn_temperature=False`` keeps it fixed.
    ``bias`` None: no bias (CLIP); a number: its initial value (SigLIP), fixed unless
    ``learn_bias``.
    """

    def __init__(
        self,
        temperature: float,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        bias: float | None = None,
        learn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )
        self.max_log_scale = math.log(max_logit_scale)
        self.logit_bias = None
        if bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learn_bias)

    @property
    def scale(self) -> Tensor:
        """t = exp(logit_scale), clamped to ``max_logit_scale`` (no gradient beyond it)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        root = self.scale.sqrt().to(image.dtype)
        image = F.normalize(image, dim=-1) * root
        text = F.normalize(text, dim=-1) * root
        if self.logit_bias is not None:
            image = torch.cat([image, self.logit_bias.to(image.dtype).expand(len(image), 1)], 1)
            text = torch.cat([text, text.new_ones(len(text), 1)], 1)
        return torch.stack([image, text], 1)

    def metrics(self) -> dict[str, float]:
        """The learnable scalars as they stand: ``logit_scale`` t and ``logit_bias`` b."""
        out = {"logit_scale": float(self.scale.detach())}
        if self.logit_bias is not None:
            out["logit_bias"] = float(self.logit_bias.detach())
        return out
