"""Cut a classifier at a named module into backbone and head: torch.fx graphs, or for a
TorchScript archive its top-level children run in order.

The head never works in place: an in-place op after the cut (DenseNet's ``F.relu(features,
inplace=True)``, a ``ReLU(inplace=True)`` module) would overwrite the shared activations and break
autograd on them, so the head gets out-of-place copies of such ops (the caller's modules are not
touched). A layer whose output is not a (B, K, h, w) map (a vision transformer's tokens) is
refused with the fix in the message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.fx as fx
from fdpipe.export.layers import check_layer
from fdpipe.export.request import ModelError
from fdpipe.kernels.network import SplitNetwork
from torch import Tensor, nn


def _untraceable() -> tuple[tuple[type[nn.Module], ...], tuple[Callable[..., object], ...]]:
    """Modules and functions a model library marks as not fx-traceable (timm's "same" padding
    convolutions and pooling compute shapes in Python): they stay whole nodes."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


class _CutTracer(fx.Tracer):
    """Keeps the target module whole (one node), so the cut lies exactly at its output."""

    def __init__(self, target: str) -> None:
        leaves, functions = _untraceable()
        super().__init__(autowrap_functions=functions)
        self.target = target
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name == self.target
            or isinstance(m, self.leaves)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _is_free(node: fx.Node) -> bool:
    """Nodes that hold no per-image value and can be copied to either side."""
    return node.op == "get_attr"


def split_at(
    model: nn.Module, layer: str, input_shape: tuple[int, ...] | None = None
) -> SplitNetwork:
    """Split ``model`` at the output of module ``layer``.

    Tensors computed before the cut and read after it (residual branches that jump over it)
    become extra backbone outputs and extra head inputs, so the head never re-runs the backbone.
    With ``input_shape`` (C, H, W) the split is checked on a probe batch (``verify_split``).
    """
    check_layer(model, layer)
    network = _split(model, layer)
    if input_shape is not None:
        verify_split(model, network, input_shape)
    return network


def _split(model: nn.Module, layer: str) -> SplitNetwork:
    if isinstance(model, torch.jit.ScriptModule):
        return _split_scripted(model, layer)
    tracer = _CutTracer(layer)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types on dynamic control flow
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot cut this model at {layer!r}: torch.fx cannot trace it ({first}). Give a "
            f"model whose forward has no data-dependent Python control flow"
        ) from None
    nodes = list(graph.nodes)
    cut = next(n for n in nodes if n.op == "call_module" and n.target == layer)
    before = set(nodes[: nodes.index(cut) + 1])
    after = [n for n in nodes[nodes.index(cut) + 1 :] if n.op != "output"]

    # Values from before the cut that the head reads, in a stable order.
    extras: list[fx.Node] = []
    for node in after:
        for arg in node.all_input_nodes:
            if arg in before and arg is not cut and not _is_free(arg) and arg not in extras:
                extras.append(arg)
    output = next(n for n in nodes if n.op == "output")
    for arg in output.all_input_nodes:
        if arg in before and arg is not cut and arg not in extras:
            extras.append(arg)

    backbone_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: nodes.index(cut) + 1]:
        env[node] = backbone_graph.node_copy(node, lambda n: env[n])
    outs = [env[cut], *(env[e] for e in extras)]
    backbone_graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    backbone = fx.GraphModule(model, backbone_graph, class_name="Backbone")
    backbone.graph.eliminate_dead_code()
    backbone.recompile()

    head_graph = fx.Graph()
    head_env: dict[fx.Node, fx.Node] = {cut: head_graph.placeholder("activations")}
    for i, extra in enumerate(extras):
        head_env[extra] = head_graph.placeholder(f"extra_{i}")

    def lookup(n: fx.Node) -> fx.Node:
        if n not in head_env:  # a parameter/buffer read before the cut: copy the read itself
            head_env[n] = head_graph.node_copy(n, lookup)
        return head_env[n]

    for node in after:
        head_env[node] = head_graph.node_copy(node, lookup)
        if node.op == "call_function" and node.kwargs.get("inplace"):
            head_env[node].kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_method" and str(node.target).endswith("_") and node.target != "__":
            head_env[node].target = str(node.target)[:-1]  # x.relu_() -> x.relu()
    head_graph.output(fx.map_arg(output.args[0], lookup))
    head = fx.GraphModule(_out_of_place(model, head_graph), head_graph, class_name="Head")
    head.graph.eliminate_dead_code()
    head.recompile()
    return SplitNetwork(backbone, head, layer)


def _out_of_place(model: nn.Module, graph: fx.Graph) -> dict[str, object]:
    """The head's submodules and attributes, with copies (``inplace=False``) of the modules
    that work in place."""
    modules: dict[str, object] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        if getattr(module, "inplace", False):
            module = copy.copy(module)
            module.inplace = False  # type: ignore[assignment]
        modules[str(node.target)] = module
    for node in graph.nodes:
        if node.op == "get_attr":
            owner, _, attribute = str(node.target).rpartition(".")
            modules[str(node.target)] = getattr(model.get_submodule(owner), attribute)
    return modules


class _Flatten(nn.Module):
    """``torch.flatten(x, 1)``: what a classifier's forward does between pooling and Linear."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1)


def _scripted_children(
    model: nn.Module, layer: str, prefix: str = ""
) -> list[tuple[str, nn.Module]]:
    """Children in order (dotted names), the one holding ``layer`` expanded if a Sequential."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if not layer.startswith(f"{full}."):
            out.append((full, child))
        elif getattr(child, "original_name", type(child).__name__) == "Sequential":
            out.extend(_scripted_children(child, layer, f"{full}."))
        else:
            raise ModelError(
                f"TorchScript archive: {layer!r} lies inside {full!r}, which is not a Sequential; "
                f"name a top-level child (or a Sequential's child) with --layer"
            )
    return out


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _chain(modules: list[nn.Module]) -> fx.GraphModule:
    """Modules run one after another (a Linear after a 4-D input gets a flatten first)."""
    sequence = nn.Sequential(*modules)
    return fx.GraphModule(sequence, _Leaves().trace(sequence), class_name="Chain")


def _split_scripted(model: torch.jit.ScriptModule, layer: str) -> SplitNetwork:
    """A TorchScript archive cannot be traced: its children are run in order, the cut after
    ``layer``, a flatten before the first Linear; the result must equal the archive's own forward
    on a probe batch, else the archive is refused."""
    children = _scripted_children(model, layer)
    names = [name for name, _ in children]
    if layer not in names:
        raise ModelError(f"TorchScript archive: {layer!r} is not among its children {names}")
    cut = names.index(layer) + 1
    head_modules: list[nn.Module] = []
    for _, child in children[cut:]:
        is_linear = getattr(child, "original_name", "") == "Linear"
        if is_linear and not any(isinstance(m, _Flatten) for m in head_modules):
            head_modules.append(_Flatten())
        head_modules.append(child)
    return SplitNetwork(_chain([child for _, child in children[:cut]]), _chain(head_modules), layer)


def verify_split(
    model: nn.Module, network: SplitNetwork, input_shape: tuple[int, ...], tolerance: float = 1e-4
) -> None:
    """Refuse a split that does not give the model's own logits, or a layer without a map."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, *input_shape, generator=generator).to(network.device)
    with torch.no_grad():
        try:
            activations, extras = network.features(images)
            logits = network.head(activations, *extras)
        except Exception as exc:
            raise ModelError(
                f"the model cut at {network.layer!r} does not run: {type(exc).__name__}: {exc}"
            ) from None
        if activations.ndim != 4:
            shape = tuple(activations.shape)
            hint = (
                "; for a vision transformer's (B, N, D) tokens, reshape them to (B, D, h, w) in "
                "a wrapper module (drop the class token) and name that module"
                if activations.ndim == 3
                else ""
            )
            raise ModelError(
                f"layer {network.layer!r} gives activations of shape {shape}, not a (B, K, h, w) "
                f"feature map: CAMs need a convolutional layer{hint}"
            )
        expected = model(images)
    error = float((logits - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    if not error <= tolerance:
        raise ModelError(
            f"cutting the model at {network.layer!r} changes its output (relative error "
            f"{error:.1e}): its forward does more than run its children in order"
        )


__all__ = ["split_at", "verify_split"]
