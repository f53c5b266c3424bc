"""The search space of the balance search: coordinates on lattices.

A ``SearchSpace`` is an ordered list of ``Coordinate`` s, each a dotted config key
(``"loss.temperature"``) with a scale, bounds and step sizes. It is usually built from a plain
mapping, as it comes from a ``space/<loss>.yaml`` config group (flattened by
:func:`space_config`)::

    loss.temperature: {scale: log2, lower: 0.015625, upper: 1.0, start: 0.125, step: 1.0,
                       min_step: 0.5}
    data.batch_size_per_worker: {scale: pow2, lower: 32, upper: 512, start: 128}
    loss.neg_margin: {scale: linear, lower: -0.2, upper: 0.8, start: 0.0, step: 0.2}
    loss.kernel: {scale: categorical, values: [gaussian, log], start: gaussian}

Each scale moves in its own *unit*: the exponent for ``log2`` (step 1.0 means ×2) and ``pow2``
(integer exponent steps), the value for ``linear``, the index for ``categorical``. Values are
snapped to a lattice anchored at ``start`` (``min_step / 1024`` wide on continuous scales, one
unit on integer ones), so floating error never turns one grid point into two configs; points
within half a lattice cell of a bound are the bound itself. :meth:`SearchSpace.lattice` lists
every point coordinate descent can reach (steps of ``min_step``): the grid every method samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ray import tune
from ray.tune.search.sample import Domain

SCALES: tuple[str, ...] = ("log2", "linear", "pow2", "categorical")
_INTEGER_SCALES = ("pow2", "categorical")
_SNAP_DIVISIONS = 1024
_FIELDS = ("scale", "lower", "upper", "values", "start", "step", "min_step")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_power_of_two(x: float) -> bool:
    return x > 0 and math.log2(x).is_integer()


@dataclass(frozen=True, kw_only=True)
class Coordinate:
    """One searched hyper-parameter: a dotted config key, its scale, bounds and step sizes.

    ``step`` is the initial step in the scale's unit; refinement halves it down to
    ``min_step`` (default: ``step``, i.e. no refinement).
    """

    name: str
    scale: str
    start: Any
    lower: float | None = None
    upper: float | None = None
    values: tuple[Any, ...] | None = None
    step: float = 1.0
    min_step: float | None = None

    def __post_init__(self) -> None:
        if self.values is not None:
            object.__setattr__(self, "values", tuple(self.values))
        if self.min_step is None:
            object.__setattr__(self, "min_step", self.step)
        self._validate()
        if self.scale in _INTEGER_SCALES:
            object.__setattr__(self, "step", int(self.step))
            object.__setattr__(self, "min_step", int(self.min_step))
        if self.scale != "categorical":
            number = int if self.scale == "pow2" else float
            for field in ("lower", "upper", "start"):
                object.__setattr__(self, field, number(getattr(self, field)))

    def _fail(self, field: str, problem: str) -> NoReturn:
        raise ValueError(f"coordinate {self.name!r}: field {field!r} {problem}")

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"coordinate name must be a non-empty string (got {self.name!r})")
        if self.scale not in SCALES:
            self._fail("scale", f"must be one of {', '.join(SCALES)} (got {self.scale!r})")
        if self.scale == "categorical":
            self._validate_categorical()
        else:
            self._validate_numeric()
        for field in ("step", "min_step"):
            value = getattr(self, field)
            if not _is_number(value) or value <= 0:
                self._fail(field, f"must be a number > 0 (got {value!r})")
            if self.scale in _INTEGER_SCALES and not float(value).is_integer():
                self._fail(field, f"must be an integer for scale {self.scale!r} (got {value!r})")
        if self.min_step > self.step:
            self._fail("min_step", f"must be <= step (got {self.min_step} > {self.step})")

    def _validate_categorical(self) -> None:
        for field in ("lower", "upper"):
            if getattr(self, field) is not None:
                self._fail(field, "is not used by scale 'categorical' (list choices in 'values')")
        if not self.values:
            self._fail("values", "must be a non-empty list for scale 'categorical'")
        if any(self.values.count(v) > 1 for v in self.values):
            self._fail("values", f"has duplicate entries (got {list(self.values)!r})")
        if self.start not in self.values:
            self._fail("start", f"must be one of {list(self.values)!r} (got {self.start!r})")

    def _validate_numeric(self) -> None:
        if self.values is not None:
            self._fail("values", f"is only used by scale 'categorical' (scale is {self.scale!r})")
        for field in ("lower", "upper", "start"):
            value = getattr(self, field)
            if not _is_number(value):
                self._fail(field, f"is required and must be a finite number (got {value!r})")
        if self.scale in ("log2", "pow2"):
            for field in ("lower", "upper"):
                if getattr(self, field) <= 0:
                    self._fail(
                        field, f"must be > 0 for scale {self.scale!r} (got {getattr(self, field)})"
                    )
        if self.lower > self.upper:
            self._fail("lower", f"must be <= upper (got lower={self.lower}, upper={self.upper})")
        if self.lower == self.upper:
            self._fail("upper", f"gives an empty range (lower == upper == {self.upper})")
        if self.scale == "pow2":
            for field in ("lower", "upper", "start"):
                if not _is_power_of_two(getattr(self, field)):
                    self._fail(field, f"must be a power of two (got {getattr(self, field)})")
        if not self.lower <= self.start <= self.upper:
            self._fail("start", f"must lie in [{self.lower}, {self.upper}] (got {self.start})")

    # -- units and snapping -------------------------------------------------------------------

    def to_unit(self, value: Any) -> float:
        """Position of ``value`` in the unit steps are measured in (exponent, value or index)."""
        if self.scale in ("log2", "pow2"):
            return math.log2(value)
        if self.scale == "linear":
            return float(value)
        return float(self.values.index(value))

    @property
    def _unit_bounds(self) -> tuple[float, float]:
        if self.scale == "categorical":
            return 0.0, float(len(self.values) - 1)
        return self.to_unit(self.lower), self.to_unit(self.upper)

    @property
    def _quantum(self) -> float:
        return 1.0 if self.scale in _INTEGER_SCALES else self.min_step / _SNAP_DIVISIONS

    def _value_at(self, n: int) -> Any:
        """Value of lattice point ``n`` (``n == 0`` is the start, exactly)."""
        if self.scale == "pow2":
            return 2**n
        if self.scale == "categorical":
            return self.values[n]
        if n == 0:
            return self.start
        u = self.to_unit(self.start) + n * self._quantum
        if self.scale == "log2":
            return float(f"{2.0**u:.12g}")
        return round(u, 6 - math.floor(math.log10(self._quantum)))

    def _snap_unit(self, u: float) -> Any:
        lo, hi = self._unit_bounds
        half = self._quantum / 2
        if u >= hi - half:
            return self.values[-1] if self.scale == "categorical" else self.upper
        if u <= lo + half:
            return self.values[0] if self.scale == "categorical" else self.lower
        anchor = 0.0 if self.scale in _INTEGER_SCALES else self.to_unit(self.start)
        return self._value_at(round((u - anchor) / self._quantum))

    def snap(self, value: Any) -> Any:
        """The canonical grid value nearest to ``value``, clipped to the bounds."""
        return self._snap_unit(self.to_unit(value))

    def key(self, value: Any) -> float | int:
        """Hashable canonical form of ``value`` (the index for categorical coordinates)."""
        snapped = self.snap(value)
        return self.values.index(snapped) if self.scale == "categorical" else snapped

    def move(self, value: Any, k: int, step: float) -> Any | None:
        """``value`` moved by ``k`` steps of size ``step`` and clipped to the bounds.

        Returns None when the move changes nothing (already at that bound).
        """
        moved = self._snap_unit(self.to_unit(value) + k * step)
        return None if self.key(moved) == self.key(value) else moved

    def lattice(self) -> list[Any]:
        """Every value the search can reach: ``start`` moved by whole ``min_step`` s, clipped
        to the bounds, in increasing unit order (the grid random search and TPE sample)."""
        values, below, above = [self.start], self.start, self.start
        while (below := self.move(below, -1, self.min_step)) is not None:
            values.insert(0, below)
        while (above := self.move(above, 1, self.min_step)) is not None:
            values.append(above)
        return values

    def refine(self, step: float) -> float:
        """Half of ``step``, not below ``min_step`` (rounded down on integer scales)."""
        half = step // 2 if self.scale in _INTEGER_SCALES else step / 2
        return max(half, self.min_step)

    def to_tune(self) -> Domain:
        """The ``ray.tune`` sample domain over the same bounds (for random search / ASHA)."""
        if self.scale == "log2":
            return tune.loguniform(self.lower, self.upper)
        if self.scale == "linear":
            return tune.uniform(self.lower, self.upper)
        if self.scale == "pow2":
            lo, hi = self._unit_bounds
            return tune.choice([2**e for e in range(int(lo), int(hi) + 1)])
        return tune.choice(list(self.values))


@dataclass(frozen=True)
class SearchSpace:
    """Ordered coordinates of the balance search; points are ``{name: value}`` dicts."""

    coordinates: tuple[Coordinate, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "coordinates", tuple(self.coordinates))
        if not self.coordinates:
            raise ValueError("search space must have at least one coordinate")
        names = [c.name for c in self.coordinates]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"search space has duplicate coordinate names: {duplicates}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
        """Build from ``{name: {scale, lower, upper | values, start, step, min_step}}``."""
        if not isinstance(config, Mapping):
            raise ValueError(f"search space must be a mapping name -> fields (got {config!r})")
        coordinates = []
        for name, fields in config.items():
            if not isinstance(fields, Mapping):
                raise ValueError(f"coordinate {name!r}: fields must be a mapping (got {fields!r})")
            unknown = sorted(set(fields) - set(_FIELDS))
            if unknown:
                allowed = ", ".join(_FIELDS)
                raise ValueError(
                    f"coordinate {name!r}: unknown field(s) {unknown}; allowed: {allowed}"
                )
            for field in ("scale", "start"):
                if field not in fields:
                    raise ValueError(f"coordinate {name!r}: field {field!r} is required")
            kwargs = dict(fields)
            if kwargs.get("values") is not None:
                kwargs["values"] = tuple(kwargs["values"])
            coordinates.append(Coordinate(name=str(name), **kwargs))
        return cls(tuple(coordinates))

    @property
    def names(self) -> list[str]:
        """Coordinate names in search order."""
        return [c.name for c in self.coordinates]

    def point(self, key: tuple[float | int, ...]) -> dict[str, Any]:
        """The point whose :meth:`key` is ``key`` (categorical keys are value indices)."""
        return {
            c.name: c.values[k] if c.scale == "categorical" else k
            for c, k in zip(self.coordinates, key, strict=True)
        }

    def starting_at(self, point: Mapping[str, Any]) -> SearchSpace:
        """The same space with its start at ``point`` (a lattice point keeps the lattice)."""
        return SearchSpace(
            tuple(dataclasses.replace(c, start=point[c.name]) for c in self.coordinates)
        )

    def reordered(self, names: list[str]) -> SearchSpace:
        """The same coordinates in the order ``names`` (coordinate descent's sweep order)."""
        return SearchSpace(tuple(self[name] for name in names))

    def __len__(self) -> int:
        return len(self.coordinates)

    def __iter__(self) -> Iterator[Coordinate]:
        return iter(self.coordinates)

    def __getitem__(self, name: str) -> Coordinate:
        for coordinate in self.coordinates:
            if coordinate.name == name:
                return coordinate
        raise KeyError(name)

    def start_point(self) -> dict[str, Any]:
        """The (snapped) start of every coordinate."""
        return {c.name: c.snap(c.start) for c in self.coordinates}

    def initial_steps(self) -> dict[str, float]:
        """The initial step of every coordinate."""
        return {c.name: c.step for c in self.coordinates}

    def snap(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``point`` with every coordinate snapped to its grid and bounds."""
        return {c.name: c.snap(point[c.name]) for c in self.coordinates}

    def key(self, point: Mapping[str, Any]) -> tuple[float | int, ...]:
        """Hashable canonical form of ``point``: equal for every rendering of a grid point."""
        return tuple(c.key(point[c.name]) for c in self.coordinates)

    def move(
        self, point: Mapping[str, Any], name: str, k: int, step: float | None = None
    ) -> dict[str, Any] | None:
        """``point`` moved by ``k`` steps along ``name`` (default step: the initial one).

        Clips to the bounds; returns None when the move does not change the point.
        """
        coordinate = self[name]
        moved = coordinate.move(point[name], k, coordinate.step if step is None else step)
        return None if moved is None else {**point, name: moved}

    def shift(self, point: Mapping[str, Any], move: Mapping[str, float]) -> dict[str, Any] | None:
        """``point`` displaced by ``move`` (``{name: units}``), each coordinate clipped to its
        bounds; None when no coordinate changes."""
        shifted = dict(point)
        for name, units in move.items():
            moved = self[name].move(point[name], 1, units)
            if moved is not None:
                shifted[name] = moved
        return None if self.key(shifted) == self.key(point) else shifted

    def lattice(self) -> list[dict[str, Any]]:
        """Every point of the product lattice (:meth:`Coordinate.lattice`), first coordinate
        slowest."""
        points: list[dict[str, Any]] = [{}]
        for coordinate in self.coordinates:
            points = [{**p, coordinate.name: v} for p in points for v in coordinate.lattice()]
        return points

    def to_tune_space(self) -> dict[str, Domain]:
        """Flat ``{name: ray.tune domain}`` over the same bounds, for random search and ASHA."""
        return {c.name: c.to_tune() for c in self.coordinates}


def space_config(cfg: Any) -> dict[str, dict[str, Any]]:
    """A ``tune`` config's ``space`` section flattened to ``{dotted config key: fields}``."""
    flat: dict[str, dict[str, Any]] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and "scale" not in value:
                walk(value, name + ".")
            else:
                flat[name] = dict(value)

    walk(cfg.space, "")
    return flat


def space_from_config(cfg: Any) -> SearchSpace:
    """The ``SearchSpace`` of a ``tune`` config; one-line ``ValueError`` naming ``space``."""
    from raycl.config import has_key

    coordinates = space_config(cfg)
    if not coordinates:
        raise ValueError("space: the search space is empty")
    for name in coordinates:
        if not has_key(cfg, name):
            raise ValueError(f"space: {name!r} is not a config key")
    try:
        return SearchSpace.from_dict(coordinates)
    except ValueError as err:
        raise ValueError(f"space: {err}") from None


def as_search_space(space: SearchSpace | Mapping[str, Mapping[str, Any]]) -> SearchSpace:
    """``space`` itself, or a ``SearchSpace`` built from its plain-dict form."""
    return space if isinstance(space, SearchSpace) else SearchSpace.from_dict(space)


__all__ = [
    "SCALES",
    "Coordinate",
    "SearchSpace",
    "as_search_space",
    "space_config",
    "space_from_config",
]
