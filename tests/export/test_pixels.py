"""``Preprocess.from_pixels``: the torch preprocessing of decoded pixels (the GPU decoder's path,
run here on CPU tensors) against the PIL path: maps agree, the top-1 class is the same."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch
from fdpipe.api import Explainer
from fdpipe.demo import PHOTOS
from fdpipe.export.loading import LoadedModel
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg


def jpeg_bytes(load) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    Image.fromarray(load()).convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_torch_preprocessing_matches_pil(squeezenet: LoadedModel, resize: str) -> None:
    preprocess = replace(squeezenet.preprocess, resize=resize)
    blobs = [jpeg_bytes(load) for load in PHOTOS.values()]
    pil = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    pixels = decode_jpeg(
        [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], mode=ImageReadMode.RGB
    )
    tensor = torch.stack([preprocess.from_pixels(p) for p in pixels])
    assert tensor.shape == pil.shape
    explainer = Explainer(squeezenet, ["fdcam", "gradcam"])
    from_pil, from_tensor = explainer(pil), explainer(tensor)
    for label in ("fdcam", "gradcam"):
        want, got = from_pil[label], from_tensor[label]
        assert torch.equal(want.classes, got.classes)  # the same top-1 for every photo
        worst = min(pearson(w, g) for w, g in zip(want.maps, got.maps, strict=True))
        assert worst >= 0.999, (label, worst)
