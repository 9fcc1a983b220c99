"""``--engine ray`` on a local two-CPU Ray: same rows, layout and resume as the local engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fdpipe.export.request import ModelRequest, PreprocessOptions
from fdpipe.job.config import JobConfig
from fdpipe.job.reader import iter_rows
from fdpipe.job.run import run_job
from image_files import write_images
from PIL import Image
from results import commit_versions, stored_rows

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from Ray internals

ORDER = [("image_path", "ascending"), ("class_rank", "ascending")]


def replace_content(path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # "local": a Ray of its own, never a cluster another test file (running beside this one
    # under xdist) or session started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_local_rows_and_resume(local_ray: None, tmp_path: Path) -> None:
    write_images(tmp_path / "images", 5)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    config = JobConfig(
        input=tmp_path / "images",
        output=tmp_path / "ray",
        model="squeezenet1_1",
        methods=("gradcam",),
        top_k=2,
        batch_size=2,
        part_size=2,
        engine="ray",
    )
    summary = run_job(config)
    assert (summary.done, summary.failed) == (5, 1)
    assert commit_versions(config.output) == [0, 1, 2]  # a commit per part of two images
    run_job(replace(config, output=tmp_path / "local", engine="local"))
    by_ray = stored_rows(config.output).sort_by(ORDER)
    by_local = stored_rows(tmp_path / "local").sort_by(ORDER)
    exact = ["image_path", "image_sha256", "class_index", "status", "error", "map_height"]
    assert by_ray.select(exact).equals(by_local.select(exact))
    for name in ("logit", "probability"):
        np.testing.assert_allclose(
            by_ray[name].to_numpy(zero_copy_only=False),
            by_local[name].to_numpy(zero_copy_only=False),
            atol=1e-5,
        )
    ray_maps, local_maps = by_ray["map"].to_pylist(), by_local["map"].to_pylist()
    for a, b in zip(ray_maps, local_maps, strict=True):
        assert (a is None and b is None) or np.allclose(a, b, atol=1e-5)

    again = run_job(replace(config, retry=False))  # resume: nothing left to do, nothing written
    assert (again.done, again.skipped) == (0, 6)
    assert commit_versions(config.output) == [0, 1, 2]

    replace_content(tmp_path / "images" / "img_000.jpg")  # same guarantees as the local engine
    for output in (config.output, tmp_path / "local"):
        rerun = run_job(replace(config, output=output, engine="ray"))
        assert (rerun.changed, rerun.retried, rerun.done, rerun.failed) == (1, 1, 1, 1)
    by_ray = pa.Table.from_batches(list(iter_rows(config.output))).sort_by(ORDER)
    by_local = pa.Table.from_batches(list(iter_rows(tmp_path / "local"))).sort_by(ORDER)
    assert by_ray.num_rows == 5 * 2 + 1 and by_ray.select(exact).equals(by_local.select(exact))


@pytest.mark.parametrize(
    ("resources", "actors", "expected"),
    [
        ({"CPU": 8.0}, None, (8, 1.0, 0.0)),
        ({"CPU": 8.0}, 2, (2, 4.0, 0.0)),
        ({"CPU": 16.0, "GPU": 2.0}, None, (2, 8.0, 1.0)),
        ({"CPU": 2.0, "GPU": 1.0}, 4, (4, 0.5, 0.25)),
    ],
)
def test_one_actor_per_gpu_else_per_cpu(
    monkeypatch: pytest.MonkeyPatch, resources: dict, actors: int | None, expected: tuple
) -> None:
    from fdpipe.job.ray_engine import actor_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    config = JobConfig(input=Path("."), output=Path("out"), actors=actors)
    assert actor_resources(config) == expected


def test_ray_scores_the_same_faithfulness_sample(local_ray: None, tmp_path: Path) -> None:
    """``--evaluate-sample`` with Ray: the sample's rows are taken on the driver, as they reach
    the sink, and scored there: the same record as the local engine's."""
    write_images(tmp_path / "images", 3)
    config = JobConfig(
        input=tmp_path / "images", output=tmp_path / "ray", methods=("gradcam",),
        model=ModelRequest("squeezenet1_1", preprocess=PreprocessOptions(size=(64, 64))),
        batch_size=2, part_size=2, engine="ray", evaluate_sample=2, evaluate_seed=5,
    )  # fmt: skip
    run_job(config)
    run_job(replace(config, output=tmp_path / "local", engine="local"))
    by_ray, by_local = (
        json.loads(next((output / "_runs").glob("*.json")).read_text())["evaluation"]
        for output in (config.output, tmp_path / "local")
    )
    assert by_ray["images"] == by_local["images"] and by_ray["evaluated"] == 2
    for metric, per_method in by_local["means"].items():
        for key, value in per_method["gradcam"].items():
            assert by_ray["means"][metric]["gradcam"][key] == pytest.approx(value, abs=1e-5)
