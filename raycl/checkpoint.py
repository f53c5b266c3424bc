"""The on-disk checkpoint: what one epoch leaves, how it is verified, which one a run offers.

A run directory (``storage_path/name``) holds one directory per reported epoch,
``epoch-00000``, ``epoch-00001``, ...; each holds

* ``state.pt`` (rank 0): model, optimiser and scheduler state, the epoch, the metric history
  and the untrained encoder's metrics (``initial``), what a resumed run continues from;
* ``history.json`` (rank 0): the same history and ``initial`` as JSON, readable without torch;
* ``run.json`` (rank 0): what the checkpoint is without its run, the training config, the input
  shape, the input channels and the number of classes (:func:`recorded_config`);
* ``rng-rank<r>.pt`` (every rank): that rank's Python, NumPy and torch RNG states, as plain
  data (:func:`rng_states`), and its training loader's generator (``loader``);
* ``checksums-rank<r>.json`` (every rank, written last): the SHA-256 of each file that rank wrote.

No code from data: every ``.pt`` file is read with ``torch.load(weights_only=True)`` (tensors,
containers, numbers, strings), so a shared checkpoint cannot run code when it is loaded; one
whose pickle needs anything else (a class or function it could call) is refused with one line
naming the file (:func:`safe_load`). Checksum lists name files of their own directory only.

The checksums are there because a checkpoint can be cut short (a worker killed while writing, a
full disk, an interrupted copy to remote storage) and still look whole: a resumed run, the
encoder loader and ``raycl embed``/``export`` use only a checkpoint that :func:`verify_checkpoint`
passes. A bad one met on resuming is set aside as ``*.corrupt`` (:func:`good_checkpoint`), so the
run continues from the newest good one. Needs neither Ray nor Hydra (checkpoints from Ray Train
are handled through their ``path``, ``filesystem`` and ``as_directory``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import pickle
import random
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raycl.errors import CheckpointError, first_line
from raycl.schema import TrainConfig

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
RUN_FILE = "run.json"  # what the checkpoint is: config, input shape (read without its run)


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def checksum_file(rank: int) -> str:
    return f"checksums-rank{rank}.json"


# --- writing and reading one checkpoint -----------------------------------------------------


def write_checkpoint(
    directory: Path,
    rank: int,
    rng: dict[str, Any],
    state: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
) -> None:
    """One rank's files of a checkpoint in ``directory``: its RNG states; with ``state``
    (rank 0) the state, its history as JSON and the run ``record``; then its checksums."""
    torch.save(rng, directory / rng_file(rank))
    if state is not None:
        torch.save(state, directory / STATE_FILE)
        (directory / HISTORY_FILE).write_text(
            json.dumps({"history": state["history"], "initial": state["initial"]})
        )
        (directory / RUN_FILE).write_text(json.dumps(record, default=str))
    write_checksums(directory, rank)


def load_state(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's state (model, optimiser, scheduler, epoch, history), on the CPU."""
    return safe_load(Path(directory) / STATE_FILE)


def load_rng(directory: str | Path, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s RNG states, None when the checkpoint has none for it."""
    path = Path(directory) / rng_file(rank)
    return safe_load(path, allow=_NUMPY_ARRAY) if path.exists() else None


# what the previous format's rng files need: NumPy's state as an array (``np.random.get_state``)
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # NumPy 2 | NumPy 1
_NUMPY_ARRAY = (
    _NUMPY_CORE.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
)


def safe_load(path: Path, allow: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with exactly the globals ``allow``
    lists besides tensors and plain data: a file whose pickle needs anything else is refused
    with one line naming the file and what it needs, before any of it runs."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            # a foreign pickle's protocol warning is noise beside the one line below
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        what = _unsafe_globals(path, allow) or _first_unsafe_global(err)
        raise CheckpointError(
            f"{path}: refused: loading it needs {what}, which could run code "
            "(a checkpoint holds tensors and plain data only); it was not loaded"
        ) from None
    except Exception as err:  # not a torch file, or a malformed pickle: whatever it raises
        raise CheckpointError(f"{path}: cannot be read ({first_line(err)})") from None


def _unsafe_globals(path: Path, allow: Sequence[Any]) -> str | None:
    """What the pickle in ``path`` needs beyond ``allow`` and torch's safe types, read from
    its opcodes without running them (None when that cannot tell)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in allow}
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the unpickler's message names the first one
        return None
    needed = [n for n in needed if n not in allowed and re.fullmatch(r"[\w.]{1,200}", n)]
    return ", ".join(needed[:3]) + (", ..." if len(needed) > 3 else "") if needed else None


def _first_unsafe_global(err: BaseException) -> str:
    needed = re.search(r"Unsupported global: GLOBAL ([\w.]{1,200})", str(err))
    return needed.group(1) if needed else "more than tensors and plain data"


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states as plain data (what ``rng-rank<r>.pt``
    holds): Python's as its tuple of ints, NumPy's MT19937 key as an int64 tensor."""
    numpy = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(numpy["bit_generator"]),
            "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_states(rng: dict[str, Any]) -> None:
    """Set this process's RNGs to ``rng`` (:func:`rng_states`; NumPy's state may also be the
    previous format's ``np.random.get_state()`` tuple)."""
    random.setstate(rng["python"])
    numpy = rng["numpy"]
    if isinstance(numpy, dict):
        numpy = {
            "bit_generator": numpy["bit_generator"],
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    np.random.set_state(numpy)
    torch.set_rng_state(rng["torch"])


def write_checksums(directory: Path, rank: int) -> None:
    """SHA-256 of the files this rank wrote into a checkpoint, written last: a checkpoint
    whose copy was cut short, or whose files changed, fails :func:`verify_checkpoint`."""
    digests = {
        f.name: _sha256(f)
        for f in sorted(directory.iterdir())
        if f.is_file() and not f.name.startswith("checksums-")
    }
    (directory / checksum_file(rank)).write_text(json.dumps(digests))


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _is_file_name(name: Any) -> bool:
    """Whether ``name`` names a file of the checkpoint's own directory (no folder, no ``..``)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and not Path(name).is_absolute()
    )


def verify_checkpoint(directory: str | Path) -> str | None:
    """Why the checkpoint in ``directory`` cannot be trusted, or None when it can: the state
    file and every rank's checksum list must be there and every listed file must match."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    lists = sorted(directory.glob("checksums-rank*.json"))
    if not lists:
        return "no checksums"
    for listing in lists:
        try:
            listed = json.loads(listing.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            listed = None
        if not isinstance(listed, dict):
            return f"{listing.name} is not a checksum list"
        for name, digest in listed.items():
            if not _is_file_name(name):
                return f"{listing.name} names {name!r}, not a file of the checkpoint"
            path = directory / name
            if not path.is_file() or _sha256(path) != digest:
                return f"{name} does not match its checksum"
    return None


# --- resuming: a run's newest good checkpoint (Ray Train checkpoint objects) ---------------


def good_checkpoint(checkpoint: Any) -> Any:
    """``checkpoint`` if it verifies; else the newest older checkpoint of the run that does.

    A bad one (a crash while writing, a full disk) is reported and renamed ``*.corrupt``,
    so the run resumes from the newest good checkpoint and its next report can take the
    name again."""
    candidates = [checkpoint, *_older_checkpoints(checkpoint)]
    for candidate in candidates:
        with candidate.as_directory() as directory:
            problem = verify_checkpoint(directory)
        if problem is None:
            return candidate
        print(f"raycl: skipping checkpoint {candidate.path}: {problem}", file=sys.stderr)
        _set_aside(candidate)
    return None


def _older_checkpoints(checkpoint: Any) -> list[Any]:
    """The run's other ``epoch-*`` checkpoints older than ``checkpoint``, newest first."""
    import pyarrow.fs

    filesystem = getattr(checkpoint, "filesystem", None) or pyarrow.fs.LocalFileSystem()
    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    names = sorted(
        (e.base_name for e in entries if e.type == pyarrow.fs.FileType.Directory),
        reverse=True,
    )
    older = [n for n in names if re.fullmatch(r"epoch-\d+", n) and n < name]
    return [type(checkpoint)(path=f"{parent}/{n}", **_filesystem_of(checkpoint)) for n in older]


def _filesystem_of(checkpoint: Any) -> dict[str, Any]:
    filesystem = getattr(checkpoint, "filesystem", None)
    return {} if filesystem is None else {"filesystem": filesystem}


def _set_aside(checkpoint: Any) -> None:
    import pyarrow.fs

    filesystem = getattr(checkpoint, "filesystem", None) or pyarrow.fs.LocalFileSystem()
    with contextlib.suppress(OSError):  # another rank may have moved it already
        filesystem.move(checkpoint.path, checkpoint.path.rstrip("/") + ".corrupt")


# --- using a finished run: which checkpoint, and what it records -----------------------------


def is_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / RUN_FILE).is_file()


def is_run(path: Path) -> bool:
    """Whether ``path`` is a training run's directory (it holds checkpoints)."""
    return path.is_dir() and bool(run_checkpoints(path))


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (set-aside ``*.corrupt`` ones left out)."""
    return sorted(p for p in run_dir.glob("epoch-*") if p.is_dir() and p.name[6:].isdigit())


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best good checkpoint by its checkpoint metric and mode (ties and runs that
    never recorded the metric: the latest)."""
    return _best_verified(run_dir)[0]


def _score(checkpoint: Path, metric: str) -> float | None:
    """The checkpoint's recorded ``metric``; None when it has none or cannot be read."""
    try:
        value = last_metrics(checkpoint).get(metric)
    except (OSError, ValueError, LookupError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _best_verified(run_dir: Path) -> tuple[Path, str | None]:
    """(the best checkpoint that verifies, a line saying which better one did not and why,
    if one did not); one line naming every checkpoint that failed when none verifies."""
    checkpoints = run_checkpoints(run_dir)
    problems = {p: verify_checkpoint(p) for p in checkpoints}
    good = [p for p in checkpoints if problems[p] is None]
    if not good:
        failed = "; ".join(f"{p.name}: {problems[p]}" for p in checkpoints)
        raise CheckpointError(
            f"{run_dir}: no checkpoint verifies ({failed})"
            if checkpoints
            else f"{run_dir}: no checkpoint (is it a raycl run?)"
        )
    config = recorded_config(good[-1])
    sign = 1.0 if config.checkpoint_mode == "max" else -1.0

    rank = {}  # each checkpoint's history read once: (signed metric, name)
    for p in checkpoints:
        value = _score(p, config.checkpoint_metric)
        rank[p] = (-math.inf if value is None else sign * value, p.name)
    chosen = max(good, key=rank.__getitem__)
    better = [p for p in checkpoints if problems[p] is not None and rank[p] > rank[chosen]]
    if not better:
        return chosen, None
    best = max(better, key=rank.__getitem__)
    return chosen, (
        f"the best checkpoint {best.name} does not verify ({problems[best]}); "
        f"using {chosen} instead"
    )


def choose_checkpoint(path: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint directory to load: ``checkpoint``, ``path`` itself, or the best of the
    run at ``path`` (saying so in one line when a better one failed verification); one line
    naming the path when it is none of these."""
    path = Path(checkpoint if checkpoint is not None else path).resolve()
    if is_checkpoint(path):
        problem = verify_checkpoint(path)
        if problem is not None:
            raise CheckpointError(f"{path}: the checkpoint does not verify ({problem})")
        return path
    if is_run(path):
        chosen, note = _best_verified(path)
        print(f"raycl: {note or f'using checkpoint {chosen}'}", flush=True)
        return chosen
    raise CheckpointError(f"{path}: not a raycl run directory or checkpoint")


def run_record(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``run.json``: ``config``, ``in_channels``, ``input_shape``,
    ``num_classes``."""
    return json.loads((checkpoint / RUN_FILE).read_text())


def recorded_config(checkpoint: Path) -> TrainConfig:
    """The training config recorded in a checkpoint, typed again."""
    from omegaconf import OmegaConf

    recorded = run_record(checkpoint)["config"]
    schema = OmegaConf.structured(TrainConfig)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = OmegaConf.merge(schema, {k: v for k, v in recorded.items() if k in fields})
    return OmegaConf.to_object(merged)


def recorded_input_shape(checkpoint: Path) -> list[int]:
    """The shape of one input item the checkpoint's encoder was trained on, e.g. [1, 8, 8]."""
    return list(run_record(checkpoint)["input_shape"])


def last_metrics(checkpoint: Path) -> dict[str, float]:
    """The metrics the checkpoint's epoch reported (empty before the first epoch)."""
    history = json.loads((checkpoint / HISTORY_FILE).read_text())["history"]
    return dict(history[-1]) if history else {}
