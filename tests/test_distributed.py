"""Data-parallel losses on a real 2-process gloo group against one process on the global batch.

One spawn (module fixture) runs every case in each worker: a DDP-wrapped linear model maps the
rank's slice of a fixed global batch, every rank calls ``backward`` on ``distributed_loss``, and
the parent compares the all-reduced loss terms, the DDP-averaged parameter gradients and the
embedding gradients with a single-process computation on the concatenated batch (float64).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raycl.distributed import (
    _AllGatherSumGrad,
    all_gather_with_grad,
    all_reduce_sum,
    distributed_loss,
    gather_batch,
    is_distributed,
    rank,
    world_size,
)
from raycl.losses import LOSSES, build_loss, flatten_batch
from tests.conftest import spawn_world

WORLD = 2
N_ITEMS = 8  # global items; each rank holds N_ITEMS // WORLD
IN_DIM, OUT_DIM = 6, 4
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])  # every class on both ranks
TOL = {"rtol": 1e-9, "atol": 1e-11}
# Non-default hyper-parameters, so that scale factors and options are exercised too.
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
    n_views: int


def _case(name: str, supervised: bool, n_views: int = 2, **params) -> Case:
    params = {**FAMILY_PARAMS[name], **params}
    options = ",".join(
        f"{k}={v}" for k, v in params.items() if (k, v) not in FAMILY_PARAMS[name].items()
    )
    key = f"{name}-{'sup' if supervised else 'ssl'}-V{n_views}-{options}"
    return Case(key, name, params, supervised, n_views)


def all_cases() -> list[Case]:
    cases = []
    for name, cls in LOSSES.items():
        label_modes = (False, True) if cls.accepts_labels else (False,)
        for supervised in label_modes:
            for aggregation in cls.aggregations:
                cases.append(_case(name, supervised, impl="materialised", aggregation=aggregation))
            cases.append(_case(name, supervised, impl="tiled", block_size=3))
    cases += [
        _case("infonce", False, 3, impl="tiled", block_size=3, aggregation="sum"),
        _case("tcl", True, 3, impl="tiled", block_size=5, aggregation="sum"),
        _case("dhel", False, 2, impl="materialised", include_augs=False),
        _case("dhel", True, 3, impl="tiled", block_size=4, include_augs=False),
        _case("kcl", True, 3, impl="materialised", kernel="gaussian", aggregation="sum"),
    ]
    return cases


CASES = all_cases()


def global_inputs(n_views: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + n_views)
    return torch.randn(n_views, N_ITEMS, IN_DIM, generator=g, dtype=torch.float64)


def global_embeddings(n_views: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + n_views)
    return torch.randn(n_views, N_ITEMS, OUT_DIM, generator=g, dtype=torch.float64)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, OUT_DIM).double()


def local_slice(r: int) -> slice:
    n = N_ITEMS // WORLD
    return slice(r * n, (r + 1) * n)


def gather_probe(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's input to the gather and the weights of its downstream loss Σ weights·out."""
    x = torch.arange(6.0, dtype=torch.float64).reshape(3, 2) + 10 * r
    weights = (r + 1) * torch.arange(12.0, dtype=torch.float64).reshape(6, 2) ** 2
    return x, weights


# ---------------------------------------------------------------- worker (spawned processes)


def _worker(r: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        results = {
            "cases": _run_cases(r),
            "probe": _run_gather_probe(r),
            "batch": _run_gather_batch(r),
            "info": (is_distributed(), rank(), world_size()),
            "unequal": _run_unequal(r),  # last: it leaves the group usable, but to be safe
        }
        torch.save(results, Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def _run_cases(r: int) -> dict[str, dict]:
    model = DistributedDataParallel(make_model())
    out = {}
    for case in CASES:
        loss = build_loss(case.name, **case.params)
        labels = LABELS[local_slice(r)] if case.supervised else None
        model.zero_grad(set_to_none=True)
        step = distributed_loss(loss, model(global_inputs(case.n_views)[:, local_slice(r)]), labels)
        step.backward_total.backward()
        z = global_embeddings(case.n_views)[:, local_slice(r)].clone().requires_grad_(True)
        local = distributed_loss(loss, z, labels).local
        local.total.backward()
        out[case.key] = {
            "global": torch.stack(step.global_terms),
            "local": torch.stack(step.local).detach(),
            "param_grads": [p.grad.clone() for p in model.parameters()],
            "embedding_grad": z.grad,
        }
    return out


def _run_gather_probe(r: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for name, gather in (
        ("public", all_gather_with_grad),
        ("fallback", lambda x: _AllGatherSumGrad.apply(x, None)),
    ):
        x, weights = gather_probe(r)
        x.requires_grad_(True)
        y = gather(x)
        (y * weights).sum().backward()
        out[name] = (y.detach().clone(), x.grad)
    return out


def _run_gather_batch(r: int) -> dict[str, tuple]:
    z_views = global_embeddings(2)[:, local_slice(r)]
    out = {}
    for mode, labels in (("ssl", None), ("sup", LABELS[local_slice(r)])):
        z, structure = flatten_batch(z_views, labels)
        cols_z, rows, cols = gather_batch(z, structure, ids_are_labels=labels is not None)
        out[mode] = (z, cols_z.detach(), rows, cols)
    return out


def _run_unequal(r: int) -> list[str]:
    n = N_ITEMS // WORLD - r  # rank 1 holds one item fewer
    z_views = global_embeddings(2)[:, :n]
    messages = []
    for call in (
        lambda: gather_batch(*flatten_batch(z_views)),
        lambda: distributed_loss(build_loss("infonce"), z_views),
        lambda: all_gather_with_grad(z_views[0]),
    ):
        try:
            call()
            messages.append("no error")
        except ValueError as error:
            messages.append(str(error))
    return messages


# ------------------------------------------------------------------- parent: run and compare


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Every worker's results; one 2-process spawn for the whole module."""
    return spawn_world(_worker, tmp_path_factory.mktemp("dist"), WORLD)


def reference(case: Case) -> dict:
    """One process, the whole global batch."""
    loss = build_loss(case.name, **case.params)
    labels = LABELS if case.supervised else None
    model = make_model()
    terms = loss(model(global_inputs(case.n_views)), labels)
    terms.total.backward()
    z = global_embeddings(case.n_views).requires_grad_(True)
    (embedding_grad,) = torch.autograd.grad(loss(z, labels).total, z)
    return {
        "terms": torch.stack(terms).detach(),
        "param_grads": [p.grad for p in model.parameters()],
        "embedding_grad": embedding_grad,
    }


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_loss_values_match_single_process(ranks, case):
    want = reference(case)["terms"]
    for result in ranks:
        torch.testing.assert_close(result["cases"][case.key]["global"], want, **TOL)
    # Each rank's share is a part of the global loss: Σ_k L_k = L (total, pos and ent).
    shares = sum(result["cases"][case.key]["local"] for result in ranks)
    torch.testing.assert_close(shares, want, **TOL)


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_gradients_match_single_process(ranks, case):
    want = reference(case)
    for r, result in enumerate(ranks):
        got = result["cases"][case.key]
        # DDP-averaged parameter gradients of backward_total = W · L_k ...
        for g, w in zip(got["param_grads"], want["param_grads"], strict=True):
            torch.testing.assert_close(g, w, **TOL)
        # ... and the raw embedding gradient of L_k: exactly ∂L/∂z for the rank's own rows.
        torch.testing.assert_close(
            got["embedding_grad"], want["embedding_grad"][:, local_slice(r)], **TOL
        )


def test_cases_cover_every_family_and_the_tiled_engine():
    assert len({c.key for c in CASES}) == len(CASES)
    assert {c.name for c in CASES} == set(LOSSES)
    tiled = {c.name for c in CASES if c.params.get("impl") == "tiled"}
    assert {"infonce", "tcl"} <= tiled
    aggregations = {(c.name, c.params.get("aggregation")) for c in CASES}
    for name in LOSSES:
        assert {(name, "sum"), (name, "mean_per_term")} <= aggregations
    assert ("margin", "mean_nonzero") in aggregations


@pytest.mark.parametrize("path", ["public", "fallback"])
def test_all_gather_with_grad_concatenates_and_sums_gradients(ranks, path):
    probes = [gather_probe(r) for r in range(WORLD)]
    gathered = torch.cat([x for x, _ in probes])
    summed_weights = sum(w for _, w in probes)
    for r, result in enumerate(ranks):
        y, grad = result["probe"][path]
        torch.testing.assert_close(y, gathered, rtol=0, atol=0)
        # d/dx_r Σ_w Σ weights_w · out = Σ_w weights_w[slice r]: a SUM reduce-scatter.
        torch.testing.assert_close(grad, summed_weights[3 * r : 3 * (r + 1)], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["ssl", "sup"])
def test_gather_batch_builds_global_structure(ranks, mode):
    local_z = [result["batch"][mode][0] for result in ranks]
    n = N_ITEMS // WORLD
    for r, result in enumerate(ranks):
        _, cols_z, rows, cols = result["batch"][mode]
        _, local = flatten_batch(
            global_embeddings(2)[:, local_slice(r)],
            LABELS[local_slice(r)] if mode == "sup" else None,
        )
        torch.testing.assert_close(cols_z, torch.cat(local_z), rtol=0, atol=0)
        assert torch.equal(rows.index, r * len(local) + local.index)
        assert torch.equal(cols.index, torch.arange(WORLD * len(local)))
        assert torch.equal(rows.views, local.views)
        assert torch.equal(cols.views, torch.cat([local.views] * WORLD))
        offset = 0 if mode == "sup" else r * n  # labels are shared, item ids are made unique
        assert torch.equal(rows.ids, local.ids + offset)
        assert torch.equal(cols.ids[r * len(local) : (r + 1) * len(local)], rows.ids)
    if mode == "ssl":
        ids = [set(result["batch"][mode][2].ids.tolist()) for result in ranks]
        assert not ids[0] & ids[1]


def test_unequal_local_batches_raise_a_clear_error(ranks):
    for result in ranks:
        gather_message, loss_message, tensor_message = result["unequal"]
        assert "same local batch" in gather_message and "(8, 4), (6, 4)" in gather_message
        assert "same local batch" in loss_message
        assert "same shape" in tensor_message


def test_workers_see_the_group(ranks):
    assert [result["info"] for result in ranks] == [(True, r, WORLD) for r in range(WORLD)]


# ------------------------------------------------------------- one process: everything is identity


def check_identities() -> None:
    assert not is_distributed() and rank() == 0 and world_size() == 1
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert all_gather_with_grad(x) is x
    counts = torch.tensor(7)
    assert all_reduce_sum(counts) is counts
    z, structure = flatten_batch(global_embeddings(2))
    assert gather_batch(z, structure) == (z, structure, structure)
    loss = build_loss("tcl", k1=30.0)
    for labels in (None, LABELS):
        out = distributed_loss(loss, global_embeddings(2), labels)
        want = loss(global_embeddings(2), labels)
        torch.testing.assert_close(torch.stack(out.global_terms), torch.stack(want))
        torch.testing.assert_close(out.backward_total, want.total)
        assert not out.global_terms.total.requires_grad


def test_identity_without_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    check_identities()


def test_identity_with_world_size_one(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        check_identities()
    finally:
        dist.destroy_process_group()


def test_labels_for_a_self_supervised_loss_raise():
    with pytest.raises(ValueError, match="self-supervised"):
        distributed_loss(build_loss("infonce"), global_embeddings(2), LABELS)


# -- a check that fails on one rank only: every rank raises at once, nobody waits ------------

BAD_SHARD_TIMEOUT_S = 60  # the group's timeout: a hang would take this long


def _one_bad_shard_worker(r: int, init_file: str, out_dir: str) -> None:
    """Rank 1's shard holds an anchor whose class has no other item anywhere (no positive);
    rank 0's shard is fine. Both ranks record what they raised and how long it took."""
    import gc
    import time

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD,
        timeout=timedelta(seconds=BAD_SHARD_TIMEOUT_S),
    )  # fmt: skip
    labels = torch.tensor([0, 0, 1, 1]) if r == 0 else torch.tensor([0, 1, 1, 99])
    z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(r))
    started = time.perf_counter()
    try:
        distributed_loss(build_loss("supcon"), z, labels)
        outcome = "no error"
    except ValueError as err:
        outcome = str(err)
    seconds = time.perf_counter() - started
    gc.collect()  # the raised error's frames hold gathered tensors: free them before the group
    dist.destroy_process_group()
    torch.save({"error": outcome, "seconds": seconds}, Path(out_dir) / f"rank{r}.pt")


def test_an_error_on_one_rank_is_raised_on_every_rank_at_once(tmp_path):
    results = spawn_world(_one_bad_shard_worker, tmp_path, WORLD)
    expected = "rank 1 of 2: supcon: 1 of 4 anchors have no positive"
    for result in results:
        assert result["error"].startswith(expected), result
        assert result["seconds"] < 10, result  # agreed at once, not at the group's timeout
