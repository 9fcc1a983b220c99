"""The night's faithfulness sample (``fdpipe explain --evaluate-sample N``).

A seeded random sample of the images this run explains is scored by insertion / deletion and
Average Drop / Increase in Confidence (``fdpipe.evaluation``, METHODS.md section 4) with the maps
the run has just computed: the rows of the sampled images are taken from the stream the engine
(local or Ray) hands to the sink, on the driver, so no map is computed or read back twice. Each
sampled image is read from the source again and its clean pass runs once for every metric and
method (one forward pass of the ~57 that insertion / deletion costs per image and method). The
per-method means with their paired bootstrap intervals and the verdict line go into the run
record (``evaluation``), where ``fdpipe report`` shows them run by run, so a drift shows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from fdpipe.api import Explainer
from fdpipe.evaluation.choice import sample_items
from fdpipe.evaluation.comparison import StoredMaps, compare
from fdpipe.evaluation.curves import CurveProtocol
from fdpipe.evaluation.results import statistics_of, verdict_line
from fdpipe.job.inputs import Entry, Source
from fdpipe.job.reader import MapRow, map_rows

log = logging.getLogger("fdpipe.job")

METRICS = ("curves", "confidence")  # insertion / deletion; Average Drop / Increase


@dataclass
class SampleTap:
    """Keeps the rows of the sampled images as they pass to the sink: their maps, or why the
    image failed."""

    keys: set[str]
    rows: list[MapRow] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __call__(self, table: pa.Table) -> None:
        if not self.keys or not table.num_rows:
            return
        mine = table.filter(pc.is_in(table.column("image_path"), pa.array(sorted(self.keys))))
        for row, status, path, error in zip(
            map_rows(mine),
            mine.column("status").to_pylist(),
            mine.column("image_path").to_pylist(),
            mine.column("error").to_pylist(),
            strict=True,
        ):
            if row is not None:
                self.rows.append(row)
            elif status != "ok":
                self.failed[str(path)] = f"failed in this run: {error}"


def draw(pending: list[Entry], size: int, seed: int) -> SampleTap:
    """``size`` of the run's pending images (all of them when fewer), seeded."""
    return SampleTap({entry.key for entry in sample_items(pending, size, seed)})


def evaluate_sample(
    tap: SampleTap,
    explainer: Explainer,
    source: Source,
    pending: list[Entry],
    *,
    asked: int,
    seed: int,
) -> dict[str, object]:
    """The run record's ``evaluation``: what was sampled, what was scored, the statistics."""
    clock = time.perf_counter()
    protocol = CurveProtocol()
    explained = {row.image_path for row in tap.rows}
    chosen = [e for e in pending if e.key in explained]  # input order, as drawn
    comparison = compare(
        explainer.model,
        explainer.network,
        StoredMaps(tap.rows),
        chosen,
        source,
        protocol=protocol,
        metrics=METRICS,
    )
    skipped = tap.failed | comparison.skipped
    skipped |= {k: "no rows in this run" for k in tap.keys - explained - set(skipped)}
    statistics = statistics_of(comparison)
    record: dict[str, object] = {
        "asked": asked,
        "seed": seed,
        "eligible": len(pending),  # the images this run explained (or tried to)
        "images": sorted(tap.keys),
        "evaluated": len({s.image for s in comparison.scores}),
        "skipped": skipped,
        "metrics": list(METRICS),
        "protocol": asdict(protocol),
        "means": {
            metric: {label: vars(interval) for label, interval in stats.means.items()}
            for metric, stats in statistics.items()
        },
        "verdict": verdict_line(statistics),
        "seconds": time.perf_counter() - clock,
    }
    log.info(
        "faithfulness sample: %d of %d image(s) scored (%d skipped)%s",
        record["evaluated"],
        len(tap.keys),
        len(skipped),
        f"; {record['verdict']}" if record["verdict"] else "",
    )
    return record


__all__ = ["METRICS", "SampleTap", "draw", "evaluate_sample"]
