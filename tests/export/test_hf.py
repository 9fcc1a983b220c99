"""Hugging Face image classifiers (a tiny ViT from its config, random weights, saved with its
processor): the ``hf:`` source, a ``transformers`` object in ``Explainer``, maps equal to the plain
reference on a hook cut and Grad-CAM equal to pytorch-grad-cam's (METHODS.md section 6)."""

from __future__ import annotations

import copy
from pathlib import Path

import fdpipe
import numpy as np
import pytest
import reference
import torch
from fdpipe.export.hf import own_kernels_hidden, preprocess_from
from fdpipe.export.loading import load_model
from fdpipe.export.request import ModelError, PreprocessOptions
from fdpipe.kernels import SplitNetwork, make_method
from PIL import Image
from reference import assert_matches
from torch import Tensor, nn

with own_kernels_hidden():  # the repository's kernels/ is not Hugging Face's kernels
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformers.integrations.hub_kernels")
LAYER = "vit.layers.1.layernorm_before"  # the first norm of the last block, the default
LABELS = {0: "cat", 1: "dog", 2: "cup", 3: "car"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=64, patch_size=16, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=96, num_labels=4, id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("hf") / "tiny-vit"
    transformers.ViTForImageClassification(config).eval().save_pretrained(directory)
    processor = transformers.ViTImageProcessor(size={"height": 64, "width": 64}, resample=3)
    processor.save_pretrained(directory)
    return directory


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def _hook_network(model: nn.Module) -> SplitNetwork:
    """Backbone and head by hooks on the unmodified model, pytorch-grad-cam's reshape."""

    class Backbone(nn.Module):
        def forward(self, images: Tensor) -> tuple[Tensor, ...]:
            seen: list[Tensor] = []
            hook = model.get_submodule(LAYER).register_forward_hook(lambda *a: seen.append(a[2]))
            model(pixel_values=images)
            hook.remove()
            return (_reshape(seen[0]), seen[0][:, :1], images)

    class Head(nn.Module):
        def forward(self, maps: Tensor, cls: Tensor, images: Tensor) -> Tensor:
            tokens = torch.cat([cls, maps.flatten(2).transpose(1, 2)], 1)
            hook = model.get_submodule(LAYER).register_forward_hook(lambda *_: tokens)
            try:
                return model(pixel_values=images).logits
            finally:
                hook.remove()

    return SplitNetwork(Backbone(), Head(), LAYER)


def _reshape(tokens: Tensor) -> Tensor:
    return tokens[:, 1:, :].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)


def test_hf_directory_is_a_source(hf_dir: Path) -> None:
    model = load_model(f"hf:{hf_dir}")
    assert model.layer == LAYER and model.class_names == list(LABELS.values())
    assert model.source == f"hf:{hf_dir}" and model.input_size == (64, 64)
    described = model.preprocess.describe()
    assert (
        described["mean"] == [0.5, 0.5, 0.5] and described["interpolation"] == "torchvision bicubic"
    )
    images = torch.randn(2, 3, 64, 64)
    original = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    torch.testing.assert_close(model.module(images), original(pixel_values=images).logits)


@pytest.mark.parametrize("method", ["gradcam", "fdcam", "ablationcam", "scorecam", "groupcam"])
def test_methods_equal_the_plain_reference(hf_dir: Path, method: str) -> None:
    explainer = fdpipe.Explainer(f"hf:{hf_dir}", method)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    state = explainer.prepare(images)
    assert state.activations.shape == (1, 48, 4, 4)
    result = make_method(method)(state)
    original = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    p = reference.probe(_hook_network(original), images[0])
    assert_matches(result, 0, 0, reference.METHODS[method](p, int(state.classes[0, 0])))


def test_a_transformers_object_and_gradcam_equal_pytorch_grad_cam(hf_dir: Path) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    original = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    explainer = fdpipe.Explainer(original, "gradcam", preprocess=PreprocessOptions(size=(64, 64)))
    assert explainer.model.layer == LAYER and explainer.model.class_names[1] == "dog"
    ours = explainer(images)["gradcam"]
    library = _Logits(copy.deepcopy(original)).requires_grad_(True)
    cam = GradCAM(library, [library.model.get_submodule(LAYER)], reshape_transform=_reshape)
    targets = [ClassifierOutputTarget(int(c)) for c in ours.classes[:, 0]]
    theirs = cam(images, targets=targets)
    for b in range(2):
        mine = ours.maps[b, 0].double().numpy()
        assert np.corrcoef(mine.ravel(), theirs[b].ravel())[0, 1] >= 0.999
        np.testing.assert_allclose(mine, theirs[b], atol=1e-4)


def test_hf_sources_that_cannot_be_used(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="local Hugging Face cache"):
        load_model("hf:no-such-org/no-such-model-xyz")
    with pytest.raises(ModelError, match="no image classifier"):
        load_model(f"hf:{tmp_path}")  # an empty directory
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="carry their weights"):
        load_model(f"hf:{hf_dir}", weights=tmp_path / "w.pt")


# Every resize mode of transformers' image processors (METHODS.md section 6).
PROCESSORS = [
    ("ViTImageProcessor", {"size": {"height": 224, "width": 224}, "resample": 2}),
    ("DeiTImageProcessor", {}),  # squash to 256 x 256, then the centre 224 x 224: bicubic
    ("BeitImageProcessor", {"size": {"height": 257, "width": 251}, "do_center_crop": True}),
    ("BitImageProcessor", {"size": {"shortest_edge": 231}}),  # shorter side, odd crop offsets
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.95}),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}),  # warped, no crop
]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(data.coffee()), Image.fromarray(data.astronaut()[:437, 61:362])]


@pytest.mark.parametrize("backend", ["", "Pil"])
@pytest.mark.parametrize(("name", "options"), PROCESSORS)
def test_preprocessing_equals_the_processor_on_non_square_photos(
    photos: list[Image.Image], name: str, options: dict[str, object], backend: str
) -> None:
    """fdpipe's input tensor is the processor's (its default torchvision backend and its PIL
    one) on photos of 600 x 400 and 301 x 437: same size, crop, filter and normalisation, to
    float rounding (atol 1e-5; one 8-bit level is 0.0078 here)."""
    processor = getattr(transformers, name + backend)(**options)
    preprocess = preprocess_from(processor)
    for photo in photos:
        theirs = processor(photo, return_tensors="pt")["pixel_values"][0]
        mine = preprocess(photo)
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
        pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)
        if not backend:  # a GPU decoder's pixels (from_pixels): the same resampling
            torch.testing.assert_close(preprocess.from_pixels(pixels), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "options", "reason"),
    [
        ("ViTImageProcessor", {"do_resize": False}, "do_resize=False"),
        ("ViTImageProcessor", {"size": {"shortest_edge": 224}}, "shortest_edge without a centre"),
        ("ViTImageProcessor", {"resample": 1}, "resample=1"),
        ("ViTImageProcessor", {"size": {"shortest_edge": 224, "longest_edge": 300}}, "size "),
        ("BitImageProcessor", {"do_pad": True}, "do_pad=True"),
        ("BeitImageProcessor", {"do_reduce_labels": True}, "do_reduce_labels=True"),
        ("LevitImageProcessor", {}, "its own resize"),
        ("DeiTImageProcessor", {"crop_size": {"height": 300, "width": 300}}, "smaller than"),
    ],
)
def test_processor_options_fdpipe_cannot_reproduce_are_refused(
    name: str, options: dict[str, object], reason: str
) -> None:
    with pytest.raises(ModelError, match=reason) as refused:
        preprocess_from(getattr(transformers, name)(**options))
    assert "\n" not in str(refused.value)
