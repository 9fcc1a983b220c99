"""The public API: one ``Explainer`` from a model to maps, ``explain`` a thin wrapper over it."""

from __future__ import annotations

import fdpipe
import pytest
import torch
from fdpipe import api
from fdpipe.export.loading import LoadedModel, load_model
from fdpipe.kernels import GradCAM
from fdpipe.methods import MethodSpec
from PIL import Image


@pytest.fixture
def count_backends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []
    real = api.select_backend

    def counting(model: LoadedModel, **kwargs: object) -> api.Backend:
        built.append(model.name)
        return real(model, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(api, "select_backend", counting)
    return built


def test_a_loop_of_explain_calls_builds_the_backend_once(
    count_backends: list[str], photos: dict[str, Image.Image]
) -> None:
    model = load_model("squeezenet1_1")  # a fresh module: nothing cached for it yet
    for name in ("cat", "coffee", "rocket"):
        fdpipe.explain(model, photos[name], "gradcam")
        fdpipe.explain(model, photos[name], ["fdcam", "gradcam:"])
    fdpipe.Explainer(model, "layercam")(photos["cat"])
    assert count_backends == ["squeezenet1_1"]
    fdpipe.explain(model, photos["cat"], "gradcam", runtime="torch")  # another runtime: its own
    assert count_backends == ["squeezenet1_1", "squeezenet1_1"]


def test_explainer_runs_every_method_from_one_backbone_pass(
    squeezenet: LoadedModel, photos: dict[str, Image.Image]
) -> None:
    explainer = fdpipe.Explainer(
        squeezenet, [GradCAM(), MethodSpec.parse("fdcam:shift=0.3"), "layercam"], top_k=2
    )
    passes: list[int] = []
    hook = explainer.network.backbone.register_forward_hook(lambda *_: passes.append(1))
    try:
        results = explainer([photos["cat"], photos["coffee"]])
    finally:
        hook.remove()
    assert list(results) == ["gradcam", "fdcam:shift=0.3", "layercam"]
    assert len(passes) == 1
    assert results["fdcam:shift=0.3"].options["shift"] == 0.3
    assert results["gradcam"].maps.shape == (2, 2, 224, 224)
    # the same maps as a one-off call
    alone = fdpipe.explain(squeezenet, [photos["cat"], photos["coffee"]], "gradcam", top_k=2)
    torch.testing.assert_close(alone.maps, results["gradcam"].maps)


def test_explainer_defaults_and_per_call_targets(
    squeezenet: LoadedModel, photos: dict[str, Image.Image]
) -> None:
    explainer = fdpipe.Explainer(squeezenet, "gradcam", classes=[281])
    assert explainer(photos["cat"])["gradcam"].classes.tolist() == [[281]]
    assert explainer(photos["cat"], classes=[285, 281])["gradcam"].classes.tolist() == [[285, 281]]
    assert fdpipe.Explainer(squeezenet, "gradcam", top_k=3)(photos["cat"])[
        "gradcam"
    ].classes.shape == (
        1,
        3,
    )


def test_options_for_several_methods_are_refused(squeezenet: LoadedModel) -> None:
    with pytest.raises(ValueError, match="keyword options apply to one named method"):
        fdpipe.Explainer(squeezenet, ["gradcam", "fdcam"], shift=0.3)
    with pytest.raises(ValueError, match="'gradcam' is given twice"):
        fdpipe.Explainer(squeezenet, ["gradcam", GradCAM()])
    with pytest.raises(ValueError, match="apply when the model is given by name or as a module"):
        fdpipe.Explainer(squeezenet, "gradcam", layer="features.9")
