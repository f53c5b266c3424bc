"""Representation-quality metrics for contrastive learning.

Every function takes torch tensors (any floating dtype, any device) and returns plain Python
numbers. Embeddings are ``(N, D)`` matrices, labels are ``(N,)`` integer vectors. Bad input
raises ``ValueError`` with a one-line message that names the offending argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "alignment",
    "effective_rank",
    "knn_top1",
    "linear_probe",
    "rank",
    "recall_at_k",
    "tolerance",
    "uniformity",
    "wasserstein_uniformity",
]


class DegenerateEmbeddings(ValueError):
    """Embeddings a metric is undefined for (all zeros): a collapsed encoder."""


def _check(
    name: str,
    x: torch.Tensor,
    *,
    ndim: int,
    min_len: int = 1,
    length: int | None = None,
    length_of: str = "",
) -> torch.Tensor:
    """Validate one input tensor and return it ready for computation.

    Embeddings (``ndim=2``) must be finite floating-point tensors and come back as float32
    (float64 is kept). Labels (``ndim=1``) must be integer tensors and come back unchanged.
    ``length`` (with ``length_of`` naming its source) pins the size of dimension 0.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} has length {x.shape[0]} but {length_of} has {length} rows")
    if x.shape[0] < min_len:
        raise ValueError(f"{name} needs at least {min_len} rows, got {x.shape[0]}")
    if ndim == 1:
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
        return x
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least 1 column, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x if x.dtype == torch.float64 else x.float()


def _check_split(
    kind: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a train/test pair of (``kind`` matrix, labels) with matching widths."""
    train_x = _check(f"train_{kind}", train_x, ndim=2)
    train_y = _check(
        "train_labels", train_y, ndim=1, length=train_x.shape[0], length_of=f"train_{kind}"
    )
    test_x = _check(f"test_{kind}", test_x, ndim=2)
    test_y = _check("test_labels", test_y, ndim=1, length=test_x.shape[0], length_of=f"test_{kind}")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"test_{kind} has dim {test_x.shape[1]} but train_{kind} has {train_x.shape[1]}"
        )
    return train_x, train_y, test_x, test_y


def _check_positive(name: str, value: float, *, integer: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is > 0 (and an integer when ``integer``)."""
    if integer and (isinstance(value, bool) or not isinstance(value, Integral)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def knn_top1(
    train_embeddings: torch.Tensor,
    train_labels: torch.Tensor,
    test_embeddings: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
) -> float:
    """Weighted kNN top-1 accuracy in percent (InstDisc / MoCo monitor).

    With L2-normalised bank ``b_j`` and query ``q``: ``s_j = b_j·q``; over the ``k`` largest
    ``s_j`` (``k`` clipped to the bank size), ``score(c) = Σ_{j: y_j = c} exp(s_j / T)``;
    prediction ``argmax_c score(c)``. Similarities are shifted by their row maximum before
    ``exp`` (same argmax, no overflow). Queries are processed ``batch_size`` at a time, so
    memory is ``O(batch_size · N_train)``.
    """
    bank, bank_labels, queries, query_labels = _check_split(
        "embeddings", train_embeddings, train_labels, test_embeddings, test_labels
    )
    _check_positive("k", k, integer=True)
    _check_positive("temperature", temperature)
    _check_positive("batch_size", batch_size, integer=True)

    device = bank.device
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries.to(device=device, dtype=bank.dtype), dim=1)
    classes, bank_class = torch.unique(bank_labels.to(device), return_inverse=True)
    query_labels = query_labels.to(device)
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, queries.shape[0], batch_size):
        sims = queries[start : start + batch_size] @ bank.T
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = torch.exp((top_sims - top_sims[:, :1]) / temperature)
        scores = torch.zeros(sims.shape[0], classes.numel(), dtype=bank.dtype, device=device)
        scores.scatter_add_(1, bank_class[top_idx], weights)
        predicted = classes[scores.argmax(dim=1)]
        correct += int((predicted == query_labels[start : start + batch_size]).sum())
    return 100.0 * correct / queries.shape[0]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    max_iter: int = 1000,
    C: float = 1.0,
) -> float:
    """Linear-probe top-1 accuracy in percent.

    ``Pipeline(StandardScaler, LogisticRegression(lbfgs, C))`` fitted on the train features;
    with more than two classes lbfgs minimises the multinomial (softmax) cross-entropy
    ``-Σ_i log softmax(W z_i + b)_{y_i} + ||W||² / (2C)``. Returns
    ``100 · mean(predict(test) == test_labels)``.
    """
    train, train_y, test, test_y = _check_split(
        "features", train_features, train_labels, test_features, test_labels
    )
    if torch.unique(train_y).numel() < 2:
        raise ValueError("train_labels must contain at least 2 classes")
    _check_positive("max_iter", max_iter, integer=True)
    _check_positive("C", C)

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")
    )
    probe.fit(to_numpy(train.double()), to_numpy(train_y))
    predicted = probe.predict(to_numpy(test.double()))
    return 100.0 * float(np.mean(predicted == to_numpy(test_y)))


def recall_at_k(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    batch_size: int = 1024,
) -> dict[int, float]:
    """Deep-metric-learning Recall@K in percent, for every ``K`` in ``ks``.

    Each item is a query against all OTHER items ranked by cosine similarity;
    ``R@K = 100 · mean_i 1[∃ j ∈ kNN_K(i), j ≠ i : y_j = y_i]``. ``K`` larger than ``N - 1``
    is clipped to ``N - 1``. Queries are processed ``batch_size`` at a time.
    """
    x = _check("embeddings", embeddings, ndim=2, min_len=2)
    y = _check("labels", labels, ndim=1, length=x.shape[0], length_of="embeddings")
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, Integral) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    _check_positive("batch_size", batch_size, integer=True)

    x = F.normalize(x, dim=1)
    y = y.to(x.device)
    n = x.shape[0]
    max_k = min(max(ks), n - 1)
    hits = dict.fromkeys(ks, 0)
    for start in range(0, n, batch_size):
        sims = x[start : start + batch_size] @ x.T
        rows = torch.arange(sims.shape[0], device=x.device)
        sims[rows, rows + start] = -torch.inf
        neighbour_labels = y[sims.topk(max_k, dim=1).indices]
        match = neighbour_labels == y[start : start + batch_size, None]
        for k in hits:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    return {k: 100.0 * h / n for k, h in hits.items()}


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Alignment (Wang & Isola 2020): ``mean_i ||x̂_i − ŷ_i||_2^α`` over positive pairs.

    ``x̂, ŷ`` are the L2-normalised rows; row ``i`` of ``x`` and ``y`` form a positive pair.
    """
    a = _check("x", x, ndim=2)
    b = _check("y", y, ndim=2)
    if a.shape != b.shape:
        raise ValueError(f"y has shape {tuple(b.shape)} but x has {tuple(a.shape)}")
    _check_positive("alpha", alpha)
    a = F.normalize(a, dim=1)
    b = F.normalize(b.to(device=a.device, dtype=a.dtype), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """Uniformity (Wang & Isola 2020): ``log mean_{i<j} exp(−t ||x̂_i − x̂_j||²)``.

    Rows are L2-normalised first; evaluated as a log-sum-exp over ``torch.pdist``, so memory is
    ``O(N²)``. Uniform points on a high-dimensional sphere give about ``−2t``.
    """
    z = _check("x", x, ndim=2, min_len=2)
    _check_positive("t", t)
    sq_dists = torch.pdist(F.normalize(z, dim=1), p=2).pow(2)
    return float(torch.logsumexp(-t * sq_dists, dim=0) - math.log(sq_dists.numel()))


def tolerance(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Tolerance (Wang & Liu 2021): mean cosine similarity over same-class pairs ``i ≠ j``.

    ``T = Σ_c Σ_{i≠j ∈ c} x̂_i·x̂_j / Σ_c n_c (n_c − 1)``, computed in ``O(N·D)`` from
    per-class sums: ``Σ_{i≠j ∈ c} x̂_i·x̂_j = ||Σ_{i∈c} x̂_i||² − Σ_{i∈c} ||x̂_i||²``.
    """
    x = _check("embeddings", embeddings, ndim=2, min_len=2)
    y = _check("labels", labels, ndim=1, length=x.shape[0], length_of="embeddings")
    x = F.normalize(x.double(), dim=1)
    _, cls, counts = torch.unique(y.to(x.device), return_inverse=True, return_counts=True)
    num_pairs = int((counts * (counts - 1)).sum())
    if num_pairs == 0:
        raise ValueError("labels must contain at least one class with 2 or more samples")
    class_sums = torch.zeros(counts.numel(), x.shape[1], dtype=x.dtype, device=x.device)
    class_sums.index_add_(0, cls, x)
    pair_sum = class_sums.pow(2).sum() - x.pow(2).sum()
    return float(pair_sum / num_pairs)


def _upper_pairs(linear: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Map linear indices into the row-major strict upper triangle of an ``n×n`` matrix to
    ``(i, j)`` with ``i < j`` (the same order as ``np.triu_indices(n, 1)``)."""
    rows = np.arange(n - 1, dtype=np.int64)
    row_start = rows * (2 * n - rows - 1) // 2
    i = np.searchsorted(row_start, linear, side="right") - 1
    return i, linear - row_start[i] + i + 1


def wasserstein_uniformity(
    embeddings: torch.Tensor,
    num_reference: int = 10000,
    max_pairs: int = 50000,
    seed: int = 0,
) -> float:
    """1-D Wasserstein distance between pairwise cosines and their law under uniformity.

    ``W1(P̂, Q_d)`` where ``P̂`` is the empirical law of ``x̂_i·x̂_j`` over pairs ``i < j``
    (subsampled without replacement to ``max_pairs`` by a ``seed``-ed generator) and ``Q_d``
    is the law of ``u·v`` for independent uniform ``u, v`` on ``S^{d−1} ⊂ R^d``, with ``d``
    the embedding dimension: density ``p(x) ∝ (1 − x²)^((d−3)/2)`` on ``[−1, 1]``, sampled
    exactly (``num_reference`` draws) as ``2·Beta((d−1)/2, (d−1)/2) − 1``.

    The DHEL/KCL reference code plugs ``d = 127`` into this density for 128-D embeddings;
    that is the sphere ``S^{126}`` in ``R^{127}``, a dimension bug avoided here by reading
    ``d`` from the input.
    """
    x = _check("embeddings", embeddings, ndim=2, min_len=2)
    n, d = x.shape
    if d < 2:
        raise ValueError(f"embeddings must have at least 2 columns, got shape {tuple(x.shape)}")
    _check_positive("num_reference", num_reference, integer=True)
    _check_positive("max_pairs", max_pairs, integer=True)

    rng = np.random.default_rng(seed)
    num_pairs = n * (n - 1) // 2
    if num_pairs <= max_pairs:
        linear = np.arange(num_pairs, dtype=np.int64)
    else:
        linear = rng.choice(num_pairs, size=max_pairs, replace=False)
    i, j = _upper_pairs(linear, n)
    x = F.normalize(x.double(), dim=1)
    i_t, j_t = (torch.from_numpy(a).to(x.device) for a in (i, j))
    cosines = (x[i_t] * x[j_t]).sum(dim=1).cpu().numpy()
    half = (d - 1) / 2
    reference = 2.0 * rng.beta(half, half, size=num_reference) - 1.0
    return float(wasserstein_distance(cosines, reference))


def rank(embeddings: torch.Tensor, tol: float = 1e-5) -> int:
    """Rank of the embedding covariance ``Σ = (X − x̄)ᵀ(X − x̄) / (N − 1)``.

    Number of eigenvalues of ``Σ`` above the absolute tolerance ``tol`` (float64,
    ``torch.linalg.matrix_rank``).
    """
    x = _check("embeddings", embeddings, ndim=2, min_len=2)
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    centred = x.double() - x.double().mean(dim=0)
    cov = centred.T @ centred / (x.shape[0] - 1)
    return int(torch.linalg.matrix_rank(cov, atol=tol, rtol=0.0, hermitian=True))


def effective_rank(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al. 2023).

    ``σ`` = singular values of the embedding matrix, ``p_k = σ_k / ||σ||₁ + ε``,
    ``erank = exp(−Σ_k p_k log p_k)``.
    """
    x = _check("embeddings", embeddings, ndim=2)
    _check_positive("eps", eps)
    sigma = torch.linalg.svdvals(x.double())
    total = sigma.sum()
    if total == 0:
        raise DegenerateEmbeddings("embeddings must not be all zeros")
    p = sigma / total + eps
    return float(torch.exp(-(p * p.log()).sum()))
