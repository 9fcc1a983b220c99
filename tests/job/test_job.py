"""The streaming job: rows equal the notebook API, parts, schema, metadata, readers, sharding."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from fdpipe import api as api_module
from fdpipe.api import explain
from fdpipe.cli import main
from fdpipe.export.loading import LoadedModel
from fdpipe.images import load_image
from fdpipe.job.config import JobConfig
from fdpipe.job.decode import DecodedImage, batches, ordered_map
from fdpipe.job.progress import Progress
from fdpipe.job.run import run_job
from fdpipe.job.schema import SCHEMA, ImageInfo
from fdpipe.job.table import ResultsTable
from image_files import explain_command, write_images
from results import commit_versions, duckdb_sql, run_metadata, stored_rows

METHODS = {"gradcam": {}, "layercam": {}}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobConfig, list[Path]]:
    root = tmp_path_factory.mktemp("job")
    images = write_images(root / "images", 5)
    config = JobConfig(
        input=root / "images",
        output=root / "out",
        model="squeezenet1_1",
        methods=METHODS,
        top_k=2,
        batch_size=2,
        part_size=2,
        save_weights=True,
    )
    summary = run_job(config)
    assert (summary.done, summary.failed, summary.skipped) == (5, 0, 0)
    return config, images


def test_rows_equal_the_api(run: tuple[JobConfig, list[Path]], squeezenet: LoadedModel) -> None:
    config, images = run
    table = stored_rows(config.output)
    assert table.num_rows == 5 * len(METHODS) * 2
    assert set(table.column("status").to_pylist()) == {"ok"}
    for path in images:
        key = path.relative_to(config.input).as_posix()
        expected = explain(squeezenet, load_image(path), list(METHODS), top_k=2)
        for method, result in expected.items():
            for rank in range(2):
                (row,) = table.filter(
                    (pa.compute.field("image_path") == key)
                    & (pa.compute.field("method") == method)
                    & (pa.compute.field("class_rank") == rank)
                ).to_pylist()
                assert row["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
                assert (row["original_width"], row["original_height"]) == (64, 48)
                assert row["class_index"] == result.classes[0, rank].item()
                assert row["class_name"] == squeezenet.class_names[row["class_index"]]
                assert row["logit"] == pytest.approx(result.logits[0, rank].item(), abs=1e-4)
                assert row["probability"] == pytest.approx(
                    result.probabilities[0, rank].item(), abs=1e-5
                )
                native = np.array(row["map"]).reshape(row["map_height"], row["map_width"])
                np.testing.assert_allclose(native, result.native[0, rank].cpu().numpy(), atol=1e-5)
                low, high = result.raw_range[0, rank].tolist()
                assert (row["raw_min"], row["raw_max"]) == pytest.approx((low, high), rel=1e-5)
                if result.weights is None:
                    assert row["weights"] is None
                else:
                    np.testing.assert_allclose(
                        row["weights"], result.weights[0, rank].cpu(), atol=1e-6
                    )
                assert row["error"] is None
                assert row["seconds"] > 0


def test_raw_range_restores_the_raw_map(squeezenet: LoadedModel, photos: dict) -> None:
    """``relu(raw) = native * (max - min + eps) + min``: maps compare in strength across images."""
    from fdpipe.api import Explainer
    from fdpipe.kernels import GradCAM
    from fdpipe.kernels.postprocess import MAP_EPS

    explainer = Explainer(squeezenet, "gradcam", top_k=2)
    state = explainer.prepare([photos["cat"], photos["coffee"]])
    result = explainer.methods["gradcam"](state)
    relu = GradCAM().raw_map(state).raw.clamp_min(0)
    low, high = result.raw_range[..., :1, None], result.raw_range[..., 1:, None]
    restored = result.native * (high - low + MAP_EPS) + low
    torch.testing.assert_close(restored, relu, rtol=1e-4, atol=1e-6 * float(relu.max()))
    assert result.raw_range.shape == (2, 2, 2) and (result.raw_range[..., 1] > 0).all()


def test_parts_schema_and_metadata(run: tuple[JobConfig, list[Path]]) -> None:
    config, _ = run
    table = ResultsTable(config.output)
    assert table.delta().version() == 2  # a commit per part of two images
    files = [uri.removeprefix("file://") for uri in table.delta().file_uris()]
    sorted_keys = []
    for version in range(3):  # each commit adds one file: the rows of its part
        added = set(ResultsTable(config.output).delta(version).file_uris())
        before = (
            set(ResultsTable(config.output).delta(version - 1).file_uris()) if version else set()
        )
        (new,) = added - before
        stored = pq.read_table(new.removeprefix("file://"))
        assert stored.schema.equals(SCHEMA, check_metadata=False)
        sorted_keys.append(list(dict.fromkeys(stored.column("image_path").to_pylist())))
    assert [len(keys) for keys in sorted_keys] == [2, 2, 1]
    flat = [key for keys in sorted_keys for key in keys]
    assert flat == sorted(flat)  # parts cover contiguous runs of the sorted input
    assert all(
        pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD" for f in files
    )
    record = table.metadata()
    assert record["params"]["model"] == "squeezenet1_1"
    assert record["params"]["layer"] == "features.12"
    assert record["params"]["methods"] == {"gradcam": {}, "layercam": {}}
    assert record["params"]["top_k"] == 2
    assert len(record["params"]["weights_id"]) == 64
    assert record["versions"]["torch"] == torch.__version__
    assert record["run"]["backend"]
    assert json.loads(json.dumps(record)) == record


def test_readable_without_fdpipe(run: tuple[JobConfig, list[Path]]) -> None:
    config, _ = run
    from deltalake import DeltaTable

    frame = DeltaTable(str(config.output)).to_pandas()
    assert len(frame) == 20 and len(frame["map"].iloc[0]) == 13 * 13
    polars = pl.read_delta(str(config.output))
    assert polars.height == 20 and polars["map"].dtype == pl.List(pl.Float32)
    query = f"select count(*) as n from delta_scan('{config.output}') where len(map) = 169"
    assert duckdb_sql(query)["n"].to_pylist() == [20]


def test_several_methods_share_one_backbone_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "images", 4)
    calls = []
    real = api_module.prepare
    monkeypatch.setattr(api_module, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = JobConfig(
        input=tmp_path / "images",
        output=tmp_path / "out",
        model="squeezenet1_1",
        methods=("gradcam", "gradcampp", "xgradcam"),
        batch_size=2,
    )
    run_job(config)
    assert len(calls) == 2
    assert stored_rows(config.output).num_rows == 4 * 3


def test_shards_together_equal_one_run(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 6)
    common = dict(input=tmp_path / "images", model="squeezenet1_1", methods=("gradcam",))
    run_job(JobConfig(output=tmp_path / "whole", **common))
    counts = [
        run_job(JobConfig(output=tmp_path / "shared", shard=(i, 2), **common)).done for i in (0, 1)
    ]
    assert sorted(counts) != [0, 6]  # both shards got work
    assert len(commit_versions(tmp_path / "shared")) == 2  # one table, a commit per shard
    assert len(list((tmp_path / "shared" / "_runs").iterdir())) == 2  # one record per shard run
    order = [("image_path", "ascending")]
    whole = stored_rows(tmp_path / "whole").sort_by(order).drop_columns(["seconds"])
    shared = stored_rows(tmp_path / "shared").sort_by(order).drop_columns(["seconds"])
    assert whole.column("image_path").equals(shared.column("image_path"))
    np.testing.assert_allclose(
        np.concatenate(whole.column("map").to_pylist()),
        np.concatenate(shared.column("map").to_pylist()),
        atol=1e-6,
    )


def test_ordered_map_keeps_order_and_bounds_work_in_flight() -> None:
    started = []
    lock = threading.Lock()
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.004) for _ in range(60)]

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(delays[i])
        return i

    ahead = 5
    results = []
    for value in ordered_map(work, range(60), workers=3, ahead=ahead):
        results.append(value)
        time.sleep(0.002)  # a slow consumer must not let the producers run away
        assert len(started) <= len(results) + ahead
    assert results == list(range(60))


def decoded(key: str, ok: bool) -> DecodedImage:
    tensor = torch.zeros(3, 2, 2) if ok else None
    return DecodedImage(ImageInfo(key, None, None, None), tensor, None if ok else "bad", 0.0)


def test_batches_hold_batch_size_usable_images() -> None:
    images = [decoded(str(i), ok=i not in {1, 2, 6}) for i in range(9)]
    groups = [[image.info.key for image in group] for group in batches(images, 2)]
    assert groups == [["0", "1", "2", "3"], ["4", "5"], ["6", "7", "8"]]


def test_plain_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    progress = Progress(10, bar=False, every=0.0)
    with caplog.at_level(logging.INFO, logger="fdpipe.job"):
        progress.update(3, 1)
    assert "4/10 images (40.0%)" in caplog.text
    assert "images/s, 1 failed, ETA" in caplog.text
    progress.close()


def test_the_memory_budget_and_its_chunks_are_recorded(tmp_path: Path) -> None:
    write_images(tmp_path / "images", 2)
    args = explain_command(tmp_path / "images", tmp_path / "out", "--method", "groupcam")
    result = CliRunner().invoke(main, [*args, "--max-memory", "1G"])
    assert result.exit_code == 0, result.output
    (record_file,) = (tmp_path / "out" / "_runs").iterdir()
    record = json.loads(record_file.read_text())
    assert record["memory"] == {"max_memory_bytes": 1 << 30, "chunks": {"groupcam": 32}}
    assert run_metadata(tmp_path / "out")["run"]["max_memory_bytes"] == 1 << 30


@pytest.mark.parametrize("size", ["0", "-1G", "nan", "inf", "2X", "", "0.1"])
def test_a_bad_memory_budget_is_a_usage_error(tmp_path: Path, size: str) -> None:
    args = explain_command(tmp_path, tmp_path / "out", "--max-memory", size)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "not a positive size" in result.output
    assert not (tmp_path / "out").exists()
