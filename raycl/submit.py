"""``raycl submit``: run ``raycl train``/``raycl tune`` on a Ray cluster as a Ray Job.

The job's runtime environment ships the working directory (the ``raycl`` package, its
configs inside it); its entrypoint is ``python -m raycl.cli <command> <hydra overrides>``. Clusters
started with token authentication (``RAY_AUTH_MODE=token``) get the token as an
``Authorization: Bearer`` header, read from ``--token-file``, ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (in that order). The token (and the job)
travel only over ``https://`` or to a loopback address (a tunnel: ``ray dashboard``,
``kubectl port-forward``) unless ``--insecure`` says otherwise (:func:`job_api_address`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
AGENT_WAIT_S = 60.0
# What a job never gets (gitignore patterns; a pattern without "/" matches at any depth, so
# top-level folders are anchored: a bare "data" would also drop raycl/data/ and conf/data/).
# fmt: off
EXCLUDES = [
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_ed25519*",  # secrets
    "*.token", "auth_token", ".netrc", ".pypirc", ".ssh", ".aws", ".kube", ".docker", ".config",
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "/build", "/dist", "*.egg-info",
    "raycl_runs", "mlruns", "epoch-[0-9]*", "*.pt", "*.safetensors", "*.log",  # runs
    "/outputs", "/multirun", "/data",
    "/benchmarks", "/tests", "/.ci",  # what a job does not run
]
# fmt: on


class SubmitError(RuntimeError):
    """A job could not be submitted or queried (one line, no traceback)."""


def read_token(token_file: str | None = None) -> str | None:
    """The cluster's auth token, or None when none is configured."""
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise SubmitError(f"--token-file: no such file: {path}")
        return path.read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), "~/.ray/auth_token"):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser().read_text().strip()
    return None


# Ray's JobSubmissionClient lets these override the address it is given (in this order).
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (IPv4-mapped too); names are never resolved."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def job_api_address(address: str, insecure: bool = False) -> str:
    """The address Ray will send the token and the job to (``RAY_API_SERVER_ADDRESS`` or
    ``RAY_ADDRESS`` override ``address``, as in Ray), refused with one line, before any network
    call, when it is neither ``https://`` nor loopback and ``insecure`` is not set. ``auto``
    (the cluster on this machine) counts as loopback; a bare ``host:port`` or ``ray://`` address
    is reached over plain http, so its host must be loopback."""
    source = "--address"
    for variable in ADDRESS_VARIABLES:
        if os.environ.get(variable):
            address, source = os.environ[variable], variable
            break
    if insecure or address.strip() in ("", "auto"):
        return address
    try:
        parts = urlsplit(address if "://" in address else f"//{address}")
        scheme, host = parts.scheme, parts.hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing to trust
        scheme, host = "", address
    if scheme == "https" or is_loopback(host):
        return address
    raise SubmitError(
        f"refusing to send the auth token and the job over plain http to {host} "
        f"({source} {address}): use https://, a tunnel to 127.0.0.1, or pass --insecure"
    )


def client(address: str, token_file: str | None = None, insecure: bool = False):
    """A ``JobSubmissionClient`` for ``address`` with the auth header set (if any token), once
    :func:`job_api_address` accepts where the token would go."""
    job_api_address(address, insecure)  # before the token is read or anything is sent
    from ray.job_submission import JobSubmissionClient

    token = read_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    logging.getLogger("ray").setLevel(logging.WARNING)  # no per-file packaging chatter
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as err:
        raise SubmitError(
            f"cannot reach the Ray cluster at {address}: {_first_line(err)}"
        ) from None


def runtime_env(working_dir: str, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """Ship ``working_dir`` (the package and its configs), never runs, data or virtualenvs."""
    directory = Path(working_dir).resolve()
    if not (directory / "raycl" / "conf").is_dir():
        raise SubmitError(f"--working-dir {directory} must hold the raycl package")
    env = {"working_dir": str(directory), "excludes": EXCLUDES}
    if env_vars:
        env["env_vars"] = env_vars
    return env


def submit(
    command: str,
    overrides: list[str],
    *,
    address: str = DEFAULT_ADDRESS,
    token_file: str | None = None,
    working_dir: str = ".",
    submission_id: str | None = None,
    follow: bool = False,
    insecure: bool = False,
) -> str:
    """Submit ``raycl <command> <overrides>``; return the job id (and stream logs if asked)."""
    if command not in ("train", "tune"):
        raise SubmitError(f"command must be train or tune, got {command!r}")
    job_api_address(address, insecure)
    from raycl.config import load_config

    check_no_credentials(overrides)
    load_config(overrides, config_name=command)  # a bad override fails here, not on the cluster
    entrypoint = shlex.join(["python", "-m", "raycl.cli", command, *overrides])
    jobs = client(address, token_file, insecure)
    env = runtime_env(working_dir)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = jobs.submit_job(
                entrypoint=entrypoint, runtime_env=env, submission_id=submission_id
            )
            break
        except Exception as err:
            # A node that just started may not have its job agent yet: that one is transient.
            if "No available agent" in str(err) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise SubmitError(f"submission refused by {address}: {_first_line(err)}") from None
    print(f"submitted {job_id}: {entrypoint}")
    if follow:
        follow_logs(jobs, job_id)
    return job_id


def check_no_credentials(overrides: list[str]) -> None:
    """Refuse overrides holding credentials (``tracking.uri=https://user:pass@host``,
    ``?token=…``): a job's entrypoint and its runtime env, env vars included, are shown to
    everyone who can list the cluster's jobs (``ray job list``, the dashboard)."""
    from raycl.errors import redact

    leaking = [o.partition("=")[0] for o in overrides if redact(o) != o]
    if leaking:
        raise SubmitError(
            f"{', '.join(leaking)} holds credentials, which the job's entrypoint would show to "
            "everyone who can list jobs; give the URI without them and set them on the "
            "cluster (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
            "MLFLOW_TRACKING_TOKEN, in the nodes' environment)"
        )


def follow_logs(jobs, job_id: str) -> str:
    """Stream a job's logs until it ends; return its final status."""

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    status = str(jobs.get_job_status(job_id))
    print(f"\njob {job_id}: {status}")
    return status


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def job_status(jobs, job_id: str) -> str:
    """A job's status and message on one line."""
    info = _call(jobs.get_job_info, job_id)
    return f"{job_id}: {info.status} {info.message or ''}".strip()


def job_logs(jobs, job_id: str, follow: bool = False) -> None:
    """Print a job's logs (streaming them with ``follow``)."""
    if follow:
        follow_logs(jobs, job_id)
    else:
        print(_call(jobs.get_job_logs, job_id), end="")


def stop_job(jobs, job_id: str) -> None:
    """Ask the cluster to stop a job."""
    stopped = _call(jobs.stop_job, job_id)
    print(f"{job_id}: {'stop requested' if stopped else 'not running'}")


def list_jobs(jobs) -> None:
    """A table of the cluster's jobs."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Ray jobs")
    for column in ("submission id", "status", "entrypoint"):
        table.add_column(column)
    for job in _call(jobs.list_jobs):
        table.add_row(job.submission_id or job.job_id or "", str(job.status), job.entrypoint)
    Console().print(table)


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception as err:
        raise SubmitError(_first_line(err)) from None
