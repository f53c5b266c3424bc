"""Evaluation of an encoder during and after training (pure torch, no Ray).

:func:`embed` runs a model over an evaluation data set, sharded over the ranks of an
initialised ``torch.distributed`` group and gathered back in data-set order on every rank.
:func:`evaluate_representation` embeds the train and test splits and computes the monitors of
:mod:`raycl.metrics`; :func:`alignment_from_batch` is the alignment of a training batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from raycl import metrics
from raycl.distributed import is_distributed, rank, world_size

__all__ = [
    "EvaluationReport",
    "alignment_from_batch",
    "embed",
    "evaluate_representation",
    "report_from_embeddings",
    "shard_bounds",
]


def shard_bounds(length: int, num_shards: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of contiguous shard ``index`` of ``range(length)``.

    The first ``length % num_shards`` shards hold one item more than the others.
    """
    base, extra = divmod(length, num_shards)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def _module(model: nn.Module) -> nn.Module:
    """The wrapped module of DistributedDataParallel / DataParallel, else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _default_device(model: nn.Module) -> torch.device:
    first = next(iter((*model.parameters(), *model.buffers())), None)
    return torch.device("cpu") if first is None else first.device


def _comm_device() -> torch.device:
    """Where collectives of the default group need their tensors (CUDA for NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_in_rank_order(local: list[Tensor | None], count: int) -> list[Tensor]:
    """Concatenate each tensor of ``local`` (``count`` rows on this rank) over all ranks.

    Ranks may hold different numbers of rows (even zero, then ``local`` holds ``None``):
    shapes are exchanged first, each tensor is padded to the largest count for ``all_gather``
    and the padding is cut off again. Results are on the CPU.
    """
    meta = (count, [None if t is None else (tuple(t.shape[1:]), t.dtype) for t in local])
    metas: list = [None] * world_size()
    dist.all_gather_object(metas, meta)
    counts = [m[0] for m in metas]
    most, device = max(counts), _comm_device()
    out = []
    for i, t in enumerate(local):
        tail, dtype = next(m[1][i] for m in metas if m[1][i] is not None)
        padded = torch.zeros((most, *tail), dtype=dtype, device=device)
        if t is not None:
            padded[:count] = t.to(device)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu())
    return out


def embed(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    shard: bool = True,
    bf16: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(features, embeddings, labels)`` of every item ``(image, label)`` of ``dataset``.

    ``model(x)`` must return ``(features, embeddings)`` (a single tensor is used as both); it
    runs in eval mode under ``torch.no_grad`` (and bf16 autocast when ``bf16`` and ``device``
    is CUDA) on ``device`` (default: the model's). Results are float32 / int64 CPU tensors in
    data-set order; multi-view items ``(V, C, H, W)`` give ``(N, V, ·)`` outputs. With an
    initialised process group and ``shard``, rank ``r`` embeds the contiguous shard
    :func:`shard_bounds` ``(N, W, r)`` and every rank receives the full, identical tensors
    (a collective: every rank must call it). A DDP wrapper is unwrapped (its forward would
    synchronise buffers across ranks); every submodule's train/eval mode is restored.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("embed: dataset is empty")
    if not batch_size > 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size!r}")
    module = _module(model)
    device = torch.device(device) if device is not None else _default_device(module)
    sharded = shard and is_distributed()
    start, stop = shard_bounds(n, world_size(), rank()) if sharded else (0, n)
    loader = DataLoader(
        Subset(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    features, embeddings, labels = [], [], []
    try:
        with (
            torch.no_grad(),
            torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"
            ),
        ):
            for images, y in loader:
                out = module(images.to(device, non_blocking=True))
                f, e = out if isinstance(out, tuple | list) else (out, out)
                features.append(f.float().cpu())
                embeddings.append(e.float().cpu())
                labels.append(torch.as_tensor(y).long().cpu())
    finally:
        for m, training in modes:
            m.training = training
    local = [torch.cat(ts) if ts else None for ts in (features, embeddings, labels)]
    if sharded:
        local = _gather_in_rank_order(local, stop - start)
    return local[0], local[1], local[2]


def alignment_from_batch(embeddings_vnd: Tensor, alpha: float = 2.0) -> float:
    """Alignment ``mean_i ‖ẑ⁰_i − ẑ¹_i‖^α`` between views 0 and 1 of a ``(V, N, D)`` batch.

    Rows are L2-normalised (Wang & Isola 2020); the batch is detached.
    """
    if embeddings_vnd.ndim != 3 or embeddings_vnd.shape[0] < 2:
        raise ValueError(
            f"embeddings_vnd must be (V, N, D) with V >= 2, got {tuple(embeddings_vnd.shape)}"
        )
    z = embeddings_vnd.detach()
    return metrics.alignment(z[0], z[1], alpha=alpha)


@dataclass
class EvaluationReport:
    """Monitors of one evaluation (``None``: not computed). Accuracies and recalls in percent."""

    uniformity: float
    effective_rank: float
    tolerance: float | None = None
    knn_top1: float | None = None
    alignment: float | None = None
    linear_probe: float | None = None
    recall: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        """Flat ``{name: float}``, recall as ``recall@K``; metrics not computed are left out."""
        out = {
            name: float(value)
            for name, value in (
                ("knn_top1", self.knn_top1),
                ("linear_probe", self.linear_probe),
                ("alignment", self.alignment),
                ("uniformity", self.uniformity),
                ("tolerance", self.tolerance),
                ("effective_rank", self.effective_rank),
            )
            if value is not None
        }
        out.update({f"recall@{k}": float(v) for k, v in sorted(self.recall.items())})
        return out


def _subsample(n: int, limit: int, seed: int) -> Tensor | None:
    """Sorted indices of ``limit`` of ``n`` items drawn by a ``seed``-ed generator (None: all)."""
    if n <= limit:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values


def report_from_embeddings(
    test_features: Tensor,
    test_embeddings: Tensor,
    test_labels: Tensor,
    train_features: Tensor | None = None,
    train_labels: Tensor | None = None,
    *,
    view_embeddings: Tensor | None = None,
    knn_k: int | None = 200,
    knn_temperature: float = 0.1,
    linear_probe: bool = False,
    recall_ks: Sequence[int] | None = None,
    max_pairwise_points: int = 4096,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> EvaluationReport:
    """The metrics of :func:`evaluate_representation` from already embedded splits.

    Encoder features: ``knn_top1`` (train bank, test queries; skipped when ``knn_k`` is
    None), ``linear_probe`` and ``recall@K`` (test set against itself). L2-normalised test
    projection embeddings: ``effective_rank``, and on at most ``max_pairwise_points``
    (seeded subsample) ``uniformity`` and ``tolerance`` (same-class mean cosine; None when
    no class has two points). ``alignment``: views 0 and 1 of ``view_embeddings (N, V, D)``.
    ``device`` (e.g. CUDA) is where the kNN and recall searches run.
    """
    needs_train = knn_k is not None or linear_probe
    if needs_train and (train_features is None or train_labels is None):
        raise ValueError("train_features and train_labels are needed for knn_top1/linear_probe")
    z = F.normalize(test_embeddings.flatten(1).float(), dim=1)
    keep = _subsample(z.shape[0], max_pairwise_points, seed)
    z_pairs, y_pairs = (z, test_labels) if keep is None else (z[keep], test_labels[keep])
    report = EvaluationReport(
        uniformity=metrics.uniformity(z_pairs),
        effective_rank=metrics.effective_rank(z),
    )
    if bool((torch.unique(y_pairs, return_counts=True)[1] > 1).any()):
        report.tolerance = metrics.tolerance(z_pairs, y_pairs)
    if view_embeddings is not None:
        report.alignment = alignment_from_batch(view_embeddings.transpose(0, 1))
    test_f = test_features if device is None else test_features.to(device)
    if knn_k is not None:
        bank = train_features if device is None else train_features.to(device)  # type: ignore[union-attr]
        report.knn_top1 = metrics.knn_top1(
            bank, train_labels, test_f, test_labels, k=knn_k, temperature=knn_temperature
        )
    if linear_probe:
        report.linear_probe = metrics.linear_probe(
            train_features, train_labels, test_features, test_labels
        )
    if recall_ks:
        report.recall = metrics.recall_at_k(test_f, test_labels, ks=tuple(recall_ks))
    return report


def evaluate_representation(
    model: nn.Module,
    train_eval: Dataset | None,
    test_eval: Dataset,
    *,
    knn_k: int | None = 200,
    knn_temperature: float = 0.1,
    linear_probe: bool = False,
    recall_ks: Sequence[int] | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    bf16: bool = False,
    views_dataset: Dataset | None = None,
    max_pairwise_points: int = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """Embed the splits with :func:`embed` and return flat metrics (python floats).

    Keys: ``knn_top1``, ``linear_probe`` (when asked), ``alignment`` (only with a
    ``views_dataset`` of multi-view items ``((V, C, H, W), label)``, subsampled to
    ``max_pairwise_points`` items; otherwise the trainer logs it from training batches via
    :func:`alignment_from_batch`), ``uniformity``, ``tolerance``, ``effective_rank`` and
    ``recall@K`` for ``K`` in ``recall_ks``; see :func:`report_from_embeddings`.
    ``train_eval`` may be None when neither kNN (``knn_k=None``) nor the probe is wanted.
    Under ``torch.distributed`` every rank must call it and every rank gets the same numbers.
    """
    opts = {"batch_size": batch_size, "device": device, "num_workers": num_workers, "bf16": bf16}
    train_f = train_y = view_e = None
    if knn_k is not None or linear_probe:
        if train_eval is None:
            raise ValueError("train_eval is needed for knn_top1 / linear_probe")
        train_f, _, train_y = embed(model, train_eval, **opts)
    test_f, test_e, test_y = embed(model, test_eval, **opts)
    if views_dataset is not None:
        keep = _subsample(len(views_dataset), max_pairwise_points, seed)  # type: ignore[arg-type]
        views = views_dataset if keep is None else Subset(views_dataset, keep.tolist())
        view_e = embed(model, views, **opts)[1]
    report = report_from_embeddings(
        test_f,
        test_e,
        test_y,
        train_f,
        train_y,
        view_embeddings=view_e,
        knn_k=knn_k,
        knn_temperature=knn_temperature,
        linear_probe=linear_probe,
        recall_ks=recall_ks,
        max_pairwise_points=max_pairwise_points,
        seed=seed,
        device=device,
    )
    return report.to_dict()
