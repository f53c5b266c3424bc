"""Search methods by name, replays on a landscape table, and the report of
``raycl bench search`` (no Ray cluster: the searchers are driven as Tune would)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ray.tune.search import Searcher

import raycl
from raycl.bench.measure import code_version
from raycl.bench.replay import Landscape, replay, replays
from raycl.schema import SearchConfig
from raycl.search.methods import (
    METHODS,
    LatticeSearcher,
    SeedRepeater,
    build_search,
    check_search,
)
from raycl.search.searcher import SEED_KEY
from raycl.search.space import SearchSpace

SPACE = {
    "loss.temperature": {
        "scale": "log2",
        "lower": 0.125,
        "upper": 1.0,
        "start": 0.5,
        "step": 1.0,
        "min_step": 1.0,
    },
    "loss.weight": {
        "scale": "log2",
        "lower": 0.25,
        "upper": 4.0,
        "start": 1.0,
        "step": 1.0,
        "min_step": 1.0,
    },
    "data.batch_size_per_worker": {"scale": "pow2", "lower": 32, "upper": 128, "start": 64},
}


def search_section(method: str, **settings: Any) -> SimpleNamespace:
    return SimpleNamespace(
        **{**vars(SearchConfig()), "method": method, "metric": "acc", **settings}
    )


def quadratic_table(seeds: int = 2, epochs: int = 3, noise: float = 0.3) -> pd.DataFrame:
    """A landscape with its optimum at (0.25, 2, 32) and a noisy seed offset per run."""
    rng = np.random.default_rng(0)
    rows = []
    for point in SearchSpace.from_dict(SPACE).lattice():
        u = math.log2(point["loss.temperature"]) + 2
        v = math.log2(point["loss.weight"]) - 1
        b = math.log2(point["data.batch_size_per_worker"]) - 5
        value = 80 - 3 * u * u - 2 * v * v - b * b
        for seed in range(seeds):
            shift = rng.normal(0, noise)
            for epoch in range(1, epochs + 1):
                rows.append(
                    {**point, "seed": seed, "epoch": epoch, "acc": value * epoch / epochs + shift}
                )
    return pd.DataFrame(rows)


METADATA = {"space": SPACE, "metric": "acc", "mode": "max", "epochs": 3, "overrides": []}


@pytest.fixture(scope="module")
def landscape() -> Landscape:
    return Landscape.from_table(quadratic_table(), METADATA)


# -- the methods ------------------------------------------------------------------------------


def drive(searcher: Searcher, objective, trials: int) -> list[dict[str, Any]]:
    searcher.set_search_properties("acc", "max", {})
    seen = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict)
        seen.append(config)
        searcher.on_trial_complete(f"t{i}", {"acc": objective(config)})
    return seen


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_optuna_methods_start_at_the_start_and_stay_on_the_lattice(method: str) -> None:
    space = SearchSpace.from_dict(SPACE)
    plan = build_search(space, search_section(method), seed=3, epochs=3)
    seen = drive(plan.searcher, lambda c: -c["loss.weight"], trials=12)
    assert {k: seen[0][k] for k in space.names} == space.start_point()
    lattice = {tuple(sorted(p.items())) for p in space.lattice()}
    assert all(tuple(sorted((k, c[k]) for k in space.names)) in lattice for c in seen)
    assert all(c[SEED_KEY] == 3 for c in seen)
    assert len({tuple(sorted(c.items())) for c in seen}) > 4


def test_tpe_has_the_fair_settings() -> None:
    space = SearchSpace.from_dict(SPACE)
    plan = build_search(space, search_section("tpe"), seed=0, epochs=3)
    sampler = plan.searcher._optuna._sampler
    assert sampler._n_startup_trials == 2 * 3 + 1
    assert sampler._multivariate and sampler._constant_liar


class Spy(Searcher):
    """Suggests one fixed point per call and records what it is told."""

    def __init__(self) -> None:
        super().__init__(metric="acc", mode="max")
        self.told: list[tuple[str, dict]] = []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return {"x": len(self.told), SEED_KEY: 10}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        self.told.append((trial_id, result))


def test_seed_repeater_trains_every_point_on_consecutive_seeds_and_reports_the_mean() -> None:
    spy = Spy()
    repeater = SeedRepeater(spy, repeat=3)
    configs = [repeater.suggest(f"t{i}") for i in range(3)]
    assert [c[SEED_KEY] for c in configs] == [10, 11, 12]
    assert all(c["x"] == 0 and "__trial_index__" not in c for c in configs)
    for i, value in enumerate((1.0, 2.0, 6.0)):
        repeater.on_trial_complete(f"t{i}", {"acc": value})
    assert spy.told == [("t0", {"acc": 3.0})]


def test_repeats_wrap_optuna_methods_and_cd_repeats_itself() -> None:
    space = SearchSpace.from_dict(SPACE)
    assert isinstance(
        build_search(space, search_section("tpe", repeats=2), 0, 3).searcher, SeedRepeater
    )
    assert isinstance(build_search(space, search_section("random"), 0, 3).searcher, LatticeSearcher)
    assert build_search(space, search_section("asha"), 0, 3).scheduler is not None
    assert set(METHODS) == {"cd", "random", "asha", "tpe", "gp"}


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"method": "grid"}, r"search.method must be one of \['cd'"),
        ({"repeats": 0}, "search.repeats must be >= 1"),
        ({"noise": -1.0}, "search.noise must be >= 0 or null"),
        ({"rounds": 0}, "search.rounds must be >= 1 or null"),
        ({"budget_trials": None, "budget_epochs": None}, "set search.budget_trials"),
    ],
)
def test_bad_search_sections_are_one_line(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_search(SimpleNamespace(**{**vars(search_section("cd")), **settings}))


# -- the landscape and its replays ------------------------------------------------------------


def test_local_optima_of_the_landscape(landscape: Landscape) -> None:
    optima = [key for key in landscape.curves if landscape.is_local_optimum(key)]
    assert optima == [landscape.best_key]  # a quadratic bowl: one optimum, seed noise < steps
    assert not landscape.is_local_optimum(landscape.start_key)


def test_landscape_means_regret_and_gate(landscape: Landscape) -> None:
    best = landscape.space.key(
        {"loss.temperature": 0.25, "loss.weight": 2.0, "data.batch_size_per_worker": 32}
    )
    assert landscape.best_key == best and landscape.regret(best) == 0
    start = landscape.start_key
    assert landscape.regret(start) == pytest.approx(landscape.mean(best) - landscape.mean(start))
    gate = landscape.gate(landscape.sigma)
    assert 0.05 < gate.sigma < 1.0 and gate.start_sigmas > 3
    assert gate.share == pytest.approx(1 / 60)  # only the optimum is within δ
    assert gate.decides and "passes" in gate.report()
    assert landscape.missing() == 0


@pytest.mark.parametrize("method", ["cd", "random", "asha", "tpe"])
def test_replays_respect_the_budget_and_find_the_optimum(landscape, method) -> None:
    search = search_section(method, noise=0.0, eps=0.0)
    trace = replay(
        landscape, search, replay_index=0, concurrency=2, budget_epochs=90, budget_trials=None
    )
    assert trace.epochs == sorted(trace.epochs) and trace.epochs[-1] <= 90
    assert all(r >= 0 for r in trace.regret)
    if method != "asha":  # the start is the first trial to finish
        assert trace.regret[0] == pytest.approx(landscape.regret(landscape.start_key))
    if method == "cd":
        assert trace.reach(0.0) is not None and trace.final_regret == 0.0


def test_asha_stops_poor_trials_early(landscape) -> None:
    trace = replay(
        landscape,
        search_section("asha"),
        replay_index=1,
        concurrency=2,
        budget_epochs=90,
        budget_trials=None,
    )
    assert len(trace.regret) > 90 / 3  # more trials than full ones fit in the budget


def test_lookups_draw_another_seed_for_a_repeat(landscape) -> None:
    search = search_section("cd", repeats=2)
    trace = replay(
        landscape, search, replay_index=0, concurrency=2, budget_epochs=12, budget_trials=None
    )
    assert len(trace.regret) == 4  # start (2 seeds) + the two probes' first seeds
    start = landscape.curves[landscape.start_key][:, -1]
    assert start[0] != start[1]


def test_common_random_numbers_give_the_same_search_twice(landscape) -> None:
    search = search_section("random")
    runs = [
        replay(
            landscape,
            search,
            replay_index=4,
            concurrency=1,
            budget_epochs=30,
            budget_trials=None,
            crn=True,
        )
        for _ in range(2)
    ]
    assert runs[0].regret == runs[1].regret


# -- the report, end to end -------------------------------------------------------------------


def test_bench_search_report_end_to_end(tmp_path: Path, capsys) -> None:
    from raycl.bench import search
    from raycl.bench.landscape import write_table
    from raycl.cli import build_parser

    table = tmp_path / "landscape.parquet"
    write_table(quadratic_table().to_dict("records"), table, METADATA)
    out = tmp_path / "search.md"
    args = build_parser().parse_args(
        [
            "bench",
            "search",
            str(table),
            "--replays",
            "3",
            "--output",
            str(out),
            "--methods",
            "cd:noise=start,eps=0",
            "random",
            "asha",
            "tpe",
        ]
    )
    search.main(args)
    text = out.read_text()
    assert "Gate (60 lattice points × 2 seeds): passes" in text
    for row in (
        "| cd:noise=start,eps=0 |",
        "| random |",
        "| asha |",
        "| tpe |",
        "| CD / random | trials |",
        "| CD / asha | epochs |",
        "| CD / tpe | trials |",
        "CD reaches δ in ≥ 90 % of replays",
        "CD's recommendation after 40 trials, regret 90th percentile ≤ TPE's",
        "Most frequent final recommendations",
        "| final regret: 90th percentile |",
        "Landscape shape: seed SD pooled σ",
        "| loss.temperature | 12.",  # 3u² over u = 1..−2 (noise 0.3 moves the marginal means)
    ):
        assert row in text
    assert text.startswith(
        "# raycl bench search\n\n`raycl bench search "
        f"{table} --methods cd:noise=start,eps=0 random asha tpe --replays 3 --concurrency 2 "
        "--budget-epochs 120 --delta "
    )
    # CD ends on the optimum (0.25, 2, 32) in every replay: a local optimum with regret 0
    assert "| cd:noise=start,eps=0 | 0.25, 2, 32 | 100% | 0 | yes |" in text
    assert out.with_suffix(".png").stat().st_size > 10_000
    partial = tmp_path / "partial.parquet"
    write_table(quadratic_table().query("`loss.weight` < 4").to_dict("records"), partial, METADATA)
    capsys.readouterr()
    search.main(build_parser().parse_args(["bench", "search", str(partial), "--gate"]))
    printed = capsys.readouterr().out
    assert printed.startswith(
        "Gate (48 lattice points × 2 seeds): passes so far (12 points to come)"
    )
    assert "Landscape shape" in printed and "replays" not in printed
    with pytest.raises(ValueError, match="colour"):
        search.main(
            build_parser().parse_args(
                ["bench", "search", str(table), "--replays", "1", "--methods", "cd:colour=red"]
            )
        )


def test_runs_by_code_counts_runs_not_rows() -> None:
    from raycl.bench.landscape import runs_by_code

    old = quadratic_table(seeds=1)  # 60 runs of 3 epochs from before the column existed
    new = quadratic_table(seeds=2).query("seed == 1").assign(code="abc123")
    table = pd.concat([old, new, new.head(3).assign(seed=2, code="def456")])
    assert runs_by_code(table, METADATA) == "60 unrecorded, 60 by abc123, 1 by def456"
    assert runs_by_code(pd.DataFrame(), METADATA) == "none"


def test_code_version_names_the_commit_or_the_release(monkeypatch) -> None:
    import subprocess

    assert re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", code_version())

    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert code_version() == f"raycl {raycl.__version__}"


# -- replays against the real Tune executor (slow) --------------------------------------------


def table_trainable(config: dict[str, Any], landscape: Landscape) -> None:
    """A trial that reports the table's curve for its point and seed (as ``crn`` looks up)."""
    from ray import tune

    curves = landscape.curves[landscape.space.key(config)]
    for value in curves[config[SEED_KEY] % len(curves)]:
        tune.report({"acc": float(value)})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "concurrency", "trials"),
    [("cd", 2, 9), ("cd", 1, 9), ("cd", 2, 18), ("random", 1, 9), ("asha", 1, 9), ("tpe", 1, 9)],
)
def test_replays_decide_as_the_real_tuner_does(
    ray_cluster, landscape, tmp_path, method, concurrency, trials
) -> None:
    """The same searcher objects make the same decisions under Tune's own executor (with
    the table as the trainable) as in a replay: same trials, same points, same epochs (CD
    with 18 trials: into its second round)."""
    from ray import tune

    search = search_section(method, budget_trials=trials, noise=0.0, eps=0.0)
    replayed = replay(
        landscape,
        search,
        replay_index=2,
        concurrency=concurrency,
        budget_epochs=None,
        budget_trials=trials,
        crn=True,
    )
    plan = build_search(landscape.space, search, seed=2, epochs=landscape.epochs)
    results = tune.Tuner(
        tune.with_parameters(table_trainable, landscape=landscape),
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            metric="acc",
            mode="max",
            search_alg=plan.searcher,
            scheduler=plan.scheduler,
            num_samples=trials,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    real = [(landscape.space.key(r.config), len(r.metrics_dataframe)) for r in results]
    assert real == [(key, epochs) for _, key, epochs in sorted(replayed.trials)]


@pytest.mark.slow
def test_tiny_landscape_replays_and_live_check_end_to_end(tmp_path: Path) -> None:
    """`raycl bench landscape` trains a 2 × 2 lattice with 2 seeds on Ray actors, then
    `raycl bench search --live` replays it and runs each method for real against it."""
    import subprocess
    import sys

    table = tmp_path / "landscape.parquet"
    space = [
        "space.loss.temperature.lower=0.0625",
        "space.loss.temperature.upper=0.125",
        "space.loss.temperature.min_step=1.0",
        "space.loss.weight.lower=1.0",
        "space.loss.weight.upper=2.0",
        "space.loss.weight.min_step=1.0",
        "~space.data",
        "epochs=2",
        "max_steps_per_epoch=2",
        "eval.knn_k=20",
        "data.batch_size_per_worker=64",
    ]
    cli = [sys.executable, "-m", "raycl.cli"]
    built = subprocess.run(
        [*cli, "bench", "landscape", "--seeds", "2", "--output", str(table), *space],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    frame = pd.read_parquet(table)
    assert len(frame) == 2 * 2 * 2 * 2  # points × seeds × epochs
    assert set(frame["seed"]) == {0, 1} and set(frame["epoch"]) == {1, 2}
    again = subprocess.run(  # --resume: nothing left to train
        [*cli, "bench", "landscape", "--seeds", "2", "--output", str(table), "--resume", *space],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    code = code_version()
    assert set(frame["code"]) == {code}
    assert f"8 runs done (8 by {code}), 0 to train" in again.stdout
    report = tmp_path / "search.md"
    searched = subprocess.run(
        [
            *cli,
            "bench",
            "search",
            str(table),
            "--replays",
            "2",
            "--methods",
            "cd",
            "random",
            "--budget-epochs",
            "6",
            "--live",
            "--storage-path",
            str(tmp_path / "runs"),
            "--output",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert searched.returncode == 0, searched.stderr[-2000:]
    text = report.read_text()
    assert "### Live check" in text and "| cd |" in text and "| random |" in text
    assert "| median abs(Δ) |" in text
    assert f"runs: 8 by {code})" in text


def test_recheck_keeps_the_first_seed_only_if_every_rerun_is_within_two_sigma(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`raycl bench landscape --recheck N`: N seed-0 points drawn at random are retrained
    (here: a stand-in for the actors) and compared with the table, 2σ with σ the median
    point's seed SD; the reruns are kept beside the table, so a second call trains nothing."""
    import argparse
    import json

    from raycl.bench import landscape as bench

    overrides = ["epochs=2"]
    cfg = bench.tune_config(overrides)
    metric = cfg.search.metric
    rng = np.random.default_rng(1)
    runs = []
    for point, seed in bench.jobs(cfg, 2):
        final = 70 + 10 * point["loss.weight"] + rng.normal(0, 1.0)  # seed SD about 1
        runs.append([{**point, "seed": seed, "epoch": e, metric: final} for e in (1, 2)])
    output = tmp_path / "land.parquet"
    Path(f"{output}.partial.jsonl").write_text("\n".join(json.dumps(r) for r in runs))
    table = {
        json.dumps({k: row[k] for k in point}, sort_keys=True): row[metric]
        for run in runs
        for row in run
        if row["seed"] == 0
    }
    trained: list[int] = []

    def stand_in(shift: float):
        def train_runs(base, todo, partial, args, code, after_each=None):
            trained.append(len(todo))
            new = [
                [
                    {
                        **p,
                        "seed": s,
                        "epoch": 2,
                        metric: table[json.dumps(p, sort_keys=True)] + shift * (i == 0),
                    }
                ]
                for i, (p, s) in enumerate(todo)
            ]
            with partial.open("a") as file:
                file.writelines(json.dumps(r) + "\n" for r in new)
            return [row for r in new for row in r]

        return train_runs

    args = argparse.Namespace(
        output=str(output),
        overrides=overrides,
        recheck=4,
        recheck_seed=0,
        seeds=2,
        workers=1,
        address=None,
    )
    monkeypatch.setattr(bench, "train_runs", stand_in(0.5))
    assert bench.recheck(args) is True
    assert "4 of 4 within 2σ: keep seed 0" in capsys.readouterr().out
    assert bench.recheck(args) is True and trained == [4, 0]  # resumed: nothing retrained

    Path(f"{output}.recheck.jsonl").unlink()
    monkeypatch.setattr(bench, "train_runs", stand_in(25.0))  # one rerun far off
    assert bench.recheck(args) is False
    said = capsys.readouterr().out
    assert "3 of 4 within 2σ: rebuild seed 0 at one commit" in said and "| NO |" in said


# -- the gate and the starts (issue 26's rules) ----------------------------------------------


def bowl_with_a_noisy_corner(corner_noise: float) -> Landscape:
    """The quadratic bowl, 3 seeds, seed noise 0.3 everywhere but one corner point, whose
    seeds differ by ``corner_noise`` (a collapsing corner)."""
    table = quadratic_table(seeds=3)
    corner = (
        (table["loss.temperature"] == 1.0)
        & (table["loss.weight"] == 0.25)
        & (table["data.batch_size_per_worker"] == 128)
    )
    table.loc[corner, "acc"] += (table.loc[corner, "seed"] - 1) * corner_noise  # mean kept
    return Landscape.from_table(table, METADATA)


def test_sigma_is_the_median_point_seed_sd_so_one_corner_cannot_set_it() -> None:
    calm, stormy = bowl_with_a_noisy_corner(0.0), bowl_with_a_noisy_corner(100.0)
    assert stormy.sigma == pytest.approx(calm.sigma, rel=0.1)  # the median ignores one corner
    assert stormy.pooled_sigma > 5 * calm.pooled_sigma  # the pooled σ does not
    assert stormy.gate().passes  # median σ: ≥ 20 starts, 1 point within δ
    pooled = stormy.gate(pooled=True)
    assert not pooled.passes and pooled.starts < 20  # pooled σ ≈ 13: few points ≥ 3σ away
    assert "FAILS" in pooled.report() and "needs ≥ 20" in pooled.report()


def test_starts_are_far_below_and_away_from_the_region_near_the_best(landscape) -> None:
    sigma = landscape.sigma
    starts = landscape.starts(sigma, sigma)
    near = [landscape.lattice_index(k) for k in landscape.curves if landscape.regret(k) <= sigma]
    assert len(starts) >= 20 and landscape.start_key not in near
    for key in starts:
        assert landscape.regret(key) >= 3 * sigma
        index = landscape.lattice_index(key)
        assert all(max(abs(a - b) for a, b in zip(index, n, strict=True)) >= 2 for n in near)
    beside_best = landscape.space.key(
        {"loss.temperature": 0.5, "loss.weight": 1.0, "data.batch_size_per_worker": 64}
    )  # one step from the best along every coordinate: never a start
    assert landscape.regret(beside_best) >= 3 * sigma and beside_best not in starts


def test_a_flat_landscape_fails_the_gate_on_its_share_near_the_best() -> None:
    table = quadratic_table(seeds=2)
    noise = np.random.default_rng(3).normal(0, 0.3, len(table))
    table["acc"] = 80 + noise  # no point is better than another beyond seed noise
    gate = Landscape.from_table(table, METADATA).gate()
    assert gate.share > 0.05 and not gate.passes and not gate.decides


def test_replays_from_given_starts_begin_there_and_cd_sweeps_in_shuffled_orders(landscape):
    starts = landscape.starts(landscape.sigma, landscape.sigma)[:3]
    cd = search_section("cd", repeats=1, noise=0.3, rounds=1, warmup=0)  # probes come first
    traces = list(
        replays(
            landscape, [cd], 6, starts=starts, concurrency=1, budget_epochs=None, budget_trials=8
        )
    )
    begun = [t.trials[0][1] for t in traces]
    assert set(begun[:3]) == set(starts) and begun[3:] == begun[:3]  # each once, then again
    assert begun[:3] != starts  # shuffled, not in sorted order (a fixed permutation of 3)
    first_moves = set()
    for trace in traces:  # the coordinate CD probes first: the one its order puts first
        start, probe = trace.trials[0][1], trace.trials[1][1]
        first_moves.add(
            next(i for i, (a, b) in enumerate(zip(start, probe, strict=True)) if a != b)
        )
    assert len(first_moves) >= 2  # not always the space's first coordinate


def test_held_out_seeds_score_the_recommendation_the_searchers_never_saw() -> None:
    landscape = Landscape.from_table(quadratic_table(seeds=3, noise=2.0), METADATA)
    seen, scoring = landscape.held_out(2)
    assert all(len(c) == 2 for c in seen.curves.values())
    assert all(len(c) == 1 for c in scoring.curves.values())
    trace = replay(
        seen,
        search_section("random"),
        replay_index=0,
        concurrency=1,
        budget_epochs=None,
        budget_trials=10,
        scoring=scoring,
    )
    assert trace.final_regret == pytest.approx(scoring.regret(trace.recommended))
    assert trace.final_regret != pytest.approx(seen.regret(trace.recommended))
    with pytest.raises(ValueError, match="more than 3 seeds to hold one out"):
        landscape.held_out(3)


def made_up_traces(method: str, reach_at: int, final: float, replays: int = 10) -> list:
    """``replays`` traces of 40 trials × 3 epochs, 8 in flight: regret 5 until trial
    ``reach_at``, then ``final`` (never within δ = 1 when ``final`` > 1)."""
    from raycl.bench.replay import Trace

    return [
        Trace(
            method,
            r,
            epochs=[3 * (i + 1) for i in range(40)],
            clock=[3 * (i // 8 + 1) for i in range(40)],
            regret=[5.0 if i + 1 < reach_at else final for i in range(40)],
        )
        for r in range(replays)
    ]


@pytest.mark.parametrize("cd_wins", [True, False])
def test_the_verdicts_follow_the_numbers_both_ways(landscape, cd_wins: bool) -> None:
    from raycl.bench.search import summarise

    cd = made_up_traces("cd", 2, 0.0) if cd_wins else made_up_traces("cd", 30, 2.0)
    traces = {
        "cd": cd,
        "random": made_up_traces("random", 8, 0.5),
        "asha": made_up_traces("asha", 9, 0.5),
        "tpe": made_up_traces("tpe", 6, 0.5),
    }
    text, _ = summarise(traces, landscape, delta=1.0, concurrency=8)
    verdicts = [line for line in text.splitlines() if line.startswith(("| CD /", "- CD"))]
    # three cost ratios, two wall-clock ratios (8 in flight), the share, 2 × 2 final regrets
    assert len(verdicts) == 3 + 2 + 1 + 4
    assert sum("wall-clock" in line for line in verdicts) == 2
    if cd_wins:
        assert all("not met" not in line for line in verdicts), verdicts
    else:
        assert all("not met" in line for line in verdicts), verdicts


@pytest.mark.parametrize("concurrency", [1, 2, 5])
def test_the_wall_clock_counts_epochs_of_trials_training_at_once(landscape, concurrency) -> None:
    def run(method: str):
        return replay(
            landscape,
            search_section(method),
            replay_index=0,
            concurrency=concurrency,
            budget_epochs=None,
            budget_trials=10,
        )

    full = run("random")  # never waits: always `concurrency` trials of 3 epochs in flight
    assert full.clock[-1] == math.ceil(10 / concurrency) * 3 and full.epochs[-1] == 30
    assert full.clock == sorted(full.clock) and len(full.clock) == len(full.regret)
    cd = run("cd")  # waits for a batch's results before the next: never faster
    assert cd.clock[-1] >= math.ceil(len(cd.regret) / concurrency) * 3
