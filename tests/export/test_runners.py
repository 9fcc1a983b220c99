"""``OnnxRunner``'s IO binding, run on the CPU provider: the code the CUDA provider runs, with
torch buffers bound in place and no ``session.run`` (numpy in, numpy out)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from fdpipe.export.runners import OnnxRunner
from onnx import TensorProto, helper


def graph(path: Path, output_dims: list[str | int]) -> Path:
    """scores = x * 2 (float32) and positions = argmax(x) (int64) of x: (batch, 5); the scores'
    dims as given (a name no input has: ONNX Runtime allocates the outputs itself)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["scores"]),
        helper.make_node("ArgMax", ["x"], ["positions"], axis=1, keepdims=0),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes, "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, output_dims),
             helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch"])],
            [two],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=9,  # what ONNX Runtime reads, whatever onnx writes by default
    )  # fmt: skip
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("output_dims", [["batch", 5], ["rows", 5]])
def test_io_binding_on_the_cpu(tmp_path: Path, output_dims: list[str | int]) -> None:
    runner = OnnxRunner(graph(tmp_path / "g.onnx", output_dims), ["CPUExecutionProvider"])
    session = runner.session

    def no_numpy_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("session.run: a copy through numpy")

    session.run = no_numpy_run  # type: ignore[method-assign]
    x = torch.randn(3, 5)
    scores, positions = runner(x)
    assert torch.equal(scores, x * 2) and scores.dtype == torch.float32
    assert torch.equal(positions, x.argmax(1)) and positions.dtype == torch.int64
    strided = torch.randn(5, 3).T  # not contiguous: bound through a contiguous copy
    assert torch.equal(runner(strided)[0], strided * 2)
