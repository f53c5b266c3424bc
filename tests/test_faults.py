"""Bad input and faults: what the user sees (one line, an exit code) and what is kept.

Each row of issue 15's table is a test here. Training runs in the driver process
(``cluster.num_workers=0``: the same loop, checkpoints and resume, no Ray) so they stay fast;
the slow tests at the end check the same through Ray Train workers.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raycl.checkpoint import verify_checkpoint
from raycl.cli import main
from raycl.config import load_config
from raycl.data import write_parquet_dataset
from raycl.errors import ConfigError, DataError, TrainingDiverged
from raycl.resume import RunLock
from raycl.runner import train
from tests.conftest import as_a_terminal_job

IN_PROCESS = [
    "cluster.num_workers=0",
    "eval.linear_probe=false",
    "eval.knn_k=5",
    "max_steps_per_epoch=2",
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raycl.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess, code: int, match: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stderr[-2000:]
    assert len(lines) == 1 and match in lines[0], lines


def run(tmp_path: Path, *overrides: str):
    return train(load_config([*IN_PROCESS, f"storage_path={tmp_path / 'runs'}", *overrides]))


def png(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(root: Path, corrupt: bool) -> Path:
    """root/{train,test}/<class>/<i>.png; with ``corrupt`` one training JPEG cut short."""
    for split, count in (("train", 8), ("test", 4)):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.png").write_bytes(png(100 * c + i))
    if corrupt:
        jpeg = io.BytesIO()
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(jpeg, format="JPEG")
        (root / "train" / "class1" / "broken.jpg").write_bytes(jpeg.getvalue()[:60])
    return root


PARQUET = ["data.batch_size_per_worker=2", "data.loader_workers=0"]
FOLDER = ["data=imagefolder", "data.image_size=8", "data.batch_size_per_worker=4"]
FOLDER += ["data.loader_workers=0", "model.width=4"]


# -- one line, before any training ------------------------------------------------------------


def test_a_batch_larger_than_the_data_set(tmp_path):
    done = cli("train", "data.batch_size_per_worker=4096", f"storage_path={tmp_path}")
    one_line(done, 2, "data.batch_size_per_worker=4096 × 1 worker(s) = 4096 items exceeds")


def test_a_missing_torchvision_data_set(tmp_path):
    done = cli("train", "data=cifar10", f"data.root={tmp_path}", f"storage_path={tmp_path}")
    one_line(done, 2, "CIFAR10 not found: no 'cifar-10-batches-py' folder")


def test_warm_up_longer_than_the_run(tmp_path):
    done = cli("train", "epochs=2", "optim.warmup_epochs=5", f"storage_path={tmp_path}")
    one_line(done, 2, "optim.warmup_epochs must not exceed epochs (2), got 5")


def test_parquet_without_labels_or_truncated_names_the_file(tmp_path):
    for split in ("train", "test"):
        write_parquet_dataset([png(i) for i in range(4)], [0, 1, 0, 1], tmp_path / split)
    train_file = tmp_path / "train" / "part-00000.parquet"
    pq.write_table(pa.table({"image": [png(0)]}), train_file)  # no label column
    with pytest.raises(DataError, match=r"part-00000.parquet has no 'label' column"):
        run(tmp_path, "data=parquet", f"data.root={tmp_path}", *PARQUET)
    write_parquet_dataset([png(i) for i in range(4)], [0, 1, 0, 1], tmp_path / "cut")
    cut = tmp_path / "cut" / "part-00000.parquet"
    train_file.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DataError, match=r"part-00000.parquet is not a readable Parquet file"):
        run(tmp_path, "data=parquet", f"data.root={tmp_path}", *PARQUET)


# -- bad items --------------------------------------------------------------------------------


def test_a_corrupt_image_stops_the_run_naming_the_file(tmp_path):
    root = image_folder(tmp_path / "images", corrupt=True)
    with pytest.raises(DataError, match=r"bad item \d+ \(.*broken\.jpg\).*on_bad_item=skip"):
        run(tmp_path, *FOLDER, f"data.root={root}", "epochs=1", "data.num_views=2")


def test_a_corrupt_image_is_skipped_counted_and_reported_once(tmp_path, capfd):
    root = image_folder(tmp_path / "images", corrupt=True)
    outcome = run(
        tmp_path,
        *FOLDER,
        f"data.root={root}",
        "epochs=2",
        "max_steps_per_epoch=null",
        "data.on_bad_item=skip",
    )
    # 17 training images, 4 a batch: 4 steps an epoch see 16 of them; the broken one, when
    # drawn, is replaced by the next good image and counted
    assert sum(h["bad_items"] for h in outcome.history) >= 1
    assert all(h["bad_items"] <= 1 for h in outcome.history)
    said = capfd.readouterr().err  # loader processes and evaluation included
    assert said.count("raycl: skipped bad item") == 1 and "broken.jpg" in said


def test_an_undecodable_parquet_row_names_file_and_row(tmp_path):
    images = [png(i) for i in range(6)]
    images[3] = b"not an image"
    write_parquet_dataset(images, [0, 1] * 3, tmp_path / "train", row_group_size=2)
    write_parquet_dataset([png(i) for i in range(4)], [0, 1] * 2, tmp_path / "test")
    with pytest.raises(DataError, match=r"bad item 3 \(.*part-00000\.parquet row 3\)"):
        run(
            tmp_path,
            "data=parquet",
            f"data.root={tmp_path}",
            "data.image_size=8",
            "data.batch_size_per_worker=6",
            "data.loader_workers=0",
            "model.width=4",
            "epochs=1",
        )


def cli_error(capsys, *argv: str) -> str:
    """``raycl ARGV`` in this process: its one stderr line (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_config_mistakes_are_one_line_naming_the_key_and_the_choices(tmp_path, capsys):
    extra = tmp_path / "conf" / "loss"
    extra.mkdir(parents=True)
    (extra / "broken.yaml").write_text("name: infonce\ntemperature: [0.1\n")
    (tmp_path / "empty" / "train" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "cats").mkdir(parents=True)
    cases = [
        (
            ["train", "--config-dir", str(tmp_path / "conf"), "loss=broken", "--cfg"],
            f"{extra / 'broken.yaml'}, line 3: not valid YAML: expected ',' or ']'",
        ),
        (["train", "data.batch_size_per_worker=-4", "--cfg"], "data.batch_size_per_worker must"),
        (["tune", "search.budget_trials=0", "--cfg"], "search.budget_trials must be >= 1"),
        (
            ["train", "loss=nosuch"],
            "loss=nosuch: no such option; choose one of clip, dhel, infonce,",
        ),
        (["tune", "search=bogus"], "search=bogus: no such option; choose one of asha, cd, gp,"),
        (
            ["train", "data=imagefolder", f"data.root={tmp_path / 'empty'}", "--cfg"],
            f"image folder '{tmp_path / 'empty' / 'train'}' holds no images",
        ),
    ]
    for argv, expected in cases:
        assert expected in cli_error(capsys, *argv)


def test_a_model_that_does_not_take_the_items_is_refused_by_cfg_naming_the_models(capsys):
    line = cli_error(capsys, "train", "data=mnist1d", "--cfg")  # the default 2-D small_cnn
    assert "model=small_cnn does not take the items of data=mnist1d (shape [1, 40]" in line
    assert line.endswith("choose model=conv1d")


def test_an_unwritable_storage_path_is_one_line_before_ray(tmp_path):
    import ray

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"storage_path=.*a-file/runs: cannot write there"):
        train(
            load_config([*IN_PROCESS, f"storage_path={blocker / 'runs'}", "cluster.num_workers=1"])
        )
    assert not ray.is_initialized()


# -- one run per name -------------------------------------------------------------------------


def test_a_second_driver_of_the_same_run_is_refused_while_the_first_lives(tmp_path):
    cfg = load_config([*IN_PROCESS, f"storage_path={tmp_path / 'runs'}", "name=busy"])
    with RunLock(cfg) as held:
        with pytest.raises(ConfigError, match=r"'busy' is being trained by PID \d+ on .*delete"):
            train(cfg)
        assert held.path.exists()
    assert not held.path.exists()  # released


def test_a_lock_left_by_a_dead_process_is_taken_over_one_from_another_host_is_not(tmp_path):
    import json
    import socket

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    lock = tmp_path / "runs" / ".stale.lock"
    lock.parent.mkdir(parents=True)
    host = socket.gethostname()
    lock.write_text(json.dumps({"host": host, "pid": int(gone.stdout), "started": "then"}))
    assert [h["epoch"] for h in run(tmp_path, "name=stale", "epochs=1").history] == [0]
    assert not lock.exists()
    elsewhere = tmp_path / "runs" / ".far.lock"
    elsewhere.write_text(json.dumps({"host": "node-7", "pid": 1, "started": "then"}))
    with pytest.raises(ConfigError, match=f"PID 1 on node-7 .* delete {elsewhere}"):
        run(tmp_path, "name=far", "epochs=1")


def test_a_run_that_failed_before_its_first_checkpoint_does_not_claim_its_name(tmp_path):
    with pytest.raises(TrainingDiverged):
        run(tmp_path, "name=retry", "epochs=2", "optim.lr=1e30")
    assert (tmp_path / "runs" / "retry" / "raycl-config.yaml").exists()
    again = run(tmp_path, "name=retry", "epochs=1", "loss=tcl")  # another config: not refused
    assert [h["epoch"] for h in again.history] == [0]
    run(tmp_path, "name=retry", "epochs=1", "loss=tcl")  # now it has a checkpoint: its config
    with pytest.raises(ConfigError, match="exists with another config"):
        run(tmp_path, "name=retry", "epochs=1")


# -- checkpoints and resuming -----------------------------------------------------------------


def test_a_truncated_latest_checkpoint_is_skipped_and_the_run_resumes(tmp_path):
    first = run(tmp_path, "name=cut", "epochs=3")
    run_dir = tmp_path / "runs" / "cut"
    latest = run_dir / "epoch-00002" / "state.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # a crash while writing
    assert verify_checkpoint(latest.parent) == "state.pt does not match its checksum"
    resumed = run(tmp_path, "name=cut", "epochs=3")  # the same epochs (more: test_train.py)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history[:2]  # epochs 0-1 came from the checkpoint
    assert (run_dir / "epoch-00002.corrupt").is_dir()  # set aside, not deleted
    assert verify_checkpoint(run_dir / "epoch-00002") is None  # written again, whole


def test_rerunning_a_name_with_another_config_is_refused_unless_fresh(tmp_path):
    run(tmp_path, "name=same", "epochs=1")
    with pytest.raises(ConfigError, match=r"'same' exists with another config: .*loss.name \('inf"):
        run(tmp_path, "name=same", "epochs=1", "loss=tcl")
    again = run(tmp_path, "name=same", "epochs=2", "eval.knn_k=7")  # resumable keys
    assert [h["epoch"] for h in again.history] == [0, 1]
    fresh = run(tmp_path, "name=same", "epochs=1", "loss=tcl", "fresh=true")
    assert [h["epoch"] for h in fresh.history] == [0]
    assert len(list((tmp_path / "runs").glob("same.*"))) == 1  # the old run, moved aside


def test_the_cli_says_which_keys_differ(tmp_path):
    run(tmp_path, "epochs=1")  # the first run in-process; the second, refused, by the CLI
    storage = f"storage_path={tmp_path / 'runs'}"
    done = cli("train", *IN_PROCESS, "epochs=1", "loss.temperature=0.2", storage)
    one_line(done, 2, "loss.temperature (0.1 -> 0.2)")


# -- through Ray Train workers (slow) ---------------------------------------------------------


@pytest.mark.slow
def test_an_error_inside_a_ray_worker_is_one_line_with_its_traceback_in_the_log(tmp_path):
    root = image_folder(tmp_path / "images", corrupt=True)
    done = cli(
        "train",
        *FOLDER,
        f"data.root={root}",
        "epochs=1",
        "max_steps_per_epoch=null",
        "cluster.num_workers=1",
        "eval.linear_probe=false",
        "eval.knn_k=5",
        f"storage_path={tmp_path / 'runs'}",
        "name=bad-item",
    )
    # Ray's own warnings may come first; the error is one line, its traceback not on screen
    assert done.returncode == 2, done.stderr[-2000:]
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("raycl: error: data: bad item") and "broken.jpg" in last
    assert "Error in training function" not in done.stderr
    log = tmp_path / "runs" / "bad-item" / "raycl-error.log"
    assert f"(traceback: {log})" in done.stderr
    assert "Traceback" in log.read_text() and "DataError" in log.read_text()


def test_embeddings_that_collapse_to_zero_stop_the_run_as_divergence(tmp_path):
    done = cli("train", *IN_PROCESS, "epochs=2", "optim.lr=1e6", f"storage_path={tmp_path}")
    one_line(done, 1, "raycl: training diverged: the embeddings collapsed to zero at the")
    assert "after epoch 0; the last good checkpoint is kept" in done.stderr


def test_all_zero_embeddings_in_a_step_are_divergence():
    import torch

    from raycl.errors import TrainingDiverged
    from raycl.losses import build_loss
    from raycl.train import training_step

    class Dead(torch.nn.Module):  # a collapsed encoder: every embedding zero
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            z = self.scale * x.flatten(1)
            return z, z

    model = Dead()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="the embeddings collapsed to zero"):
        training_step(
            model, torch.randn(4, 2, 3), None, build_loss("infonce"), optimizer,
            device=torch.device("cpu"),
        )  # fmt: skip


# Ray's own console lines: a log record (``2026-12-05 20:39:55,052\tWARNING ...``), a core
# worker's (``[2026-12-05 20:51:00,787 E 1992 2023] ...``), an actor's (``(RayTrainWorker
# pid=...)``), a Python warning or traceback.
RAY_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d|^\(\w+ pid=|Warning:|^Traceback")


def start_driver(*args: str) -> subprocess.Popen:
    """``raycl ARGS`` as a driver process of its own session (a terminal's job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "raycl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_a_terminal_job,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_new_epoch(driver: subprocess.Popen) -> list[str]:
    """The driver's stdout up to the first epoch line it trains."""
    seen = []
    for line in driver.stdout:
        seen.append(line)
        if line.startswith("epoch "):
            return seen
    raise AssertionError(f"no epoch trained: {seen} {driver.stderr.read()[-2000:]}")


def cluster_processes_of(driver_pid: int) -> list[int]:
    """Live processes of the local Ray cluster that ``driver_pid`` started."""
    mark = f"RAYCL_CLUSTER_OF={driver_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_the_readme_run_is_quiet_survives_sigkill_and_ctrl_c(tmp_path):
    """The README's ``raycl train`` (2 epochs of 2 steps here) on a Ray Train worker, as a
    subprocess: no line on the console is Ray's. Extended to 30 epochs, its driver SIGKILLed
    after an epoch: the next run takes over its lock, stops what its Ray left and resumes;
    interrupted with Ctrl-C (SIGINT to its process group, as a terminal sends it): one line,
    exit code 130, the lock released, the checkpoints whole."""
    args = ["train", "cluster.num_workers=1", f"storage_path={tmp_path}", "name=readme"]
    done = cli(*args, "epochs=2", "max_steps_per_epoch=2")
    assert done.returncode == 0, done.stderr[-2000:]
    foreign = [line for line in (done.stdout + done.stderr).splitlines() if RAY_LINE.search(line)]
    assert foreign == [], foreign
    assert "epoch   2/2" in done.stdout

    extended = [*args, "epochs=30", "max_steps_per_epoch=2"]
    killed = start_driver(*extended)
    seen = wait_for_new_epoch(killed)
    assert "raycl: resumed from epoch 2" in seen[0] and "epochs 2 -> 30" in seen[0], seen
    killed.kill()
    killed.communicate(timeout=60)
    assert (tmp_path / ".readme.lock").exists()  # left by the killed driver
    assert cluster_processes_of(killed.pid)  # Ray's agents outlive it for minutes

    interrupted = start_driver(*extended)
    seen = wait_for_new_epoch(interrupted)
    os.killpg(interrupted.pid, signal.SIGINT)
    _, err = interrupted.communicate(timeout=120)
    assert re.match(r"raycl: resumed from epoch (\d+) \(checkpoint ", seen[0]), seen
    assert cluster_processes_of(killed.pid) == []
    assert interrupted.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (
        "raycl: interrupted; the run keeps its checkpoints: run the same command again to resume it"
    ), err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / ".readme.lock").exists()
    assert all(verify_checkpoint(p) is None for p in (tmp_path / "readme").glob("epoch-*[0-9]"))
