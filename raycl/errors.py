"""raycl's own error types, and finding them inside Ray's wrappers.

Everything raycl can explain — a bad config, bad data, a run that diverged — is a
:class:`RayclError` with a one-line message. Raised inside a Ray worker, it reaches the driver
wrapped in Ray's errors (``WorkerGroupError``, ``RayTaskError``, a Tune trial error);
:func:`explain` finds it again, so the user sees ``raycl: error: <the line>`` and the full
traceback goes to a log file instead of the console.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path


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
    """An exception as one line: ``Type: first line of its message``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def write_traceback(err: BaseException, log: Path) -> Path:
    """Append ``err``'s full traceback to ``log`` (created with its folder); returns it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write("".join(traceback.format_exception(err)))
        fh.write("\n")
    return log
