"""A real two-node Ray cluster on one machine (run by tests/test_multinode.py in a pytest
process of its own): a head and a second node started with
``ray start`` (own ports, one CPU each), workers placed one per node (``STRICT_SPREAD``).

1. The gathered loss across the two nodes equals one process on the concatenated batch
   (value and embedding gradient).
2. The second node is killed mid-run; with ``cluster.max_failures`` the run waits for a node,
   one is started again, and the run finishes every epoch with no checkpoint lost.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from raycl.config import load_config
from tests.conftest import free_port, start_ray_node

pytestmark = pytest.mark.slow


# The head's health checks every 0.5 s, a node dead after 2 missed (3 s and 5 by default): the
# killed node is noticed in about a second rather than about fifteen.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "2"}


def start_node(gcs_port: int, head: bool) -> subprocess.Popen:
    """A head (``--port``) or a node joining it, one CPU, authentication disabled."""
    role = ["--head", f"--port={gcs_port}"] if head else [f"--address=127.0.0.1:{gcs_port}"]
    return start_ray_node(
        *role,
        "--num-cpus=1",
        *(["--include-dashboard=false"] if head else []),
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **FAST_NODE_DEATH},
    )


def alive_nodes(ray) -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


@pytest.fixture(scope="module")
def two_nodes():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    gcs_port = free_port()
    previous_auth = os.environ.get("RAY_AUTH_MODE")
    nodes = [start_node(gcs_port, head=True)]
    try:
        wait_for(lambda: listening(gcs_port), 60, "the head's GCS port")
        nodes.append(start_node(gcs_port, head=False))
        os.environ["RAY_AUTH_MODE"] = "disabled"  # the nodes' mode, for this driver too
        deadline = time.time() + 60
        while True:
            try:
                ray.init(address=f"127.0.0.1:{gcs_port}", log_to_driver=False)
                break
            except Exception:
                assert time.time() < deadline, "the head node did not start"
                time.sleep(0.5)
        wait_for(lambda: alive_nodes(ray) == 2, 60, "two nodes")
        yield {"ray": ray, "gcs_port": gcs_port, "nodes": nodes}
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            stop(node)
        if previous_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_auth


GLOBAL = torch.randn(2, 8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _gathered_loss_worker(config: dict) -> None:
    """One rank: its half of GLOBAL's items through the gathered InfoNCE loss; it saves its
    node, the global loss and its embedding gradient for the test to read."""
    import ray
    import ray.train

    from raycl.distributed import distributed_loss
    from raycl.losses import build_loss

    rank = ray.train.get_context().get_world_rank()
    views = GLOBAL[:, 4 * rank : 4 * rank + 4].clone().requires_grad_(True)
    out = distributed_loss(build_loss("infonce", temperature=0.5), views)
    out.backward_total.backward()
    saved = {
        "node": ray.get_runtime_context().get_node_id(),
        "loss": out.global_terms.total.detach(),
        "grad": views.grad,
    }
    torch.save(saved, Path(config["out"]) / f"rank{rank}.pt")


def test_the_gathered_loss_across_two_nodes_equals_one_process(two_nodes, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raycl.losses import build_loss

    TorchTrainer(
        _gathered_loss_worker,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(
            num_workers=2, resources_per_worker={"CPU": 1}, placement_strategy="STRICT_SPREAD"
        ),
        run_config=RunConfig(storage_path=str(tmp_path / "storage"), name="gather"),
    ).fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["node"] != ranks[1]["node"]  # one worker per node
    views = GLOBAL.clone().requires_grad_(True)
    reference = build_loss("infonce", temperature=0.5)(views)
    reference.total.backward()
    for r, saved in enumerate(ranks):
        torch.testing.assert_close(saved["loss"], reference.total.detach(), rtol=1e-12, atol=0)
        # backward_total = W · L_k: rank k's embedding gradient is W · ∂L/∂z_k (W = 2)
        torch.testing.assert_close(saved["grad"], 2 * views.grad[:, 4 * r : 4 * r + 4])


def test_a_killed_node_is_replaced_and_the_run_finishes(two_nodes, tmp_path):
    from raycl.checkpoint import verify_checkpoint
    from raycl.runner import train

    ray, nodes = two_nodes["ray"], two_nodes["nodes"]
    cfg = load_config(
        [
            "epochs=4",
            "data.batch_size_per_worker=64",
            "max_steps_per_epoch=3",
            "eval.linear_probe=false",
            "eval.knn_k=5",
            "cluster.num_workers=2",
            "cluster.placement_strategy=STRICT_SPREAD",
            "cluster.max_failures=1",
            f"cluster.address=127.0.0.1:{two_nodes['gcs_port']}",
            f"storage_path={tmp_path}",
            "name=survivor",
        ]
    )
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = train(cfg)
        except Exception as err:  # reported by the assertion below
            outcome["error"] = err

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    run_dir = tmp_path / "survivor"
    wait_for(lambda: (run_dir / "epoch-00000").is_dir(), 240, "the first epoch's checkpoint")
    stop(nodes.pop())  # the second node dies mid-run
    # not finished when it died: with one worker gone no step can complete (the gather needs
    # both ranks), so finishing every epoch below means the worker group was restarted
    assert runner.is_alive() and not (run_dir / "epoch-00003").exists()
    wait_for(lambda: alive_nodes(ray) == 1, 90, "Ray to see the node gone")
    nodes.append(start_node(two_nodes["gcs_port"], head=False))  # a replacement joins
    runner.join(timeout=400)
    assert not runner.is_alive(), "the run did not finish after the node came back"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    checkpoints = sorted(p.name for p in run_dir.glob("epoch-*"))
    assert checkpoints[-1] == "epoch-00003"
    assert all(verify_checkpoint(run_dir / name) is None for name in checkpoints)
