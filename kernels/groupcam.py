"""Group-CAM (METHODS.md section 2.7).

Paper: Q. Zhang, L. Rao, Y. Yang, "Group-CAM: Group Score-Weighted Visual Explanations for Deep
Convolutional Networks", arXiv:2103.13859, 2021.

Formula, alpha_k the Grad-CAM weight (mean logit gradient), channels cut into G contiguous
blocks g, x the preprocessed input, b = blur(x) (Gaussian, kernel 51, sigma 50), up() a bilinear
resize to the input size and p_c the softmax probability of the whole network::

    G_g = ReLU(sum_{k in g} alpha_k A^k)          M_g = minmax(up(G_g))    (constant map -> 0)
    s_g = ReLU(p_c(x * M_g + b * (1 - M_g)) - p_c(b))
    L   = ReLU(sum_g s_g G_g)

``scores`` holds the s_g (B, T, G); there are no channel weights (``weights`` is None), which is
why Group-CAM is a raw-map method.

Decisions: the blocks are ``torch.chunk``'s: ceil(K / G) channels each, the last one possibly
smaller, so there can be fewer than G blocks when G does not divide K (K = 512, G = 30 gives 29
blocks); the default G = 32 divides K = 512 (VGG16 pool5, SqueezeNet 1.1's last Fire module).
A group map that is constant over the image (for example all zero after the ReLU) has no
min-max span; its mask is 0 rather than NaN, so the mixed input is the blur itself and the
group scores 0. The mask min-max has no eps. The mixed inputs are built a chunk of groups at a
time, sized by ``state.budget``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fdpipe.kernels.base import CAMMethod, RawCAM
from fdpipe.kernels.budget import FORWARD_GRANULE
from fdpipe.kernels.gradcam import gradient_weights
from fdpipe.kernels.postprocess import minmax_vector
from fdpipe.kernels.state import LayerState
from torchvision.transforms.functional import gaussian_blur


class GroupCAM(CAMMethod):
    name = "groupcam"

    def __init__(self, groups: int = 32, blur_kernel: int = 51, blur_sigma: float = 50.0) -> None:
        self.groups = groups
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    def options(self) -> dict[str, object]:
        return {
            "groups": self.groups,
            "blur_kernel": self.blur_kernel,
            "blur_sigma": self.blur_sigma,
        }

    def raw_map(self, state: LayerState) -> RawCAM:
        alpha = gradient_weights(state)  # (B, T, K)
        weighted = alpha[..., None, None] * state.activations[:, None]  # (B, T, K, h, w)
        group_maps = torch.stack(
            [block.sum(dim=2) for block in weighted.chunk(self.groups, dim=2)], dim=2
        ).clamp_min(0)  # (B, T, G, h, w)
        batch, targets, groups = group_maps.shape[:3]
        blurred = gaussian_blur(state.inputs, [self.blur_kernel] * 2, [self.blur_sigma] * 2)
        pixels = state.input_size[0] * state.input_size[1]
        # Per (class, group): its upsampled map, its mask, the mixed input, a forward pass.
        row = (2 + 3) * pixels * 4 + state.network.input_bytes(tuple(state.inputs.shape[1:]))
        chunk = state.budget.rows(self.name, row, targets * groups, FORWARD_GRANULE)
        with torch.no_grad():
            base = state.network(blurred).softmax(-1).gather(1, state.classes)  # (B, T)
            scores = group_maps.new_empty(batch, targets * groups)
            for b in range(batch):
                planes = group_maps[b].flatten(0, 1)  # (T * G, h, w)
                wanted = state.classes[b].repeat_interleave(groups)  # each row's class
                for start in range(0, targets * groups, chunk):
                    part = planes[start : start + chunk, None]
                    up = F.interpolate(
                        part, size=state.input_size, mode="bilinear", align_corners=False
                    )
                    masks = minmax_vector(up.flatten(-2)).view_as(up)  # a constant map gives 0
                    mixed = state.inputs[b] * masks + blurred[b] * (1 - masks)  # (chunk, 3, H, W)
                    probs = state.network.logits_in_chunks(mixed, min(chunk, FORWARD_GRANULE))
                    rows = wanted[start : start + chunk, None]
                    scores[b, start : start + chunk] = probs.softmax(-1).gather(1, rows)[:, 0]
        scores = scores.view(batch, targets, groups)
        scores = (scores - base[..., None]).clamp_min(0)
        raw = (scores[..., None, None] * group_maps).sum(dim=2)
        return RawCAM(raw, None, scores)
