"""Insertion / deletion against curves known by hand, and on real SqueezeNet weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from fdpipe.evaluation.curves import (
    CurveProtocol,
    auc,
    insertion_deletion,
    rise_blur_kernel,
    substrate,
)
from fdpipe.kernels.postprocess import upsample_map
from scipy.ndimage import convolve
from torch import Tensor

QUARTERS = CurveProtocol(step_fraction=0.25, insertion_substrate="zero", score="logit")


def sum_classifier(x: Tensor) -> Tensor:
    """Class 0's logit is the sum of the input; class 1's is 0."""
    total = x.flatten(1).sum(1)
    return torch.stack([total, torch.zeros_like(total)], dim=1)


@pytest.fixture
def ramp() -> Tensor:
    """A 1-channel 4 x 4 image with pixel values 1..16 in row-major order."""
    return torch.arange(1.0, 17.0).view(1, 1, 4, 4)


def test_auc_is_the_trapezoid_rule() -> None:
    assert auc(torch.tensor([1.0, 0.5, 0.0])).item() == pytest.approx((1.5 - 0.5) / 2)
    assert auc(torch.tensor([0.2, 0.2, 0.2, 0.2])).item() == pytest.approx(0.2)


def test_hand_computed_curves_for_a_perfect_map(ramp: Tensor) -> None:
    # 16 pixels, 4 per step; the map orders them exactly by their contribution to the logit.
    curves = insertion_deletion(sum_classifier, ramp, ramp[:, :1], QUARTERS)
    assert curves.classes.tolist() == [0]
    # Deletion removes 16..13, 12..9, 8..5, 4..1: 136, 78, 36, 10, 0.
    assert curves.deletion[0, 0].tolist() == [136.0, 78.0, 36.0, 10.0, 0.0]
    assert curves.insertion[0, 0].tolist() == [0.0, 58.0, 100.0, 126.0, 136.0]
    assert curves.deletion_auc.item() == pytest.approx((260 - 68) / 4)
    assert curves.insertion_auc.item() == pytest.approx((420 - 68) / 4)
    assert curves.overall.item() == pytest.approx(88 - 48)


def test_ties_keep_pixel_order_and_probabilities_are_softmax(ramp: Tensor) -> None:
    constant = torch.ones(1, 1, 4, 4)
    protocol = CurveProtocol(step_fraction=0.25, score="probability")
    curves = insertion_deletion(sum_classifier, ramp / 100, constant, protocol)
    # Stable sort: a flat map removes pixels 1..4 first, then 5..8, ...
    logits = torch.tensor([136.0, 126.0, 100.0, 58.0, 0.0]) / 100
    expected = torch.sigmoid(logits)  # softmax over (s, 0) is sigmoid(s)
    assert torch.allclose(curves.deletion[0, 0], expected, atol=1e-6)


def test_several_maps_share_endpoints_and_batching_changes_nothing(ramp: Tensor) -> None:
    maps = torch.stack([ramp[0, 0], -ramp[0, 0], torch.rand(4, 4)])[None]
    one_by_one = insertion_deletion(sum_classifier, ramp, maps, replace(QUARTERS, batch_size=1))
    batched = insertion_deletion(sum_classifier, ramp, maps, QUARTERS)
    assert torch.equal(one_by_one.deletion, batched.deletion)
    assert torch.equal(one_by_one.insertion, batched.insertion)
    # The worst map (least salient first) deletes slowest; the perfect one fastest.
    assert batched.deletion_auc[0, 0] < batched.deletion_auc[0, 2] < batched.deletion_auc[0, 1]


def test_step_count_of_the_protocol() -> None:
    protocol = CurveProtocol()
    assert protocol.step(224 * 224) == 1792
    assert protocol.n_steps(224 * 224) == 28
    # A last, partial step still reaches the fully perturbed input.
    partial = CurveProtocol(step_fraction=0.2, insertion_substrate="zero", score="logit")
    image = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    curves = insertion_deletion(sum_classifier, image, image[:, :1], partial)
    assert curves.deletion[0, 0].tolist() == [45.0, 28.0, 15.0, 6.0, 1.0, 0.0]


def test_blur_substrate_is_rise_kernel_with_zero_padding(rng: np.random.Generator) -> None:
    kernel = rise_blur_kernel(11, 5.0)
    assert kernel.shape == (11, 11)
    assert kernel.sum().item() == pytest.approx(1.0)
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))
    images = torch.from_numpy(rng.normal(size=(2, 3, 20, 24))).float()
    blurred = substrate(images, "blur", CurveProtocol())
    for b in range(2):
        for c in range(3):
            oracle = convolve(images[b, c].double().numpy(), kernel.numpy(), mode="constant")
            np.testing.assert_allclose(blurred[b, c].numpy(), oracle, atol=1e-5)
    assert torch.equal(substrate(images, "zero", CurveProtocol()), torch.zeros_like(images))


def test_deletion_with_a_perfect_map_beats_a_random_map_on_squeezenet(
    squeezenet, squeezenet_net, photos
) -> None:
    images = torch.stack([squeezenet.preprocess(photos[name]) for name in ("cat", "coffee")])
    # The model's own gradient x input for its top class orders pixels by their first-order
    # contribution to it: removing them first must drop the probability faster than chance.
    x = images.clone().requires_grad_(True)
    logits = squeezenet_net(x)
    top = logits.argmax(1)
    logits.gather(1, top[:, None]).sum().backward()
    gradient_x_input = (x.grad * images).sum(1)
    # A random map shaped like a CAM (13 x 13 at SqueezeNet's layer, upsampled): per-pixel noise
    # would be no fair baseline, as scattering deleted pixels alone wrecks the prediction.
    coarse = torch.rand(2, 13, 13, generator=torch.Generator().manual_seed(0))
    random_map = upsample_map(coarse, (224, 224))
    maps = torch.stack([gradient_x_input, random_map], dim=1)
    curves = insertion_deletion(squeezenet_net, images, maps)
    assert torch.equal(curves.classes, top)
    assert curves.deletion.shape == (2, 2, 29)
    deletion = curves.deletion_auc
    assert (deletion[:, 0] < 0.5 * deletion[:, 1]).all(), deletion
    # Both curves of an image start at the clean probability of the predicted class.
    clean = logits.detach().softmax(1).gather(1, top[:, None])
    assert torch.allclose(curves.deletion[..., 0], clean.expand(-1, 2), atol=1e-5)


def test_lerf_is_the_reverse_order_and_mean_is_the_per_channel_mean(ramp: Tensor) -> None:
    lerf = replace(QUARTERS, order="lerf", deletion_substrate="mean")
    curves = insertion_deletion(sum_classifier, ramp, ramp[:, :1], lerf)
    # LeRF deletes 1..4 first, then 5..8, ...; each deleted pixel becomes the mean, 8.5.
    assert curves.deletion[0, 0].tolist() == [136.0, 160.0, 168.0, 160.0, 136.0]  # +34 - 10, ...
    assert torch.equal(substrate(ramp, "mean", lerf), torch.full_like(ramp, 8.5))
    assert curves.insertion[0, 0].tolist() == [0.0, 10.0, 36.0, 78.0, 136.0]  # zeros, 1..4 first
