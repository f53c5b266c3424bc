"""``raycl`` command line.

    raycl train [HYDRA_OVERRIDES...]      train on Ray Train (default: digits, CPU)
    raycl tune [HYDRA_OVERRIDES...]       balance search on Ray Tune (search=cd|random|asha|tpe|gp)
    raycl analyze EXPERIMENT... [--export F.parquet] [--plots DIR]   read Tune results
    raycl analyze RUN [--plots DIR]       a run's embedding space: 2-D map, nearest neighbours
    raycl embed RUN --output F.parquet [--split test|train] [--tower image|text] [--plot DIR]
                                          [OVERRIDES...]
                                          a trained encoder over a split, into Parquet
    raycl export RUN --output DIR [--torchscript]   the encoder as safetensors (+ TorchScript)
    raycl submit [--address A] train|tune [OVERRIDES...] [--follow]   run as a Ray Job
    raycl submit status|logs|stop JOB_ID, raycl submit list            job life cycle
    raycl bench loss [OPTIONS]            tiled vs materialised losses vs the GEMM limit
    raycl bench train [OPTIONS]           training throughput, 1 vs 2 workers
    raycl bench search [OPTIONS]          CD vs random vs ASHA balance search, same budget
    raycl bench landscape [OPTIONS]       every lattice point of a search space, with seeds
    raycl bench trials [OPTIONS]          a Tune trial's overhead, with and without actor reuse
    raycl bench gpu [OPTIONS]             the GPU path on one device (benchmarks/gpu/run.sh)
    raycl bench memory [OPTIONS]          step memory and time vs batch, one pass vs chunks
    raycl bench embed [OPTIONS]           raycl embed items/s (0, 1, 2 actors) vs a plain loop

Hydra overrides look like ``loss=tcl loss.k1=5000 data=cifar10 cluster.num_workers=8``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


def _overrides(args: argparse.Namespace) -> list[str]:
    return [*args.overrides, *(["verbose=true"] if args.verbose else [])]


def _train(args: argparse.Namespace) -> None:
    from raycl.config import load_config, to_yaml
    from raycl.runner import check_inputs

    cfg = load_config(_overrides(args), config_dirs=args.config_dir)
    if args.cfg:
        check_inputs(cfg)
        print(to_yaml(cfg), end="")
        return
    from raycl.report import print_training_summary
    from raycl.runner import train

    print_training_summary(train(cfg), cfg)


def _tune(args: argparse.Namespace) -> None:
    from raycl.config import to_yaml
    from raycl.search.tuner import load_tune_config

    cfg = load_tune_config(_overrides(args), config_dirs=args.config_dir)
    if args.cfg:
        print(to_yaml(cfg), end="")
        return
    from raycl.report import print_search_summary
    from raycl.search.tuner import run_search

    print_search_summary(run_search(cfg), cfg)


def _config_help(config_name: str) -> str:
    """The epilog of ``raycl train|tune --help``: every config group and its options."""
    from raycl.config import group_options

    groups = group_options()
    if config_name == "train":
        groups = {k: v for k, v in groups.items() if k not in ("search", "space")}
    lines = ["config groups (choose one with group=option; set any key with group.key=value):"]
    lines += [f"  {group:<9} {', '.join(options)}" for group, options in groups.items()]
    lines.append("--config-dir DIR adds DIR/<group>/<option>.yaml files to these groups.")
    return "\n".join(lines)


def _config_arguments(parser: argparse.ArgumentParser, config_name: str) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. loss=tcl loss.k1=5000")
    parser.add_argument(
        "--cfg", action="store_true", help="print the composed, validated config and exit"
    )
    parser.add_argument(
        "--config-dir",
        action="append",
        metavar="DIR",
        help="a directory of extra config group options (DIR/loss/my_loss.yaml, ...)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's own log lines too (config: verbose)"
    )
    parser.epilog = _config_help(config_name)


def _submit(args: argparse.Namespace) -> None:
    from raycl import submit

    if args.action in ("train", "tune"):
        submit.submit(
            args.action,
            args.overrides,
            address=args.address,
            token_file=args.token_file,
            working_dir=args.working_dir,
            submission_id=args.submission_id,
            follow=args.follow,
            insecure=args.insecure,
        )
        return
    jobs = submit.client(args.address, args.token_file, args.insecure)
    if args.action == "status":
        print(submit.job_status(jobs, args.job_id))
    elif args.action == "logs":
        submit.job_logs(jobs, args.job_id, args.follow)
    elif args.action == "stop":
        submit.stop_job(jobs, args.job_id)
    else:
        submit.list_jobs(jobs)


def _analyze(args: argparse.Namespace) -> None:
    from pathlib import Path

    from raycl.checkpoint import is_run
    from raycl.embedding_map import plot_run
    from raycl.search.analysis import analyze

    runs = [p for p in args.experiments if is_run(Path(p))]
    for run in runs:  # a training run: pictures of its embedding space
        for path in plot_run(run, args.plots or Path(run) / "plots"):
            print(f"wrote {path}")
    experiments = [p for p in args.experiments if p not in runs]
    if not experiments:
        return
    analyze(
        experiments,
        metric=args.metric,
        mode=args.mode,
        top=args.top,
        sort=args.sort,
        export=args.export,
        plots=args.plots,
    )


def _embed(args: argparse.Namespace) -> None:
    from raycl.embed import embed_to_parquet, plan_for

    options = {"split": args.split, "head": args.head, "normalize": args.normalize}
    options["tower"] = args.tower
    plan = plan_for(args.run_path, args.checkpoint, args.overrides, **options)
    summary = embed_to_parquet(plan, args.output, args.overwrite)
    print(
        f"wrote {summary['rows']:,} embeddings to {summary['output']} "
        f"({summary['items_per_s']:,.0f} items/s)"
    )
    if args.plot:
        from raycl.embedding_map import plot_parquet

        for path in plot_parquet(summary["output"], args.plot):
            print(f"wrote {path}")


def _export(args: argparse.Namespace) -> None:
    from raycl.export import export_encoder

    out = export_encoder(
        args.run_path, args.output, args.checkpoint, args.torchscript, args.overwrite
    )
    print(f"wrote {out}")


def _encoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_path", metavar="RUN", help="run directory or checkpoint directory")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the run's best)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


class _Import(NamedTuple):
    """A command's implementation, ``module.function``, imported when the command is chosen."""

    module: str
    function: str = "main"

    def load(self) -> Callable[[argparse.Namespace], None]:
        return getattr(importlib.import_module(self.module), self.function)


class _Parser(argparse.ArgumentParser):
    """Parses into ``run``, the chosen command's function: a command named by :class:`_Import`
    (every ``raycl bench`` one) has its module imported now, not when the parser is built."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extra = super().parse_known_args(args, namespace)
        if isinstance(getattr(parsed, "run", None), _Import):
            parsed.run = parsed.run.load()
        return parsed, extra


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command.

    Building it imports no command's implementation (no torch, Ray or pandas): each
    ``raycl bench`` benchmark (:data:`raycl.cli_bench.BENCHES`) is imported when parsed, the
    other commands' modules when they run."""
    from raycl.cli_bench import BENCHES
    from raycl.submit import DEFAULT_ADDRESS

    parser = _Parser(
        prog="raycl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="contrastive training on Ray Train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_arguments(train, "train")
    train.set_defaults(run=_train)

    tune = commands.add_parser(
        "tune",
        help="balance search on Ray Tune (search=cd|random|asha|tpe|gp)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_arguments(tune, "tune")
    tune.set_defaults(run=_tune)

    analyze = commands.add_parser(
        "analyze",
        help="tables, Parquet and plots of Tune results; maps of a run's embeddings "
        "(trusted experiments only)",
        description="Tables, Parquet and plots of Tune experiments; maps of a run's embeddings. "
        "Ray unpickles an experiment's trial state when it reads it, and unpickling can run "
        "code: analyse only experiments you trust (ones you ran, or from someone you trust). "
        "A run directory's checkpoints load without pickle code.",
    )
    analyze.add_argument(
        "experiments", nargs="+", help="Tune experiment path(s) or URI(s), or run directories"
    )
    analyze.add_argument("--metric", default="knn_top1")
    analyze.add_argument("--mode", default="max", choices=["max", "min"])
    analyze.add_argument("--top", type=int, default=10)
    analyze.add_argument("--sort", default=None, help="column to sort by (default: --metric)")
    analyze.add_argument("--export", help="write every trial's config and epochs to this Parquet")
    analyze.add_argument("--plots", help="write PNG plots into this directory")
    analyze.set_defaults(run=_analyze)

    embed = commands.add_parser("embed", help="embed a data split with a trained encoder")
    _encoder_arguments(embed)
    embed.add_argument("--output", required=True, help="Parquet file to write")
    embed.add_argument("--split", default="test", help="test (default) or train")
    embed.add_argument("--head", action="store_true", help="the projection head's output too")
    embed.add_argument("--normalize", action="store_true", help="L2-normalise each row")
    embed.add_argument(
        "--tower",
        default="image",
        help="a two-tower run's image tower (default) or text tower (the split's captions)",
    )
    embed.add_argument("--plot", metavar="DIR", help="also write PNG maps of the embeddings")
    embed.add_argument(
        "overrides",
        nargs="*",
        help="data=NAME, data.*, cluster.* (num_workers: Ray actors, 0: this process), "
        "eval.batch_size",
    )
    embed.set_defaults(run=_embed)

    export = commands.add_parser("export", help="write a trained encoder as safetensors")
    _encoder_arguments(export)
    export.add_argument("--output", required=True, help="folder to write")
    export.add_argument("--torchscript", action="store_true", help="also a traced TorchScript")
    export.set_defaults(run=_export)

    submit = commands.add_parser("submit", help="run train/tune on a Ray cluster as a Ray Job")
    submit.add_argument("--address", default=DEFAULT_ADDRESS, help="job API address")
    submit.add_argument("--token-file", help="auth token file (else RAY_AUTH_TOKEN, ...)")
    submit.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain http:// to a non-loopback address (the token travels unencrypted)",
    )
    actions = submit.add_subparsers(dest="action", required=True)
    for action in ("train", "tune"):
        job = actions.add_parser(action, help=f"submit raycl {action}")
        job.add_argument("--working-dir", default=".", help="directory shipped to the cluster")
        job.add_argument("--submission-id", default=None)
        job.add_argument("--follow", action="store_true", help="stream logs until the job ends")
        job.add_argument("overrides", nargs="*", help="Hydra overrides")
    for action in ("status", "logs", "stop"):
        job = actions.add_parser(action, help=f"{action} of a job")
        job.add_argument("job_id")
        if action == "logs":
            job.add_argument("--follow", action="store_true")
    actions.add_parser("list", help="list the cluster's jobs")
    submit.set_defaults(run=_submit)

    bench = commands.add_parser("bench", help="measure speed and memory")
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, entry in BENCHES.items():
        sub = benches.add_parser(name, help=entry.help)
        entry.options(sub)
        sub.set_defaults(run=_Import(entry.module))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``raycl`` console script: what raycl can explain is one line —
    ``raycl: error: …`` (exit code 2), ``raycl: training diverged: …`` (1) — never a traceback."""
    from raycl.errors import RayclError, TrainingDiverged
    from raycl.submit import SubmitError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes positionals in one run: overrides after an option arrive here
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args.run(args)
    except Terminated:
        _exit(f"raycl: terminated (SIGTERM){_resume_hint(args)}", 128 + signal.SIGTERM)
    except KeyboardInterrupt:
        _exit(f"raycl: interrupted{_resume_hint(args)}", 130)
    except TrainingDiverged as err:
        _exit(f"raycl: training diverged: {err}", err.exit_code)
    except RayclError as err:
        _exit(f"raycl: error: {err}", err.exit_code)
    except (ValueError, FileNotFoundError, SubmitError) as err:
        _exit(f"raycl: error: {err}", 2)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, a container stop): unwinds like Ctrl-C, so whatever
    cleans up on an interruption (a half-written output, a run's lock) does so."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _exit(line: str, code: int) -> None:
    """End with ``line`` as the last thing on the console: Ray, if this process started or
    joined it, is shut down first, so none of its processes' late log lines follow."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    print(line, file=sys.stderr)
    raise SystemExit(code) from None


def _resume_hint(args: argparse.Namespace) -> str:
    """How an interrupted ``raycl train`` continues: the same command again."""
    if args.command != "train" or args.cfg:
        return ""
    return "; the run keeps its checkpoints: run the same command again to resume it"


if __name__ == "__main__":
    main()
