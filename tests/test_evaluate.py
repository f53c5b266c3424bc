"""raycl.evaluate on the embedded digits: embedding, metrics, and a real 2-process gloo group."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from raycl import metrics
from raycl.data import DigitsDataset, MultiViewTransform, digits_transform
from raycl.evaluate import (
    EvaluationReport,
    _subsample,
    alignment_from_batch,
    embed,
    evaluate_representation,
    report_from_embeddings,
    shard_bounds,
)
from raycl.models import build_model
from raycl.schema import ModelConfig
from tests.conftest import spawn_world

WORLD = 2
N_DIST = 201  # not divisible by WORLD: shards of 101 and 100 items
EVAL_KWARGS = {"knn_k": 20, "recall_ks": (1, 4), "max_pairwise_points": 64, "batch_size": 32}


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="small_cnn", width=8, proj_dim=16), in_channels=1)


def digits(split: str, n: int, transform=None) -> Subset:
    return Subset(DigitsDataset(split, transform), range(n))


class Pixels(nn.Module):
    """Features = embeddings = the flattened image."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1), x.flatten(1)


# ---------------------------------------------------------------------------------- embed


def test_embed_shapes_labels_and_order():
    data = digits("train", 200)
    features, embeddings, labels = embed(small_model(), data, batch_size=64)
    assert features.shape == (200, 32) and features.dtype == torch.float32
    assert embeddings.shape == (200, 16) and embeddings.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert labels.tolist() == [data[i][1] for i in range(200)]
    assert not features.requires_grad and not embeddings.requires_grad
    # Exact order: pixel features are the images themselves.
    pixels, _, _ = embed(Pixels(), data, batch_size=7)
    torch.testing.assert_close(pixels, torch.stack([data[i][0].flatten() for i in range(200)]))


def test_embed_is_deterministic_and_batch_independent():
    model, data = small_model(), digits("test", 100)
    first = embed(model, data, batch_size=100)
    again = embed(model, data, batch_size=100)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    # Eval mode: BatchNorm uses running statistics, so batching does not matter.
    for a, b in zip(first, embed(model, data, batch_size=9), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_embed_restores_every_module_mode():
    model = small_model()
    model.train()
    model.head.eval()  # mixed modes come back as they were
    embed(model, digits("test", 10))
    assert model.training and model.encoder.training
    assert not model.head.training and not any(m.training for m in model.head.modules())
    model.eval()
    embed(model, digits("test", 10))
    assert not any(m.training for m in model.modules())


def test_embed_leaves_batchnorm_statistics_alone():
    model = small_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    embed(model, digits("test", 50))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_embed_multiview_items_and_bf16_flag_on_cpu():
    data = digits("test", 12, MultiViewTransform(digits_transform(), 3))
    features, embeddings, labels = embed(small_model(), data, batch_size=5, bf16=True)
    assert features.shape == (12, 3, 32) and embeddings.shape == (12, 3, 16)
    assert embeddings.dtype == torch.float32 and labels.shape == (12,)


@pytest.mark.cuda
def test_embed_cuda_bf16_autocast():
    model, data = small_model(), digits("test", 64)
    full = embed(model, data)
    half = embed(model.cuda(), data, device="cuda", bf16=True)
    assert half[0].device.type == "cpu" and half[0].dtype == torch.float32
    torch.testing.assert_close(half[0], full[0], rtol=0.05, atol=0.05)
    assert torch.equal(half[2], full[2])


def test_embed_errors():
    with pytest.raises(ValueError, match="empty"):
        embed(small_model(), digits("test", 0))
    with pytest.raises(ValueError, match="batch_size"):
        embed(small_model(), digits("test", 4), batch_size=0)


@pytest.mark.parametrize(("n", "w"), [(201, 2), (10, 3), (2, 4), (12, 4)])
def test_shard_bounds_tile_the_range(n, w):
    bounds = [shard_bounds(n, w, r) for r in range(w)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


# ------------------------------------------------------------------------------- metrics


def test_pixel_knn_on_digits_is_well_above_chance():
    out = evaluate_representation(
        Pixels(), DigitsDataset("train"), DigitsDataset("test"), knn_k=20, recall_ks=(1,)
    )
    assert out["knn_top1"] > 80.0
    assert out["recall@1"] > 80.0


def test_evaluate_representation_keys_and_values():
    views = digits("test", 40, MultiViewTransform(digits_transform(), 2))
    out = evaluate_representation(
        small_model(),
        digits("train", 200),
        digits("test", 100),
        linear_probe=True,
        views_dataset=views,
        **EVAL_KWARGS,
    )
    assert set(out) == {
        "knn_top1", "linear_probe", "alignment", "uniformity", "tolerance", "effective_rank",
        "recall@1", "recall@4",
    }  # fmt: skip
    assert all(type(v) is float for v in out.values())
    for key in ("knn_top1", "linear_probe", "recall@1", "recall@4"):
        assert 0.0 <= out[key] <= 100.0
    assert out["recall@1"] <= out["recall@4"]
    assert 0.0 <= out["alignment"] <= 4.0
    assert -4.0 <= out["uniformity"] <= 0.0
    assert -1.0 <= out["tolerance"] <= 1.0
    assert 1.0 <= out["effective_rank"] <= 16.0


def test_evaluate_representation_defaults_skip_optional_metrics():
    out = evaluate_representation(small_model(), digits("train", 60), digits("test", 30))
    assert set(out) == {"knn_top1", "uniformity", "tolerance", "effective_rank"}
    # Without kNN (class-disjoint retrieval sets) no train split is needed.
    out = evaluate_representation(small_model(), None, digits("test", 30), knn_k=None,
                                  recall_ks=[2])  # fmt: skip
    assert set(out) == {"uniformity", "tolerance", "effective_rank", "recall@2"}
    with pytest.raises(ValueError, match="train_eval"):
        evaluate_representation(small_model(), None, digits("test", 30))


def test_report_from_embeddings_matches_metrics_and_subsamples():
    g = torch.Generator().manual_seed(0)
    feats, emb = torch.randn(300, 8, generator=g), torch.randn(300, 5, generator=g)
    labels = torch.randint(0, 4, (300,), generator=g)
    train_f, train_y = torch.randn(50, 8, generator=g), torch.randint(0, 4, (50,), generator=g)
    z = torch.nn.functional.normalize(emb, dim=1)

    full = report_from_embeddings(feats, emb, labels, train_f, train_y, knn_k=7,
                                  recall_ks=(1, 3), max_pairwise_points=300)  # fmt: skip
    assert full.uniformity == pytest.approx(metrics.uniformity(emb))
    assert full.tolerance == pytest.approx(metrics.tolerance(emb, labels))
    assert full.effective_rank == pytest.approx(metrics.effective_rank(z))
    assert full.knn_top1 == metrics.knn_top1(train_f, train_y, feats, labels, k=7)
    assert full.recall == metrics.recall_at_k(feats, labels, ks=(1, 3))

    sub = report_from_embeddings(feats, emb, labels, knn_k=None, max_pairwise_points=64, seed=3)
    keep = _subsample(300, 64, 3)
    assert keep.shape == (64,) and torch.equal(keep, keep.sort().values)
    assert sub.uniformity == pytest.approx(metrics.uniformity(emb[keep]))
    assert sub.tolerance == pytest.approx(metrics.tolerance(emb[keep], labels[keep]))
    assert sub.effective_rank == full.effective_rank  # not subsampled
    again = report_from_embeddings(feats, emb, labels, knn_k=None, max_pairwise_points=64, seed=3)
    assert again == sub


def test_report_skips_tolerance_without_repeated_classes():
    report = report_from_embeddings(torch.randn(5, 3), torch.randn(5, 3), torch.arange(5),
                                    knn_k=None)  # fmt: skip
    assert report.tolerance is None and "tolerance" not in report.to_dict()


def test_evaluation_report_to_dict():
    report = EvaluationReport(uniformity=-3.0, effective_rank=7.0, knn_top1=50.0,
                              recall={4: 90.0, 1: 60.0})  # fmt: skip
    assert report.to_dict() == {
        "knn_top1": 50.0, "uniformity": -3.0, "effective_rank": 7.0,
        "recall@1": 60.0, "recall@4": 90.0,
    }  # fmt: skip


def test_alignment_from_batch():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 10, 4, generator=g, requires_grad=True)
    assert alignment_from_batch(z) == pytest.approx(metrics.alignment(z[0].detach(), z[1].detach()))
    same = (
        torch.randn(1, 10, 4, generator=g).expand(2, 10, 4)
        * torch.tensor([1.0, 3.0])[:, None, None]
    )
    assert alignment_from_batch(same) == pytest.approx(0.0, abs=1e-6)
    for bad in (torch.randn(10, 4), torch.randn(1, 10, 4)):
        with pytest.raises(ValueError, match="embeddings_vnd"):
            alignment_from_batch(bad)


# -------------------------------------------------------------- 2-process gloo group (spawn)


def _worker(r: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        model, data = small_model().train(), digits("test", N_DIST)
        plain = embed(model, data, batch_size=32)
        training_after = model.training
        ddp = DistributedDataParallel(model)
        wrapped = embed(ddp, data, batch_size=16)
        whole = embed(model, data, batch_size=32, shard=False)
        tiny = embed(model, digits("test", 1), batch_size=32)  # rank 1's shard is empty
        report = evaluate_representation(ddp, digits("train", 101), data, **EVAL_KWARGS)
        results = {"plain": plain, "ddp": wrapped, "whole": whole, "tiny": tiny,
                   "training_after": training_after, "report": report}  # fmt: skip
        torch.save(results, Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn_world(_worker, tmp_path_factory.mktemp("eval_dist"), WORLD)


def _assert_same(got: tuple, want: tuple) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_distributed_embed_matches_single_process_on_every_rank(ranks):
    want = embed(small_model(), digits("test", N_DIST), batch_size=32)
    assert want[0].shape[0] == N_DIST
    for result in ranks:
        _assert_same(result["plain"], want)
        _assert_same(result["ddp"], want)  # DDP wrapper unwrapped
        _assert_same(result["whole"], want)  # shard=False: every rank embeds everything
        assert torch.equal(result["plain"][2], want[2])  # labels exactly, in order
        assert result["training_after"] is True
    for a, b in zip(ranks[0]["plain"], ranks[1]["plain"], strict=True):
        assert torch.equal(a, b)  # identical on every rank


def test_distributed_embed_with_an_empty_shard(ranks):
    want = embed(small_model(), digits("test", 1))
    for result in ranks:
        _assert_same(result["tiny"], want)


def test_distributed_evaluation_matches_single_process(ranks):
    want = evaluate_representation(small_model(), digits("train", 101), digits("test", N_DIST),
                                   **EVAL_KWARGS)  # fmt: skip
    for result in ranks:
        assert set(result["report"]) == set(want)
        for key, value in want.items():
            assert result["report"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
