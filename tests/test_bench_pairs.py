"""`raycl bench pairs` and `raycl bench towers`: every side timed alike and the report's
arithmetic (stubbed measurements), the sides' own code on tiny inputs (for real)."""

from __future__ import annotations

import argparse

import pytest

from raycl.bench import pairs, towers
from raycl.bench.measure import PEAK_ENV


def test_every_side_is_timed_alike_and_the_memory_is_stated_per_pair(monkeypatch) -> None:
    asked = []

    def fake(kind: str, env: dict | None = None, **kwargs: object) -> dict:
        asked.append((kind, env, kwargs))
        seconds = {"open_clip": 2.0, "materialised": 4.0, "tiled": 1.0}.get(kwargs.get("impl"), 0.5)
        peak = kwargs["pairs"] * 1000 if env == PEAK_ENV else 10**12  # the exact peak only
        return {"seconds": seconds, "peak_bytes": peak}

    monkeypatch.setattr(pairs, "_fresh", fake)
    args = argparse.Namespace(
        families=["siglip"], sizes=[4096, 8192], dim=128, repeats=3, max_baseline=4096,
        extrapolate=1_000_000,
    )  # fmt: skip
    text = pairs.table(pairs.run(args), args)
    timed = [kwargs for kind, env, kwargs in asked if kind == "pairs" and env is None]
    assert {k["impl"] for k in timed} == set(pairs.IMPLS)
    assert all(k["repeats"] == 3 for _, env, k in asked if env is None)
    assert "| 4,096 | 2.00 | 4.00 | 1.00 | 2.00× |" in text and "| 0.50 | 2.00 |" in text
    assert "| 8,192 | not run (N > --max-baseline 4096) |" in text
    assert (
        "Tiled peak: 1,000 bytes per pair" in text and "at 1,000,000 pairs that is 0.93 GB" in text
    )


@pytest.mark.parametrize("impl", pairs.IMPLS)
@pytest.mark.parametrize("family", pairs.FAMILIES)
def test_each_side_runs_a_step(family, impl) -> None:
    measured = pairs.measure_pairs(family, impl, pairs=64, dim=8, warmup=16)
    assert measured["seconds"] > 0 and measured["peak_bytes"] >= 0


def test_the_plain_loop_trains_open_clips_model() -> None:
    measured = towers.plain_loop(batch=16, steps=2, epochs=1, threads=1)
    assert measured["samples_per_s"] > 0
