"""The comparison report: the FD-CAM paper's Table I in Markdown (methods as rows, best in bold),
the same numbers and every per-image score as JSON, the mean insertion / deletion curves as a PNG,
and per-image overlays of every method side by side.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import cast

import numpy as np
from fdpipe.evaluation.comparison import Comparison
from fdpipe.evaluation.comparison_page import write_comparison_page
from fdpipe.evaluation.curves import CurveProtocol
from fdpipe.evaluation.randomisation import Cascade
from fdpipe.evaluation.statistics import MetricStatistics, analyse, primary_metric
from fdpipe.job.reader import MapRow
from fdpipe.render import file_stem, sheet_line
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

# (summary key, header, which value is best, format)
COLUMNS: tuple[tuple[str, str, Callable[..., str], str], ...] = (
    ("insertion", "Insertion ↑", max, "{:.4f}"),
    ("deletion", "Deletion ↓", min, "{:.4f}"),
    ("overall", "Overall ↑", max, "{:.4f}"),
    ("average_drop", "Average drop ↓", min, "{:.2f}%"),
    ("increase", "Increase in confidence ↑", max, "{:.2f}%"),
    ("road_morf", "ROAD MoRF ↓", min, "{:.4f}"),
    ("road_lerf", "ROAD LeRF ↑", max, "{:.4f}"),
    ("road", "ROAD ↑", max, "{:.4f}"),
    ("pointing", "Pointing game ↑", max, "{:.2%}"),
    ("energy", "Energy pointing ↑", max, "{:.4f}"),
)
HEADERS = {key: header for key, header, _, _ in COLUMNS}


def table_cells(
    summary: dict[str, dict[str, float]],
) -> tuple[list[str], list[tuple[str, list[tuple[str, bool]]]]]:
    """Headers, then per method its cells as (text, best); a column appears when some method
    has it; ties for best are all best."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in summary.values())]
    best: dict[str, str] = {}
    for key, _, pick, fmt in columns:
        shown = [fmt.format(row[key]) for row in summary.values() if key in row]
        values = {text: float(text.rstrip("%")) for text in shown}
        best[key] = pick(values, key=values.get)
    rows = []
    for label, row in summary.items():
        cells = []
        for key, _, _, fmt in columns:
            text = fmt.format(row[key]) if key in row else "–"
            cells.append((text, text == best[key]))
        rows.append((label, cells))
    return [header for _, header, _, _ in columns], rows


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    """Methods as rows, best in bold (the paper's Table I layout)."""
    headers, rows = table_cells(summary)
    lines = ["| Method | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for label, cells in rows:
        shown = [f"**{text}**" if best else text for text, best in cells]
        lines.append(f"| `{label}` | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def _finite(value: object) -> object:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def statistics_of(comparison: Comparison) -> dict[str, MetricStatistics]:
    """The paired statistics of every metric, per-class by the class predicted on the image."""
    classes = {s.image: s.class_name for s in comparison.scores}
    return analyse(comparison.values(), classes)


def verdict_line(statistics: dict[str, MetricStatistics]) -> str | None:
    primary = primary_metric(statistics)
    return None if primary is None else statistics[primary].verdict.line()


def statistics_markdown(statistics: dict[str, MetricStatistics]) -> list[str]:
    """Per metric: mean [95 % interval] and Wilcoxon p against the best, the verdict line."""
    lines = []
    for metric, stats in statistics.items():
        best = stats.verdict.best
        lines += [
            "",
            f"**{HEADERS[metric]}** over {len(stats.units)} paired unit(s): "
            f"{stats.verdict.line()}.",
            "",
            "| Method | mean [95 % bootstrap interval] | Wilcoxon p vs best |",
            "|---|---:|---:|",
        ]
        for label, interval in stats.means.items():
            p = "–" if label == best else f"{stats.tests[best][label]:.3g}"
            lines.append(f"| `{label}` | {interval.text()} | {p} |")
    return lines


def cascade_markdown(cascade: Cascade) -> list[str]:
    """Mean rank correlation (SSIM) with the trained model's maps after each cascade step."""
    lines = [
        "",
        f"Sanity check (cascading randomisation, {len(cascade.images)} image(s)): Spearman "
        "rank correlation (SSIM) of each method's map with the trained model's, after "
        "re-initialising the blocks from the output down to the one named.",
        "",
        "| Method | " + " | ".join(f"`{step}`" for step in cascade.steps) + " |",
        "|---|" + "---:|" * len(cascade.steps),
    ]
    lines += [
        f"| `{label}` | " + " | ".join(cells) + " |" for label, cells in cascade.cells().items()
    ]
    if cascade.stop is not None:
        lines += [
            "",
            f"A method's row ends once its mean rank correlation is below {cascade.stop}.",
        ]
    return lines


def cascade_json(cascade: Cascade) -> dict[str, object]:
    return {
        "steps": cascade.steps,
        "images": cascade.images,
        "means": cascade.means(),
        "stop": cascade.stop,
        "rank": cascade.rank,
        "ssim": cascade.ssim,
    }


Box = tuple[float, float, float, float]


def draw_cascade(
    path: Path, cascade: Cascade, picture: Image.Image, box: Box | None, alpha: float = 0.5
) -> Path:
    """One line per method: the first image's trained map, then its map after each step
    (``box``: the part of the picture the model saw)."""
    lines = []
    for label, maps in cascade.maps.items():
        natives = [cascade.trained[label], *maps]
        names = [f"{label}: trained", *(f"-> {step}" for step in cascade.steps)]
        rows = [
            MapRow(
                cascade.images[0],
                name,
                0,
                0,
                cascade.class_name,
                cascade.probability,
                native.float().cpu().numpy(),
                box,
            )
            for name, native in zip(names, natives, strict=False)  # a stopped row is shorter
        ]
        lines.append(sheet_line(picture, rows, alpha))
    width = max(line.width for line in lines)
    sheet = Image.new("RGB", (width, sum(line.height for line in lines)), "white")
    for i, line in enumerate(lines):
        sheet.paste(line, (0, i * line.height))
    sheet.save(path)
    return path


def results_json(
    comparison: Comparison,
    *,
    model: str,
    command: str | None,
    statistics: dict[str, MetricStatistics] | None = None,
    cascade: Cascade | None = None,
) -> dict[str, object]:
    games = comparison.games()
    statistics = statistics_of(comparison) if statistics is None else statistics
    return cast(
        dict[str, object],
        _finite(
            {
                "model": model,
                "command": command,
                "protocol": asdict(comparison.protocol),
                "metrics": comparison.metrics,
                "road": asdict(comparison.road) if "road" in comparison.metrics else None,
                "tolerance": comparison.tolerance,
                "methods": comparison.methods,
                "summary": comparison.summary(),
                "pointing_per_class": {
                    label: game.accuracy_per_class() for label, game in games.items() if game.trials
                },
                "verdict": verdict_line(statistics),
                "statistics": {m: stats.document() for m, stats in statistics.items()},
                "sanity": None if cascade is None else cascade_json(cascade),
                "images": [s.row() for s in comparison.scores],
                "pointing_trials": [asdict(t) for t in comparison.trials],
                "unmapped_classes": dict(comparison.unmapped),
                "skipped": comparison.skipped,
            }
        ),
    )


def plot_curves(path: Path, comparison: Comparison) -> None:
    """Mean insertion and deletion curves, one line per method, AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = comparison.mean_curves()
    summary = comparison.summary()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for (insertion, deletion), label in zip(curves.values(), curves, strict=True):
        x = np.linspace(0.0, 1.0, len(insertion))
        axes[0].plot(x, insertion, label=f"{label} ({summary[label]['insertion']:.4f})")
        axes[1].plot(x, deletion, label=f"{label} ({summary[label]['deletion']:.4f})")
    score = "probability" if comparison.protocol.score == "probability" else "logit"
    for axis, title in zip(
        axes, ("Insertion (higher is better)", "Deletion (lower is better)"), strict=True
    ):
        axis.set_title(title)
        axis.set_xlabel("fraction of pixels inserted / deleted")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_ylabel(f"mean {score} of the predicted class")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


CropBox = Callable[[int, int], tuple[float, float, float, float]]  # (width, height) -> box


class OverlayWriter:
    """``compare``'s ``on_maps``: one PNG per image, the photo then every method's overlay, each
    map over the part of the photo the model saw (``crop_box``: the preprocessing's)."""

    def __init__(
        self,
        directory: Path,
        class_names: list[str],
        limit: int,
        alpha: float = 0.5,
        crop_box: CropBox | None = None,
    ) -> None:
        self.directory = directory
        self.class_names = class_names
        self.limit = limit
        self.alpha = alpha
        self.crop_box = crop_box
        self.written: list[Path] = []

    def __call__(
        self,
        key: str,
        picture: Image.Image,
        class_index: int,
        probability: float,
        maps: dict[str, Tensor],
    ) -> None:
        if len(self.written) >= self.limit:
            return
        name = self.class_names[class_index]
        box = self.crop_box(picture.width, picture.height) if self.crop_box else None
        rows = [
            MapRow(key, label, 0, class_index, name, probability, native.float().cpu().numpy(), box)
            for label, native in maps.items()
        ]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{file_stem(key)}.png"
        sheet_line(picture, rows, self.alpha).save(path)
        self.written.append(path)


def describe_protocol(protocol: CurveProtocol) -> str:
    blur = f"{protocol.blur_kernel} x {protocol.blur_kernel}, sigma {protocol.blur_sigma:g}"
    return (
        f"area under the {protocol.score} of the class predicted on the clean image, "
        f"{protocol.step_fraction:.2%} of the pixels per step, deletion substrate "
        f"`{protocol.deletion_substrate}`, insertion substrate `{protocol.insertion_substrate}` "
        f"(blur {blur}); overall = insertion - deletion"
    )


def write_report(
    directory: Path,
    comparison: Comparison,
    *,
    model: str,
    command: str | None = None,
    cascade: Cascade | None = None,
    cascade_picture: tuple[Image.Image, Box | None] | None = None,
) -> list[Path]:
    """``report.md``, ``results.json``, (with curves) ``curves.png``, (with a ``cascade``)
    ``cascade.png`` and ``report.html`` (the same, with the curves and the overlays already in
    ``overlays/``) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary()
    statistics = statistics_of(comparison)
    lines = ["# Method comparison", "", f"Model `{model}`.", "", markdown_table(summary)]
    if comparison.scores:
        images = len({s.image for s in comparison.scores})
        if "curves" in comparison.metrics:
            lines.append(
                f"Insertion / deletion on {images} image(s): "
                f"{describe_protocol(comparison.protocol)}."
            )
        if "confidence" in comparison.metrics:
            lines += ["", "Average Drop / Increase in Confidence: the input times the map."]
        if "road" in comparison.metrics:
            road = comparison.road
            fractions = ", ".join(f"{f:g}" for f in road.fractions)
            lines += [
                "",
                f"ROAD: mean {comparison.protocol.score} after removing {fractions} of the "
                f"pixels with noisy linear imputation (noise {road.noise:g}); ROAD = (LeRF - "
                "MoRF) / 2.",
            ]
        counts = {label: row["images"] for label, row in summary.items()}
        if len(set(counts.values())) > 1:
            lines += ["", f"Methods were scored on different numbers of images: {counts}."]
    if comparison.trials:
        lines += [
            "",
            f"Pointing game over {len(comparison.trials)} (image, class, method) trial(s): "
            f"{comparison.tolerance:g} px tolerance, accuracy per class averaged over classes; "
            "energy pointing: the share of the map's sum inside the class's boxes.",
        ]
    tail = []
    if command:
        tail += ["", f"Command: `{command}`"]
    if comparison.skipped:
        tail += ["", f"Skipped {len(comparison.skipped)} image(s); see results.json."]
    sanity = [] if cascade is None else cascade_markdown(cascade)
    written = [directory / "report.md", directory / "results.json"]
    document = lines + statistics_markdown(statistics) + sanity + tail
    written[0].write_text("\n".join(document) + "\n")
    results = results_json(
        comparison, model=model, command=command, statistics=statistics, cascade=cascade
    )
    written[1].write_text(json.dumps(results, indent=1) + "\n")
    if comparison.mean_curves() and importlib.util.find_spec("matplotlib") is not None:
        plot_curves(directory / "curves.png", comparison)
        written.append(directory / "curves.png")
    elif comparison.mean_curves():
        log.warning("no curves.png: matplotlib is missing (pip install 'fdpipe[report]')")
    if cascade is not None and cascade_picture is not None and cascade.steps:
        picture, box = cascade_picture
        written.append(draw_cascade(directory / "cascade.png", cascade, picture, box))
    page = write_comparison_page(
        directory, table_cells(summary), lines[5:] + tail, model, statistics, cascade
    )
    written.append(page)
    return written
