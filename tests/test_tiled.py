"""The tiled engine equals the materialised one (value and gradient) on every path it takes:
symmetric and rows-vs-columns tiles, fixed-shift and online log-sum-exp, closed-form affine
sums, sparse positive pairs, explicit and autograd derivatives, half-precision inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from raycl.losses import LOSSES, build_loss, flatten_batch
from raycl.losses.engine import reduce_rows_tiled
from raycl.losses.reductions import Affine, RowReduction, reduce_rows_materialised
from raycl.losses.structure import COLUMN_SETS, PairStructure, column_counts, column_mask

# Non-default hyper-parameters so that no term vanishes (e.g. k1 > 0, margins active).
PARAMS = {
    "infonce": {"temperature": 0.2},
    "supcon": {"temperature": 0.2},
    "tcl": {"temperature": 0.2, "k1": 50.0, "k2": 1.5},
    "dhel": {"temperature": 0.3},
    "kcl": {"t": 2.0},
    "margin": {"pos_margin": 0.7, "neg_margin": 0.1},
    "clip": {},
    "siglip": {},
}


def make_views(seed: int, n_views: int, n_items: int, dim: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_views, n_items, dim, generator=g, dtype=torch.float64).to(dtype)


def run(name, x, labels, impl, block_size=None, **params):
    leaf = x.clone().requires_grad_(True)
    loss = build_loss(name, impl=impl, block_size=block_size, **{**PARAMS[name], **params})
    out = loss(leaf, labels)
    (grad,) = torch.autograd.grad(out.total, leaf)
    return torch.stack(list(out)), grad


def assert_same(name, x, labels, block_size, rtol=1e-10, atol=1e-12, **params):
    value, grad = run(name, x, labels, "materialised", **params)
    tiled_value, tiled_grad = run(name, x, labels, "tiled", block_size, **params)
    torch.testing.assert_close(tiled_value, value, rtol=rtol, atol=atol)
    torch.testing.assert_close(tiled_grad, grad, rtol=rtol, atol=atol)


def cases():
    """Every family, aggregation and normalisation (the paired families take their head's
    embeddings, never normalised by the loss)."""
    for name, cls in sorted(LOSSES.items()):
        for aggregation in cls.aggregations:
            for normalize in (False,) if cls.paired else (True, False):
                yield name, aggregation, normalize


@pytest.mark.parametrize(("name", "aggregation", "normalize"), list(cases()))
@pytest.mark.parametrize("block_size", [1, 7, 16, 1000])
def test_tiled_equals_materialised(name, aggregation, block_size, normalize):
    """M = 2·17 = 34 rows: blocks that divide M, that do not, one block, one row per block."""
    x = make_views(seed=block_size, n_views=2, n_items=17, dim=6)
    if not normalize:
        x = x / x.norm(dim=-1, keepdim=True) * 0.8  # off the unit sphere: online shift path
    labels = torch.arange(17) % 4 if LOSSES[name].accepts_labels else None
    for batch_labels in [None] if labels is None else [None, labels]:
        assert_same(name, x, batch_labels, block_size, aggregation=aggregation, normalize=normalize)


@pytest.mark.parametrize("name", ["supcon", "tcl", "margin"])
def test_dense_supervised_positives_take_the_tile_path(name):
    """Two classes over 160 rows: ~80 positives per row, too many for the pair list."""
    x, labels = make_views(seed=1, n_views=2, n_items=80, dim=8), torch.arange(80) % 2
    assert_same(name, x, labels, block_size=48)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_three_views_odd_sizes(name):
    x = make_views(seed=3, n_views=3, n_items=13, dim=5)
    assert_same(name, x, None, block_size=10)


@pytest.mark.parametrize("kernel", ["log", "imq", "riesz", "gaussian_riesz"])
def test_kcl_kernels_on_tiles(kernel):
    x = make_views(seed=4, n_views=2, n_items=15, dim=4)
    assert_same("kcl", x, None, block_size=8, kernel=kernel, t=1.0)


@pytest.mark.parametrize("temperature", [0.005, 0.02, 0.05])
@pytest.mark.parametrize("name", ["infonce", "tcl", "dhel"])
def test_extreme_logits(name, temperature):
    """Near-identical embeddings at tiny τ: logits up to 1/τ = 200 stay exact and finite."""
    base = torch.randn(1, 1, 16, dtype=torch.float64)
    x = base + 1e-3 * make_views(seed=5, n_views=2, n_items=20, dim=16)
    assert_same(name, x, None, block_size=9, temperature=temperature)
    value, grad = run(name, x.float(), None, "tiled", 9, temperature=temperature)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("norm", [0.8, 2.0, 30.0])
@pytest.mark.parametrize("name", ["infonce", "clip"])
def test_unnormalised_logits_either_shift(name, norm):
    """normalize=False bounds the logits by the largest norms: a fixed shift while their range
    allows one (norms 0.8, 2), the running max beyond it (30: logits up to ±900·(1/τ))."""
    from raycl.losses.tiled import TilePlan

    x = make_views(seed=3, n_views=2, n_items=21, dim=8)
    x = x / x.norm(dim=-1, keepdim=True) * norm
    assert_same(name, x, None, block_size=8, normalize=False)
    loss = build_loss(name, **PARAMS[name], normalize=False)
    reduction = loss.reductions()[1]
    plan = TilePlan(*flatten_batch(x)[1:] * 2, [reduction], 8, True, False)
    shift = plan.fixed_shift(reduction, plan.similarity_bound(*[x.reshape(-1, 8)] * 2))
    assert (shift is None) == (norm == 30.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_half_precision_inputs(name, dtype):
    x = make_views(seed=6, n_views=2, n_items=24, dim=16, dtype=dtype)
    value, grad = run(name, x, None, "materialised")
    tiled_value, tiled_grad = run(name, x, None, "tiled", 10)
    assert tiled_value.dtype == torch.float32 and tiled_grad.dtype == dtype
    torch.testing.assert_close(tiled_value, value, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(tiled_grad.float(), grad.float(), rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_local_rows_against_global_columns(name):
    """Data-parallel shape: a slice of anchors against the whole batch; gradients reach both."""
    x = make_views(seed=7, n_views=2, n_items=12, dim=5)
    z, structure = flatten_batch(x, None)
    local = slice(6, 18)
    rows = PairStructure(structure.ids[local], structure.index[local], structure.views[local])
    results = []
    for impl in ("materialised", "tiled"):
        rows_z = z[local].clone().requires_grad_(True)
        cols_z = z.clone().requires_grad_(True)
        loss = build_loss(name, impl=impl, block_size=5, **PARAMS[name])
        out = loss.compute(rows_z, rows, cols_z, structure)
        grads = torch.autograd.grad(out.total, (rows_z, cols_z))
        results.append((torch.stack(list(out)), *grads))
    for tiled, materialised in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(tiled, materialised, rtol=1e-10, atol=1e-12)
    assert results[1][2].abs().sum() > 0  # columns receive gradient


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(LOSSES)),
    n_items=st.integers(2, 30),
    dim=st.integers(1, 8),
    block=st.integers(1, 40),
    n_classes=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_random_batches(name, n_items, dim, block, n_classes, seed):
    x = make_views(seed, 2, n_items, dim)
    labels = torch.arange(n_items) % n_classes if LOSSES[name].accepts_labels else None
    if name == "margin" and n_classes == 1:
        labels = None  # one class has no negative pair
    assert_same(name, x, labels, block)


@pytest.mark.parametrize("columns", COLUMN_SETS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("classes", [3, 1])
def test_each_method_on_each_column_set(columns, symmetric, normalize, classes):
    """The engine's three methods (pair list, affine closed form, tiles) on every column set,
    a batch against itself and local rows against all columns, against the full matrix (one
    class: affine positive sums in closed form, few keys; three: from the pair list)."""
    x = make_views(seed=8, n_views=3, n_items=11, dim=5)
    if classes > 1:  # (with one class the closed form's total − S cancels to ~1e-16, ×1e12)
        x[0, 3] *= 1e-14  # a norm below F.normalize's eps: the normalisation's other branch
    z, cols = flatten_batch(x, torch.arange(11) % classes)
    reductions = [
        RowReduction(columns, "sum", Affine(1.7, -0.3)),
        RowReduction(columns, "logsumexp", Affine(2.5)),
        RowReduction(columns, "sum", torch.sin),
        RowReduction(columns, "logsumexp", torch.cos),
    ]
    local = slice(0, 33) if symmetric else slice(4, 20)
    rows = PairStructure(cols.ids[local], cols.index[local], cols.views[local])
    weights = torch.linspace(0.5, 1.5, len(rows), dtype=torch.float64)
    results = []
    for tiled in (False, True):
        cols_z = z.clone().requires_grad_(True)
        rows_z = cols_z if symmetric else z[local].clone().requires_grad_(True)
        rows_in = rows if not symmetric else cols
        if tiled:
            stats = reduce_rows_tiled(rows_z, cols_z, rows_in, cols, reductions, 4, normalize)
        else:
            unit = [F.normalize(t, dim=1) if normalize else t for t in (rows_z, cols_z)]
            stats = reduce_rows_materialised(*unit, rows_in, cols, reductions)
        values = torch.stack([s.value.masked_fill(s.value == -math.inf, 0) for s in stats])
        inputs = (cols_z,) if symmetric else (rows_z, cols_z)
        grads = torch.autograd.grad((values * weights).sum(), inputs)
        results.append((values, *grads))
    for tiled, materialised in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(tiled, materialised, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("columns", COLUMN_SETS)
def test_column_counts_are_the_masks_sizes(columns):
    """O(M log M) counts of every column set equal its M×M mask's row sums, for the batch
    against itself and for local rows against the whole batch."""
    _, cols = flatten_batch(make_views(seed=9, n_views=3, n_items=10, dim=2), torch.arange(10) % 4)
    for local in (slice(0, 30), slice(7, 19)):
        rows = PairStructure(cols.ids[local], cols.index[local], cols.views[local])
        expected = column_mask(rows, cols, columns).sum(1)
        assert torch.equal(column_counts(rows, cols, columns), expected)
