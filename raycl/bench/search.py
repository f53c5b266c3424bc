"""``raycl bench search``: coordinate descent vs random search vs ASHA at equal compute.

Each method runs the same search (same space, trainable and budget in epochs) once per seed,
on real (short) trainings. Trials are put in the order they finished; a trial's value is its
last reported metric, its cost the epochs it trained. Reported per method (median over
seeds): trials and epochs until a trial came within ``--tolerance`` points of the best metric
any method found (over all searches, and within each seed), the best metric at the end of
the budget, and each search's best configuration retrained on fresh seeds (what the search
recommends, without the luck that made it the best of its trials); plus a PNG of
best-so-far against epochs."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from omegaconf import DictConfig

from raycl.config import load_config

METHODS = ("cd", "random", "asha")


@dataclass(frozen=True)
class Reach:
    """Trials or epochs a search spent to reach the target; if it never did (``reached`` is
    False), ``spent`` is all it spent, a lower bound, and it ranks after every search that did."""

    spent: int
    reached: bool

    def __str__(self) -> str:
        return f"{self.spent}" if self.reached else f"> {self.spent} (not reached)"


def median_reach(reaches: list[Reach]) -> Reach:
    """The (upper) median search: ranked by reached-first, then by cost."""
    ordered = sorted(reaches, key=lambda r: (not r.reached, r.spent))
    return ordered[len(ordered) // 2]


def verdict(cd: Reach, other: Reach, bound: float) -> str:
    """Whether CD's median cost is at most ``bound`` times the other method's."""
    if not cd.reached:
        return "not met: CD's median search never reached the target"
    ratio = cd.spent / other.spent
    if other.reached:
        return f"{'met' if ratio <= bound else 'not met'} (ratio {ratio:.2f})"
    if ratio <= bound:
        return f"met (ratio < {ratio:.2f}: the other never reached it)"
    return f"undetermined (ratio < {ratio:.2f}: the other never reached it)"


@dataclass
class Trajectory:
    """One search: per finished trial (in finishing order) its metric and cumulative epochs."""

    method: str
    seed: int
    metrics: list[float]
    epochs: list[int]
    best_config: dict
    rechecked: list[float] | None = None  # the best config retrained on fresh seeds

    def reach(self, target: float) -> tuple[Reach, Reach]:
        """(trials, epochs) until the first trial at or above ``target``."""
        for i, value in enumerate(self.metrics):
            if value >= target:
                return Reach(i + 1, True), Reach(self.epochs[i], True)
        return Reach(len(self.metrics), False), Reach(self.epochs[-1], False)

    def best_so_far(self) -> list[float]:
        best, out = float("-inf"), []
        for value in self.metrics:
            best = max(best, value)
            out.append(best)
        return out


def trajectory(outcome, method: str, seed: int, metric: str) -> Trajectory:
    """Finished trials in finishing order, with the epochs spent up to each."""
    finished = []
    for result in outcome.results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or metric not in frame:
            continue
        last = frame.iloc[-1]
        finished.append((float(last["timestamp"]), float(last[metric]), len(frame)))
    finished.sort()
    spent, epochs = 0, []
    for _, _, n in finished:
        spent += n
        epochs.append(spent)
    return Trajectory(method, seed, [m for _, m, _ in finished], epochs, outcome.best_config)


def load(raw: Path) -> list[Trajectory]:
    """The searches finished so far, from the JSON lines beside the report."""
    return [Trajectory(**json.loads(line)) for line in raw.read_text().splitlines()]


def as_line(run: Trajectory) -> str:
    """One search as a JSON line, as :func:`load` reads it."""
    return json.dumps(asdict(run), default=str) + "\n"


def search_config(args: argparse.Namespace, method: str, seed: int, name: str) -> DictConfig:
    """The ``tune`` config of one benchmark search (budget in epochs only)."""
    return load_config(
        [
            f"search={method}",
            f"seed={seed}",
            f"search.budget_epochs={args.budget_epochs}",
            "search.budget_trials=null",
            f"name={name}",
            f"storage_path={args.storage_path}",
            f"epochs={args.epochs}",
            *args.overrides,
        ],
        config_name="tune",
    )


def run(
    args: argparse.Namespace,
    todo: list[tuple[str, int]],
    raw: Path | None = None,
    done: Sequence[Trajectory] = (),
) -> list[Trajectory]:
    """``done`` plus the (method, seed) searches in ``todo``, run one after the other on the
    connected Ray cluster; each finished search is appended to ``raw`` (JSON lines) at once,
    so partial runs count."""
    from raycl.search.tuner import run_search

    runs = list(done)
    for method, seed in todo:
        cfg = search_config(args, method, seed, f"bench-{method}-seed{seed}")
        outcome = run_search(cfg)
        runs.append(trajectory(outcome, method, seed, cfg.search.metric))
        if raw is not None:
            with raw.open("a") as fh:
                fh.write(as_line(runs[-1]))
        print(
            f"{method} seed {seed}: best {max(runs[-1].metrics):.2f} "
            f"over {len(runs[-1].metrics)} trials",
            flush=True,
        )
    return runs


def recheck(runs: list[Trajectory], args: argparse.Namespace) -> None:
    """Retrain each search's best configuration from scratch on ``--recheck-seeds`` fresh
    seeds (one Tune experiment, each distinct configuration once per seed) and store the
    metrics in ``rechecked``: the quality of what a search recommends, without the luck of
    the draw that made it the best of its own trials."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raycl.search.searcher import SEED_KEY
    from raycl.search.tuner import make_trainable, point_key

    todo = [r for r in runs if r.rechecked is None]
    if not todo or args.recheck_seeds < 1:
        return
    fresh = [1000 + i for i in range(args.recheck_seeds)]
    points = [
        {**dict(c), SEED_KEY: s}
        for c in sorted({point_key(r.best_config) for r in todo})
        for s in fresh
    ]
    cfg = search_config(args, "random", 0, "bench-recheck")
    results = tune.Tuner(
        make_trainable(cfg),
        # The points' keys must be in the space; their values are the only choices.
        param_space={k: tune.choice(sorted({p[k] for p in points})) for k in points[0]},
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=points),
            num_samples=len(points),
            max_concurrent_trials=cfg.search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(name=cfg.name, storage_path=args.storage_path, verbose=1),
    ).fit()
    scores: dict[tuple, list[float]] = {}
    for result in results:
        if result.metrics and cfg.search.metric in result.metrics:
            scores.setdefault(point_key(result.config), []).append(
                result.metrics[cfg.search.metric]
            )
    for r in todo:
        r.rechecked = scores.get(point_key(r.best_config))


def summarise(
    runs: list[Trajectory], methods: list[str], tolerance: float, per_seed: bool = False
) -> str:
    """The markdown results table and the verdict on the targets.

    The target is ``tolerance`` points below the best metric any method found: over all
    searches, or (``per_seed``) over the searches of the same seed, which share the seed's
    initialisations and augmentations and so its offset.
    """
    best = {
        seed: max(max(r.metrics) for r in runs if not per_seed or r.seed == seed)
        for seed in {r.seed for r in runs}
    }
    scope = (
        "within its seed (" + ", ".join(f"{b:.2f}" for _, b in sorted(best.items())) + ")"
        if per_seed
        else f"over all searches ({max(best.values()):.2f})"
    )
    lines = [
        f"Target: within {tolerance} points of the best metric any method found {scope}.",
        "",
        "| method | runs reaching target | median trials to target | median epochs to target "
        "| median best at budget | median trials run |",
        "|---|---|---|---|---|---|",
    ]
    trials, epochs = {}, {}
    for method in methods:
        mine = [r for r in runs if r.method == method]
        reached = [r.reach(best[r.seed] - tolerance) for r in mine]
        trials[method] = median_reach([t for t, _ in reached])
        epochs[method] = median_reach([e for _, e in reached])
        hits = sum(t.reached for t, _ in reached)
        lines.append(
            f"| {method} | {hits}/{len(mine)} | {trials[method]} | {epochs[method]} "
            f"| {statistics.median(max(r.metrics) for r in mine):.2f} "
            f"| {statistics.median(len(r.metrics) for r in mine):g} |"
        )
    if {"cd", "random", "asha"} <= set(methods):
        lines += [
            "",
            "Targets (median over seeds):",
            f"- CD trials ≤ ⅓ of random search's: {verdict(trials['cd'], trials['random'], 1 / 3)}",
            f"- CD epochs ≤ ½ of ASHA's: {verdict(epochs['cd'], epochs['asha'], 1 / 2)}",
        ]
    return "\n".join(lines)


def recheck_table(runs: list[Trajectory], methods: list[str]) -> str:
    """Markdown: each method's best configurations retrained on fresh seeds, and the
    seed-to-seed spread of one configuration (pooled), the noise a search works against."""
    done = [r for r in runs if r.rechecked]
    if not done:
        return "No best configuration was retrained (`--recheck-seeds 0`)."
    spread = statistics.mean(statistics.pvariance(r.rechecked) for r in done) ** 0.5
    lines = [
        f"Each search's best configuration retrained from scratch on "
        f"{len(done[0].rechecked)} fresh seeds (mean); seed-to-seed standard deviation of one "
        f"configuration (pooled): {spread:.2f} points.",
        "",
        "| method | median over searches | each search (seed 0, 1, …) |",
        "|---|---|---|",
    ]
    for method in methods:
        means = [statistics.mean(r.rechecked) for r in done if r.method == method]
        if means:
            each = ", ".join(f"{m:.2f}" for m in means)
            lines.append(f"| {method} | {statistics.median(means):.2f} | {each} |")
    return "\n".join(lines)


def plot(runs: list[Trajectory], methods: list[str], path: Path) -> None:
    """Best-so-far metric against epochs spent, one line per run, a colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, method in zip(("C0", "C1", "C2"), methods, strict=False):
        for i, run in enumerate(r for r in runs if r.method == method):
            ax.step(
                run.epochs,
                run.best_so_far(),
                where="post",
                color=colour,
                alpha=0.7,
                label=method if i == 0 else None,
            )
    ax.set_xlabel("epochs trained (all trials)")
    ax.set_ylabel("best kNN top-1 so far (%)")
    ax.set_title("Balance search at equal compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``raycl bench search``."""
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-epochs", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per full trial")
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--storage-path", default="raycl_runs/bench-search")
    parser.add_argument("--output", help="write the markdown report here (PNG and JSON beside)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild the report from the JSON beside --output (seeds finished so far)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the searches already in the JSON beside --output; run only the missing ones",
    )
    parser.add_argument(
        "--recheck-seeds",
        type=int,
        default=3,
        help="retrain each search's best configuration on this many fresh seeds (0: skip)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every search")


def main(args: argparse.Namespace) -> None:
    """Run every search (or reload them), print the table, optionally save the report."""
    args.storage_path = str(Path(args.storage_path).resolve())
    out = Path(args.output) if args.output else None
    raw = out.with_suffix(".jsonl") if out else None
    if (args.report_only or args.resume) and (raw is None or not raw.exists()):
        raise FileNotFoundError("--report-only/--resume need --output with its .jsonl beside it")
    if args.report_only:
        runs = load(raw)
    else:
        import ray

        runs = load(raw) if args.resume else []
        if raw is not None and not args.resume:
            raw.unlink(missing_ok=True)
        finished = {(r.method, r.seed) for r in runs}
        todo = [(m, s) for s in range(args.seeds) for m in args.methods if (m, s) not in finished]
        if todo or (args.recheck_seeds > 0 and any(r.rechecked is None for r in runs)):
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
            try:
                runs = run(args, todo, raw, runs)
                recheck(runs, args)
            finally:
                ray.shutdown()
            if raw is not None:
                raw.write_text("".join(map(as_line, runs)))
    methods_by_seed: dict[int, set[str]] = {}
    for r in runs:
        methods_by_seed.setdefault(r.seed, set()).add(r.method)
    seeds = sorted(seed for seed, done in methods_by_seed.items() if set(args.methods) <= done)
    runs = [r for r in runs if r.seed in seeds]  # complete seeds only: every method ran
    text = "\n\n".join(
        [
            *(
                f"### {title}\n\n{summarise(runs, args.methods, args.tolerance, per_seed)}"
                for title, per_seed in (("Global target", False), ("Per-seed target", True))
            ),
            f"### Best configurations, retrained\n\n{recheck_table(runs, args.methods)}",
        ]
    )
    header = (
        f"Date {date.today()}; {len(seeds)} seeds per method; budget {args.budget_epochs} "
        f"epochs per search; {args.epochs} epochs per full trial; overrides: "
        f"{args.overrides or 'none'}."
    )
    print(header + "\n\n" + text)
    if out is not None:
        png = out.with_suffix(".png")
        plot(runs, args.methods, png)
        out.write_text(
            f"# raycl bench search\n\n{header}\n\n{text}\n\n![best so far]({png.name})\n"
        )
