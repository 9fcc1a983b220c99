"""Issue 19 item 4: ``--target-column`` with ``--top-k``: a label that is also one of the image's
predictions is explained once (rank 0, ``target_role`` "both"), and the ``target_role`` column
joins tables written before it existed (Delta schema evolution)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import CommitProperties, DeltaTable, write_deltalake
from fdpipe.cli import main
from fdpipe.job.reader import read_maps
from fdpipe.job.table import COMMIT_KEY, ResultsTable
from image_files import write_images
from results import duckdb_sql

METHODS = ("--method", "gradcam,fdcam")


def explain(images: Path, output: Path, *extra: str) -> None:
    args = ["explain", "-i", str(images), "-o", str(output), "--model", "squeezenet1_1",
            "--batch-size", "4", "--workers", "1", "--no-progress", *extra]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four photos and their top-2 explained by SqueezeNet: the reference maps."""
    root = tmp_path_factory.mktemp("roles")
    write_images(root / "images", 4)
    explain(root / "images", root / "top2", *METHODS, "--top-k", "2")
    return root, root / "top2"


@pytest.mark.parametrize("top_k", [1, 2])
def test_a_label_that_is_a_prediction_is_explained_once(
    predicted: tuple[Path, Path], top_k: int
) -> None:
    root, top2 = predicted
    maps, rows = read_maps(top2)
    reference = {
        (Path(r["image_path"]).name, r["method"], r["class_index"]): m
        for r, m in zip(rows.to_pylist(), maps, strict=True)
    }
    top = {(r["image_path"], r["class_rank"]): r["class_index"] for r in rows.to_pylist()}
    paths = sorted({p for p, _ in top})
    outside = next(c for c in range(1000) if c not in {top[p, r] for p in paths for r in (0, 1)})
    # the top-1, the top-2 (a prediction only with --top-k 2), a class neither, the top-1
    labels = [top[paths[0], 0], top[paths[1], 1], outside, top[paths[3], 0]]
    manifest = root / f"labels{top_k}.csv"
    lines = [f"{root / 'images' / p},{c}" for p, c in zip(paths, labels, strict=True)]
    manifest.write_text("\n".join(["image_path,label", *lines]) + "\n")
    output = root / f"labelled{top_k}"
    explain(manifest, output, *METHODS, "--target-column", "label", "--top-k", str(top_k))

    maps, rows = read_maps(output)
    found: dict[str, list[tuple[int, int, str]]] = {}
    for row, image_map in zip(rows.to_pylist(), maps, strict=True):
        key = (Path(row["image_path"]).name, row["method"], row["class_index"])
        if key in reference:  # the same map as the top-2 run's for that class
            np.testing.assert_allclose(image_map, reference[key], atol=1e-5)
        if row["method"] == "fdcam":
            found.setdefault(key[0], []).append(
                (row["class_rank"], row["class_index"], row["target_role"])
            )
    p = [Path(path).name for path in paths]
    second = top_k == 2
    expected = {
        p[0]: [(0, labels[0], "both")] + ([(2, top[paths[0], 1], "prediction")] if second else []),
        p[1]: [(0, labels[1], "both" if second else "label"), (1, top[paths[1], 0], "prediction")],
        p[2]: [(0, outside, "label")]
        + [(r, top[paths[2], r - 1], "prediction") for r in range(1, top_k + 1)],
        p[3]: [(0, labels[3], "both")] + ([(2, top[paths[3], 1], "prediction")] if second else []),
    }
    assert {k: sorted(v) for k, v in found.items()} == expected
    assert len(rows) == 2 * sum(len(v) for v in expected.values())  # gradcam has the same rows


def test_a_table_written_before_the_role_column_takes_new_runs(tmp_path: Path) -> None:
    """A table of the schema before ``target_role``: a rerun adds the column (old rows read it
    as null), and fdpipe's and other Delta readers read the whole table."""
    images, output = tmp_path / "images", tmp_path / "out"
    write_images(images, 2)
    explain(images, output, "--method", "gradcam")
    old = DeltaTable(output).to_pyarrow_table().drop_columns(["target_role"])
    record = ResultsTable(output).commits()[0]
    record.pop("version")
    shutil.rmtree(output / "_delta_log")
    for data in output.glob("*.parquet"):
        data.unlink()
    write_deltalake(
        output,
        old,
        mode="append",
        commit_properties=CommitProperties(custom_metadata={COMMIT_KEY: json.dumps(record)}),
    )  # a table as fdpipe wrote it before the column was added
    assert "target_role" not in DeltaTable(output).schema().to_arrow().names  # type: ignore[attr-defined]

    explain(images, output, "--method", "gradcam,layercam")  # adds a method, keeps the old rows
    _, rows = read_maps(output)
    roles = sorted((r["method"], r["class_rank"], r["target_role"]) for r in rows.to_pylist())
    assert roles == sorted([("gradcam", 0, None)] * 2 + [("layercam", 0, "prediction")] * 2)
    seen = duckdb_sql(f"select method, target_role from delta_scan('{output}')")
    assert sorted(zip(*seen.to_pydict().values(), strict=True), key=str) == sorted(
        [(t, role) for t, _, role in roles], key=str
    )
    assert pa.types.is_string(
        DeltaTable(output).to_pyarrow_table().schema.field("target_role").type
    )
