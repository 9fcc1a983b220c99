"""The decode stage's device path (``--decode device``): JPEGs decoded in batches by
``torchvision.io.decode_jpeg`` on the model's device (here the CPU: the same code as nvJPEG on a
GPU) and preprocessed in torch; everything else, and every failure, through the CPU decoders."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from fdpipe.cli import main
from fdpipe.demo import PHOTOS
from fdpipe.images import MAX_PIXELS
from fdpipe.job import decode as job_decode
from fdpipe.job.config import ConfigError, JobConfig
from fdpipe.job.run import run_job
from image_files import explain_command, write_images
from PIL import Image
from results import run_metadata

DECODERS = [job_decode.torchvision_decoder(), job_decode.torchcodec_decoder()]


def decoders() -> list[job_decode.JpegDecoder]:
    """The JPEG decoders installed here: torchvision's always, TorchCodec's with the extra."""
    return [decoder for decoder in DECODERS if decoder is not None]


COLUMNS = ["image_path", "method", "status", "error", "class_index", "map", "original_width"]


def jpeg(picture: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def rows(output: Path) -> dict[tuple[str, str], dict[str, object]]:
    table = pq.read_table(output, columns=COLUMNS).to_pylist()
    return {(str(row["image_path"]), str(row["method"])): row for row in table}


def pearson(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])


@pytest.mark.parametrize("decoder", decoders(), ids=lambda decoder: decoder.name)
def test_device_decoded_maps_agree_with_pil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: job_decode.JpegDecoder
) -> None:
    """The bundled photos through both paths: the same top-1 class, every map at r >= 0.999
    (the resampling differs: torch's antialiased resize against PIL's)."""
    monkeypatch.setattr(job_decode, "jpeg_decoder", lambda: decoder)
    (tmp_path / "images").mkdir()
    for name, load in PHOTOS.items():
        picture = Image.fromarray(load()).convert("RGB")
        (tmp_path / "images" / f"{name}.jpg").write_bytes(jpeg(picture))
    config = JobConfig(
        input=tmp_path / "images", output=tmp_path / "cpu", model="squeezenet1_1",
        methods=("fdcam", "gradcam"), decode="cpu", progress=False, workers=1,
    )  # fmt: skip
    run_job(config)
    run_job(replace(config, output=tmp_path / "device", decode="device"))
    pil, device = rows(tmp_path / "cpu"), rows(tmp_path / "device")
    assert pil.keys() == device.keys() and len(pil) == 2 * len(PHOTOS)
    worst = 1.0
    for key, want in pil.items():
        got = device[key]
        assert (got["status"], got["class_index"]) == ("ok", want["class_index"]), key
        worst = min(worst, pearson(want["map"], got["map"]))  # type: ignore[arg-type]
    assert worst >= 0.999, worst
    run = run_metadata(tmp_path / "device")["run"]
    assert (run["decode"], run["jpeg_decoder"]) == ("device", decoder.name)  # type: ignore[index]


def odd_files(directory: Path) -> dict[str, bool]:
    """Files of every kind, named by what they are -> whether the device decoder takes them."""
    photo = Image.fromarray(PHOTOS["cat"]()).convert("RGB").resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    good = jpeg(photo)
    png = io.BytesIO()
    photo.save(png, format="PNG")
    files = {
        "plain.jpg": (good, True),
        "progressive.jpg": (jpeg(photo, progressive=True), True),
        "grey.jpg": (jpeg(photo.convert("L")), True),
        "cmyk.jpg": (jpeg(photo.convert("CMYK")), False),
        "rotated.jpg": (jpeg(photo, exif=exif), False),
        "trailing.jpg": (good + b"junk after the end marker", False),
        "truncated.jpg": (good[: len(good) * 2 // 3], False),
        "not-an-image.jpg": (b"\xff\xd8 this is text \xff\xd9", False),
        "png.jpg": (png.getvalue(), False),
    }
    directory.mkdir(parents=True)
    for name, (data, _) in files.items():
        (directory / name).write_bytes(data)
    return {name: takes for name, (_, takes) in files.items()}


def test_which_files_the_device_decoder_takes(tmp_path: Path) -> None:
    for name, takes in odd_files(tmp_path / "images").items():
        size = job_decode.device_jpeg((tmp_path / "images" / name).read_bytes(), MAX_PIXELS)
        assert (size == (96, 64)) if takes else size is None, name
    big = (tmp_path / "images" / "plain.jpg").read_bytes()
    assert job_decode.device_jpeg(big, 96 * 64 - 1) is None  # PIL decodes it at a reduced scale


@pytest.mark.parametrize("decoder", decoders(), ids=lambda decoder: decoder.name)
@pytest.mark.parametrize("fault", ["none", "batch", "image", "size"])
def test_device_decoding_falls_back_image_by_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, decoder: job_decode.JpegDecoder
) -> None:
    """Every kind of file gives the same rows through the device path as through the CPU
    path, whatever the device decoder does: fails the whole batched call (one bad file among
    them), fails every image, or returns a wrong size; only the files it takes reach it."""
    takes = odd_files(tmp_path / "images")
    config = JobConfig(
        input=tmp_path / "images", output=tmp_path / "cpu", model="squeezenet1_1",
        methods=("gradcam",), decode="cpu", progress=False, workers=1,
    )  # fmt: skip
    run_job(config)
    calls: list[int] = []

    def device_decoder(data, device):  # type: ignore[no-untyped-def]
        batch = isinstance(data, list)
        calls.append(len(data) if batch else 1)
        if fault == "batch" and batch:
            raise RuntimeError("nvjpeg: a bad file in the batch (injected)")
        if fault == "image":  # the batch, then each image
            raise ValueError("nvjpeg: cannot decode (injected)")
        pixels = decoder.decode(data, device)
        if fault == "size":
            return [p[:, 1:] for p in pixels] if batch else pixels[:, 1:]
        return pixels

    faulty = job_decode.JpegDecoder("faulty", device_decoder)
    monkeypatch.setattr(job_decode, "jpeg_decoder", lambda: faulty)
    to_device: list[torch.Tensor] = []

    def from_pixels(preprocess, pixels):  # type: ignore[no-untyped-def]
        """Counts the device's images; PIL's preprocessing, so that the maps are the CPU's."""
        to_device.append(pixels)
        return preprocess(Image.fromarray(pixels.permute(1, 2, 0).numpy()))

    monkeypatch.setattr(job_decode.Preprocess, "from_pixels", from_pixels)
    run_job(replace(config, output=tmp_path / "device", decode="device"))
    want, got = rows(tmp_path / "cpu"), rows(tmp_path / "device")
    assert want.keys() == got.keys()
    for key, row in want.items():
        assert (got[key]["status"], got[key]["error"]) == (row["status"], row["error"]), key
        assert got[key]["original_width"] == row["original_width"], key
        if row["status"] == "ok":
            np.testing.assert_allclose(got[key]["map"], row["map"], atol=1e-6)  # type: ignore[arg-type]
    failed = {key[0].rsplit("/", 1)[-1] for key, row in want.items() if row["status"] == "failed"}
    assert failed == {"truncated.jpg", "not-an-image.jpg"}
    device_files = sum(takes.values())
    assert calls[0] == device_files  # one batched call for the batch's JPEGs
    assert calls[1:] == ([1] * device_files if fault in ("batch", "image") else [])
    assert len(to_device) == (0 if fault in ("image", "size") else device_files)


def test_decode_device_on_a_cpu_model_runs_the_device_code(tmp_path: Path) -> None:
    """``--decode device`` on a CPU model is allowed (the code the tests run); ``auto`` on a
    CPU is the CPU decoders."""
    write_images(tmp_path / "images", 2)
    for decode, output in (("auto", "cpu"), ("device", "device")):
        args = explain_command(tmp_path / "images", tmp_path / output, "--decode", decode)
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert run_metadata(tmp_path / output)["run"]["decode"] == output  # type: ignore[index]


@pytest.mark.parametrize("value", ["gpu", "cuda", "", "nan", "DEVICE"])
def test_a_bad_decode_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """Refused before any work: one line, exit 2 (CLI); a ``ConfigError`` (API)."""
    args = explain_command(tmp_path, tmp_path / "out", "--decode", value)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--decode" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    write_images(tmp_path / "images", 1)
    config = JobConfig(input=tmp_path / "images", output=tmp_path / "api", model="squeezenet1_1",
                       methods=("gradcam",), decode=value, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="--decode"):
        run_job(config)
