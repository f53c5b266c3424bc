"""``raycl bench memory``: one measured step in-process, and the report's verdicts and on-paper
arithmetic from given measurements (the full benchmark runs by hand: benchmarks/memory.md)."""

from __future__ import annotations

import argparse
import signal

from raycl.bench import memory
from raycl.cli import build_parser

GB = 2**30


def test_measure_step_reports_peak_time_and_parameters():
    for chunk_size in (None, 4):
        result = memory.measure_step("small_cnn", 16, chunk_size, dim=16, repeats=1)
        assert result["peak_bytes"] >= 0 and result["seconds"] > 0 and result["cpu_seconds"] > 0
        assert result["params"] > 10_000


def _args(**overrides) -> argparse.Namespace:
    args = build_parser().parse_args(["bench", "memory"])
    assert args.run is memory.main
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def _row(model: str, batch: int, one: dict, chunked: dict) -> dict:
    return {"model": model, "batch": batch, "one pass": one, "chunked": chunked}


def test_report_verdicts_and_on_paper_arithmetic():
    step = {"params": 25_000_000}

    def ran(peak_gb: float, seconds: float) -> dict:
        return {"peak_bytes": peak_gb * GB, "seconds": seconds, "cpu_seconds": 2 * seconds}

    rows = [
        _row("small_cnn", 256, ran(0.1, 1.0), ran(0.1, 1.3)),
        _row("small_cnn", 16384, {"error": "skipped: ~9 GB predicted"}, ran(0.3, 50.0)),
        _row("small_cnn", 65536, {"error": "killed (out of memory)"}, ran(0.9, 200.0)),
        _row("resnet18", 256, ran(3, 10.0), ran(1, 15.0)),
    ]
    probe = {8: {"peak_bytes": 2 * GB, **step}, 16: {"peak_bytes": 3 * GB, **step}}
    text = memory.table({"rows": rows, "probe": probe}, _args(paper_chunk_size=64))
    assert "- Target 1 NOT met: small_cnn chunked peak at 16,384 items 0.30 GB = 3.00×" in text
    assert (
        "- Target 2 by CPU time NOT met: chunked / one-pass step ≤ 1.50× over the 2 sizes" in text
    )
    assert "- Target 2 by wall time NOT met: chunked / one-pass step ≤ 1.50×" in text
    assert "worst: resnet18 at 256 items" in text
    assert "| small_cnn | 65,536 | 0.03 | killed (out of memory) | " in text
    # a = 1 GB / 8 items = 128 MiB; usable = 0.9 · 80 GiB − 16 B · 25 M parameters.
    usable = 0.9 * 80 * GB - 16 * 25_000_000
    per_gpu = int(usable // (GB / 8))
    assert "**128 MB per item**" in text
    assert f"**{per_gpu:,} items**" in text and f"**{64 * per_gpu:,}** on 64" in text
    # e = (0.9 − 0.3) GB / 49,152 items less 512 B of inputs; N = (usable − 64 a) / e.
    e = 0.6 * GB / 49_152 - 512
    assert f"**{int((usable - 64 * GB / 8) // e):,} items**" in text


def test_report_without_measurements_says_so():
    rows = [_row("small_cnn", 256, {"error": "failed"}, {"error": "failed"})]
    text = memory.table({"rows": rows, "probe": {}}, _args())
    assert "Target 1 not measured" in text and "On paper: not computed" in text


def test_skip_reason_extrapolates_memory_along_the_measured_line(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 20 * GB)
    chunked = [
        {"batch": 1024, "peak_bytes": 2.5 * GB, "seconds": 100.0},
        {"batch": 4096, "peak_bytes": 2.6 * GB, "seconds": 400.0},
    ]
    # Memory: 2.6 GB + 0.1 GB / 3,072 items × 61,440 items = 4.6 GB fits; time: 6,400 s does not.
    assert memory._skip_reason(chunked, 65536, 600) == (
        "skipped: ~107 min predicted > --max-seconds 600"
    )
    assert memory._skip_reason(chunked, 8192, 1000) is None
    one_pass = [{"batch": 1024, "peak_bytes": 9 * GB, "seconds": 80.0}]  # proportional to B
    assert memory._skip_reason(one_pass, 4096, 600) == "skipped: ~36.00 GB predicted, 20.00 GB free"
    assert memory._skip_reason([], 4096, 600) is None


def test_a_killed_measurement_says_out_of_memory_only_when_the_kernel_counted_one():
    from raycl.bench.measure import killed_by

    assert killed_by(signal.SIGKILL, 3, 4) == "killed (out of memory)"
    assert killed_by(signal.SIGKILL, 3, 3) == "killed (SIGKILL, not by the out-of-memory killer)"
    assert killed_by(signal.SIGKILL, None, None) == "killed (SIGKILL)"
    assert killed_by(signal.SIGTERM, 3, 4) == "killed (SIGTERM)"
