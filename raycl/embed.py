"""``raycl embed``: a trained encoder over a whole data split, into one Parquet file.

The items of the split (``test`` or ``train`` of the run's data set, or of another one given
by ``data=…``/``data.*`` overrides; the data set's evaluation transform) are embedded by a
pool of ``cluster.num_workers`` Ray actors with Ray Data (``cluster.*`` of this command line,
never the run's): ``from_numpy`` of the item indices, then ``map_batches`` (``eval.batch_size``
items a batch) over the actor pool (:class:`EmbedItems`: each actor opens the split and loads
the encoder once, then reads, transforms and embeds batch after batch; one GPU each with
``cluster.use_gpu``). Each actor holds ``cluster.cpus_per_worker`` CPUs when the command line
sets it, else an even share of the cluster's CPUs (no more than a node has: one actor on a
CPU-only node takes all its cores), and runs a torch thread on each. Reading sits in the same
actor as the encoder rather than in separate CPU tasks: on a CPU cluster they share the cores
anyway, and a read task could wait forever for a CPU that the actors hold.
The driver streams the batches in index order into one Parquet file, written under a
temporary name and renamed when complete. ``cluster.num_workers=0`` embeds in this process,
without Ray (the same reads, the same encoder).

Columns: ``index`` (int64, the item's position in the split), ``id`` (string: where the
item is stored — file, file and row, or ``item N``), ``label`` (int64), ``embedding``
(``fixed_size_list<float32>[D]``: the encoder's features, what the run's kNN and linear probe
use) and with ``head`` ``projection`` (the projection head's output); ``normalize`` divides
each row by its L2 norm. A two-tower run embeds its image tower (``tower="image"``, as above;
``projection`` is the joint embedding) or its text tower (``tower="text"``: the captions of
the split's image–caption pairs, with a ``caption`` column; ``embedding`` is the text tower's
joint embedding).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from raycl.checkpoint import choose_checkpoint, recorded_config, recorded_input_shape
from raycl.cluster import connect_ray
from raycl.config import redacted
from raycl.errors import CheckpointError, ConfigError, DataError
from raycl.schema import DataConfig

SPLITS = ("test", "train")
TOWERS = ("image", "text")
EMBED_METADATA_KEY = b"raycl.embed"


@dataclass(frozen=True)
class EmbedRequest:
    """What to embed and how (one per ``raycl embed`` call)."""

    checkpoint: str  # a checkpoint directory (raycl.checkpoint.best_checkpoint of a run)
    data: DataConfig  # the run's data section, or the command's
    split: str = "test"
    head: bool = False
    normalize: bool = False
    batch_size: int = 256  # eval.batch_size
    seed: int = 0
    tower: str = "image"  # a two-tower run's image or text tower

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {list(SPLITS)}, got {self.split!r}")
        if self.tower not in TOWERS:
            raise ConfigError(f"--tower must be one of {list(TOWERS)}, got {self.tower!r}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be ≥ 1, got {self.batch_size}")


@dataclass(frozen=True)
class EmbedPlan:
    """A request, the size of its split and where it runs: ``workers`` actors (0: this
    process) on ``address``."""

    request: EmbedRequest
    items: int
    workers: int
    address: str | None = None
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # None: the cluster's CPUs shared by the actors


class EmbedItems:
    """Reads, transforms and embeds batches of item indices (one encoder per instance)."""

    def __init__(self, request: EmbedRequest, device: str = "cpu") -> None:
        from raycl.data import GuardedDataset
        from raycl.encoder import load_encoder
        from raycl.session import use_assigned_cpus

        use_assigned_cpus()
        self.request = request
        self.device = torch.device(device)
        model, _, _ = load_encoder(request.checkpoint, with_head=True)
        self.model = model.to(self.device).eval()
        self.dataset = GuardedDataset(open_split(request).dataset, "error")  # no substitutes

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.embed(batch["data"])

    def embed(self, indices: np.ndarray) -> pa.Table:
        """The output rows of the items at ``indices``."""
        from raycl.data.guard import item_source

        items = [self.dataset[int(i)] for i in indices]
        columns = {
            "index": pa.array(indices, pa.int64()),
            "id": [item_source(self.dataset.dataset, int(i)) for i in indices],
            "label": pa.array([int(y) for _, y in items], pa.int64()),
        }
        if self.request.tower == "text":
            captions = [caption for (_, caption), _ in items]
            with torch.no_grad():
                columns["caption"] = captions
                columns["embedding"] = self._column(self.model.embed_text(captions))
            return pa.table(columns)
        inputs = torch.stack([torch.as_tensor(x) for x, _ in items]).to(self.device)
        with torch.no_grad():
            features, projection = self.model(inputs)
        columns["embedding"] = self._column(features)
        if self.request.head:
            columns["projection"] = self._column(projection)
        return pa.table(columns)

    def _column(self, z: torch.Tensor) -> pa.FixedSizeListArray:
        z = z.flatten(1).float()
        if self.request.normalize:
            z = F.normalize(z, dim=1)
        flat = z.cpu().numpy()
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


_ALLOWED_OVERRIDES = ("data", "data.", "cluster", "cluster.", "eval.batch_size")


def plan_for(
    path: str | Path,
    checkpoint: str | Path | None = None,
    overrides: list[str] | None = None,
    **options: Any,
) -> EmbedPlan:
    """The plan for the run (or checkpoint) at ``path``: its checkpoint (the best, unless
    given) and its recorded config with ``overrides`` — ``data=NAME`` and ``data.*`` (another
    data set) and ``eval.batch_size``; the encoder is fixed. Where it runs (``cluster=…``,
    ``cluster.*``) is this command line's alone, over the package's defaults: the run's
    recorded cluster is ignored (a downloaded run could name any Ray address). The checkpoint's
    weights are loaded once here, so a checkpoint that does not load or fit is refused before
    Ray starts. ``options`` are :class:`EmbedRequest` fields (split, head, normalize, tower)."""
    from raycl.config import load_config, parse_overrides, with_overrides
    from raycl.encoder import load_encoder

    chosen = choose_checkpoint(Path(path), checkpoint).resolve()
    load_encoder(chosen)  # verified, weights only, fits its model: one line if not
    config = recorded_config(chosen)
    overrides = list(overrides or [])
    changes = parse_overrides(overrides)
    foreign = [k for k in changes if not any(k == a or k.startswith(a) for a in _ALLOWED_OVERRIDES)]
    if foreign:
        raise ConfigError(
            "raycl embed overrides data=…, data.*, cluster.* and eval.batch_size only "
            f"(the encoder is fixed), got {foreign}"
        )
    config.cluster = load_config([o for o in overrides if o.startswith("cluster")]).cluster
    cpus_given = "cluster.cpus_per_worker" in changes  # else the cluster's CPUs are shared
    changes = {k: v for k, v in changes.items() if not k.startswith("cluster")}
    if "data" in changes:  # another data set: its group's defaults, then the data.* keys
        config.data = load_config([o for o in overrides if o.startswith("data")]).data
        changes = {k: v for k, v in changes.items() if not k.startswith("data")}
    if changes:
        config = with_overrides(config, changes)
    request = EmbedRequest(
        str(chosen), config.data, seed=config.seed, batch_size=config.eval.batch_size, **options
    )
    items = check_fit(request)
    cluster = config.cluster
    cpus = cluster.cpus_per_worker if cpus_given else None
    return EmbedPlan(request, items, cluster.num_workers, cluster.address, cluster.use_gpu, cpus)


def open_split(request: EmbedRequest) -> Any:
    """The requested evaluation split (a :class:`~raycl.data.guard.GuardedDataset`); for the
    text tower, the split's image–caption pairs."""
    from raycl.data import GuardedDataset, build_datasets

    bundle = build_datasets(request.data, request.seed)
    if request.tower == "text":
        if bundle.captions is None:
            raise ConfigError(
                f"--tower text: data set {request.data.name!r} has no captions (a two-tower "
                "run's paired data has)"
            )
        if request.split == "train":
            return bundle.train_contrastive
        return GuardedDataset(bundle.captions.pairs, request.data.on_bad_item)
    return bundle.test_eval if request.split == "test" else bundle.train_eval


def check_fit(request: EmbedRequest) -> int:
    """The split's size; one line naming the data set when it is empty or its items do not
    have the encoder's input shape."""
    expected = recorded_input_shape(Path(request.checkpoint))
    split = open_split(request)
    if len(split) == 0:
        raise DataError(f"data: the {request.split} split of {request.data.name!r} is empty")
    if request.tower == "text":
        return len(split)
    shape = list(torch.as_tensor(split[0][0]).shape)
    if shape != expected:
        raise DataError(
            f"data: {request.data.name!r} items have shape {shape}; the encoder takes {expected}"
        )
    return len(split)


def embed_to_parquet(
    plan: EmbedPlan, output: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Embed the plan's split into ``output`` (one Parquet file); a summary (rows, seconds)."""
    out = Path(output)
    if out.exists() and not overwrite:
        raise CheckpointError(f"--output {out} exists; pass --overwrite to replace it")
    if plan.workers < 0:
        raise ConfigError(f"cluster.num_workers must be ≥ 0 (0: this process), got {plan.workers}")
    request = plan.request
    n = plan.items
    started = time.perf_counter()
    tables = _in_process(request, n) if plan.workers == 0 else _on_ray(request, n, plan)
    rows, first = _write(tables, out, request, n)
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "items_per_s": rows / seconds,
        # start-up: until the first batch is written (encoder and actors loaded, one batch)
        "startup_s": first[0] - started,
        "startup_rows": first[1],
        "output": str(out),
    }


def _in_process(request: EmbedRequest, n: int) -> Iterator[pa.Table]:
    embedder = EmbedItems(request, "cuda" if torch.cuda.is_available() else "cpu")
    for start in range(0, n, request.batch_size):
        yield embedder.embed(np.arange(start, min(start + request.batch_size, n)))


MAX_BLOCKS = 256  # index blocks handed to Ray Data at most (more only cost scheduling)


def _on_ray(request: EmbedRequest, n: int, plan: EmbedPlan) -> Iterator[pa.Table]:
    import logging

    import ray
    import ray.data

    from raycl.cluster import cpus_per_actor

    connect_ray(plan.address)
    workers, use_gpu = plan.workers, plan.use_gpu
    cpus = plan.cpus_per_worker
    if cpus is None:  # the CPUs shared by the actors: torch runs a thread on each
        node_cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
        cpus = cpus_per_actor(workers, [c for c in node_cpus if c > 0])
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # the driver's bar shows progress
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # batches come back in index order
    context.enable_progress_bars = False  # the driver's bar counts the rows written
    # a block per batch, but not thousands of them: Ray Data's cost per block is fixed
    blocks = min(n, max(4 * workers, min(-(-n // request.batch_size), MAX_BLOCKS)))
    indices = ray.data.from_numpy(np.array_split(np.arange(n, dtype=np.int64), blocks))
    embedded = indices.map_batches(
        EmbedItems,
        fn_constructor_kwargs={"request": request, "device": "cuda" if use_gpu else "cpu"},
        batch_size=request.batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=cpus,
        num_gpus=1 if use_gpu else 0,
    )
    yield from embedded.iter_batches(batch_size=None, batch_format="pyarrow")


def _write(
    tables: Iterator[pa.Table], out: Path, request: EmbedRequest, n: int
) -> tuple[int, tuple[float, int]]:
    """Stream ``tables`` (in index order) into ``out`` under a temporary name, renamed when
    all ``n`` rows are there (a failure leaves no output), with a progress bar; the rows, and
    when (``perf_counter``) the first batch was written with its rows."""
    from rich.progress import Progress

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".tmp")
    writer, rows, first_batch = None, 0, (time.perf_counter(), 0)
    try:
        with Progress() as progress:
            task = progress.add_task(f"embed {request.split} ({request.tower})", total=n)
            for table in tables:
                first = table["index"][0].as_py() if table.num_rows else rows
                if first != rows:
                    raise RuntimeError(f"embed: rows arrived out of order ({first} after {rows})")
                if writer is None:
                    metadata = {EMBED_METADATA_KEY: json.dumps(_description(request)).encode()}
                    writer = pq.ParquetWriter(staging, table.schema.with_metadata(metadata))
                writer.write_table(table.cast(writer.schema))
                if not rows:
                    first_batch = (time.perf_counter(), table.num_rows)
                rows += table.num_rows
                progress.advance(task, table.num_rows)
        if rows != n:
            raise RuntimeError(f"embed: {rows} rows for {n} items")
    except BaseException:
        if writer is not None:
            writer.close()
        staging.unlink(missing_ok=True)
        raise
    writer.close()
    staging.replace(out)
    return rows, first_batch


def _description(request: EmbedRequest) -> dict[str, Any]:
    """The request as JSON-able data, credentials redacted (the output's schema metadata)."""
    return asdict(redacted(request))
