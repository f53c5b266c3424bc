"""raycl on a CUDA device (marked ``cuda``: skipped without one; ``benchmarks/gpu/run.sh`` runs
them): both loss engines within what rounding explains at fp32 and bf16 inputs, the training
loop and its bf16 step, the data-parallel loss under a one-rank nccl group, the benchmarks'
measurements. Importable without Ray, Hydra or OmegaConf (the GPU machine has none)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from raycl.bench.gpu import DRY, check_collectives, time_training_steps, train_digits
from raycl.bench.loss import measure_loss, measure_tile_matmuls
from raycl.bench.rounding import check_engines
from raycl.losses import LOSSES

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", sorted(LOSSES))
def test_tiled_and_materialised_within_rounding_bounds_on_cuda(family, dtype):
    """M = 2,000 rows in blocks of 700: full, partial and diagonal tiles."""
    record = check_engines(family, dtype, 2000, 128, "cuda", block_size=700)
    assert record["ok"], record


def test_distributed_loss_under_one_rank_nccl(tmp_path):
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/init", rank=0, world_size=1)
    try:
        for family, impl in (("infonce", "materialised"), ("supcon", "tiled")):
            result = check_collectives(family, impl, "cuda", DRY)
            assert result["ok"] and result["gathers"] >= 1, (family, impl, result)
    finally:
        dist.destroy_process_group()


def test_bf16_training_steps_of_the_loop_on_cuda():
    result = time_training_steps(batch=64, steps=2, device="cuda")
    assert math.isfinite(result["loss"]) and result["items_per_s"] > 0
    assert result["peak_bytes"] > 0


def test_run_training_on_cuda_through_a_local_session():
    result = train_digits("cuda", steps=2, epochs=1)
    assert result["epochs"] == 1 and math.isfinite(result["loss"])
    assert result["knn_top1"] > 50  # digits: far above chance even after two steps


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiled_loss_memory_is_a_fraction_of_the_materialised_on_cuda(dtype):
    """M = 32,768: the materialised engine holds M² matrices, the tiled one block² tiles."""
    tiled = measure_loss("infonce", "tiled", 32768, 128, "cuda", dtype, warmup=16384)
    materialised = measure_loss("infonce", "materialised", 32768, 128, "cuda", dtype)
    assert tiled["peak_bytes"] < materialised["peak_bytes"] / 2
    assert measure_tile_matmuls(32768, 128, "cuda", dtype) > 0
