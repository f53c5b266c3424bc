"""``data.ingest=ray_data``: Parquet streamed through Ray Data into two Ray Train workers.

Each item's label is its index, so the labels a worker receives say which items it saw: an
epoch's shards are disjoint and cover the same items as the in-worker DataLoader path.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raycl.config import load_config
from raycl.data import write_parquet_dataset

pytestmark = pytest.mark.slow

ITEMS, BATCH, WORKERS = 64, 8, 2
PARQUET = ["data=parquet", "data.image_size=8", f"data.batch_size_per_worker={BATCH}"]
PARQUET += ["data.loader_workers=0", "model.width=4"]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """train/ with ITEMS images labelled by their index (in 4 files); test/ with 8."""
    root = tmp_path_factory.mktemp("parquet")
    write_parquet_dataset(
        [png(i) for i in range(ITEMS)], list(range(ITEMS)), root / "train", rows_per_file=16
    )
    write_parquet_dataset([png(1000 + i) for i in range(8)], [0, 1] * 4, root / "test")
    return root


def _one_epoch_of_labels(config: dict) -> None:
    """A Ray Train worker: one epoch of raycl's training batches by each ingest; the labels
    it saw by each."""
    import ray.train

    from raycl.data import build_datasets
    from raycl.session import RayTrainSession

    session = RayTrainSession()
    record = {}
    for ingest, cfg in config["configs"].items():
        bundle = build_datasets(cfg.data, cfg.seed)
        batches = session.training_batches(bundle.train_contrastive, cfg.data, cfg.seed)
        seen, shapes = [], set()
        for views, labels in batches:
            seen += [int(y) for y in labels]
            shapes.add(tuple(views.shape))
        record[ingest] = {"labels": seen, "len": len(batches), "shapes": sorted(shapes)}
    rank = ray.train.get_context().get_world_rank()
    (Path(config["out"]) / f"rank{rank}.json").write_text(json.dumps(record))


def labels_per_rank(root: Path, out: Path) -> list[dict]:
    """One two-worker run that reads an epoch by each ingest (the DataLoader with Ray Train's
    distributed sampler, and Ray Data's shards): per rank, what each ingest gave it."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raycl.data.ray_ingest import contrastive_dataset

    configs = {
        ingest: load_config([*PARQUET, f"data.root={root}", f"data.ingest={ingest}"])
        for ingest in ("loader", "ray_data")
    }
    TorchTrainer(
        _one_epoch_of_labels,
        train_loop_config={"configs": configs, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=WORKERS),
        datasets={"train": contrastive_dataset(configs["ray_data"].data)},
        run_config=RunConfig(storage_path=str(out / "storage"), name="ingest"),
    ).fit()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORKERS)]


def test_each_worker_gets_a_disjoint_shard_covering_what_the_loader_covers(
    ray_cluster, root, tmp_path
):
    ranks = labels_per_rank(root, tmp_path)
    coverage = {}
    for ingest in ("loader", "ray_data"):
        per_rank = [set(r[ingest]["labels"]) for r in ranks]
        assert not per_rank[0] & per_rank[1], ingest  # disjoint
        for r in ranks:
            got = r[ingest]
            assert len(got["labels"]) == got["len"] * BATCH == ITEMS // WORKERS // BATCH * BATCH
            assert got["shapes"] == [[BATCH, 2, 3, 8, 8]]  # (B, V, C, H, W)
        coverage[ingest] = per_rank[0] | per_rank[1]
    assert coverage["ray_data"] == coverage["loader"] == set(range(ITEMS))


def test_raycl_train_with_ray_data_ingest(ray_cluster, root, tmp_path):
    from raycl.runner import train

    outcome = train(
        load_config(
            [
                *PARQUET,
                f"data.root={root}",
                "data.ingest=ray_data",
                f"cluster.num_workers={WORKERS}",
                "epochs=2",
                "eval.knn_k=3",
                "eval.linear_probe=false",
                f"storage_path={tmp_path}",
            ]
        )
    )
    assert [h["epoch"] for h in outcome.history] == [0, 1]
    assert all(np.isfinite(h["loss"]) for h in outcome.history)
    assert outcome.history[0]["global_batch"] == WORKERS * BATCH
