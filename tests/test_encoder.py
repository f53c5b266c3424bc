"""Using a trained encoder: ``raycl.load_encoder``, ``raycl embed``, ``raycl export``.

A digits run trained here in the driver process (``cluster.num_workers=0``) is loaded,
embedded and exported; each result is checked against the encoder applied plainly to the
same items, and the exported files are loaded in a fresh Python without raycl.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import raycl
import raycl.embed
from raycl import metrics
from raycl.checkpoint import RUN_FILE, best_checkpoint, run_checkpoints, write_checksums
from raycl.cluster import cpus_per_actor
from raycl.config import load_config
from raycl.data import build_datasets
from raycl.embed import EmbedPlan, embed_to_parquet, plan_for
from raycl.encoder import load_encoder
from raycl.errors import CheckpointError, ConfigError, DataError
from raycl.export import export_encoder
from raycl.runner import train
from tests.conftest import IN_PROCESS_RUN, as_a_terminal_job, terminal_stop_signals

QUICK = IN_PROCESS_RUN


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-epoch digits run with a checkpoint per epoch."""
    storage = tmp_path_factory.mktemp("runs")
    outcome = train(load_config([*QUICK, f"storage_path={storage}", "name=digits"]))
    return Path(outcome.path)


def table(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    columns = {name: t[name].to_numpy(zero_copy_only=False) for name in t.column_names}
    for name in ("embedding", "projection"):
        if name in columns:
            columns[name] = np.stack(columns[name])
    return columns


def history_of(checkpoint: Path) -> dict[str, float]:
    return json.loads((checkpoint / "history.json").read_text())["history"][-1]


def test_the_best_checkpoint_by_the_runs_metric_is_loaded(run):
    checkpoints = run_checkpoints(run)
    assert [p.name for p in checkpoints] == ["epoch-00000", "epoch-00001"]
    scores = [history_of(p)["knn_top1"] for p in checkpoints]
    assert best_checkpoint(run) == checkpoints[int(np.argmax(scores))]  # mode max, by knn_top1
    encoder, transform, info = raycl.load_encoder(run)
    assert info.checkpoint == str(best_checkpoint(run).resolve())
    assert not encoder.training
    assert info.input_shape == [1, 8, 8] and info.config.model.width == 8
    assert info.metrics["knn_top1"] == max(scores)
    # the transform is the evaluation split's: a raw item becomes the split's item
    raw = build_datasets(info.config.data).test_eval.dataset.data[3]
    expected = build_datasets(info.config.data).test_eval[3][0]
    torch.testing.assert_close(transform(raw), expected, rtol=0, atol=0)
    # ... and the raw item is what scikit-learn gives a user: 8×8, pixel values 0..16
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    split = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    assert split[1][3].max() > 1  # 0..16, not scaled
    torch.testing.assert_close(transform(split[1][3]), expected, rtol=0, atol=0)
    torch.testing.assert_close(transform(split[1][3].reshape(64)), expected, rtol=0, atol=0)
    # a checkpoint directory is taken as it is
    _, _, latest = load_encoder(checkpoints[-1])
    assert latest.epoch == 1 and latest.checkpoint == str(checkpoints[-1].resolve())


def test_embed_equals_the_encoder_applied_in_process(run, tmp_path):
    plan = plan_for(run, overrides=["cluster.num_workers=0"], head=True)
    summary = embed_to_parquet(plan, tmp_path / "test.parquet")
    out = table(tmp_path / "test.parquet")
    model, _, info = load_encoder(run, with_head=True)
    split = build_datasets(info.config.data).test_eval
    items = torch.stack([split[i][0] for i in range(len(split))])
    with torch.no_grad():
        features, projection = model(items)
    assert summary["rows"] == len(split)
    np.testing.assert_array_equal(out["index"], np.arange(len(split)))
    assert len(set(out["id"])) == len(split)
    np.testing.assert_array_equal(out["label"], [split[i][1] for i in range(len(split))])
    np.testing.assert_allclose(out["embedding"], features.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["projection"], projection.numpy(), rtol=0, atol=1e-6)
    assert out["embedding"].dtype == np.float32
    width = pq.read_schema(tmp_path / "test.parquet").field("embedding").type.list_size
    assert width == features.shape[1] == model.out_dim


def test_normalize_gives_unit_rows(run, tmp_path):
    plan = plan_for(run, overrides=["cluster.num_workers=0"], normalize=True)
    embed_to_parquet(plan, tmp_path / "unit.parquet")
    norms = np.linalg.norm(table(tmp_path / "unit.parquet")["embedding"], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_knn_from_the_parquet_equals_the_runs_knn(run, tmp_path):
    splits = {}
    for split in ("train", "test"):
        plan = plan_for(run, overrides=["cluster.num_workers=0"], split=split)
        embed_to_parquet(plan, tmp_path / f"{split}.parquet")
        splits[split] = table(tmp_path / f"{split}.parquet")
    config = load_encoder(run)[2].config
    knn = metrics.knn_top1(
        torch.tensor(splits["train"]["embedding"]),
        torch.tensor(splits["train"]["label"]),
        torch.tensor(splits["test"]["embedding"]),
        torch.tensor(splits["test"]["label"]),
        k=config.eval.knn_k,
        temperature=config.eval.knn_temperature,
    )
    assert knn == pytest.approx(history_of(best_checkpoint(run))["knn_top1"], abs=1e-9)


def test_an_existing_output_is_kept_and_nothing_is_half_written(run, tmp_path):
    out = tmp_path / "e.parquet"
    out.write_text("keep me")
    plan = plan_for(run, overrides=["cluster.num_workers=0"])
    with pytest.raises(CheckpointError, match=r"e.parquet exists; pass --overwrite"):
        embed_to_parquet(plan, out)
    assert out.read_text() == "keep me"
    with pytest.raises(CheckpointError, match=r"exists; pass --overwrite"):
        export_encoder(run, tmp_path)

    bad = EmbedPlan(plan.request, plan.items, workers=-1)
    with pytest.raises(ConfigError, match=r"cluster.num_workers must be ≥ 0"):
        embed_to_parquet(bad, tmp_path / "never.parquet", overwrite=True)
    assert not list(tmp_path.glob("never*"))


def test_bad_paths_checkpoints_overrides_and_shapes_are_one_line_errors(run, tmp_path):
    with pytest.raises(CheckpointError, match=r"not a raycl run directory or checkpoint"):
        load_encoder(tmp_path)
    with pytest.raises(ConfigError, match=r"overrides data=…, data.\*, cluster.\* and eval"):
        plan_for(run, overrides=["loss.temperature=0.2"])
    with pytest.raises(DataError, match=r"items have shape \[1, 4, 4\]; the encoder takes"):
        plan_for(run, overrides=["data=synthetic", "data.item_shape=[1,4,4]"])
    # a checkpoint whose weights do not fit the model its config names
    checkpoint = tmp_path / "epoch-00001"
    subprocess.run(["cp", "-r", str(run_checkpoints(run)[-1]), str(checkpoint)], check=True)
    record = json.loads((checkpoint / RUN_FILE).read_text())
    record["config"]["model"]["width"] = 16
    (checkpoint / RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"does not verify"):
        load_encoder(checkpoint)
    write_checksums(checkpoint, 0)  # consistent files, but the wrong model
    with pytest.raises(CheckpointError, match=r"weights do not fit model 'small_cnn'"):
        load_encoder(checkpoint)


def test_the_commands_print_one_line_errors(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "raycl.cli", "embed", str(tmp_path), "--output", "x.parquet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"raycl: error: {tmp_path}: not a raycl run directory or checkpoint"
    ]


def with_recorded(run: Path, copy: Path, **changes: dict) -> Path:
    """A copy of ``run`` whose checkpoints record ``changes`` ({section: {key: value}}) in
    their config, their checksums rewritten (as someone sharing a run could)."""
    shutil.copytree(run, copy)
    for checkpoint in run_checkpoints(copy):
        record = json.loads((checkpoint / RUN_FILE).read_text())
        for section, values in changes.items():
            record["config"][section].update(values)
        (checkpoint / RUN_FILE).write_text(json.dumps(record))
        write_checksums(checkpoint, 0)
    return copy


@pytest.fixture
def no_ray(monkeypatch):
    """Connecting to or starting Ray fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError(f"Ray was started: {args} {kwargs}")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(raycl.embed, "connect_ray", refuse)


def test_embed_runs_where_its_command_line_says_not_where_the_run_was(run, tmp_path, no_ray):
    elsewhere = {"address": "ray://203.0.113.9:10001", "num_workers": 4, "use_gpu": True}
    shared = with_recorded(run, tmp_path / "downloaded", cluster=elsewhere)
    defaults = load_config().cluster
    plan = plan_for(shared)
    assert plan.address is None and (plan.workers, plan.use_gpu) == (defaults.num_workers, False)
    plan = plan_for(shared, overrides=["cluster.num_workers=3"])
    assert plan.address is None and plan.workers == 3
    plan = plan_for(shared, overrides=["cluster=local_gpu", "cluster.address=auto"])
    assert (plan.address, plan.workers, plan.use_gpu) == ("auto", 1, True)

    summary = embed_to_parquet(
        plan_for(shared, overrides=["cluster.num_workers=0"]), tmp_path / "e.parquet"
    )
    assert summary["rows"] == len(table(tmp_path / "e.parquet")["index"]) > 0
    # the encoder and its export never look at the recorded cluster either
    assert load_encoder(shared)[2].config.cluster.address == elsewhere["address"]  # the record
    assert (export_encoder(shared, tmp_path / "export") / "encoder.json").is_file()


def test_embed_refuses_a_checkpoint_that_does_not_load_before_ray_starts(run, tmp_path, no_ray):
    wrong = with_recorded(run, tmp_path / "wrong", model={"width": 16})
    with pytest.raises(CheckpointError, match=r"weights do not fit model 'small_cnn'"):
        plan_for(wrong, overrides=["cluster.num_workers=2"])


FRESH_PROCESS = r"""
import json, os, sys
import numpy as np, torch
from safetensors.torch import load_file
folder, inputs, expected = sys.argv[1], sys.argv[2], sys.argv[3]
x, want = torch.from_numpy(np.load(inputs)), np.load(expected)
description = json.load(open(f"{folder}/encoder.json"))
assert "raycl" not in sys.modules
scripted = torch.jit.load(f"{folder}/encoder.torchscript.pt")
with torch.no_grad():
    got = {"torchscript": scripted(x).numpy()}
if description["backbone"] == "torchvision.models.resnet18":
    os.chdir(folder)
    recipe = {}
    exec(description["loading"], recipe)  # the recipe as encoder.json writes it
    result = recipe["missing"]
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"], result
    assert not result.unexpected_keys, result
    with torch.no_grad():
        got["torchvision"] = recipe["model"](x).numpy()
for name, value in got.items():
    np.testing.assert_allclose(value, want, rtol=0, atol=1e-5, err_msg=name)
print("ok", sorted(got))
"""


@pytest.mark.parametrize("model", ["small_cnn", "resnet18"])
def test_an_export_runs_in_a_fresh_process_without_raycl(model, tmp_path, monkeypatch):
    overrides = ["model=resnet18", "model.cifar_stem=true"] if model == "resnet18" else []
    storage = tmp_path / "runs"
    quick = [*QUICK, "epochs=1", "max_steps_per_epoch=1"]
    outcome = train(load_config([*quick, *overrides, f"storage_path={storage}", "name=r"]))
    folder = export_encoder(outcome.path, tmp_path / "export", torchscript=True)
    encoder, _, info = load_encoder(outcome.path)
    x = torch.stack([build_datasets(info.config.data).test_eval[i][0] for i in range(16)])
    with torch.no_grad():
        want = encoder(x).numpy()
    files = ("x.npy", "want.npy")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "want.npy", want)
    description = json.loads((folder / "encoder.json").read_text())
    assert description["input_shape"] == [1, 8, 8] and description["feature_dim"] == want.shape[1]
    assert "pixel values 0..16" in description["input"]
    if model == "small_cnn":  # the recipe needs raycl's model code: run it here, as written
        monkeypatch.chdir(folder)
        recipe: dict = {}
        exec(description["loading"], recipe)
        with torch.no_grad():
            np.testing.assert_allclose(recipe["model"](x).numpy(), want, rtol=0, atol=1e-6)
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), *(str(tmp_path / f) for f in files)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ["torchscript", "torchvision"] if model == "resnet18" else ["torchscript"]
    assert done.stdout.strip() == f"ok {expected}"


def test_the_pictures_of_a_run(run, tmp_path):
    from raycl.embedding_map import plot_run

    written = plot_run(run, tmp_path)
    assert [p.name for p in written] == [
        "embeddings-test.parquet",
        "embedding-map.png",
        "neighbours.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in written[1:])


@pytest.mark.slow
def test_two_ray_data_workers_write_what_one_and_the_driver_write(run, tmp_path, ray_cluster):
    tables = {}
    for workers in (0, 1, 2):
        plan = plan_for(run, overrides=[f"cluster.num_workers={workers}", "eval.batch_size=64"])
        embed_to_parquet(plan, tmp_path / f"w{workers}.parquet")
        tables[workers] = pq.read_table(tmp_path / f"w{workers}.parquet")
    assert tables[1].equals(tables[0])
    assert tables[2].equals(tables[1])


@pytest.mark.slow
def test_an_actor_runs_a_torch_thread_per_cpu_it_holds(ray_cluster):
    """Read back inside actors of 1 and 3 CPUs, started with OMP_NUM_THREADS=1 (as a user's
    exported variable would): torch's threads are the actor's CPUs."""
    import ray

    @ray.remote
    def threads() -> tuple[int, int]:
        import torch

        from raycl.session import use_assigned_cpus

        before = torch.get_num_threads()
        return before, use_assigned_cpus()

    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    for cpus in (1, 3):
        before, after = ray.get(threads.options(num_cpus=cpus, runtime_env=env).remote())
        assert (before, after) == (1, cpus)


def test_embed_actors_share_the_cluster_cpus() -> None:
    assert cpus_per_actor(1, [2.0]) == 2  # one actor on a CPU node takes the node
    assert cpus_per_actor(2, [2.0]) == 1
    assert cpus_per_actor(1, [16.0, 16.0, 8.0]) == 8  # an actor runs on one node
    assert cpus_per_actor(4, [16.0, 16.0]) == 8
    assert cpus_per_actor(8, [2.0]) == 1  # never less than one
    assert cpus_per_actor(1, []) == 1


def test_a_best_checkpoint_that_fails_verification_is_named_with_the_one_used(
    run, tmp_path, capsys
):
    copy = tmp_path / "digits"
    shutil.copytree(run, copy)
    checkpoints = run_checkpoints(copy)
    scores = [history_of(p)["knn_top1"] for p in checkpoints]
    best, other = (checkpoints[i] for i in np.argsort(scores)[::-1])
    if scores[0] == scores[1]:  # ties go to the latest: make the earlier one strictly best
        history = json.loads((other / "history.json").read_text())
        history["history"][-1]["knn_top1"] = scores[0] + 1
        (other / "history.json").write_text(json.dumps(history))
        write_checksums(other, 0)
        best, other = other, best
    (best / "state.pt").write_bytes(b"cut short")
    _, _, info = load_encoder(copy)
    assert info.checkpoint == str(other.resolve())
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        f"raycl: the best checkpoint {best.name} does not verify (state.pt does not match "
        f"its checksum); using {other.resolve()} instead"
    )
    (other / "state.pt").unlink()
    with pytest.raises(CheckpointError) as failed:
        load_encoder(copy)
    message = str(failed.value)
    assert "\n" not in message and "no checkpoint verifies" in message
    assert all(p.name in message for p in checkpoints)


STOPS = {
    signal.SIGTERM: (143, "raycl: terminated (SIGTERM)"),
    signal.SIGINT: (130, "raycl: interrupted"),
}
MANY_ITEMS = ["data=synthetic", "data.num_items=5000000"]  # generated lazily, item by item
MANY_ITEMS += ["data.item_shape=[1,8,8]", "data.num_classes=10", "eval.batch_size=16"]


def signal_once_written(out: Path, stop: int, pid: int, done: threading.Event) -> None:
    """Send ``stop`` to ``pid`` once ``out``'s temporary file exists."""
    staging = out.with_name(out.name + ".tmp")
    deadline = time.monotonic() + 120
    while not staging.exists() and not done.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    if staging.exists():
        os.kill(pid, stop)


@pytest.mark.parametrize("stop", list(STOPS))
def test_embed_stopped_by_sigterm_or_ctrl_c_leaves_no_partial_output(run, tmp_path, capsys, stop):
    from raycl.cli import main

    out = tmp_path / "stopped.parquet"
    args = ["embed", str(run), "--output", str(out), *MANY_ITEMS, "cluster.num_workers=0"]
    done = threading.Event()
    sender = threading.Thread(target=signal_once_written, args=(out, stop, os.getpid(), done))
    sender.start()
    try:
        with terminal_stop_signals(), pytest.raises(SystemExit) as ended:
            main(args)
    finally:
        done.set()
        sender.join()
    code, line = STOPS[stop]
    assert ended.value.code == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert not out.with_name(out.name + ".tmp").exists() and not out.exists()


@pytest.mark.slow
def test_embed_on_ray_stopped_by_sigterm_leaves_no_partial_output(run, tmp_path):
    """The real path: ``raycl embed`` with Ray actors, as a process of its own (ray.init
    installs its own SIGTERM handler in the driver, which would abort it)."""
    out = tmp_path / "stopped.parquet"
    command = [sys.executable, "-m", "raycl.cli", "embed", str(run), "--output", str(out)]
    embed = subprocess.Popen(
        [*command, *MANY_ITEMS, "cluster.num_workers=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_a_terminal_job,
    )
    staging = out.with_name(out.name + ".tmp")
    try:
        deadline = time.monotonic() + 120
        while not staging.exists() and embed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert staging.exists(), "no output was being written"
        embed.send_signal(signal.SIGTERM)
        _, stderr = embed.communicate(timeout=60)
    finally:  # never leave an embedding (and its Ray) running past the test
        if embed.poll() is None:
            os.killpg(embed.pid, signal.SIGKILL)
            embed.communicate()
    assert embed.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == STOPS[signal.SIGTERM][1]
    assert "Traceback" not in stderr
    assert not staging.exists() and not out.exists()
