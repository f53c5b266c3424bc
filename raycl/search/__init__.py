"""Balance search on Ray Tune: the search space, the coordinate-descent searcher, the
registry of search methods (:mod:`raycl.search.methods`), the Tune experiment
(:mod:`raycl.search.tuner`) and reading results back (:mod:`raycl.search.analysis`)."""

from raycl.search.searcher import SEED_KEY, CoordinateDescentSearcher
from raycl.search.space import SCALES, Coordinate, SearchSpace, as_search_space

__all__ = [
    "SCALES",
    "SEED_KEY",
    "Coordinate",
    "CoordinateDescentSearcher",
    "SearchSpace",
    "as_search_space",
]
