"""Data-parallel contrastive losses: every rank's anchors against the gathered global batch.

Pure ``torch.distributed`` (Ray Train, torchrun or a test sets up the process group). Without
an initialised group, or with one rank, every function here is the identity / the plain loss.

Why the gradients are exact. Rank ``k`` holds embeddings ``z_k`` of its local rows; the
gathered batch is ``Z = [z_1; …; z_W]``. Rank ``k`` computes ``L_k = loss(rows z_k, cols Z)``
with sums over its own anchors divided by *global* element counts (``reduce_counts``), so every
aggregation is linear in the per-anchor sums and the single-process loss of the global batch is

    L = Σ_w L_w                                              (value, and pos / ent alike)
    ∂L/∂z_k = ∂L_k/∂z_k |rows  +  Σ_w ∂L_w/∂Z[slice k]        (the exact global gradient).

If every rank calls ``backward(c · L_k)``, the rows path gives rank ``k`` the first term and the
backward of :func:`all_gather_with_grad` — a reduce-scatter that SUMS over ranks the gradients
w.r.t. slice ``k`` — gives the second, so rank ``k``'s embedding gradient is ``c · ∂L/∂z_k``
and its parameter gradient ``c · Σ_{i ∈ rank k} J_iᵀ ∂L/∂z_i``, rank ``k``'s share of
``c · ∂L/∂θ``. DistributedDataParallel then AVERAGES over the ``W`` ranks, leaving
``(c / W) · ∂L/∂θ``: hence :func:`distributed_loss` returns ``backward_total = W · L_k`` (c = W),
and the averaged gradient equals that of one process on the concatenated global batch.
(If gradients are all-reduced with SUM instead of averaged, call backward on ``local.total``.)

Every rank must run the same sequence of calls (the gathers and their backward are
collectives), so an error raised on one rank only, such as an anchor without a positive,
would leave the others waiting until the process group's timeout. :func:`distributed_loss`
therefore runs the checks that can fail on one rank (the local batch, then the anchors against
the gathered columns) before the collectives that depend on them, and :func:`agree_on_error`
makes every rank raise the same error at once (one extra all-reduce of a flag per check).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from raycl.losses.base import ContrastiveLoss, LossTerms
from raycl.losses.structure import PairStructure, flatten_batch

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

# Recent torch: a differentiable all-gather whose backward is a SUM reduce-scatter, on gloo too
# (it replaces the deprecated all_gather_tensor_autograd). Older torch lacks it, and gloo lacked
# reduce_scatter, hence the all_reduce-based autograd.Function below as the fallback.
try:
    from torch.distributed._functional_collectives import (
        all_gather_single_autograd as _fc_all_gather,
    )
    from torch.distributed._functional_collectives import wait_tensor as _fc_wait
except ImportError:  # pragma: no cover - older torch: the autograd.Function below
    _fc_all_gather = None
    _fc_wait = None


class DistributedLoss(NamedTuple):
    """What a rank needs from a data-parallel loss step.

    ``backward_total`` is ``W · local.total`` (call ``backward`` on it under DDP's averaging);
    ``global_terms`` the loss of the whole global batch (all-reduced, detached, for logging);
    ``local`` this rank's share ``L_k`` (``Σ_k local = global``), differentiable.
    """

    backward_total: Tensor
    global_terms: LossTerms
    local: LossTerms


def is_distributed(group: ProcessGroup | None = None) -> bool:
    """True when a process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group: ProcessGroup | None = None) -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size(group) if is_distributed(group) else 1


def rank(group: ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (0 when not distributed)."""
    return dist.get_rank(group) if is_distributed(group) else 0


def all_gather_with_grad(x: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably (identity on one rank).

    Every rank must pass the same shape (checked: a ValueError otherwise) and, as the backward
    is a collective, every rank must backpropagate through the result. Backward: rank ``k``
    receives ``Σ_w ∂L_w/∂out[slice k]``, the SUM over ranks of the gradients w.r.t. its slice —
    what makes the data-parallel gradient exact (see the module docstring).
    """
    if not is_distributed(group):
        return x
    sizes = _all_gather_nograd(torch.tensor([list(x.shape)], device=x.device), group)
    if not bool((sizes == sizes[0]).all()):
        raise ValueError(
            f"all_gather_with_grad: every rank needs the same shape, got {sizes.tolist()} "
            f"(rank order)"
        )
    return _all_gather_autograd(x, group)


def all_reduce_sum(t: Tensor, group: ProcessGroup | None = None) -> Tensor:
    """Sum of ``t`` over ranks, detached (identity when not distributed); a ``reduce_counts``."""
    if not is_distributed(group):
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def gather_batch(
    z_local: Tensor,
    structure: PairStructure,
    ids_are_labels: bool = False,
    group: ProcessGroup | None = None,
) -> tuple[Tensor, PairStructure, PairStructure]:
    """Gather a flattened local batch: ``(cols_z, rows, cols)`` for ``loss.compute``.

    ``cols_z`` (``W·M``, d) is every rank's ``z_local`` in rank order (differentiable, see
    :func:`all_gather_with_grad`); ``rows`` this rank's structure with GLOBAL index
    ``rank·M + index`` and global ids; ``cols`` the gathered structure. Item ids of
    self-supervised batches (``ids_are_labels=False``) are offset by ``rank · n_items`` so that
    ranks never share an item; class labels (``ids_are_labels=True``) are kept. Views are kept.
    Every rank must hold the same number of rows ``M`` (a ValueError otherwise).
    """
    if not is_distributed(group):
        return z_local, structure, structure
    if z_local.dim() != 2 or z_local.shape[0] != len(structure):
        raise ValueError(
            f"gather_batch: z_local must be (M, d) with M = {len(structure)} rows of the "
            f"structure, got {tuple(z_local.shape)}"
        )
    ids = structure.ids.to(torch.long)
    if not ids_are_labels and len(ids) and int(ids.min()) < 0:
        raise ValueError("gather_batch: item ids must be >= 0 (or pass ids_are_labels=True)")
    span = int(ids.max()) + 1 if len(ids) else 0
    meta = torch.tensor([[z_local.shape[0], z_local.shape[1], span]], device=z_local.device)
    meta = _all_gather_nograd(meta, group)
    if not bool((meta[:, :2] == meta[0, :2]).all()):
        raise ValueError(
            "gather_batch: every rank needs the same local batch (rows M, dim d); got (M, d) = "
            f"{[tuple(m) for m in meta[:, :2].tolist()]} on ranks 0..{len(meta) - 1} — make the "
            "per-worker batch size equal (e.g. drop_last=True)"
        )
    me, num_rows = rank(group), z_local.shape[0]
    if not ids_are_labels:
        ids = ids + me * int(meta[:, 2].max())
    index = structure.index.to(torch.long) + me * num_rows
    rows = PairStructure(ids, index, structure.views)
    columns = [ids, index] if structure.views is None else [ids, index, structure.views.long()]
    gathered = _all_gather_nograd(torch.stack(columns, 1), group)
    views = None if structure.views is None else gathered[:, 2].to(structure.views.dtype)
    cols = PairStructure(gathered[:, 0], gathered[:, 1], views)
    return _all_gather_autograd(z_local, group), rows, cols


def distributed_loss(
    loss: ContrastiveLoss,
    views_local: Tensor,
    labels_local: Tensor | None = None,
    group: ProcessGroup | None = None,
) -> DistributedLoss:
    """This rank's share of the loss of the global batch, scaled for DDP's gradient average.

    ``views_local`` (V, n, d) (or flat (M, d) with labels) is this rank's slice of the global
    batch; ``labels_local`` its labels (supervised: kept as ids) or None (self-supervised: item
    ids made globally unique). Call ``backward_total.backward()`` on every rank: with DDP's
    average over ``W`` ranks the parameter gradients equal those of one process on the
    concatenated batch (``backward_total = W · L_k``; derivation in the module docstring).
    """
    if labels_local is not None and not loss.accepts_labels:
        raise ValueError(f"labels: {loss.name} is self-supervised and takes no labels")
    if not is_distributed(group):
        z, structure = flatten_batch(views_local, labels_local)
        terms = loss.compute(z, structure)
        return DistributedLoss(terms.total, LossTerms(*(t.detach() for t in terms)), terms)
    with agree_on_error(group):
        z, structure = flatten_batch(views_local, labels_local)
    cols_z, rows, cols = gather_batch(z, structure, labels_local is not None, group)
    with agree_on_error(group):
        loss.check_structure(rows, cols)
    terms = loss.compute(z, rows, cols_z, cols, reduce_counts=partial(all_reduce_sum, group=group))
    global_terms = LossTerms(*all_reduce_sum(torch.stack([t.detach() for t in terms]), group))
    return DistributedLoss(terms.total * world_size(group), global_terms, terms)


@contextmanager
def agree_on_error(group: ProcessGroup | None = None) -> Iterator[None]:
    """Run the block on every rank, then raise on every rank if it raised on any.

    A collective: every rank must enter it. The ``ValueError`` raised on the lowest failing
    rank is raised everywhere, its message prefixed with that rank; other exceptions pass
    through unchanged (they are not expected to differ between ranks).
    """
    message = None
    try:
        yield
    except ValueError as err:
        message = str(err)
    if not is_distributed(group):
        if message is not None:
            raise ValueError(message)
        return
    failed = torch.tensor([message is not None], dtype=torch.int32, device=_comm_device(group))
    dist.all_reduce(failed, op=dist.ReduceOp.SUM, group=group)
    if int(failed) == 0:
        return
    messages: list[str | None] = [None] * world_size(group)
    dist.all_gather_object(messages, message, group=group)
    first = next(r for r, m in enumerate(messages) if m is not None)
    raise ValueError(f"rank {first} of {len(messages)}: {messages[first]}")


def _comm_device(group: ProcessGroup | None) -> torch.device:
    """Where small tensors for the group's collectives live (CUDA for nccl)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_autograd(x: Tensor, group: ProcessGroup | None) -> Tensor:
    """The differentiable gather, without the shape check (callers have checked)."""
    x = x.contiguous()
    if _fc_all_gather is not None:
        # The functional collective's backward is reduce_scatter(SUM) (works on gloo and nccl);
        # wait_tensor turns the AsyncCollectiveTensor into a plain tensor, keeping autograd.
        return _fc_wait(_fc_all_gather(x, 0, group if group is not None else dist.group.WORLD))
    return _AllGatherSumGrad.apply(x, group)


class _AllGatherSumGrad(torch.autograd.Function):
    """all_gather forward; backward all_reduce(SUM) of the full gradient, then this rank's slice.

    Same result as a reduce-scatter, on every backend (gloo long lacked reduce_scatter).
    """

    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup | None) -> Tensor:
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), x.shape[0]
        return _all_gather_nograd(x, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def _all_gather_nograd(x: Tensor, group: ProcessGroup | None) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)
