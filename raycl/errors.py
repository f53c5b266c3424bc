"""raycl's own error types, and finding them inside Ray's wrappers.

Everything raycl can explain — a bad config, bad data, a run that diverged — is a
:class:`RayclError` with a one-line message. Raised inside a Ray worker, it reaches the driver
wrapped in Ray's errors (``WorkerGroupError``, ``RayTaskError``, a Tune trial error);
:func:`explain` finds it again, so the user sees ``raycl: error: <the line>`` and the full
traceback goes to a log file instead of the console.

No credentials in what raycl writes or shows: :func:`redact` replaces the password of a URI
(``https://user:***@host``) and secret query values (``?token=***``) in any text; one-line
errors and the traceback log go through it. The log of a run whose directory is not local goes
to the user's own folder (:func:`private_temp_dir`), never a name shared by every user.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

_STOP = "\\s'\"<>"  # what ends a URI in text
# scheme://authority: the authority ends at the first /, ?, # or where the URI ends
_AUTHORITY = re.compile(rf"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#{_STOP}]*)")
# a query (or fragment) parameter named like a secret: ?token=…, &api_key=…, &X-Amz-Signature=…
_SECRET_PARAMETER = re.compile(
    rf"(?P<name>[?&#;][^=&#{_STOP}]*"
    rf"(?:token|secret|passw|pwd|key|sig|credential|auth|session)[^=&#{_STOP}]*=)"
    rf"(?P<value>[^&#{_STOP}]+)",
    re.IGNORECASE,
)
REDACTED = "***"


class RayclError(Exception):
    """An error raycl explains in one line; the CLI exits with ``exit_code``."""

    exit_code = 2


class ConfigError(RayclError, ValueError):
    """A bad configuration or override (one line, naming the key)."""


class DataError(RayclError, ValueError):
    """A data set that is missing, unreadable, too small, or holds a bad item (one line,
    naming the key, file or item)."""


class CheckpointError(RayclError):
    """A path that is not a raycl run or checkpoint, a checkpoint that does not verify, does
    not fit its model or whose loading would need more than tensors and plain data (code it
    could run), or a saved search state that cannot be restored (one line, naming the path)."""


class TrainingDiverged(RayclError, RuntimeError):
    """The loss became NaN or inf, or the embeddings collapsed; the last good checkpoint is
    kept (exit code 1)."""

    exit_code = 1


class TrainingFailed(RayclError):
    """Training failed for a reason raycl does not know: the first line of the root cause
    and where its full traceback is (exit code 1)."""

    exit_code = 1


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps: Python's chain and Ray's own wrappers."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
        todo += list(getattr(current, "worker_failures", {}).values())
        for attribute in ("controller_failure",):
            todo.append(getattr(current, attribute, None))
        as_cause = getattr(current, "as_instanceof_cause", None)
        if callable(as_cause):
            # a wrapper that cannot rebuild its cause has nothing to add
            with contextlib.suppress(Exception):
                todo.append(as_cause())


def find_raycl_error(err: BaseException) -> RayclError | None:
    """The :class:`RayclError` inside ``err`` (``err`` itself, or wrapped by Ray), if any."""
    return next((e for e in _causes(err) if isinstance(e, RayclError)), None)


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception ``err`` wraps that is not one of Ray's own wrappers."""
    ours = [e for e in _causes(err) if not type(e).__module__.startswith("ray.")]
    return ours[-1] if ours else err


def first_line(err: BaseException) -> str:
    """An exception as one line: ``Type: first line of its message`` (credentials redacted)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {redact(lines[0])}" if lines else type(err).__name__


def redact(text: str) -> str:
    """``text`` (a URI, or any text holding URIs) with its credentials replaced by ``***``: a
    URI's password (``https://user:***@host``; a user alone, often a token, ``https://***@host``)
    and the values of query parameters named like secrets (``?token=***``, ``&api_key=***``,
    ``&X-Amz-Signature=***``). Everything else is kept, so the host still says where."""

    def authority(match: re.Match) -> str:
        userinfo, at, host = match["authority"].rpartition("@")
        if not at:
            return match[0]
        user, colon, _ = userinfo.partition(":")
        hidden = f"{user}:{REDACTED}" if colon else REDACTED
        return f"{match['scheme']}{hidden}@{host}"

    text = _AUTHORITY.sub(authority, text)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['name']}{REDACTED}", text)


def private_temp_dir() -> Path:
    """This user's own folder in the temporary directory, ``<tmp>/raycl-<uid>`` (mode 0700);
    a fresh ``raycl-<uid>-*`` folder when that name is taken by someone else or is a link
    (another user could otherwise read or plant what raycl writes there)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    owner = uid if uid is not None else os.environ.get("USERNAME", "user")
    path = Path(tempfile.gettempdir()) / f"raycl-{owner}"
    with contextlib.suppress(OSError):
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if uid is None:
            return path
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid:
            if info.st_mode & 0o077:
                path.chmod(0o700)
            return path
    return Path(tempfile.mkdtemp(prefix=f"raycl-{owner}-"))


def run_log_dir(run_dir: str) -> Path:
    """Where a run's logs go: its directory when that is local and writable, else a folder of
    its own (its name and a hash of the whole path) in :func:`private_temp_dir`."""
    if "://" not in run_dir:
        local = Path(run_dir)
        with contextlib.suppress(OSError):
            local.mkdir(parents=True, exist_ok=True)
        if local.is_dir() and os.access(local, os.W_OK | os.X_OK):
            return local
    name = re.sub(r"[^\w.-]", "_", run_dir.rstrip("/").rsplit("/", 1)[-1]) or "run"
    digest = hashlib.sha256(run_dir.encode()).hexdigest()[:8]
    folder = private_temp_dir() / f"{name}-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def write_traceback(err: BaseException, log: Path) -> Path:
    """Append ``err``'s full traceback, credentials redacted, to ``log`` (created with its
    folder, readable by its owner only); returns it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as fh:
        fh.write(redact("".join(traceback.format_exception(err))))
        fh.write("\n")
    return log
