"""No secrets in what raycl writes or shows: credentials in URIs are redacted in the recorded
and printed config, the tracked params, one-line errors and the traceback log; ``raycl submit``
refuses them (a job's entrypoint is public to the cluster) and ships no secret or run; the
error log of a run without a writable local directory is the user's own (fast, no Ray)."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from raycl import submit
from raycl.checkpoint import RUN_FILE, run_checkpoints
from raycl.cli import main
from raycl.config import load_config, redacted, to_yaml
from raycl.errors import TrainingFailed, first_line, private_temp_dir, redact
from raycl.runner import ERROR_LOG, explained, train
from tests.conftest import IN_PROCESS_RUN, excluded

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55"
WITH_PASSWORD = f"https://alice:{SECRET}@mlflow.example.com:5000/api"
WITH_TOKEN = f"https://mlflow.example.com/api?experiment=7&token={SECRET}"
URIS = {
    WITH_PASSWORD: "https://alice:***@mlflow.example.com:5000/api",
    WITH_TOKEN: "https://mlflow.example.com/api?experiment=7&token=***",
}
QUICK = [*IN_PROCESS_RUN, "epochs=1", "max_steps_per_epoch=1"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        *URIS.items(),
        (f"https://{SECRET}@github.com/o/r.git", "https://***@github.com/o/r.git"),
        (f"s3://b/k?X-Amz-Credential=a&X-Amz-Signature={SECRET}", "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***"),
        (f"postgresql://u:{SECRET}@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require"),
        (f"cannot reach {WITH_PASSWORD}: no", f"cannot reach {URIS[WITH_PASSWORD]}: no"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("file:///runs/mlruns", "file:///runs/mlruns"),
        ("databricks", "databricks"),
        ("https://host/a@b?page=2", "https://host/a@b?page=2"),
    ],
)  # fmt: skip
def test_redact_hides_passwords_and_secret_parameters_and_keeps_the_rest(text, shown):
    assert redact(text) == shown
    assert redact(shown) == shown  # idempotent: a record redacted twice is the same


@pytest.mark.parametrize("uri", URIS)
def test_the_printed_config_is_redacted(uri, capsys):
    main(["train", "--cfg", "tracking=mlflow", f"tracking.uri='{uri}'"])
    printed = capsys.readouterr().out
    assert SECRET not in printed and f"uri: {URIS[uri]}" in printed
    assert load_config([f"tracking.uri='{uri}'"]).tracking.uri == uri  # the run keeps the real one


def test_a_runs_records_hold_no_credentials_and_it_resumes(tmp_path):
    overrides = [*QUICK, f"tracking.uri='{WITH_PASSWORD}'", f"storage_path={tmp_path}", "name=r"]
    outcome = train(load_config(overrides))
    run = Path(outcome.path)
    recorded = (run / "raycl-config.yaml").read_text()
    assert SECRET not in recorded and URIS[WITH_PASSWORD] in recorded
    for checkpoint in run_checkpoints(run):
        config = json.loads((checkpoint / RUN_FILE).read_text())["config"]
        assert config["tracking"]["uri"] == URIS[WITH_PASSWORD]
    assert not [p for p in run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    # a rerun compares redacted configs, also with a record written before redaction: it
    # resumes with its credentials changed
    (run / "raycl-config.yaml").write_text(recorded.replace(URIS[WITH_PASSWORD], WITH_PASSWORD))
    rotated = f"tracking.uri='{WITH_PASSWORD.replace(SECRET, 'rotated')}'"
    resumed = train(load_config([*overrides, rotated, "epochs=2"]))
    assert [row["epoch"] for row in resumed.history] == [0, 1]


@pytest.mark.parametrize("uri", URIS)
def test_tracked_params_are_redacted(uri, tmp_path):
    from raycl.search.tuner import load_tune_config
    from raycl.tracking import train_callbacks, trial_params, tune_callbacks

    cfg = load_config(["tracking=mlflow", f"tracking.uri='{uri}'", f"storage_path={tmp_path}"])
    (callback,) = train_callbacks(cfg)
    assert callback.params["tracking.uri"] == URIS[uri] and callback.uri == uri
    assert trial_params(cfg, {"loss.temperature": 0.2})["tracking.uri"] == URIS[uri]
    tune = load_tune_config(["tracking=tensorboard", f"tracking.uri='{uri}'"])
    (trials,) = tune_callbacks(tune)
    assert trials.base.tracking.uri == URIS[uri]  # what Tune pickles with the experiment


@pytest.mark.parametrize("uri", URIS)
def test_submit_refuses_credentials_before_reaching_the_cluster(uri, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the cluster was contacted")

    monkeypatch.setattr(submit, "client", never)
    with pytest.raises(submit.SubmitError) as refused:
        submit.submit("train", ["tracking=mlflow", f"tracking.uri='{uri}'"], working_dir=str(ROOT))
    message = str(refused.value)
    assert "\n" not in message and SECRET not in message
    assert message.startswith("tracking.uri holds credentials") and "MLFLOW_TRACKING_" in message


def test_submit_puts_a_clean_uri_in_the_entrypoint(monkeypatch, capsys):
    jobs = {}

    class Jobs:
        def submit_job(self, **kwargs):
            jobs.update(kwargs)
            return "raysubmit_1"

    monkeypatch.setattr(submit, "client", lambda *args: Jobs())
    clean = "https://mlflow.example.com:5000"
    submit.submit("train", ["tracking=mlflow", f"tracking.uri={clean}"], working_dir=str(ROOT))
    assert jobs["entrypoint"].endswith(f"tracking=mlflow tracking.uri={clean}")
    assert jobs["runtime_env"]["excludes"] == submit.EXCLUDES


NEVER_SHIPPED = [
    ".env",
    "deploy/.env",
    ".env.production",
    "server.pem",
    "deploy/tls/ca.key",
    "id_ed25519",
    ".ssh/id_rsa",
    ".aws/credentials",
    ".netrc",
    ".git/HEAD",
    ".venv/bin/python",
    "raycl_runs/r/epoch-00001/state.pt",
    "runs/r/epoch-00001/run.json",  # a run under any storage_path
    "runs/r/raycl-error.log",
    "mlruns/0/meta.yaml",
    "encoder/encoder.safetensors",
    "data/cifar10/x",
    "benchmarks/landscape-mnist1d.parquet",
]


def test_a_job_ships_the_package_and_never_secrets_or_runs():
    match = excluded(submit.runtime_env(str(ROOT))["excludes"])
    for path in NEVER_SHIPPED:
        assert match(ROOT / path), f"{path} would be uploaded"
    package = [
        p for p in (ROOT / "raycl").rglob("*") if p.is_file() and "__pycache__" not in str(p)
    ]
    assert len(package) > 50 and not [p for p in package if match(p)]
    assert not match(ROOT / "pyproject.toml")


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """The temporary directory is ``tmp_path`` for the test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def failure() -> BaseException:
    try:
        raise RuntimeError(f"tracking server {WITH_PASSWORD} refused the run")
    except RuntimeError as err:
        return err


def test_a_remote_runs_error_log_is_the_users_own(temp_root):
    error = explained(failure(), "s3://bucket/runs/my run")
    assert isinstance(error, TrainingFailed) and SECRET not in str(error)
    log = Path(str(error).rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert log.name == ERROR_LOG and log.parent.name.startswith("my_run-")
    assert log.parent.parent == temp_root / f"raycl-{os.getuid()}"
    assert stat.S_IMODE(log.parent.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "Traceback" in text and URIS[WITH_PASSWORD] in text and SECRET not in text
    other = explained(failure(), "s3://bucket/other/my run")  # another run, another file
    assert str(other) != str(error)
    assert not (temp_root / ERROR_LOG).exists()  # never a name every user shares


def test_a_local_runs_error_log_is_in_its_directory(tmp_path, temp_root):
    run = tmp_path / "runs" / "r"
    error = explained(failure(), str(run))
    assert f"(traceback: {run / ERROR_LOG})" in str(error)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_runs_error_log_is_the_users_own(tmp_path, temp_root):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    run.chmod(0o500)
    try:
        error = explained(failure(), str(run))
    finally:
        run.chmod(0o700)
    assert f"raycl-{os.getuid()}" in str(error) and not (run / ERROR_LOG).exists()


@pytest.mark.parametrize("taken", ["by another user", "by a link", "open to others"])
def test_a_private_folder_taken_by_someone_else_is_not_used(temp_root, taken):
    mine = temp_root / f"raycl-{os.getuid()}"
    if taken == "by a link":
        (temp_root / "elsewhere").mkdir(mode=0o700)
        mine.symlink_to(temp_root / "elsewhere")
    else:
        mine.mkdir(mode=0o777)
        mine.chmod(0o777)
    if taken == "by another user":
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another user")
        os.chown(mine, 65534, -1)
    folder = private_temp_dir()
    assert (folder == mine) is (taken == "open to others")  # ours: closed to others again
    assert folder.parent == temp_root and folder.lstat().st_uid == os.getuid()
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700


def test_one_line_errors_and_configs_hold_no_credentials():
    assert SECRET not in first_line(ValueError(f"bad uri {WITH_TOKEN}\nmore"))
    cfg = load_config([f"tracking.uri='{WITH_TOKEN}'", f"data.root='{WITH_PASSWORD}'"])
    assert SECRET not in to_yaml(cfg) and SECRET not in json.dumps(redacted({"a": [WITH_TOKEN]}))
    assert redacted(cfg).data.root == URIS[WITH_PASSWORD] and cfg.data.root == WITH_PASSWORD
