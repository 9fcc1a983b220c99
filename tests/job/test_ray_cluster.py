"""``--engine ray`` on a two-node Ray cluster made on this machine (``ray.cluster_utils``): actors
on both nodes, images from a bucket of a real S3 server, the model's files shipped with the job;
rows identical to the local engine's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from fdpipe.bench.object_store import SeaweedFS, upload
from fdpipe.cli import main
from fdpipe.export.request import ModelRequest
from fdpipe.job.config import JobConfig
from fdpipe.job.ray_files import PLACEHOLDER, pack, unpack
from fdpipe.job.reader import iter_rows
from image_files import write_images

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from Ray internals

FACTORY = """
import torch.nn as nn

def build():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )
"""
MB = 1 << 20


@pytest.fixture
def model_files(tmp_path: Path) -> Path:
    """A factory file, its weights and class names: files only the driver has."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tiny.py").write_text(FACTORY)
    namespace: dict = {}
    exec(FACTORY, namespace)
    torch.manual_seed(0)
    torch.save(namespace["build"]().state_dict(), folder / "tiny.pt")
    (folder / "classes.txt").write_text("ant\nbee\ncat\ndog\n")
    return folder


def test_pack_ships_model_files_and_unpack_restores_them(model_files: Path, tmp_path: Path) -> None:
    factory, weights = f"{model_files / 'tiny.py'}:build", model_files / "tiny.pt"
    request = ModelRequest(factory, weights=weights)
    config = JobConfig(input="s3://b/x/", output=tmp_path / "o", model=request)
    shipped, files = pack(config)
    assert str(model_files) not in repr(shipped)
    source = str(shipped.request.source)
    assert source.startswith(str(PLACEHOLDER)) and source.endswith(":build")
    assert sorted(files) == ["0-tiny.py", "1-tiny.pt"]
    node = tmp_path / "node"
    restored = unpack(shipped, files, node).request
    assert restored.source == f"{node / '0-tiny.py'}:build"
    assert restored.weights == node / "1-tiny.pt"
    assert (node / "1-tiny.pt").read_bytes() == (model_files / "tiny.pt").read_bytes()
    plain = JobConfig(input="x", output=tmp_path / "o", model="squeezenet1_1")
    assert pack(plain) == (plain, {})


@pytest.fixture
def two_nodes(s3_store: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A head and a worker node of one CPU each, small object stores; S3 credentials in the
    environment the nodes inherit."""
    from ray.cluster_utils import Cluster

    for name, value in s3_store.environment.items():
        monkeypatch.setenv(name, value)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 * MB,
                        "include_dashboard": False},
    )  # fmt: skip
    cluster.add_node(num_cpus=1, object_store_memory=80 * MB)
    cluster.wait_for_nodes()
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def test_two_node_cluster_rows_equal_local_rows(
    two_nodes: str, s3_store: SeaweedFS, model_files: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    write_images(images, 8)
    bucket = s3_store.new_bucket()
    upload(s3_store.filesystem(), images, f"{bucket}/images")
    common = [
        "-i", f"s3://{bucket}/images/", "--model", f"{model_files / 'tiny.py'}:build",
        "--weights", str(model_files / "tiny.pt"), "--class-names",
        str(model_files / "classes.txt"), "--input-size", "64", "--method", "gradcam",
        "--top-k", "2", "--batch-size", "2", "--part-size", "3", "--no-progress",
    ]  # fmt: skip
    runs = {
        "local": ["--engine", "local"],
        "ray": ["--engine", "ray", "--address", two_nodes, "--actors", "2"],
    }
    tables = {}
    for name, extra in runs.items():
        output = tmp_path / name
        result = CliRunner().invoke(main, ["explain", *common, "-o", str(output), *extra])
        assert result.exit_code == 0, result.output
        tables[name] = pa.Table.from_batches(list(iter_rows(output))).sort_by(
            [("image_path", "ascending"), ("class_rank", "ascending")]
        )
    same = ["image_path", "image_sha256", "class_index", "class_name", "status", "map_height"]
    assert tables["ray"].select(same).equals(tables["local"].select(same))
    for a, b in zip(tables["ray"]["map"].to_pylist(), tables["local"]["map"].to_pylist(),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, atol=1e-5)
    record = json.loads(next((tmp_path / "ray" / "_runs").glob("*.json")).read_text())
    placement = record["placement"]["images_per_ray_node"]
    assert len(placement) == 2 and sum(placement.values()) == 8  # actors on both nodes
    assert {node["NodeID"] for node in ray.nodes() if node["Alive"]} == set(placement)
