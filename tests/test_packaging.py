"""The package as a user installs it: a wheel (not an editable checkout) with its configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_installs_and_trains_from_any_directory(tmp_path: Path) -> None:
    wheels, site, elsewhere = (tmp_path / d for d in ("wheels", "site", "elsewhere"))
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("raycl-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    # the wheel's raycl first on the path (its dependencies come from this environment)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def raycl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "raycl.cli", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import raycl.config as c; print(c.CONF_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)
    shown = raycl("train", "--cfg", "data=mnist1d", "model=conv1d")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "name: conv1d" in shown.stdout and "batch_size_per_worker: 128" in shown.stdout
    trained = raycl(
        "train",
        "epochs=1",
        "max_steps_per_epoch=2",
        "data.batch_size_per_worker=64",
        "eval.linear_probe=false",
        "eval.knn_k=20",
        "cluster.num_workers=0",  # what is tested is the installed package, not Ray Train
        f"storage_path={tmp_path / 'runs'}",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "runs" / "raycl-train" / "metrics.parquet").is_file()
    assert "epoch   1/1" in trained.stdout
