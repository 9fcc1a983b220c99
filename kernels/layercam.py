"""Layer-CAM (METHODS.md section 2.4).

Paper: P.-T. Jiang, C.-B. Zhang, Q. Hou, M.-M. Cheng, Y. Wei, "LayerCAM: Exploring Hierarchical
Class Activation Maps for Localization", IEEE Transactions on Image Processing 30, 2021. It has no
arXiv version.

Formula, g = d f_c / d A; every position gets its own weight, so there is no channel weight::

    L = ReLU(sum_k ReLU(g^k) * A^k)          (element-wise product)

Decisions: the paper also combines maps taken at several layers; fdpipe computes the map of the
one target layer only, with no cross-layer fusion or rescaling. That raw map is what the grad-cam
library's ``get_cam_image`` gives for Layer-CAM, and the oracle test compares against it.
Layer-CAM has no channel weights, which is why it is a raw-map method (``weights`` is None).
"""

from __future__ import annotations

from fdpipe.kernels.base import CAMMethod, RawCAM
from fdpipe.kernels.state import LayerState


class LayerCAM(CAMMethod):
    name = "layercam"

    def raw_map(self, state: LayerState) -> RawCAM:
        weighted = state.gradients.clamp_min(0) * state.activations[:, None]
        return RawCAM(weighted.sum(dim=2))
