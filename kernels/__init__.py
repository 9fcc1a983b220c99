"""Numeric core: the CAM methods over a split network, and masked-head evaluation."""

from __future__ import annotations

from fdpipe.kernels.ablationcam import AblationCAM
from fdpipe.kernels.base import CAMMethod, CAMResult, ChannelWeightsCAM
from fdpipe.kernels.fdcam import FDCAM, FDCAMOptions
from fdpipe.kernels.fgcam import FGCAM
from fdpipe.kernels.gradcam import GradCAM
from fdpipe.kernels.gradcampp import GradCAMPlusPlus
from fdpipe.kernels.groupcam import GroupCAM
from fdpipe.kernels.layercam import LayerCAM
from fdpipe.kernels.masked_head import ExplicitMaskedHead, MaskedHeadScorer
from fdpipe.kernels.network import SplitNetwork
from fdpipe.kernels.scorecam import ScoreCAM
from fdpipe.kernels.state import LayerState, prepare
from fdpipe.kernels.xgradcam import XGradCAM

METHODS: dict[str, type[CAMMethod]] = {
    cls.name: cls
    for cls in (
        FDCAM,
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        LayerCAM,
        AblationCAM,
        ScoreCAM,
        GroupCAM,
        FGCAM,
    )
}


def make_method(name: str, **options: object) -> CAMMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name](**options)


__all__ = [
    "FDCAM",
    "FGCAM",
    "METHODS",
    "AblationCAM",
    "CAMMethod",
    "CAMResult",
    "ChannelWeightsCAM",
    "ExplicitMaskedHead",
    "FDCAMOptions",
    "GradCAM",
    "GradCAMPlusPlus",
    "GroupCAM",
    "LayerCAM",
    "LayerState",
    "MaskedHeadScorer",
    "ScoreCAM",
    "SplitNetwork",
    "XGradCAM",
    "make_method",
    "prepare",
]
