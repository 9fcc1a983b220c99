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
    ("pointing", "Pointing game ↑", max, "{:.2%}"),
)


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


def results_json(comparison: Comparison, *, model: str, command: str | None) -> dict[str, object]:
    games = comparison.games()
    return cast(
        dict[str, object],
        _finite(
            {
                "model": model,
                "command": command,
                "protocol": asdict(comparison.protocol),
                "tolerance": comparison.tolerance,
                "methods": comparison.methods,
                "summary": comparison.summary(),
                "pointing_per_class": {
                    label: game.accuracy_per_class() for label, game in games.items() if game.trials
                },
                "images": [asdict(s) | {"overall": s.overall} for s in comparison.scores],
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
    directory: Path, comparison: Comparison, *, model: str, command: str | None = None
) -> list[Path]:
    """``report.md``, ``results.json``, (with curves) ``curves.png`` and ``report.html`` (the
    same, with the curves and the overlays already in ``overlays/``) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary()
    lines = ["# Method comparison", "", f"Model `{model}`.", "", markdown_table(summary)]
    if comparison.scores:
        images = len({s.image for s in comparison.scores})
        lines.append(
            f"Insertion / deletion on {images} image(s): {describe_protocol(comparison.protocol)}."
        )
        counts = {label: row["images"] for label, row in summary.items()}
        if len(set(counts.values())) > 1:
            lines += ["", f"Methods were scored on different numbers of images: {counts}."]
    if comparison.trials:
        lines += [
            "",
            f"Pointing game over {len(comparison.trials)} (image, class, method) trial(s): "
            f"{comparison.tolerance:g} px tolerance, accuracy per class averaged over classes.",
        ]
    if command:
        lines += ["", f"Command: `{command}`"]
    if comparison.skipped:
        lines += ["", f"Skipped {len(comparison.skipped)} image(s); see results.json."]
    written = [directory / "report.md", directory / "results.json"]
    written[0].write_text("\n".join(lines) + "\n")
    results = results_json(comparison, model=model, command=command)
    written[1].write_text(json.dumps(results, indent=1) + "\n")
    if comparison.scores and importlib.util.find_spec("matplotlib") is not None:
        plot_curves(directory / "curves.png", comparison)
        written.append(directory / "curves.png")
    elif comparison.scores:
        log.warning("no curves.png: matplotlib is missing (pip install 'fdpipe[report]')")
    written.append(write_comparison_page(directory, table_cells(summary), lines[5:], model))
    return written
