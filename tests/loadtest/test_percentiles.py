"""The one percentile formula of the benches and the chaos report: nearest rank."""

import math

from loadtest.percentiles import percentile_nearest_rank


def test_it_takes_the_ceil_of_q_times_n_th_smallest_value() -> None:
    # The textbook example: five values, in any order.
    values = [35.0, 20.0, 50.0, 15.0, 40.0]
    expected = {0.05: 15.0, 0.3: 20.0, 0.4: 20.0, 0.5: 35.0, 0.95: 50.0, 1.0: 50.0}
    assert {q: percentile_nearest_rank(values, q) for q in expected} == expected


def test_on_an_exact_rank_it_takes_that_value_not_the_next() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile_nearest_rank(values, 0.5) == 50.0
    assert percentile_nearest_rank(values, 0.95) == 95.0
    assert percentile_nearest_rank(values, 0.99) == 99.0


def test_it_keeps_to_the_values_at_the_ends() -> None:
    assert percentile_nearest_rank([3.0, 1.0, 2.0], 0.0) == 1.0
    assert percentile_nearest_rank([3.0, 1.0, 2.0], 1.0) == 3.0
    assert percentile_nearest_rank([7.0], 0.5) == 7.0


def test_no_values_have_no_percentile() -> None:
    assert math.isnan(percentile_nearest_rank([], 0.95))
