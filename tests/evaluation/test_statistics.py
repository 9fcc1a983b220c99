"""Paired bootstrap intervals, Wilcoxon tests, the verdict line and per-class means."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fdpipe.evaluation.statistics import (
    bootstrap,
    paired_table,
    pairwise_tests,
    per_class_means,
    signed_rank_p,
    verdict,
)
from scipy.stats import wilcoxon


def test_paired_table_keeps_the_units_every_method_has() -> None:
    units, table = paired_table(
        {"a": {"x": 1.0, "y": 2.0, "z": math.nan}, "b": {"x": 3.0, "y": 4.0, "z": 5.0}}
    )
    assert units == ["x", "y"]
    assert table["a"].tolist() == [1.0, 2.0] and table["b"].tolist() == [3.0, 4.0]


def test_bootstrap_is_paired_and_brackets_the_mean(rng: np.random.Generator) -> None:
    a = rng.normal(size=30)
    intervals = bootstrap({"a": a, "shifted": a + 1.0})
    assert intervals["a"].low < a.mean() < intervals["a"].high
    # the same draws for both: the shifted interval is the first one plus 1 exactly
    assert intervals["shifted"].low == pytest.approx(intervals["a"].low + 1.0)
    assert intervals["shifted"].high == pytest.approx(intervals["a"].high + 1.0)
    assert bootstrap({"a": a}) == bootstrap({"a": a})  # seeded


def test_wilcoxon_matches_scipy_and_is_symmetric(rng: np.random.Generator) -> None:
    a, b, c = rng.normal(size=(3, 20))
    tests = pairwise_tests({"a": a, "b": b, "c": c})
    assert tests["a"]["b"] == tests["b"]["a"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert set(tests["c"]) == {"a", "b"}
    assert signed_rank_p(a, a) == 1.0


def test_verdict_names_the_best_and_whether_the_lead_is_significant(
    rng: np.random.Generator,
) -> None:
    base = rng.normal(size=40)
    table = {"good": base + 0.5 + 0.01 * rng.normal(size=40), "bad": base, "same": base + 1e-3}
    result = verdict("deletion", table, bootstrap(table))  # lower is better
    assert (result.best, result.runner_up) == ("bad", "same")
    assert not result.significant or result.lead is not None
    insertion = verdict("insertion", table, bootstrap(table))
    assert insertion.best == "good" and insertion.significant and insertion.lead.low > 0.4  # type: ignore[union-attr]
    assert "significant at 0.05" in insertion.line() and "good" in insertion.line()
    tie = {"x": base, "y": base.copy()}
    assert not verdict("overall", tie, bootstrap(tie)).significant


def test_per_class_means_by_hand() -> None:
    values = {"m": {"i1": 1.0, "i2": 3.0, "i3": 10.0, "i4": math.nan}}
    classes = {"i1": "cat", "i2": "cat", "i3": "dog", "i4": "dog"}
    assert per_class_means(values, classes) == {"cat": {"m": 2.0}, "dog": {"m": 10.0}}
