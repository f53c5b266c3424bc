"""Experiment tracking through Ray's own integrations (``tracking=none|tensorboard|mlflow``).

:func:`train_callbacks` gives the Ray Train callbacks of a ``raycl train`` run and
:func:`tune_callbacks` the Ray Tune callbacks of a ``raycl tune`` search. Both log every
metric an epoch reports (the loss terms, the balance diagnostic ``grad_norm_pos`` and
``grad_norm_ent``, kNN top-1, ...) at step = epochs completed (``epoch + 1``: Tune's
``training_iteration`` and the console's "epoch k/E"), and the full config as flattened dotted
keys (``loss.temperature``, ``loss.weight``, ``data.batch_size_per_worker``, ...), credentials
redacted (``tracking.uri=https://user:***@host``; :func:`raycl.errors.redact`).

- ``tensorboard``: event files written by tensorboardX (what Tune's logger uses). Train: in the
  run directory ``<storage_path>/<name>/``, the config as TensorBoard hparams; tune: in each
  trial's directory through Tune's ``TBXLoggerCallback``, its hparams the trial's full config
  (Tune's own lists only the searched keys). ``tensorboard --logdir <storage_path>``.
- ``mlflow``: one MLflow run per training run (rerunning the same ``storage_path``/``name``
  resumes it, as training resumes) and per trial (Tune's ``MLflowLoggerCallback``), in the
  experiment ``name``, at ``tracking.uri`` or, when null, a local file store
  ``file://<storage_path>/mlruns``. MLflow 3 keeps its file store in maintenance mode and
  refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; raycl sets that (if unset) for a file
  store, and reading it back (``mlflow ui``, ``MlflowClient``) needs it as well.

Ray Train V2 ships no TensorBoard or MLflow callback (``setup_mlflow`` is for the worker's
loop), so training uses two small ``UserCallback`` s writing with the same libraries. They run in
the Train controller, an actor on the driver's node, so a local ``storage_path`` or file store is
the driver's disk. Ray Train's local mode (``cluster.num_workers=0``) runs no callbacks: nothing
is tracked there. Tune's callbacks run in the driver. Tune adds its default TensorBoard logger
(and CSV/JSON) to every trial whatever ``tracking`` says.

Remote storage (``storage_path=s3://...``): Tune writes a trial's event files into the trial's
local staging directory on the driver and uploads them with the rest of the trial directory.
Training hands the run directory's URI to tensorboardX, which writes ``s3://`` itself with
``boto3`` (and ``gs://`` with ``google-cloud-storage``; each flush re-uploads the whole file),
so that package and credentials must be on the driver's node; other schemes are refused here.
MLflow's default file store cannot live at a URI: ``tracking.uri`` is required then (an MLflow
server, ``databricks``, a ``sqlite:`` database, ...). None of the remote paths is tested here.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.train import UserCallback
from ray.tune.logger import TBXLoggerCallback

from raycl.config import (
    ConfigError,
    flat_config,
    redacted,
    storage_path,
    training_config,
    trial_config,
)
from raycl.errors import redact
from raycl.schema import TrainConfig, TuneRunConfig

logger = logging.getLogger(__name__)

RUN_DIR_TAG = "raycl.run_dir"  # an MLflow run's tag: the training run directory it tracks


def train_callbacks(cfg: TrainConfig) -> list[Any]:
    """Ray Train callbacks logging every epoch's metrics, the config and the balance."""
    kind = cfg.tracking.name
    if kind == "none":
        return []
    if cfg.cluster.num_workers == 0:
        logger.warning("tracking=%s: Ray Train's local mode runs no callbacks", kind)
    if kind == "tensorboard":
        _check_tensorboard_storage(storage_path(cfg))
        return [TensorBoardReports(config_params(cfg), cfg.epochs)]
    return [MLflowReports(mlflow_tracking_uri(cfg), cfg.name, config_params(cfg), cfg.epochs)]


def tune_callbacks(cfg: TrainConfig) -> list[Any]:
    """Ray Tune callbacks logging every trial's metrics and config."""
    kind = cfg.tracking.name
    if kind == "none":
        return []
    base = redacted(training_config(cfg) if isinstance(cfg, TuneRunConfig) else cfg)
    if kind == "tensorboard":
        return [TrialTensorBoard(base)]
    return [TrialMLflow(base, mlflow_tracking_uri(cfg), cfg.name)]


def config_params(cfg: TrainConfig) -> dict[str, Any]:
    """The config as tracked params: flattened, credentials redacted (``tracking.uri`` is
    ``https://user:***@host``)."""
    return flat_config(redacted(cfg))


def trial_params(base: TrainConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """A trial's full training config, flattened: ``base`` with its searched ``settings``,
    credentials redacted."""
    return config_params(trial_config(base, settings))


def mlflow_tracking_uri(cfg: TrainConfig) -> str:
    """``tracking.uri``, or a file store ``<storage_path>/mlruns`` beside the runs (MLflow must
    be installed: the ``tracking`` extra)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking=mlflow needs MLflow: pip install 'raycl[tracking]'")
    if cfg.tracking.uri:
        return cfg.tracking.uri
    storage = storage_path(cfg)
    if "://" in storage:
        raise ConfigError(
            f"tracking.uri is required with storage_path={storage} "
            "(MLflow's file store is local): an MLflow server, databricks, sqlite:///..."
        )
    return Path(storage, "mlruns").as_uri()


def epoch_scalars(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of one report (bools and text left out)."""
    return {
        key: float(value)
        for key, value in report.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


# --- Ray Train (V2): callbacks in the Train controller ---------------------------------------


class TensorBoardReports(UserCallback):
    """Every report's metrics (rank 0's) as TensorBoard scalars in the run directory; the
    config as hparams (their session starts with the first report, ends with the last epoch).

    Written synchronously with tensorboardX's event-file writer, the file flushed after each
    report (``SummaryWriter`` queues events for a thread, which a killed run would lose).
    """

    def __init__(self, params: dict[str, Any], epochs: int) -> None:
        self.params, self.epochs = params, epochs
        self._events = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_events": None}  # the file lives in the controller only

    def after_report(self, run_context, metrics, checkpoint) -> None:
        from tensorboardX.summary import hparams, scalar

        report = epoch_scalars(metrics[0])
        step = int(report["epoch"]) + 1
        if self._events is None:
            self._events = _event_file(_run_dir(run_context))
            self._write(step, *hparams(self.params, report)[:2])
        self._write(step, *(scalar(key, value) for key, value in report.items()))
        if step == self.epochs:
            self._write(step, hparams(self.params, report)[2])
            self._events.close()
            self._events = None
        else:
            self._events.flush()

    def _write(self, step: int, *summaries) -> None:
        from tensorboardX.proto.event_pb2 import Event

        for summary in summaries:
            self._events.write_event(Event(wall_time=time.time(), step=step, summary=summary))


def _event_file(directory: str):
    """A new TensorBoard event file in ``directory`` (tensorboardX names files by the second and
    host: a random suffix keeps a resumed run's file from replacing the last one)."""
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.record_writer import directory_check

    directory_check(directory)
    return EventsWriter(f"{directory}/events", f".{uuid.uuid4().hex[:8]}")


class MLflowReports(UserCallback):
    """Every report's metrics (rank 0's) in one MLflow run per training run, the config as its
    params. A resumed run (same run directory) continues its MLflow run, logging only the params
    it lacks (MLflow params cannot change)."""

    def __init__(self, uri: str, experiment: str, params: dict[str, Any], epochs: int) -> None:
        self.uri, self.experiment, self.params, self.epochs = uri, experiment, params, epochs
        self._run_id: str | None = None
        self._failed = False

    def after_report(self, run_context, metrics, checkpoint) -> None:
        from mlflow.entities import Metric

        client = mlflow_client(self.uri)
        if self._run_id is None:
            self._run_id = self._start(client, _run_dir(run_context))
        elif self._failed:
            client.update_run(self._run_id, status="RUNNING")
        self._failed = False
        report = epoch_scalars(metrics[0])
        step, now = int(report["epoch"]) + 1, int(time.time() * 1000)
        client.log_batch(
            self._run_id, metrics=[Metric(mlflow_key(k), v, now, step) for k, v in report.items()]
        )
        if step == self.epochs:
            client.set_terminated(self._run_id, "FINISHED")

    def after_exception(self, run_context, worker_exceptions) -> None:
        if self._run_id is not None and not self._failed:
            mlflow_client(self.uri).set_terminated(self._run_id, "FAILED")
            self._failed = True

    def _start(self, client, run_dir: str) -> str:
        experiment_id = mlflow_experiment(client, self.experiment)
        run_dir = redact(run_dir)  # a tag: the storage URI's credentials stay out of it
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if found:
            run = found[0]
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = client.create_run(
                experiment_id, run_name=Path(run_dir).name, tags={RUN_DIR_TAG: run_dir}
            )
        logged = run.data.params
        log_params(
            client, run.info.run_id, {k: v for k, v in self.params.items() if k not in logged}
        )
        return run.info.run_id


def _run_dir(run_context) -> str:
    run_config = run_context.get_run_config()
    return f"{str(run_config.storage_path).rstrip('/')}/{run_config.name}"


# --- Ray Tune: Ray's own logger callbacks, with the trial's full config ----------------------


class TrialTensorBoard(TBXLoggerCallback):
    """Tune's ``TBXLoggerCallback`` (tags ``ray/tune/<metric>``, hparams written when a trial
    ends) with the trial's full training config as its hparams, not only the searched keys
    (overriding its ``_try_log_hparams``, as in Ray 2.60, which raycl pins)."""

    def __init__(self, base: TrainConfig) -> None:
        super().__init__()
        self.base = base

    def _try_log_hparams(self, trial, result: dict[str, Any]) -> None:
        from tensorboardX.summary import hparams

        writer = self._trial_writer[trial].file_writer
        for summary in hparams(trial_params(self.base, trial.config), result):
            writer.add_summary(summary)


class TrialMLflow(MLflowLoggerCallback):
    """Tune's ``MLflowLoggerCallback`` (one run per trial; it logs the searched settings as
    params) plus the rest of the trial's full training config as params."""

    def __init__(self, base: TrainConfig, uri: str, experiment: str) -> None:
        super().__init__(uri, experiment_name=experiment)
        self.base = base

    def setup(self, *args, **kwargs) -> None:
        allow_file_store(self.tracking_uri)
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial) -> None:
        super().log_trial_start(trial)
        params = trial_params(self.base, trial.config)
        rest = {k: v for k, v in params.items() if k not in trial.config}
        log_params(mlflow_client(self.tracking_uri), self._trial_runs[trial], rest)

    def log_trial_result(self, iteration: int, trial, result: dict[str, Any]) -> None:
        super().log_trial_result(iteration, trial, {mlflow_key(k): v for k, v in result.items()})


# --- MLflow helpers --------------------------------------------------------------------------


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts: other characters (``recall@1``) become ``_``, as
    tensorboardX does to TensorBoard tags (``recall_1`` in both)."""
    return re.sub(r"[^-/\w.]", "_", name)  # tensorboardX's own rule


def allow_file_store(uri: str) -> None:
    """Let MLflow 3 open a file store (its ``MLFLOW_ALLOW_FILE_STORE`` opt-in), unless the
    environment says otherwise."""
    if urlparse(uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri`` (a file store allowed)."""
    from mlflow.tracking import MlflowClient

    allow_file_store(uri)
    return MlflowClient(tracking_uri=uri)


def mlflow_experiment(client, name: str) -> str:
    """The id of the MLflow experiment ``name``, created if it does not exist."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created meanwhile by another run?
        if experiment is None:
            raise
        return experiment.experiment_id


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """``params`` on an MLflow run, in batches of MLflow's 100-per-call limit."""
    from mlflow.entities import Param

    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _check_tensorboard_storage(storage: str) -> None:
    scheme = storage.split("://")[0] if "://" in storage else None
    if scheme not in (None, "s3", "gs"):
        raise ConfigError(
            f"tracking=tensorboard writes local paths, s3:// and gs:// (tensorboardX), "
            f"not storage_path={storage}"
        )
