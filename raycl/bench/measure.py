"""Timing and peak-memory measurement shared by the benchmarks."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_model() -> str:
    """The processor's model name (for benchmark headers)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it.

    CUDA: the caching allocator's peak. CPU: the process's resident-set high-water mark
    (reset through /proc/self/clear_refs) minus its resident set before the call.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return max(_status_kib("VmHWM") - before, 0) * 1024


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Best time of ``repeats`` calls of ``fn`` in seconds: wall time on the CPU; on CUDA the
    time between two CUDA events recorded around the call (host gaps inside it included)."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
            continue
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def publish(bench: str, text: str, output: str | None) -> None:
    """Print a benchmark's report and, with ``output``, write it there under a title."""
    print(text)
    if output:
        Path(output).write_text(f"# raycl bench {bench}\n\n{text}\n")
