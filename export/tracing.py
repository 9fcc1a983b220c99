"""Tracing a model whose forward branches on values (Hugging Face's ``if pixel_values.dtype !=
...``, ``batch, channels, h, w = x.shape; if channels != ...``), which plain torch.fx refuses.

The trace runs a probe batch alongside: every node also holds its value on the probe, and Python
control flow takes the probe's branch (as Hugging Face's old ``HFTracer`` did). Sizes stay
symbolic, so the graph runs any batch size; the split is then checked against the model's own
forward on a probe batch (``export/split.py``), which catches a branch that depended on the probe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch.fx as fx
from torch import Tensor, nn
from torch.fx._symbolic_trace import _orig_module_call
from torch.fx.node import map_aggregate


def _value(a: Any) -> Any:
    if isinstance(a, fx.Proxy):
        return a.node.meta["value"]
    if isinstance(a, fx.Node):
        return a.meta["value"]
    return a


class _ValueProxy(fx.Proxy):
    """A proxy whose length (a tensor's rank, a shape's length) is its probe value's."""

    def __len__(self) -> int:
        return len(self.node.meta["value"])

    def __iter__(self) -> Iterator[fx.Proxy]:
        return iter([self[i] for i in range(len(self))])  # type: ignore[index]


class ValueTracer(fx.Tracer):
    def __init__(
        self, probe: Tensor, is_leaf: Callable[[nn.Module, str], bool], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.probe = probe
        self.leaf = is_leaf
        self._placeholders = 0
        self._inside_leaf = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self.leaf(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._inside_leaf:  # a leaf module computing its probe value reads real parameters
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(
        self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **named_rest: Any
    ) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **named_rest)
        values = map_aggregate(args, _value)
        named = map_aggregate(kwargs, _value)
        value: object = None
        if kind == "placeholder":  # the image, then forward arguments at their defaults
            value = self.probe if self._placeholders == 0 else (args[0] if args else None)
            self._placeholders += 1
        elif kind == "get_attr":
            owner, _, attr = str(target).rpartition(".")
            module = self.root
            for part in owner.split(".") if owner else []:
                module = module._modules[part]  # type: ignore[assignment]
            value = module._parameters.get(attr, module._buffers.get(attr))
            value = value if value is not None else module.__dict__.get(attr)
        elif kind == "call_function":
            value = target(*values, **named)
        elif kind == "call_method":
            value = getattr(values[0], target)(*values[1:], **named)
        elif kind == "call_module":
            self._inside_leaf = True
            try:
                value = _orig_module_call(self.root.get_submodule(target), *values, **named)
            finally:
                self._inside_leaf = False
        proxy.node.meta["value"] = value
        return proxy

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.node.meta["value"])

    def keys(self, obj: fx.Proxy) -> Any:
        return obj.node.meta["value"].keys()


__all__ = ["ValueTracer"]
