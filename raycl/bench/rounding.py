"""Tiled == materialised at fp32 and bf16 inputs, within what rounding explains.

Both engines multiply the same ẑ (the loss's normalised embeddings, in the input dtype: for
bf16 inputs rounded to 8 significant bits), get ``S = ẑẑᵀ`` from a GEMM that accumulates in
fp32 and rounds its output to the input dtype, and reduce in fp32. The reference is the same
loss in fp64 on the same ẑ, as a function of ``S`` (so the rounding of the inputs is no error
of either engine; its own effect ``|L(ẑ) − L(z)|`` is reported beside). With ``u`` the input
dtype's unit roundoff (2⁻⁸ bf16, 2⁻²⁴ fp32), ``u₃₂ = 2⁻²⁴``, ``λ = 4``, ``G = ∂L/∂S`` and the
rounding model of Higham & Mary (2019: independent, zero-mean errors, so sums of ``n`` terms
err by ``λ√n·u₃₂``):

    forward   ŝ_ij = s_ij + e_ij,  |e_ij| ≤ δ_ij = u·|s_ij| + λ√d·u₃₂
    value     |L̂ − L| ≤ λ·√Σ(G_ij δ_ij)²                (first order, Hoeffding)
                       + |½(L(S + δ∘R) + L(S − δ∘R)) − L(S)|   (second-order bias, R random ±1)
                       + 2λ√M·u₃₂·(Σ|G_ij s_ij| + |pos| + w·(|ent| + 1))
                                               (fp32 row reductions, then the mean over anchors)
    gradient  ‖∇̂ − ∇‖ ≤ 2·max_± ‖∇(S ± δ∘R) − ∇(S)‖     (forward errors through G; ×2: a norm
                                                          of many terms around its RMS)
                       + (3u + λ√M·u₃₂)·‖v‖ + u·‖∇‖    (G cast to the input dtype, the
                                                          products' outputs, the row + column
                                                          shares; final cast to the input dtype)

with ``v_i = ‖((|G| + |Gᵀ|)·|ẑ|)_i‖ / ‖x_i‖`` (the backward products through the normalisation).
The margin loss is checked with ``aggregation="mean"``: ``mean_nonzero`` divides by the number
of active hinges, a step function of ``S`` that no rounding bound covers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from raycl.losses import LOSSES, build_loss, flatten_batch
from raycl.losses.structure import PairStructure

LAMBDA = 4.0
U32 = 2.0**-24
UNIT_ROUNDOFF = {torch.float32: U32, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# Families that get class labels (dense positives: the tiles' positive masks are exercised).
SUPERVISED = ("supcon", "tcl", "margin")
PARAMS = {"margin": {"aggregation": "mean"}}


def check_engines(
    family: str,
    dtype: str,
    size: int,
    dim: int,
    device: str,
    block_size: int | None = None,
    seed: int = 0,
    **params: object,
) -> dict:
    """Value and gradient of both engines against the fp64 reference, with the bounds above.

    ``size`` rows (two views of ``size // 2`` items, four classes where labelled); the tiled
    engine runs with ``block_size`` (default: the device's). Returns errors, bounds and ``ok``.
    """
    if family not in LOSSES:
        raise ValueError(f"family must be one of {sorted(LOSSES)}, got {family!r}")
    dt, dev = getattr(torch, dtype), torch.device(device)
    if dt not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16, got {dtype!r}")
    params = {**PARAMS.get(family, {}), **params}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, size // 2, dim, generator=g)
    family_loss = build_loss(family, **params)
    if family_loss.paired:  # their inputs: image and text through the logit head (its t, b)
        with torch.no_grad():
            x = family_loss.logit_head()(x[0], x[1]).transpose(0, 1)
    x = x.to(dev, dt)
    labels = torch.arange(size // 2, device=dev) % 4 if family in SUPERVISED else None

    engines = {
        impl: _engine(family, impl, block_size, x, labels, params)
        for impl in ("materialised", "tiled")
    }
    z, structure = flatten_batch(x, labels)
    z_hat = family_loss._normalised(z)  # the embeddings both engines multiply
    reference = _Reference(family, params, z, z_hat, structure)
    exact = reference.evaluate()
    bounds = reference.bounds(exact, UNIT_ROUNDOFF[dt], seed)
    unrounded = build_loss(family, impl="materialised", **params)(x.double(), labels).total
    record = {
        "family": family,
        "dtype": dtype,
        "M": size,
        "d": dim,
        "block_size": block_size,
        "loss": exact.value,
        "value_bound": bounds["value"],
        "grad_norm": exact.grad.norm().item(),
        "grad_bound": bounds["grad"],
        "input_rounding": abs(exact.value - unrounded.item()),
    }
    ok = True
    for impl, (value, grad) in engines.items():
        record[f"{impl}_value_error"] = abs(value - exact.value)
        record[f"{impl}_grad_error"] = (grad - exact.grad).norm().item()
        ok &= record[f"{impl}_value_error"] <= bounds["value"]
        ok &= record[f"{impl}_grad_error"] <= bounds["grad"]
    record["ok"] = bool(ok)
    return record


def _engine(family, impl, block_size, x, labels, params) -> tuple[float, Tensor]:
    leaf = x.clone().requires_grad_(True)
    loss = build_loss(family, impl=impl, block_size=block_size, **params)
    total = loss(leaf, labels).total
    (grad,) = torch.autograd.grad(total, leaf)
    return total.item(), grad.double().flatten(0, 1)


class _Exact(NamedTuple):
    value: float
    pos: float
    ent: float
    sim: Tensor
    grad_sim: Tensor  # ∂L/∂S
    grad: Tensor  # ∂L/∂x


class _Reference:
    """The loss in fp64 as a function of the similarity matrix ``S`` (a leaf): evaluated with
    rows ``S`` against identity columns, ``S·I = S`` exactly, so every reduction sees S."""

    def __init__(self, family, params, z: Tensor, z_hat: Tensor, structure: PairStructure):
        # the engines normalise unless the family says not to (the paired losses' inputs)
        self.normalize = build_loss(family, **params).normalize
        self.loss = build_loss(family, impl="materialised", **{**params, "normalize": False})
        self.z, self.z_hat, self.structure = z.double(), z_hat.double(), structure
        self.eye = torch.eye(len(z), dtype=torch.float64, device=z.device)

    def evaluate(self, perturbation: Tensor | None = None) -> _Exact:
        x = self.z.clone().requires_grad_(True)
        normalised = F.normalize(x, dim=-1) if self.normalize else x
        # value ẑ, gradient through the normalisation (the engines' cast passes it unchanged)
        z_hat = normalised + (self.z_hat - normalised).detach()
        sim = z_hat @ z_hat.T
        if perturbation is not None:
            sim = sim + perturbation
        sim.retain_grad()
        terms = self.loss.compute(sim, self.structure, self.eye, self.structure)
        terms.total.backward()
        pos, ent = terms.pos.item(), terms.ent.item()
        return _Exact(terms.total.item(), pos, ent, sim.detach(), sim.grad, x.grad)

    def bounds(self, exact: _Exact, unit: float, seed: int) -> dict[str, float]:
        """The value and gradient bounds of the module docstring."""
        m, d = self.z.shape
        sim, grad_sim = exact.sim, exact.grad_sim.abs()
        delta = unit * sim.abs() + LAMBDA * math.sqrt(d) * U32
        g = torch.Generator(device=sim.device).manual_seed(seed)
        signs = torch.randint(0, 2, sim.shape, generator=g, device=sim.device) * 2.0 - 1.0
        plus, minus = self.evaluate(delta * signs), self.evaluate(-delta * signs)
        reductions = 2 * LAMBDA * math.sqrt(m) * U32
        magnitude = abs(exact.pos) + self.loss.weight * (abs(exact.ent) + 1)
        value = (
            LAMBDA * (grad_sim * delta).pow(2).sum().sqrt().item()
            + abs((plus.value + minus.value) / 2 - exact.value)
            + reductions * ((grad_sim * sim.abs()).sum().item() + magnitude)
        )
        response = max((p.grad - exact.grad).norm().item() for p in (plus, minus))
        products = (grad_sim + grad_sim.T) @ self.z_hat.abs()
        through_norm = (products.norm(dim=1) / self.z.norm(dim=1)).norm().item()
        grad = (
            2 * response
            + (3 * unit + LAMBDA * math.sqrt(m) * U32) * through_norm
            + unit * exact.grad.norm().item()
        )
        return {"value": value, "grad": grad}
