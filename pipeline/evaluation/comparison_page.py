"""``evaluate``'s report as HTML: the Table-I-style table (best in bold), the notes, the mean
curves and the per-image overlays, next to ``report.md`` in the same directory."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from urllib.parse import quote

from fdpipe.report.pages import document

STYLE = (
    "<style>body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 8px}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}</style>"
)  # inline: this page lives in evaluate's directory, without the site's stylesheet


def inline_code(text: str) -> str:
    """Markdown's `code` spans as <code>, everything else escaped."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))


def write_comparison_page(
    directory: Path,
    table: tuple[list[str], list[tuple[str, list[tuple[str, bool]]]]],
    notes: list[str],
    model: str,
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
