"""Tests for the balance-search space and the coordinate-descent Tune searcher (spec §2.4).

All but the ``slow`` test drive the searcher directly (suggest / on_trial_complete), as Tune
would, without a Ray cluster.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Float

from raycl.search import SEED_KEY, Coordinate, CoordinateDescentSearcher, SearchSpace

METRIC = "score"
Objective = Callable[[dict[str, Any]], float | None]  # None: the trial errors


def log2_space(
    starts: list[float],
    lower: float = 2**-8,
    upper: float = 2**8,
    step: float = 1.0,
    min_step: float = 0.25,
) -> SearchSpace:
    return SearchSpace.from_dict(
        {
            f"c{i}": {
                "scale": "log2",
                "lower": lower,
                "upper": upper,
                "start": start,
                "step": step,
                "min_step": min_step,
            }
            for i, start in enumerate(starts)
        }
    )


def log2_quadratic(optimum: list[float], coupling: float = 0.0) -> Objective:
    """-(uᵀAu) with u = log2(x) - optimum, A = 1 on the diagonal and ``coupling`` off it."""

    def objective(config: dict[str, Any]) -> float:
        u = [math.log2(config[f"c{i}"]) - o for i, o in enumerate(optimum)]
        value = sum(x * x for x in u)
        value += coupling * sum(u[i] * u[j] for i in range(len(u)) for j in range(len(u)) if i != j)
        return -value

    return objective


class Driver:
    """Plays Tune: asks for trials until the searcher waits, then completes all running ones."""

    def __init__(self, searcher: CoordinateDescentSearcher, objective: Objective) -> None:
        self.searcher = searcher
        self.objective = objective
        self.suggested: list[dict[str, Any]] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.finished = False
        self._next_id = 0

    def step(self) -> None:
        trial_id = f"trial_{self._next_id}"
        self._next_id += 1
        config = self.searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            self.finished = True
            self.complete_all()
        elif config is None:
            assert self.pending, "the searcher waits although no trial is running"
            self.complete_all()
        else:
            self.suggested.append(config)
            self.pending[trial_id] = config

    def complete_all(self) -> None:
        for trial_id, config in list(self.pending.items()):
            del self.pending[trial_id]
            value = self.objective(config)
            if value is None:
                self.searcher.on_trial_complete(trial_id, None, error=True)
            else:
                self.searcher.on_trial_complete(trial_id, {METRIC: value})

    def run(self, max_steps: int = 5000) -> Driver:
        for _ in range(max_steps):
            if self.finished:
                return self
            self.step()
        raise AssertionError("the search did not finish")


def searcher(space: SearchSpace, **kwargs: Any) -> CoordinateDescentSearcher:
    """A searcher that descends from the start (no warm-up) and spends its whole budget on
    the descent (no final checks) unless a test asks otherwise: the descent's mechanics are
    what most tests here check."""
    kwargs.setdefault("mode", "max")
    kwargs.setdefault("warmup", 0)
    kwargs.setdefault("final_checks", 0)
    return CoordinateDescentSearcher(space, metric=METRIC, **kwargs)


def log2s(config: dict[str, Any], n: int) -> list[float]:
    return [math.log2(config[f"c{i}"]) for i in range(n)]


# -- search space -------------------------------------------------------------------------------

MIXED = {
    "loss.tau": {
        "scale": "log2",
        "lower": 2**-6,
        "upper": 1.0,
        "start": 0.1,
        "step": 1.0,
        "min_step": 0.25,
    },
    "train.batch_size": {"scale": "pow2", "lower": 32, "upper": 1024, "start": 256},
    "loss.m_neg": {"scale": "linear", "lower": -0.2, "upper": 0.8, "start": 0.2, "step": 0.1},
    "loss.kind": {"scale": "categorical", "values": ["ntxent", "dhel", "kcl"], "start": "dhel"},
}


def test_space_from_dict_keeps_order_and_types() -> None:
    space = SearchSpace.from_dict(MIXED)
    assert space.names == list(MIXED)
    assert space.start_point() == {
        "loss.tau": 0.1,
        "train.batch_size": 256,
        "loss.m_neg": 0.2,
        "loss.kind": "dhel",
    }
    assert space["loss.tau"].min_step == 0.25
    assert space["train.batch_size"].min_step == 1  # default: no refinement
    assert isinstance(space.start_point()["train.batch_size"], int)


def test_moves_clip_to_bounds_and_return_none_at_a_bound() -> None:
    space = SearchSpace.from_dict(MIXED)
    start = space.start_point()
    assert space.move(start, "loss.tau", 1)["loss.tau"] == 0.2
    assert space.move(start, "loss.tau", -2)["loss.tau"] == 0.025
    assert space.move(start, "loss.tau", -3)["loss.tau"] == 2**-6  # 0.0125 clipped
    assert space.move(start, "loss.tau", 9)["loss.tau"] == 1.0
    assert space.move(start, "train.batch_size", -1)["train.batch_size"] == 128
    assert space.move(start, "loss.m_neg", 1)["loss.m_neg"] == 0.3
    assert space.move(start, "loss.m_neg", -2)["loss.m_neg"] == 0.0
    assert space.move(start, "loss.kind", 1)["loss.kind"] == "kcl"
    top = space.move(start, "train.batch_size", 2)
    assert top["train.batch_size"] == 1024
    assert space.move(top, "train.batch_size", 1) is None
    first = space.move(start, "loss.kind", -1)
    assert space.move(first, "loss.kind", -1) is None
    assert space.move(start, "loss.tau", 1, step=0.5)["loss.tau"] == pytest.approx(0.1 * 2**0.5)


def test_snapping_makes_grid_points_identical() -> None:
    space = SearchSpace.from_dict(MIXED)
    start = space.start_point()
    point = start
    for _ in range(3):
        point = space.move(point, "loss.m_neg", 1)
    assert point["loss.m_neg"] == 0.5  # not 0.5000000000000001
    assert space.move(space.move(start, "loss.tau", 1), "loss.tau", -1) == start
    two = space.move(space.move(start, "loss.tau", 1, 0.5), "loss.tau", 1, 0.5)
    assert two == space.move(start, "loss.tau", 1)
    noisy = {**start, "loss.tau": 0.1 * (1 + 1e-13), "loss.m_neg": 0.1 + 0.2}
    assert space.key(noisy) == space.key({**start, "loss.m_neg": 0.3})
    assert space.snap(noisy)["loss.tau"] == 0.1


def test_to_tune_space_matches_bounds() -> None:
    domains = SearchSpace.from_dict(MIXED).to_tune_space()
    assert isinstance(domains["loss.tau"], Float)
    assert (domains["loss.tau"].lower, domains["loss.tau"].upper) == (2**-6, 1.0)
    assert isinstance(domains["loss.tau"].sampler, Float._LogUniform)
    assert isinstance(domains["loss.m_neg"].sampler, Float._Uniform)
    assert isinstance(domains["train.batch_size"], Categorical)
    assert domains["train.batch_size"].categories == [32, 64, 128, 256, 512, 1024]
    assert domains["loss.kind"].categories == ["ntxent", "dhel", "kcl"]


def _coordinate(**fields: Any) -> dict[str, Any]:
    return {"x": {"scale": "log2", "lower": 0.5, "upper": 4.0, "start": 1.0, **fields}}


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        (_coordinate(lower=2.0, upper=2.0, start=2.0), "upper", "empty range"),
        (_coordinate(lower=4.0, upper=0.5), "lower", "must be <= upper"),
        (_coordinate(start=8.0), "start", r"must lie in \[0.5, 4.0\]"),
        (_coordinate(scale="exp"), "scale", "log2, linear, pow2, categorical"),
        (_coordinate(lower=0.0), "lower", "must be > 0"),
        (_coordinate(scale="pow2", lower=-2, upper=8, start=2), "lower", "must be > 0"),
        (_coordinate(scale="pow2", lower=3, upper=8, start=4), "lower", "power of two"),
        (_coordinate(step=0.0), "step", "must be a number > 0"),
        (_coordinate(step=-1.0), "step", "must be a number > 0"),
        (_coordinate(min_step=2.0), "min_step", "must be <= step"),
        (
            {"x": {"scale": "categorical", "values": [], "start": "a"}},
            "values",
            "non-empty list",
        ),
        (
            {"x": {"scale": "categorical", "values": ["a", "b"], "start": "c"}},
            "start",
            "must be one of",
        ),
        (
            {"x": {"scale": "categorical", "values": ["a"], "start": "a", "step": 0.5}},
            "step",
            "must be an integer",
        ),
        ({"x": {"scale": "log2", "lower": 0.5, "upper": 4.0}}, "start", "is required"),
        (_coordinate(upper=None), "upper", "is required"),
    ],
)
def test_space_validation_errors_name_coordinate_and_field(
    config: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValueError, match=rf"^coordinate 'x': field '{field}' .*{message}") as err:
        SearchSpace.from_dict(config)
    assert "\n" not in str(err.value)


def test_space_validation_of_structure() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        SearchSpace.from_dict(_coordinate(stpe=1.0))
    with pytest.raises(ValueError, match="at least one coordinate"):
        SearchSpace.from_dict({})
    coordinate = Coordinate(name="x", scale="linear", lower=0.0, upper=1.0, start=0.5)
    with pytest.raises(ValueError, match="duplicate coordinate names"):
        SearchSpace((coordinate, coordinate))


# -- searcher -----------------------------------------------------------------------------------


def test_separable_quadratic_converges_in_few_evaluations() -> None:
    optimum = [2.0, -1.5, 0.75]
    cd = searcher(log2_space([1.0, 1.0, 1.0]))
    driver = Driver(cd, log2_quadratic(optimum)).run()
    assert log2s(cd.best_config, 3) == pytest.approx(optimum, abs=1e-9)
    assert cd.best_result == pytest.approx(0.0, abs=1e-12)
    assert len(driver.suggested) == cd.num_trials < 40
    assert cd.path[0]["kind"] == "start" and cd.path[0]["accepted"]


def test_coupled_quadratic_converges_near_optimum() -> None:
    optimum = [1.3, -0.7]
    cd = searcher(log2_space([1.0, 1.0], min_step=0.125))
    Driver(cd, log2_quadratic(optimum, coupling=0.6)).run()
    found = log2s(cd.best_config, 2)
    assert math.dist(found, optimum) < 0.3
    assert cd.best_result > -0.02


def test_minimisation_mode() -> None:
    cd = searcher(log2_space([1.0, 1.0]), mode="min")
    quadratic = log2_quadratic([-2.0, 3.0])
    Driver(cd, lambda config: -quadratic(config)).run()
    assert log2s(cd.best_config, 2) == pytest.approx([-2.0, 3.0])


def test_noisy_objective_with_eps_and_repeats() -> None:
    rng = random.Random(0)
    optimum = [1.0, -2.0]
    quadratic = log2_quadratic(optimum)
    cd = searcher(log2_space([1.0, 1.0], min_step=0.5), eps=0.05, repeats=3)
    driver = Driver(cd, lambda config: quadratic(config) + rng.gauss(0.0, 0.05)).run()
    assert quadratic(cd.best_config) > -0.3
    seeds_per_point: dict[tuple, list[int]] = {}
    for config in driver.suggested:
        point = tuple(config[f"c{i}"] for i in range(2))
        seeds_per_point.setdefault(point, []).append(config[SEED_KEY])
    assert all(sorted(seeds) == [0, 1, 2] for seeds in seeds_per_point.values())


def test_bounds_are_respected_and_reached() -> None:
    space = log2_space([1.0, 1.0], lower=2**-3, upper=2**3, min_step=0.5)
    cd = searcher(space)
    driver = Driver(cd, log2_quadratic([5.0, -6.0])).run()
    assert cd.best_config == {"c0": 8.0, "c1": 0.125}
    for config in driver.suggested:
        assert all(2**-3 <= config[f"c{i}"] <= 2**3 for i in range(2))


def test_categorical_pow2_and_linear_coordinates() -> None:
    space = SearchSpace.from_dict(
        {
            "train.batch_size": {"scale": "pow2", "lower": 16, "upper": 2048, "start": 32},
            "loss.kind": {"scale": "categorical", "values": ["a", "b", "c", "d"], "start": "a"},
            "loss.m_neg": {"scale": "linear", "lower": -0.2, "upper": 0.8, "start": 0.0,
                           "step": 0.2, "min_step": 0.1},
        }
    )  # fmt: skip
    bonus = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 0.2}

    def objective(config: dict[str, Any]) -> float:
        assert isinstance(config["train.batch_size"], int)
        return (
            -((math.log2(config["train.batch_size"]) - 8) ** 2)
            + bonus[config["loss.kind"]]
            - (config["loss.m_neg"] - 0.3) ** 2
        )

    cd = searcher(space)
    Driver(cd, objective).run()
    assert cd.best_config == {"train.batch_size": 256, "loss.kind": "c", "loss.m_neg": 0.3}


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    data=st.data(),
    step=st.sampled_from([0.5, 1.0, 2.0]),
    halvings=st.integers(0, 2),
    repeats=st.integers(1, 2),
    mode=st.sampled_from(["min", "max"]),
)
def test_never_suggests_a_config_twice(
    n: int, data: st.DataObject, step: float, halvings: int, repeats: int, mode: str
) -> None:
    optimum = data.draw(st.lists(st.floats(-8, 8), min_size=n, max_size=n))
    starts = data.draw(st.lists(st.integers(-4, 4), min_size=n, max_size=n))
    coupling = data.draw(st.floats(-0.4, 0.4))
    space = log2_space([2.0**s for s in starts], 2**-5, 2**5, step, step / 2**halvings)
    quadratic = log2_quadratic(optimum, coupling)
    sign = 1.0 if mode == "max" else -1.0
    cd = searcher(space, mode=mode, repeats=repeats)
    driver = Driver(cd, lambda config: sign * quadratic(config)).run()
    seen = [tuple(sorted(config.items())) for config in driver.suggested]
    assert len(seen) == len(set(seen))
    assert all(2**-5 <= c[f"c{i}"] <= 2**5 for c in driver.suggested for i in range(n))
    assert cd.suggest("after") == Searcher.FINISHED


def test_concurrent_suggestions_hand_out_both_neighbours_then_wait() -> None:
    cd = searcher(log2_space([1.0, 1.0], step=1.0))
    start = cd.suggest("t0")
    assert start == {"c0": 1.0, "c1": 1.0, SEED_KEY: 0}
    assert cd.suggest("t1") is None  # everything needs the start's result
    cd.on_trial_complete("t0", {METRIC: -1.0})
    configs = [cd.suggest(f"t{i}") for i in range(2, 6)]
    assert configs[0] == {"c0": 2.0, "c1": 1.0, SEED_KEY: 0}
    assert configs[1] == {"c0": 0.5, "c1": 1.0, SEED_KEY: 0}
    assert configs[2:] == [None, None]
    cd.on_trial_complete("t2", {METRIC: -0.5})
    assert cd.suggest("t6") is None  # still waiting for the other neighbour
    cd.on_trial_complete("t3", {METRIC: -2.0})
    assert cd.suggest("t7") == {"c0": 4.0, "c1": 1.0, SEED_KEY: 0}  # keep moving up


def test_repeats_hand_out_every_seed_of_a_point() -> None:
    cd = searcher(log2_space([1.0]), repeats=2, seed=7, constants={"epochs": 3})
    assert cd.suggest("a") == {"epochs": 3, "c0": 1.0, SEED_KEY: 7}
    assert cd.suggest("b") == {"epochs": 3, "c0": 1.0, SEED_KEY: 8}
    assert cd.suggest("c") is None
    cd.on_trial_complete("a", {METRIC: 1.0})
    assert cd.suggest("d") is None and cd.best_config is None
    cd.on_trial_complete("b", {METRIC: 3.0})
    assert cd.best_result == 2.0
    assert cd.best_config == {"epochs": 3, "c0": 1.0}


def test_errored_trials_count_as_worst_and_the_search_goes_on() -> None:
    quadratic = log2_quadratic([3.0, 0.0])

    def objective(config: dict[str, Any]) -> float | None:
        return None if config["c0"] > 2.0 else quadratic(config)  # crashes above x = 2

    cd = searcher(log2_space([1.0, 1.0], min_step=0.5))
    Driver(cd, objective).run()
    assert cd.best_config == {"c0": 2.0, "c1": 1.0}
    errored = [entry for entry in cd.path if entry["metric"] is None]
    assert errored and not any(entry["accepted"] for entry in errored)


def test_errored_start_and_missing_metric() -> None:
    cd = searcher(log2_space([1.0]))
    cd.suggest("t0")
    cd.on_trial_complete("t0", None, error=True)
    assert cd.best_config == {"c0": 1.0} and cd.best_result is None
    up, down = cd.suggest("t1"), cd.suggest("t2")
    cd.on_trial_complete("t1", {"other_metric": 1.0})  # no metric: as bad as an error
    cd.on_trial_complete("t2", {METRIC: -5.0})
    assert cd.best_config == {"c0": 0.5} == {"c0": down["c0"]} and cd.best_result == -5.0
    assert up["c0"] == 2.0


def test_finished_at_convergence_and_after_max_trials() -> None:
    cd = searcher(log2_space([1.0, 1.0]))
    driver = Driver(cd, log2_quadratic([0.0, 0.0])).run()
    assert cd.suggest("x") == cd.suggest("y") == Searcher.FINISHED
    # at the optimum from the start: 4 neighbours at step 1, 0.5 and 0.25, nothing more
    assert len(driver.suggested) == 1 + 3 * 4
    assert not any(entry["accepted"] for entry in cd.path[1:])

    limited = searcher(log2_space([1.0, 1.0]), max_trials=5)
    driver = Driver(limited, log2_quadratic([4.0, 4.0])).run()
    assert len(driver.suggested) == 5


def memoised_noise(objective: Objective, sd: float, seed: int) -> Objective:
    """``objective`` plus Gaussian noise drawn once per (config, seed): trials repeat exactly."""
    rng = random.Random(seed)
    values: dict[tuple, float] = {}

    def noisy(config: dict[str, Any]) -> float:
        key = tuple(sorted(config.items()))
        if key not in values:
            values[key] = objective(config) + rng.gauss(0.0, sd)
        return values[key]

    return noisy


def assert_restored_search_continues(
    make: Callable[[], CoordinateDescentSearcher],
    objective: Objective,
    interrupt_after: int,
    tmp_path: Any,
) -> Driver:
    """Saved after ``interrupt_after`` steps and restored into a fresh searcher, the search
    suggests and decides exactly what an uninterrupted one does; returns that reference."""
    reference = Driver(make(), objective).run()
    driver = Driver(make(), objective)
    for _ in range(interrupt_after):
        driver.step()
    assert not driver.finished
    checkpoint = str(tmp_path / "searcher.pkl")
    driver.searcher.save(checkpoint)
    restored = CoordinateDescentSearcher(log2_space([4.0]), metric="other", mode="min")
    restored.restore(checkpoint)
    driver.searcher = restored  # running trials now report to the restored searcher
    driver.run()
    assert driver.suggested == reference.suggested
    assert restored.path == reference.searcher.path
    assert restored.best_config == reference.searcher.best_config
    return reference


@pytest.mark.parametrize("interrupt_after", [1, 2, 9, 25, 60])
def test_save_restore_continues_identically(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        return searcher(log2_space([1.0, 1.0, 1.0]), repeats=2, eps=0.01)

    objective = log2_quadratic([2.5, -1.0, 0.5], coupling=0.3)
    assert_restored_search_continues(make, objective, interrupt_after, tmp_path)


def test_set_search_properties_and_constants() -> None:
    cd = CoordinateDescentSearcher(log2_space([1.0]), constants={"epochs": 2})
    with pytest.raises(RuntimeError, match="metric"):
        cd.suggest("t0")
    assert cd.set_search_properties(METRIC, "min", {"epochs": 2, "data": {"name": "x"}})
    assert (cd.metric, cd.mode) == (METRIC, "min")
    assert cd.suggest("t0") == {"epochs": 2, "c0": 1.0, SEED_KEY: 0}
    assert not cd.set_search_properties(None, None, {"lr": tune.uniform(0.0, 1.0)})
    assert not cd.set_search_properties(None, None, {"opt": {"lr": tune.grid_search([1, 2])}})
    with pytest.raises(ValueError, match="constants"):
        CoordinateDescentSearcher(log2_space([1.0]), constants={"c0": 1.0})
    with pytest.raises(ValueError, match="constants"):
        CoordinateDescentSearcher(log2_space([1.0]), constants={SEED_KEY: 1})


def test_accepts_a_plain_dict_space() -> None:
    cd = CoordinateDescentSearcher(MIXED, metric=METRIC, mode="max")
    assert cd.space.names == list(MIXED)


# -- pattern moves, noise control, concurrent extensions ---------------------------------------


def diagonal_ridge(optimum: float, across: float = 4.0, along: float = 0.1) -> Objective:
    """A valley along c0 = c1 (log2 units) with its optimum at (optimum, optimum): moving one
    coordinate by a step leaves the valley and costs ``across``, more than it gains along it."""

    def objective(config: dict[str, Any]) -> float:
        u, v = log2s(config, 2)
        return -across * (u - v) ** 2 - along * (u + v - 2 * optimum) ** 2

    return objective


def test_pattern_move_follows_a_diagonal_ridge_where_single_moves_stall() -> None:
    objective = diagonal_ridge(3.0)
    start = {"c0": 1.0, "c1": 1.0}
    # no one-coordinate step from the start improves: plain coordinate descent stops there
    for name in start:
        for factor in (2.0, 0.5, 2**0.5, 2**-0.5):
            assert objective({**start, name: start[name] * factor}) < objective(start)
    cd = searcher(log2_space([1.0, 1.0], min_step=0.5))
    Driver(cd, objective).run()
    assert log2s(cd.best_config, 2) == pytest.approx([3.0, 3.0])
    assert any(e["kind"] == "pattern" and e["accepted"] for e in cd.path)


def test_pattern_after_two_moving_sweeps_uses_the_net_displacement() -> None:
    # Off the valley floor at the start: sweeps zig-zag along it, then the pattern takes over.
    cd = searcher(log2_space([2.0**-2, 1.0], lower=2**-6, upper=2**6, min_step=1.0))
    Driver(cd, diagonal_ridge(4.0, across=1.0, along=0.2)).run()
    assert log2s(cd.best_config, 2) == pytest.approx([4.0, 4.0])
    assert any(e["kind"] == "pattern" and e["accepted"] for e in cd.path)


@pytest.mark.parametrize("optimum", [[2.0, -1.0, 3.0], [-3.0, 0.0, 1.0], [4.0, 4.0, -2.0]])
def test_separable_landscapes_never_pay_for_a_pattern(optimum: list[float]) -> None:
    """On separable functions with the optimum on the lattice one sweep reaches it and no
    pattern fires: the trials are exactly those of plain coordinate descent."""
    cd = searcher(log2_space([1.0, 1.0, 1.0], min_step=0.5))
    Driver(cd, log2_quadratic(optimum)).run()
    assert log2s(cd.best_config, 3) == pytest.approx(optimum)
    assert {e["kind"] for e in cd.path} <= {"start", "probe", "extend"}


def lucky(config: dict[str, Any]) -> float:
    """True optimum at c0 = 1; the probe c0 = 2 is worse on average (-0.5) but its seed-0
    trial is lucky (+0.3, the best value seen)."""
    if config["c0"] == 2.0:
        return 0.3 if config[SEED_KEY] == 0 else -1.3
    return -abs(math.log2(config["c0"]))


def test_noise_control_re_measures_a_narrow_win_before_accepting_it() -> None:
    cd = searcher(log2_space([1.0], min_step=1.0), noise=0.5)
    driver = Driver(cd, lucky).run()
    assert cd.best_config == {"c0": 1.0} and cd.best_result == 0.0
    seeds = [c[SEED_KEY] for c in driver.suggested if c["c0"] == 2.0]
    assert seeds == [0, 1]  # measured again on a fresh seed, then rejected on the mean
    rejected = next(e for e in cd.path if e["config"]["c0"] == 2.0)
    assert rejected["measurements"] == 2 and not rejected["accepted"]


def test_without_noise_control_one_lucky_trial_steers_the_search() -> None:
    cd = searcher(log2_space([1.0], min_step=1.0), noise=0.0)
    Driver(cd, lucky).run()
    assert cd.best_config == {"c0": 2.0}  # the winner's curse the noise control prevents


def test_a_clear_win_is_accepted_without_a_second_measurement() -> None:
    cd = searcher(log2_space([1.0], min_step=1.0), noise=0.5)
    driver = Driver(cd, log2_quadratic([3.0])).run()
    assert cd.best_config == {"c0": 8.0}
    assert all(c[SEED_KEY] == 0 for c in driver.suggested)


def test_noise_is_estimated_from_repeats() -> None:
    rng = random.Random(1)
    cd = searcher(log2_space([1.0, 1.0], min_step=1.0), repeats=2)
    quadratic = log2_quadratic([2.0, -1.0])
    Driver(cd, lambda config: quadratic(config) + rng.gauss(0.0, 0.3)).run()
    assert 0.1 < cd._noise_level() < 0.5  # σ/√2 of the repeats' mean, σ = 0.3
    assert log2s(cd.best_config, 2) == pytest.approx([2.0, -1.0], abs=1.0)


def test_extensions_fill_every_concurrent_slot() -> None:
    cd = searcher(log2_space([1.0], lower=2**-8, upper=2**8, min_step=1.0))
    assert cd.set_max_concurrency(3)
    cd.suggest("start")
    cd.on_trial_complete("start", {METRIC: 0.0})
    up, down = cd.suggest("up"), cd.suggest("down")
    cd.on_trial_complete("up", {METRIC: 1.0})
    cd.on_trial_complete("down", {METRIC: -1.0})
    batch = [cd.suggest(f"e{i}") for i in range(4)]
    assert [c["c0"] for c in batch[:3]] == [4.0, 8.0, 16.0] and batch[3] is None
    # judged in order: 4 and 8 improve, 16 does not; the walk stops at 8
    for trial_id, value in zip(("e0", "e1", "e2"), (2.0, 3.0, 2.5), strict=True):
        cd.on_trial_complete(trial_id, {METRIC: value})
    assert cd.best_config == {"c0": 8.0}
    assert (up["c0"], down["c0"]) == (2.0, 0.5)


@pytest.mark.parametrize("interrupt_after", [1, 4, 11, 23, 29])
def test_save_restore_mid_pattern_and_confirmation(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        cd = searcher(log2_space([1.0, 1.0], min_step=0.5), noise=0.5)
        cd.set_max_concurrency(2)
        return cd

    noisy_ridge = memoised_noise(diagonal_ridge(3.0), sd=0.05, seed=3)
    reference = assert_restored_search_continues(make, noisy_ridge, interrupt_after, tmp_path)
    assert "pattern" in {e["kind"] for e in reference.searcher.path}
    assert any(e["measurements"] > 1 for e in reference.searcher.path)  # a confirmation


def test_bad_noise_is_one_line() -> None:
    with pytest.raises(ValueError, match="noise must be >= 0"):
        searcher(log2_space([1.0]), noise=-1.0)


# -- restart rounds ------------------------------------------------------------------------------
# The tests that run more than one round with restart="incumbent" were written for CD before
# issue 26 and still pass unchanged: the named old variant makes today's decisions.


def test_a_second_round_re_decides_on_means_what_one_lucky_trial_decided() -> None:
    cd = searcher(log2_space([1.0], min_step=1.0), noise=0.0, rounds=2, restart="incumbent")
    driver = Driver(cd, lucky).run()
    # round 1 is plain coordinate descent and follows the lucky trial to c0 = 2
    first = [e for e in cd.path if e["round"] == 1]
    assert [e["config"]["c0"] for e in first if e["accepted"]] == [1.0, 2.0]
    # round 2 re-measures that incumbent on seed 1 (mean -0.5), then c0 = 1 on seed 1 (mean 0)
    restart = next(e for e in cd.path if e["kind"] == "restart")
    assert restart == {**restart, "config": {"c0": 2.0}, "round": 2, "measurements": 2}
    assert restart["metric"] == pytest.approx(-0.5)
    assert cd.best_config == {"c0": 1.0} and cd.best_result == 0.0
    assert all(e["measurements"] == 2 for e in cd.path if e["round"] == 2)
    assert [c[SEED_KEY] for c in driver.suggested if c["c0"] == 2.0] == [0, 1]
    assert max(c[SEED_KEY] for c in driver.suggested) == 1


def test_rounds_until_the_budget_spend_every_trial_and_keep_the_optimum() -> None:
    """On a noiseless function later rounds find nothing new: the repeated points show no
    noise, no move is confirmed or accepted, and the budget is spent on more seeds."""
    plain = Driver(searcher(log2_space([1.0, 1.0]), rounds=1), log2_quadratic([2.0, -1.0])).run()
    assert len(plain.suggested) < 30
    cd = searcher(log2_space([1.0, 1.0]), rounds=None, max_trials=60, restart="incumbent")
    driver = Driver(cd, log2_quadratic([2.0, -1.0])).run()
    assert len(driver.suggested) == 60
    assert log2s(cd.best_config, 2) == pytest.approx([2.0, -1.0])
    rounds = [e["round"] for e in cd.path]
    assert rounds == sorted(rounds) and rounds[-1] >= 3
    later = [e for e in cd.path if e["round"] > 1]
    assert all(e["measurements"] == e["round"] for e in later)
    assert not any(e["accepted"] for e in later if e["kind"] != "restart")
    assert cd._noise_level() == 0.0
    # a restart probes at the initial step again
    restarted = cd.path.index(next(e for e in cd.path if e["round"] == 2))
    probe = cd.path[restarted + 1]
    assert probe["kind"] == "probe" and max(abs(d) for d in probe["move"].values()) == 1.0


def test_the_noise_threshold_shrinks_with_the_measurements_of_a_round() -> None:
    cd = searcher(
        log2_space([1.0]), noise=0.6, repeats=2, rounds=None, max_trials=40, restart="incumbent"
    )
    assert cd._noise_level() == pytest.approx(0.6 / math.sqrt(2))
    Driver(cd, log2_quadratic([0.0])).run()
    assert cd._state.round >= 2
    assert cd._noise_level() == pytest.approx(0.6 / math.sqrt(2 * cd._state.round))


@pytest.mark.parametrize("interrupt_after", [14, 22, 31, 45])
def test_save_restore_in_a_later_round(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        cd = searcher(log2_space([1.0, 1.0], min_step=0.5), rounds=3, restart="incumbent")
        cd.set_max_concurrency(2)
        return cd

    noisy = memoised_noise(log2_quadratic([2.0, -1.0], coupling=0.3), sd=0.3, seed=5)
    reference = assert_restored_search_continues(make, noisy, interrupt_after, tmp_path)
    assert {e["round"] for e in reference.searcher.path} == {1, 2, 3}


def test_later_rounds_do_not_retry_a_point_that_errored() -> None:
    space = SearchSpace.from_dict(
        {"batch": {"scale": "categorical", "values": [4096, 128, 256], "start": 128}}
    )
    cd = searcher(space, rounds=None, max_trials=12, restart="incumbent")
    driver = Driver(cd, lambda c: None if c["batch"] == 4096 else -abs(c["batch"] - 128)).run()
    assert len(driver.suggested) == 12
    assert [c[SEED_KEY] for c in driver.suggested if c["batch"] == 4096] == [0]
    assert [c[SEED_KEY] for c in driver.suggested if c["batch"] == 256] == [0, 1, 2, 3, 4]
    assert cd.best_config == {"batch": 128} and cd._state.round == 6


def test_a_search_whose_every_trial_errors_ends() -> None:
    """An errored probe never beats an errored incumbent (it once tied and walked forever);
    with nothing measurable there is no round to restart."""
    for rounds in (1, None):
        cd = searcher(log2_space([1.0]), rounds=rounds)
        driver = Driver(cd, lambda config: None).run(max_steps=100)
        assert cd.best_result is None and cd.best_config == {"c0": 1.0}
        assert len(driver.suggested) == 1 + 3 * 2  # the start, two probes at each of 3 steps


def test_bad_rounds_is_one_line() -> None:
    with pytest.raises(ValueError, match="rounds must be >= 1 or None"):
        searcher(log2_space([1.0]), rounds=0)
    with pytest.raises(ValueError, match=r"restart must be one of \['kick', 'incumbent'\]"):
        searcher(log2_space([1.0]), restart="random")


def two_peaks(config: dict[str, Any]) -> float:
    """A low peak (1) one step from the start (u, v) = (0, 0) at (1, 0); the high one (3) at
    (-3, 3), across a valley no one-coordinate step from the low peak crosses."""
    u, v = log2s(config, 2)
    return max(1 - (u - 1) ** 2 - v**2, 3 - 0.5 * ((u + 3) ** 2 + (v - 3) ** 2))


def test_kicked_restarts_leave_a_local_optimum_where_incumbent_rounds_stay() -> None:
    def run(restart: str) -> CoordinateDescentSearcher:
        cd = searcher(
            log2_space([1.0, 1.0], min_step=1.0), rounds=None, max_trials=80, restart=restart
        )
        Driver(cd, two_peaks).run()
        return cd

    stays, leaves = run("incumbent"), run("kick")
    assert log2s(stays.best_config, 2) == [1.0, 0.0]  # the low peak, re-measured every round
    assert log2s(leaves.best_config, 2) == [-3.0, 3.0]
    kicks = [e for e in leaves.path if e["kind"] == "restart"]
    assert len(kicks) >= 2 and all(e["measurements"] == 1 for e in leaves.path)
    for kick in kicks:  # two initial steps along both coordinates, from the best point so far
        steps = [abs(a - b) for a, b in zip(log2s(kick["config"], 2), [1.0, 0.0], strict=True)]
        assert steps == [2.0, 2.0] or log2s(kick["config"], 2)[0] <= -1


@pytest.mark.parametrize("interrupt_after", [12, 25, 40])
def test_save_restore_in_a_kicked_round(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        cd = searcher(log2_space([1.0, 1.0], min_step=1.0), rounds=None, max_trials=50)
        cd.set_max_concurrency(2)
        return cd

    noisy = memoised_noise(two_peaks, sd=0.2, seed=3)
    reference = assert_restored_search_continues(make, noisy, interrupt_after, tmp_path)
    assert max(e["round"] for e in reference.searcher.path) >= 3


# -- on a real Ray cluster ----------------------------------------------------------------------


@pytest.mark.slow
def test_tuner_with_searcher_finds_optimum(tmp_path: Any) -> None:
    import ray

    def trainable(config: dict[str, Any]) -> None:
        tau, batch = config["loss.tau"], config["train.batch_size"]
        tune.report({METRIC: -((math.log2(tau) + 3) ** 2) - (math.log2(batch) - 7) ** 2})

    space = SearchSpace.from_dict(
        {
            "loss.tau": {"scale": "log2", "lower": 2**-6, "upper": 1.0, "start": 0.5},
            "train.batch_size": {"scale": "pow2", "lower": 32, "upper": 1024, "start": 512},
        }
    )
    cd = CoordinateDescentSearcher(space)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"epochs": 1},
            tune_config=tune.TuneConfig(
                search_alg=cd,
                metric=METRIC,
                mode="max",
                num_samples=-1,
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    best = results.get_best_result()
    assert best.metrics[METRIC] == pytest.approx(0.0)
    assert best.config["loss.tau"] == 0.125 and best.config["train.batch_size"] == 128
    assert best.config["epochs"] == 1
    assert len(results) == cd.num_trials <= 20
    assert cd.best_config == {"loss.tau": 0.125, "train.batch_size": 128}


@pytest.mark.parametrize(("noise", "patterns"), [(0.5, False), (0.0, True)])
def test_only_probes_that_differ_beyond_the_noise_record_a_direction_for_the_pattern(
    noise: float, patterns: bool
) -> None:
    """At a peak where the two probes of each coordinate differ by 0.1: with noise 0.5 that
    gap says nothing, so no direction is noted and no pattern is tried; with noise 0 the same
    gaps are directions and a (losing) pattern is tried — the noise gate decides."""

    def peak(config: dict[str, Any]) -> float:
        u, v = log2s(config, 2)
        return -abs(u) - abs(v) + 0.05 * (u + v)

    cd = searcher(log2_space([1.0, 1.0]), noise=noise, rounds=1)
    Driver(cd, peak).run()
    assert log2s(cd.best_config, 2) == [0.0, 0.0]
    assert any(e["kind"] == "pattern" for e in cd.path) is patterns


def test_a_warm_up_tries_random_lattice_points_and_descends_from_the_best() -> None:
    cd = searcher(log2_space([1.0, 1.0], min_step=1.0), warmup=6, rounds=1)
    cd.set_max_concurrency(7)
    first = [cd.suggest(f"t{i}") for i in range(7)]  # the start and six points, all at once
    assert first[0] == {"c0": 1.0, "c1": 1.0, SEED_KEY: 0}
    assert len({(c["c0"], c["c1"]) for c in first}) == 7 and cd.suggest("t7") is None
    for i, config in enumerate(first):
        cd.on_trial_complete(f"t{i}", {METRIC: two_peaks(config)})
    warm = [e for e in cd.path if e["kind"] == "warmup"]
    best = max(first, key=two_peaks)
    chosen = {"c0": best["c0"], "c1": best["c1"]}
    assert len(cd.path) >= 6 and all(e["accepted"] is (e["config"] == chosen) for e in warm)
    assert cd._state.center == {"c0": best["c0"], "c1": best["c1"]}
    again = searcher(log2_space([1.0, 1.0], min_step=1.0), warmup=6, rounds=1)
    again.set_max_concurrency(7)
    assert [again.suggest(f"t{i}") for i in range(7)] == first  # drawn from the seed
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        searcher(log2_space([1.0]), warmup=-1)


@pytest.mark.parametrize("interrupt_after", [3, 9])
def test_save_restore_in_the_warm_up(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        cd = searcher(log2_space([1.0, 1.0], min_step=1.0), warmup=5, rounds=None, max_trials=30)
        cd.set_max_concurrency(2)
        return cd

    assert_restored_search_continues(
        make, memoised_noise(two_peaks, 0.2, 4), interrupt_after, tmp_path
    )


def test_a_new_round_starts_from_the_best_warm_up_point_away_from_the_optima_found() -> None:
    cd = searcher(log2_space([1.0, 1.0], min_step=1.0), warmup=6, rounds=2, max_trials=200)
    Driver(cd, two_peaks).run()
    unused = [e for e in cd.path if e["kind"] == "warmup" and not e["accepted"]]
    (first_optimum,) = cd._state.optima  # where round 1 ended
    optimum = log2s(first_optimum, 2)
    far = [  # ≥ 2 initial steps (1 unit each) from it along some coordinate
        e
        for e in unused
        if max(abs(a - b) for a, b in zip(log2s(e["config"], 2), optimum, strict=True)) >= 2
    ]
    assert len(far) >= 2
    (restart,) = [e for e in cd.path if e["kind"] == "restart"]
    assert restart["config"] == max(far, key=lambda e: e["metric"])["config"]
    assert restart["cached"]  # measured in the warm-up: the round costs no trial to start


def test_the_default_warm_up_is_two_d_plus_one_points_at_most_half_the_budget() -> None:
    space = log2_space([1.0, 1.0, 1.0], min_step=1.0)
    for max_trials, spread in ((None, 7), (40, 7), (9, 4), (4, 1), (2, 0)):
        cd = searcher(space, warmup=None, max_trials=max_trials)
        assert [c.kind for c in cd._state.batch] == ["start"] + ["warmup"] * spread


def test_the_last_trials_of_the_budget_re_measure_the_best_points() -> None:
    noisy = memoised_noise(two_peaks, sd=0.5, seed=1)
    space = log2_space([1.0, 1.0], min_step=1.0)
    cd = searcher(space, rounds=None, max_trials=30, final_checks=None)
    cd.set_max_concurrency(2)  # the Driver hands out whole batches: two probes at once
    assert cd._final_checks == 3  # a tenth of the budget
    driver = Driver(cd, noisy)
    driver.run()
    final = [e for e in cd.path if e["kind"] == "final"]
    before = [e for e in cd.path if e["kind"] != "final"]
    assert len(final) == 3 and len(driver.suggested) <= 30
    assert all(e["measurements"] >= 2 for e in final)
    # they were the three best means before the checks, each measured once more
    last_seen = {}
    for e in before:
        last_seen[tuple(e["config"].values())] = e["metric"]
    top = sorted(last_seen.items(), key=lambda item: item[1], reverse=True)[:3]
    assert {tuple(e["config"].values()) for e in final} == {key for key, _ in top}
    assert [e["accepted"] for e in final].count(True) <= 1
    assert cd.best_config in [e["config"] for e in final]  # the best mean after the checks
    none = searcher(log2_space([1.0, 1.0], min_step=1.0), max_trials=30, final_checks=0)
    Driver(none, noisy).run()
    assert not any(e["kind"] == "final" for e in none.path)
    with pytest.raises(ValueError, match="final_checks must be >= 0"):
        searcher(log2_space([1.0]), final_checks=-1)


@pytest.mark.parametrize("interrupt_after", [27, 29])
def test_save_restore_in_the_final_checks(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        space = log2_space([1.0, 1.0], min_step=1.0)
        cd = searcher(space, rounds=None, max_trials=30, final_checks=None)
        cd.set_max_concurrency(2)
        return cd

    reference = assert_restored_search_continues(
        make, memoised_noise(two_peaks, sd=0.5, seed=1), interrupt_after, tmp_path
    )
    assert sum(e["kind"] == "final" for e in reference.searcher.path) == 3


def test_probes_cover_as_many_coordinates_as_the_slots_hold_and_the_best_decides() -> None:
    objective = log2_quadratic([2.0, -1.0, 1.0, 0.0], coupling=0.0)
    for slots, width in ((2, 1), (3, 1), (4, 2), (8, 4)):
        cd = searcher(log2_space([1.0] * 4, min_step=1.0), rounds=1)
        cd.set_max_concurrency(slots)
        cd.set_search_properties(METRIC, "max", {})
        start = cd.suggest("s")
        cd.on_trial_complete("s", {METRIC: objective(start)})
        probes = [cd.suggest(f"p{i}") for i in range(2 * width)]
        assert all(isinstance(p, dict) for p in probes)
        assert cd.suggest("more") is None  # the batch: `width` coordinates' two probes each
        moved = {i for p in probes for i in range(4) if p[f"c{i}"] != start[f"c{i}"]}
        assert moved == set(range(width))
        for i, probe in enumerate(probes):
            cd.on_trial_complete(f"p{i}", {METRIC: objective(probe)})
        best = max(probes, key=objective)
        accepted = [e for e in cd.path if e["kind"] == "probe" and e["accepted"]]
        assert [e["config"] for e in accepted] == [{k: best[k] for k in cd.space.names}]


def test_the_default_warm_up_fills_the_first_wave_of_many_slots() -> None:
    space = log2_space([1.0, 1.0], min_step=1.0)
    for slots, max_trials, spread in ((2, None, 5), (16, None, 15), (16, 20, 9)):
        cd = searcher(space, warmup=None, max_trials=max_trials)
        cd.set_max_concurrency(slots)
        assert [c.kind for c in cd._state.batch] == ["start"] + ["warmup"] * spread


@pytest.mark.parametrize("interrupt_after", [5, 14, 30])
def test_save_restore_with_probes_across_coordinates(tmp_path: Any, interrupt_after: int) -> None:
    def make() -> CoordinateDescentSearcher:
        cd = searcher(log2_space([1.0, 1.0, 1.0]), rounds=None, max_trials=60, warmup=None)
        cd.set_max_concurrency(6)
        return cd

    objective = memoised_noise(log2_quadratic([2.5, -1.0, 0.5], coupling=0.3), sd=0.1, seed=2)
    reference = assert_restored_search_continues(make, objective, interrupt_after, tmp_path)
    assert any(e["kind"] == "probe" for e in reference.searcher.path)


def test_the_earlier_cd_is_reachable_and_decides_exactly_as_it_did() -> None:
    """``warmup=0, restart="incumbent", final_checks=0, eps=0.2`` is CD as it was before
    issue 26: the same trials and decisions, on a noisy objective over restart rounds, as the
    searcher of commit ad548d2 recorded in tests/data/cd_before_issue_26.json (written by
    running that commit's ``raycl/search/searcher.py`` through this file's Driver)."""
    recorded = json.loads((Path(__file__).parent / "data" / "cd_before_issue_26.json").read_text())
    cd = searcher(
        log2_space([1.0, 1.0, 1.0]),
        eps=0.2,
        warmup=0,
        restart="incumbent",
        final_checks=0,
        rounds=None,
        max_trials=60,
    )
    cd.set_max_concurrency(2)
    objective = memoised_noise(log2_quadratic([2.5, -1.0, 0.5], coupling=0.3), sd=0.3, seed=4)
    driver = Driver(cd, objective).run()
    assert driver.suggested == recorded["suggested"]
    assert json.loads(json.dumps(cd.path)) == recorded["path"]
    assert max(e["round"] for e in cd.path) >= 2
