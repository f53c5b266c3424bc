"""Operating raycl: `raycl analyze` on real Tune experiments, resuming a killed search,
`raycl submit` against a real token-authenticated head node, and one-line CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raycl.search.tuner import load_tune_config
from tests.conftest import TINY_TRAINING, free_port, start_ray_node

REPO = Path(__file__).resolve().parent.parent


def raycl(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raycl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, match: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], result.stderr


# --- fast: CLI errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["train", "loss.bogus=1"], "Could not override 'loss.bogus'"),
        (["tune", "search=grid"], "search"),
        (["analyze", "/nonexistent/experiment"], "no Tune experiment at /nonexistent/experiment"),
        (["submit", "--address", "http://127.0.0.1:9", "list"], "127.0.0.1:9"),
        (["submit", "--token-file", "/nonexistent/token", "list"], "--token-file"),
        (["submit", "train", "epochs=zero"], "epochs"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, match):
    assert_one_line_error(raycl(*args, timeout=120), match)


# --- slow: analyze ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """Two small real experiments: CD (all trials fine) and one with an errored trial."""
    ray = pytest.importorskip("ray")
    from raycl.search.tuner import run_search

    storage = tmp_path_factory.mktemp("tune")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_search(
            load_tune_config(
                [
                    *TINY_TRAINING,
                    "search=cd",
                    "search.budget_trials=4",
                    f"storage_path={storage}",
                    "name=cd",
                ]
            )
        )
        run_search(
            load_tune_config(
                [
                    *TINY_TRAINING,
                    "search=cd",
                    "search.budget_trials=3",
                    f"storage_path={storage}",
                    "name=broken",
                    "~space.loss",
                    "~space.data",
                    "+space.data.batch_size_per_worker="
                    "{scale:categorical,values:[128,4096],start:128}",
                ]
            )
        )
    finally:
        ray.shutdown()
    return storage


@pytest.mark.slow
def test_analyze_tables_export_and_plots(experiments, tmp_path):
    from raycl.search.analysis import analyze

    out = tmp_path / "results.parquet"
    loaded = analyze(
        [str(experiments / "cd"), str(experiments / "broken")],
        export=str(out),
        plots=str(tmp_path / "plots"),
    )
    cd, broken = loaded
    assert len(cd.trials) == 4 and not cd.trials["error"].any()
    assert set(cd.searched) >= {"loss.temperature"} or set(cd.searched) >= {"loss.weight"}
    assert broken.trials["error"].sum() == 1  # the 4096-item batch cannot be drawn
    table = pd.read_parquet(out)
    assert {"experiment", "trial_id", "training_iteration", "knn_top1"} <= set(table.columns)
    assert table["knn_top1"].dtype.kind == "f"
    assert table["config/loss.temperature"].dtype.kind == "f"
    assert len(table) == cd.epochs.shape[0] + broken.epochs.shape[0]
    for name in ("best_so_far.png", "landscape.png", "best_trial_terms.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000


@pytest.mark.slow
def test_analyze_cli_prints_top_trials(experiments):
    result = raycl("analyze", str(experiments / "cd"), "--top", "2", "--sort", "epochs")
    assert result.returncode == 0, result.stderr
    assert "cd: top 2 of 4 trials" in result.stdout


# --- slow: a killed search resumes ------------------------------------------------------------


@pytest.mark.slow
def test_killed_tune_driver_resumes_without_rerunning_trials(tmp_path):
    args = [
        "tune",
        *TINY_TRAINING,
        "search=cd",
        "search.budget_trials=4",
        "search.max_concurrent_trials=1",
        f"storage_path={tmp_path}",
        "name=resume",
    ]
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "raycl.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    experiment = tmp_path / "resume"
    deadline = time.time() + 240
    while time.time() < deadline and len(finished_trials(experiment)) < 2:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = finished_trials(experiment)
    assert 2 <= len(before) < 4

    resumed = raycl(*args, "search.resume=true", env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = finished_trials(experiment)
    assert len(after) == 4
    for trial_id, config in before.items():  # finished trials kept, not rerun
        assert after[trial_id] == config
    configs = [json.dumps(c, sort_keys=True) for c in after.values()]
    assert len(set(configs)) == len(configs)  # the CD state continued: no config twice


def finished_trials(experiment: Path) -> dict[str, dict]:
    """Trial id -> config of every trial that reported its last epoch."""
    done = {}
    for result_file in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        if rows and rows[-1].get("training_iteration") == 2:
            config = {k: v for k, v in rows[-1]["config"].items() if k != "raycl_search"}
            done[rows[-1]["trial_id"]] = config
    return done


# --- slow: raycl submit against a token-authenticated head node ---------------------------------


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A token-authenticated head node on 127.0.0.1 (``ray start --block`` in its own session,
    so that stopping it ends its processes only, never another Ray on the machine)."""
    token = "raycl-test-" + os.urandom(16).hex()
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # Jobs run `python -m raycl.cli ...`: the head's PATH must find this environment's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    gcs_port = free_port()
    head = start_ray_node(
        "--head",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--num-cpus=2",
        "--include-dashboard=true",
        env=env,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while (
            raycl("submit", "--address", address, "list", env={"RAY_AUTH_TOKEN": token}).returncode
            != 0
        ):
            assert head.poll() is None and time.time() < deadline, "head node did not start"
            time.sleep(0.5)
        yield {"address": address, "token": token, "storage": tmp_path_factory.mktemp("jobs")}
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # its own session: this node's processes only
        head.wait()
        # `ray start` records the cluster for later `ray.init()` calls; forget ours.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{gcs_port}"):
            current.unlink()


@pytest.mark.slow
def test_submit_with_token_runs_a_training_job(head_node):
    result = raycl(
        "submit",
        "--address",
        head_node["address"],
        "train",
        "--follow",
        "--submission-id",
        "raycl-test-job",
        *TINY_TRAINING,
        "epochs=1",
        "cluster.address=auto",
        "cluster.num_workers=0",  # the job trains in its driver: what is tested is the job
        f"storage_path={head_node['storage']}",
        env={"RAY_AUTH_TOKEN": head_node["token"]},
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "submitted raycl-test-job" in result.stdout
    assert "kNN top-1" in result.stdout and "SUCCEEDED" in result.stdout
    status = raycl(
        "submit",
        "--address",
        head_node["address"],
        "status",
        "raycl-test-job",
        env={"RAY_AUTH_TOKEN": head_node["token"]},
    )
    assert "SUCCEEDED" in status.stdout
    listing = raycl(
        "submit",
        "--address",
        head_node["address"],
        "list",
        env={"RAY_AUTH_TOKEN": head_node["token"]},
    )
    assert "raycl-test-job" in listing.stdout


@pytest.mark.slow
def test_submit_without_token_is_refused(head_node, tmp_path):
    env = {
        "RAY_AUTH_TOKEN": "",
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none"),
        "HOME": str(tmp_path),
    }
    result = raycl("submit", "--address", head_node["address"], "list", env=env)
    assert_one_line_error(result, "raycl: error:")
    wrong = raycl(
        "submit",
        "--address",
        head_node["address"],
        "list",
        env={**env, "RAY_AUTH_TOKEN": "not-the-token"},
    )
    assert_one_line_error(wrong, "raycl: error:")
