"""Vision transformers (timm ViT, DeiT with its distillation token, Swin; random weights, small
inputs): every method equals the plain reference on a network cut by hooks on the unmodified
model with a hand-written reshape (no fx, no ``export/layout.py``), and Grad-CAM equals
pytorch-grad-cam's with its documented ``reshape_transform`` (METHODS.md section 6)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import fdpipe
import numpy as np
import pytest
import reference
import torch
from fdpipe.export.request import ModelError, PreprocessOptions
from fdpipe.kernels import SplitNetwork, make_method, prepare
from reference import assert_matches
from torch import Tensor, nn

timm = pytest.importorskip("timm")

# name, input size, default layer, map size, prefix tokens (None: channels-last)
MODELS = {
    "vit": ("vit_tiny_patch16_224", 64, "blocks.11.norm1", (4, 4), 1),
    "deit": ("deit_tiny_distilled_patch16_224", 64, "blocks.11.norm1", (4, 4), 2),
    "swin": ("swin_tiny_patch4_window7_224", 96, "norm", (3, 3), None),
}
# The reference re-runs the whole model per mask: 2K of them for FD-CAM. The same classes,
# shallower and (Swin) narrower: 4 blocks, 96 channels.
SHALLOW = {
    "vit": {"depth": 4},
    "deit": {"depth": 4},
    "swin": {"depths": (1, 1, 1, 1), "embed_dim": 12},
}
METHODS = ["gradcam", "gradcampp", "layercam", "fdcam", "ablationcam", "scorecam", "groupcam"]


def build(which: str, *, shallow: bool = False) -> nn.Module:
    name, size = MODELS[which][:2]
    torch.manual_seed(0)
    kwargs = SHALLOW[which] if shallow else {}
    return timm.create_model(name, num_classes=5, img_size=size, **kwargs).eval()


def default_layer(which: str, shallow: bool) -> str:
    return MODELS[which][2].replace("11", "3") if shallow else MODELS[which][2]


def to_map(tokens: Tensor, prefix: int | None, grid: tuple[int, int]) -> tuple[Tensor, ...]:
    """pytorch-grad-cam's ``reshape_transform`` (tutorials: vision transformers, Swin)."""
    if prefix is None:  # (B, h, w, C)
        return (tokens.permute(0, 3, 1, 2),)
    patches = tokens[:, prefix:, :].reshape(tokens.shape[0], *grid, tokens.shape[2])
    return (patches.permute(0, 3, 1, 2), tokens[:, :prefix, :])


def to_tokens(maps: Tensor, prefix_tokens: Tensor | None) -> Tensor:
    if prefix_tokens is None:
        return maps.permute(0, 2, 3, 1)
    patches = maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1, maps.shape[1])
    return torch.cat([prefix_tokens, patches], 1)


class _HookBackbone(nn.Module):
    def __init__(self, model: nn.Module, layer: str, prefix: int | None, grid) -> None:
        super().__init__()
        self.model, self.layer, self.prefix, self.grid = model, layer, prefix, grid

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        seen: list[Tensor] = []
        hook = self.model.get_submodule(self.layer).register_forward_hook(
            lambda _m, _i, out: seen.append(out)
        )
        try:
            self.model(images)
        finally:
            hook.remove()
        return (*to_map(seen[0], self.prefix, self.grid), images)


class _HookHead(nn.Module):
    """The whole model on the image, the layer's output replaced by the given map's tokens."""

    def __init__(self, model: nn.Module, layer: str, prefix: int | None) -> None:
        super().__init__()
        self.model, self.layer, self.prefix = model, layer, prefix

    def forward(self, maps: Tensor, *extras: Tensor) -> Tensor:
        prefix_tokens = None if self.prefix is None else extras[0]
        tokens = to_tokens(maps, prefix_tokens)
        hook = self.model.get_submodule(self.layer).register_forward_hook(lambda *_: tokens)
        try:
            return self.model(extras[-1])
        finally:
            hook.remove()


def hook_network(model: nn.Module, which: str) -> SplitNetwork:
    _, _, _, grid, prefix = MODELS[which]
    layer = default_layer(which, shallow=True)
    return SplitNetwork(
        _HookBackbone(model, layer, prefix, grid), _HookHead(model, layer, prefix), layer
    )


@pytest.fixture(scope="module", params=list(MODELS))
def explained(request: pytest.FixtureRequest) -> tuple[str, nn.Module, fdpipe.Explainer]:
    which = request.param
    model = build(which, shallow=True)
    size = MODELS[which][1]
    explainer = fdpipe.Explainer(
        model, METHODS, preprocess=PreprocessOptions(size=(size, size)), device="cpu"
    )
    return which, model, explainer


def test_layout_default_layer_and_map_size(explained) -> None:
    which, _, explainer = explained
    _, size, _, grid, _ = MODELS[which]
    assert explainer.model.layer == default_layer(which, shallow=True)
    assert fdpipe.load_model(f"timm:{MODELS[which][0]}", pretrained=False).layer == MODELS[which][2]
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    results = explainer(images)
    for result in results.values():
        assert result.native.shape == (1, 1, *grid) and result.maps.shape == (1, 1, size, size)
        assert result.native.isfinite().all() and result.native.max() > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_methods_equal_the_plain_reference_on_a_hook_cut(explained, method: str) -> None:
    which, model, explainer = explained
    size = MODELS[which][1]
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    state = explainer.prepare(images)
    result = make_method(method)(state)
    p = reference.probe(hook_network(model, which), images[0])
    torch.testing.assert_close(p.activations, state.activations[0])
    assert_matches(result, 0, 0, reference.METHODS[method](p, int(state.classes[0, 0])))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_gradcam_equals_pytorch_grad_cam_with_its_reshape_transform(which: str) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, size, layer, grid, prefix = MODELS[which]
    model = build(which)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    ours = fdpipe.explain(model, images, "gradcam", preprocess=PreprocessOptions(size=(size,) * 2))
    library_model = copy.deepcopy(model).requires_grad_(True)
    reshape: Callable[[Tensor], Tensor] = lambda t: to_map(t, prefix, grid)[0]  # noqa: E731
    cam = GradCAM(library_model, [library_model.get_submodule(layer)], reshape_transform=reshape)
    classes = ours.classes[:, 0].tolist()
    theirs = cam(images, targets=[ClassifierOutputTarget(c) for c in classes])
    for b in range(2):
        mine = ours.maps[b, 0].double().numpy()
        assert _pearson(mine, theirs[b]) >= 0.999
        np.testing.assert_allclose(mine, theirs[b], atol=1e-4)


def test_a_layer_without_the_image_grid_is_refused() -> None:
    """An attention tensor (B, heads, N, D) is 4-D but not a map: refused, not read as one."""
    model = build("vit", shallow=True)
    with pytest.raises(ModelError, match=r"'blocks\.3\.attn\.k_norm'.*follow the 64x64 input"):
        fdpipe.Explainer(
            model, "gradcam", target_layer="blocks.3.attn.k_norm",
            preprocess=PreprocessOptions(size=(64, 64)),
        )  # fmt: skip


def test_other_blocks_and_the_state_are_maps() -> None:
    model = build("deit", shallow=True)
    explainer = fdpipe.Explainer(
        model, "fdcam", target_layer="blocks.2", preprocess=PreprocessOptions(size=(64, 64))
    )
    state = prepare(explainer.network, torch.randn(2, 3, 64, 64))
    assert state.activations.shape == (2, 192, 4, 4)
    assert [tuple(e.shape) for e in state.extras] == [(2, 2, 192)]  # class + distillation
    torch.testing.assert_close(state.logits, model(state.inputs))


def test_fgcam_is_refused_with_its_reason() -> None:
    with pytest.raises((ModelError, ValueError), match="FG-CAM"):
        fdpipe.Explainer(
            build("vit", shallow=True), "fgcam", preprocess=PreprocessOptions(size=(64, 64))
        )
