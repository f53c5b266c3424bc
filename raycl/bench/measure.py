"""Timing and peak-memory measurement shared by the benchmarks."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
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


def code_version() -> str:
    """The git commit raycl runs from, ``+dirty`` when its package files have uncommitted
    changes; ``raycl <version>`` outside a git checkout (for tables trained over sessions)."""
    import raycl

    package = Path(raycl.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"raycl {raycl.__version__}"
    return commit + ("+dirty" if changed else "")


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation can still get: the GPU's total, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(meminfo["MemAvailable"].split()[0]) * 1024


# glibc serves blocks below its mmap threshold from its heap and keeps them there when freed,
# and the threshold grows (up to 32 MiB) with every larger block freed: a CPU process's
# resident set then holds freed tensors, and its high-water mark overstates the live peak
# (the tiled InfoNCE at M = 32,768: 97 MB by default, 59 MB with the threshold fixed). Fixed
# at 128 KiB, every larger tensor is mapped on its own and unmapped when freed. The page
# faults slow tensor-heavy code about 2×, so time is measured in another process.
PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it.

    CUDA: the caching allocator's peak. CPU: the process's resident-set high-water mark
    (reset through /proc/self/clear_refs) minus its resident set before the call; freed heap
    memory is first handed back to the system (glibc ``malloc_trim``), else memory that
    earlier calls freed could serve this call's allocations without raising the resident set.
    On the CPU run it in a process started with :data:`PEAK_ENV` (see there).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _trim_heap()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return max(_status_kib("VmHWM") - before, 0) * 1024


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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


def in_fresh_process(module: str, kind: str, env: dict[str, str] | None = None, **kwargs) -> dict:
    """Run measurement ``kind`` of bench ``module`` in a new Python process (so its peak memory
    is its own) and return the JSON dict it prints last, or ``{"error": ...}``.

    The module answers through :func:`serve_worker` (``python -m MODULE --_worker KIND JSON``);
    ``env`` adds environment variables.
    """
    cmd = [sys.executable, "-m", module, "--_worker", kind, json.dumps(kwargs)]
    kills = oom_kills()
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    if out.returncode < 0:
        return {"error": killed_by(-out.returncode, kills, oom_kills())}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_and_peak(run: Callable[..., dict], env: dict[str, str] | None = None, **kwargs) -> dict:
    """A fresh-process measurement ``run(env=…, **kwargs)`` (e.g. :func:`in_fresh_process` with
    its module and kind bound) made twice: the times from one process, the peak bytes from
    another started with :data:`PEAK_ENV` and ``repeats=1`` (where that one fails, the timed
    process's own peak stays)."""
    timed = run(env=env, **kwargs)
    if "error" in timed:
        return timed
    peak = run(env={**(env or {}), **PEAK_ENV}, **{**kwargs, "repeats": 1})
    return {**timed, "peak_bytes": peak.get("peak_bytes", timed.get("peak_bytes"))}


OOM_COUNTERS = (  # the kernel's count of this cgroup's out-of-memory kills (v2, then v1)
    Path("/sys/fs/cgroup/memory.events"),
    Path("/sys/fs/cgroup/memory/memory.oom_control"),
)


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed in this cgroup; None
    where no counter can be read."""
    for counter in OOM_COUNTERS:
        try:
            lines = counter.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    return None


def killed_by(signum: int, kills_before: int | None, kills_after: int | None) -> str:
    """What ended a process that a signal killed: "out of memory" only when the kernel's
    counter of out-of-memory kills rose meanwhile."""
    name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
    if signum == signal.SIGKILL and kills_before is not None and kills_after is not None:
        if kills_after > kills_before:
            return "killed (out of memory)"
        return "killed (SIGKILL, not by the out-of-memory killer)"
    return f"killed ({name})"


def serve_worker(measurements: dict[str, Callable[..., dict]]) -> None:
    """The worker side of :func:`in_fresh_process`: run the asked measurement, print its JSON."""
    if len(sys.argv) == 4 and sys.argv[1] == "--_worker":
        print(json.dumps(measurements[sys.argv[2]](**json.loads(sys.argv[3]))))
