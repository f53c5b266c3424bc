"""Training on Ray Train: configuration errors (fast) and real runs on a local Ray cluster
(slow): 2 CPU workers, resume, a worker killed mid-run, divergence."""

from __future__ import annotations

import math

import pytest

from raycl.config import ConfigError, load_config

QUICK = [
    "epochs=2",
    "data.batch_size=64",
    "max_steps_per_epoch=4",
    "eval.linear_probe=false",
    "eval.knn_k=20",
    "cluster.num_workers=2",
]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["epochs=abc"], "epochs"),
        (["data.batch_siz=4"], "batch_siz"),
        (["cluster.num_workers=-1"], "cluster.num_workers must be >= 0"),
        (["loss=simclr"], "simclr"),
        (["loss.k1=5"], "Could not override 'loss.k1'"),
        (["+loss.k1=5"], "has no parameter 'k1'"),
        (["loss.temperature=0"], "temperature must be > 0"),
        (["cluster.precision=fp8"], "cluster.precision"),
        (["data.num_views=1"], "data.num_views"),
        (["train.chunk_size=0"], "train.chunk_size must be >= 1"),
        (["train.chunk_size=-4"], "train.chunk_size must be >= 1"),
        (["train.chunk_siz=4"], "chunk_siz"),
    ],
)
def test_bad_config_is_a_one_line_error(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(overrides)
    assert "\n" not in str(info.value)


def test_every_shipped_group_option_composes():
    for group, options in {
        "loss": ["infonce", "supcon", "tcl", "dhel", "kcl", "margin"],
        "model": ["small_cnn", "resnet18", "resnet50"],
        "optim": ["adamw", "sgd", "lars"],
        "cluster": ["local_cpu", "local_gpu", "gpu_multinode"],
        "data": [
            "digits",
            "cifar10",
            "cifar100",
            "stl10",
            "imagefolder",
            "cub200",
            "parquet",
            "synthetic",
        ],
    }.items():
        for option in options:
            cfg = load_config([f"{group}={option}"])
            assert cfg[group]["name" if group != "cluster" else "num_workers"] is not None


def run(tmp_path, *overrides):
    from raycl.train import train

    return train(load_config([*QUICK, f"storage_path={tmp_path}", *overrides]))


CHUNKED = ["data=synthetic", "data.num_items=512", "train.chunk_size=24"]  # 24 + 24 + 16


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [[], CHUNKED], ids=["one-pass", "chunked-synthetic"])
def test_two_workers_train_report_and_write_history(ray_cluster, tmp_path, chunks):
    outcome = run(tmp_path, "name=basic", "loss=tcl", *chunks)
    assert [h["epoch"] for h in outcome.history] == [0, 1]
    last = outcome.metrics
    assert last["global_batch"] == 128
    for key in ("loss", "loss_pos", "loss_ent", "knn_top1", "uniformity", "effective_rank"):
        assert math.isfinite(last[key])
    assert last["grad_norm_pos"] > 0 and last["grad_norm_ent"] > 0
    assert (tmp_path / "basic" / "metrics.parquet").exists()
    assert "knn_top1" in outcome.initial


@pytest.mark.slow
def test_rerun_with_same_name_resumes(ray_cluster, tmp_path):
    first = run(tmp_path, "name=resume", "epochs=2")
    second = run(tmp_path, "name=resume", "epochs=4")
    assert [h["epoch"] for h in second.history] == [0, 1, 2, 3]
    assert second.history[:2] == first.history


@pytest.mark.slow
def test_killed_worker_is_replaced_and_training_continues(ray_cluster, tmp_path):
    clean = run(tmp_path, "name=clean", "epochs=3")
    chaos = run(
        tmp_path, "name=chaos", "epochs=3", "cluster.max_failures=1", "fault_injection_epoch=1"
    )
    assert (tmp_path / "chaos" / ".fault-injected").exists()
    assert [h["epoch"] for h in chaos.history] == [0, 1, 2]
    assert chaos.metrics["loss"] == pytest.approx(clean.metrics["loss"], rel=1e-3)
    assert chaos.metrics["knn_top1"] == pytest.approx(clean.metrics["knn_top1"], abs=1.0)


@pytest.mark.slow
def test_divergence_stops_with_a_clear_message(ray_cluster, tmp_path):
    from raycl.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"non-finite at epoch 0, step 1; the last good"):
        run(tmp_path, "name=nan", "epochs=3", "optim.lr=1e30")
