"""``raycl bench search``: balance-search methods replayed on a landscape table, checked live.

Replays (:mod:`raycl.bench.replay`) run each method ``--replays`` times on a table written by
``raycl bench landscape``, with the same start, budget and concurrency. Before anything else
the landscape's *gate* says whether it can decide at all (:class:`raycl.bench.replay.Gate`),
and its *shape* why (:mod:`raycl.bench.shape`: noise, main effects, a quadratic fit).
Then, per method: the share of replays whose recommendation came within ``δ`` of the best
table mean (δ = the pooled seed SD σ unless ``--delta``), the median trials and epochs until
it did with bootstrap 95 % confidence intervals, the regret of the final recommendation, and
the cost ratios CD/random (trials), CD/ASHA (epochs) and CD/TPE (trials) with bootstrap CIs.
A replay that never got there counts as one more than it spent (a lower bound on its cost),
so a censored median is shown as ``> N``. ``--live`` also runs one real ``raycl tune`` per
method with the same budget and compares every full-length trial with the table.

Method specs are names from :data:`raycl.search.methods.METHODS`, optionally with ``search``
settings: ``cd:noise=0``, ``cd:repeats=2``; ``cd:noise=start`` sets CD's noise to the seed SD
of the start point (what a user measures by training the default three times).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from raycl.bench.measure import cpu_model
from raycl.bench.replay import Landscape, Trace, replays
from raycl.bench.shape import landscape_shape, shape_report


@dataclass(frozen=True)
class Target:
    """CD's median cost at most ``bound`` × the baseline's (and the CI's upper bound below
    ``ci_bound``, where given), in ``measure`` (trials, epochs or wall-clock), with at least
    ``min_concurrency`` trials in flight."""

    baseline: str
    measure: str
    bound: float
    ci_bound: float | None = None
    min_concurrency: int = 1


# Issue 26's pre-registered targets (no number from the paper exists to match): CD's median
# cost to δ over each baseline's, the share of CD's replays that reach δ, and CD's final
# recommendation against TPE's after these many trials.
TARGETS = (
    Target("random", "trials", 1 / 2),
    Target("asha", "epochs", 1 / 2),
    Target("tpe", "trials", 1.0),
    Target("tpe", "wall-clock", 1.0, min_concurrency=8),
    Target("random", "wall-clock", 1.0, min_concurrency=8),
)
MEASURES = ("trials", "epochs", "wall-clock")
REACH_SHARE = 0.9
FINAL_AT_TRIALS = (20, 40)


@dataclass(frozen=True)
class Method:
    """A method spec resolved against the landscape's config: its label, its ``search=…``
    overrides and the ``search`` section ``raycl tune`` would use with them."""

    label: str
    overrides: list[str]
    search: Any


def method(
    spec: str,
    landscape: Landscape,
    *,
    budget_epochs: int,
    budget_trials: int | None,
    concurrency: int,
) -> Method:
    """A method spec such as ``cd:noise=start,eps=0`` on the landscape's tune config, with the
    benchmark's budget and concurrency (the same for every method, replayed or live)."""
    from raycl.search.tuner import load_tune_config

    name, _, settings = spec.partition(":")
    overrides = [
        f"search={name}",
        f"search.metric={landscape.metric}",
        f"search.mode={landscape.mode}",
        f"search.budget_epochs={budget_epochs}",
        f"search.budget_trials={'null' if budget_trials is None else budget_trials}",
        f"search.max_concurrent_trials={concurrency}",
    ]
    for setting in filter(None, settings.split(",")):
        key, _, value = setting.partition("=")
        if key == "noise" and value == "start":
            value = f"{np.std(landscape.curves[landscape.start_key][:, -1], ddof=1):.4f}"
        overrides.append(f"search.{key}={value}")
    cfg = load_tune_config([*landscape.overrides, *overrides])
    return Method(spec, overrides, cfg.search)


@dataclass(frozen=True)
class Cost:
    """Trials or epochs until the target; ``reached`` False: all it spent, plus one."""

    value: float
    reached: bool


def costs(traces: list[Trace], delta: float, trial_epochs: int) -> dict[str, list[Cost]]:
    """Per replay: the trials, the epochs and the wall-clock time (in units of one full
    trial's time, ``trial_epochs``) until the regret fell to ``delta``."""
    out: dict[str, list[Cost]] = {measure: [] for measure in MEASURES}
    for trace in traces:
        hit = trace.reach(delta)
        if hit is None:
            spent = (len(trace.regret), *(t[-1] if t else 0 for t in (trace.epochs, trace.clock)))
            reached = False
        else:
            spent, reached = hit, True
        trials, epochs, clock = spent
        gap = 0 if reached else 1  # a replay that never got there: one more than it spent
        out["trials"].append(Cost(trials + gap, reached))
        out["epochs"].append(Cost(epochs + gap, reached))
        out["wall-clock"].append(Cost((clock + gap) / trial_epochs, reached))
    return out


def median_cost(values: list[Cost]) -> Cost:
    """The (upper) median, ranking replays that never reached the target last."""
    ordered = sorted(values, key=lambda c: (not c.reached, c.value))
    return ordered[len(ordered) // 2]


def bootstrap(statistic, samples: list[np.ndarray], rng: np.random.Generator, n: int = 2000):
    """Percentile 95 % interval of ``statistic`` over resamples of each sample."""
    draws = [statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(n)]
    return tuple(np.percentile(draws, [2.5, 97.5]))


def _ranked(values: list[Cost]) -> np.ndarray:
    """Costs with unreached replays ranked after all reached ones (a rank-preserving key)."""
    return np.array([c.value + (0 if c.reached else 1e9) for c in values])


def _median_value(ranked: np.ndarray) -> float:
    value = float(np.sort(ranked)[len(ranked) // 2])
    return value - 1e9 if value >= 1e9 else value


def _shown(value: float, reached: bool) -> str:
    return f"{value:.4g}" if reached else f"> {value:.4g}"


def _cell(cost: Cost, interval: tuple[float, float]) -> str:
    """The median and its interval; a bound from replays that never reached δ reads ``> N``
    (they rank after every replay that did, whatever they spent)."""
    low, high = (_shown(v - 1e9, False) if v >= 1e9 else _shown(v, True) for v in interval)
    return f"{_shown(cost.value, cost.reached)} [{low}, {high}]"


def summarise(
    traces: dict[str, list[Trace]],
    landscape: Landscape,
    delta: float,
    seed: int = 0,
    concurrency: int = 1,
) -> tuple[str, dict[str, Any]]:
    """The results table, the ratios and the verdict on the targets (markdown), and numbers."""
    rng = np.random.default_rng(seed)
    lines = [
        "| method | replays reaching δ | median trials to δ [95 % CI] "
        "| median epochs to δ [95 % CI] | median wall-clock to δ, in trial times [95 % CI] "
        "| final regret: median (mean) | final regret: 90th percentile | trials run (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    numbers: dict[str, Any] = {}
    for label, runs in traces.items():
        spent = costs(runs, delta, landscape.epochs)
        cells = []
        for measure in MEASURES:
            ranked = _ranked(spent[measure])
            interval = bootstrap(lambda s: np.sort(s)[len(s) // 2], [ranked], rng)
            cells.append(_cell(median_cost(spent[measure]), interval))
        finals = [t.final_regret for t in runs]
        share = float(np.mean([c.reached for c in spent["trials"]]))
        at = {k: [t.regret_after(k) for t in runs] for k in FINAL_AT_TRIALS}
        numbers[label] = {"share": share, "costs": spent, "final": finals, "at": at}
        lines.append(
            f"| {label} | {share:.0%} | {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {statistics.median(finals):.3g} ({statistics.fmean(finals):.3g}) "
            f"| {np.quantile(finals, 0.9, method='higher'):.3g} "
            f"| {statistics.median(len(t.regret) for t in runs):g} |"
        )
    lines += ["", *_ratios(numbers, rng, concurrency)]
    return "\n".join(lines), numbers


def endpoints(traces: dict[str, list[Trace]], landscape: Landscape, top: int = 3) -> str:
    """Where each method's replays end: its ``top`` most frequent final recommendations."""
    lines = [
        f"| method | final recommendation ({', '.join(landscape.space.names)}) "
        "| share of replays | regret | local optimum (one step) |",
        "|---|---|---|---|---|",
    ]
    for label, runs in traces.items():
        counts = Counter(t.recommended for t in runs if t.recommended is not None)
        for key, n in counts.most_common(top):
            point = ", ".join(f"{value:g}" for value in key)
            optimum = "yes" if landscape.is_local_optimum(key) else "no"
            lines.append(
                f"| {label} | {point} | {n / len(runs):.0%} | {landscape.regret(key):.3g} "
                f"| {optimum} |"
            )
    return "\n".join(lines)


def _ratios(numbers: dict[str, Any], rng: np.random.Generator, concurrency: int) -> list[str]:
    """CD's median cost over each baseline's, with a bootstrap CI, and the verdicts (of the
    targets that apply at ``concurrency`` trials in flight)."""
    if "cd" not in {label.split(":")[0] for label in numbers}:
        return []
    cd = next(label for label in numbers if label.split(":")[0] == "cd")
    lines = [
        f"Ratios of medians ({cd} over each baseline; bootstrap 95 % CI over replays):",
        "",
        "| ratio | measure | value [95 % CI] | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for target in TARGETS:
        other, measure, bound = target.baseline, target.measure, target.bound
        if other not in numbers or concurrency < target.min_concurrency:
            continue
        mine = median_cost(numbers[cd]["costs"][measure])
        theirs = median_cost(numbers[other]["costs"][measure])
        ratio = mine.value / theirs.value
        low, high = bootstrap(
            lambda x, y: _median_value(x) / _median_value(y),
            [_ranked(numbers[cd]["costs"][measure]), _ranked(numbers[other]["costs"][measure])],
            rng,
        )
        if not mine.reached:
            verdict = "not met: CD's median replay never reached δ"
        elif not theirs.reached:
            verdict = (
                f"{'met' if ratio <= bound else 'undetermined'} ({other}'s median replay "
                "never reached δ: the ratio is an upper bound)"
            )
        else:
            verdict = "met" if ratio <= bound else "not met"
        if target.ci_bound is not None and verdict == "met" and high >= target.ci_bound:
            verdict = (
                f"not met: the CI's upper bound {high:.2f} is not < {_fraction(target.ci_bound)}"
            )
        ci_rule = f", CI upper < {_fraction(target.ci_bound)}" if target.ci_bound else ""
        lines.append(
            f"| CD / {other} | {measure} | {ratio:.2f} [{low:.2f}, {high:.2f}] "
            f"| ≤ {_fraction(bound)}{ci_rule} | {verdict} |"
        )
    share = numbers[cd]["share"]
    lines += [
        "",
        f"- CD reaches δ in ≥ {REACH_SHARE * 100:.0f} % of replays: "
        f"{'met' if share >= REACH_SHARE else 'not met'} ({share:.0%})",
    ]
    if "tpe" in numbers:
        for trials in FINAL_AT_TRIALS:
            for name, statistic in (("median", 0.5), ("90th percentile", 0.9)):
                mine, theirs = (
                    float(np.quantile(numbers[m]["at"][trials], statistic, method="higher"))
                    for m in (cd, "tpe")
                )
                lines.append(
                    f"- CD's recommendation after {trials} trials, regret {name} ≤ TPE's: "
                    f"{'met' if mine <= theirs else 'not met'} ({mine:.3g} vs {theirs:.3g})"
                )
    return lines


def _fraction(value: float) -> str:
    return str(Fraction(value).limit_denominator(10))


def plot(
    traces: dict[str, list[Trace]], path: Path, budget_epochs: int, metric: str, seed: int = 0
) -> None:
    """Median regret of the recommendation against trials and epochs, with 95 % CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for colour, (label, runs) in zip(
        plt.rcParams["axes.prop_cycle"].by_key()["color"], traces.items(), strict=False
    ):
        longest = max(len(t.regret) for t in runs)
        for ax, grid, at in (
            (axes[0], np.arange(1, longest + 1), _regret_by_trial),
            (axes[1], np.linspace(1, budget_epochs, 120), _regret_by_epoch),
        ):
            curves = np.array([at(t, grid) for t in runs])  # replays × grid
            median = np.median(curves, axis=0)
            draws = np.array(
                [
                    np.median(curves[rng.integers(0, len(curves), len(curves))], axis=0)
                    for _ in range(300)
                ]
            )
            low, high = np.percentile(draws, [2.5, 97.5], axis=0)
            ax.plot(grid, median, color=colour, label=label)
            ax.fill_between(grid, low, high, color=colour, alpha=0.2, linewidth=0)
    for ax, xlabel in zip(axes, ("trials finished", "epochs trained (all trials)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"regret of the recommendation ({metric} points)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Balance search replayed on a landscape table: median over replays, 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _regret_by_trial(trace: Trace, grid: np.ndarray) -> np.ndarray:
    regret = np.array(trace.regret, dtype=float)
    regret = np.where(np.isfinite(regret), regret, np.nan)
    padded = np.concatenate([regret, np.full(len(grid), regret[-1] if len(regret) else np.nan)])
    return _ffill(padded[: len(grid)])


def _regret_by_epoch(trace: Trace, grid: np.ndarray) -> np.ndarray:
    index = np.searchsorted(np.array(trace.epochs), grid, side="right") - 1
    regret = np.array(trace.regret, dtype=float)
    values = np.where(index >= 0, regret[np.clip(index, 0, None)], np.nan)
    return _ffill(np.where(np.isfinite(values), values, np.nan))


def _ffill(values: np.ndarray) -> np.ndarray:
    """Before the first full trial there is no recommendation: shown as the worst regret."""
    out = values.copy()
    out[np.isnan(out)] = np.nanmax(values) if np.isfinite(values).any() else 0.0
    return out


def live_check(
    landscape: Landscape, methods: list[Method], args: argparse.Namespace, budget_epochs: int
) -> str:
    """One real ``raycl tune`` per method with the replays' budget and concurrency; every
    full-length trial's metric against the table (z = (metric − table mean) / σ)."""
    import ray

    from raycl.cluster import connect_ray
    from raycl.search.tuner import load_tune_config, run_search

    storage = str(Path(args.storage_path).resolve())
    seeds = landscape.seeds
    expected = 0.674 * math.sqrt(1 + 1 / seeds) * float(np.median(landscape.seed_sds))
    connect_ray()
    lines = [
        f"One real `raycl tune` per method on the table's config, budget {budget_epochs} "
        f"epochs, {args.concurrency} trials in flight. Δ = trial's metric − table mean of its "
        "point, z = Δ / σ; with seed noise alone ~95 % of |z| ≤ 2, and the median |Δ| (of a "
        "normal Δ) is "
        f"0.674·√(1 + 1/{seeds}) × the point's seed SD: {expected:.2f} at the table's median "
        "point's SD.",
        "",
        "| method | trials (full-length) | mean z | share with abs(z) ≤ 2 | median abs(Δ) "
        "| recommendation | its regret (table) | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for m in methods:
            cfg = load_tune_config(
                [
                    *landscape.overrides,
                    *m.overrides,
                    f"name=live-{re.sub(r'[^A-Za-z0-9]+', '-', m.label)}",
                    f"storage_path={storage}",
                ]
            )
            started = time.perf_counter()
            outcome = run_search(cfg)
            wall = time.perf_counter() - started
            delta = np.array(
                [
                    r.metrics[landscape.metric] - landscape.mean(landscape.space.key(r.config))
                    for r in outcome.results
                    if r.metrics and r.metrics.get("training_iteration") == landscape.epochs
                ]
            )
            z = delta / landscape.sigma
            chosen = landscape.space.key(outcome.best_config)
            point = ", ".join(f"{k}={outcome.best_config[k]:g}" for k in landscape.space.names)
            lines.append(
                f"| {m.label} | {len(outcome.results)} ({len(z)}) | {np.mean(z):+.2f} "
                f"| {np.mean(np.abs(z) <= 2):.0%} | {np.median(np.abs(delta)):.2f} "
                f"| {point} | {landscape.regret(chosen):.2f} "
                f"| {wall / 60:.1f} min |"
            )
            print(lines[-1], flush=True)
    finally:
        ray.shutdown()
    return "\n".join(lines)


def command_line(args: argparse.Namespace, budget_epochs: int, delta: float) -> str:
    """The command that reproduces a report (every option spelled out)."""
    words = ["raycl", "bench", "search", args.table, "--methods", *args.methods]
    words += ["--replays", str(args.replays), "--concurrency", str(args.concurrency)]
    words += ["--budget-epochs", str(budget_epochs), "--delta", f"{delta:.6g}"]
    if args.budget_trials is not None:
        words += ["--budget-trials", str(args.budget_trials)]
    if args.crn:
        words.append("--crn")
    if args.starts:
        words.append("--starts")
    if args.observe_seeds:
        words += ["--observe-seeds", str(args.observe_seeds)]
    return shlex.join(words)


def main(args: argparse.Namespace) -> None:
    """Gate, replays, report."""
    from rich.progress import track

    from raycl.bench.landscape import read_table, runs_by_code

    rows, metadata = read_table(args.table)
    landscape = Landscape.from_table(rows, metadata)
    delta = args.delta if args.delta is not None else landscape.sigma
    gate = landscape.gate(delta)
    pooled = landscape.gate(pooled=True)
    shape = shape_report(landscape_shape(landscape, deltas=(0.5, 1.0, delta)))
    gates = (
        f"{gate.report()}\n\nThe same gate with the pooled σ (for comparison):\n{pooled.report()}"
    )
    print(f"{gates}\n\n{shape}", flush=True)
    if args.gate:
        return
    if landscape.missing():
        raise ValueError(f"{args.table}: {landscape.missing()} lattice points have no full run")
    budget_epochs = args.budget_epochs or 40 * landscape.epochs
    methods = [
        method(
            spec,
            landscape,
            budget_epochs=budget_epochs,
            budget_trials=args.budget_trials,
            concurrency=args.concurrency,
        )
        for spec in args.methods
    ]
    traces: dict[str, list[Trace]] = {m.label: [] for m in methods}
    seen, scoring = landscape, None
    if args.observe_seeds:
        seen, scoring = landscape.held_out(args.observe_seeds)
    runs = replays(
        seen,
        [m.search for m in methods],
        args.replays,
        starts=landscape.starts(delta, landscape.sigma) if args.starts else None,
        concurrency=args.concurrency,
        budget_epochs=budget_epochs,
        budget_trials=args.budget_trials,
        crn=args.crn,
        scoring=scoring,
    )
    labels = [m.label for m in methods] * args.replays
    for label, trace in track(
        zip(labels, runs, strict=True), total=len(labels), description="replays"
    ):
        traces[label].append(trace)
    table, _ = summarise(traces, landscape, delta, concurrency=args.concurrency)
    header = (
        f"`{command_line(args, budget_epochs, delta)}`\n\n"
        f"Date {date.today()}; machine: {cpu_model()}, {os.cpu_count()} cores. "
        f"Table `{args.table}` ({landscape.epochs} epochs a trial; built with overrides "
        f"`{' '.join(landscape.overrides)}`; runs: {runs_by_code(rows, metadata)}); "
        f"{args.replays} replays per method, "
        f"{args.concurrency} trials in flight, budget {budget_epochs} epochs"
        f"{f' / {args.budget_trials} trials' if args.budget_trials else ''}; "
        f"δ = {delta:.3g} points; each lookup "
        f"{'uses the replay’s seed (common random numbers)' if args.crn else 'draws a seed'}."
    )
    text = (
        f"{header}\n\n{gates}\n\n{shape}\n\n{table}\n\n"
        f"Most frequent final recommendations:\n\n{endpoints(traces, landscape)}"
    )
    print(text)
    if args.live:
        text += f"\n\n### Live check\n\n{live_check(landscape, methods, args, budget_epochs)}"
    if args.output:
        out = Path(args.output)
        plot(traces, out.with_suffix(".png"), budget_epochs, landscape.metric)
        out.write_text(
            f"# raycl bench search\n\n{text}\n\n![regret]({out.with_suffix('.png').name})\n"
        )
