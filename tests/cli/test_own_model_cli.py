"""Your own model on the command line: a fine-tuned torchvision state dict with class names, a
factory file, TorchScript, a grayscale model, per-image targets from a manifest column, and
every bad model input as a one-line usage error (exit 2) that runs no code."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from fdpipe.cli import main
from image_files import write_images
from results import run_metadata, stored_rows

FACTORY = """
import torch
from torch import nn


def gray():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )


def vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", num_classes=3)
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own")
    write_images(root / "images", 3)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(model.state_dict(), root / "ft10.pt")
    torch.jit.save(torch.jit.script(model), root / "ft10.ts")
    (root / "classes.txt").write_text("".join(f"part_{i}\n" for i in range(10)))
    (root / "models.py").write_text(FACTORY)
    with (root / "images" / "labels.csv").open("w", newline="") as fh:
        rows = [("img_000.jpg", "part_4"), ("img_001.jpg", "6"), ("nested/img_002.jpg", "")]
        csv.writer(fh).writerows([("image_path", "label"), *rows])
    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--no-progress"] if args[0] == "explain" else args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def rows(output: Path) -> list[dict]:
    return stored_rows(output).to_pylist()


FINETUNED = ("--model", "resnet18", "--input-size", "64", "--method", "gradcam")


def test_finetuned_state_dict_with_class_names(workspace: Path, tmp_path: Path) -> None:
    code, output = run(
        "explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "out"), *FINETUNED,
        "--weights", str(workspace / "ft10.pt"), "--class-names", str(workspace / "classes.txt"),
        "--classes", "part_3,7", "--resize", "crop",
    )  # fmt: skip
    assert code == 0, output
    found = rows(tmp_path / "out")
    assert len(found) == 6
    assert {(r["class_index"], r["class_name"]) for r in found} == {(3, "part_3"), (7, "part_7")}
    params = run_metadata(tmp_path / "out")["params"]
    assert params["source"] == "torchvision:resnet18" and params["num_classes"] == 10
    # The centre crop the map covers, in original pixels: 64 x 48 images, shorter side to
    # round(64 / 0.875) = 73 (97 x 73), then the centre 64 x 64 from (16, 4).
    expected = [16 * 64 / 97, 4 * 48 / 73, 80 * 64 / 97, 68 * 48 / 73]
    assert all(row["map_box"] == pytest.approx(expected, abs=1e-4) for row in found)
    assert params["preprocess"]["resize_mode"] == "crop" and params["preprocess"]["resize"] == [
        64,
        64,
    ]


def test_manifest_target_column(workspace: Path, tmp_path: Path) -> None:
    common = [
        "explain", "-i", str(workspace / "images" / "labels.csv"), *FINETUNED,
        "--weights", str(workspace / "ft10.pt"), "--class-names", str(workspace / "classes.txt"),
        "--target-column", "label",
    ]  # fmt: skip
    code, output = run(*common, "-o", str(tmp_path / "only"))
    assert code == 1, output  # the image without a label fails alone
    found = {r["image_path"]: r for r in rows(tmp_path / "only")}
    assert found["img_000.jpg"]["class_name"] == "part_4"
    assert found["img_001.jpg"]["class_index"] == 6
    assert found["nested/img_002.jpg"]["status"] == "failed"
    assert "no class in the manifest's target column" in found["nested/img_002.jpg"]["error"]

    code, output = run(*common, "--top-k", "2", "-o", str(tmp_path / "with-top"))
    ranks = [(r["class_rank"], r["class_index"]) for r in rows(tmp_path / "with-top")]
    assert [rank for rank, _ in ranks if rank is not None] == [0, 1, 2, 0, 1, 2]
    assert ranks[0][1] == 4 and ranks[3][1] == 6  # the target first, then the top-2

    code, output = run(*common, "--classes", "1", "-o", str(tmp_path / "x"))
    assert code == 2 and "not with --top-k or --target-column" in output
    code, output = run(*common[:-1], "nope", "-o", str(tmp_path / "y"))
    assert code == 2 and "has no column 'nope'" in output


def test_factory_grayscale_model_at_128_px(workspace: Path, tmp_path: Path) -> None:
    code, output = run(
        "explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "out"),
        "--model", f"{workspace / 'models.py'}:gray", "--channels", "1", "--input-size", "128",
        "--normalisation", "none", "--method", "fdcam,gradcam", "--score", "sigmoid",
    )  # fmt: skip
    assert code == 0, output
    found = rows(tmp_path / "out")
    assert {r["class_name"] for r in found} <= {"class_0", "class_1", "class_2"}
    assert {(r["map_height"], r["map_width"]) for r in found} == {(64, 64)}
    params = run_metadata(tmp_path / "out")["params"]
    assert params["preprocess"]["channels"] == 1 and params["score"] == "sigmoid"


def test_torchscript_archive(workspace: Path, tmp_path: Path) -> None:
    code, output = run(
        "explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "out"),
        "--model", str(workspace / "ft10.ts"), "--layer", "layer4", "--input-size", "64",
        "--class-names", str(workspace / "classes.txt"), "--method", "gradcam,fdcam",
    )  # fmt: skip
    assert code == 0, output
    assert {r["class_name"][:5] for r in rows(tmp_path / "out")} == {"part_"}
    code, output = run("export", "--model", str(workspace / "ft10.ts"), "--layer", "layer4",
                       "-o", str(tmp_path / "artifacts"))  # fmt: skip
    assert code == 2 and "TorchScript modules cannot be exported" in output


def test_factory_export_and_artifacts(workspace: Path, tmp_path: Path) -> None:
    model = ("--model", f"{workspace / 'models.py'}:gray", "--channels", "1", "--input-size", "64")
    code, output = run("export", *model, "--normalisation", "none", "-o", str(tmp_path / "a"))
    assert code == 0, output
    images = str(workspace / "images")
    code, output = run("explain", "-i", images, "-o", str(tmp_path / "out"), *model,
                       "--normalisation", "none", "--artifacts", str(tmp_path / "a"),
                       "--runtime", "onnxruntime")  # fmt: skip
    assert code == 0, output
    code, output = run("explain", "-i", images, "-o", str(tmp_path / "other"), *model,
                       "--artifacts", str(tmp_path / "a"))  # fmt: skip
    assert code == 2 and "preprocessing is" in output  # exported with other normalisation


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--model", "resnet18", "--weights", "{bad}"), "cannot be used"),
        (("--model", "resnet18", "--weights", "{tensor}"), "holds a Tensor, not a state dict"),
        (("--model", "squeezenet1_0", "--weights", "{ft}"), "does not fit this architecture"),
        (("--model", "{evil}"), "--trust-pickle"),
        (("--model", "resnet18", "--weights", "{evil}"), "--trust-pickle"),
        (("--model", "{ft}"), "is a state dict, not a model"),
        (("--model", "{models}:vit", "--layer", "head_drop", "--input-size", "224"), "not a (B, K"),
        (("--model", "{models}:nope"), "has no callable 'nope'"),
        (("--model", "resnet18", "--mean", "0.5,nan,0.5"), "mean must be finite"),
        (("--model", "resnet18", "--input-size", "3,4,5"), "expected a size like 299"),
        (("--model", "resnet18", "--weights", "{ft}", "--class-names", "{names3}"), "has 3 names"),
    ],
    ids=[
        "garbage",
        "tensor",
        "wrong-arch",
        "pickled-model",
        "pickled-weights",
        "state-dict-model",
        "vit-pooled",
        "no-factory",
        "nan-mean",
        "bad-size",
        "names-count",
    ],
)
def test_bad_model_inputs_exit_two_and_run_no_code(
    workspace: Path, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    marker = tmp_path / "pwned"
    files = {
        "bad": tmp_path / "bad.pt",
        "tensor": tmp_path / "tensor.pt",
        "evil": tmp_path / "evil.pt",
        "names3": tmp_path / "names3.txt",
        "ft": workspace / "ft10.pt",
        "models": workspace / "models.py",
    }
    files["bad"].write_bytes(b"PK\x03\x04 not really a zip")
    torch.save(torch.zeros(3), files["tensor"])
    torch.save(_Evil(str(marker)), files["evil"])
    files["names3"].write_text("a\nb\nc\n")
    args = [a.format(**files) for a in extra]
    code, output = run("explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "o"),
                       "--input-size", "64", *args)  # fmt: skip
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not marker.exists() and not (tmp_path / "o").exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def renamed(workspace: Path) -> Path:
    """ft10.pt under another implementation's names, in the same order."""
    state = torch.load(workspace / "ft10.pt", weights_only=True)
    torch.save({f"net.{i}": v for i, v in enumerate(state.values())}, workspace / "renamed.pt")
    items = list(state.items())
    torch.save({f"net.{i}": v for i, (_, v) in enumerate(items[:-1])}, workspace / "short.pt")
    torch.save({f"net.{i}": v for i, (_, v) in enumerate(reversed(items))}, workspace / "rev.pt")
    return workspace / "renamed.pt"


@pytest.mark.parametrize(
    ("weights", "content", "message"),
    [
        ("short.pt", None, "121 tensors in the file, 122 in the model"),
        ("rev.pt", None, "tensor(s) of another shape"),
        ("ft10.pt", b"[1, 2]", "holds a JSON list, not an object"),
        ("ft10.pt", b'{"nope": "fc.weight"}', "1 key(s) not in"),
        ("ft10.pt", b'{"fc.weight": "head.weight"}', "target(s) the model does not have"),
        ("ft10.pt", b'{"fc.weight": "conv1.weight"}', "'conv1.weight' would be given twice"),
        ("ft10.pt", b'{"a": "fc.weight", "b": "fc.weight"}', "named more than once"),
        ("ft10.pt", b'{"fc.weight": NaN}', "NaN is not JSON"),
        ("ft10.pt", b'{"fc.weight": 1.5}', "must be strings"),
        ("ft10.pt", b'{"a": "fc.weight", "a": "fc.bias"}', "'a' given twice"),
        ("ft10.pt", b"{}", "maps no key"),
        ("ft10.pt", b"\xff\xfe{", "cannot be read as JSON"),
        ("ft10.pt", b"[" * 100_000, "cannot be read as JSON"),
        ("ft10.pt", "fifo", "not a regular file"),
        ("ft10.pt", "missing", "No such file"),
        (None, b'{"a": "fc.weight"}', "applies to a weights file"),
    ],
    ids=[
        "count",
        "shapes",
        "not-object",
        "unknown-key",
        "unknown-target",
        "target-taken",
        "duplicate-targets",
        "nan",
        "number",
        "repeated-key",
        "empty",
        "not-utf8",
        "deep",
        "fifo",
        "missing",
        "no-weights",
    ],
)
def test_a_bad_weights_map_is_one_line_and_exit_two(
    workspace: Path,
    renamed: Path,
    tmp_path: Path,
    weights: str | None,
    content: bytes | str | None,
    message: str,
) -> None:
    """Issue 19, item 6: every hostile ``--weights-map`` is refused before any work."""
    mapping = tmp_path / "map.json"
    if content == "fifo":
        os.mkfifo(mapping)  # would block a reader forever
    elif isinstance(content, bytes):
        mapping.write_bytes(content)
    given = ["--weights", str(workspace / weights)] if weights else []
    value = "by-position" if content is None else str(mapping)
    code, output = run("explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "o"),
                       *FINETUNED, *given, "--weights-map", value)  # fmt: skip
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["by-position", "json"])
def test_the_weights_map_used_is_recorded_and_rebuilt(
    workspace: Path, renamed: Path, tmp_path: Path, how: str
) -> None:
    names = {f"net.{i}": key for i, key in enumerate(torch.load(workspace / "ft10.pt"))}
    (tmp_path / "map.json").write_text(json.dumps(names))
    value = how if how == "by-position" else str(tmp_path / "map.json")
    code, output = run("explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "out"),
                       *FINETUNED, "--weights", str(renamed), "--weights-map", value)  # fmt: skip
    assert code == 0, output
    params = run_metadata(tmp_path / "out")["params"]
    assert params["weights_map"] == (how if how == "by-position" else names)
    plain = stored_rows(tmp_path / "out").column("probability").to_pylist()
    code, output = run("explain", "-i", str(workspace / "images"), "-o", str(tmp_path / "ft"),
                       *FINETUNED, "--weights", str(workspace / "ft10.pt"))  # fmt: skip
    assert plain == stored_rows(tmp_path / "ft").column("probability").to_pylist()
    (tmp_path / "map.json").unlink()  # the map travels in the output, not by its file
    code, output = run("evaluate", "--maps", str(tmp_path / "out"), "-o", str(tmp_path / "ev"),
                       "--no-curves", "--metric", "confidence")  # fmt: skip
    assert code == 0, output
