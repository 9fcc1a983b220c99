"""Cut a classifier at a named module into backbone and head: torch.fx graphs, or for a
TorchScript archive its top-level children run in order.

The head never works in place: an in-place op after the cut (DenseNet's ``F.relu(features,
inplace=True)``, a ``ReLU(inplace=True)`` module) would overwrite the shared activations and break
autograd on them, so the head gets out-of-place copies of such ops (the caller's modules are not
touched). A layer whose output is tokens or channels-last (``export/layout.py``) is turned into a
(B, K, h, w) map at the end of the backbone and back at the start of the head; the prefix tokens
travel to the head as its first extra input, unmasked.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
from fdpipe.export.layers import check_layer
from fdpipe.export.layout import Layout, detect_layout
from fdpipe.export.request import ModelError
from fdpipe.export.tracing import ValueTracer
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
    """Nodes that hold no per-image value and can be copied to either side: attributes, and
    forward arguments other than the image (timm's ``attn_mask=None``), which take their
    defaults."""
    return node.op == "get_attr" or (node.op == "placeholder" and node.prev.op == "placeholder")


SIZE_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod)


def _is_size(node: fx.Node) -> bool:
    """A number computed from tensor sizes only (``x.shape[1] // 7``)."""
    if node.op == "call_function" and node.target is getattr:
        return bool(node.args[1] == "shape")
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        first = node.args[0]
        return isinstance(first, fx.Node) and _is_size(first)
    if node.op == "call_function" and node.target in SIZE_ARITHMETIC:
        inputs = node.all_input_nodes
        return bool(inputs) and all(_is_size(n) for n in inputs)
    return False


def _to_map(graph: fx.Graph, output: fx.Node, layout: Layout) -> list[fx.Node]:
    """Backbone side: the layer's output as a (B, K, h, w) map, then the prefix tokens."""
    if layout.kind == "channels-last":
        return [graph.call_method("permute", (output, 0, 3, 1, 2))]
    if layout.kind == "map":
        return [output]
    patches = graph.call_function(
        operator.getitem, (output, (slice(None), slice(layout.prefix, None)))
    )
    grid = graph.call_method(
        "unflatten", (graph.call_method("transpose", (patches, 1, 2)), 2, layout.grid)
    )
    if not layout.prefix:
        return [grid]
    prefix = graph.call_function(
        operator.getitem, (output, (slice(None), slice(None, layout.prefix)))
    )
    return [grid, prefix]


def _from_map(graph: fx.Graph, layout: Layout) -> fx.Node:
    """Head side: placeholders for the map (and prefix tokens), the layer's output rebuilt."""
    activations = graph.placeholder("activations")
    if layout.kind == "channels-last":
        return graph.call_method("permute", (activations, 0, 2, 3, 1))
    if layout.kind == "map":
        return activations
    tokens = graph.call_method("transpose", (graph.call_method("flatten", (activations, 2)), 1, 2))
    if not layout.prefix:
        return tokens
    prefix = graph.placeholder("prefix_tokens")
    return graph.call_function(torch.cat, ([prefix, tokens], 1))


def split_at(
    model: nn.Module, layer: str, input_shape: tuple[int, ...] | None = None
) -> SplitNetwork:
    """Split ``model`` at the output of module ``layer``.

    Tensors computed before the cut and read after it (residual branches that jump over it)
    become extra backbone outputs and extra head inputs, so the head never re-runs the backbone.
    With ``input_shape`` (C, H, W) the layer's layout is found on a probe batch and the split
    checked on it (``verify_split``); without it the layer's output is taken as a map as it is.
    """
    check_layer(model, layer)
    scripted = isinstance(model, torch.jit.ScriptModule)  # children in order: maps only
    layout = (
        Layout() if input_shape is None or scripted else layer_layout(model, layer, input_shape)
    )
    parameter = next(model.parameters(), torch.empty(0))
    probe = None if input_shape is None else _probe(input_shape, parameter.device)
    network = _split(model, layer, layout, probe)
    if input_shape is not None:
        verify_split(model, network, input_shape)
    return network


def _probe(input_shape: tuple[int, ...], device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, *input_shape, generator=generator).to(device)


@torch.no_grad()
def layer_layout(model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> Layout:
    """The layout of ``layer``'s output on a probe batch, or ModelError naming the layer."""
    shapes: list[tuple[int, ...]] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: shapes.append(tuple(out.shape)) if isinstance(out, Tensor) else None
    )
    parameter = next(model.parameters(), torch.empty(0))
    try:
        model(_probe(input_shape, parameter.device))
    except Exception as exc:
        raise ModelError(f"the model does not run: {type(exc).__name__}: {exc}") from None
    finally:
        handle.remove()
    if not shapes:
        raise ModelError(f"layer {layer!r} gives no tensor on the model's forward")
    try:
        layout = detect_layout(model, shapes[-1], (int(input_shape[-2]), int(input_shape[-1])))
    except ModelError as exc:
        raise ModelError(f"layer {layer!r} {exc}: CAMs need a map of the image") from None
    return layout


def _trace(model: nn.Module, layer: str, probe: Tensor | None) -> fx.Graph:
    """torch.fx's graph of ``model``, ``layer`` one node; a forward that branches on values is
    traced along a probe batch (``export/tracing.py``) when there is one."""
    tracer = _CutTracer(layer)
    try:
        return tracer.trace(model)
    except Exception as exc:  # fx raises many types on dynamic control flow
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if probe is not None:
        try:
            with torch.no_grad():
                leaf = tracer.is_leaf_module
                return ValueTracer(probe, leaf, autowrap_functions=_untraceable()[1]).trace(model)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise ModelError(
        f"cannot cut this model at {layer!r}: torch.fx cannot trace it ({first}). Give a "
        f"model whose forward has no data-dependent Python control flow"
    )


def _split(
    model: nn.Module, layer: str, layout: Layout, probe: Tensor | None = None
) -> SplitNetwork:
    if isinstance(model, torch.jit.ScriptModule):
        return _split_scripted(model, layer)
    graph = _trace(model, layer, probe)
    nodes = list(graph.nodes)
    cut = next(n for n in nodes if n.op == "call_module" and n.target == layer)
    before = set(nodes[: nodes.index(cut) + 1])
    after = [n for n in nodes[nodes.index(cut) + 1 :] if n.op != "output"]

    # Tensors from before the cut that the head reads, in a stable order. Sizes read before the
    # cut (Swin's ``B, H, W, C = x.shape``) are read again in the head, from its own inputs,
    # as the masked head runs on more rows than the backbone.
    extras: list[fx.Node] = []

    def need(arg: fx.Node) -> None:
        if arg not in before or arg is cut or _is_free(arg) or arg in extras:
            return
        if _is_size(arg):
            for source in arg.all_input_nodes:
                need(source)
        else:
            extras.append(arg)

    output = next(n for n in nodes if n.op == "output")
    for node in [*after, output]:
        for arg in node.all_input_nodes:
            need(arg)

    backbone_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: nodes.index(cut) + 1]:
        env[node] = backbone_graph.node_copy(node, lambda n: env[n])
    outs = [*_to_map(backbone_graph, env[cut], layout), *(env[e] for e in extras)]
    backbone_graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    backbone = fx.GraphModule(model, backbone_graph, class_name="Backbone")
    backbone.graph.eliminate_dead_code()
    backbone.recompile()

    head_graph = fx.Graph()
    head_env: dict[fx.Node, fx.Node] = {cut: _from_map(head_graph, layout)}
    for i, extra in enumerate(extras):
        head_env[extra] = head_graph.placeholder(f"extra_{i}")

    def lookup(n: fx.Node) -> fx.node.Argument:
        if n.op == "placeholder" and n not in head_env:  # a forward argument: its default
            return n.args[0] if n.args else None
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
    images = _probe(input_shape, network.device)
    with torch.no_grad():
        try:
            activations, extras = network.features(images)
            logits = network.head(activations, *extras)
        except Exception as exc:
            raise ModelError(
                f"the model cut at {network.layer!r} does not run: {type(exc).__name__}: {exc}"
            ) from None
        try:
            kind = detect_layout(
                network, activations.shape, (input_shape[-2], input_shape[-1])
            ).kind
        except ModelError:
            kind = "none"
        if kind != "map":
            raise ModelError(
                f"layer {network.layer!r} gives activations of shape {tuple(activations.shape)}, "
                f"not a (B, K, h, w) feature map of the image: CAMs need a convolutional layer, "
                f"or the tokens of a vision transformer's block"
            )
        expected = model(images)
    error = float((logits - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    if not error <= tolerance:
        raise ModelError(
            f"cutting the model at {network.layer!r} changes its output (relative error "
            f"{error:.1e}): its forward does more than run its children in order"
        )


__all__ = ["split_at", "verify_split"]
