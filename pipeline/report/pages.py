"""The report's HTML: the index, the gallery pages and the failures page. Plain HTML with one
stylesheet and one script copied next to it: it opens from ``file://`` with no server."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape

from fdpipe.display import Colormap, Display, display_for
from fdpipe.report.scan import Aggregates, Histogram, RunRecord

FAILURES_ON_INDEX = 50  # the rest are on failures.html


@dataclass
class GalleryRow:
    """One line of a gallery page: an (image, class rank), or a failed image."""

    path: str
    status: str
    photo: str | None
    rank: int = 0
    class_name: str = ""
    probability: float = float("nan")
    error: str | None = None
    overlays: dict[str, str] = field(default_factory=dict)  # method -> thumbnail


def page_name(number: int) -> str:
    return f"page-{number:05d}.html"


def document(title: str, body: str, *, script: bool = False, stylesheet: bool = True) -> str:
    scripts = '<script src="report.js"></script>' if script else ""
    style = '<link rel="stylesheet" href="report.css">' if stylesheet else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>{style}</head>\n"
        f"<body>\n{body}\n{scripts}</body></html>\n"
    )


def navigation(pages: int) -> str:
    first = f'<a href="{page_name(1)}">gallery</a>' if pages else ""
    return f'<nav><a href="index.html">index</a>{first}<a href="failures.html">failures</a></nav>'


def colour_bar(cmap: Colormap, methods: Iterable[str], display: Display | None) -> str:
    groups: dict[str, list[str]] = {}
    for method in methods:
        groups.setdefault(display_for(method, display).describe(), []).append(method)
    shown = "; ".join(f"{escape(', '.join(names))}: {escape(how)}" for how, names in groups.items())
    return (
        f'<div class="colorbar">0<span class="bar" style="background: {cmap.css_gradient()}">'
        f"</span>1 <span>colormap {escape(cmap.name)}; display: {shown}</span></div>"
    )


def gallery_page(
    number: int,
    pages: int,
    rows: list[GalleryRow],
    methods: list[str],
    cmap: Colormap,
    display: Display | None,
) -> str:
    pager = ['<div class="pager">']
    if number > 1:
        pager.append(f'<a class="keep-filters" href="{page_name(number - 1)}">&larr; previous</a>')
    pager.append(f"page {number} of {pages}")
    if number < pages:
        pager.append(f'<a class="keep-filters" href="{page_name(number + 1)}">next &rarr;</a>')
    pager.append("</div>")
    boxes = "".join(
        f'<label><input type="checkbox" name="method" value="{escape(m)}" checked> '
        f"{escape(m)}</label>"
        for m in methods
    )
    filters = (
        '<form id="filters" class="filters">'
        '<label>file <input name="file" type="search" placeholder="part of the path"></label>'
        '<label>class <input name="class" type="search" placeholder="part of the name"></label>'
        '<label>status <select name="status"><option value="">all</option>'
        '<option value="ok">ok</option><option value="failed">failed</option></select></label>'
        f'<span>methods: {boxes}</span><span id="shown"></span></form>'
    )
    head = "".join(f'<th data-method="{escape(m)}">{escape(m)}</th>' for m in methods)
    body = [
        navigation(pages),
        f"<h1>Gallery, page {number} of {pages}</h1>",
        colour_bar(cmap, methods, display),
        filters,
        " ".join(pager),
        f'<table id="gallery"><thead><tr><th>image</th><th>class</th>{head}</tr></thead><tbody>',
    ]
    body += [gallery_row(row, methods) for row in rows]
    body += ["</tbody></table>", " ".join(pager)]
    return document(f"fdpipe report: page {number}", "\n".join(body), script=True)


def picture(source: str | None, alt: str) -> str:
    if source is None:
        return '<div class="missing">image not found</div>'
    return f'<img src="{escape(source)}" alt="{escape(alt)}" loading="lazy">'


def gallery_row(row: GalleryRow, methods: list[str]) -> str:
    attributes = (
        f'data-path="{escape(row.path)}" data-class="{escape(row.class_name)}" '
        f'data-status="{row.status}" data-rank="{row.rank}"'
    )
    if row.status == "failed":
        name = f'<td class="name">{escape(row.path)}</td>'
        reason = (
            f'<td colspan="{1 + len(methods)}" class="error">failed: {escape(row.error or "")}</td>'
        )
        return f'<tr class="failed" {attributes}>{name}{reason}</tr>'
    name = f'<td class="name">{picture(row.photo, row.path)}{escape(row.path)}</td>'
    label = f"{escape(row.class_name)}<br>p = {row.probability:.3f}"
    if row.rank:
        label += f"<br>rank {row.rank}"
    cells = "".join(
        f'<td data-method="{escape(m)}">'
        + (picture(row.overlays[m], f"{row.path} {m}") if m in row.overlays else "")
        + "</td>"
        for m in methods
    )
    return f"<tr {attributes}>{name}<td>{label}</td>{cells}</tr>"


def histogram_svg(histogram: Histogram, caption: str, axis: tuple[str, str]) -> str:
    peak = max(int(histogram.counts.max()), 1)
    width, height, bar = 200, 60, 10
    rects = "".join(
        f'<rect x="{i * bar}" y="{height - count / peak * height:.1f}" width="{bar - 1}" '
        f'height="{count / peak * height:.1f}"><title>{count}</title></rect>'
        for i, count in enumerate(histogram.counts.tolist())
    )
    return (
        f'<figure class="chart"><svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">{rects}</svg>'
        f"<figcaption>{axis[0]} &hellip; {axis[1]}: {escape(caption)} "
        f"(n = {int(histogram.counts.sum())})</figcaption></figure>"
    )


def run_record_html(run: RunRecord) -> str:
    """A table of the record's plain values (one level of nesting flattened: ``params.model``),
    the whole record as JSON below it."""
    plain: dict[str, str] = {}
    for key, value in run.record.items():
        inner = value.items() if isinstance(value, dict) else [("", value)]
        for name, item in inner:
            label = f"{key}.{name}" if name else str(key)
            if isinstance(item, list) and all(not isinstance(v, dict | list) for v in item):
                plain[label] = ", ".join(map(str, item))
            elif not isinstance(item, dict | list):
                plain[label] = str(item)
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in plain.items())
    whole = escape(json.dumps(run.record, indent=2, default=str))
    return (
        f"<h3>{escape(run.source)}</h3><table class='stats'>{rows}</table>"
        f"<details><summary>whole record</summary><pre>{whole}</pre></details>"
    )


FAITHFULNESS = ("insertion", "deletion")  # columns of the drift table (higher, lower is better)


def faithfulness_html(runs: list[RunRecord]) -> str:
    """One row per run that scored a sample (``explain --evaluate-sample``): per method its mean
    insertion and deletion with their 95 % bootstrap intervals, the verdict. A record is data:
    values of the wrong shape are shown as missing, never trusted."""

    def cell(means: object, metric: str, method: str) -> str:
        try:
            found = means[metric][method]  # type: ignore[index]
            mean, low, high = (float(found[k]) for k in ("mean", "low", "high"))
        except (KeyError, TypeError, ValueError):
            return "<td>–</td>"
        return f"<td class='num'>{mean:.3f} [{low:.3f}, {high:.3f}]</td>"

    scored: list[tuple[RunRecord, dict[str, object]]] = []
    methods: set[str] = set()
    for run in runs:
        evaluation = run.record.get("evaluation")
        if isinstance(evaluation, dict):
            scored.append((run, evaluation))
            means = evaluation.get("means")
            for per in means.values() if isinstance(means, dict) else []:
                methods.update(map(str, per) if isinstance(per, dict) else [])
    if not scored:
        return ""
    order = sorted(methods)
    head = "".join(f"<th>{escape(m)} {metric}</th>" for m in order for metric in FAITHFULNESS)
    rows = []
    for run, evaluation in scored:
        means = evaluation.get("means")
        cells = "".join(cell(means, metric, m) for m in order for metric in FAITHFULNESS)
        note = evaluation.get("error") or evaluation.get("verdict") or ""
        rows.append(
            f"<tr><td>{escape(str(run.record.get('run_id', run.source)))}</td>"
            f"<td class='num'>{escape(str(evaluation.get('evaluated', 0)))} / "
            f"{escape(str(evaluation.get('asked', '')))}</td>{cells}"
            f"<td>{escape(str(note))}</td></tr>"
        )
    return (
        "<h2>Faithfulness of a sample, run by run</h2><p>Insertion (higher is better) and "
        "deletion (lower is better), mean [95 % bootstrap interval] over each run's sample "
        "(<code>explain --evaluate-sample</code>).</p><table class='stats'><tr><th>run</th>"
        f"<th>images scored / asked</th>{head}<th>verdict</th></tr>{''.join(rows)}</table>"
    )


def index_page(
    aggregates: Aggregates,
    runs: list[RunRecord],
    first_failures: list[tuple[str, str, int]],
    pages: int,
    cmap: Colormap,
    display: Display | None,
    source: str,
) -> str:
    stats = [
        ("output", escape(source)),
        ("images", f"{aggregates.images:,}"),
        ("explained", f"{aggregates.images - aggregates.failed:,}"),
        ("failed", f"{aggregates.failed:,}"),
        ("rows", f"{aggregates.rows:,}"),
        ("gallery pages", f"{pages:,}"),
    ]
    body = [
        navigation(pages),
        "<h1>fdpipe report</h1>",
        "<table class='stats'>"
        + "".join(f"<tr><td>{k}</td><td class='num'>{v}</td></tr>" for k, v in stats)
        + "</table>",
        "<h2>Find images</h2>",
        '<form id="find" class="filters">'
        '<label>file <input name="file" type="search" placeholder="part of the path"></label>'
        '<label>class <input name="class" type="search" placeholder="part of the name"></label>'
        '<label>status <select name="status"><option value="">all</option>'
        '<option value="ok">ok</option><option value="failed">failed</option></select></label>'
        '</form><div id="found"></div>',
        "<h2>Runs</h2>",
        *([run_record_html(run) for run in runs] or ["<p>No run records.</p>"]),
        faithfulness_html(runs),
        "<h2>Score distributions</h2><div class='charts'>",
        histogram_svg(aggregates.top1, "top-1 class probability", ("0", "1")),
    ]
    body += [
        histogram_svg(h, f"{method}: seconds per row, log scale", ("1 ms", "100 s"))
        for method, h in aggregates.seconds.items()
    ]
    body.append("</div>")
    body.append("<h2>Methods</h2><table><tr><th>method</th><th class='num'>rows</th></tr>")
    body += [
        f"<tr><td>{escape(m)}</td><td class='num'>{n:,}</td></tr>"
        for m, n in aggregates.methods.most_common()
    ]
    body.append("</table>")
    body.append(colour_bar(cmap, aggregates.methods, display))
    body.append(
        f"<h2>Failures ({aggregates.failed:,})</h2>"
        + ("<p>None.</p>" if not first_failures else failures_table(first_failures))
    )
    if aggregates.failed > len(first_failures):
        body.append('<p><a href="failures.html">all failures</a></p>')
    body.append("<h2>Gallery pages</h2><p class='pages'>")
    body += [f'<a href="{page_name(n)}">{n}</a>' for n in range(1, pages + 1)]
    body.append(
        "</p><h2>Top-1 classes</h2><table><tr><th>class</th><th class='num'>images</th></tr>"
    )
    body += [
        f"<tr><td>{escape(c)}</td><td class='num'>{n:,}</td></tr>"
        for c, n in aggregates.classes.most_common()
    ]
    body.append("</table>")
    return document("fdpipe report", "\n".join(body), script=True)


def failures_table(failures: Iterable[tuple[str, str, int]]) -> str:
    rows = "".join(failure_row(*failure) for failure in failures)
    return f'<table id="failures"><tr><th>image</th><th>reason</th><th>page</th></tr>{rows}</table>'


def failure_row(path: str, reason: str, page: int) -> str:
    return (
        f'<tr><td>{escape(path)}</td><td class="error">{escape(reason)}</td>'
        f'<td><a href="{page_name(page)}">{page}</a></td></tr>'
    )


__all__ = [
    "FAILURES_ON_INDEX",
    "GalleryRow",
    "document",
    "failure_row",
    "failures_table",
    "gallery_page",
    "index_page",
    "navigation",
    "page_name",
]
