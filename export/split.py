"""Cut any fx-traceable classifier at a named module into backbone and head graphs."""

from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx
from fdpipe.export.models import check_layer
from fdpipe.kernels.network import SplitNetwork
from torch import nn


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


def _out_of_place(head: fx.GraphModule) -> None:
    """In-place ops in the head (``ReLU(inplace=True)`` right after the cut, as in SqueezeNet's
    classifier) would overwrite the activations that gradients are taken against: make them
    out of place. Same values; only the head, which is small, allocates a little more."""
    for module in head.modules():
        if getattr(module, "inplace", False) is True:
            setattr(module, "inplace", False)  # noqa: B010 (typed as a Module attribute)
    for node in head.graph.nodes:
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}


def split_at(model: nn.Module, layer: str) -> SplitNetwork:
    """Split ``model`` at the output of module ``layer``.

    Tensors computed before the cut and read after it (residual branches that jump over it)
    become extra backbone outputs and extra head inputs, so the head never re-runs the backbone.
    """
    check_layer(model, layer)
    tracer = _CutTracer(layer)
    graph = tracer.trace(model)
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
    head_graph.output(fx.map_arg(output.args[0], lookup))
    head = fx.GraphModule(model, head_graph, class_name="Head")
    head.graph.eliminate_dead_code()
    _out_of_place(head)
    head.recompile()
    return SplitNetwork(backbone, head, layer)


__all__ = ["split_at"]
