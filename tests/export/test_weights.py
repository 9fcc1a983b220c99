"""Weights files (``fdpipe.export.weights``): what is wrong with one is said plainly (issue 19,
items 6 and 18)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from fdpipe.export.loading import load_model
from fdpipe.export.request import ModelError, ModelRequest


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path: Path, value: float) -> None:
    """Once blamed on the architecture ("cutting the model changes its output")."""
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    state["fc.weight"][0, 0] = value
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"non-finite values .*fc\.weight") as caught:
        load_model("resnet18", weights=path)
    assert "architecture" not in str(caught.value) and "cutting" not in str(caught.value)


def test_a_state_dict_of_other_keys_is_summarised_in_one_short_line(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    renamed = {f"backbone.{key}": value for key, value in state.items()}
    path = tmp_path / "other.pt"
    torch.save(renamed, path)
    with pytest.raises(ModelError) as caught:
        load_model("resnet18", weights=path)
    message = str(caught.value)
    assert len(message) < 600 and "\n" not in message, message
    expected = len(state)
    assert f"{expected} missing" in message and f"{expected} unexpected" in message
    assert "prefix 'backbone.'" in message
    assert "conv1.weight" in message and "backbone.conv1.weight" in message


def other_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors in the same order under another implementation's names."""
    return {f"net.{i}.param": value for i, value in enumerate(state.values())}


@pytest.mark.parametrize("form", ["by-position", "json", "dict"])
def test_a_weights_map_loads_a_checkpoint_of_other_names(tmp_path: Path, form: str) -> None:
    """Issue 19, item 6: by position (count and shapes must match) or by a map of checkpoint key
    -> model key (other keys keep their names); the map is part of the weights' identity."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    pairs = {"head.weight": "fc.weight", "head.bias": "fc.bias"}
    (tmp_path / "map.json").write_text(json.dumps(pairs))
    if form == "by-position":
        given, weights_map = other_names(state), "by-position"
    else:  # only the classifier renamed
        given = {k.replace("fc.", "head."): v for k, v in state.items()}
        weights_map = pairs if form == "dict" else tmp_path / "map.json"  # type: ignore[assignment]
    path = tmp_path / "other.pt"
    torch.save(given, path)
    with pytest.raises(ModelError, match="--weights-map"):  # the hint where keys differ
        load_model("resnet18", weights=path)
    loaded = load_model("resnet18", weights=path, weights_map=weights_map)
    assert all(torch.equal(v, state[k]) for k, v in loaded.module.state_dict().items())
    assert loaded.num_classes == 4 and loaded.weights_file is not None
    assert loaded.weights_id.startswith(loaded.weights_file[1] + "+")
    recorded = "by-position" if form == "by-position" else pairs  # the map, not its file
    assert loaded.weights_map == recorded
    request = ModelRequest("resnet18", weights=path, weights_map=weights_map)
    assert request.weights_map == recorded and request.load().weights_id == loaded.weights_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: dict(list(s.items())[:-1]), "121 tensors in the file, 122 in the model"),
        (lambda s: dict(reversed(list(s.items()))), "tensor(s) of another shape"),
    ],
    ids=["count", "shapes"],
)
def test_by_position_needs_the_same_count_and_shapes(
    tmp_path: Path, change: Callable[[dict], dict], message: str
) -> None:
    path = tmp_path / "other.pt"
    torch.save(change(other_names(torchvision.models.resnet18(num_classes=4).state_dict())), path)
    with pytest.raises(ModelError, match=re.escape(message)) as caught:
        load_model("resnet18", weights=path, weights_map="by-position")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
