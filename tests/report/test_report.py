"""``fdpipe report``: every image once, every reference resolves, failures with reasons, paging,
reused thumbnails, run records from either source, escaping, and the command's usage errors."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from fdpipe.bench.report_suite import write_synthetic_output
from fdpipe.cli import main
from fdpipe.report import ReportTargetError, write_site
from image_files import write_images
from results import commit_versions

HOSTILE = 'evil<script>alert(1)</script>&"x.jpg'  # a file name is data, never markup
FAILURES = {"img_003.jpg": "cannot identify image file", HOSTILE: "truncated <file>"}


class References(HTMLParser):
    """href/src of a page, and the gallery rows' data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.rows: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.links += [found[k] for k in ("href", "src") if k in found]
        if tag == "tr" and "data-path" in found:
            self.rows.append(found)


def parse(path: Path) -> References:
    parser = References()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    names = [p.relative_to(root / "images").as_posix() for p in write_images(root / "images", 7)]
    names.insert(3, HOSTILE)
    write_synthetic_output(root / "out", root / "images", names, failed=FAILURES, top_k=2)
    return root / "out"


def gallery_rows(site: Path) -> list[dict[str, str]]:
    return [row for page in sorted(site.glob("page-*.html")) for row in parse(page).rows]


def test_every_image_once_links_resolve_failures_listed(output: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    summary = write_site(output, site, images_root=output.parent / "images", page_size=3)
    assert (summary.images, summary.failed, summary.pages) == (8, 2, 3)
    rows = gallery_rows(site)
    firsts = [row["data-path"] for row in rows if row["data-rank"] == "0"]
    assert sorted(firsts) == sorted(
        [
            *(
                p.relative_to(output.parent / "images").as_posix()
                for p in output.parent.glob("images/**/*.jpg")
            ),
            HOSTILE,
        ]
    )  # every image exactly once (its top-1 row, or its failed row)
    assert len(rows) == 6 * 2 + 2  # two classes per explained image, one row per failure
    script = (site / "images.js").read_text(encoding="utf-8")  # the index's search, all pages
    found = [json.loads(line.rstrip(",")) for line in script.splitlines()[1:-1]]  # one a line
    assert sorted(path for path, _, _, _ in found) == sorted(firsts)
    for path, _, status, page in found:
        assert {"data-path": path, "data-status": status}.items() <= next(
            row for row in parse(site / f"page-{page:05d}.html").rows if row["data-path"] == path
        ).items()  # each entry points to the page that shows it
    for page in site.glob("*.html"):
        for link in parse(page).links:
            assert (site / link.split("#")[0]).is_file(), f"{page.name}: {link}"
    failures = (site / "failures.html").read_text(encoding="utf-8")
    index = (site / "index.html").read_text(encoding="utf-8")
    for text in (failures, index):
        assert "img_003.jpg" in text and "cannot identify image file" in text
        assert "truncated &lt;file&gt;" in text
        assert "<script>alert" not in text and "evil&lt;script&gt;" in text
    failed = [row for row in rows if row["data-status"] == "failed"]
    assert {row["data-path"] for row in failed} == set(FAILURES)


def test_thumbnails_are_reused_and_stale_pages_removed(output: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    first = write_site(output, site, images_root=output.parent / "images", page_size=1)
    assert first.pages == 8 and first.thumbnails_reused == 0
    assert first.thumbnails_written == 6 + 6 * 2 * 2  # photos + (methods x classes) overlays
    again = write_site(output, site, images_root=output.parent / "images", page_size=4)
    assert again.thumbnails_written == 0 and again.thumbnails_reused == first.thumbnails_written
    assert sorted(p.name for p in site.glob("page-*.html")) == [
        "page-00001.html",
        "page-00002.html",
    ]


def test_an_image_whose_rows_lie_in_several_parts_is_shown_once(tmp_path: Path) -> None:
    images = tmp_path / "images"
    names = [p.relative_to(images).as_posix() for p in write_images(images, 3)]
    output = tmp_path / "out"
    write_synthetic_output(output, images, names, methods=("gradcam",))
    later = "20261123T000000.000000Z-000000"  # a rerun adding a method: rows in a later part
    write_synthetic_output(output, images, names, methods=("layercam",), run_id=later)
    assert commit_versions(output) == [0, 1]
    summary = write_site(output, tmp_path / "site", images_root=images, page_size=2)
    assert (summary.images, summary.pages) == (3, 2)
    rows = gallery_rows(tmp_path / "site")
    assert sorted(row["data-path"] for row in rows) == sorted(names)  # each image once
    page = (tmp_path / "site" / "page-00001.html").read_text(encoding="utf-8")
    assert page.count('<td data-method="gradcam"><img') == 2
    assert page.count('<td data-method="layercam"><img') == 2  # both runs' maps in one row
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert re.search(r"rows</td><td class='num'>6<", index)


def test_without_the_images_maps_are_shown_alone(output: Path, tmp_path: Path) -> None:
    summary = write_site(output, tmp_path / "site", images_root=None)
    assert summary.thumbnails_written == 6 * 2 * 2  # overlays only: no photo to show
    page = (tmp_path / "site" / "page-00001.html").read_text(encoding="utf-8")
    assert page.count("image not found") == 6 * 2  # one per (image, class) line


def test_run_records_from_runs_folder_else_part_metadata(output: Path, tmp_path: Path) -> None:
    write_site(output, tmp_path / "a", images_root=None)
    index = (tmp_path / "a" / "index.html").read_text(encoding="utf-8")
    assert "version 0" in index and "synthetic" in index  # from the commits' metadata
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    (copy / "_runs").mkdir()
    record = {"started": "2026-11-22T07:00:00Z", "throughput": 12.5, "counts": {"failed": 2}}
    (copy / "_runs" / "20261122T070000Z.json").write_text(json.dumps(record))
    (copy / "_runs" / "broken.json").write_text("{not json")
    write_site(copy, tmp_path / "b", images_root=None)
    index = (tmp_path / "b" / "index.html").read_text(encoding="utf-8")
    assert "20261122T070000Z.json" in index and "12.5" in index and "broken.json" in index


def test_report_command_and_usage_errors(output: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["report", str(output), "-o", str(tmp_path / "s"), "--colormap",
                                "viridis", "--display", "percentile=98,gamma=0.5"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert re.search(r"8 images \(2 failed\) on 1 page", done.output)
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (
        [str(empty), "-o", str(tmp_path / "x")],
        [str(output), "-o", str(output)],
        [str(output), "-o", str(tmp_path / "x"), "--display", "percentile=nan"],
        [str(output), "-o", str(tmp_path / "x"), "--colormap", "no-such-map"],
        [str(output), "-o", str(tmp_path / "x"), "--page-size", "0"],
    ):
        refused = runner.invoke(main, ["report", *args])
        assert refused.exit_code == 2, (args, refused.output)
        assert "Traceback" not in refused.output
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "part-000000.parquet").write_bytes(b"PAR1 not really")
    refused = runner.invoke(main, ["report", str(damaged), "-o", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "fdpipe migrate" in refused.output  # the earlier layout
    (tmp_path / "file").write_text("")
    refused = runner.invoke(main, ["report", str(output), "-o", str(tmp_path / "file")])
    assert refused.exit_code == 2


def test_report_refuses_a_folder_that_is_not_its_own(output: Path, tmp_path: Path) -> None:
    """``report -o`` once overwrote someone else's index.html (issue 19, item 17)."""
    foreign = tmp_path / "homepage"
    foreign.mkdir()
    (foreign / "index.html").write_text("mine")
    result = CliRunner().invoke(main, ["report", str(output), "-o", str(foreign)])
    assert result.exit_code == 2 and "not an fdpipe report" in result.output, result.output
    assert "index.html" in result.output and (foreign / "index.html").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["index.html"]
    with pytest.raises(ReportTargetError):
        write_site(output, foreign, images_root=None)
    own = tmp_path / "own"  # an earlier report of fdpipe's, or an empty folder, is replaced
    write_site(output, own, images_root=None)
    assert (own / ".fdpipe-report").is_file()
    write_site(output, own, images_root=None)
    (tmp_path / "empty").mkdir()
    write_site(output, tmp_path / "empty", images_root=None)
