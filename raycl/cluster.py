"""Where a driver's Ray comes from: :func:`connect_ray` is the one place a driver (train,
tune, embed, the benches) joins or starts Ray.

A cluster started here is marked: every one of its processes inherits ``RAYCL_CLUSTER_OF``,
the PID of the driver that started it. Ray stops a local cluster when its driver exits, but a
driver killed with SIGKILL leaves some of its processes behind (the dashboard's and runtime
environment's agents, for minutes); the next driver that starts a cluster stops every process
marked with a PID that no longer runs (:func:`stop_orphaned_clusters`; Linux, this user's
processes only).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

OWNER_VARIABLE = "RAYCL_CLUSTER_OF"
# A local cluster runs no preemption watcher: one machine is not drained by a cloud, and the
# watcher's actor logs a core-worker error about its restartable arguments at every start.
LOCAL_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def connect_ray(address: str | None = None, *, verbose: bool = False, **options: Any) -> None:
    """Join ``address`` (``auto`` or a URI), or start a fresh local Ray when it is None.

    Never ``ray.init()`` without an address: that joins whatever cluster ``ray start`` last
    recorded on the machine, even a dead one. Ray's own INFO lines (a line per report and per
    checkpoint) are shown only with ``verbose``; warnings and errors always are. The dashboard
    always starts (0.7 s): Ray Train's placement-group cleaner asks the state API it serves
    whether the run's controller lives, and warns once a second when it cannot. A cluster
    started here is marked as this driver's and gets :data:`LOCAL_CLUSTER_ENV` unless the
    environment says otherwise; clusters of killed drivers are stopped first.
    """
    import ray

    if ray.is_initialized():
        return
    if address is None:
        stop_orphaned_clusters()
        os.environ[OWNER_VARIABLE] = str(os.getpid())
        os.environ.update({k: v for k, v in LOCAL_CLUSTER_ENV.items() if k not in os.environ})
        # Ray's notice that a new local cluster uses token authentication, its default
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(
        address=address or "local",
        logging_config=ray.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        **options,
    )
    if callable(handler) and threading.current_thread() is threading.main_thread():
        # ray.init installs its own (C) SIGTERM handler, which aborts the driver: keep the
        # Python one (the CLI's unwinds like Ctrl-C, so a half-written output is removed)
        signal.signal(signal.SIGTERM, handler)


def stop_orphaned_clusters() -> int:
    """Stop this user's processes of local clusters whose driver is gone; how many."""
    proc, me = Path("/proc"), str(os.getpid())
    if not proc.is_dir():
        return 0
    stopped, drivers = 0, set()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        mark = OWNER_VARIABLE.encode() + b"="
        owner = next((v[len(mark) :] for v in environment if v.startswith(mark)), None)
        if owner is None or not owner.isdigit() or process_alive(int(owner)):
            continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
        stopped += 1
        drivers.add(owner.decode())
    if stopped:
        print(
            f"raycl: stopped {stopped} processes that the Ray of a killed driver left "
            f"(driver PID {', '.join(sorted(drivers))})",
            file=sys.stderr,
        )
    return stopped


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cpus_per_actor(actors: int, node_cpus: list[float]) -> int:
    """CPUs for each of ``actors`` equal actors on nodes with ``node_cpus``: the cluster's
    CPUs shared evenly, but no more than the smallest node holds (an actor runs on one node)
    and at least one. One actor on a CPU-only node takes the whole node."""
    if not node_cpus:
        return 1
    return max(1, min(int(sum(node_cpus)) // max(actors, 1), int(min(node_cpus))))
