"""Which rows of an output are current: the supersession rule every reader applies.

An output holds the rows of a set of runs; parts are never edited, so a rerun that explains an
image again (new content, a retry) adds rows rather than replacing them. Per image, its newest
run (largest ``run_id``) says what it is now: a ``pruned`` row there hides the image, and only
rows with the newest run's ``image_sha256`` (the current content) stay. Among those, each
(``method``, ``targets``, ``class_rank``) keeps the rows of its newest run, and of the ``top-k``
sets of one method only the widest stays (it holds the narrower ones' rows; the same for the
sets after a label column: ``column=X`` < ``column=X+top-1`` < ...); a ``failed`` row
stays only while it is from the image's newest run (a later success or a prune supersedes it).
"""

from __future__ import annotations

import re
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A targets label of the top-k classes, alone or after each image's own class (``column=``).
TOP_K = re.compile(r"^(?:(?P<family>column=.+)\+)?top-(?P<k>[0-9]+)$")
KEY_COLUMNS = ["image_path", "run_id", "image_sha256", "status", "method", "targets", "class_rank"]


def current_mask(keys: pa.Table) -> np.ndarray:
    """Boolean mask over the rows of ``keys`` (at least ``KEY_COLUMNS``): the current rows."""
    n = keys.num_rows
    table = keys.select(KEY_COLUMNS).append_column("_row", pa.array(np.arange(n)))
    table = table.append_column("_pruned", pc.equal(table["status"], pa.scalar("pruned")))
    latest = table.group_by("image_path").aggregate([("run_id", "max")])
    table = table.join(latest, "image_path")
    at_latest = table.filter(pc.equal(table["run_id"], table["run_id_max"]))
    heads = at_latest.group_by("image_path").aggregate(
        [("image_sha256", "max"), ("_pruned", "any")]
    )
    table = table.join(heads, "image_path")
    sha, now = table["image_sha256"], table["image_sha256_max"]
    # Kleene "or": a failure without a hash (broken link, FIFO) has null == null, which the
    # plain "or" would turn into null and then into "not current", hiding the failure.
    same_content = pc.fill_null(
        pc.or_kleene(pc.equal(sha, now), pc.and_(pc.is_null(sha), pc.is_null(now))),
        pa.scalar(False),
    )
    alive = pc.and_(cast(pa.ChunkedArray, same_content), pc.invert(table["_pruned_any"]))
    failed_now = pc.and_(
        pc.equal(table["status"], pa.scalar("failed")),
        pc.equal(table["run_id"], table["run_id_max"]),
    )
    ok = widest_top_k(table.filter(pc.and_(alive, pc.equal(table["status"], pa.scalar("ok")))))
    group = ["image_path", "method", "targets", "class_rank"]
    newest = ok.group_by(group).aggregate([("run_id", "max")])
    newest = newest.select([*group, "run_id_max"]).rename_columns([*group, "_newest"])
    ok = ok.join(newest, group)
    keep_ok = ok.filter(pc.equal(ok["run_id"], ok["_newest"]))["_row"]
    keep_failed = table.filter(pc.and_(alive, failed_now))["_row"]
    mask = np.zeros(n, dtype=bool)
    for rows in (keep_ok, keep_failed):
        mask[rows.to_numpy()] = True
    return mask


def widths(targets: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The family and width of each targets label: ``top-k`` -> ("", k), ``column=X+top-k`` ->
    ("column=X", k), ``column=X`` -> ("column=X", 0); other labels (``classes=...``) are a
    family of their own with no width (null): nothing supersedes them."""
    parts = pc.extract_regex(targets, TOP_K.pattern)
    matched = pc.is_valid(parts)
    family = pc.if_else(matched, pc.struct_field(parts, "family"), targets)
    column = pc.starts_with(targets, "column=")
    k = pc.if_else(
        matched,
        pc.cast(pc.struct_field(parts, "k"), pa.int64()),
        pc.if_else(column, pa.scalar(0, pa.int64()), pa.scalar(None, pa.int64())),
    )
    return cast(pa.ChunkedArray, family), cast(pa.ChunkedArray, k)


def widest_top_k(ok: pa.Table) -> pa.Table:
    """Of an image's top-k row sets of one method and family (same content), only the widest: a
    top-2 run after a top-1 run holds the top-1 rows again (same class, same map at rank 0), and
    two rank-0 rows of one method would be read as two maps; the same for the sets after a label
    column (``column=X``, ``column=X+top-1``, ...)."""
    family, k = widths(ok["targets"])
    ok = ok.append_column("_family", family).append_column("_k", k)
    widest = ok.group_by(["image_path", "method", "_family"]).aggregate([("_k", "max")])
    ok = ok.join(widest, ["image_path", "method", "_family"])
    narrower = pc.fill_null(pc.less(ok["_k"], ok["_k_max"]), pa.scalar(False))
    return ok.filter(pc.invert(cast(pa.ChunkedArray, narrower)))


def covers(held: str, wanted: str) -> bool:
    """Rows of targets ``held`` stand for ``wanted`` (itself, or a narrower set of its family):
    the plan does not explain ``wanted`` again, and the readers keep only ``held``."""
    (held_family, wide), (wanted_family, narrow) = (_width(held), _width(wanted))
    if wide is None or narrow is None or held_family != wanted_family:
        return held == wanted
    return wide >= narrow


def _width(label: str) -> tuple[str, int | None]:
    if (match := TOP_K.match(label)) is not None:
        return match["family"] or "", int(match["k"])
    return label, 0 if label.startswith("column=") else None


__all__ = ["KEY_COLUMNS", "covers", "current_mask"]
