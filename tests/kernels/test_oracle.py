"""fdpipe agrees with the PyPI ``grad-cam`` library (pytorch_grad_cam 1.5.7) on real SqueezeNet.

Where the two compute the same quantity, and how they differ (read off the library's source):

- Channel weights: ``get_cam_weights`` of GradCAM, GradCAMPlusPlus, XGradCAM, AblationCAM and
  ScoreCAM uses the METHODS.md section 2 formulas (same eps 1e-6 for Grad-CAM++, 1e-7 for
  XGrad-CAM, 1e-8 for the Score-CAM masks, drop / clean logit for Ablation-CAM), in float32 numpy.
- Score-CAM upsamples the activations with ``nn.UpsamplingBilinear2d``, i.e. bilinear with
  ``align_corners=True``; METHODS.md section 2.6 (and the Score-CAM authors' code) use
  ``align_corners=False``.
  The test swaps that one module for the ``align_corners=False`` one; unswapped, the softmax
  weights (summing to 1) move by about 0.02 on the 96 px test image.
- Raw map: ``get_cam_image`` is ``sum_k w_k A^k`` (Layer-CAM: ``sum_k ReLU(g^k) A^k``) before
  the ReLU, the same tensor as ``raw_map(state).raw``.
- Final map: ``scale_cam_image`` does ``x -= min; x /= (1e-7 + max)``, which is METHODS.md
  section 1 step 7's ``(x - min) / (max - min + 1e-7)``, then resizes with ``cv2.resize``
  (INTER_LINEAR, half-pixel centres, the same as ``align_corners=False``; cv2 differs from
  ``F.interpolate`` by < 1e-6 on float32), and ``aggregate_multi_layers`` applies ReLU and the
  same min-max once more. So the library's output map is METHODS.md section 1 step 7's input-size
  map; both maps are compared to 1e-5.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fdpipe.export.loading import LoadedModel
from fdpipe.kernels import SplitNetwork, make_method, prepare
from pytorch_grad_cam import (
    AblationCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

LIBRARY = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "ablationcam": AblationCAM,
    "scorecam": ScoreCAM,
}
# The library re-runs the whole network (not just the head) for every ablated channel and for
# every Score-CAM mask: 512 full forwards. Those two run on 96 px inputs (5 x 5 activations).
SMALL = {"ablationcam": 96, "scorecam": 96}
CLOSE = {"rtol": 0.0, "atol": 1e-5}  # maps in [0, 1]


@pytest.fixture(scope="module")
def library_model(squeezenet: LoadedModel) -> nn.Module:
    """A trainable copy: the library hooks gradients only on outputs that require grad."""
    return copy.deepcopy(squeezenet.module).requires_grad_(True)


def align_corners_false(size: tuple[int, int]) -> nn.Module:
    return nn.Upsample(size=size, mode="bilinear", align_corners=False)


def run_library(method: str, model: nn.Module, inputs: torch.Tensor, classes: list[int]):
    """(weights or None, raw map, final map) from one library call, as float64 tensors.

    The library's own ``get_cam_weights`` and ``get_cam_image`` are wrapped to record what they
    return, so the perturbation methods run once.
    """
    kwargs = {"batch_size": 128} if method == "ablationcam" else {}
    cam = LIBRARY[method](model=model, target_layers=[model.features[12]], **kwargs)
    cam.batch_size = 128  # read by ScoreCAM through hasattr
    recorded: dict[str, np.ndarray] = {}

    def recording(name: str, function):
        def wrapper(*args, **kwargs):
            recorded[name] = function(*args, **kwargs)
            return recorded[name]

        return wrapper

    cam.get_cam_weights = recording("weights", cam.get_cam_weights)
    cam.get_cam_image = recording("raw", cam.get_cam_image)
    with cam:
        final = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(c) for c in classes])
    weights = recorded.get("weights")
    return (
        None if weights is None else torch.from_numpy(np.asarray(weights)).double(),
        torch.from_numpy(recorded["raw"]).double(),
        torch.from_numpy(final).double(),
    )


@pytest.mark.parametrize("method", list(LIBRARY))
def test_agrees_with_pytorch_grad_cam(
    method: str,
    squeezenet: LoadedModel,
    squeezenet_net: SplitNetwork,
    library_model: nn.Module,
    photos: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if method == "scorecam":
        monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", align_corners_false)
    inputs = torch.stack([squeezenet.preprocess(photos[n]) for n in ("cat", "coffee")])
    if method in SMALL:
        inputs = torch.nn.functional.interpolate(inputs[:1], size=(SMALL[method],) * 2)
    state = prepare(squeezenet_net, inputs)
    result = make_method(method)(state)
    classes = state.classes[:, 0].tolist()

    weights, library_raw, library_final = run_library(method, library_model, inputs, classes)

    if weights is not None:
        torch.testing.assert_close(result.weights[:, 0].double(), weights, rtol=1e-4, atol=1e-6)
    # The library's own ReLU + min-max of its raw map: METHODS.md section 1 step 7 at the layer's
    # resolution.
    library_native = torch.from_numpy(scale_cam_image(library_raw.clamp_min(0).numpy()))
    torch.testing.assert_close(result.native[:, 0].double(), library_native.double(), **CLOSE)
    torch.testing.assert_close(result.maps[:, 0].double(), library_final, **CLOSE)


def test_scorecam_upsampling_is_the_only_difference(
    squeezenet: LoadedModel, squeezenet_net: SplitNetwork, library_model: nn.Module, photos: dict
) -> None:
    """Unpatched, the library's align_corners=True masks give measurably different weights."""
    inputs = squeezenet.preprocess(photos["cat"])[None]
    inputs = torch.nn.functional.interpolate(inputs, size=(SMALL["scorecam"],) * 2)
    state = prepare(squeezenet_net, inputs)
    ours = make_method("scorecam").raw_map(state).weights[:, 0].double()
    weights, _, _ = run_library("scorecam", library_model, inputs, state.classes[:, 0].tolist())
    gap = (ours - weights).abs().max().item()
    # Softmax weights sum to 1; at 96 px the two upsamplings move them by about 0.02.
    assert 1e-5 < gap < 0.1, "the library now upsamples like METHODS.md: compare unpatched above"
