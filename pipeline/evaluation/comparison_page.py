"""``evaluate``'s report as HTML: the Table-I-style table (best in bold), the notes, the paired
statistics (means with intervals, Wilcoxon p, the verdict, per-class means), the sanity check's
cascade, the mean curves and the per-image overlays, next to ``report.md`` in the same
directory."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from urllib.parse import quote

from fdpipe.evaluation.randomisation import Cascade
from fdpipe.evaluation.statistics import MetricStatistics
from fdpipe.report.pages import document

STYLE = (
    "<style>body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 8px}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}</style>"
)  # inline: this page lives in evaluate's directory, without the site's stylesheet


def inline_code(text: str) -> str:
    """Markdown's `code` spans as <code>, everything else escaped."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """An HTML table of already escaped cells; the first column is a label, the others numbers."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        f"<tr><td>{row[0]}</td>" + "".join(f'<td class="num">{c}</td>' for c in row[1:]) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def statistics_html(statistics: dict[str, MetricStatistics]) -> list[str]:
    """Per metric: the verdict, mean [95 % interval] and Wilcoxon p against the best; the
    per-class means below."""
    body = ["<h2>Statistics</h2>"] if statistics else []
    for metric, stats in statistics.items():
        best = stats.verdict.best
        rows = [
            [
                f"<code>{escape(label)}</code>",
                escape(interval.text()),
                "–" if label == best else f"{stats.tests[best][label]:.3g}",
            ]
            for label, interval in stats.means.items()
        ]
        body += [
            f"<h3>{escape(metric)}</h3><p>{escape(stats.verdict.line())}.</p>",
            _table(["Method", "mean [95 % bootstrap interval]", "Wilcoxon p vs best"], rows),
        ]
        if len(stats.per_class) > 1:
            methods = list(stats.means)
            per_class = [
                [escape(name), *(f"{by[m]:.4f}" if m in by else "–" for m in methods)]
                for name, by in stats.per_class.items()
            ]
            headers = ["predicted class", *(f"<code>{escape(m)}</code>" for m in methods)]
            body.append(
                f"<details><summary>per class</summary>{_table(headers, per_class)}</details>"
            )
    return body


def cascade_html(cascade: Cascade, picture: bool) -> list[str]:
    """The sanity check: rank correlation (SSIM) per method and step, and the cascade's maps."""
    rows = [[f"<code>{escape(label)}</code>", *cells] for label, cells in cascade.cells().items()]
    headers = ["Method", *(f"<code>{escape(step)}</code>" for step in cascade.steps)]
    body = [
        "<h2>Sanity check: cascading model randomisation</h2>",
        f"<p>Spearman rank correlation (SSIM) of each method's map with the trained model's on "
        f"{len(cascade.images)} image(s), after re-initialising every block from the output "
        "down to the one named (Adebayo et al., 2018). A faithful map changes: low values."
        + ("" if cascade.stop is None else f" A row ends once its mean is below {cascade.stop}.")
        + "</p>",
        _table(headers, rows),
    ]
    if picture:
        body.append('<p><img src="cascade.png" alt="maps along the cascade"></p>')
    return body


def write_comparison_page(
    directory: Path,
    table: tuple[list[str], list[tuple[str, list[tuple[str, bool]]]]],
    notes: list[str],
    model: str,
    statistics: dict[str, MetricStatistics] | None = None,
    cascade: Cascade | None = None,
) -> Path:
    headers, rows = table
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = [
        STYLE,
        "<h1>Method comparison</h1>",
        f"<p>Model <code>{escape(model)}</code>.</p>",
        f"<table><tr><th>Method</th>{head}</tr>",
    ]
    for label, cells in rows:
        shown = "".join(
            f'<td class="num">{"<b>" + escape(t) + "</b>" if best else escape(t)}</td>'
            for t, best in cells
        )
        body.append(f"<tr><td><code>{escape(label)}</code></td>{shown}</tr>")
    body.append("</table>")
    body += [f"<p>{inline_code(note)}</p>" for note in notes if note.strip()]
    body += statistics_html(statistics or {})
    if cascade is not None:
        body += cascade_html(cascade, (directory / "cascade.png").is_file())
    if (directory / "curves.png").is_file():
        body.append('<h2>Mean curves</h2><img src="curves.png" alt="insertion and deletion">')
    overlays = sorted((directory / "overlays").glob("*.png"))
    if overlays:
        body.append("<h2>Overlays</h2>")
        body += [
            f'<p><img src="overlays/{escape(quote(path.name))}" alt="{escape(path.stem)}" '
            'loading="lazy"></p>'
            for path in overlays
        ]
    target = directory / "report.html"
    target.write_text(document("fdpipe evaluate", "\n".join(body), stylesheet=False), "utf-8")
    return target


__all__ = ["write_comparison_page"]
