"""A run directory across reruns: whose it is, who trains in it, what a rerun continues from.

Rerunning ``raycl train`` with the same ``storage_path`` and ``name`` resumes the run. Before
Ray starts, the driver

* takes the run's lock (:class:`RunLock`, ``storage_path/.<name>.lock``: host, PID, start), so
  a second ``raycl train`` of the same run is refused in one line while the first lives; a
  lock whose process is gone from this host is stale and taken over;
* checks the config against the one the run recorded at its first checkpoint
  (:func:`check_resume`): only :data:`RESUMABLE` keys may change; a run that never wrote a
  checkpoint has not claimed its name;
* sets aside bad newest checkpoints (:func:`raycl.checkpoint.good_checkpoint`) and keeps Ray
  Train's record of the run's checkpoints (``checkpoint_manager_snapshot.json``) in step, so
  Ray never resumes from, prunes or reuses the name of a checkpoint that is not there
  (:func:`repair_checkpoints`);
* says what the rerun continues from (:func:`resume_line`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from raycl.checkpoint import good_checkpoint, run_checkpoints, run_record
from raycl.cluster import process_alive
from raycl.config import flat_config, redacted, storage_path, to_yaml
from raycl.errors import ConfigError
from raycl.schema import TrainConfig
from raycl.session import LocalCheckpoint

RUN_CONFIG_FILE = "raycl-config.yaml"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints
# Keys a resumed run may change: they change how and where it runs, not what it trains.
RESUMABLE = ("epochs", "cluster.", "eval.", "tracking.", "verbose", "storage_path", "fresh")
RESUMABLE += ("checkpoints_to_keep", "fault_injection_epoch", "data.loader_workers")


def run_directory(cfg: TrainConfig) -> str:
    """Where the run lives: ``storage_path/name`` (a local path or a URI)."""
    return f"{storage_path(cfg)}/{cfg.name}"


class RunLock:
    """``storage_path/.<name>.lock`` while a driver trains the run (local storage only).

    Taken with ``O_EXCL``; a lock left by a process that is gone from this host (killed, the
    machine rebooted) is stale and taken over; one held from another host is refused (raycl
    cannot see that process: the message names the file to delete if it is gone). Taking it
    is also the check that ``storage_path`` can be written, before Ray starts.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.name = cfg.name
        self.storage = storage_path(cfg)
        self.path = None if "://" in self.storage else Path(self.storage) / f".{cfg.name}.lock"

    def __enter__(self) -> RunLock:
        if self.path is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # apart: a FileExistsError here is no lock
            raise self._unwritable(err) from None
        try:
            self._create()
        except FileExistsError:
            holder = self._holder()
            if holder is not None and not _is_stale(holder):
                raise ConfigError(
                    f"run {self.name!r} is being trained by PID {holder['pid']} on "
                    f"{holder['host']} since {holder['started']}; wait for it, pick another "
                    f"name, or delete {self.path} if that process is gone"
                ) from None
            self.path.unlink(missing_ok=True)
            self._create()
        except OSError as err:
            raise self._unwritable(err) from None
        return self

    def _unwritable(self, err: OSError) -> ConfigError:
        return ConfigError(
            f"storage_path={self.storage}: cannot write there ({err.strerror or err}); "
            "choose a directory you can write"
        )

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self._holder() == self._me:
            self.path.unlink(missing_ok=True)

    def _create(self) -> None:
        self._me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "w") as file:
            json.dump(self._me, file)

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half written or unreadable: stale
        return holder if isinstance(holder, dict) and {"host", "pid"} <= holder.keys() else None


def _is_stale(holder: dict[str, Any]) -> bool:
    """Whether a lock's process is gone (decidable on this host only)."""
    return holder["host"] == socket.gethostname() and not process_alive(int(holder["pid"]))


def check_resume(cfg: TrainConfig) -> None:
    """The run records its config with its first checkpoint; a rerun under the same name
    must match it except for :data:`RESUMABLE` keys (a one-line error naming the keys that
    differ), unless ``fresh=true``, which moves the old run aside and starts anew. A record
    without a checkpoint (a run that failed before its first) claims nothing."""
    import yaml

    run_dir = run_directory(cfg)
    recorded = read_text(f"{run_dir}/{RUN_CONFIG_FILE}")
    if recorded is None or not _checkpoint_names(run_dir):
        return
    if cfg.fresh:
        _move_aside(run_dir)
        return
    before = flat_config(redacted(yaml.safe_load(recorded)), scalars=False)  # an older record
    now = flat_config(yaml.safe_load(to_yaml(cfg)), scalars=False)
    changed = sorted(
        key
        for key in before.keys() | now.keys()
        if before.get(key) != now.get(key) and not key.startswith(RESUMABLE)
    )
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"run {cfg.name!r} exists with another config: {shown}{more}; resume it with the "
            "same config, pick another name, or pass fresh=true to start it anew"
        )


def record_config(cfg: TrainConfig) -> None:
    """Write the config into the run directory, credentials redacted: the run's identity for
    resuming, kept from the run's first start (replaced while it has no checkpoint)."""
    run_dir = run_directory(cfg)
    if read_text(f"{run_dir}/{RUN_CONFIG_FILE}") is None or not _checkpoint_names(run_dir):
        _write_text(f"{run_dir}/{RUN_CONFIG_FILE}", to_yaml(cfg))


def repair_checkpoints(cfg: TrainConfig) -> None:
    """Set aside the run's bad newest checkpoints (local runs) and drop every checkpoint that
    is not there from Ray Train's record, so the rerun resumes from the newest good one."""
    run_dir = run_directory(cfg)
    if "://" in run_dir or not Path(run_dir).is_dir():
        return
    found = run_checkpoints(Path(run_dir))
    if found:
        good_checkpoint(LocalCheckpoint(found[-1]))
    _drop_missing_from_ray_record(Path(run_dir))


def _drop_missing_from_ray_record(run_dir: Path) -> None:
    """Rewrite Ray Train's ``checkpoint_manager_snapshot.json`` without the checkpoints whose
    directories are gone; the latest becomes the newest one left (by report order)."""
    path = run_dir / RAY_SNAPSHOT
    if not path.is_file():
        return
    record = json.loads(path.read_text())
    there = {p.name for p in run_checkpoints(run_dir)}
    kept = [
        (result, index)
        for result, index in zip(
            record["checkpoint_results"], record["checkpoint_report_indices"], strict=True
        )
        if result["checkpoint_dir_name"] in there
    ]
    latest = record.get("latest_checkpoint_result")
    if latest is None or latest["checkpoint_dir_name"] in there:
        if len(kept) == len(record["checkpoint_results"]):
            return
    else:
        latest = max(kept, key=lambda pair: pair[1])[0] if kept else None
    pending = [
        (result, spec)
        for result, spec in zip(
            record["pending_training_results"], record["pending_validation_specs"], strict=True
        )
        if result["checkpoint_dir_name"] in there
    ]
    record.update(
        checkpoint_results=[result for result, _ in kept],
        checkpoint_report_indices=[index for _, index in kept],
        latest_checkpoint_result=latest,
        pending_training_results=[result for result, _ in pending],
        pending_validation_specs=[spec for _, spec in pending],
    )
    for key in (
        "validated_checkpoint_dir_names",
        "timed_out_validation_checkpoint_dir_names",
        "failed_validation_checkpoint_dir_names",
    ):
        record[key] = [name for name in record.get(key, []) if name in there]
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(record))
    staging.replace(path)


def resume_point(cfg: TrainConfig) -> Path | None:
    """The checkpoint a rerun continues from: Ray Train's latest (workers) or the newest
    (``cluster.num_workers=0``); None for a new run or remote storage."""
    run_dir = run_directory(cfg)
    if "://" in run_dir:
        return None
    snapshot = Path(run_dir) / RAY_SNAPSHOT
    if cfg.cluster.num_workers and snapshot.is_file():
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        return None if latest is None else Path(run_dir) / latest["checkpoint_dir_name"]
    found = run_checkpoints(Path(run_dir))
    return found[-1] if found else None


def resume_line(cfg: TrainConfig, checkpoint: Path, done: int) -> str:
    """What a rerun says before it trains: the epoch it continues after (``done`` epochs
    trained), the checkpoint, and what extending a finished run does to the learning-rate
    schedule."""
    line = f"raycl: resumed from epoch {done} (checkpoint {checkpoint})"
    planned = run_record(checkpoint)["config"]["epochs"]
    if planned != cfg.epochs and done < cfg.epochs:
        line += (
            f"; epochs {planned} -> {cfg.epochs}: the learning-rate schedule is re-planned "
            f"over {cfg.epochs} epochs"
        )
    elif done >= cfg.epochs:
        line += f"; it has trained {done} epochs: nothing to do (raise epochs= to extend it)"
    return line


def _checkpoint_names(run_dir: str) -> list[str]:
    """The run's ``epoch-*`` directory names (a local path or a URI)."""
    import pyarrow.fs

    if "://" not in run_dir:
        return [p.name for p in run_checkpoints(Path(run_dir))] if Path(run_dir).is_dir() else []
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(run_dir)
    try:
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(inner))
    except FileNotFoundError:
        return []
    return sorted(
        e.base_name
        for e in entries
        if e.type == pyarrow.fs.FileType.Directory and e.base_name[6:].isdigit()
    )


def _filesystem(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (None, path)


def read_text(path: str) -> str | None:
    filesystem, inner = _filesystem(path)
    if filesystem is None:
        return Path(inner).read_text() if Path(inner).is_file() else None
    try:
        with filesystem.open_input_stream(inner) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        return None


def _write_text(path: str, text: str) -> None:
    filesystem, inner = _filesystem(path)
    if filesystem is None:
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(inner).with_name(Path(inner).name + ".tmp")
        staging.write_text(text)
        staging.replace(inner)
        return
    with filesystem.open_output_stream(inner) as stream:
        stream.write(text.encode())


def _move_aside(run_dir: str) -> None:
    """Rename an old run directory to ``<name>.<timestamp>`` (nothing is deleted)."""
    if "://" in run_dir:
        raise ConfigError(f"fresh=true: cannot move {run_dir} aside; use another name")
    aside = f"{run_dir}.{time.strftime('%Y%m%d-%H%M%S')}"
    Path(run_dir).rename(aside)
    print(f"fresh=true: the old run {run_dir} is now {aside}", flush=True)
