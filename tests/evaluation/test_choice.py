"""--choose: samples, ranks with ties, the recommendation line."""

from __future__ import annotations

import numpy as np
from fdpipe.evaluation.choice import ranks, recommend, sample_items
from fdpipe.evaluation.statistics import analyse


def test_sample_is_seeded_in_input_order_and_never_larger_than_the_input() -> None:
    items = list(range(100))
    first = sample_items(items, 10, seed=3)
    assert first == sample_items(items, 10, seed=3) and first == sorted(first)
    assert len(set(first)) == 10 and first != sample_items(items, 10, seed=4)
    assert sample_items(items[:5], 10) == items[:5]


def test_ranks_share_ties_and_follow_each_metrics_direction(rng: np.random.Generator) -> None:
    units = [f"i{k}" for k in range(12)]
    good = rng.random(12)
    values = {
        "overall": {
            "a": dict(zip(units, good + 1, strict=True)),
            "b": dict(zip(units, good, strict=True)),
            "c": dict(zip(units, good, strict=True)),
        },
        "deletion": {
            "a": dict(zip(units, good + 1, strict=True)),
            "b": dict(zip(units, good, strict=True)),
            "c": dict(zip(units, good + 2, strict=True)),
        },
    }
    statistics = analyse(values, {})
    assert ranks(statistics) == {
        "deletion": {"a": 2, "b": 1, "c": 3},
        "overall": {"a": 1, "b": 2, "c": 2},
    }
    text = recommend(statistics)
    assert "recommended: a (overall " in text and "significant at 0.05" in text
    assert "not significant" not in text  # +1 on every image: Wilcoxon p = 0.0005
    assert recommend({}) == "no method could be scored: nothing to recommend"
