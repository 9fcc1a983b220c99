"""ONNX export of a split model: backbone, head and masked-head graphs, parity check, manifest.

An export directory holds ``backbone.onnx`` (images -> activations, extras), ``head.onnx``
(activations, extras -> logits), ``masked_head.onnx`` and ``masked_head_probabilities.onnx``
(activations, masks, classes, extras -> (B, T, M) logit or probability scores; the exact
factorisation where it holds) and ``manifest.json``. Every graph has dynamic batch, mask and
target dimensions and is checked against PyTorch with ONNX Runtime (CPU) before anything is
written in place: the directory is built under a temporary name and renamed at the end.

``precision="fp16"`` adds ``backbone.fp16.onnx``, ``masked_head.fp16.onnx`` and
``masked_head_probabilities.fp16.onnx``: FP16 compute with FP32 inputs and outputs (the
factorised heads keep their last, target-row product in FP32, as ``FactorisedHead`` does), for
ONNX Runtime's CUDA provider and strongly typed TensorRT FP16 engines. Each is checked against
the same FP16 module in PyTorch at ``PARITY_TOLERANCE_FP16``; the manifest records ``precision``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import onnxruntime as ort
import torch
from fdpipe.errors import FdpipeError
from fdpipe.export.loading import LoadedModel
from fdpipe.export.request import ModelError
from fdpipe.export.split import split_at
from fdpipe.export.weights import sha256_file
from fdpipe.kernels.factorised_head import FactorisedHead, masked_head_module
from fdpipe.kernels.network import SplitNetwork
from torch import Tensor, nn
from torch.export import Dim

log = logging.getLogger(__name__)

OPSET = 18
FORMAT = 1
MANIFEST = "manifest.json"
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| relative to max |torch|
PARITY_TOLERANCE_FP16 = 1e-2  # FP16 graphs: another summation order moves FP16 results ~1e-3
GRAPH_PRECISIONS = ("fp32", "fp16")


class ExportError(FdpipeError, RuntimeError):
    """The model could not be exported faithfully (failed export or parity check)."""

    exit_code = 1


class ExportTargetError(ExportError):
    """An export OUTPUT that holds something else than an earlier export: never replaced."""

    exit_code = 2


class ArtifactMismatch(ModelError):
    """Exported artifacts that belong to another model, weights or layer, or were modified."""


IDENTITY = ("model", "source", "weights", "layer", "num_classes", "preprocessing")


@dataclass
class Manifest:
    """``manifest.json`` of an export directory: what was exported from which model, the graphs'
    shapes and masked-head kinds, the parity errors, and every file's inputs, sha256 and size."""

    model: str
    source: str
    weights: str  # sha256 of the weights file, or "random-seed-N"
    layer: str
    num_classes: int
    preprocessing: dict[str, Any]
    input_shape: list[int]  # (C, H, W)
    activation_shape: list[int]  # (K, h, w)
    extra_shapes: list[list[int]]  # tensors the head reads besides the activations
    masked_head: dict[str, str]  # graph name -> "factorised" or "explicit"
    precision: str
    opset: int
    fdpipe_version: str
    torch_version: str
    parity_max_relative_error: dict[str, float]  # file name -> error against PyTorch
    files: dict[str, dict[str, Any]]  # file name -> inputs, outputs, sha256, bytes
    tensorrt: dict[str, Any] | None = None  # engines: version, device, precision, profiles
    format: int = FORMAT

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        if self.tensorrt is None:
            del document["tensorrt"]
        return document

    @classmethod
    def from_json(cls, document: object) -> Manifest:
        """Raises ValueError naming what is wrong with a document that is not a manifest."""
        if not isinstance(document, dict) or not isinstance(document.get("files"), dict):
            raise ValueError("not an fdpipe export manifest")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(document) if n not in ("tensorrt", "format"))
        if missing:
            raise ValueError(f"fields missing: {', '.join(missing)}")
        return cls(**{k: v for k, v in document.items() if k in names})

    def identity(self) -> dict[str, object]:
        """The fields an artifact directory must share with the model it is used for."""
        return {name: getattr(self, name) for name in IDENTITY}


@dataclass(frozen=True)
class Graph:
    """One module to export, with example inputs and the names of its inputs and outputs."""

    name: str
    module: nn.Module
    args: tuple[Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dynamic_shapes: tuple[object, ...]
    num_classes: int  # for valid class indices in the parity check
    tolerance: float = PARITY_TOLERANCE

    @property
    def kind(self) -> str:
        """backbone, head, masked_head or masked_head_probabilities (without ``.fp16``)."""
        return self.name.split(".")[0]


class Float16Graph(nn.Module):
    """A copy of ``module`` computing in FP16, with FP32 inputs and outputs (integers as given)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        cast = [t.half() if t.is_floating_point() else t for t in inputs]
        outputs = self.module(*cast)
        if isinstance(outputs, Tensor):
            return outputs.float()
        return tuple(out.float() for out in outputs)


def fp16_graph(graph: Graph, network: SplitNetwork) -> Graph:
    """The FP16 twin of a backbone or masked-head graph (same inputs, outputs and dims)."""
    dynamic_shapes = graph.dynamic_shapes
    if graph.kind == "backbone":
        module: nn.Module = Float16Graph(graph.module)
    else:
        module = masked_head_module(
            network.head,
            tuple(graph.args[0].shape[1:]),
            probabilities=graph.kind == "masked_head_probabilities",
            dtype=torch.float16,
        )
        if not isinstance(module, FactorisedHead):
            module = Float16Graph(module)
    if isinstance(module, Float16Graph):  # forward(*inputs): one tuple of per-input dims
        flat = [d for d in dynamic_shapes for d in (d if isinstance(d, tuple) else (d,))]
        dynamic_shapes = (tuple(flat),)
    return Graph(
        f"{graph.name}.fp16",
        module,
        graph.args,
        graph.inputs,
        graph.outputs,
        dynamic_shapes,
        graph.num_classes,
        PARITY_TOLERANCE_FP16,
    )


BATCH, MASKS, TARGETS = Dim("batch"), Dim("masks"), Dim("targets")


def masked_head_graph(
    network: SplitNetwork, activations: Tensor, extras: tuple[Tensor, ...], *, probabilities: bool
) -> Graph:
    """(activations, masks, classes[, extras]) -> (B, T, M) scores, factorised where it holds."""
    with torch.no_grad():
        num_classes = network.head(activations, *extras).shape[1]
    batch, channels = activations.shape[:2]
    module = masked_head_module(
        network.head, tuple(activations.shape[1:]), probabilities=probabilities
    )
    extras = () if isinstance(module, FactorisedHead) else extras  # the factorisation has none
    masks = (torch.rand(batch, 3, channels) < 0.5).to(activations.dtype)
    classes = torch.arange(batch * 2).view(batch, 2) % num_classes
    dims = ({0: BATCH}, {0: BATCH, 1: MASKS}, {0: BATCH, 1: TARGETS})
    return Graph(
        "masked_head_probabilities" if probabilities else "masked_head",
        module,
        (activations, masks, classes, *extras),
        ["activations", "masks", "classes", *(f"extra_{i}" for i in range(len(extras)))],
        ["scores"],
        (*dims, tuple({0: BATCH} for _ in extras)) if extras else dims,
        num_classes,
    )


def _graphs(
    model: LoadedModel, example_batch: int = 2, precision: str = "fp32"
) -> tuple[list[Graph], dict[str, Any]]:
    network = split_at(model.module, model.layer, model.input_shape)
    images = torch.randn(example_batch, *model.input_shape, generator=torch.Generator())
    with torch.no_grad():
        activations, extras = network.features(images)
        num_classes = network.head(activations, *extras).shape[1]
    extra_names = [f"extra_{i}" for i in range(len(extras))]
    batched = tuple({0: BATCH} for _ in range(1 + len(extras)))
    graphs = [
        Graph(
            "backbone",
            network.backbone,
            (images,),
            ["images"],
            ["activations", *extra_names],
            batched[:1],
            num_classes,
        ),
        Graph(
            "head",
            network.head,
            (activations, *extras),
            ["activations", *extra_names],
            ["logits"],
            batched,
            num_classes,
        ),
        *(masked_head_graph(network, activations, extras, probabilities=p) for p in (False, True)),
    ]
    info: dict[str, Any] = {  # the manifest's shape fields
        "input_shape": list(model.input_shape),
        "activation_shape": list(activations.shape[1:]),
        "extra_shapes": [list(e.shape[1:]) for e in extras],
        "masked_head": {
            g.name: "factorised" if isinstance(g.module, FactorisedHead) else "explicit"
            for g in graphs[2:]
        },
        "precision": precision,
    }
    if precision == "fp16":
        graphs += [fp16_graph(g, network) for g in graphs if g.kind != "head"]
    return graphs, info


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and its optimiser's per-pass INFO logs."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.WARNING)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(graph: Graph, path: Path, opset: int = OPSET) -> float:
    """Write ``graph`` to ``path``; returns its parity error against PyTorch (ONNX Runtime CPU)."""
    try:
        with _quiet_exporter():
            torch.onnx.export(
                graph.module,
                graph.args,
                str(path),
                input_names=graph.inputs,
                output_names=graph.outputs,
                dynamic_shapes=graph.dynamic_shapes,
                opset_version=opset,
                dynamo=True,  # the legacy tracer bakes in mask and class counts
                external_data=False,  # one self-contained file per graph (all under 2 GB)
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same here
        raise ExportError(f"could not export {path.name}: {exc}") from exc
    return check_parity(graph, path)


def _parity_inputs(graph: Graph) -> tuple[Tensor, ...]:
    """Example inputs with other batch, mask and target counts than at export (dynamic dims)."""
    generator = torch.Generator().manual_seed(1)
    if graph.kind == "backbone":
        return (torch.randn(3, *graph.args[0].shape[1:], generator=generator),)
    activations, *rest = graph.args
    tensors = [torch.rand(3, *activations.shape[1:], generator=generator)]
    if graph.kind == "head":
        return (*tensors, *(torch.rand(3, *e.shape[1:], generator=generator) for e in rest))
    masks, _classes, *extras = rest
    tensors.append((torch.rand(3, 5, masks.shape[2], generator=generator) < 0.5).float())
    tensors.append(torch.tensor([[0], [graph.num_classes // 2], [graph.num_classes - 1]]))
    return (*tensors, *(torch.rand(3, *e.shape[1:], generator=generator) for e in extras))


def check_parity(graph: Graph, path: Path) -> float:
    """Largest |ONNX Runtime - PyTorch| over the outputs, relative to the PyTorch scale."""
    inputs = _parity_inputs(graph)
    with torch.no_grad():
        expected = graph.module(*inputs)
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {n: t.numpy() for n, t in zip(graph.inputs, inputs, strict=True)})
    error = max(
        float((torch.from_numpy(a) - e).abs().max() / e.abs().max().clamp_min(1e-12))
        for a, e in zip(actual, expected, strict=True)
    )
    if not error <= graph.tolerance:
        raise ExportError(
            f"{path.name}: ONNX Runtime differs from PyTorch by {error:.2e} (relative), "
            f"above {graph.tolerance:.0e}"
        )
    return error


def identity(model: LoadedModel) -> dict[str, Any]:
    """``Manifest.identity`` of an export of ``model`` (JSON-normalised, as stored)."""
    document = {
        "model": model.name,
        "source": model.source,
        "weights": model.weights_id,
        "layer": model.layer,
        "num_classes": model.num_classes,
        "preprocessing": model.preprocess.describe(),
    }
    return cast(dict[str, Any], json.loads(json.dumps(document)))


def export_model(
    model: LoadedModel,
    output: Path,
    *,
    opset: int = OPSET,
    engines: Callable[[Path, Manifest], dict[str, Any]] | None = None,
    precision: str = "fp32",
) -> Manifest:
    """Export ``model`` to ``output`` (replaced whole, only once everything succeeded).

    ``precision="fp16"`` adds the FP16 graphs (module docstring).

    ``engines(directory, manifest)`` may add files (TensorRT engines) built from the ONNX graphs;
    what it returns is stored under the manifest's ``"tensorrt"`` key.
    """
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.module.modules()):
        raise ModelError(
            f"{model.source}: TorchScript modules cannot be exported to ONNX by fdpipe (the "
            f"exporter needs an eager module): give the model as module:factory or file.py:factory "
            f"to export it; TorchScript models are explained with --runtime torch"
        )
    output = Path(output)
    check_export_target(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        if precision not in GRAPH_PRECISIONS:
            raise ExportError(f"graphs are exported in {' or '.join(GRAPH_PRECISIONS)}")
        graphs, info = _graphs(model, precision=precision)
        files: dict[str, dict[str, Any]] = {}
        parity: dict[str, float] = {}
        for graph in graphs:
            path = staging / f"{graph.name}.onnx"
            log.info("exporting %s", path.name)
            parity[path.name] = export_graph(graph, path, opset)
            files[path.name] = {"inputs": graph.inputs, "outputs": graph.outputs}
        manifest = Manifest(
            **identity(model),
            opset=opset,
            fdpipe_version=version("fdpipe"),
            torch_version=torch.__version__,
            parity_max_relative_error=parity,
            files=files,  # checksums are added once every file is written
            **info,
        )
        if engines is not None:
            manifest.tensorrt = engines(staging, manifest)
        for path in sorted(staging.iterdir()):
            entry = files.setdefault(path.name, {})
            entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
        (staging / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        _replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s", output)
    return manifest


def check_export_target(output: Path) -> None:
    """Refuse an ``output`` that is not new, empty or an earlier fdpipe export: never delete
    files that export did not write. Checked before any work and again before the swap."""
    output = Path(output)
    if not output.exists() and not output.is_symlink():
        return
    if not output.is_dir() or output.is_symlink():
        raise ExportTargetError(f"{output} exists and is not a directory: not replaced")
    names = {path.name for path in output.iterdir()}
    if not names:
        return
    try:
        manifest = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
        listed = set(manifest["files"]) | {MANIFEST}
    except (OSError, ValueError, TypeError, KeyError):
        listed = set()
    if not listed or names - listed:
        strays = sorted(names - listed)[:3]
        raise ExportTargetError(
            f"{output} holds files that are not an fdpipe export ({', '.join(strays)}"
            f"{', ...' if len(names - listed) > 3 else ''}): not replaced. "
            "Choose a new or empty directory."
        )


def _replace(staging: Path, output: Path) -> None:
    if output.exists():
        check_export_target(output)  # it may have changed while the export ran
        retired = output.with_name(f".{output.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        output.rename(retired)
        staging.rename(output)
        shutil.rmtree(retired)
    else:
        staging.rename(output)


def load_manifest(directory: Path, model: LoadedModel) -> Manifest:
    """The manifest of ``directory``, refused unless it was exported from ``model``."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactMismatch(f"{directory} has no {MANIFEST}: create it with `fdpipe export`")
    try:
        manifest = Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactMismatch(f"{path} is not a valid manifest ({exc}): re-export") from None
    stored = manifest.identity()
    wrong = [
        f"{k} is {stored[k]!r}, not {v!r}" for k, v in identity(model).items() if stored[k] != v
    ]
    if wrong:
        raise ArtifactMismatch(
            f"artifacts in {directory} were exported for another model: {'; '.join(wrong)}. "
            f"Re-run `fdpipe export --model {model.source} --layer {model.layer}`."
        )
    return manifest


# (resolved path, device, inode, size, mtime) -> sha256 already checked in this process
_verified: dict[tuple[str, int, int, int, int], str] = {}


def artifact(directory: Path, manifest: Manifest, name: str) -> Path:
    """Path of file ``name`` of an export, after checking it against its manifest entry.

    The whole file's sha256 must equal the manifest's: a modified graph of the same size is
    refused. The hash is computed once per process per unchanged file.
    """
    path = Path(directory) / name
    entry = manifest.files.get(name)
    if not isinstance(entry, dict) or not path.is_file():
        raise ArtifactMismatch(f"{path} is missing: re-run `fdpipe export`")
    expected = entry.get("sha256")
    if not isinstance(expected, str):
        raise ArtifactMismatch(f"{MANIFEST} in {directory} has no sha256 for {name}: re-export")
    status = path.stat()
    key = (str(path.resolve()), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    if _verified.get(key) != expected:
        if sha256_file(path) != expected:
            raise ArtifactMismatch(
                f"{path} does not match the sha256 in {MANIFEST}: it was modified; re-export it"
            )
        _verified[key] = expected
    return path


__all__ = [
    "MANIFEST",
    "OPSET",
    "ArtifactMismatch",
    "ExportError",
    "ExportTargetError",
    "artifact",
    "check_export_target",
    "check_parity",
    "export_graph",
    "export_model",
    "identity",
    "load_manifest",
    "masked_head_graph",
]
