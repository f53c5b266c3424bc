"""Every loss against the independent float64 reference (value and gradient), plus the
equivalences, numerics and input errors the losses promise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from raycl.losses import AGGREGATIONS, LOSSES, aggregate, build_loss
from raycl.losses.aggregation import TermSum
from tests import reference_losses as ref

IMPLS = ("materialised", "tiled")
# registry name -> (independent reference, non-default hyper-parameters to test with)
FAMILIES = {
    "infonce": (ref.infonce, {"temperature": 0.2, "weight": 0.7, "log_mean_exp": True}),
    "supcon": (ref.supcon, {"temperature": 0.3, "weight": 1.3}),
    "tcl": (ref.tcl, {"temperature": 0.2, "k1": 30.0, "k2": 2.0, "weight": 0.5}),
    "dhel": (ref.dhel, {"temperature": 0.4, "include_augs": False, "log_mean_exp": True}),
    "kcl": (ref.kcl, {"t": 1.5, "kernel": "imq", "weight": 4.0}),
    "margin": (ref.margin, {"pos_margin": 0.8, "neg_margin": 0.2, "weight": 2.0}),
}
KCL_KERNELS = ("gaussian", "log", "imq", "riesz", "gaussian_riesz")


def views(seed: int, n_views: int = 2, n_items: int = 6, dim: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_views, n_items, dim, generator=g, dtype=torch.float64)


def labels_for(seed: int, n_items: int, n_classes: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7)
    return torch.randint(0, n_classes, (n_items,), generator=g)


def ref_params(params: dict) -> dict:
    """The reference calls the aggregation ``agg``; it normalises unless told otherwise
    (:func:`tests.reference_losses.unnormalised`)."""
    return {("agg" if k == "aggregation" else k): v for k, v in params.items() if k != "normalize"}


def assert_matches_reference(name, ref_fn, x, labels, params, impl, block_size=None):
    x_ours = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    loss = build_loss(name, impl=impl, block_size=block_size, **params)
    ours = loss(x_ours, labels)
    theirs = ref_fn(x_ref, labels, **ref_params(params))
    for got, want in zip(ours, (theirs[2], theirs[0], theirs[1]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.total, x_ours)
    (g_ref,) = torch.autograd.grad(theirs[2], x_ref)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("name", "supervised"),
    [(name, False) for name in sorted(FAMILIES)]
    + [(name, True) for name in sorted(FAMILIES) if LOSSES[name].accepts_labels],
)
def test_matches_reference(name, supervised, impl):
    ref_fn, params = FAMILIES[name]
    x = views(seed=len(name), n_views=3, n_items=7)
    labels = labels_for(1, 7) if supervised else None
    assert_matches_reference(name, ref_fn, x, labels, params, impl, block_size=5)


def along_sphere(grad: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """The part of ``grad`` tangent to the unit sphere at the rows of ``unit``."""
    return grad - (grad * unit).sum(-1, keepdim=True) * unit


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_without_normalisation_matches_the_reference_on_raw_embeddings(name, impl):
    ref_fn, params = FAMILIES[name]
    x = 0.6 * views(seed=21, n_items=7)  # norms about 1.3: not unit, exponents moderate
    if name == "kcl":
        # its kernels take d² = 2 − 2s: unit inputs are its documented contract, and on the
        # sphere the value and the gradient along it (not across: d² and 2 − 2s differ off
        # the sphere) are the reference's
        x = F.normalize(x, dim=-1).requires_grad_(True)
        ours = build_loss(name, impl=impl, block_size=3, normalize=False, **params)(x)
        x_ref = x.detach().clone().requires_grad_(True)
        with ref.unnormalised():
            theirs = ref_fn(x_ref, None, **ref_params(params))
        torch.testing.assert_close(ours.total, theirs[2], rtol=1e-10, atol=1e-12)
        (g,) = torch.autograd.grad(ours.total, x)
        (g_ref,) = torch.autograd.grad(theirs[2], x_ref)
        torch.testing.assert_close(
            along_sphere(g, x), along_sphere(g_ref, x), rtol=1e-9, atol=1e-12
        )
        return
    with ref.unnormalised():
        assert_matches_reference(name, ref_fn, x, None, {**params, "normalize": False}, impl, 3)
    loss = build_loss(name, impl=impl, block_size=3, normalize=False, **params)
    assert not torch.allclose(loss(x).total, build_loss(name, **params)(x).total)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_aggregation_matches_reference(name, aggregation):
    ref_fn, params = FAMILIES[name]
    if aggregation not in LOSSES[name].aggregations:
        with pytest.raises(ValueError, match="aggregation must be one of"):
            build_loss(name, aggregation=aggregation)
        return
    x = views(seed=3, n_items=9)
    assert_matches_reference(
        name, ref_fn, x, None, {**params, "aggregation": aggregation}, "tiled", 4
    )


@pytest.mark.parametrize("kernel", KCL_KERNELS)
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_kcl_kernels_match_reference(kernel, t):
    x = views(seed=11, n_items=8)
    assert_matches_reference("kcl", ref.kcl, x, None, {"kernel": kernel, "t": t}, "materialised")


def test_riesz_with_negative_exponent_matches_reference():
    x = views(seed=12, n_items=8)
    params = {"kernel": "riesz", "t": -1.0}
    assert_matches_reference("kcl", ref.kcl, x, None, params, "tiled", 3)


def test_flat_supervised_form_matches_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 0])
    for name in ("supcon", "tcl", "margin"):
        ref_fn, params = FAMILIES[name]
        assert_matches_reference(name, ref_fn, x, labels, params, "materialised")


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(FAMILIES)),
    n_views=st.integers(2, 3),
    n_items=st.integers(2, 9),
    dim=st.integers(1, 6),
    temperature=st.floats(0.05, 2.0),
    weight=st.floats(0.0, 4.0),
    block=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_random_shapes_and_parameters(
    name, n_views, n_items, dim, temperature, weight, block, seed
):
    ref_fn, params = FAMILIES[name]
    params = {**params, "weight": weight}
    if "temperature" in params:
        params["temperature"] = temperature
    x = views(seed, n_views, n_items, dim)
    for impl in IMPLS:
        assert_matches_reference(name, ref_fn, x, None, params, impl, block)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gradcheck(name, impl):
    _, params = FAMILIES[name]
    loss = build_loss(name, impl=impl, block_size=3, **params)
    x = views(seed=2, n_items=4, dim=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t).total, (x,))


# --- equivalences -------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_infonce_equals_cross_entropy_on_masked_similarities(temperature):
    x = views(seed=4, n_items=10)
    n = x.shape[1]
    z = F.normalize(x.reshape(2 * n, -1), dim=-1)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    expected = F.cross_entropy(logits, targets)
    torch.testing.assert_close(build_loss("infonce", temperature=temperature)(x).total, expected)


def test_supcon_without_labels_equals_infonce():
    x = views(seed=5, n_views=3)
    torch.testing.assert_close(build_loss("supcon")(x).total, build_loss("infonce")(x).total)


@pytest.mark.parametrize("log_mean_exp", [False, True])
def test_tcl_with_k1_0_k2_1_equals_supcon(log_mean_exp):
    x, labels = views(seed=6, n_items=10), labels_for(6, 10)
    tcl = build_loss("tcl", k1=0.0, k2=1.0, log_mean_exp=log_mean_exp)(x, labels)
    supcon = build_loss("supcon", log_mean_exp=log_mean_exp)(x, labels)
    for a, b in zip(tcl, supcon, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_total_is_pos_plus_weight_times_ent(name):
    _, params = FAMILIES[name]
    out = build_loss(name, **params)(views(seed=7))
    weight = params.get("weight", LOSSES[name]().weight)
    torch.testing.assert_close(out.total, out.pos + weight * out.ent)


@pytest.mark.parametrize("name", ["infonce", "tcl", "dhel"])
def test_log_mean_exp_shifts_value_but_not_gradient(name):
    x = views(seed=8).requires_grad_(True)
    by_sum = build_loss(name, log_mean_exp=False)(x)
    by_mean = build_loss(name, log_mean_exp=True)(x)
    (g_sum,) = torch.autograd.grad(by_sum.total, x)
    (g_mean,) = torch.autograd.grad(by_mean.total, x)
    torch.testing.assert_close(g_sum, g_mean)
    assert not torch.allclose(by_sum.total, by_mean.total)


def test_mean_per_term_is_invariant_to_duplicating_the_elements():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(2, 10, generator=g)
    nonzero = torch.tensor([10, 10])

    def terms(copies: int, aggregation: str):
        pos, ent = (
            TermSum(v.repeat(copies).sum(), torch.tensor(10 * copies), nz * copies)
            for v, nz in zip(values, nonzero, strict=True)
        )
        return torch.stack(aggregate(pos, ent, aggregation))

    torch.testing.assert_close(terms(1, "mean_per_term"), terms(3, "mean_per_term"))
    torch.testing.assert_close(terms(1, "mean_nonzero"), terms(3, "mean_nonzero"))
    torch.testing.assert_close(3 * terms(1, "sum"), terms(3, "sum"))


@pytest.mark.parametrize("name", ["margin", "kcl"])
def test_mean_per_term_balance_does_not_drift_with_batch_size(name):
    """Pair means estimate a batch-size-free expectation; sums grow with the batch."""
    small, large = views(seed=9, n_items=64, dim=8).float(), views(seed=9, n_items=512, dim=8)
    per_term = [build_loss(name, aggregation="mean_per_term")(x.float()) for x in (small, large)]
    summed = [build_loss(name, aggregation="sum")(x.float()) for x in (small, large)]
    assert per_term[1].ent == pytest.approx(float(per_term[0].ent), rel=0.1)
    assert summed[1].ent / summed[0].ent > 30  # ~ (512/64)² pairs


# --- numerics -----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["infonce", "supcon", "tcl", "dhel"])
def test_tiny_temperature_and_near_identical_embeddings_stay_exact(name, impl):
    base = torch.randn(1, 1, 16, dtype=torch.float64)
    x = base + 1e-3 * views(seed=10, n_items=8, dim=16)
    ref_fn, params = FAMILIES[name]
    params = {**params, "temperature": 0.005}
    out = build_loss(name, impl=impl, block_size=5, **params)(x.float().requires_grad_(True))
    assert all(torch.isfinite(t) for t in out)
    assert_matches_reference(name, ref_fn, x, None, params, impl, block_size=5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_inputs_accumulate_in_fp32(dtype, impl):
    x = views(seed=13, n_items=16, dim=32).float()
    expected = build_loss("infonce")(x).total
    x_half = x.to(dtype).requires_grad_(True)
    got = build_loss("infonce", impl=impl, block_size=8)(x_half).total
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    (grad,) = torch.autograd.grad(got, x_half)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("infonce", {"temperature": 0.0}, "temperature must be > 0"),
        ("tcl", {"temperature": -1.0}, "temperature must be > 0"),
        ("infonce", {"temperature": math.nan}, "temperature must be a finite number"),
        ("tcl", {"k1": -1.0}, "k1 must be >= 0"),
        ("tcl", {"k2": -0.5}, "k2 must be >= 0"),
        ("kcl", {"kernel": "cosine"}, "kernel must be one of"),
        ("kcl", {"t": 0.0}, "t must be > 0"),
        ("infonce", {"weight": -1.0}, "weight must be >= 0"),
        ("infonce", {"log_mean_exp": "max"}, "log_mean_exp must be true or false"),
        ("infonce", {"block_size": 0}, "block_size must be an integer >= 1"),
        ("margin", {"impl": "tiled", "block_size": -4}, "block_size must be an integer >= 1"),
        ("infonce", {"impl": "fast"}, "impl must be one of"),
        ("infonce", {"aggregation": "mean_nonzero"}, "aggregation must be one of"),
        ("infonce", {"k1": 1.0}, "has no parameter 'k1'"),
        ("simclr", {}, "loss name must be one of"),
    ],
)
def test_bad_hyper_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, **params)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_batches(impl):
    loss = build_loss("supcon", impl=impl)
    x = views(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(x.clone().index_fill_(2, torch.tensor([1]), math.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(x.clone().index_fill_(2, torch.tensor([0]), math.inf))
    with pytest.raises(ValueError, match="labels: got 5 labels for N=6"):
        loss(x, torch.arange(5))
    with pytest.raises(ValueError, match=r"shape \(V, N, d\) or \(M, d\)"):
        loss(x[0, 0])
    with pytest.raises(ValueError, match="V >= 2 views"):
        loss(x[:1])
    with pytest.raises(ValueError, match="need labels"):
        loss(x[0])
    with pytest.raises(ValueError, match="integer tensor"):
        loss(x, torch.zeros(6))


def test_anchor_without_positive_is_an_error_not_a_zero_loss():
    flat = views(seed=1)[0]
    with pytest.raises(ValueError, match="2 of 6 anchors have no positive"):
        build_loss("supcon")(flat, torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match="no positive pair"):
        build_loss("margin")(flat, torch.arange(6))


def test_view_losses_need_views_and_infonce_refuses_labels():
    flat, labels = views(seed=1)[0], torch.tensor([0, 0, 1, 1, 2, 2])
    for name in ("dhel", "kcl"):
        with pytest.raises(ValueError, match="needs view structure"):
            build_loss(name)(flat, labels)
    with pytest.raises(ValueError, match="takes no labels"):
        build_loss("infonce")(views(seed=1), torch.arange(6))
