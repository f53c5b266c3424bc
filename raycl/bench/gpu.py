"""``raycl bench gpu`` (``benchmarks/gpu/run.sh``): raycl's GPU path, one prepared run.

Four stages, each in its own process under its own time box (a failure, out-of-memory or hang
in one is recorded and the run goes on), then one markdown report, ``gpu.md``:

1. ``correctness``: the tests marked ``cuda``; tiled == materialised, value and gradient, for
   every loss family at fp32 and bf16 inputs within what rounding explains
   (:mod:`raycl.bench.rounding`).
2. ``loss``: tiled InfoNCE and SupCon at M = 65,536 … 1,048,576, bf16 and fp32 inputs: time
   (CUDA events, warm-up excluded), peak memory, the tiled engine's own matmuls alone in the
   same process (its limit), the materialised engine where it fits.
3. ``train``: the per-worker loop (:func:`raycl.train.run_training` through a
   :class:`~raycl.session.LocalSession`) on digits, then resnet18 (CIFAR stem) training steps
   of the loop (``raycl.train.train_epoch``) on CIFAR-shaped random tensors, bf16 autocast,
   per-GPU batch 256 doubling until out of memory: items/s and peak memory.
4. ``collectives``: a one-rank process group (nccl; gloo on the CPU): the data-parallel loss
   through the gather, the count all-reduce and the backward reduce-scatter equals the plain
   loss, value and gradient.

Needs torch only (no Ray, Hydra or OmegaConf). ``--device cpu --dry-run``: tiny sizes, seconds.
Results: ``results.jsonl`` (one line per measurement, written as it is taken), per-stage logs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from raycl.bench.loss import _fits, measure_loss, measure_tile_matmuls
from raycl.bench.measure import best_time, cpu_model, peak_memory
from raycl.bench.rounding import check_engines
from raycl.losses import LOSSES, build_loss

RESULTS = "results.jsonl"
REPORT = "gpu.md"
REPO = Path(__file__).resolve().parents[2]
# The test files with tests marked ``cuda``: none of them imports Ray, Hydra or OmegaConf.
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_evaluate.py", "tests/test_metrics.py")
# Targets of issue 13, checked at the plan's largest loss size.
PEAK_LIMIT_BYTES = 4e9
LIMIT_RATIO = 1.5


@dataclass(frozen=True)
class Plan:
    """Sizes and time boxes of a run (the full GPU run or the CPU dry run)."""

    loss_sizes: tuple[int, ...]
    check_size: int
    check_block: int | None
    first_batch: int
    max_batch: int
    train_steps: int
    chunk_size: int  # train.chunk_size of the gradient-cached sweep
    max_chunked_batch: int
    budgets: dict[str, int]
    dim: int = 128
    loss_families: tuple[str, ...] = ("infonce", "supcon")
    dtypes: tuple[str, ...] = ("bfloat16", "float32")
    digits_steps: int = 5
    step_precision: str = "bf16"  # of the resnet18 steps: bf16 (autocast) | fp32
    collective_block: int = 40
    families: tuple[str, ...] = tuple(sorted(LOSSES))


FULL = Plan(
    loss_sizes=(65_536, 131_072, 262_144, 524_288, 1_048_576),
    check_size=12_288,  # two 8,192 blocks: a full production tile and partial ones
    check_block=None,
    first_batch=256,
    max_batch=1 << 20,  # doubling stops at the first out-of-memory long before this
    train_steps=5,
    chunk_size=256,
    max_chunked_batch=65_536,
    budgets={"correctness": 90, "loss": 210, "train": 130, "collectives": 40},
)
DRY = Plan(
    loss_sizes=(1024, 2048),
    check_size=384,
    check_block=160,
    first_batch=4,
    max_batch=4,
    train_steps=1,
    chunk_size=4,
    max_chunked_batch=8,
    budgets={"correctness": 120, "loss": 60, "train": 240, "collectives": 60},
    digits_steps=2,
    # bf16 autocast on a CPU without bf16 units costs seconds per resnet18 step even at batch
    # 4; the digits run still takes the bf16 path
    step_precision="fp32",
)


class Recorder:
    """Appends one JSON line per measurement to ``results.jsonl`` (kept if the stage dies)."""

    def __init__(self, out: Path, stage: str) -> None:
        self.path, self.stage = out / RESULTS, stage

    def __call__(self, **fields: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"stage": self.stage, **fields}) + "\n")


def guarded(record: Recorder, measure: Callable[[], dict], **fields: Any) -> dict:
    """Run one measurement and record its result, or its error in one line (out-of-memory
    included), freeing device memory either way: one failure never stops a stage."""
    try:
        result = measure()
    except Exception as err:  # fault isolation: any error is recorded and the stage goes on
        result = {"error": f"{type(err).__name__}: {_first_line(err)}"}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    record(**{**fields, **result})
    return result


# --- stage 1: correctness ------------------------------------------------------------------


def stage_correctness(plan: Plan, device: str, record: Recorder, out: Path) -> None:
    """The ``cuda``-marked tests, then tiled == materialised for every family and dtype."""
    timeout = plan.budgets["correctness"] // 2  # the rest: the engine checks
    guarded(record, lambda: run_cuda_tests(out, timeout), kind="cuda-tests")
    for dtype in plan.dtypes:
        for family in plan.families:
            guarded(
                record,
                lambda f=family, dt=dtype: check_engines(
                    f, dt, plan.check_size, plan.dim, device, plan.check_block
                ),
                kind="engines",
                family=family,
                dtype=dtype,
            )


def run_cuda_tests(out: Path, timeout: int) -> dict:
    """``pytest -m cuda`` on :data:`CUDA_TEST_FILES`: counts from its JUnit XML (log beside)."""
    missing = [f for f in CUDA_TEST_FILES if not (REPO / f).exists()]
    if missing:
        return {"error": f"{missing[0]} not found (not a source checkout)"}
    xml = out / "cuda-tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*cmd, *CUDA_TEST_FILES, f"--junitxml={xml}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    (out / "cuda-tests.log").write_text(done.stdout + done.stderr)
    if not xml.exists():
        return {"error": f"pytest exited {done.returncode} without a report (cuda-tests.log)"}
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = counts["failures"] + counts["errors"]
    return {
        "passed": counts["tests"] - failed - counts["skipped"],
        "failed": failed,
        "skipped": counts["skipped"],
    }


# --- stage 2: loss -------------------------------------------------------------------------


def loss_jobs(plan: Plan, device: str) -> list[dict]:
    """Measurements in priority order: the target (InfoNCE, bf16, largest M, with its limit)
    first, then by dtype and size; the materialised engine only where it fits."""
    largest, first = max(plan.loss_sizes), plan.dtypes[0]
    jobs = [
        {"kind": "limit", "dtype": first, "M": largest},
        {"kind": "tiled", "family": "infonce", "dtype": first, "M": largest},
    ]
    for dtype in plan.dtypes:
        for size in sorted(plan.loss_sizes):
            jobs.append({"kind": "limit", "dtype": dtype, "M": size})
            for family in plan.loss_families:
                jobs.append({"kind": "tiled", "family": family, "dtype": dtype, "M": size})
            if _fits(size, device):
                for family in plan.loss_families:
                    jobs.append(
                        {"kind": "materialised", "family": family, "dtype": dtype, "M": size}
                    )
    unique = []
    for job in jobs:
        if job not in unique:
            unique.append(job)
    return unique


def stage_loss(plan: Plan, device: str, record: Recorder, out: Path) -> None:
    """Every loss job, each time-boxed only by the stage (an unfinished job is reported)."""
    jobs = loss_jobs(plan, device)
    record(kind="plan", jobs=jobs)
    for job in jobs:
        guarded(record, lambda j=job: _measure(j, plan, device), **job)


def _measure(job: dict, plan: Plan, device: str) -> dict:
    if job["kind"] == "limit":
        return {"seconds": measure_tile_matmuls(job["M"], plan.dim, device, job["dtype"])}
    warmup = min(job["M"], 2 * _block(device))
    return measure_loss(
        job["family"], job["kind"], job["M"], plan.dim, device, job["dtype"], warmup=warmup
    )


def _block(device: str) -> int:
    from raycl.losses.tiled import default_block_size

    return default_block_size(torch.device(device))


# --- stage 3: training ---------------------------------------------------------------------


def stage_train(plan: Plan, device: str, record: Recorder, out: Path) -> None:
    """The loop end to end on digits, then resnet18 steps at doubling batch sizes: one pass
    until out of memory, then gradient-cached chunks (``train.chunk_size``) beyond it."""
    guarded(record, lambda: train_digits(device, plan.digits_steps), kind="digits")
    for chunk_size, limit in ((None, plan.max_batch), (plan.chunk_size, plan.max_chunked_batch)):
        batch = plan.first_batch
        while batch <= limit:
            result = guarded(
                record,
                lambda b=batch, c=chunk_size: time_training_steps(
                    b, plan.train_steps, device, c, plan.step_precision
                ),
                kind="resnet18",
                batch=batch,
                chunk_size=chunk_size,
            )
            if "error" in result:
                break
            batch *= 2


def train_digits(device: str, steps: int, epochs: int = 2) -> dict:
    """:func:`raycl.train.run_training` on digits (small_cnn, InfoNCE, bf16 autocast) through a
    :class:`LocalSession`, from the schema's defaults: the real per-worker loop, no Ray."""
    from raycl.schema import ClusterConfig, EvalConfig, TrainConfig
    from raycl.session import LocalSession
    from raycl.train import run_training

    config = TrainConfig(
        epochs=epochs,
        max_steps_per_epoch=steps,
        eval=EvalConfig(linear_probe=False, knn_k=20),
        cluster=ClusterConfig(precision="bf16"),
    )
    session = LocalSession(device)
    started = time.perf_counter()
    run_training(config, session)
    last = session.reports[-1]
    return {
        "epochs": len(session.reports),
        "loss": last["loss"],
        "knn_top1": last["knn_top1"],
        "seconds": time.perf_counter() - started,
    }


def time_training_steps(
    batch: int,
    steps: int,
    device: str,
    chunk_size: int | None = None,
    precision: str = "bf16",
) -> dict:
    """Items/s and peak memory of ``steps`` steps of the training loop's epoch function
    (encoder in one pass, or in gradient-cached chunks of ``chunk_size`` items).

    resnet18 (CIFAR stem) + projection head, InfoNCE, AdamW, ``precision`` (bf16: autocast), on
    one batch of random 2×3×32×32 views kept on the device (data loading excluded: this times
    the step); one untimed step first (cuDNN, allocator, optimiser state).
    """
    from raycl.models import build_model
    from raycl.optim import build_optimization
    from raycl.schema import ClusterConfig, ModelConfig, OptimConfig, StepConfig, TrainConfig
    from raycl.session import LocalSession
    from raycl.train import TrainingRun, step_precision, train_epoch

    dev = torch.device(device)
    session = LocalSession(dev)
    config = TrainConfig(
        model=ModelConfig(name="resnet18", cifar_stem=True),
        optim=OptimConfig(warmup_epochs=0),
        cluster=ClusterConfig(precision=precision),
        train=StepConfig(chunk_size=chunk_size),
    )
    model = session.prepare_model(build_model(config.model, in_channels=3))
    optimizer, scheduler = build_optimization(model, config.optim, batch, steps + 1, 1)
    views = torch.randn(batch, 2, 3, 32, 32, device=dev)
    labels = torch.zeros(batch, dtype=torch.long, device=dev)  # unused: self-supervised
    run = TrainingRun(
        config,
        session,
        None,
        [],
        model,
        build_loss("infonce"),
        optimizer,
        scheduler,
        steps=0,
        global_batch=batch,
        autocast=step_precision(config.cluster.precision, dev),
    )

    def epoch(n: int, index: int) -> dict[str, float]:
        run.loader, run.steps = [(views, labels)] * n, n
        return train_epoch(run, index)[0]

    epoch(1, 0)
    resident = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    timing: dict[str, Any] = {}

    def timed() -> None:
        timing["seconds"] = best_time(lambda: timing.update(means=epoch(steps, 1)), dev)

    peak = peak_memory(timed, dev)
    return {
        "items_per_s": steps * batch / timing["seconds"],
        "steps": steps,
        "step_seconds": timing["seconds"] / steps,
        "peak_bytes": resident + peak,
        "loss": timing["means"]["loss"],
    }


# --- stage 4: collectives ------------------------------------------------------------------


def stage_collectives(plan: Plan, device: str, record: Recorder, out: Path) -> None:
    """One-rank process group: the data-parallel loss on both engines against the plain one."""
    import torch.distributed as dist

    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            backend, init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1
        )
        try:
            for family, impl in (("infonce", "materialised"), ("supcon", "tiled")):
                guarded(
                    record,
                    lambda f=family, i=impl: check_collectives(f, i, device, plan),
                    backend=backend,
                    family=family,
                    impl=impl,
                )
        finally:
            dist.destroy_process_group()


def check_collectives(family: str, impl: str, device: str, plan: Plan) -> dict:
    """:func:`raycl.distributed.distributed_loss` with and without the collectives, fp64.

    With one rank, raycl.distributed short-cuts to the plain loss (nothing to gather); the
    check turns that shortcut off so the gather, the count all-reduce and the backward
    reduce-scatter run through the backend, and counts the gathers to prove it.
    """
    import torch.distributed as dist

    from raycl import distributed

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    views = torch.randn(2, 96, 16, generator=g, dtype=torch.float64).to(dev)
    labels = torch.arange(96, device=dev) % 5 if family == "supcon" else None
    loss = build_loss(family, impl=impl, block_size=plan.collective_block)

    def loss_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = views.clone().requires_grad_(True)
        out = distributed.distributed_loss(loss, leaf, labels)
        out.backward_total.backward()
        return torch.stack(list(out.global_terms)), leaf.grad

    plain = loss_and_grad()
    gather = distributed._all_gather_autograd
    gathers: list[int] = []

    def counted(x: torch.Tensor, group: Any) -> torch.Tensor:
        gathers.append(1)
        return gather(x, group)

    with (
        mock.patch.object(distributed, "is_distributed", lambda group=None: dist.is_initialized()),
        mock.patch.object(distributed, "_all_gather_autograd", counted),
    ):
        grouped = loss_and_grad()
    value_diff = (grouped[0] - plain[0]).abs().max().item()
    grad_diff = (grouped[1] - plain[1]).abs().max().item()
    close = all(
        torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(grouped, plain, strict=True)
    )
    return {
        "value_diff": value_diff,
        "grad_diff": grad_diff,
        "gathers": len(gathers),
        "ok": close and bool(gathers),
    }


STAGE_FUNCTIONS: dict[str, Callable[[Plan, str, Recorder, Path], None]] = {
    "correctness": stage_correctness,
    "loss": stage_loss,
    "train": stage_train,
    "collectives": stage_collectives,
}
STAGES = tuple(STAGE_FUNCTIONS)


# --- the run -------------------------------------------------------------------------------


def run_stage(stage: str, args: argparse.Namespace, out: Path, budget: int) -> dict:
    """One stage in a fresh process, killed (with its children) at its time box."""
    cmd = [sys.executable, "-m", "raycl.bench.gpu", "--_stage", stage, "--out", str(out)]
    cmd += ["--device", args.device, *(["--dry-run"] if args.dry_run else [])]
    started = time.monotonic()
    with (out / f"{stage}.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget)
            status = "ok" if code == 0 else f"failed (exit {code}, see {stage}.log)"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"stopped at its {budget} s time box"
    seconds = time.monotonic() - started
    print(f"stage {stage}: {status} ({seconds:.1f} s)", flush=True)
    return {"stage": stage, "status": status, "seconds": seconds, "budget": budget}


def environment(device: str, dry_run: bool) -> dict:
    """What the report header names; the GPU via nvidia-smi (no CUDA context here)."""
    env = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "device": device,
        "dry_run": dry_run,
    }
    try:
        query = "--query-gpu=name,driver_version,memory.total"
        line = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.splitlines()[0]
        env["gpu"], env["driver"], env["gpu_memory"] = (p.strip() for p in line.split(","))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        env["gpu"] = "none (nvidia-smi unavailable)"
    return env


def main(args: argparse.Namespace) -> None:
    """Run the stages, each in its own time-boxed process, then write and print ``gpu.md``."""
    plan = DRY if args.dry_run else FULL
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (use --device cpu --dry-run)")
    out = Path(args.out or os.environ.get("OUT") or "gpu-results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args._stage:
        STAGE_FUNCTIONS[args._stage](plan, args.device, Recorder(out, args._stage), out)
        return
    (out / RESULTS).write_text("")
    env = environment(args.device, args.dry_run)
    statuses = [run_stage(s, args, out, plan.budgets[s]) for s in args.stages]
    from raycl.bench.gpu_report import report

    records = [json.loads(line) for line in (out / RESULTS).read_text().splitlines() if line]
    text = report(env, statuses, records, plan, PEAK_LIMIT_BYTES, LIMIT_RATIO)
    (out / REPORT).write_text(text)
    print(text)
    print(f"results in {out}")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:200]


if __name__ == "__main__":
    from raycl.cli_bench import gpu_options

    parser = argparse.ArgumentParser(prog="python -m raycl.bench.gpu", description=__doc__)
    gpu_options(parser)
    try:
        main(parser.parse_args())
    except ValueError as err:
        print(f"raycl bench gpu: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
