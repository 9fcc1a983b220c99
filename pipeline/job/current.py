"""Which rows of an output are current: the supersession rule every reader applies.

An output holds the rows of a set of runs; parts are never edited, so a rerun that explains an
image again (new content, a retry) adds rows rather than replacing them. Per image, its newest
run (largest ``run_id``) says what it is now: a ``pruned`` row there hides the image, and only
rows with the newest run's ``image_sha256`` (the current content) stay. Among those, each
(``method``, ``targets``, ``class_rank``) keeps the rows of its newest run; a ``failed`` row stays
only while it is from the image's newest run (a later success or a prune supersedes it).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    ok = table.filter(pc.and_(alive, pc.equal(table["status"], pa.scalar("ok"))))
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


__all__ = ["KEY_COLUMNS", "current_mask"]
