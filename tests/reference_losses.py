"""Plain float64 reference implementations of the raycl contrastive losses (tests only).

Written independently of ``raycl/losses/`` straight from the formulas, with explicit Python
loops over anchors (and over pairs, for the pair-level losses). Clarity over speed: sizes in
the tests are small (M <= 64).

Conventions
-----------
* ``views``: float tensor (V, N, d), V >= 2 views of N items; optional ``labels`` (N,).
  Flattened view-major: anchor m = v * N + n; id(m) = n (labels None) or labels[n];
  view(m) = v.
* Flat form (where allowed): embeddings (M, d) with ``labels`` (M,), no view structure.
* Everything is float64; embeddings are L2-normalised first (not within
  :func:`unnormalised`), s_ij = z_i . z_j.
* Sets for anchor i: A(i) = {j != i}, P(i) = {j != i: id(j) = id(i)},
  Neg(i) = {j: id(j) != id(i)}, SV(i) = {j != i: view(j) = view(i)}.
* Each loss returns float64 scalars (pos, ent, total), total = pos + weight * ent, all
  differentiable w.r.t. the input tensor.

Aggregation of element lists (pos elements e, ent elements f):
  sum            POS = sum(e)                  ENT = sum(f)
  mean           POS = sum(e) / (n_pos+n_ent)   ENT = sum(f) / (n_pos+n_ent)
  mean_per_term  POS = sum(e) / n_pos           ENT = sum(f) / n_ent
  mean_nonzero   POS = sum(e) / max(z_pos, 1)   ENT = sum(f) / max(z_ent, 1)
then pos = c_pos * POS, ent = c_ent * ENT. An empty element list contributes 0 (its divisor
is clamped to 1), so e.g. ``margin`` with no negative pairs has ent = 0 rather than NaN.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

DTYPE = torch.float64
AGGS = ("sum", "mean", "mean_per_term", "mean_nonzero")
KERNELS = ("gaussian", "log", "imq", "riesz", "gaussian_riesz")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def flatten(views, labels=None):
    """Flatten to (z (M, d) unit-norm float64, ids (M,) long, view_ids (M,) long or None).

    ``views`` (V, N, d): view-major flattening, m = v * N + n.
    ``views`` (M, d): flat form; ``labels`` (M,) is required and view_ids is None.
    """
    x = views.to(DTYPE)
    if x.dim() == 3:
        n_views, n_items, _ = x.shape
        if n_views < 2:
            raise ValueError("need at least 2 views")
        x = x.reshape(n_views * n_items, x.shape[2])
        if labels is None:
            item_ids = torch.arange(n_items, dtype=torch.long)
        else:
            item_ids = torch.as_tensor(labels).to(torch.long).reshape(-1).cpu()
            if item_ids.numel() != n_items:
                raise ValueError("labels must have shape (N,)")
        ids = item_ids.repeat(n_views)
        view_ids = torch.arange(n_views, dtype=torch.long).repeat_interleave(n_items)
    elif x.dim() == 2:
        if labels is None:
            raise ValueError("flat (M, d) input needs labels")
        ids = torch.as_tensor(labels).to(torch.long).reshape(-1).cpu()
        if ids.numel() != x.shape[0]:
            raise ValueError("labels must have shape (M,)")
        view_ids = None
    else:
        raise ValueError("expected (V, N, d) views or flat (M, d) embeddings")
    z = x / x.norm(dim=1, keepdim=True) if _NORMALISED else x
    return z, ids, view_ids


_NORMALISED = True


@contextlib.contextmanager
def unnormalised():
    """Within it the references use the raw embeddings (s_ij = x_i · x_j), as a loss built
    with ``normalize=False`` does."""
    global _NORMALISED
    _NORMALISED = False
    try:
        yield
    finally:
        _NORMALISED = True


def _n_views(views):
    if views.dim() != 3:
        raise ValueError("this loss needs view structure: (V, N, d) input")
    return views.shape[0]


def _positives(ids, i):
    return [j for j in range(len(ids)) if j != i and ids[j] == ids[i]]


def _negatives(ids, i):
    return [j for j in range(len(ids)) if ids[j] != ids[i]]


def _others(m, i):
    return [j for j in range(m) if j != i]


def _same_view(view_ids, i):
    return [j for j in range(len(view_ids)) if j != i and view_ids[j] == view_ids[i]]


def _lse(x):
    """Stable log-sum-exp of a 1-D float64 tensor (max shift, shift detached)."""
    shift = x.max().detach()
    return shift + torch.log(torch.exp(x - shift).sum())


def _aggregate(pos_elems, ent_elems, agg, zero):
    """Return (POS, ENT) from element lists of 0-dim tensors.

    ``zero`` is a 0-dim tensor attached to the graph, used for empty lists.
    """
    if agg not in AGGS:
        raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
    n_pos, n_ent = len(pos_elems), len(ent_elems)
    sum_pos = torch.stack(pos_elems).sum() if pos_elems else zero
    sum_ent = torch.stack(ent_elems).sum() if ent_elems else zero
    if agg == "sum":
        return sum_pos, sum_ent
    if agg == "mean":
        denom = max(n_pos + n_ent, 1)
        return sum_pos / denom, sum_ent / denom
    if agg == "mean_per_term":
        return sum_pos / max(n_pos, 1), sum_ent / max(n_ent, 1)
    # mean_nonzero
    z_pos = sum(1 for e in pos_elems if e.item() != 0.0)
    z_ent = sum(1 for f in ent_elems if f.item() != 0.0)
    return sum_pos / max(z_pos, 1), sum_ent / max(z_ent, 1)


def _finish(pos_elems, ent_elems, agg, weight, z, c_pos=1.0, c_ent=1.0):
    zero = z.sum() * 0.0
    pos_agg, ent_agg = _aggregate(pos_elems, ent_elems, agg, zero)
    pos = c_pos * pos_agg
    ent = c_ent * ent_agg
    return pos, ent, pos + weight * ent


def _check_log_mean_exp(log_mean_exp):
    if not isinstance(log_mean_exp, bool):
        raise ValueError(f"log_mean_exp must be a bool, got {log_mean_exp!r}")


def _pos_element(s, i, pos_idx, temperature):
    """e_i = -(1/|P(i)|) * sum_{p in P(i)} s_ip / tau."""
    if len(pos_idx) == 0:
        raise ValueError(f"anchor {i} has no positive")
    return -(s[i, pos_idx] / temperature).sum() / len(pos_idx)


# ----------------------------------------------------------------------------------------
# 1. InfoNCE / NT-Xent / SupCon (L_out)
# ----------------------------------------------------------------------------------------
def infonce(
    views, labels=None, temperature=0.1, weight=1.0, agg="mean_per_term", log_mean_exp=False
):
    """Anchor-level: e_i = -mean_{p in P(i)} s_ip/tau, f_i = log sum_{a in A(i)} exp(s_ia/tau).

    With log_mean_exp=True, f_i -= log|A(i)|. Accepts (V, N, d) views or flat (M, d) + labels.
    """
    _check_log_mean_exp(log_mean_exp)
    z, ids, _ = flatten(views, labels)
    s = z @ z.T
    m = z.shape[0]
    pos_elems, ent_elems = [], []
    for i in range(m):
        pos_idx = _positives(ids, i)
        all_idx = _others(m, i)
        pos_elems.append(_pos_element(s, i, pos_idx, temperature))
        f_i = _lse(s[i, all_idx] / temperature)
        if log_mean_exp:
            f_i = f_i - math.log(len(all_idx))
        ent_elems.append(f_i)
    return _finish(pos_elems, ent_elems, agg, weight, z)


def supcon(
    views, labels=None, temperature=0.1, weight=1.0, agg="mean_per_term", log_mean_exp=False
):
    """SupCon L_out: identical to :func:`infonce` (labels=None makes it InfoNCE)."""
    return infonce(
        views, labels, temperature=temperature, weight=weight, agg=agg, log_mean_exp=log_mean_exp
    )


def ntxent_cross_entropy(views, temperature=0.1):
    """SimCLR NT-Xent written as F.cross_entropy (V=2, no labels). Returns ONE scalar.

    logits = S / tau with the diagonal at -inf; target of anchor i is i +- N; mean reduction.
    Equals ``infonce(views, temperature=temperature)[2]``.
    """
    if views.dim() != 3 or views.shape[0] != 2:
        raise ValueError("ntxent_cross_entropy needs views of shape (2, N, d)")
    n_items = views.shape[1]
    z, _, _ = flatten(views)
    m = 2 * n_items
    logits = (z @ z.T) / temperature
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    targets = (torch.arange(m, device=z.device) + n_items) % m
    return F.cross_entropy(logits, targets, reduction="mean")


# ----------------------------------------------------------------------------------------
# 2. Tuned Contrastive Learning
# ----------------------------------------------------------------------------------------
def tcl(
    views,
    labels=None,
    temperature=0.1,
    k1=5000.0,
    k2=1.0,
    weight=1.0,
    agg="mean_per_term",
    log_mean_exp=False,
):
    """TCL: e_i as infonce; f_i = log D_i,
    D_i = sum_P exp(s/tau) + k1 * sum_P exp(-s) + k2 * sum_Neg exp(s/tau)  (no tau in k1 term).

    With log_mean_exp=True, f_i -= log|A(i)|. k1=0, k2=1 gives supcon.
    """
    _check_log_mean_exp(log_mean_exp)
    if k1 < 0 or k2 < 0:
        raise ValueError("k1 and k2 must be >= 0")
    z, ids, _ = flatten(views, labels)
    s = z @ z.T
    m = z.shape[0]
    pos_elems, ent_elems = [], []
    for i in range(m):
        pos_idx = _positives(ids, i)
        neg_idx = _negatives(ids, i)
        pos_elems.append(_pos_element(s, i, pos_idx, temperature))
        # log D_i as an LSE over log-terms: log(k * exp(x)) = log k + x.
        log_terms = [s[i, pos_idx] / temperature]
        if k1 > 0:
            log_terms.append(math.log(k1) - s[i, pos_idx])
        if k2 > 0 and len(neg_idx) > 0:
            log_terms.append(math.log(k2) + s[i, neg_idx] / temperature)
        f_i = _lse(torch.cat(log_terms))
        if log_mean_exp:
            f_i = f_i - math.log(m - 1)  # |A(i)| = M - 1
        ent_elems.append(f_i)
    return _finish(pos_elems, ent_elems, agg, weight, z)


# ----------------------------------------------------------------------------------------
# 3. DHEL
# ----------------------------------------------------------------------------------------
def dhel(
    views,
    labels=None,
    temperature=0.3,
    include_augs=True,
    weight=1.0,
    agg="mean_per_term",
    log_mean_exp=False,
):
    """DHEL: pos e_i = -mean_{p in P(i)} s_ip/tau for every anchor;
    ent f_i = log sum_{j in SV(i)} exp(s_ij/tau) (minus log|SV(i)| if log_mean_exp=True) for anchors
    of view 0 only (include_augs=False) or all anchors (include_augs=True); c_ent = V if
    include_augs else 1.
    """
    _check_log_mean_exp(log_mean_exp)
    n_views = _n_views(views)
    z, ids, view_ids = flatten(views, labels)
    s = z @ z.T
    m = z.shape[0]
    pos_elems, ent_elems = [], []
    for i in range(m):
        pos_elems.append(_pos_element(s, i, _positives(ids, i), temperature))
        if include_augs or view_ids[i] == 0:
            sv_idx = _same_view(view_ids, i)
            if len(sv_idx) == 0:
                raise ValueError("DHEL needs N >= 2 (empty same-view set)")
            f_i = _lse(s[i, sv_idx] / temperature)
            if log_mean_exp:
                f_i = f_i - math.log(len(sv_idx))
            ent_elems.append(f_i)
    c_ent = float(n_views) if include_augs else 1.0
    return _finish(pos_elems, ent_elems, agg, weight, z, c_ent=c_ent)


def dhel_official(u, v, tau=0.3, include_augs=True):
    """Official-code form of DHEL for two views u, v (N, d) (inputs normalised here).

    -mean_i log[ exp(u_i.v_i/tau) / (sum_{j!=i} exp(u_i.u_j/tau) * sum_{j!=i} exp(v_i.v_j/tau)) ]
    (the v factor only with include_augs). Returns ONE scalar.
    """
    u = F.normalize(u.to(DTYPE), dim=1)
    v = F.normalize(v.to(DTYPE), dim=1)
    n = u.shape[0]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=u.device)
    sim_u = torch.exp(u @ u.T / tau).masked_select(off_diag).view(n, -1)
    denom = sim_u.sum(dim=-1)
    if include_augs:
        sim_v = torch.exp(v @ v.T / tau).masked_select(off_diag).view(n, -1)
        denom = denom * sim_v.sum(dim=-1)
    pos_sim = torch.exp((u * v).sum(dim=-1) / tau)
    return (-torch.log(pos_sim / denom)).mean()


# ----------------------------------------------------------------------------------------
# 4. KCL
# ----------------------------------------------------------------------------------------
def _riesz(d2, s):
    if s >= 0:
        return d2 ** (-s / 2.0)
    return -(d2 ** (-s / 2.0))


def _gaussian(d2, t):
    return torch.exp(-t * d2)


def kernel_energy(d2, t, kernel):
    """phi_E(d^2)."""
    if kernel == "gaussian":
        return _gaussian(d2, t)
    if kernel == "log":
        return -0.5 * torch.log(t * d2 + 1.0)
    if kernel == "imq":
        return t / torch.sqrt(t * t + d2)
    if kernel in ("riesz", "gaussian_riesz"):
        return _riesz(d2, t)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def kernel_alignment(d2, t, kernel):
    """phi_A(d^2)."""
    if kernel == "gaussian":
        return _gaussian(d2, t)
    if kernel == "log":
        return -torch.log(t * d2 + 1.0)
    if kernel == "imq":
        return t / torch.sqrt(t * t + d2)
    if kernel == "riesz":
        return _riesz(d2, t)
    if kernel == "gaussian_riesz":
        return _gaussian(d2, 2.0)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def kcl(views, labels=None, t=2.0, kernel="gaussian", weight=16.0, agg="mean_per_term"):
    """KCL, pair-level: pos elements phi_A(d2_ij) for ordered (i, j), j in P(i);
    ent elements phi_E(d2_ij) for ordered (i, j), j in SV(i); c_pos = -2, c_ent = V.
    d2_ij = ||z_i - z_j||^2.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    n_views = _n_views(views)
    z, ids, view_ids = flatten(views, labels)
    m = z.shape[0]
    pos_elems, ent_elems = [], []
    for i in range(m):
        for j in _positives(ids, i):
            d2 = ((z[i] - z[j]) ** 2).sum()
            pos_elems.append(kernel_alignment(d2, t, kernel))
        for j in _same_view(view_ids, i):
            d2 = ((z[i] - z[j]) ** 2).sum()
            ent_elems.append(kernel_energy(d2, t, kernel))
    return _finish(pos_elems, ent_elems, agg, weight, z, c_pos=-2.0, c_ent=float(n_views))


def kcl_official(u, v, t=2.0, kernel="gaussian", gamma=16.0):
    """Official-code form of KCL for two views (inputs normalised here), using torch.pdist:

    -2 * mean_i phi_A(||u_i - v_i||^2) + gamma * (mean_{i<j} phi_E(u) + mean_{i<j} phi_E(v)).
    Returns ONE scalar.
    """
    u = F.normalize(u.to(DTYPE), dim=1)
    v = F.normalize(v.to(DTYPE), dim=1)

    def energy(dist):  # dist = pdist (not squared)
        if kernel == "gaussian":
            return torch.exp(-t * dist.pow(2))
        if kernel == "log":
            return -0.5 * torch.log(t * dist.pow(2) + 1.0)
        if kernel == "imq":
            return t / torch.sqrt(t**2 + dist.pow(2))
        if kernel in ("riesz", "gaussian_riesz"):
            return dist.pow(-t) if t >= 0 else -dist.pow(-t)
        raise ValueError(kernel)

    def alignment(sq):  # sq = squared distance
        if kernel == "gaussian":
            return torch.exp(-t * sq)
        if kernel == "log":
            return -torch.log(t * sq + 1.0)
        if kernel == "imq":
            return t / torch.sqrt(t**2 + sq)
        if kernel == "riesz":
            return sq.sqrt().pow(-t) if t >= 0 else -sq.sqrt().pow(-t)
        if kernel == "gaussian_riesz":
            return torch.exp(-2.0 * sq)
        raise ValueError(kernel)

    align = -2.0 * alignment((u - v).pow(2).sum(dim=1)).mean()
    unif = energy(torch.pdist(u, p=2)).mean() + energy(torch.pdist(v, p=2)).mean()
    return align + gamma * unif


# ----------------------------------------------------------------------------------------
# 5. Contrastive margin loss (cosine similarity)
# ----------------------------------------------------------------------------------------
def margin(
    views_or_flat,
    labels=None,
    pos_margin=1.0,
    neg_margin=0.0,
    weight=1.0,
    agg="mean_nonzero",
):
    """Pair-level: pos elements [pos_margin - s_ij]_+ for ordered (i, j), j in P(i);
    ent elements [s_ij - neg_margin]_+ for ordered (i, j), j in Neg(i). c = 1.
    Accepts (V, N, d) views or flat (M, d) + labels.
    """
    z, ids, _ = flatten(views_or_flat, labels)
    s = z @ z.T
    m = z.shape[0]
    pos_elems, ent_elems = [], []
    for i in range(m):
        for j in _positives(ids, i):
            pos_elems.append(torch.clamp(pos_margin - s[i, j], min=0.0))
        for j in _negatives(ids, i):
            ent_elems.append(torch.clamp(s[i, j] - neg_margin, min=0.0))
    return _finish(pos_elems, ent_elems, agg, weight, z)


__all__ = [
    "AGGS",
    "KERNELS",
    "dhel",
    "dhel_official",
    "flatten",
    "infonce",
    "kcl",
    "kcl_official",
    "kernel_alignment",
    "kernel_energy",
    "margin",
    "ntxent_cross_entropy",
    "supcon",
    "tcl",
]
