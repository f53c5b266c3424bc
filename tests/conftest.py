"""Shared test helpers: a tiny training recipe, a real local Ray cluster, Ray nodes started
with ``ray start``, a spawned process group whose ranks save their results; tests marked
``cuda`` skip where there is no CUDA; the suite's time budget (``tests/README.md``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

# Two epochs of two steps each, kNN only: enough to exercise a real trial end to end.
TINY_TRAINING = [
    "epochs=2",
    "data.batch_size_per_worker=128",
    "max_steps_per_epoch=2",
    "eval.linear_probe=false",
    "eval.knn_k=20",
]

# A two-epoch digits run in this process (no Ray), small model: for tests that need a real run
# directory and checkpoints.
IN_PROCESS_RUN = [
    "cluster.num_workers=0",
    "epochs=2",
    "max_steps_per_epoch=2",
    "eval.linear_probe=false",
    "eval.knn_k=5",
    "model.width=8",
]

RAY = str(Path(sys.executable).parent / "ray")  # the ray CLI of this environment
REPO = Path(__file__).resolve().parent.parent


def excluded(excludes: list[str]):
    """Ray's own matcher of runtime-env ``excludes`` (gitignore patterns) over the repository,
    as in a job's upload."""
    from ray._private.runtime_env.packaging import _get_excludes

    return _get_excludes(REPO, excludes)


# Ray Train's controller looks at its workers every 2 s by default, so each start, report and
# end of a run waits up to 2 s in idle time; the suite's runs are seconds long. Every Ray the
# tests start (in this process or a subprocess) inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# The time budget (tests/README.md): a test without the `slow` mark, setup and teardown
# included, within FAST_TEST_BUDGET_S; every `slow` test together within SLOW_TIER_BUDGET_S.
FAST_TEST_BUDGET_S = 5.0
SLOW_TIER_BUDGET_S = 600.0
_durations: dict[str, list] = {}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def as_a_terminal_job() -> None:
    """``preexec_fn`` of a child started as a terminal starts a job: Ctrl-C and SIGTERM at
    their defaults and not blocked, whatever this test process inherited or a library left
    (the suite once ran a Ctrl-C test in a process whose SIGINT was ignored: the child
    inherited that, never stopped, and exited 0)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def terminal_stop_signals() -> Iterator[None]:
    """This process's Ctrl-C and SIGTERM as a fresh Python process has them (KeyboardInterrupt,
    termination; not blocked) for the block, then as they were."""
    previous = {stop: signal.getsignal(stop) for stop in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray_node(*options: str, env: dict[str, str]) -> subprocess.Popen:
    """``ray start --block`` on 127.0.0.1 with ``options``, in its own session (killing its
    group ends this node only) and with its own port for every agent, so that another Ray on
    this machine cannot collide."""
    command = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    ports = [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]
    return subprocess.Popen(
        [*command, *options, *ports],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local Ray cluster for one test module (never joins a recorded one)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def paired_partners(group: str, option: str) -> list[str]:
    """The overrides a config option needs beside it: a two-tower model, a paired loss and
    image-caption data compose only together."""
    paired = {"loss": ("clip", "siglip"), "model": ("two_tower",), "data": ("digit_pairs", "pairs")}
    if option not in paired.get(group, ()):
        return []
    return ["model=two_tower", "loss=clip", "data=digit_pairs"]


def spawn_world(worker: Callable, tmp: Path, world: int) -> list[dict]:
    """Run ``worker(rank, init_file, out_dir)`` in ``world`` processes (one thread each) and
    return what each rank saved as ``out_dir/rank{r}.pt``."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        mp.spawn(worker, args=(str(tmp / "init"), str(tmp)), nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def pytest_runtest_logreport(report) -> None:
    """Adds up each test's setup, call and teardown time, with whether it is `slow`."""
    seconds, slow = _durations.get(report.nodeid, (0.0, False))
    _durations[report.nodeid] = [seconds + report.duration, slow or "slow" in report.keywords]


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints every test over its budget and the slow tier's total against its budget."""
    over = [(s, n) for n, (s, slow) in _durations.items() if not slow and s > FAST_TEST_BUDGET_S]
    slow_total = sum(s for s, slow in _durations.values() if slow)
    write = terminalreporter.write_line
    if over:
        terminalreporter.section(f"tests over the {FAST_TEST_BUDGET_S:.0f} s budget (not slow)")
        for seconds, nodeid in sorted(over, reverse=True):
            write(f"{seconds:6.1f} s  {nodeid}")
    if slow_total:
        verdict = "within" if slow_total <= SLOW_TIER_BUDGET_S else "OVER"
        budget = f"{SLOW_TIER_BUDGET_S:.0f} s budget"
        write(f"slow tests: {slow_total:.0f} s in all, {verdict} the {budget}")
