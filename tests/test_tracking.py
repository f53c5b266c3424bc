"""Experiment tracking: the flattened config and the callbacks' files (fast, no Ray), and real
``raycl train`` / ``raycl tune`` runs whose TensorBoard event files and local MLflow store are
read back and compared with the runs' own metrics (slow)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from raycl.config import ConfigError, flat_config, has_key, load_config
from raycl.tracking import (
    MLflowReports,
    TensorBoardReports,
    mlflow_client,
    mlflow_tracking_uri,
    train_callbacks,
    tune_callbacks,
)
from tests.conftest import TINY_TRAINING

BALANCE = ("grad_norm_pos", "grad_norm_ent")


# --- reading TensorBoard event files back (TFRecord framing + tensorboardX's protos) ---------


def read_events(directory: Path) -> list:
    """Every event of the ``events.out.tfevents.*`` files directly in ``directory``."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):  # length (8), its CRC (4), the record, its CRC (4)
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(Event.FromString(data[at + 12 : at + 12 + length]))
            at += 16 + length
    return events


def scalars(events: list) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalar summaries."""
    found: dict[str, dict[int, float]] = {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def hparams(events: list) -> tuple[dict[str, object], list[str]]:
    """The hparams session's values and the ended sessions' statuses."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    values, ends = {}, []
    for event in events:
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name != "hparams":
                continue
            data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
            for key, item in data.session_start_info.hparams.items():
                values[key] = getattr(item, item.WhichOneof("kind"))
            if data.HasField("session_end_info"):
                ends.append(data.session_end_info.status)
    return values, ends


def as_logged(params: dict[str, object]) -> dict[str, object]:
    """A flattened config as TensorBoard hparams hold it (numbers as float64)."""
    return {
        k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in params.items()
    }


# --- fast: the config, the URIs, the callbacks without Ray -----------------------------------


def test_flat_config_gives_every_key_dotted_with_the_balance_knobs():
    cfg = load_config(["loss=tcl", "eval.recall_ks=[1,5]"])
    flat = flat_config(cfg)
    assert all(has_key(cfg, key) for key in flat)
    assert flat["loss.name"] == "tcl" and flat["loss.weight"] == cfg.loss["weight"]
    assert flat["data.batch_size_per_worker"] == 256 and flat["eval.linear_probe"] is True
    assert flat["eval.recall_ks"] == "[1, 5]" and flat["tracking.uri"] == "null"
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())


def test_mlflow_store_defaults_to_a_file_store_beside_the_runs(tmp_path):
    cfg = load_config(["tracking=mlflow", f"storage_path={tmp_path}"])
    assert mlflow_tracking_uri(cfg) == (tmp_path / "mlruns").as_uri()
    given = load_config(["tracking=mlflow", "tracking.uri=http://mlflow:5000"])
    assert mlflow_tracking_uri(given) == "http://mlflow:5000"
    remote = load_config(["tracking=mlflow", "storage_path=s3://bucket/runs"])
    with pytest.raises(ConfigError, match=r"tracking\.uri is required"):
        train_callbacks(remote)


def test_tensorboard_refuses_storage_tensorboardx_cannot_write():
    with pytest.raises(ConfigError, match="not storage_path=hdfs://"):
        train_callbacks(load_config(["tracking=tensorboard", "storage_path=hdfs://nn/runs"]))
    assert train_callbacks(load_config(["tracking=tensorboard", "storage_path=s3://b/r"]))


@pytest.mark.parametrize("tracking", ["none", "tensorboard", "mlflow"])
def test_callbacks_survive_pickling(tmp_path, tracking):
    """Ray ships Train callbacks to its controller and pickles Tune's with the experiment."""
    import ray.cloudpickle

    from raycl.search.tuner import load_tune_config

    overrides = [f"tracking={tracking}", f"storage_path={tmp_path}"]
    train = train_callbacks(load_config(overrides))
    tune = tune_callbacks(load_tune_config(overrides))
    assert len(train) == len(tune) == (tracking != "none")
    for callback in [*train, *tune]:
        assert type(ray.cloudpickle.loads(ray.cloudpickle.dumps(callback))) is type(callback)


@pytest.fixture
def opt_in_unset(monkeypatch):
    """``MLFLOW_ALLOW_FILE_STORE`` unset (raycl sets it for its file store), and after the test
    as it was before."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # remembers the original state
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def fake_run_context(run_dir: Path):
    config = SimpleNamespace(storage_path=str(run_dir.parent), name=run_dir.name)
    return SimpleNamespace(get_run_config=lambda: config)


REPORTS = [
    {"epoch": e, "loss": 5.0 - e / 3, "grad_norm_pos": 0.1 + e, "grad_norm_ent": 1e-3, "x": "s"}
    for e in range(3)
]
REPORTS[-1]["recall@1"] = 0.75  # a name MLflow refuses: recall_1 (as tensorboardX's tag)


def test_tensorboard_callback_writes_each_report_and_the_config(tmp_path):
    params = flat_config(load_config())
    callback = TensorBoardReports(params, epochs=3)
    context = fake_run_context(tmp_path / "run")
    for report in REPORTS:
        callback = pickle.loads(pickle.dumps(callback))  # as if the controller restarted
        callback.after_report(context, [report, {"loss": -1.0}], None)
    events = read_events(tmp_path / "run")
    logged = scalars(events)
    assert set(logged) == {"epoch", "loss", "recall_1", *BALANCE}  # numbers only; rank 0's
    assert logged["recall_1"] == {3: 0.75}
    for key in ("loss", *BALANCE):
        assert logged[key] == {r["epoch"] + 1: np.float32(r[key]) for r in REPORTS}
    values, ends = hparams(events)
    assert values == {k: v for k, v in as_logged(params).items()} and ends == [1]  # success


def test_mlflow_callback_logs_each_report_and_continues_a_resumed_run(tmp_path, opt_in_unset):
    uri = (tmp_path / "mlruns").as_uri()
    params = flat_config(load_config())
    context = fake_run_context(tmp_path / "run")
    first = MLflowReports(uri, "exp", params, epochs=3)
    first.after_report(context, REPORTS[:1], None)
    first.after_exception(context, {0: RuntimeError("worker died")})
    resumed = MLflowReports(uri, "exp", {**params, "epochs": 99}, epochs=3)  # rerun, same dir
    for report in REPORTS[1:]:
        resumed.after_report(context, [report], None)

    client = mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    for key in ("loss", *BALANCE):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [
            (r["epoch"] + 1, r[key]) for r in REPORTS
        ]
    assert run.data.metrics["recall_1"] == 0.75
    assert run.data.params == {k: str(v) for k, v in params.items()}  # params never change
    assert run.data.params["loss.temperature"] == "0.1"


def test_logged_params_hold_no_credentials(tmp_path, opt_in_unset):
    uri = "https://alice:s3cr3t@mlflow.example.com/?token=s3cr3t"
    overrides = [f"tracking.uri='{uri}'", f"storage_path={tmp_path}"]
    (board,) = train_callbacks(load_config(["tracking=tensorboard", *overrides]))
    (mlflow,) = train_callbacks(load_config(["tracking=mlflow", *overrides]))
    assert mlflow.uri == uri  # MLflow is reached with the real URI; it is never logged
    context = fake_run_context(tmp_path / "run")
    board.after_report(context, REPORTS[-1:], None)
    store = (tmp_path / "mlruns").as_uri()
    MLflowReports(store, "exp", mlflow.params, epochs=3).after_report(context, REPORTS[:1], None)

    shown = "https://alice:***@mlflow.example.com/?token=***"
    assert hparams(read_events(tmp_path / "run"))[0]["tracking.uri"] == shown
    client = mlflow_client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.data.params["tracking.uri"] == shown
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not [p for p in files if b"s3cr3t" in p.read_bytes()]


class FakeTrial:
    """What Tune's logger callbacks read from a trial."""

    def __init__(self, path: Path, config: dict) -> None:
        self.local_path, self.config, self.evaluated_params = str(path), config, config

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        return "run_trial_00000"


def test_tune_mlflow_callback_logs_the_trials_full_config(tmp_path, opt_in_unset):
    from raycl.search.tuner import load_tune_config

    cfg = load_tune_config(["tracking=mlflow", f"storage_path={tmp_path}"])
    (callback,) = tune_callbacks(cfg)
    callback.setup()
    trial = FakeTrial(tmp_path / "trial", {"raycl_search": "random", "loss.temperature": 0.25})
    callback.log_trial_start(trial)
    for report in REPORTS:
        callback.log_trial_result(1, trial, {**report, "training_iteration": report["epoch"] + 1})
    callback.log_trial_end(trial)

    client = mlflow_client((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["trial_name"] == str(trial)
    for key in ("loss", *BALANCE):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [
            (r["epoch"] + 1, r[key]) for r in REPORTS
        ]
    assert run.data.metrics["recall_1"] == 0.75
    params = run.data.params
    assert params["loss.temperature"] == "0.25" and params["loss.weight"] == "1.0"
    assert params["model.width"] == str(cfg.model.width) and "search.method" not in params


# --- slow: real runs on a local Ray cluster --------------------------------------------------

TRAIN = [*TINY_TRAINING, "cluster.num_workers=1"]


def train_run(tmp_path: Path, tracking: str):
    from raycl.runner import train

    cfg = load_config([*TRAIN, f"tracking={tracking}", f"storage_path={tmp_path}", "name=run"])
    outcome = train(cfg)
    history = pq.read_table(Path(outcome.path) / "metrics.parquet").to_pylist()
    assert [row["epoch"] for row in history] == [0, 1]
    return cfg, Path(outcome.path), history


@pytest.mark.slow
def test_train_with_tensorboard_logs_every_epoch_and_the_config(ray_cluster, tmp_path):
    cfg, run_dir, history = train_run(tmp_path, "tensorboard")
    events = read_events(run_dir)
    logged = scalars(events)
    assert set(history[0]) <= set(logged)  # every per-epoch metric
    for key in ("loss", "knn_top1", *BALANCE):
        assert logged[key] == {row["epoch"] + 1: np.float32(row[key]) for row in history}
    values, ends = hparams(events)
    assert values == as_logged(flat_config(cfg)) and ends == [1]


@pytest.mark.slow
def test_train_with_mlflow_logs_every_epoch_and_the_config(ray_cluster, tmp_path):
    cfg, _, history = train_run(tmp_path, "mlflow")
    client = mlflow_client((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    assert run.info.status == "FINISHED"
    assert set(history[0]) <= set(run.data.metrics)
    for key in ("loss", "knn_top1", *BALANCE):
        logged = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in logged) == [
            (row["epoch"] + 1, row[key]) for row in history
        ]
    assert run.data.params == {k: str(v) for k, v in flat_config(cfg).items()}
    assert run.data.params["loss.temperature"] == str(cfg.loss["temperature"])


@pytest.mark.slow
@pytest.mark.parametrize("tracking", ["tensorboard", "mlflow"])
def test_tune_tracks_every_trial(ray_cluster, tmp_path, tracking):
    from raycl.config import training_config, trial_config
    from raycl.search.tuner import load_tune_config, run_search

    cfg = load_tune_config(
        [
            *TINY_TRAINING,
            "epochs=1",
            "search=random",
            "search.budget_trials=2",
            f"tracking={tracking}",
            f"storage_path={tmp_path}",
        ]
    )
    outcome = run_search(cfg)
    assert len(outcome.results) == 2 and not outcome.results.errors
    if tracking == "mlflow":
        client = mlflow_client((tmp_path / "mlruns").as_uri())
        runs = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
        assert len(runs) == 2
    for result in outcome.results:
        reports = result.metrics_dataframe
        assert list(reports["epoch"]) == [0] and list(reports["training_iteration"]) == [1]
        params = flat_config(trial_config(training_config(cfg), result.config))
        if tracking == "tensorboard":
            events = read_events(Path(result.path))
            logged = scalars(events)
            for key in ("loss", "knn_top1", *BALANCE):
                assert logged[f"ray/tune/{key}"] == {1: np.float32(reports[key].iloc[0])}
            assert hparams(events)[0] == as_logged(params)  # the full config, not the space
        else:
            (run,) = [r for r in runs if r.data.tags["trial_name"] in result.path]
            for key in ("loss", "knn_top1", *BALANCE):
                logged = client.get_metric_history(run.info.run_id, key)
                assert [(m.step, m.value) for m in logged] == [(1, reports[key].iloc[0])]
            assert {k: str(v) for k, v in params.items()}.items() <= run.data.params.items()
            assert run.data.params["loss.temperature"] == str(result.config["loss.temperature"])
