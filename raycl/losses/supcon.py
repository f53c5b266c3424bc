"""Supervised contrastive loss, L_out form (Khosla et al. 2020).

    L_i = −(1/|P(i)|) Σ_{p∈P(i)} log [ exp(s_ip/τ) / Σ_{a∈A(i)} exp(s_ia/τ) ]

with P(i) every other row of the same label (or, without labels, the other views of the same
item — then SupCon *is* InfoNCE). Split as in :mod:`raycl.losses.infonce`:
pos = agg_i[−mean_p s_ip/τ], ent = agg_i[LSE_{A(i)}(s/τ)]; total = pos + weight · ent.
The reference code's extra factor τ/τ_base is 1 at its defaults and is not applied.

The L_out formula written out, for 2 views of 4 items in 2 classes:

>>> import torch, torch.nn.functional as F
>>> from raycl.losses import InfoNCELoss, SupConLoss
>>> views = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> labels = torch.tensor([0, 0, 1, 1])
>>> z, y = F.normalize(views.reshape(8, 8), dim=1), labels.repeat(2)
>>> eye = torch.eye(8, dtype=torch.bool)
>>> logits = (z @ z.T / 0.1).masked_fill(eye, float("-inf"))
>>> log_prob = (logits - logits.logsumexp(1, keepdim=True)).masked_fill(eye, 0)
>>> positive = (y[:, None] == y[None, :]) & ~eye
>>> l_out = (-(log_prob * positive).sum(1) / positive.sum(1)).mean()
>>> torch.allclose(SupConLoss()(views, labels).total, l_out)
True

Without labels the positives are the other views, and SupCon is InfoNCE:

>>> torch.allclose(SupConLoss()(views).total, InfoNCELoss()(views).total)
True
"""

from __future__ import annotations

from raycl.losses.infonce import InfoNCELoss


class SupConLoss(InfoNCELoss):
    """SupCon L_out: InfoNCE whose positives are all rows that share a label."""

    name = "supcon"
    accepts_labels = True
