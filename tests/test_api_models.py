"""``fdpipe.Explainer`` / ``fdpipe.explain`` on any ``nn.Module``: the caller's module is never
changed (mode, requires_grad, device, weights, in-place ops), copies are reused only while the
weights are unchanged, and the maps equal those of the same model loaded by name."""

from __future__ import annotations

import fdpipe
import pytest
import torch
import torchvision
from fdpipe.api import backend_for
from fdpipe.export.request import PreprocessOptions
from torch import nn

SMALL = PreprocessOptions(size=(64, 64))


def snapshot(module: nn.Module) -> tuple[bool, list[bool], dict[str, torch.Tensor], list]:
    return (
        module.training,
        [p.requires_grad for p in module.parameters()],
        {k: v.clone() for k, v in module.state_dict().items()},
        [m.inplace for m in module.modules() if hasattr(m, "inplace")],
    )


def test_callers_module_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=4).train()  # in-place ReLUs in the head
    model.features.denseblock4.requires_grad_(False)
    before = snapshot(model)
    images = torch.randn(2, 3, 64, 64)
    result = fdpipe.explain(
        model, images, ["fdcam", "gradcam"], target_layer="features", preprocess=SMALL, top_k=2
    )
    assert result["fdcam"].maps.shape == (2, 2, 64, 64)
    after = snapshot(model)
    assert after[0] and after[1] == before[1] and after[3] == before[3]
    assert all(torch.equal(v, after[2][k]) for k, v in before[2].items())  # BN stats included
    assert next(model.parameters()).device.type == "cpu"


def test_explainer_equals_the_model_loaded_by_name() -> None:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=1000)
    by_module = fdpipe.Explainer(module, "gradcam", target_layer="layer4", preprocess=SMALL)
    loaded = fdpipe.load_model("resnet18", pretrained=False, preprocess=SMALL)
    loaded.module.load_state_dict(module.state_dict())
    by_name = fdpipe.Explainer(loaded, "gradcam")
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(by_module(images)["gradcam"].maps, by_name(images)["gradcam"].maps)
    assert by_module.model.class_names[281] == "tabby"  # 1000 classes: ImageNet's names


def test_private_copy_is_reused_until_the_weights_change() -> None:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=3)
    first = fdpipe.Explainer(module, "gradcam", preprocess=SMALL)
    again = fdpipe.Explainer(module, "fdcam", preprocess=SMALL)
    assert again.model is first.model and again.backend is first.backend
    images = torch.randn(1, 3, 64, 64)
    before = again(images)["fdcam"].logits
    with torch.no_grad():
        module.fc.bias += 1.0  # what an optimiser step does: in place, version bumped
    after = fdpipe.Explainer(module, "fdcam", preprocess=SMALL)
    assert after.model is not first.model
    torch.testing.assert_close(after(images)["fdcam"].logits, before + 1.0)


def test_device_argument_and_arguments_that_do_not_apply() -> None:
    module = torchvision.models.resnet18(num_classes=3)
    explainer = fdpipe.Explainer(module, "gradcam", preprocess=SMALL, device="cpu")
    assert explainer.device.type == "cpu"
    with pytest.raises(ValueError, match="weights apply to a model given by name"):
        fdpipe.Explainer(module, weights="w.pth")
    with pytest.raises(ValueError, match="not to a LoadedModel"):
        fdpipe.Explainer(explainer.model, target_layer="layer3")
    with pytest.raises(ValueError, match="target_layer or layer, not both"):
        fdpipe.Explainer(module, target_layer="layer4", layer="layer3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_cuda_leaves_the_callers_module_on_the_cpu() -> None:
    module = torchvision.models.resnet18(num_classes=3)
    explainer = fdpipe.Explainer(module, "fdcam", preprocess=SMALL, device="cuda")
    assert explainer.device.type == "cuda" and next(module.parameters()).device.type == "cpu"
    assert explainer(torch.randn(1, 3, 64, 64))["fdcam"].maps.device.type == "cuda"


def test_backends_are_per_device() -> None:
    model = fdpipe.load_model("resnet18", pretrained=False, preprocess=SMALL)
    assert backend_for(model, "torch") is backend_for(model, "torch")
    assert backend_for(model, "torch", device="cpu") is not backend_for(model, "torch")
