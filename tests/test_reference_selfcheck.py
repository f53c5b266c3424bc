"""Validate tests/reference_losses.py against official-code forms and hand formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

try:
    from tests import reference_losses as ref
except ImportError:  # pytest "prepend" import mode puts tests/ itself on sys.path
    import reference_losses as ref

DT = torch.float64
SEEDS = (0, 1, 2)


def _views(seed, n_views=2, n_items=6, dim=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_views, n_items, dim, generator=g, dtype=DT, requires_grad=True)


def _labels(seed, n_items=6, n_classes=3):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, n_classes, (n_items,), generator=g)


def _close(a, b, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _grad(out, x):
    (g,) = torch.autograd.grad(out, x)
    return g


def _check_value_and_grad(ours, official, x):
    _close(ours, official)
    _close(_grad(ours, x), _grad(official, x))


# ----------------------------------------------------------------------------------------
# official-code equivalences
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("include_augs", [True, False])
def test_dhel_matches_official(seed, include_augs):
    x = _views(seed)
    _, _, total = ref.dhel(x, temperature=0.3, include_augs=include_augs)
    official = ref.dhel_official(x[0], x[1], tau=0.3, include_augs=include_augs)
    _check_value_and_grad(total, official, x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("kernel", "t"),
    [
        ("gaussian", 2.0),
        ("log", 1.5),
        ("imq", 0.7),
        ("riesz", 1.0),
        ("riesz", -0.5),
        ("gaussian_riesz", 1.0),
    ],
)
def test_kcl_matches_official(seed, kernel, t):
    x = _views(seed)
    _, _, total = ref.kcl(x, t=t, kernel=kernel, weight=16.0)
    official = ref.kcl_official(x[0], x[1], t=t, kernel=kernel, gamma=16.0)
    _check_value_and_grad(total, official, x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_infonce_matches_cross_entropy(seed, temperature):
    x = _views(seed)
    _, _, total = ref.infonce(x, temperature=temperature)
    ce = ref.ntxent_cross_entropy(x, temperature=temperature)
    _check_value_and_grad(total, ce, x)
    # supcon without labels is InfoNCE
    _close(ref.supcon(x, temperature=temperature)[2], ce)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_views", [2, 3])
def test_tcl_k1_zero_is_supcon(seed, n_views):
    x = _views(seed, n_views=n_views)
    y = _labels(seed)
    for log_mean_exp in (False, True):
        ours = ref.tcl(x, y, temperature=0.2, k1=0.0, k2=1.0, log_mean_exp=log_mean_exp)
        sc = ref.supcon(x, y, temperature=0.2, log_mean_exp=log_mean_exp)
        for a, b in zip(ours, sc, strict=True):
            _close(a, b)
        _close(_grad(ours[2], x), _grad(sc[2], x))


# ----------------------------------------------------------------------------------------
# direct formula checks (vectorised, written differently from the loops)
# ----------------------------------------------------------------------------------------
def _masks(ids):
    same = ids[:, None] == ids[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool)
    return same & ~eye, ~same, ~eye


@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_matches_vectorised_formula(seed):
    x = _views(seed, n_views=3)
    y = _labels(seed)
    tau = 0.15
    z = F.normalize(x.detach().reshape(-1, x.shape[2]), dim=1)
    pos_mask, _, not_eye = _masks(y.repeat(3))
    logits = (z @ z.T / tau).masked_fill(~not_eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    expected = -(log_prob.masked_fill(~pos_mask, 0.0).sum(1) / pos_mask.sum(1)).mean()
    _close(ref.supcon(x, y, temperature=tau)[2], expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_tcl_matches_vectorised_formula(seed):
    x = _views(seed)
    y = _labels(seed)
    tau, k1, k2 = 0.1, 5000.0, 1.0
    z = F.normalize(x.detach().reshape(-1, x.shape[2]), dim=1)
    pos_mask, neg_mask, _ = _masks(y.repeat(2))
    s = z @ z.T
    pos_sum = (torch.exp(s / tau) * pos_mask).sum(1)
    pos_hard = (torch.exp(-s) * pos_mask).sum(1)
    neg_sum = (torch.exp(s / tau) * neg_mask).sum(1)
    log_d = torch.log(pos_sum + k1 * pos_hard + k2 * neg_sum)
    e = -((s / tau) * pos_mask).sum(1) / pos_mask.sum(1)
    pos, ent, total = ref.tcl(x, y, temperature=tau, k1=k1, k2=k2, weight=0.5)
    _close(pos, e.mean())
    _close(ent, log_d.mean())
    _close(total, e.mean() + 0.5 * log_d.mean())
    m = z.shape[0]
    _close(ref.tcl(x, y, temperature=tau, log_mean_exp=True)[1], log_d.mean() - math.log(m - 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_margin_matches_vectorised_formula(seed):
    x = _views(seed)
    y = _labels(seed)
    z = F.normalize(x.detach().reshape(-1, x.shape[2]), dim=1)
    ids = y.repeat(2)
    pos_mask, neg_mask, _ = _masks(ids)
    s = z @ z.T
    pos_terms = torch.relu(0.9 - s)[pos_mask]
    neg_terms = torch.relu(s - 0.1)[neg_mask]
    pos, ent, total = ref.margin(x, y, pos_margin=0.9, neg_margin=0.1, weight=2.0)
    _close(pos, pos_terms.sum() / max(int((pos_terms > 0).sum()), 1))
    _close(ent, neg_terms.sum() / max(int((neg_terms > 0).sum()), 1))
    _close(total, pos + 2.0 * ent)
    # flat form with the same ids gives the same value
    flat = ref.margin(x.reshape(-1, x.shape[2]), ids, pos_margin=0.9, neg_margin=0.1, weight=2.0)
    _close(flat[2], total)


def test_aggregation_modes():
    x = _views(0)
    y = _labels(0)
    pos_s, ent_s, _ = ref.margin(x, y, agg="sum")
    n_pos = int(_masks(y.repeat(2))[0].sum())
    n_ent = int(_masks(y.repeat(2))[1].sum())
    _close(ref.margin(x, y, agg="mean_per_term")[0], pos_s / n_pos)
    _close(ref.margin(x, y, agg="mean_per_term")[1], ent_s / n_ent)
    _close(ref.margin(x, y, agg="mean")[0], pos_s / (n_pos + n_ent))
    _close(ref.margin(x, y, agg="mean")[1], ent_s / (n_pos + n_ent))
    # infonce with agg=sum is M times the mean_per_term value (one element per anchor each)
    a = ref.infonce(x, agg="sum")
    b = ref.infonce(x, agg="mean_per_term")
    _close(a[2], b[2] * x.shape[0] * x.shape[1])


def test_log_mean_exp_shift_and_flat_form():
    x = _views(1)
    y = _labels(1)
    m = x.shape[0] * x.shape[1]
    _close(ref.infonce(x, y, log_mean_exp=True)[1], ref.infonce(x, y)[1] - math.log(m - 1))
    flat = ref.infonce(x.reshape(m, -1), y.repeat(2))
    for a, b in zip(flat, ref.infonce(x, y), strict=True):
        _close(a, b)
    _close(
        ref.dhel(x, log_mean_exp=True)[1],
        ref.dhel(x)[1] - 2 * math.log(x.shape[1] - 1),
    )


def test_errors():
    x = _views(0, n_items=4)
    with pytest.raises(ValueError):
        ref.infonce(x[0], torch.tensor([0, 1, 2, 3]))  # flat, no anchor has a positive
    with pytest.raises(ValueError):
        ref.dhel(x[0], torch.tensor([0, 0, 1, 1]))  # needs view structure
    with pytest.raises(ValueError):
        ref.kcl(x, kernel="nope")
    with pytest.raises(ValueError):
        ref.infonce(x, agg="median")


def test_flatten_layout():
    x = _views(0, n_views=3, n_items=4)
    y = torch.tensor([5, 6, 5, 7])
    z, ids, view_ids = ref.flatten(x, y)
    assert z.dtype == DT and z.shape == (12, 5)
    _close(z.norm(dim=1), torch.ones(12, dtype=DT))
    _close(z[4 * 2 + 1], F.normalize(x[2, 1].detach(), dim=0))  # m = v * N + n
    assert ids.tolist() == [5, 6, 5, 7] * 3
    assert view_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    _, ids0, _ = ref.flatten(x)
    assert ids0.tolist() == [0, 1, 2, 3] * 3
