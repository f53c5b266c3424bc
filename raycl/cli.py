"""``raycl`` command line.

    raycl train [HYDRA_OVERRIDES...]      train on Ray Train (default: digits, CPU)
    raycl bench loss [OPTIONS]            tiled vs materialised losses vs the GEMM limit

Hydra overrides look like ``loss=tcl loss.k1=5000 data=cifar10 cluster.num_workers=8``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _train(args: argparse.Namespace) -> None:
    from raycl.config import load_config
    from raycl.report import print_training_summary
    from raycl.train import train

    cfg = load_config(args.overrides)
    print_training_summary(train(cfg), cfg)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from raycl.bench import loss as bench_loss

    parser = argparse.ArgumentParser(
        prog="raycl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="contrastive training on Ray Train")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. loss=tcl loss.k1=5000")
    train.set_defaults(run=_train)

    bench = commands.add_parser("bench", help="measure speed and memory")
    benches = bench.add_subparsers(dest="bench", required=True)
    loss = benches.add_parser("loss", help="tiled vs materialised losses vs the GEMM limit")
    bench_loss.add_arguments(loss)
    loss.set_defaults(run=bench_loss.main)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``raycl`` console script: bad input is one line, exit code 2."""
    from raycl.train import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"raycl: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        print(f"raycl: training diverged: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
