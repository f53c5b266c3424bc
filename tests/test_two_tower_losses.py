"""CLIP and SigLIP against open_clip's own losses: values and the gradients of both towers'
embeddings and of the learnable scale and bias, on both engines, in one process and with two
gloo ranks against open_clip's gathered variants."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from torch.nn.parallel import DistributedDataParallel

from raycl.distributed import distributed_loss
from raycl.losses import CLIPLoss, SigLIPLoss, build_loss
from raycl.models import build_model
from raycl.schema import ModelConfig
from raycl.train import training_step
from tests.conftest import spawn_world

N, D, WORLD = 24, 16, 2
N_STEP = 8  # pairs in the two-tower step's global batch
STEP_LOSS = SigLIPLoss(weight=0.7)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-6}
FAMILIES = {
    "clip": dict(temperature=0.07),
    "siglip": dict(temperature=0.1, bias=-10.0),
}


def _pairs(dtype: torch.dtype, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(2, n, D, dtype=dtype, generator=g)
    return image, text


def _ours(family: str, image, text, **engine):
    """raycl's loss of a pair batch through its head: (value, ∂image, ∂text, ∂scale, ∂bias)."""
    loss = build_loss(family, **FAMILIES[family], **engine)
    head = loss.logit_head().to(image.dtype)
    image, text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    total = loss(head(image, text).transpose(0, 1)).total
    total.backward()
    bias = head.logit_bias.grad if head.logit_bias is not None else None
    return total.detach(), image.grad, text.grad, head.logit_scale.grad, bias


def _open_clip(family: str, image, text, rank: int = 0, world: int = 1):
    """open_clip's loss of the same batch, with the scale and bias a float32 parameter holds
    (as in open_clip's models and raycl's head)."""
    params = FAMILIES[family]
    log_scale = torch.tensor(math.log(1 / params["temperature"])).to(image.dtype)
    log_scale.requires_grad_(True)
    image, text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    features = F.normalize(image, dim=1), F.normalize(text, dim=1)
    if family == "clip":
        fn = ClipLoss(gather_with_grad=True, rank=rank, world_size=world)
        total = fn(*features, log_scale.exp())
        bias = None
    else:
        bias = torch.tensor(params["bias"], dtype=image.dtype, requires_grad=True)
        total = SigLipLoss(rank=rank, world_size=world)(*features, log_scale.exp(), bias)
    total.backward()
    return (
        total.detach(),
        image.grad,
        text.grad,
        log_scale.grad,
        None if bias is None else bias.grad,
    )


def _assert_close(ours, theirs, dtype) -> None:
    tol = TOLERANCE[dtype]
    for name, a, b in zip(("value", "image", "text", "scale", "bias"), ours, theirs, strict=True):
        if b is None:
            assert a is None, name
            continue
        scale = max(float(b.abs().max()), 1.0)
        assert torch.allclose(a, b, rtol=tol, atol=tol * scale), (name, (a - b).abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("engine", [dict(impl="materialised"), dict(impl="tiled", block_size=7)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_open_clip(family, engine, dtype):
    image, text = _pairs(dtype)
    _assert_close(_ours(family, image, text, **engine), _open_clip(family, image, text), dtype)


def test_terms_are_the_papers_split():
    """SigLIP: pos + ent at weight 1 is the pair sum; a weight scales the all-pairs term only."""
    image, text = _pairs(torch.float64)
    loss = SigLIPLoss(weight=0.5)
    out = loss(loss.logit_head().double()(image, text).transpose(0, 1))
    logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T * 10 - 10
    assert torch.allclose(out.pos, -logits.diagonal().mean())
    assert torch.allclose(out.ent, F.softplus(logits).sum() / N)
    assert torch.allclose(out.total, out.pos + 0.5 * out.ent)


def test_fixed_scalars_get_no_gradient():
    loss = SigLIPLoss(learn_temperature=False, learn_bias=False)
    head = loss.logit_head()
    assert not head.logit_scale.requires_grad and not head.logit_bias.requires_grad


def test_scale_is_clamped():
    head = CLIPLoss(temperature=0.02, max_logit_scale=50.0).logit_head()
    assert head.scale.item() == pytest.approx(50.0)
    assert head.metrics() == {"logit_scale": pytest.approx(50.0)}


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(normalize=True), "normalize: clip's inputs"),
        (dict(temperature=0.001), "temperature: 1/temperature = 1000 exceeds"),
        (dict(temperature=0.0), "temperature must be > 0.0"),
        (dict(learn_temperature="yes"), "learn_temperature must be true or false"),
    ],
)
def test_bad_knobs_raise_one_line(params, message):
    with pytest.raises(ValueError, match=message):
        CLIPLoss(**params)


def test_labels_are_refused():
    image, text = _pairs(torch.float64)
    with pytest.raises(ValueError, match="labels: clip is self-supervised"):
        CLIPLoss()(torch.stack([image, text]), torch.zeros(N, dtype=torch.long))


# ------------------------------------------------------------------ two gloo ranks


def _worker(r: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        results = {}
        for family in FAMILIES:
            image, text = (t.chunk(WORLD)[r] for t in _pairs(torch.float64))
            loss = build_loss(family, **FAMILIES[family], impl="tiled", block_size=5)
            head = loss.logit_head().double()
            image_, text_ = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
            out = distributed_loss(loss, head(image_, text_).transpose(0, 1), None)
            out.backward_total.backward()
            grads = [head.logit_scale.grad, head.logit_bias.grad if family == "siglip" else None]
            for g in filter(None, grads):  # what DistributedDataParallel does: the mean
                dist.all_reduce(g)
                g /= WORLD
            ours = (out.global_terms.total, image_.grad, text_.grad, *grads)
            theirs = list(_open_clip(family, image, text, rank=r, world=WORLD))
            for g in filter(None, theirs[3:]):
                dist.all_reduce(g)
                g /= WORLD
            value = theirs[0].clone()  # SigLIP's rank value is its images' share: the mean
            dist.all_reduce(value)
            theirs[0] = value / WORLD
            results[family] = (ours, tuple(theirs))
        results["step"] = _two_tower_step(r)
        torch.save(results, Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def _towers() -> torch.nn.Module:
    """A tiny float64 two-tower model (ViT: no BatchNorm, so chunks are exact), seeded."""
    torch.manual_seed(0)
    config = ModelConfig(
        name="two_tower", image_tower="vit", proj_dim=8, vision_width=32, vision_layers=1,
        text_width=32, text_layers=1, context_length=8,
    )  # fmt: skip
    return build_model(config, 1, STEP_LOSS.logit_head(), 8).double()


def _pair_batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(N_STEP, 1, 8, 8, generator=g, dtype=torch.float64)
    return images, model.tokenize([f"a {i % 3} digit number {i}" for i in range(N_STEP)])


def _step(model, batch, chunk_size: int | None) -> list[torch.Tensor]:
    """One SGD training step; every parameter after it (the head's scale and bias too)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    cpu = torch.device("cpu")
    training_step(model, batch, None, STEP_LOSS, optimizer, device=cpu, chunk_size=chunk_size)
    return [p.detach().clone() for p in getattr(model, "module", model).parameters()]


def _two_tower_step(r: int) -> list[torch.Tensor]:
    """Rank r's half of the global pair batch through a DDP two-tower model, both towers in
    chunks of 3 pairs."""
    model = DistributedDataParallel(_towers())
    images, tokens = _pair_batch(model.module)
    rows = slice(r * N_STEP // WORLD, (r + 1) * N_STEP // WORLD)
    return _step(model, (images[rows], tokens[rows]), chunk_size=3)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return spawn_world(_worker, tmp_path_factory.mktemp("towers"), WORLD)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_ranks_match_open_clips_gathered_losses(ranks, family):
    """Each rank's embedding gradients are W·∂L/∂z (both libraries' convention), the scalars'
    mean gradient is ∂L/∂t, and both equal one process on the global batch."""
    single = _ours(family, *_pairs(torch.float64), impl="materialised")
    for r, result in enumerate(ranks):
        ours, theirs = result[family]
        _assert_close(ours, theirs, torch.float64)
        rows = slice(r * N // WORLD, (r + 1) * N // WORLD)
        assert torch.allclose(ours[0], single[0], atol=1e-12)
        for got, want in zip(ours[1:3], single[1:3], strict=True):
            assert torch.allclose(got / WORLD, want[rows], atol=1e-12)
        for got, want in zip(ours[3:], single[3:], strict=True):
            assert (got is None) == (want is None) and (got is None or torch.allclose(got, want))


def test_a_two_tower_step_on_two_ranks_in_chunks_equals_one_process(ranks):
    """DDP over two gloo ranks, each tower gradient-cached in chunks, the gathered SigLIP loss:
    every parameter after one step equals one process's one-pass step on the global batch."""
    model = _towers()
    expected = _step(model, _pair_batch(model), chunk_size=None)
    for result in ranks:
        for got, want in zip(result["step"], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
