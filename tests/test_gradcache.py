"""Gradient-cached encoder passes (``train.chunk_size``) against plainly written references.

* No BatchNorm, or BatchNorm in eval mode: a chunked training step gives every parameter the
  gradient of the single-pass step (today's step) — several chunk sizes, one not dividing the
  batch, one larger than it — for every loss family and aggregation, float32 and float64, with
  the same loss value and balance diagnostic.
* BatchNorm in train mode: chunk_size = batch is today's step, running statistics updated once;
  with k chunks, each chunk is normalised by its own statistics and the running statistics
  are updated once per chunk (k times), as the config documents.
* Dropout: the chunked step equals backprop through the same sampled network; without RNG
  replay it does not.
* 2 gloo workers × chunks under DDP equal one process without chunks on the global batch, with
  one gradient all-reduce per step.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from raycl.distributed import distributed_loss
from raycl.gradcache import RngState, encode
from raycl.losses import LOSSES, build_loss
from raycl.models import build_model
from raycl.schema import ModelConfig
from raycl.train import StepResult, TrainingDiverged, training_step
from tests.conftest import spawn_world

N_ITEMS, N_VIEWS, IN_DIM, HIDDEN, OUT_DIM = 10, 2, 6, 7, 5
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0, 2, 0])  # every class at least three times
CHUNK_SIZES = (1, 3, 4, N_ITEMS, N_ITEMS + 6)  # 3 and 4 leave a smaller last chunk
# float32 rounds each operation to ε = 6e-8; the two steps add the same B·V·N ≈ 400 products in
# other orders and GEMM shapes, so their rounding differs by up to about √400·ε = 1.2e-6 of the
# summed magnitudes, which exceed the result by up to ~10× where terms cancel: 1e-5 of each
# tensor's scale bounds that with room, 1e-6 did not (dhel, sum, BatchNorm: 2.6e-6 seen).
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
FAMILY_PARAMS = {
    "infonce": {"temperature": 0.2, "weight": 0.7, "log_mean_exp": True},
    "supcon": {"temperature": 0.3, "weight": 1.3},
    "tcl": {"temperature": 0.2, "k1": 30.0, "k2": 2.0, "weight": 0.5},
    "dhel": {"temperature": 0.4},
    "kcl": {"t": 1.5, "kernel": "imq", "weight": 4.0},
    "margin": {"pos_margin": 0.8, "neg_margin": 0.2, "weight": 2.0},
    "clip": {"weight": 0.8},
    "siglip": {"weight": 1.5},
}


class Case(NamedTuple):
    key: str
    name: str
    params: dict
    supervised: bool


def loss_cases() -> list[Case]:
    """Every (family, aggregation) self-supervised; supervised and tiled once per family."""
    cases = []
    for name, cls in LOSSES.items():
        base = FAMILY_PARAMS[name]
        for aggregation in cls.aggregations:
            params = {**base, "aggregation": aggregation, "impl": "materialised"}
            cases.append(Case(f"{name}-ssl-{aggregation}", name, params, False))
        if cls.accepts_labels:
            cases.append(Case(f"{name}-sup", name, {**base, "impl": "materialised"}, True))
        cases.append(
            Case(f"{name}-ssl-tiled", name, {**base, "impl": "tiled", "block_size": 3}, False)
        )
    return cases


CASES = loss_cases()


class Toy(nn.Module):
    """(B, V, IN) → features (B, V, H) and embeddings (B, V, D), like ``ContrastiveModel``."""

    def __init__(self, batch_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        layers = [nn.Linear(IN_DIM, HIDDEN)]
        layers += [nn.BatchNorm1d(HIDDEN)] if batch_norm else []
        layers += [nn.Tanh()] + ([nn.Dropout(dropout)] if dropout else [])
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(HIDDEN, OUT_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        features = self.encoder(x.flatten(0, -2))
        return features.unflatten(0, lead), self.head(features).unflatten(0, lead)


def make_toy(dtype: torch.dtype, batch_norm: bool = False, dropout: float = 0.0) -> Toy:
    torch.manual_seed(0)
    model = Toy(batch_norm, dropout).to(dtype)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):  # running statistics that matter in eval mode
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def inputs(dtype: torch.dtype, n_items: int = N_ITEMS, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_items, N_VIEWS, IN_DIM, generator=g, dtype=torch.float64).to(dtype)


def run_step(model: nn.Module, x, case: Case, chunk_size: int | None, **kw) -> StepResult:
    """The training loop's step (SGD, lr 0.1); the gradients stay in ``.grad`` afterwards."""
    loss = build_loss(case.name, **case.params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = LABELS[: len(x)] if case.supervised else None
    return training_step(
        model, x, labels, loss, optimizer, device=torch.device("cpu"), chunk_size=chunk_size, **kw
    )


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _scaled(want: torch.Tensor, tol: dict) -> dict:
    scale = max(1.0, float(want.detach().abs().max())) if want.numel() else 1.0
    return {"rtol": tol["rtol"], "atol": tol["atol"] * scale}


def assert_all_close(got: list[torch.Tensor], want: list[torch.Tensor], tol: dict) -> None:
    """Element-wise ``|got − want| ≤ rtol·|want| + atol·max(1, max|want|)``: "equal to 1e-5"
    (float32; 1e-10 in float64) relative to each tensor's scale (a float32 sum-aggregated
    gradient reaches ~100)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **_scaled(w, tol))


# --------------------------------------------------------- exact: no BatchNorm, BN in eval mode


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("model_kind", ["plain", "bn-eval"])
@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_chunked_step_matches_single_pass(case, model_kind, dtype):
    tol = TOL[dtype]
    x = inputs(dtype)
    single = make_toy(dtype, batch_norm=model_kind == "bn-eval")
    if model_kind == "bn-eval":
        single.eval()
    want = run_step(single, x, case, None, diagnose=True)
    want_grads = grads(single)
    assert any(g.abs().sum() > 0 for g in want_grads)
    for chunk_size in CHUNK_SIZES:
        chunked = make_toy(dtype, batch_norm=model_kind == "bn-eval")
        chunked.train(single.training)
        got = run_step(chunked, x, case, chunk_size, diagnose=True)
        assert_all_close(grads(chunked), want_grads, tol)
        assert_all_close(list(chunked.parameters()), list(single.parameters()), tol)  # stepped
        assert_all_close(list(got.global_terms), list(want.global_terms), tol)
        torch.testing.assert_close(got.embeddings, want.embeddings, **tol)
        assert got.balance == pytest.approx(want.balance, rel=1e-5)
        assert_all_close(list(chunked.buffers()), list(single.buffers()), tol)


def test_cases_cover_every_family_and_aggregation():
    covered = {(c.name, c.params.get("aggregation")) for c in CASES}
    for name, cls in LOSSES.items():
        assert {(name, a) for a in cls.aggregations} <= covered
    assert {c.name for c in CASES if c.supervised} == {
        n for n, cls in LOSSES.items() if cls.accepts_labels
    }


# ---------------------------------------------------------------------- BatchNorm in train mode


def small_cnn() -> nn.Module:
    """The real encoder: conv BatchNorm and the head's BatchNorm1d, in float64."""
    torch.manual_seed(0)
    return build_model(ModelConfig(name="small_cnn", width=4, proj_dim=8), in_channels=1).double()


def images(n_items: int = N_ITEMS) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n_items, N_VIEWS, 1, 8, 8, generator=g, dtype=torch.float64)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_batchnorm_train_one_chunk_is_todays_step():
    case = CASES[0]
    today, cached = small_cnn(), small_cnn()
    want = run_step(today, images(), case, None)
    got = run_step(cached, images(), case, N_ITEMS)
    tol = TOL[torch.float64]
    assert_all_close(grads(cached), grads(today), tol)
    assert_all_close(list(got.global_terms), list(want.global_terms), tol)
    for ours, theirs, fresh in zip(
        batch_norms(cached), batch_norms(today), batch_norms(small_cnn()), strict=True
    ):
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **tol)
        assert not torch.equal(ours.running_mean, fresh.running_mean)  # they did move


def reference_per_chunk(
    model: nn.Module, x: torch.Tensor, case: Case, chunk_size: int, autocast=None
):
    """Plain backprop through the network as pass 1 samples it: forward the same chunks with
    autograd (same RNG sequence, BatchNorm statistics per chunk), concatenate, one loss, one
    backward. Returns the loss terms; gradients are left in ``.grad``."""
    loss = build_loss(case.name, **case.params)
    outputs = []
    for start in range(0, len(x), chunk_size):
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            outputs.append(model(x[start : start + chunk_size])[1])
    embeddings = torch.cat(outputs)
    embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)).transpose(0, 1)
    labels = LABELS[: len(x)] if case.supervised else None
    terms = distributed_loss(loss, embeddings, labels)
    terms.backward_total.backward()
    return terms.global_terms


@pytest.mark.parametrize("chunk_size", [3, 4, 5])
def test_batchnorm_train_k_chunks_normalise_per_chunk_and_update_once_per_chunk(chunk_size):
    case = CASES[0]
    chunks = -(-N_ITEMS // chunk_size)
    reference, cached = small_cnn(), small_cnn()
    want = reference_per_chunk(reference, images(), case, chunk_size)
    got = run_step(cached, images(), case, chunk_size)
    tol = TOL[torch.float64]
    assert_all_close(grads(cached), [p.grad for p in reference.parameters()], tol)
    assert_all_close(list(got.global_terms), list(want), tol)
    # The reference's chunk forwards updated the running statistics once per chunk; so did
    # pass 2, and pass 1 left them alone (else there would be 2k updates).
    for ours, theirs in zip(batch_norms(cached), batch_norms(reference), strict=True):
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == chunks
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **tol)


def test_pass_one_leaves_buffers_and_grads_alone():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    encoded = encode(model, images(), 3, select=lambda out: out[1])
    assert encoded.embeddings.requires_grad and encoded.embeddings.is_leaf
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------- RNG replay


@pytest.mark.parametrize("chunk_size", [3, 5])
def test_dropout_chunked_step_equals_backprop_through_the_same_sampled_network(chunk_size):
    """One unchunked forward draws other dropout masks than per-chunk forwards, so "equal to
    unchunked" means: equal to backprop through the network with pass 1's masks — the
    reference forwards the same chunks with autograd from the same RNG state, in order."""
    case = CASES[0]
    tol = TOL[torch.float64]
    x = inputs(torch.float64)
    reference, cached = make_toy(torch.float64, dropout=0.5), make_toy(torch.float64, dropout=0.5)
    torch.manual_seed(123)
    want = reference_per_chunk(reference, x, case, chunk_size)
    after_reference = torch.get_rng_state()
    torch.manual_seed(123)
    got = run_step(cached, x, case, chunk_size)
    assert_all_close(grads(cached), [p.grad for p in reference.parameters()], tol)
    assert_all_close(list(got.global_terms), list(want), tol)
    # Pass 2 replays inside fork_rng: the generator ends as pass 1 (and the reference) left it.
    assert torch.equal(torch.get_rng_state(), after_reference)


@pytest.mark.parametrize("replay_rng", [True, False], ids=["replay", "no-replay"])
def test_dropout_gradients_need_rng_replay(replay_rng):
    """The negative check: without replay, pass 2 draws new masks and the gradient is wrong."""
    case, chunk_size = CASES[0], 4
    x = inputs(torch.float64)
    reference, cached = make_toy(torch.float64, dropout=0.5), make_toy(torch.float64, dropout=0.5)
    torch.manual_seed(7)
    reference_per_chunk(reference, x, case, chunk_size)
    torch.manual_seed(7)
    encoded = encode(cached, x, chunk_size, select=lambda out: out[1], replay_rng=replay_rng)
    distributed_loss(
        build_loss(case.name, **case.params), encoded.embeddings.transpose(0, 1)
    ).backward_total.backward()
    encoded.backward()
    close = all(
        torch.allclose(p.grad, q.grad, **_scaled(q.grad, TOL[torch.float64]))
        for p, q in zip(cached.parameters(), reference.parameters(), strict=True)
    )
    assert close is replay_rng


def test_rng_state_replays_cpu_draws():
    state = RngState([])
    first = torch.rand(4)
    with state.replay():
        again = torch.rand(4)
    assert torch.equal(first, again)
    assert not torch.equal(torch.rand(4), first)  # the global stream went on after `first`


# ------------------------------------------------------------------------- precision, errors


def test_bf16_autocast_in_both_passes():
    case, chunk_size = CASES[0], 4
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    x = inputs(torch.float32)
    reference, cached = make_toy(torch.float32), make_toy(torch.float32)
    want = reference_per_chunk(reference, x, case, chunk_size, autocast)
    got = run_step(cached, x, case, chunk_size, autocast=autocast)
    assert_all_close(grads(cached), [p.grad for p in reference.parameters()], TOL[torch.float32])
    assert_all_close(list(got.global_terms), list(want), TOL[torch.float32])
    encoded = encode(cached, x, chunk_size, autocast=autocast, select=lambda out: out[1])
    assert encoded.embeddings.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_non_finite_step_stops_before_the_update(chunk_size):
    model = make_toy(torch.float64)
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TrainingDiverged, match="non-finite"):
        run_step(model, inputs(torch.float64), CASES[0], chunk_size)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("chunk_size", [0, -2])
def test_bad_chunk_size_raises(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        encode(make_toy(torch.float64), inputs(torch.float64), chunk_size)


# ------------------------------------------------------- 2 gloo workers × chunks vs 1 process

WORLD, GLOBAL_ITEMS, WORKER_CHUNK = 2, 12, 4  # 6 items per worker: chunks of 4 and 2
# Gather with and without labels, the tiled engine, and every family once.
DDP_KEYS = {"infonce-ssl-mean_per_term", "supcon-sup", "tcl-sup", "dhel-ssl-tiled", "kcl-ssl-sum"}
DDP_CASES = [c for c in CASES if c.key in DDP_KEYS | {"margin-ssl-mean_nonzero"}]


def _ddp_worker(r: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        out = {}
        per_worker = GLOBAL_ITEMS // WORLD
        rows = slice(r * per_worker, (r + 1) * per_worker)
        for case in DDP_CASES:
            model = DistributedDataParallel(make_toy(torch.float64))
            calls = {"all_reduce": 0}

            def counting_allreduce(state, bucket):
                state["all_reduce"] += 1
                return allreduce_hook(None, bucket)

            model.register_comm_hook(calls, counting_allreduce)
            loss = build_loss(case.name, **case.params)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            labels = _global_labels()[rows] if case.supervised else None
            result = training_step(
                model,
                inputs(torch.float64, GLOBAL_ITEMS, seed=5)[rows],
                labels,
                loss,
                optimizer,
                device=torch.device("cpu"),
                chunk_size=WORKER_CHUNK,
                diagnose=True,
            )
            out[case.key] = {
                "terms": torch.stack(result.global_terms),
                "grads": [p.grad.clone() for p in model.parameters()],
                "params": [p.detach().clone() for p in model.parameters()],
                "balance": result.balance,
                "all_reduce": calls["all_reduce"],
            }
        torch.save(out, Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def _global_labels() -> torch.Tensor:
    return torch.arange(GLOBAL_ITEMS) % 3


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory) -> list[dict]:
    return spawn_world(_ddp_worker, tmp_path_factory.mktemp("gradcache-ddp"), WORLD)


@pytest.mark.parametrize("case", DDP_CASES, ids=[c.key for c in DDP_CASES])
def test_two_workers_chunked_equal_one_process_unchunked(ddp_ranks, case):
    model = make_toy(torch.float64)
    loss = build_loss(case.name, **case.params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = _global_labels() if case.supervised else None
    x = inputs(torch.float64, GLOBAL_ITEMS, seed=5)
    want = training_step(
        model, x, labels, loss, optimizer, device=torch.device("cpu"), diagnose=True
    )
    tol = TOL[torch.float64]
    for result in ddp_ranks:
        got = result[case.key]
        torch.testing.assert_close(got["terms"], torch.stack(want.global_terms), **tol)
        assert_all_close(got["grads"], grads(model), tol)
        assert_all_close(got["params"], list(model.parameters()), tol)
        assert got["balance"] == pytest.approx(want.balance, rel=1e-6)
        # The toy's gradients fit one DDP bucket: no_sync on every chunk but the last makes
        # that one all-reduce per step (two chunks without it).
        assert got["all_reduce"] == 1
