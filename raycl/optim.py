"""Optimisers and learning-rate schedules for large-batch contrastive training.

* :class:`LARS`: layer-wise adaptive rate scaling (You et al. 2017), SimCLR's large-batch
  optimiser; torch ships none.
* :func:`scaled_learning_rate`: the batch-size scaling rules (linear, square root).
* :func:`build_optimizer`: SGD / AdamW / LARS with decay and no-decay parameter groups.
* :func:`warmup_cosine`: per-step linear warm-up then cosine decay, as a picklable ``LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from raycl.schema import OptimConfig

__all__ = [
    "LARS",
    "LR_SCALING_RULES",
    "OPTIMIZERS",
    "WarmupCosine",
    "build_optimization",
    "build_optimizer",
    "check_optim",
    "scaled_learning_rate",
    "warmup_cosine",
]

LR_SCALING_RULES = ("linear", "sqrt", "none")


class LARS(Optimizer):
    """LARS: SGD with momentum and a per-tensor trust ratio (You et al. 2017; SimCLR).

    For every parameter ``p`` with gradient ``g``::

        g ← g + wd·p                                  (unless excluded)
        η = trust·‖p‖ / (‖g‖ + eps)  if ‖p‖ > 0 and ‖g‖ > 0, else 1   (1 if excluded)
        v ← m·v + η·g
        p ← p − lr·v

    The step of an adapted tensor is ``lr·trust·‖p‖`` long whatever the gradient's scale, so
    rescaling a layer's weights rescales its updates alike. Exclusion (no weight decay, no
    trust ratio: plain SGD with momentum) is the param-group option ``lars_exclude``: ``True``
    or ``False`` for the whole group, or ``None`` (the default) to exclude exactly the
    tensors with ``ndim <= 1`` (biases and normalisation parameters) when
    ``exclude_bias_and_norm`` is set. :func:`build_optimizer` sets the flag per group.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        exclude_bias_and_norm: bool = True,
    ) -> None:
        for name, value in (
            ("lr", lr),
            ("momentum", momentum),
            ("weight_decay", weight_decay),
            ("eps", eps),
        ):
            if not value >= 0:
                raise ValueError(f"LARS {name} must be >= 0, got {value!r}")
        if not trust_coefficient > 0:
            raise ValueError(f"LARS trust_coefficient must be > 0, got {trust_coefficient!r}")
        self.exclude_bias_and_norm = exclude_bias_and_norm
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars_exclude": None,
        }
        super().__init__(params, defaults)

    def _excluded(self, group: dict[str, Any], p: torch.Tensor) -> bool:
        flag = group["lars_exclude"]
        if flag is None:
            return self.exclude_bias_and_norm and p.ndim <= 1
        return bool(flag)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One LARS update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                g = p.grad
                if not self._excluded(group, p):
                    if group["weight_decay"] != 0:
                        g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = group["trust_coefficient"] * p_norm / (g_norm + group["eps"])
                    g = g * torch.where((p_norm > 0) & (g_norm > 0), trust, 1.0)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def scaled_learning_rate(
    base_lr: float,
    global_batch_size: int,
    rule: str = "linear",
    base_batch_size: int = 256,
) -> float:
    """Learning rate for global batch ``B`` from ``base_lr`` quoted at ``base_batch_size``.

    ``linear``: ``base_lr·B/256`` (Goyal et al. 2017); ``sqrt``: ``base_lr·sqrt(B/256)``
    (SimCLR's rule for LARS at large batch); ``none``: ``base_lr``.
    """
    if rule not in LR_SCALING_RULES:
        raise ValueError(f"optim.lr_scaling must be one of {list(LR_SCALING_RULES)}, got {rule!r}")
    if not global_batch_size > 0:
        raise ValueError(f"global_batch_size must be > 0, got {global_batch_size!r}")
    if not base_batch_size > 0:
        raise ValueError(f"base_batch_size must be > 0, got {base_batch_size!r}")
    ratio = global_batch_size / base_batch_size
    if rule == "linear":
        return float(base_lr * ratio)
    if rule == "sqrt":
        return float(base_lr * math.sqrt(ratio))
    return float(base_lr)


# Optimiser factories by name: (parameter groups, lr, momentum, betas, trust coefficient).
OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": lambda groups, lr, momentum, betas, trust: torch.optim.SGD(
        groups, lr=lr, momentum=momentum
    ),
    "adamw": lambda groups, lr, momentum, betas, trust: torch.optim.AdamW(
        groups, lr=lr, betas=betas
    ),
    "lars": lambda groups, lr, momentum, betas, trust: LARS(
        groups, lr=lr, momentum=momentum, trust_coefficient=trust
    ),
}


def _split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (weights: ndim >= 2, biases and norm params: ndim <= 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    betas: tuple[float, float] = (0.9, 0.999),
    trust_coefficient: float = 0.001,
) -> Optimizer:
    """SGD (momentum), AdamW or LARS over ``model``'s trainable parameters.

    Two parameter groups (an empty one is left out): weights (``ndim >= 2``) with
    ``weight_decay``, then biases and normalisation parameters (``ndim <= 1``) with weight
    decay 0 for SGD/AdamW, and ``lars_exclude=True`` (no decay, no trust ratio) for LARS.
    ``betas`` applies to AdamW, ``momentum`` to SGD and LARS, ``trust_coefficient`` to LARS.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {list(OPTIMIZERS)}, got {name!r}")
    decay, no_decay = _split_decay(model)
    if not decay and not no_decay:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if name == "lars":
        groups = [
            {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
    else:
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    return OPTIMIZERS[name](groups, lr, momentum, betas, trust_coefficient)


class WarmupCosine:
    """LR multiplier at optimiser step ``s`` (``W`` warm-up, ``T`` total steps, ``f`` final).

    ``s < W``: ``(s + 1)/W`` (linear from ``1/W`` up to 1); ``W <= s <= T``:
    ``f + (1 − f)·(1 + cos(π·(s − W)/(T − W)))/2`` (1 at ``W``, ``f`` at ``T``);
    ``s > T``: ``f``. A module-level class (not a closure) so schedulers pickle and their
    ``state_dict`` carries it.
    """

    def __init__(self, warmup_steps: int, total_steps: int, final_lr_fraction: float = 0.0):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_lr_fraction = final_lr_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / span) if span > 0 else 1.0
        f = self.final_lr_fraction
        return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_lr_fraction: float = 0.0,
) -> LambdaLR:
    """Per-step scheduler: linear warm-up to each group's lr, then cosine decay to
    ``final_lr_fraction·lr`` at ``total_steps`` (see :class:`WarmupCosine`).

    Call ``scheduler.step()`` after every ``optimizer.step()``.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})"
        )
    if not 0.0 <= final_lr_fraction <= 1.0:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {final_lr_fraction!r}")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, final_lr_fraction))


def restore_schedule(scheduler: LambdaLR, state: dict[str, Any]) -> None:
    """Load a saved schedule's position (its step, base lrs) into ``scheduler`` but keep the
    plan ``scheduler`` was built with: a run resumed with more epochs re-plans its cosine over
    the new total instead of staying at the old plan's final lr (0 by default)."""
    planned = [vars(fn).copy() for fn in scheduler.lr_lambdas]
    scheduler.load_state_dict(state)
    if all(vars(fn) == plan for fn, plan in zip(scheduler.lr_lambdas, planned, strict=True)):
        return
    for fn, plan in zip(scheduler.lr_lambdas, planned, strict=True):
        vars(fn).update(plan)
    step = scheduler.last_epoch  # LambdaLR counts steps as "epochs"
    for group, base, fn in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(step)


def check_optim(optim: OptimConfig) -> None:
    """One-line ``ValueError`` naming the ``optim.*`` key of a bad ``optim`` section."""
    checks = [
        ("name", optim.name in OPTIMIZERS, f"must be one of {list(OPTIMIZERS)}"),
        ("lr", optim.lr > 0, "must be > 0"),
        (
            "lr_scaling",
            optim.lr_scaling in LR_SCALING_RULES,
            f"must be one of {list(LR_SCALING_RULES)}",
        ),
        ("base_batch_size", optim.base_batch_size >= 1, "must be >= 1"),
        ("momentum", optim.momentum >= 0, "must be >= 0"),
        ("weight_decay", optim.weight_decay >= 0, "must be >= 0"),
        ("warmup_epochs", optim.warmup_epochs >= 0, "must be >= 0"),
        ("final_lr_fraction", 0 <= optim.final_lr_fraction <= 1, "must be in [0, 1]"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ValueError(f"optim.{key} {rule}, got {getattr(optim, key)!r}")


def build_optimization(
    model: nn.Module, optim: OptimConfig, global_batch: int, steps_per_epoch: int, epochs: int
) -> tuple[Optimizer, LambdaLR]:
    """The ``optim`` section's optimiser (lr scaled to ``global_batch`` by ``lr_scaling``) and
    its per-step warm-up + cosine schedule over ``epochs`` of ``steps_per_epoch`` steps."""
    check_optim(optim)
    if optim.warmup_epochs > epochs:
        raise ValueError(
            f"optim.warmup_epochs ({optim.warmup_epochs}) must not exceed epochs ({epochs})"
        )
    lr = scaled_learning_rate(optim.lr, global_batch, optim.lr_scaling, optim.base_batch_size)
    optimizer = build_optimizer(
        model, optim.name, lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )
    schedule = warmup_cosine(
        optimizer,
        optim.warmup_epochs * steps_per_epoch,
        epochs * steps_per_epoch,
        optim.final_lr_fraction,
    )
    return optimizer, schedule
