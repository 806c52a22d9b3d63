"""Makes the ONNX fixtures of crates/ml/tests/onnx.rs with PyTorch's own exporters.

Each fixture is a small model exported by `torch.onnx.export` in one of the patterns Confide
imports (or must refuse), with `<name>.json` beside it: a few input records and the
probabilities PyTorch computes for them, which the test compares with Confide's forward pass
on the imported weights. Run once with torch installed (it is not needed by the tests):

    python crates/ml/tests/onnx/make_fixtures.py crates/ml/tests/onnx

The outputs are committed; the versions that made them are recorded in versions.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

torch.manual_seed(7)


class MatMulAdd(nn.Module):
    """A linear layer written as x @ W + b: the exporter emits MatMul then Add."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_in, d_out) * 0.3)
        self.b = nn.Parameter(torch.randn(d_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


class TwoHeads(nn.Module):
    """Two outputs from one body: not a chain of layers (refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.a(h), self.b(h)


def randomise_norms(model: nn.Module) -> nn.Module:
    """Norm layers with a scale and shift that are not 1 and 0, so that the import must read them."""
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return model


def models() -> dict[str, tuple[nn.Module, torch.Tensor, dict]]:
    """name -> (model, example input, export options)."""
    table = torch.randint(0, 12, (4, 5))
    return {
        # nn.Linear: Gemm with transB = 1 (the TorchScript exporter).
        "mlp_gemm": (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1)),
                     torch.randn(4, 6), {"opset_version": 17}),
        # x @ W + b: MatMul, Add.
        "mlp_matmul": (nn.Sequential(MatMulAdd(6, 8), nn.Tanh(), MatMulAdd(8, 3)), torch.randn(4, 6),
                       {"opset_version": 17}),
        # A CNN on 1x8x8 images: conv, group norm (which this exporter decomposes into
        # InstanceNormalization between two reshapes, then Mul and Add), pools, global average pool.
        "cnn": (randomise_norms(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(4, 6, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 1),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))),
                torch.randn(4, 1, 8, 8), {"opset_version": 21}),
        # The same CNN through the dynamo exporter (torch.export): GroupNormalization as one node,
        # the global average pool as ReduceMean over height and width.
        "cnn_dynamo": (randomise_norms(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(4, 6, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                                     nn.Conv2d(6, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 10))),
                       torch.randn(4, 1, 8, 8), {"opset_version": 21, "dynamo": True, "external_data": False}),
        # Layer norm and GELU as single nodes (opset 20).
        "layernorm": (randomise_norms(nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))),
                      torch.randn(4, 6), {"opset_version": 20}),
        # The same at opset 14: the exporter decomposes layer norm into ReduceMean, Sub, Pow,
        # ReduceMean, Add, Sqrt, Div, Mul, Add.
        "layernorm_opset14": (randomise_norms(nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(),
                                                            nn.Linear(8, 3))),
                              torch.randn(4, 6), {"opset_version": 14}),
        # Dropout kept by a training-mode export (the expected probabilities are eval mode's).
        "dropout": (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 3)), torch.randn(4, 6),
                    {"opset_version": 17, "training": torch.onnx.TrainingMode.TRAINING,
                     "do_constant_folding": False}),
        # Two outputs (refused: not a chain).
        "two_heads": (TwoHeads(), torch.randn(4, 6), {"opset_version": 17, "output_names": ["a", "b"]}),
        # An embedding over 5 token ids, flattened, then a linear layer.
        "embedding": (nn.Sequential(nn.Embedding(12, 4), nn.Flatten(), nn.Linear(20, 3)), table,
                      {"opset_version": 17}),
        # An operator Confide does not import.
        "softplus": (nn.Sequential(nn.Linear(6, 8), nn.Softplus(), nn.Linear(8, 3)), torch.randn(4, 6),
                     {"opset_version": 17}),
        # Batch normalisation (refused: it mixes records).
        "batchnorm": (nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)), torch.randn(4, 6),
                      {"opset_version": 17, "do_constant_folding": False, "training": torch.onnx.TrainingMode.PRESERVE}),
    }


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (model, x, options) in models().items():
        model.eval()
        path = out / f"{name}.onnx"
        options = {"dynamo": False, "output_names": ["y"], **options}
        torch.onnx.export(model, (x,), str(path), input_names=["x"], **options)
        onnx.checker.check_model(onnx.load(str(path)))
        model.eval()
        with torch.no_grad():
            y = model(x)
            if isinstance(y, tuple):
                y = y[1]
            if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Softmax):
                y = torch.softmax(y, dim=1)
        (out / f"{name}.json").write_text(json.dumps({
            "input": x.tolist(),
            "probabilities": y.tolist(),
        }) + "\n")
        print(f"{path}: {path.stat().st_size} bytes, ops {[n.op_type for n in onnx.load(str(path)).graph.node]}")
    handmade(out)
    (out / "versions.json").write_text(json.dumps({
        "torch": torch.__version__, "onnx": onnx.__version__, "python": sys.version.split()[0],
    }, indent=2) + "\n")


def handmade(out: Path) -> None:
    """Graphs PyTorch does not write but other exporters do, built with onnx.helper: Gemm with
    transB = 0 and Gemm with its attributes left at their defaults (both stay Gemm in onnx-ir),
    and a max pool with auto_pad = SAME_UPPER (refused)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6)).astype(np.float32)

    def save(name: str, graph: onnx.GraphProto, probabilities: np.ndarray, data: np.ndarray) -> None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        onnx.save(model, str(out / f"{name}.onnx"))
        (out / f"{name}.json").write_text(json.dumps({"input": data.tolist(),
                                                      "probabilities": probabilities.tolist()}) + "\n")
        print(f"{out / name}.onnx: handmade, ops {[n.op_type for n in graph.node]}")

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    w = rng.standard_normal((6, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(3).astype(np.float32) * 0.1
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])
    plain = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm_plain", transB=0)], "gemm_plain", [x_in], [y_out],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    save("gemm_plain", plain, softmax(x @ w + b), x)
    defaults = helper.make_graph(
        [helper.make_node("Gemm", ["x", "wt", "b"], ["y"], name="gemm_defaults", transB=1)], "gemm_defaults",
        [x_in], [y_out], [numpy_helper.from_array(np.ascontiguousarray(w.T), "wt"), numpy_helper.from_array(b, "b")])
    save("gemm_defaults", defaults, softmax(x @ w + b), x)

    img = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    wp = rng.standard_normal((3, 16)).astype(np.float32)
    pooled = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["p"], name="pool_same", kernel_shape=[3, 3], strides=[2, 2],
                          auto_pad="SAME_UPPER"),
         helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
         helper.make_node("Gemm", ["f", "wp"], ["y"], name="head", transB=1, alpha=1.0, beta=1.0)],
        "pool_same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [numpy_helper.from_array(wp, "wp")])
    save("pool_same", pooled, np.zeros((1, 3), dtype=np.float32), img)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
