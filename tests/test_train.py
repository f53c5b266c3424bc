"""Training on Ray Train: configuration errors (fast) and real runs on a local Ray cluster
(slow): 2 CPU workers, resume, a worker killed mid-run, divergence."""

from __future__ import annotations

import json
import math

import pytest

from raycl.checkpoint import run_checkpoints, verify_checkpoint
from raycl.config import ConfigError, load_config
from tests.conftest import paired_partners
from tests.test_towers import write_pair_folders

QUICK = [
    "epochs=2",
    "data.batch_size_per_worker=64",
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


def test_every_registry_name_has_its_yaml_and_every_yaml_composes():
    from raycl.config import group_options
    from raycl.data import DATASETS
    from raycl.losses import LOSSES
    from raycl.models import MODELS
    from raycl.optim import OPTIMIZERS
    from raycl.search.methods import METHODS
    from raycl.search.tuner import load_tune_config

    options = group_options()
    registries = {"loss": LOSSES, "data": DATASETS, "model": MODELS, "optim": OPTIMIZERS}
    registries["search"] = METHODS
    for group, names in registries.items():
        assert set(options[group]) == set(names), group
    assert set(options["space"]) == set(LOSSES)
    for group in ("loss", "data", "model", "optim", "cluster", "tracking"):
        for option in options[group]:
            cfg = load_config([*paired_partners(group, option), f"{group}={option}"])
            assert getattr(cfg, group) is not None
    for option in options["search"]:
        assert load_tune_config([f"search={option}"]).search.method == option


def run(tmp_path, *overrides):
    from raycl.runner import train

    return train(load_config([*QUICK, f"storage_path={tmp_path}", *overrides]))


@pytest.fixture(scope="module")
def clean(ray_cluster, tmp_path_factory):
    """One 3-epoch TCL run on two Ray Train workers: the end-to-end check below and the
    reference the run with a killed worker must reproduce."""
    storage = tmp_path_factory.mktemp("runs")
    return storage, run(storage, "name=clean", "loss=tcl", "epochs=3")


def assert_trained_and_reported(outcome, run_dir, epochs: int, global_batch: int) -> None:
    assert [h["epoch"] for h in outcome.history] == list(range(epochs))
    last = outcome.metrics
    assert last["global_batch"] == global_batch
    for key in ("loss", "loss_pos", "loss_ent", "knn_top1", "uniformity", "effective_rank"):
        assert math.isfinite(last[key])
    assert last["grad_norm_pos"] > 0 and last["grad_norm_ent"] > 0
    assert (run_dir / "metrics.parquet").exists()
    assert "knn_top1" in outcome.initial


@pytest.mark.slow
def test_two_workers_train_report_and_write_history(clean):
    storage, outcome = clean
    assert_trained_and_reported(outcome, storage / "clean", epochs=3, global_batch=128)


def test_chunked_training_reports_and_writes_history(tmp_path):
    """The chunked step end to end, in-process (tests/test_gradcache.py proves it equals the
    one-pass step, also for 2 gloo workers): 24 + 24 + 16 items a step."""
    chunked = ["data=synthetic", "data.num_items=512", "train.chunk_size=24", "loss=tcl"]
    outcome = run(tmp_path, "name=chunked", *chunked, "cluster.num_workers=0")
    assert_trained_and_reported(outcome, tmp_path / "chunked", epochs=2, global_batch=64)


@pytest.mark.slow
def test_rerun_with_a_corrupt_latest_checkpoint_resumes_extends_prunes_and_resumes_again(
    clean, capsys
):
    """Issue 23's worst case on Ray Train: the latest checkpoint of a finished run has a
    flipped byte; the run is extended by its name. Ray Train's own record of the run's
    checkpoints must forget the set-aside one, so the run prunes (2 kept), finishes with a
    live learning rate (the schedule re-planned over 4 epochs, not stuck at the 3-epoch
    plan's final 0) and can be resumed once more; nothing good is deleted."""
    storage, first = clean
    run_dir = storage / "clean"
    older = run_checkpoints(run_dir)[-2]  # the best by kNN, kept beside the latest
    done = int(older.name.removeprefix("epoch-")) + 1
    state = run_dir / "epoch-00002" / "state.pt"
    flipped = bytearray(state.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    state.write_bytes(bytes(flipped))

    second = run(storage, "name=clean", "loss=tcl", "epochs=4")
    said = capsys.readouterr()
    assert "skipping checkpoint" in said.err and "epoch-00002: state.pt does not match" in said.err
    assert f"resumed from epoch {done} (checkpoint {older}); epochs 3 -> 4" in said.out
    assert [h["epoch"] for h in second.history] == [0, 1, 2, 3]
    assert second.history[:done] == first.history[:done]
    assert second.history[2]["lr"] > 0.1 * second.history[0]["lr"]  # the 3-epoch plan: 0
    assert (run_dir / "epoch-00002.corrupt").is_dir()
    record = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    named = {r["checkpoint_dir_name"] for r in record["checkpoint_results"]}
    assert named == {p.name for p in run_checkpoints(run_dir)} and len(named) == 2
    assert all(verify_checkpoint(run_dir / name) is None for name in named)

    third = run(storage, "name=clean", "loss=tcl", "epochs=5")
    assert "resumed from epoch 4" in capsys.readouterr().out
    assert third.history[:4] == second.history
    assert [h["epoch"] for h in third.history] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_killed_worker_is_replaced_and_training_continues(clean, tmp_path):
    _, reference = clean
    chaos = run(
        tmp_path,
        "name=chaos",
        "loss=tcl",
        "epochs=3",
        "cluster.max_failures=1",
        "fault_injection_epoch=1",
    )
    assert (tmp_path / "chaos" / ".fault-injected").exists()
    assert [h["epoch"] for h in chaos.history] == [0, 1, 2]
    assert chaos.metrics["loss"] == pytest.approx(reference.metrics["loss"], rel=1e-3)
    assert chaos.metrics["knn_top1"] == pytest.approx(reference.metrics["knn_top1"], abs=1.0)


@pytest.mark.slow
def test_divergence_stops_with_a_clear_message(ray_cluster, tmp_path):
    from raycl.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"non-finite at epoch 0, step 1; the last good"):
        run(tmp_path, "name=nan", "epochs=3", "optim.lr=1e30")


@pytest.mark.slow
def test_a_two_tower_run_streams_pairs_to_two_workers_in_chunks(ray_cluster, tmp_path):
    """CLIP over WebDataset image–caption shards streamed by Ray Data (decoded and tokenised
    in its tasks) to two Ray Train workers, both towers gradient-cached: the gathered loss,
    the learnt scale and the two-tower evaluation end to end."""
    write_pair_folders(tmp_path / "pairs", "webdataset", n=256)
    towers = [
        "model=two_tower", "loss=clip", "data=pairs", f"data.root={tmp_path / 'pairs'}",
        "data.layout=webdataset", "data.ingest=ray_data", "data.image_size=16",
        "data.batch_size_per_worker=32", "data.class_names=[red,green,blue]",
        "model.text_layers=1", "train.chunk_size=12", "eval.knn_k=5",
    ]  # fmt: skip
    outcome = run(tmp_path, "name=towers", *towers, "epochs=1")
    last = outcome.metrics
    assert last["global_batch"] == 64 and last["steps"] == 4 and math.isfinite(last["loss"])
    assert 0 <= last["zero_shot_top1"] <= 100 and last["recall_t2i@10"] >= 0
    assert last["logit_scale"] != pytest.approx(1 / 0.07, abs=1e-6)  # it learnt
    assert last["grad_norm_pos"] > 0 and last["grad_norm_ent"] > 0


def test_a_chunk_larger_than_the_batch_is_one_chunk_as_the_readme_says():
    # README: "C ≥ the batch is one chunk"; a balance search that lowers the batch below a
    # configured chunk must not fail on it (the step's equality: tests/test_gradcache.py)
    cfg = load_config(["data.batch_size_per_worker=32", "train.chunk_size=256"])
    assert cfg.train.chunk_size == 256
