"""Shared test fixtures: a tiny training recipe and a real local Ray cluster."""

from __future__ import annotations

import pytest

# Two epochs of two steps each, kNN only: enough to exercise a real trial end to end.
TINY_TRAINING = [
    "epochs=2",
    "data.batch_size=128",
    "max_steps_per_epoch=2",
    "eval.linear_probe=false",
    "eval.knn_k=20",
]


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local Ray cluster for one test module (never joins a recorded one)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
