"""The shape of a landscape table: how much each coordinate matters, and a quadratic fit.

The gate (:class:`raycl.bench.replay.Gate`) says whether a table can decide between search
methods; the shape says why. Positions are counted in initial steps from the start along
each numeric coordinate, ``u_i = (unit(x_i) − unit(start_i)) / step_i`` (the moves coordinate
descent makes first), and a least-squares fit over every point's table mean

    f(u) ≈ c + gᵀu + ½ uᵀHu

gives each coordinate's curvature ``H_ii`` (points per step², negative around a maximum), the
coupling ``ρ_ij = H_ij / √(H_ii H_jj)`` of two coordinates (``|ρ|`` near 1: a ridge that
one-coordinate moves cannot follow) and ``R²`` (how much of the table a quadratic explains).
A second-order coefficient within ``CURVATURE_RTOL · max|f|`` of zero is zero (least-squares
rounding, not the table). A coordinate with ``H_ii = 0`` has no curvature to normalise by, so
its couplings are undefined (nan), as are those of two coordinates whose curvatures differ in
sign (``√(H_ii H_jj)`` is not real).
A coordinate's *main effect* is the range of its marginal means: at each of its values, the
mean over every other coordinate. A flat coordinate (main effect within the seed noise) makes
the region near the best as many times larger as it has values, which is what fails a gate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from raycl.bench.replay import Landscape

# A second-order coefficient with |H| ≤ CURVATURE_RTOL · max|f| is zero. The fit's rounding is a few
# machine epsilons (2.2e-16) × the design's condition number (≈ 9 on a 60-point lattice) ×
# max|f|: about 1e-14 for a metric near 80. 1e-9 clears that by orders of magnitude and is far
# below any real effect (8e-8 points/step² for a metric near 80, well under seed noise).
CURVATURE_RTOL = 1e-9


@dataclass(frozen=True)
class Shape:
    """Noise, target sizes, main effects and the quadratic fit of one landscape."""

    names: list[str]  # every coordinate, in search order
    main_effects: dict[str, float]  # range of the marginal means, in metric points
    fitted: list[str]  # the numeric coordinates the quadratic uses
    curvature: dict[str, float]  # H_ii (exactly 0 within CURVATURE_RTOL)
    coupling: dict[tuple[str, str], float]  # ρ_ij (nan unless H_ii·H_jj > 0)
    r2: float
    sigma: float  # pooled seed SD (the earlier gate's σ; the gate's is the median's)
    median_sd: float  # the median point's seed SD
    best_sd: float  # the best point's seed SD
    shares: dict[float, float]  # δ -> share of the lattice within δ of the best


def landscape_shape(landscape: Landscape, deltas: tuple[float, ...] = (0.5, 1.0)) -> Shape:
    """The shape of ``landscape`` (module docstring); ``shares`` also holds δ = σ."""
    space, keys = landscape.space, list(landscape.curves)
    means = np.array([landscape.mean(k) for k in keys])
    main_effects = {}
    for i, name in enumerate(space.names):
        marginal = [means[[k[i] == v for k in keys]].mean() for v in sorted({k[i] for k in keys})]
        main_effects[name] = float(max(marginal) - min(marginal))
    fitted = [c.name for c in space if c.scale != "categorical"]
    steps = np.array([_steps_from_start(landscape, fitted, k) for k in keys])
    curvature, coupling, r2 = _quadratic_fit(steps.reshape(len(keys), len(fitted)), means)
    best = landscape.curves[landscape.best_key][:, -1]
    sigma = landscape.pooled_sigma
    return Shape(
        names=space.names,
        main_effects=main_effects,
        fitted=fitted,
        curvature=dict(zip(fitted, curvature, strict=True)),
        coupling={(fitted[i], fitted[j]): rho for (i, j), rho in coupling.items()},
        r2=r2,
        sigma=sigma,
        median_sd=float(np.median(landscape.seed_sds)),
        best_sd=float(best.std(ddof=1)) if len(best) >= 2 else float("nan"),
        shares={d: landscape.share_within(d) for d in sorted({*deltas, sigma})},
    )


def _quadratic_fit(
    u: np.ndarray, f: np.ndarray
) -> tuple[list[float], dict[tuple[int, int], float], float]:
    """Least squares ``f ≈ c + gᵀu + ½ uᵀHu`` over the rows of ``u``: the curvatures
    ``H_ii``, the couplings ``ρ_ij`` (i < j; nan unless ``H_ii·H_jj > 0``) and R².

    Every second-order coefficient within ``CURVATURE_RTOL · max|f|`` of zero is set to 0, so a
    coordinate without curvature has ``H_ii == 0`` and nan couplings on every platform."""
    n, d = u.shape
    pairs = list(itertools.combinations(range(d), 2))
    design = np.column_stack(
        [np.ones(n), u]
        + [0.5 * u[:, i] ** 2 for i in range(d)]
        + [u[:, i] * u[:, j] for i, j in pairs]
    )
    coef, *_ = np.linalg.lstsq(design, f, rcond=None)
    residual = float(((f - design @ coef) ** 2).sum())
    second = coef[1 + d :]
    second[np.abs(second) <= CURVATURE_RTOL * float(np.abs(f).max(initial=0.0))] = 0.0
    diagonal = [float(h) for h in coef[1 + d : 1 + 2 * d]]
    coupling = {}
    for (i, j), h in zip(pairs, coef[1 + 2 * d :], strict=True):
        both = diagonal[i] * diagonal[j]
        coupling[(i, j)] = float(h / np.sqrt(both)) if both > 0 else float("nan")
    spread = float(((f - f.mean()) ** 2).sum())
    return diagonal, coupling, 1.0 - residual / spread if spread else 1.0


def _steps_from_start(landscape: Landscape, names: list[str], key: tuple) -> list[float]:
    """Where the point ``key`` lies along ``names``, in initial steps from the start."""
    point = landscape.space.point(key)
    coordinates = [landscape.space[n] for n in names]
    return [(c.to_unit(point[c.name]) - c.to_unit(c.start)) / c.step for c in coordinates]


def shape_report(shape: Shape) -> str:
    """The shape as markdown: noise and target sizes, then one row per coordinate."""
    within = {f"{d:.2f}": share for d, share in shape.shares.items()}  # δ = σ may repeat one
    shares = ", ".join(f"{share:.1%} within {d}" for d, share in within.items())
    lines = [
        f"Landscape shape: seed SD pooled σ = {shape.sigma:.2f}, median point "
        f"{shape.median_sd:.2f}, best point {shape.best_sd:.2f}; share of the lattice near "
        f"the best: {shares}; quadratic fit in initial steps from the start: "
        f"R² = {shape.r2:.2f}.",
        "",
        "| coordinate | main effect (points) | curvature H_ii (points/step²) | couplings ρ |",
        "|---|---|---|---|",
    ]
    for name in shape.names:
        couplings = ", ".join(
            f"{b if a == name else a} {rho:+.2f}"
            for (a, b), rho in shape.coupling.items()
            if name in (a, b) and not np.isnan(rho)
        )
        curvature = f"{shape.curvature[name]:+.2f}" if name in shape.curvature else "—"
        lines.append(
            f"| {name} | {shape.main_effects[name]:.2f} | {curvature} | {couplings or '—'} |"
        )
    return "\n".join(lines)
