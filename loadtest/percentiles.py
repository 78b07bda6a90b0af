"""Percentiles of the load tests' samples: one formula for every bench and the chaos report."""

import math


def percentile_nearest_rank(values: list[float], q: float) -> float:
    """The nearest-rank percentile at fraction q (0 to 1): the ceil(q * n)-th smallest of the n
    values (the smallest when q is 0), one of the values themselves; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]
