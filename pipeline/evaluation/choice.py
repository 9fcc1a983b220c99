"""``fdpipe evaluate --choose``: which of the methods asked for to trust for this model.

Every method (and method variant) is ranked by each metric measured, on the same sample of the
user's images; the recommendation is the best by the primary metric (the first measured of
``statistics.PRIMARY``), printed with its interval and whether its lead over the runner-up is
significant, with its rank on every other metric beside it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from fdpipe.evaluation.statistics import HIGHER_IS_BETTER, MetricStatistics, primary_metric

T = TypeVar("T")


def sample_items(items: Sequence[T], size: int, seed: int = 0) -> list[T]:
    """``size`` of ``items`` drawn without replacement (all of them when fewer), in input order."""
    if size >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in chosen]


def ranks(statistics: dict[str, MetricStatistics]) -> dict[str, dict[str, int]]:
    """{metric: {method: rank}}, 1 the best, by the mean over the paired units; tied means
    share a rank (1 + the number of methods strictly better)."""
    result = {}
    for metric, stats in statistics.items():
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        score = {m: sign * interval.mean for m, interval in stats.means.items()}
        result[metric] = {m: 1 + sum(v > score[m] for v in score.values()) for m in score}
    return result


def recommend(statistics: dict[str, MetricStatistics]) -> str:
    """The ranking table and the recommendation, as printed text."""
    primary = primary_metric(statistics)
    if primary is None:
        return "no method could be scored: nothing to recommend"
    table = ranks(statistics)
    metrics = list(statistics)
    methods = sorted(table[primary], key=table[primary].__getitem__)
    width = max(len(m) for m in methods)
    lines = [f"{'rank by ' + primary:<{width}}  " + "  ".join(f"{m:>12}" for m in metrics)]
    for method in methods:
        cells = [f"{statistics[m].means[method].mean:>9.4f} #{table[m][method]}" for m in metrics]
        lines.append(f"{method:<{width}}  " + "  ".join(f"{c:>12}" for c in cells))
    stats = statistics[primary]
    best = stats.verdict.best
    interval = stats.means[best]
    firsts = [m for m in metrics if table[m][best] == 1]
    lines.append(
        f"recommended: {best} ({primary} {interval.text()}; first on {', '.join(firsts)}). "
        + stats.verdict.line()
    )
    if not stats.verdict.significant and stats.verdict.runner_up is not None:
        lines.append(
            f"the lead is not significant: {best} and {stats.verdict.runner_up} are equally "
            "good choices on this sample; a larger --sample may separate them"
        )
    return "\n".join(lines)
