"""The model request: torch-free, checked when built, the one spelling that the command line
builds, ``JobConfig`` holds and ``Explainer`` / ``explain`` take."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fdpipe
import pytest
from fdpipe.cli.export import export
from fdpipe.cli.options import model_request
from fdpipe.export.request import ModelError, ModelRequest, PreprocessOptions
from fdpipe.job.config import JobConfig
from PIL import Image

SMALL = PreprocessOptions(size=(64, 64))


def test_the_request_and_the_command_line_choices_import_no_torch() -> None:
    code = (
        "import sys, fdpipe.export.request, fdpipe.cli.choices, fdpipe.cli.options\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ModelRequest("vgg16", score="odds"), "unknown score 'odds'"),
        (lambda: ModelRequest(preprocess=PreprocessOptions(mean=(float("nan"),) * 3)), "finite"),
        (lambda: ModelRequest(preprocess=PreprocessOptions(std=(0.2, 0.0, 0.2))), "> 0"),
        (lambda: ModelRequest(preprocess=PreprocessOptions(resize="fit")), "unknown resize"),
    ],
)
def test_a_bad_request_is_refused_when_built(build: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build()  # type: ignore[operator]


def test_the_command_line_builds_the_request_from_its_options(tmp_path: Path) -> None:
    args = ["--model", "resnet18", "--layer", "layer4", "--input-size", "64,80",
            "--channels", "1", "--score", "sigmoid", "--offline", "-o", str(tmp_path)]  # fmt: skip
    context = export.make_context("export", args)
    assert model_request(dict(context.params)) == ModelRequest(
        "resnet18",
        layer="layer4",
        preprocess=PreprocessOptions(size=(64, 80), channels=1),
        score="sigmoid",
        offline=True,
    )
    plain = export.make_context("export", ["-o", str(tmp_path)])
    assert model_request(dict(plain.params)) == ModelRequest("vgg16")  # no preprocess overrides


def test_job_config_holds_the_request() -> None:
    request = ModelRequest("squeezenet1_1", pretrained=False)
    assert JobConfig(Path("in"), Path("out"), model=request).request is request
    assert JobConfig(Path("in"), Path("out"), model="resnet18").request == ModelRequest("resnet18")


def test_explainer_and_explain_take_the_request_as_the_keywords(
    photos: dict[str, Image.Image],
) -> None:
    request = ModelRequest("resnet18", layer="layer4", pretrained=False, preprocess=SMALL)
    by_request = fdpipe.Explainer(request, "gradcam").model
    by_keywords = fdpipe.Explainer(
        "resnet18", "gradcam", layer="layer4", pretrained=False, preprocess=SMALL
    ).model
    assert (by_request.layer, by_request.input_size, by_request.weights_id) == (
        by_keywords.layer, by_keywords.input_size, by_keywords.weights_id,
    )  # fmt: skip
    result = fdpipe.explain(request, [photos["cat"]], "gradcam")
    assert result.maps.shape[-2:] == (64, 64)
    with pytest.raises(ValueError, match="not to a LoadedModel or a ModelRequest"):
        fdpipe.Explainer(request, "gradcam", layer="layer3")
