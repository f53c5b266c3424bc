"""``raycl bench trials``: the overhead table and its verdict (the measurement itself is a
benchmark, run by hand)."""

from __future__ import annotations

from argparse import Namespace

from raycl.bench.trials import table


def test_overhead_is_wall_minus_training_and_judged_against_the_target():
    rows = [
        {"reuse_actors": False, "trials": 6, "wall": 20.0, "training": 12.0},
        {"reuse_actors": True, "trials": 6, "wall": 14.0, "training": 12.0},
    ]
    text = table(rows, Namespace(trials=6, epochs=5, overrides=[]))
    assert "| False | 6 | 20.0 | 12.0 | 8.0 | 40% | not met |" in text
    assert "| True | 6 | 14.0 | 12.0 | 2.0 | 14% | met |" in text
