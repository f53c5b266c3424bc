"""The GPU script without a GPU: raycl's per-worker layers import and train with Ray, Hydra and
OmegaConf made unimportable (as on the GPU machine), the script's CPU dry run, and the pieces
it judges by: the rounding check, the tile-matmul limit, the job order, the report."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raycl.bench import gpu, rounding
from raycl.bench.gpu_report import report
from raycl.bench.loss import measure_tile_matmuls
from raycl.losses.tiled import tile_grid

REPO = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys
from importlib.machinery import PathFinder


class _Absent(PathFinder):
    \"\"\"Finds nothing of Ray, Hydra or OmegaConf, as on the GPU machine where they are not
    installed: importing them raises ModuleNotFoundError, importlib.util.find_spec is None.\"\"\"

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "hydra", "omegaconf"):
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [_Absent if finder is PathFinder else finder for finder in sys.meta_path]
"""
IMPORT_AND_TRAIN = """
import json, sys
for name in ("ray", "hydra", "omegaconf"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable: the blocker is not active")
import raycl.bench.gpu, raycl.config, raycl.schema, raycl.data, raycl.distributed, raycl.evaluate
import raycl.losses, raycl.metrics, raycl.models, raycl.optim, raycl.session, raycl.train
from raycl.schema import DataConfig, EvalConfig, TrainConfig
from raycl.session import LocalSession
from raycl.train import run_training

config = TrainConfig(
    epochs=1,
    max_steps_per_epoch=2,
    data=DataConfig(batch_size_per_worker=64),
    eval=EvalConfig(linear_probe=False, knn_k=20),
)
session = LocalSession("cpu")
run_training(config, session)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("ray", "hydra", "omegaconf"))
print(json.dumps({"reports": session.reports, "loaded": loaded}))
"""


def blocked_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a subprocess where Ray, Hydra and OmegaConf cannot be found (a meta-path
    finder in ``sitecustomize``) and this checkout's raycl comes first."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)]),
        "OMP_NUM_THREADS": "1",
        # the GPU machine has no Hydra, so no Hydra pytest plugin either
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def test_worker_layers_import_and_train_without_ray_hydra_or_omegaconf(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_TRAIN],
        env=blocked_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    (epoch,) = result["reports"]
    assert epoch["epoch"] == 0 and math.isfinite(epoch["loss"]) and epoch["knn_top1"] > 0


@pytest.mark.slow  # four stage processes, ~1.5 min on two cores
def test_gpu_script_dry_run_on_cpu(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu/run.sh"), "--device", "cpu", "--dry-run"],
        env={**blocked_env(tmp_path), "OUT": str(out), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = (out / "gpu.md").read_text()
    assert "Dry run on cpu" in text and "FAIL" not in text and "not run" not in text
    for stage in gpu.STAGES:
        assert f"| {stage} | ok |" in text
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r for r in records if "error" in r] == []
    engines = [r for r in records if r.get("kind") == "engines"]
    assert len(engines) == len(gpu.DRY.families) * len(gpu.DRY.dtypes)
    assert all(r["ok"] for r in engines)
    (plan,) = [r for r in records if r.get("kind") == "plan"]
    measured = [r for r in records if r["stage"] == "loss" and r.get("kind") != "plan"]
    assert len(measured) == len(plan["jobs"])
    assert all(r["ok"] and r["gathers"] >= 1 for r in records if r["stage"] == "collectives")
    steps = [r for r in records if r.get("kind") == "resnet18"]
    assert [(r["batch"], r["chunk_size"]) for r in steps] == [
        (4, None),
        (4, 4),
        (8, 4),  # one pass, then gradient-cached chunks
    ]
    assert all(r["items_per_s"] > 0 for r in steps)
    assert "| 8 | 4 |" in text  # the chunked rows in the report


@pytest.mark.parametrize(
    ("dtype", "value_error", "grad_error"),
    [("bfloat16", 1e-3, 5e-2), ("float32", 1e-4, 1e-3)],
)
def test_rounding_check_flags_an_engine_slightly_off(monkeypatch, dtype, value_error, grad_error):
    """The bounds are tight enough to catch a 0.1 % (bf16; fp32: 0.01 %) value error and a
    5 % (fp32: 0.1 %) gradient error that correct engines stay far below."""
    honest = rounding.check_engines("infonce", dtype, 128, 32, "cpu", block_size=50)
    assert honest["ok"]
    engine = rounding._engine

    def off(*args):
        value, grad = engine(*args)
        return value * (1 + value_error), grad * (1 + grad_error)

    monkeypatch.setattr(rounding, "_engine", off)
    record = rounding.check_engines("infonce", dtype, 128, 32, "cpu", block_size=50)
    assert not record["ok"]
    assert record["tiled_value_error"] > record["value_bound"]
    assert record["tiled_grad_error"] > record["grad_bound"]


def test_rounding_check_rejects_bad_arguments():
    with pytest.raises(ValueError, match="family must be one of"):
        rounding.check_engines("simclr", "float32", 64, 8, "cpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        rounding.check_engines("infonce", "float64", 64, 8, "cpu")


@pytest.mark.parametrize(("size", "block"), [(10, 3), (12, 4), (5, 8)])
def test_tile_grid_covers_the_matrix_once(size, block):
    """Symmetric tiles on and above the diagonal, mirrored ones counted twice, cover every
    entry of the M×M matrix exactly once; the rows-vs-columns grid covers it directly."""
    for symmetric in (True, False):
        seen = torch.zeros(size, size, dtype=torch.long)
        for r0, r1, c0, c1, mirrored in tile_grid(size, size, block, symmetric):
            seen[r0:r1, c0:c1] += 1
            if mirrored:
                seen[c0:c1, r0:r1] += 1
        assert torch.equal(seen, torch.ones_like(seen))
    blocks = -(-size // block)
    assert len(tile_grid(size, size, block, True)) == blocks * (blocks + 1) // 2
    assert measure_tile_matmuls(size, 4, "cpu", "float32", block) > 0


def test_loss_jobs_put_the_target_first_once():
    jobs = gpu.loss_jobs(gpu.FULL, "cpu")
    largest = max(gpu.FULL.loss_sizes)
    assert jobs[:2] == [
        {"kind": "limit", "dtype": "bfloat16", "M": largest},
        {"kind": "tiled", "family": "infonce", "dtype": "bfloat16", "M": largest},
    ]
    assert all(jobs.count(job) == 1 for job in jobs)
    tiled = {(j["family"], j["dtype"], j["M"]) for j in jobs if j["kind"] == "tiled"}
    assert len(tiled) == len(gpu.FULL.loss_families) * len(gpu.FULL.dtypes) * len(
        gpu.FULL.loss_sizes
    )


def _env(dry_run: bool) -> dict:
    return {
        "date": "today",
        "torch": "2",
        "cuda": "12",
        "python": "3.12",
        "cpu": "cpu",
        "device": "cuda",
        "dry_run": dry_run,
        "gpu": "GPU",
        "driver": "1",
        "gpu_memory": "1 MiB",
    }


def test_report_judges_the_targets_and_lists_what_did_not_run():
    size, dim = max(gpu.FULL.loss_sizes), gpu.FULL.dim
    records = [
        {"stage": "loss", "kind": "plan", "jobs": gpu.loss_jobs(gpu.FULL, "cpu")[:3]},
        {"stage": "loss", "kind": "limit", "dtype": "bfloat16", "M": size, "seconds": 2.0},
        {
            "stage": "loss",
            "kind": "tiled",
            "family": "infonce",
            "dtype": "bfloat16",
            "M": size,
            "seconds": 4.0,
            "peak_bytes": 4e9 - size * dim * 2 + 1,
        },
        {"stage": "train", "kind": "resnet18", "batch": 256, "error": "OutOfMemoryError: x"},
    ]
    statuses = [{"stage": "loss", "status": "stopped", "seconds": 230.0, "budget": 230}]
    text = report(_env(False), statuses, records, gpu.FULL, gpu.PEAK_LIMIT_BYTES, 1.5)
    targets = text.split("## Stages")[0]
    assert "| 4.00 s | met |" in targets  # completes
    assert "| 4.00 GB | not met |" in targets  # one byte over, inputs included
    assert "| 2.00× | not met |" in targets  # 4 s against a 2 s limit
    assert "error: OutOfMemoryError: x | not met |" in targets
    assert "Not run (the stage stopped at its time box): 1 measurements." in text
    dry = report(_env(True), statuses, records, gpu.FULL, gpu.PEAK_LIMIT_BYTES, 1.5)
    assert "| met |" not in dry and "— (dry run)" in dry


def test_gpu_bench_rejects_a_device_it_cannot_use(tmp_path):
    args = argparse.Namespace(device="tpu", dry_run=True, out=str(tmp_path), stages=[], _stage=None)
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        gpu.main(args)
    if not torch.cuda.is_available():
        args.device = "cuda"
        with pytest.raises(ValueError, match="no CUDA device"):
            gpu.main(args)
