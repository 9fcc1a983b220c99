"""Decoding: every odd image file becomes RGB or an ImageDecodeError that says why.

All files are generated here with PIL and numpy. Also ``fdpipe.explain`` on every input form.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import fdpipe
import numpy as np
import pytest
import torch
from fdpipe.export.loading import LoadedModel
from fdpipe.images import ImageDecodeError, load_image
from fdpipe.kernels import SplitNetwork
from PIL import Image

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 128, 255]], np.uint8), mode="L").save(path)
    assert pixels(load_image(path)).tolist() == [[[0] * 3, [128] * 3, [255] * 3]]


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(path)
    got = pixels(load_image(path)).astype(int)
    assert got[0, 0].tolist() == list(WHITE)  # fully transparent: the background shows
    assert got[0, 1].tolist() == list(RED)  # opaque: unchanged
    assert np.abs(got[0, 2] - 127).max() <= 1  # half-transparent black over white: grey


def test_palette_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    image.save(path, transparency=1)  # palette entry 1 (blue) is transparent
    assert pixels(load_image(path)).tolist() == [[list(RED), list(WHITE)]]


def test_cmyk(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    got = pixels(load_image(path)).astype(int)
    assert np.abs(got - np.array(RED)).max() <= 3


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 32768, 65535], [0, 128, 255]),
        ([0, 128, 255], [0, 0, 1]),  # a dark 16-bit image stays dark
    ],
)
def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path: Path, values, expected) -> None:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([values], np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert pixels(load_image(path))[0, :, 0].tolist() == expected


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Stored 40 x 20, red left and blue right; orientation 6 means 'rotate 90 clockwise'."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = RED
    stored[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.size == (20, 40)  # width x height, turned upright
    got = pixels(loaded).astype(int)
    assert np.abs(got[5, 10] - RED).max() < 10  # the left half is now on top
    assert np.abs(got[35, 10] - BLUE).max() < 10


def test_one_pixel(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    Image.new("RGB", (1, 1), BLUE).save(path)
    assert pixels(load_image(path)).tolist() == [[list(BLUE)]]


def test_large_but_allowed(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.new("L", (6000, 4000), 7).save(path)  # 24 Mpx, a big camera photo
    loaded = load_image(path)
    assert loaded.size == (6000, 4000)
    assert pixels(loaded)[-1, -1].tolist() == [7, 7, 7]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels, with no pixel data: cheap to write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def encoded(kind: str) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("huge.png", png_header_only(20_000, 20_000), "image too large"),
        ("tall.png", png_header_only(1, 100_000_000), "image too large"),
        ("empty.jpg", b"", "empty file"),
        ("truncated.jpg", encoded("JPEG")[:600], "(?i)truncated"),
        ("truncated.png", encoded("PNG")[:600], "(?i)truncated"),
        ("header.png", encoded("PNG")[:40], "not an image file"),  # cut inside the header
        ("notes.jpg", b"these are not the pixels you are looking for\n", "not an image file"),
    ],
)
def test_bad_files_raise_image_decode_error(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_image(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="No such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError):
        load_image(tmp_path)


# ---- fdpipe.explain on every input form ------------------------------------------------------


@pytest.fixture(scope="module")
def cat_on_disk(tmp_path_factory: pytest.TempPathFactory, photos: dict) -> Path:
    path = tmp_path_factory.mktemp("photos") / "cat.png"
    photos["cat"].save(path)
    return path


def test_explain_accepts_every_input_form(
    squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict, cat_on_disk: Path
) -> None:
    cat = photos["cat"]
    as_array = np.asarray(cat)
    forms = {
        "path": cat_on_disk,
        "str": str(cat_on_disk),
        "pil": cat,
        "array": as_array,
        "float array": as_array / 255.0,
        "tensor": squeezenet.preprocess(cat),
        "batch tensor": squeezenet.preprocess(cat)[None],
    }
    expected = fdpipe.explain(squeezenet, cat, "gradcam").maps
    assert expected.shape == (1, 1, 224, 224)
    for form, images in forms.items():
        maps = fdpipe.explain(squeezenet, images, "gradcam").maps
        torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0, msg=form)


def test_explain_several_images_and_methods(
    squeezenet: LoadedModel, squeezenet_net: SplitNetwork, photos: dict, cat_on_disk: Path
) -> None:
    images = [cat_on_disk, photos["coffee"], np.asarray(photos["astronaut"])]
    results = fdpipe.explain(squeezenet, images, ["gradcam", "layercam"], top_k=2)
    assert set(results) == {"gradcam", "layercam"}
    for explanation in results.values():
        assert explanation.maps.shape == (3, 2, 224, 224)
        assert explanation.classes.shape == (3, 2)
        assert torch.equal(explanation.classes, results["gradcam"].classes)
    alone = fdpipe.explain(squeezenet, photos["coffee"], "layercam")
    torch.testing.assert_close(results["layercam"].maps[1, :1], alone.maps[0])


def test_explain_by_model_name_and_options(photos: dict) -> None:
    explanation = fdpipe.explain(
        "squeezenet1_1", photos["coffee"], "groupcam", groups=8, classes=[967]
    )
    assert explanation.options == {"groups": 8, "blur_kernel": 51, "blur_sigma": 50.0}
    assert explanation.classes.tolist() == [[967]]
    assert explanation.scores.shape == (1, 1, 8)


@pytest.mark.parametrize("mode", ["RGBA", "I;16"])
def test_explain_converts_pil_images_like_files(
    squeezenet: LoadedModel,
    squeezenet_net: SplitNetwork,
    photos: dict,
    tmp_path: Path,
    mode: str,
) -> None:
    """An in-memory image is decoded to RGB exactly as the same image read from a file."""
    path = tmp_path / "image.png"
    if mode == "RGBA":
        image = photos["cat"].convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize(image.size))
        image.save(path)
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(photos["cat"].convert("L")).astype(np.uint16) * 257)
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = 8  # rotate 90 counter-clockwise to display
        photos["cat"].save(path, exif=exif)
        image = Image.open(path)
    from_file = fdpipe.explain(squeezenet, path, "gradcam").maps
    in_memory = fdpipe.explain(squeezenet, image, "gradcam").maps
    torch.testing.assert_close(in_memory, from_file)
