"""Weights files (``fdpipe.export.weights``): what is wrong with one is said plainly (issue 19,
items 6 and 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from fdpipe.export.loading import load_model
from fdpipe.export.request import ModelError


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
