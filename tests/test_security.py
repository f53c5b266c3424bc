"""No code from data: a shared checkpoint or search state cannot run code when it is loaded.

A two-epoch digits run is trained once here, in this process (``cluster.num_workers=0``); in
a copy of it every checkpoint gets a ``state.pt`` whose pickle would create a marker file, with
its checksum list recomputed the way raycl writes it, so only the loading itself can refuse it.
Every way in (``raycl.load_encoder``, ``raycl export``, ``raycl embed``, a resumed run) must
refuse it with one line naming the file, and the marker must never appear. The RNG states a
checkpoint keeps are plain data, and a run resumed from them continues exactly.
"""

from __future__ import annotations

import builtins
import json
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import raycl
from raycl.checkpoint import (
    STATE_FILE,
    checksum_file,
    load_rng,
    load_state,
    rng_file,
    rng_states,
    set_rng_states,
    verify_checkpoint,
    write_checksums,
)
from raycl.cli import main
from raycl.config import load_config
from raycl.errors import CheckpointError
from raycl.runner import train
from raycl.search import CoordinateDescentSearcher, SearchSpace
from tests.conftest import IN_PROCESS_RUN

QUICK = [*IN_PROCESS_RUN, "name=safe"]

OTHER_SPACE = SearchSpace.from_dict({"x": {"scale": "linear", "lower": 0, "upper": 1, "start": 0}})


class Payload:
    """Unpickled, creates ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


TIMINGS = ("train_seconds", "samples_per_s", "eval_seconds")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[dict[str, float]]]:
    """The storage path of a two-epoch run named ``safe``, and its history."""
    storage = tmp_path_factory.mktemp("storage")
    outcome = train(load_config([*QUICK, f"storage_path={storage}"]))
    return storage, outcome.history


@pytest.fixture
def trained(uninterrupted) -> Path:
    return uninterrupted[0]


def copy_run(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained storage path and its run's latest checkpoint directory."""
    storage = tmp_path / "storage"
    shutil.copytree(trained, storage)
    return storage, storage / "safe" / "epoch-00001"


def plant(checkpoint: Path, file: str, marker: Path) -> Path:
    """Replace ``file`` by a pickle that runs a payload; checksums recomputed as raycl does."""
    path = checkpoint / file
    torch.save({"model": Payload(marker), "epoch": 0}, path)
    torch.load(path, weights_only=False)  # the payload is live: loaded unsafely, it runs
    assert marker.exists()
    marker.unlink()
    write_checksums(checkpoint, 0)
    assert verify_checkpoint(checkpoint) is None
    return path


@pytest.fixture
def planted(trained, tmp_path) -> tuple[Path, Path, Path]:
    """(storage path, latest checkpoint, marker) of a run whose every ``state.pt`` carries a
    payload."""
    storage, checkpoint = copy_run(trained, tmp_path)
    marker = tmp_path / "payload-ran"
    for each in sorted(checkpoint.parent.glob("epoch-*")):
        plant(each, STATE_FILE, marker)
    return storage, checkpoint, marker


def test_a_resumed_run_continues_exactly(uninterrupted, tmp_path):
    """From the plain-data RNG states (Python, NumPy, torch, the loader's shuffle generator),
    epoch 1 trained again after a resume reports what the uninterrupted run reported."""
    storage, checkpoint = copy_run(uninterrupted[0], tmp_path)
    shutil.rmtree(checkpoint)  # as if the run had stopped after epoch 0
    resumed = train(load_config([*QUICK, f"storage_path={storage}"]))
    strip = lambda history: [{k: v for k, v in e.items() if k not in TIMINGS} for e in history]  # noqa: E731
    assert strip(resumed.history) == strip(uninterrupted[1])


def one_error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_load_encoder_refuses_a_state_that_runs_code(planted):
    storage, checkpoint, marker = planted
    for path in (storage / "safe", checkpoint):  # its best checkpoint, or one
        with pytest.raises(
            CheckpointError, match=r"state\.pt: refused: loading it needs builtins\.exec,"
        ) as err:
            raycl.load_encoder(path)
        assert "\n" not in str(err.value)
    assert str(checkpoint / STATE_FILE) in str(err.value)
    assert not marker.exists()


def test_export_and_embed_refuse_it_in_one_line(planted, tmp_path, capsys):
    storage, _, marker = planted
    run = storage / "safe"
    refused = rf"^raycl: error: {re.escape(str(run))}/epoch-0000[01]/state\.pt: refused: "
    line = one_error_line(capsys, ["export", str(run), "--output", str(tmp_path / "out")])
    assert re.match(refused, line), line
    embed = ["embed", str(run), "--output", str(tmp_path / "e.parquet"), "cluster.num_workers=0"]
    assert re.match(refused, one_error_line(capsys, embed))
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "e.parquet").exists()


def test_resuming_refuses_it_in_one_line(planted, capsys):
    storage, checkpoint, marker = planted
    extended = ["train", *QUICK, "epochs=3", f"storage_path={storage}"]  # loads its state
    line = one_error_line(capsys, extended)
    assert line.startswith("raycl: error: ") and f"{checkpoint / STATE_FILE}: refused" in line
    assert not marker.exists()


@pytest.mark.parametrize("protocol", ["zip", "legacy", 2, 5])
def test_every_pickle_format_is_refused(tmp_path, protocol):
    marker, path = tmp_path / "payload-ran", tmp_path / STATE_FILE
    payload = {"model": Payload(marker)}
    if isinstance(protocol, int):
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=protocol == "zip")
    with pytest.raises(CheckpointError, match=f"{path}: refused: loading it needs"):
        load_state(tmp_path)
    assert not marker.exists()


def test_an_rng_file_that_runs_code_is_refused(trained, tmp_path):
    _, checkpoint = copy_run(trained, tmp_path)
    marker = tmp_path / "payload-ran"
    path = plant(checkpoint, rng_file(0), marker)
    with pytest.raises(CheckpointError, match=f"{path}: refused"):
        load_rng(checkpoint, 0)
    assert not marker.exists()


def test_rng_states_are_plain_data_and_restore_exactly(trained):
    saved = torch.load(trained / "safe" / "epoch-00000" / rng_file(0), weights_only=True)
    assert set(saved) == {"python", "numpy", "torch", "loader"}
    random.seed(1), np.random.seed(2), torch.manual_seed(3), np.random.randn()  # a cached gauss
    state = rng_states()
    draws = random.random(), np.random.randn(), np.random.randn(), torch.rand(2).tolist()
    set_rng_states(state)
    assert (random.random(), np.random.randn(), np.random.randn(), torch.rand(2).tolist()) == draws


def test_previous_format_rng_files_still_load(tmp_path):
    """Before plain data, NumPy's state was ``np.random.get_state()``: exactly its array types
    are allowed in an rng file."""
    np.random.seed(5)
    previous = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save(previous, tmp_path / rng_file(0))
    expected = np.random.rand(3)
    np.random.seed(6)
    set_rng_states(load_rng(tmp_path, 0))
    np.testing.assert_array_equal(np.random.rand(3), expected)


@pytest.mark.parametrize("name", ["../x", "/etc/hostname", "..", "sub/x"])
def test_a_checksum_list_naming_a_file_outside_is_refused(trained, tmp_path, name):
    _, checkpoint = copy_run(trained, tmp_path)
    (checkpoint.parent / "x").write_text("outside")
    listing = checkpoint / checksum_file(0)
    listed = json.loads(listing.read_text())
    listing.write_text(json.dumps({**listed, name: "0" * 64}))
    assert (
        verify_checkpoint(checkpoint)
        == f"{listing.name} names {name!r}, not a file of the checkpoint"
    )
    with pytest.raises(CheckpointError, match="does not verify") as err:
        raycl.load_encoder(checkpoint)
    assert "\n" not in str(err.value)


def test_the_search_state_is_json_and_restores(tmp_path):
    space = SearchSpace.from_dict(
        {
            "t": {"scale": "log2", "lower": 0.25, "upper": 4.0, "start": 1.0},
            "b": {"scale": "pow2", "lower": 8, "upper": 64, "start": 16},
        }
    )
    searcher = CoordinateDescentSearcher(space, metric="m", mode="max")
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"m": float("nan")})  # no finite metric: scored -inf
    searcher.suggest("t1")
    path = tmp_path / "searcher-state"
    searcher.save(str(path))
    saved = json.loads(path.read_text())  # strict JSON: no NaN or Infinity literals
    json.dumps(saved, allow_nan=False)
    restored = CoordinateDescentSearcher(OTHER_SPACE, metric="other", mode="min")
    restored.restore(str(path))
    assert restored.__dict__ == searcher.__dict__
    assert restored.suggest("t2") == searcher.suggest("t2")


def test_a_pickled_search_state_is_refused_without_running(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "searcher-state"
    path.write_bytes(pickle.dumps(Payload(marker)))
    searcher = CoordinateDescentSearcher(OTHER_SPACE)
    with pytest.raises(CheckpointError, match=f"{path}: cannot restore the search"):
        searcher.restore(str(path))
    assert not marker.exists()
