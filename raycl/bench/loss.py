"""``raycl bench loss``: tiled vs materialised losses, and tiled vs its time limits.

For every loss family and batch size M (d-dimensional embeddings, forward + backward) it
measures, each in its own fresh process (time and peak memory in separate ones: a CPU peak is
measured under :data:`raycl.bench.measure.PEAK_ENV`, which slows the process):

* the materialised engine (the baseline; skipped where the M×M matrices would not fit),
* the tiled engine,
* two limits on the same symmetric tiles: the *limit*, per tile one forward GEMM, one ``exp``
  and the two backward GEMMs — and the *floor*, the limit plus the backward's recomputation
  of the tile (one more GEMM and ``exp``), which an exact method that keeps O(M·d) memory
  cannot skip: every entry's gradient weight ``exp(s_ij/τ − r_j)`` needs the column's
  log-sum-exp ``r_j``, known only once the forward has seen every tile,

and prints speed ratios against the baseline and the limits measured in the same run.
:func:`measure_engine_memory` measures each family's peak bytes per embedding (the engine's
O(M·d) state), :func:`measure_tile_matmuls` the tiled engine's matmuls alone (the limit of
``raycl.bench.gpu``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import date
from functools import partial

import torch

from raycl.bench.measure import (
    available_bytes,
    best_time,
    cpu_model,
    in_fresh_process,
    peak_memory,
    publish,
    serve_worker,
    time_and_peak,
)
from raycl.losses import LOSSES, ContrastiveLoss, build_loss
from raycl.losses.tiled import default_block_size, tile_grid

FAMILIES = tuple(LOSSES)
# The materialised engine holds about this many float32 M×M matrices at its peak.
MATERIALISED_MATRICES = 4


def _views(size: int, dim: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(2, size // 2, dim, generator=g).to(device=device, dtype=dtype)
    return x.requires_grad_(True)


def _labels(num_items: int, device: torch.device) -> torch.Tensor:
    """100 classes: the supervised case with many positives per anchor."""
    return torch.arange(num_items, device=device) % 100


def _training_step(loss: ContrastiveLoss) -> Callable[[torch.Tensor], None]:
    """Forward + backward of ``loss`` on views (SupCon with 100 classes of labels)."""

    def step(x: torch.Tensor) -> None:
        labels = _labels(x.shape[1], x.device) if loss.name == "supcon" else None
        loss(x, labels).total.backward()

    return step


def measure_loss(
    family: str,
    impl: str,
    size: int,
    dim: int,
    device: str,
    dtype: str,
    repeats: int = 1,
    warmup: int = 512,
) -> dict:
    """Time and peak memory of one forward + backward (run inside a fresh process on the CPU;
    on CUDA the allocator's peak is exact in-process). ``warmup``: rows of the untimed first
    batch (allocator, kernels; on CUDA, two tiles' worth loads the tiles' kernels)."""
    dev, dt = torch.device(device), getattr(torch, dtype)
    step = _training_step(build_loss(family, impl=impl))
    step(_views(warmup, dim, dev, dt))  # warm-up (allocator, kernels)
    x = _views(size, dim, dev, dt)
    timing: dict[str, float] = {}

    def timed_step() -> None:
        timing["seconds"] = best_time(lambda: step(x), dev, repeats=repeats)

    return {"peak_bytes": peak_memory(timed_step, dev), **timing}


Tile = tuple[int, int, int, int, bool]


def _time_tiles(
    size: int,
    dim: int,
    device: str,
    dtype: str,
    block_size: int | None,
    work: Callable[[torch.Tensor, list[Tile]], None],
    repeats: int = 1,
) -> float:
    """Seconds for ``work(z, tiles)`` over the tiled engine's symmetric tiles
    (:func:`raycl.losses.tiled.tile_grid`) of ``size`` random rows, at its block size (default:
    the device's) and dtype; the best of ``repeats`` runs after a warm-up of two blocks' tiles."""
    dev, dt = torch.device(device), getattr(torch, dtype)
    block = block_size or default_block_size(dev)
    z = torch.randn(size, dim, device=dev, dtype=dt)
    warm = min(size, 2 * block)
    work(z, tile_grid(warm, warm, block, symmetric=True))
    tiles = tile_grid(size, size, block, symmetric=True)
    return best_time(lambda: work(z, tiles), dev, repeats=repeats)


def unavoidable_work(rows_z: torch.Tensor, cols_z: torch.Tensor, tiles: list[Tile]) -> None:
    """Per tile: the forward GEMM, one ``exp`` over the tile, the two backward GEMMs (the
    exp'd tile standing in for the tile's gradient)."""
    for r0, r1, c0, c1, _ in tiles:
        rows, cols = rows_z[r0:r1], cols_z[c0:c1]
        grad = (rows @ cols.T).exp_()
        _ = grad @ cols
        _ = grad.T @ rows


def _unavoidable(z: torch.Tensor, tiles: list[Tile]) -> None:
    unavoidable_work(z, z, tiles)


def _recomputed(z: torch.Tensor, tiles: list[Tile]) -> None:
    for r0, r1, c0, c1, _ in tiles:
        (z[r0:r1] @ z[c0:c1].T).exp_()
    _unavoidable(z, tiles)


def _matmuls(z: torch.Tensor, tiles: list[Tile]) -> None:
    for r0, r1, c0, c1, _ in tiles:
        _ = z[r0:r1] @ z[c0:c1].T
    for r0, r1, c0, c1, _ in tiles:
        rows, cols = z[r0:r1], z[c0:c1]
        grad = rows @ cols.T
        _ = grad @ cols
        _ = grad.T @ rows


def measure_limit(
    size: int, dim: int, device: str, dtype: str, repeats: int = 1, block_size: int | None = None
) -> float:
    """Seconds for the work the exact symmetric forward + backward cannot avoid: for every
    upper-triangle tile the tiled engine visits, one forward GEMM ``S = Z_r·Z_cᵀ``, one
    ``exp`` over the tile and the two backward GEMMs ``G·Z_c`` and ``Gᵀ·Z_r`` (``G`` = the
    exp'd tile as a stand-in)."""
    return _time_tiles(size, dim, device, dtype, block_size, _unavoidable, repeats)


def measure_floor(
    size: int, dim: int, device: str, dtype: str, repeats: int = 1, block_size: int | None = None
) -> float:
    """Seconds for :func:`measure_limit`'s work plus, per tile, the forward GEMM and ``exp``
    again (the backward's recomputation): an exact O(M·d)-memory method's floor."""
    return _time_tiles(size, dim, device, dtype, block_size, _recomputed, repeats)


def measure_engine_memory(
    families: list[str], sizes: list[int], dim: int, block_size: int | None = None
) -> dict:
    """Peak bytes above the inputs of one tiled forward + backward (float32, CPU) for every
    family and size, in this process (start it with :data:`PEAK_ENV`): ``{family: {M: bytes}}``.
    The slope between two sizes is the engine's bytes per embedding; the tiles' block² buffers
    are the same at every size and drop out."""
    peaks: dict[str, dict[int, int]] = {}
    for family in families:
        step = _training_step(build_loss(family, impl="tiled", block_size=block_size))
        peaks[family] = {}
        for size in sizes:
            x = _views(size, dim, torch.device("cpu"), torch.float32)
            step(x)  # warm-up at this size: thread pools, kernels' workspaces
            x.grad = None
            peaks[family][size] = peak_memory(partial(step, x), torch.device("cpu"))
            del x
    return peaks


def bytes_per_embedding(peaks: dict[int, int]) -> float:
    """The slope of peak bytes against M between the smallest and largest size."""
    small, large = min(peaks), max(peaks)
    return (peaks[large] - peaks[small]) / (large - small)


def measure_tile_matmuls(
    size: int, dim: int, device: str, dtype: str, block_size: int | None = None
) -> float:
    """Seconds for the matmuls alone of the tiled engine's symmetric forward + backward:
    per tile ``Z_r·Z_cᵀ`` forward, then ``Z_r·Z_cᵀ`` again, ``G·Z_c`` and ``Gᵀ·Z_r`` backward
    (a tile-shaped stand-in for G) — about two M×M×d GEMMs. Whatever else the engine does
    comes on top, so this is its time limit."""
    return _time_tiles(size, dim, device, dtype, block_size, _matmuls)


def _in_fresh_process(kind: str, env: dict[str, str] | None = None, **kwargs: object) -> dict:
    return in_fresh_process("raycl.bench.loss", kind, env=env, **kwargs)


def _measured(family: str, impl: str, size: int, common: dict) -> dict:
    """Seconds (best of the repeats) and, on the CPU, peak bytes from a process of its own;
    on CUDA the allocator's peak is exact in the timed process."""
    job = {"family": family, "impl": impl, "size": size, **common}
    if common["device"] != "cpu":
        return _in_fresh_process("loss", **job)
    return time_and_peak(partial(_in_fresh_process, "loss"), **job)


def _fits(size: int, device: str) -> bool:
    needed = MATERIALISED_MATRICES * 4 * size * size
    if device.startswith("cuda"):
        return needed < available_bytes(torch.device(device))
    return needed < 0.9 * available_bytes(torch.device(device))


def run(args: argparse.Namespace) -> list[dict]:
    """Measure every (family, size) and return one row per pair."""
    from rich.progress import track

    rows = []
    common = {"dim": args.dim, "device": args.device, "dtype": args.dtype, "repeats": args.repeats}
    limits: dict[int, dict] = {}
    jobs = [(f, m) for f in args.families for m in args.sizes]
    for family, size in track(jobs, description="bench loss"):
        if size not in limits:
            limits[size] = {
                kind: _in_fresh_process(kind, size=size, **common)["seconds"]
                if args.limit
                else None
                for kind in ("limit", "floor")
            }
        # every side is timed alike: the best of --repeats runs, in a fresh process
        tiled = _measured(family, "tiled", size, common)
        if size > args.max_baseline:
            base = {"error": f"not run (M > --max-baseline {args.max_baseline})"}
        elif not _fits(size, args.device):
            base = {"error": "skipped: would not fit"}
        else:
            base = _measured(family, "materialised", size, common)
        rows.append({"family": family, "M": size, **limits[size], "tiled": tiled, "base": base})
    return rows


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The results as a markdown table (one section per family)."""
    lines = [
        f"Date {date.today()}; machine: {cpu_model()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; device {args.device}; "
        f"dtype {args.dtype}; d = {args.dim}; forward + backward; peak memory above the "
        "process baseline, measured per size in a fresh process. Every time is the best of "
        f"{args.repeats} runs, every side alike; each peak is one more step in its own process "
        "(CPU: glibc's mmap threshold fixed, so the resident set follows the live tensors). "
        "Limit: for every upper-triangle tile the tiled engine visits, one forward GEMM, one "
        "exp over the tile and two backward GEMMs. Floor: the limit plus the backward's "
        "recomputation of each tile (one GEMM and one exp), which an exact method holding "
        "O(M·d) memory cannot skip. Both count every tile: DHEL's and KCL's energies hold "
        "same-view pairs only, so the engine skips the cross-view tiles and runs below them.",
        "",
    ]
    for family in args.families:
        lines += [
            f"### {family}",
            "",
            "| M | materialised s | tiled s | speed-up | materialised peak GB | tiled peak GB "
            "| limit s | tiled / limit | floor s | tiled / floor |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r["family"] == family):
            tiled, base = row["tiled"], row["base"]
            if "error" in tiled:
                lines.append(f"| {row['M']} | | error: {tiled['error']} | | | | | | | |")
                continue
            base_s = f"{base['seconds']:.2f}" if "seconds" in base else base["error"]
            speedup = f"{base['seconds'] / tiled['seconds']:.2f}×" if "seconds" in base else ""
            base_mem = _gb(base["peak_bytes"]) if "peak_bytes" in base else ""
            limit_cells = " | ".join(
                f"{row[kind]:.2f} | {tiled['seconds'] / row[kind]:.2f}"
                if row[kind]
                else "not run | "
                for kind in ("limit", "floor")
            )
            lines.append(
                f"| {row['M']:,} | {base_s} | {tiled['seconds']:.2f} | {speedup} | {base_mem} "
                f"| {_gb(tiled['peak_bytes'])} | {limit_cells} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """Run the benchmark, print the table, optionally save it."""
    args.families = args.families or list(FAMILIES)  # default: every loss
    publish("loss", table(run(args), args), args.output)


if __name__ == "__main__":
    serve_worker(
        {
            "limit": lambda **p: {"seconds": measure_limit(**p)},
            "floor": lambda **p: {"seconds": measure_floor(**p)},
            "loss": measure_loss,
            "engine_memory": lambda **p: {"peaks": measure_engine_memory(**p)},
        }
    )
