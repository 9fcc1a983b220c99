"""The feed suite's arithmetic: a least-squares slope cancels what a run pays once."""

from __future__ import annotations

import pytest
from fdpipe.bench.feed_suite import slope


@pytest.mark.parametrize(
    ("sizes", "seconds", "expected"),
    [
        ((4, 8, 12), [10.0 + 0.5 * n for n in (4, 8, 12)], 0.5),  # a fixed start-up cost
        ((4, 8, 12), [3.0, 4.0, 7.0], 0.5),  # noise: the fit, not the last difference (0.75)
        ((1, 2), [1.0, 1.0], 0.0),
    ],
)
def test_slope_is_the_least_squares_cost_per_image(
    sizes: tuple[int, ...], seconds: list[float], expected: float
) -> None:
    assert slope(sizes, seconds) == pytest.approx(expected)
