"""`raycl bench loss` times every side of its comparison alike and labels what it measured
(stubbed measurements: the arithmetic is the report's); the engine's memory per embedding is
at its floor (measured for real, in a fresh process)."""

from __future__ import annotations

import argparse

import pytest

from raycl.bench import loss
from raycl.bench.measure import PEAK_ENV, in_fresh_process
from raycl.bench.memory import ENGINE_COPIES


def test_every_side_gets_the_same_repeats_and_the_limits_are_labelled(monkeypatch) -> None:
    asked = []

    def fake(kind: str, env: dict | None = None, **kwargs: object) -> dict:
        asked.append((kind, env, kwargs))
        tiled = kwargs.get("impl") == "tiled"
        seconds = {"limit": 0.5, "floor": 0.8, "loss": 1.0 if tiled else 3.0}[kind]
        peak = 2**30 if env == PEAK_ENV else 5 * 2**30  # only the exact peak is reported
        return {"seconds": seconds, "peak_bytes": peak}

    monkeypatch.setattr(loss, "_in_fresh_process", fake)
    args = argparse.Namespace(
        families=["infonce"], sizes=[4096], dim=128, device="cpu", dtype="float32",
        repeats=3, max_baseline=32768, limit=True,
    )  # fmt: skip
    text = loss.table(loss.run(args), args)
    assert {k for k, _, _ in asked} == {"limit", "floor", "loss"}
    timed = [kwargs for _, env, kwargs in asked if env is None]
    assert timed and all(kwargs["repeats"] == 3 for kwargs in timed)
    assert "best of 3 runs, every side alike" in text
    assert "| limit s | tiled / limit | floor s | tiled / floor |" in text
    assert "| 4,096 | 3.00 | 1.00 | 3.00× | 1.00 | 1.00 | 0.50 | 2.00 | 0.80 | 1.25 |" in text


@pytest.mark.parametrize("dim", [128])
def test_engine_memory_per_embedding_is_at_its_floor(dim: int) -> None:
    """Forward + backward of every family (tiled, float32) holds at most its stated copies of
    the embeddings above the inputs, and at least the gradient (the measurement sees it)."""
    result = in_fresh_process(
        "raycl.bench.loss", "engine_memory", env=PEAK_ENV,
        families=sorted(ENGINE_COPIES), sizes=[1024, 4096], dim=dim, block_size=128,
    )  # fmt: skip
    assert "error" not in result, result
    for family, peaks in result["peaks"].items():
        per_embedding = loss.bytes_per_embedding({int(m): b for m, b in peaks.items()})
        copies = per_embedding / (4 * dim)
        assert 1.0 <= copies <= ENGINE_COPIES[family], (family, copies, peaks)
