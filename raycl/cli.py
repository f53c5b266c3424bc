"""``raycl`` command line: ``raycl bench loss`` (more sub-commands join as they land)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from raycl.bench import loss as bench_loss

    parser = argparse.ArgumentParser(prog="raycl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="measure speed and memory")
    benches = bench.add_subparsers(dest="bench", required=True)
    loss = benches.add_parser("loss", help="tiled vs materialised losses vs the GEMM limit")
    bench_loss.add_arguments(loss)
    loss.set_defaults(run=bench_loss.main)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``raycl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"raycl: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
