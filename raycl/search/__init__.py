"""Balance search: the search space and the coordinate-descent Ray Tune searcher (spec §2.4)."""

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
