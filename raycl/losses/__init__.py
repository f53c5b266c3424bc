"""Contrastive losses as a positive term plus a weighted entropy term (pure torch, no Ray).

Every loss returns ``LossTerms(total, pos, ent)`` with ``total = pos + weight · ent``. Pick one
by name with :func:`build_loss`, e.g. ``build_loss("tcl", temperature=0.1, k1=5000)``.
"""

from __future__ import annotations

import inspect
from typing import Any

from raycl.losses.aggregation import AGGREGATIONS, aggregate
from raycl.losses.base import ENGINE_OPTIONS, ContrastiveLoss, EngineOptions, LossTerms
from raycl.losses.clip import CLIPLoss
from raycl.losses.dhel import DHELLoss
from raycl.losses.infonce import InfoNCELoss
from raycl.losses.kcl import KCLLoss
from raycl.losses.logits import LogitHead
from raycl.losses.margin import MarginLoss
from raycl.losses.paired import PairedLoss
from raycl.losses.siglip import SigLIPLoss
from raycl.losses.structure import PairStructure, flatten_batch
from raycl.losses.supcon import SupConLoss
from raycl.losses.tcl import TCLLoss

LOSSES: dict[str, type[ContrastiveLoss]] = {
    cls.name: cls
    for cls in (
        InfoNCELoss,
        SupConLoss,
        TCLLoss,
        DHELLoss,
        KCLLoss,
        MarginLoss,
        CLIPLoss,
        SigLIPLoss,
    )
}


def build_loss(name: str, **params: Any) -> ContrastiveLoss:
    """The loss registered as ``name``, built with ``params`` (one-line error on bad input)."""
    if name not in LOSSES:
        raise ValueError(f"loss name must be one of {sorted(LOSSES)}, got {name!r}")
    cls = LOSSES[name]
    allowed = [*loss_parameters(cls), *ENGINE_OPTIONS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name!r} has no parameter {unknown[0]!r}; allowed: {allowed}")
    return cls(**params)


def loss_parameters(cls: type[ContrastiveLoss]) -> list[str]:
    """A family's own parameters (its balance knobs), without the shared engine knobs."""
    kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in kinds
    ]


__all__ = [
    "AGGREGATIONS",
    "ENGINE_OPTIONS",
    "LOSSES",
    "CLIPLoss",
    "ContrastiveLoss",
    "DHELLoss",
    "EngineOptions",
    "InfoNCELoss",
    "KCLLoss",
    "LogitHead",
    "LossTerms",
    "MarginLoss",
    "PairStructure",
    "PairedLoss",
    "SigLIPLoss",
    "SupConLoss",
    "TCLLoss",
    "aggregate",
    "build_loss",
    "flatten_batch",
]
