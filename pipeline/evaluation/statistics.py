"""Is a difference between two methods real? Paired statistics over the same images.

Every method is scored on the same images, so the statistics are paired: the bootstrap draws
one set of image indices per resample and takes every method's mean over it (percentile 95 %
intervals); the paired test is Wilcoxon's signed-rank test on the per-image differences
(scipy, two-sided, zero differences dropped as Wilcoxon did; p = 1 when all are zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon

RESAMPLES = 2000
LEVEL = 0.95

# metric -> True when higher is better
HIGHER_IS_BETTER = {
    "insertion": True,
    "deletion": False,
    "overall": True,
    "road_morf": False,
    "road_lerf": True,
    "road": True,
    "average_drop": False,
    "increase": True,
    "energy": True,
    "pointing": True,
}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def text(self, fmt: str = "{:.4f}") -> str:
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def paired_table(values: dict[str, dict[str, float]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """{method: {unit: value}} -> the units every method has a finite value for, and per method
    its values over them in that order."""
    common = set.intersection(
        *({u for u, v in per.items() if math.isfinite(v)} for per in values.values())
    )
    units = sorted(common)
    return units, {m: np.array([per[u] for u in units], float) for m, per in values.items()}


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap(
    table: dict[str, np.ndarray], resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> dict[str, Interval]:
    """Each method's mean with a paired percentile bootstrap interval (the same draws for all)."""
    n = len(next(iter(table.values()), []))
    if n == 0:
        return {}
    draws = resample_indices(n, resamples, seed)
    tail = (1 - level) / 2 * 100
    return {
        m: Interval(
            float(v.mean()), *map(float, np.percentile(v[draws].mean(1), [tail, 100 - tail]))
        )
        for m, v in table.items()
    }


def difference_interval(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """Mean of a - b over the same units, with its bootstrap interval."""
    return bootstrap({"d": a - b}, resamples, seed, level)["d"]


def signed_rank_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired values; 1 when they never differ."""
    if len(a) == 0 or np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b, zero_method="wilcox").pvalue)


def pairwise_tests(table: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Wilcoxon p between every two methods: {a: {b: p}} (symmetric)."""
    methods = list(table)
    tests: dict[str, dict[str, float]] = {m: {} for m in methods}
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            tests[a][b] = tests[b][a] = signed_rank_p(table[a], table[b])
    return tests


@dataclass(frozen=True)
class Verdict:
    metric: str
    best: str
    runner_up: str | None
    lead: Interval | None  # best - runner-up (sign: better is positive)
    p: float | None  # Wilcoxon, best against runner-up
    units: int
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < self.alpha

    def line(self) -> str:
        if self.runner_up is None or self.lead is None:
            return f"best by {self.metric}: {self.best} (the only method, {self.units} image(s))"
        verdict = "significant" if self.significant else "not significant"
        return (
            f"best by {self.metric}: {self.best}, ahead of {self.runner_up} by "
            f"{self.lead.text()} over {self.units} image(s); Wilcoxon p = {self.p:.3g}: "
            f"{verdict} at {self.alpha:g}"
        )


def verdict(metric: str, table: dict[str, np.ndarray], means: dict[str, Interval]) -> Verdict:
    """The best method by ``metric`` and whether its lead over the runner-up is significant."""
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ranked = sorted(means, key=lambda m: -sign * means[m].mean)
    units = len(next(iter(table.values())))
    if len(ranked) < 2:
        return Verdict(metric, ranked[0], None, None, None, units)
    best, second = ranked[:2]
    lead = difference_interval(sign * table[best], sign * table[second])
    return Verdict(metric, best, second, lead, signed_rank_p(table[best], table[second]), units)


def per_class_means(
    values: dict[str, dict[str, float]], classes: dict[str, str]
) -> dict[str, dict[str, float]]:
    """{class: {method: mean over that class's units}}; ``classes``: unit -> class name."""
    result: dict[str, dict[str, float]] = {}
    for method, per in values.items():
        groups: dict[str, list[float]] = {}
        for unit, value in per.items():
            if math.isfinite(value):
                groups.setdefault(classes[unit], []).append(value)
        for name, group in groups.items():
            result.setdefault(name, {})[method] = float(np.mean(group))
    return dict(sorted(result.items()))


@dataclass(frozen=True)
class MetricStatistics:
    metric: str
    units: list[str]  # the images (or pointing trials) every method was scored on
    means: dict[str, Interval]
    tests: dict[str, dict[str, float]]  # Wilcoxon p between every two methods
    verdict: Verdict
    per_class: dict[str, dict[str, float]]

    def document(self) -> dict[str, object]:
        return {
            "units": len(self.units),
            "higher_is_better": HIGHER_IS_BETTER[self.metric],
            "means": {m: vars(i) for m, i in self.means.items()},
            "wilcoxon_p": self.tests,
            "verdict": vars(self.verdict)
            | {
                "lead": None if self.verdict.lead is None else vars(self.verdict.lead),
                "significant": self.verdict.significant,
                "line": self.verdict.line(),
            },
            "per_class": self.per_class,
        }


def analyse(
    values: dict[str, dict[str, dict[str, float]]], classes: dict[str, str]
) -> dict[str, MetricStatistics]:
    """Per metric of ``values`` ({metric: {method: {unit: value}}}), in HIGHER_IS_BETTER's
    order: paired means and intervals, tests, the verdict and per-class means (``classes``:
    unit -> class name; units without one are left out of the breakdown)."""
    result = {}
    for metric in HIGHER_IS_BETTER:
        if metric not in values:
            continue
        units, table = paired_table(values[metric])
        if not units:
            continue
        means = bootstrap(table)
        known = {u: c for u, c in classes.items() if u in set(units)}
        kept = {m: {u: per[u] for u in known} for m, per in values[metric].items()}
        result[metric] = MetricStatistics(
            metric, units, means, pairwise_tests(table), verdict(metric, table, means),
            per_class_means(kept, known),
        )  # fmt: skip
    return result


PRIMARY = ("overall", "road", "insertion", "energy", "pointing", "average_drop")


def primary_metric(statistics: dict[str, MetricStatistics]) -> str | None:
    """The metric the one-line verdict speaks of: the first of PRIMARY that was measured."""
    return next((m for m in PRIMARY if m in statistics), next(iter(statistics), None))
