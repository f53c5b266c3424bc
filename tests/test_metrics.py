import math

import numpy as np
import pytest
import torch

from raycl import metrics
from raycl.metrics import (
    alignment,
    effective_rank,
    knn_top1,
    linear_probe,
    rank,
    recall_at_k,
    tolerance,
    uniformity,
    wasserstein_uniformity,
)


def _angles(*degrees: float) -> torch.Tensor:
    """Unit vectors in R^2 at the given angles (cosine similarity = cos of angle difference)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def _labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    """``n`` i.i.d. uniform points on the unit sphere in R^d (unnormalised Gaussians)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- kNN


def test_knn_obvious_two_class_toy():
    train = _angles(0, 5, -5, 90, 85, 95) * 3.0  # scale must not matter
    train_y = _labels(0, 0, 0, 1, 1, 1)
    test = _angles(2, 88, -10, 100)
    assert knn_top1(train, train_y, test, _labels(0, 1, 0, 1), k=3) == 100.0
    assert knn_top1(train, train_y, test, _labels(0, 1, 1, 0), k=3) == 50.0


@pytest.mark.parametrize(("temperature", "expected"), [(0.1, 100.0), (100.0, 0.0)])
def test_knn_weighting_lets_a_close_minority_neighbour_win(temperature, expected):
    # Query at 0°: one class-0 neighbour at cos 0.99, two class-1 neighbours at cos 0.5.
    # T=0.1: e^9.9 ≈ 19930 vs 2·e^5 ≈ 297 → class 0.  T=100: ≈1.0099 vs ≈2.0100 → class 1.
    # k=200 is clipped to the bank size 3.
    train = _angles(math.degrees(math.acos(0.99)), 60, -60)
    score = knn_top1(train, _labels(0, 1, 1), _angles(0), _labels(0), temperature=temperature)
    assert score == expected


def test_knn_arbitrary_label_values():
    train = _angles(0, 90)
    assert knn_top1(train, _labels(-7, 42), _angles(80, 10), _labels(42, -7), k=1) == 100.0


def _slow_knn_predict(bank, bank_y, query, k, temperature):
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    query = query / np.linalg.norm(query)
    sims = bank @ query
    scores: dict[int, float] = {}
    for j in np.argsort(-sims)[:k]:
        scores[int(bank_y[j])] = scores.get(int(bank_y[j]), 0.0) + math.exp(sims[j] / temperature)
    return max(scores, key=scores.get)


def test_knn_matches_slow_loop_on_random_data():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    train_y = torch.randint(0, 5, (300,), generator=gen)
    test = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    slow = [
        _slow_knn_predict(train.numpy(), train_y.numpy(), q, k=20, temperature=0.07)
        for q in test.numpy()
    ]
    for i, predicted in enumerate(slow):
        one = knn_top1(train, train_y, test[i : i + 1], _labels(predicted), k=20, temperature=0.07)
        assert one == 100.0, f"query {i}"
    test_y = torch.randint(0, 5, (40,), generator=gen)
    expected = 100.0 * float(np.mean(np.array(slow) == test_y.numpy()))
    assert 0.0 < expected < 100.0
    batched = knn_top1(train, train_y, test, test_y, k=20, temperature=0.07, batch_size=7)
    assert batched == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_knn_accepts_float_dtypes(dtype):
    train = _angles(0, 5, 90, 95).to(dtype)
    assert knn_top1(train, _labels(0, 0, 1, 1), _angles(3, 92).to(dtype), _labels(0, 1)) == 100.0


# ---------------------------------------------------------------------------- linear probe


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[6.0, 0, 0, 0, 0], [0, 6.0, 0, 0, 0], [0, 0, 6.0, 0, 0]])
    y = torch.arange(3).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), 5, generator=gen), y


def test_linear_probe_separable_blobs():
    train, train_y = _blobs(50, seed=0)
    test, test_y = _blobs(20, seed=1)
    assert linear_probe(train, train_y, test, test_y) == pytest.approx(100.0)


def test_linear_probe_wrong_test_labels_score_low():
    train, train_y = _blobs(50, seed=0)
    test, test_y = _blobs(20, seed=1)
    assert linear_probe(train, train_y, test, (test_y + 1) % 3) == pytest.approx(0.0)


# -------------------------------------------------------------------------------- recall@K


def test_recall_at_k_hand_built_six_points():
    # Angles and nearest OTHER points (angular distance):
    #   p0   0° y0: p1(y0) 20                       → hit@1
    #   p1  20° y0: p0(y0) 20                       → hit@1
    #   p2  45° y1: p1(y0) 25, p0(y0) 45, p3(y1) 55 → hit@3
    #   p3 100° y1: p2(y1) 55                       → hit@1
    #   p4 170° y1: p5(y0) 35, p3(y1) 70            → hit@2
    #   p5 205° y0: p4(y1) 35, p3(y1) 105, p0(y0)   → hit@3
    x = _angles(0, 20, 45, 100, 170, 205)
    y = _labels(0, 0, 1, 1, 1, 0)
    result = recall_at_k(x, y, ks=(1, 2, 4), batch_size=4)
    assert list(result) == [1, 2, 4]
    assert result[1] == pytest.approx(100 * 3 / 6)
    assert result[2] == pytest.approx(100 * 4 / 6)
    assert result[4] == pytest.approx(100.0)


def test_recall_at_k_excludes_self_and_clips_k():
    # Every point is alone in its class, so only a self-match could give a hit.
    result = recall_at_k(_angles(0, 10, 20), _labels(0, 1, 2), ks=(1, 50))
    assert result == {1: 0.0, 50: 0.0}


# ---------------------------------------------------------------- alignment / uniformity


def test_alignment_identical_pairs_is_zero():
    x = _sphere(10, 6, seed=0)
    assert alignment(x, 2.5 * x) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("alpha", "expected"), [(2.0, 4.0), (1.0, 2.0)])
def test_alignment_antipodal_pairs(alpha, expected):
    x = _sphere(10, 6, seed=0)
    assert alignment(x, -0.1 * x, alpha=alpha) == pytest.approx(expected, rel=1e-5)


def test_alignment_orthogonal_pairs():
    assert alignment(_angles(0, 90), _angles(90, 180)) == pytest.approx(2.0, rel=1e-6)


def test_uniformity_random_high_dimensional_is_about_minus_four():
    assert uniformity(_sphere(1000, 512, seed=0)) == pytest.approx(-4.0, abs=0.05)


def test_uniformity_hand_cases():
    # Two antipodal points: ||x1 - x2||² = 4 → log exp(-t·4) = -4t.
    assert uniformity(_angles(0, 180), t=2.0) == pytest.approx(-8.0)
    assert uniformity(_angles(0, 180), t=0.5) == pytest.approx(-2.0)
    # Three points: one identical pair (exp 0 = 1) and two antipodal pairs.
    expected = math.log((1 + 2 * math.exp(-8.0)) / 3)
    assert uniformity(_angles(0, 0, 180)) == pytest.approx(expected)


# ------------------------------------------------------------------------------- tolerance


def test_tolerance_hand_case_is_pair_weighted():
    # Class 0: (1,0), (1,0), (0,1) → pair cosines 1, 0, 0.  Class 1: (0,1), (0,1) → cosine 1.
    # Class 2 is a singleton and contributes no pair.  Mean over 4 pairs = (1+0+0+1)/4 = 0.5
    # (a per-class average would give (1/3 + 1)/2 ≈ 0.667).
    x = _angles(0, 0, 90, 90, 90, 180) * torch.tensor([[1.0], [2.0], [3.0], [4.0], [0.5], [1.0]])
    assert tolerance(x, _labels(0, 0, 0, 1, 1, 2)) == pytest.approx(0.5)


def test_tolerance_opposite_pair():
    assert tolerance(_angles(0, 180, 30), _labels(3, 3, 4)) == pytest.approx(-1.0)


# -------------------------------------------------------------------- Wasserstein uniformity


@pytest.mark.parametrize("d", [3, 16, 128])
def test_wasserstein_uniformity_small_for_uniform_points(d):
    assert wasserstein_uniformity(_sphere(1000, d, seed=d)) < 0.02


def test_wasserstein_uniformity_large_for_collapsed_embedding():
    x = torch.zeros(500, 32)
    x[:, 0] = 1.0
    x += 0.05 * _sphere(500, 32, seed=1)
    assert wasserstein_uniformity(x) > 0.3


def test_wasserstein_uniformity_uses_input_dimension():
    # 16-D uniform points measured against the 128-D law would be off by ≈ 0.11.
    x16 = _sphere(1000, 16, seed=2)
    x128 = torch.cat([x16, torch.zeros(1000, 112)], dim=1)  # same cosines, claimed d = 128
    assert wasserstein_uniformity(x16) < 0.02
    assert wasserstein_uniformity(x128) > 0.08


def test_wasserstein_uniformity_is_seeded():
    x = _sphere(400, 8, seed=3)
    kwargs = {"num_reference": 2000, "max_pairs": 5000}
    assert wasserstein_uniformity(x, seed=7, **kwargs) == wasserstein_uniformity(
        x, seed=7, **kwargs
    )
    assert wasserstein_uniformity(x, seed=7, **kwargs) != wasserstein_uniformity(
        x, seed=8, **kwargs
    )


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_upper_pairs_matches_triu_indices(n):
    i, j = metrics._upper_pairs(np.arange(n * (n - 1) // 2), n)
    expected_i, expected_j = np.triu_indices(n, 1)
    np.testing.assert_array_equal(i, expected_i)
    np.testing.assert_array_equal(j, expected_j)


# ------------------------------------------------------------------------------------ rank


def test_rank_of_rank_three_embedding():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=gen) @ torch.randn(3, 16, generator=gen)
    assert rank(x) == 3
    assert rank(torch.randn(100, 16, generator=gen)) == 16


def test_effective_rank_orthonormal_rows():
    assert effective_rank(torch.eye(16)) == pytest.approx(16.0, abs=1e-3)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    assert effective_rank(q[:8]) == pytest.approx(8.0, abs=1e-3)


def test_effective_rank_rank_one_and_hand_case():
    gen = torch.Generator().manual_seed(0)
    rank_one = torch.randn(50, 1, generator=gen) @ torch.randn(1, 16, generator=gen)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-3)
    # σ = (3, 1) → p = (3/4, 1/4) → exp(H) = 4 / 3^(3/4).
    diag = torch.diag(torch.tensor([3.0, 1.0]))
    assert effective_rank(diag) == pytest.approx(4 / 3**0.75, rel=1e-5)


# ----------------------------------------------------------------------------- bad input

_X = _sphere(8, 4, seed=0)
_Y = _labels(0, 0, 1, 1, 2, 2, 3, 3)
_NAN = _X.clone().index_fill_(0, torch.tensor([2]), float("nan"))
_INF = _X.clone().index_fill_(0, torch.tensor([2]), float("inf"))

BAD_INPUTS = {
    "knn 1-D train": (lambda: knn_top1(_X[0], _Y, _X, _Y), "train_embeddings"),
    "knn label length": (lambda: knn_top1(_X, _Y[:5], _X, _Y), "train_labels"),
    "knn test label length": (lambda: knn_top1(_X, _Y, _X, _Y[:3]), "test_labels"),
    "knn float labels": (lambda: knn_top1(_X, _Y.float(), _X, _Y), "train_labels"),
    "knn NaN test": (lambda: knn_top1(_X, _Y, _NAN, _Y), "test_embeddings"),
    "knn dim mismatch": (lambda: knn_top1(_X, _Y, _X[:, :3], _Y), "test_embeddings"),
    "knn k=0": (lambda: knn_top1(_X, _Y, _X, _Y, k=0), "k"),
    "knn k float": (lambda: knn_top1(_X, _Y, _X, _Y, k=2.5), "k"),
    "knn temperature=0": (lambda: knn_top1(_X, _Y, _X, _Y, temperature=0.0), "temperature"),
    "knn temperature<0": (lambda: knn_top1(_X, _Y, _X, _Y, temperature=-1.0), "temperature"),
    "knn batch_size=0": (lambda: knn_top1(_X, _Y, _X, _Y, batch_size=0), "batch_size"),
    "knn empty test": (lambda: knn_top1(_X, _Y, _X[:0], _Y[:0]), "test_embeddings"),
    "knn int embeddings": (lambda: knn_top1(_Y[:, None], _Y, _X, _Y), "train_embeddings"),
    "knn numpy": (lambda: knn_top1(_X.numpy(), _Y, _X, _Y), "train_embeddings"),
    "probe inf": (lambda: linear_probe(_INF, _Y, _X, _Y), "train_features"),
    "probe label length": (lambda: linear_probe(_X, _Y, _X, _Y[:2]), "test_labels"),
    "probe dim mismatch": (lambda: linear_probe(_X, _Y, _X[:, :2], _Y), "test_features"),
    "probe one class": (lambda: linear_probe(_X, _Y * 0, _X, _Y), "train_labels"),
    "probe C=0": (lambda: linear_probe(_X, _Y, _X, _Y, C=0.0), "C"),
    "probe max_iter=0": (lambda: linear_probe(_X, _Y, _X, _Y, max_iter=0), "max_iter"),
    "recall one item": (lambda: recall_at_k(_X[:1], _Y[:1]), "embeddings"),
    "recall 3-D": (lambda: recall_at_k(_X[None], _Y), "embeddings"),
    "recall label length": (lambda: recall_at_k(_X, _Y[:7]), "labels"),
    "recall 2-D labels": (lambda: recall_at_k(_X, _Y[:, None]), "labels"),
    "recall ks empty": (lambda: recall_at_k(_X, _Y, ks=()), "ks"),
    "recall ks zero": (lambda: recall_at_k(_X, _Y, ks=(1, 0)), "ks"),
    "recall ks negative": (lambda: recall_at_k(_X, _Y, ks=(-2,)), "ks"),
    "recall ks float": (lambda: recall_at_k(_X, _Y, ks=(1.5,)), "ks"),
    "recall NaN": (lambda: recall_at_k(_NAN, _Y), "embeddings"),
    "alignment shape": (lambda: alignment(_X, _X[:5]), "y"),
    "alignment NaN": (lambda: alignment(_NAN, _X), "x"),
    "alignment alpha=0": (lambda: alignment(_X, _X, alpha=0.0), "alpha"),
    "uniformity one point": (lambda: uniformity(_X[:1]), "x"),
    "uniformity 1-D": (lambda: uniformity(_X[0]), "x"),
    "uniformity inf": (lambda: uniformity(_INF), "x"),
    "uniformity t=0": (lambda: uniformity(_X, t=0.0), "t"),
    "tolerance singletons": (lambda: tolerance(_X, torch.arange(8)), "labels"),
    "tolerance label length": (lambda: tolerance(_X, _Y[:4]), "labels"),
    "tolerance one point": (lambda: tolerance(_X[:1], _Y[:1]), "embeddings"),
    "wasserstein d=1": (lambda: wasserstein_uniformity(_X[:, :1]), "embeddings"),
    "wasserstein one point": (lambda: wasserstein_uniformity(_X[:1]), "embeddings"),
    "wasserstein NaN": (lambda: wasserstein_uniformity(_NAN), "embeddings"),
    "wasserstein num_reference": (
        lambda: wasserstein_uniformity(_X, num_reference=0),
        "num_reference",
    ),
    "wasserstein max_pairs": (lambda: wasserstein_uniformity(_X, max_pairs=0), "max_pairs"),
    "rank one row": (lambda: rank(_X[:1]), "embeddings"),
    "rank tol<0": (lambda: rank(_X, tol=-1.0), "tol"),
    "rank inf": (lambda: rank(_INF), "embeddings"),
    "effective_rank eps=0": (lambda: effective_rank(_X, eps=0.0), "eps"),
    "effective_rank zeros": (lambda: effective_rank(torch.zeros(4, 3)), "embeddings"),
    "effective_rank 1-D": (lambda: effective_rank(_X[0]), "embeddings"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error(case):
    call, argument = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=rf"^{argument} "):
        call()


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
def test_cuda_inputs_match_cpu():
    x = _sphere(200, 16, seed=0)
    y = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(1))
    xc, yc = x.cuda(), y.cuda()
    assert knn_top1(xc, yc, xc[:50], y[:50]) == knn_top1(x, y, x[:50], y[:50])
    assert recall_at_k(xc, yc) == recall_at_k(x, y)
    assert alignment(xc, xc.flip(0)) == pytest.approx(alignment(x, x.flip(0)), rel=1e-5)
    assert uniformity(xc) == pytest.approx(uniformity(x), rel=1e-5)
    assert tolerance(xc, yc) == pytest.approx(tolerance(x, y), rel=1e-9)
    assert wasserstein_uniformity(xc) == pytest.approx(wasserstein_uniformity(x), rel=1e-9)
    assert rank(xc) == rank(x)
    assert effective_rank(xc) == pytest.approx(effective_rank(x), rel=1e-9)
