"""Supervised contrastive loss, L_out form (Khosla et al. 2020).

    L_i = −(1/|P(i)|) Σ_{p∈P(i)} log [ exp(s_ip/τ) / Σ_{a∈A(i)} exp(s_ia/τ) ]

with P(i) every other row of the same label (or, without labels, the other views of the same
item — then SupCon *is* InfoNCE). Split as in :mod:`raycl.losses.infonce`:
pos = agg_i[−mean_p s_ip/τ], ent = agg_i[LSE_{A(i)}(s/τ)]; total = pos + weight · ent.
The reference code's extra factor τ/τ_base is 1 at its defaults and is not applied.
"""

from __future__ import annotations

from raycl.losses.infonce import InfoNCELoss


class SupConLoss(InfoNCELoss):
    """SupCon L_out: InfoNCE whose positives are all rows that share a label."""

    name = "supcon"
    accepts_labels = True
