"""`raycl bench loss` times every side of its comparison alike and labels what it measured
(fast: the measurements are stubbed, the arithmetic is the report's)."""

from __future__ import annotations

import argparse

from raycl.bench import loss


def test_every_side_gets_the_same_repeats_and_the_limit_is_labelled(monkeypatch) -> None:
    asked = []

    def fake(kind: str, **kwargs: object) -> dict:
        asked.append((kind, kwargs))
        seconds = {"limit": 0.5, "loss": 1.0 if kwargs.get("impl") == "tiled" else 3.0}[kind]
        return {"seconds": seconds, "peak_bytes": 2**30}

    monkeypatch.setattr(loss, "_in_fresh_process", fake)
    args = argparse.Namespace(
        families=["infonce"], sizes=[4096], dim=128, device="cpu", dtype="float32",
        repeats=3, max_baseline=32768, limit=True,
    )  # fmt: skip
    text = loss.table(loss.run(args), args)
    assert {k for k, _ in asked} == {"limit", "loss"}
    assert all(kwargs["repeats"] == 3 for _, kwargs in asked)
    assert "best of 3 runs, every side alike" in text
    assert "| limit s | tiled / limit |" in text and "GEMMs s" not in text
    assert "| 4,096 | 3.00 | 1.00 | 3.00× | 1.00 | 1.00 | 0.50 | 2.00 |" in text
