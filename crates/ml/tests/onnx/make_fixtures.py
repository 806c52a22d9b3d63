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

import onnx
import torch
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
        "cnn": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(4, 6, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 1),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)),
                torch.randn(4, 1, 8, 8), {"opset_version": 21}),
        # The same CNN through the dynamo exporter (torch.export): GroupNormalization as one node,
        # the global average pool as ReduceMean over height and width.
        "cnn_dynamo": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(4, 6, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                                     nn.Conv2d(6, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 10)),
                       torch.randn(4, 1, 8, 8), {"opset_version": 21, "dynamo": True, "external_data": False}),
        # Layer norm and GELU as single nodes (opset 20).
        "layernorm": (nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 3)),
                      torch.randn(4, 6), {"opset_version": 20}),
        # The same at opset 14: the exporter decomposes layer norm into ReduceMean, Sub, Pow,
        # ReduceMean, Add, Sqrt, Div, Mul, Add.
        "layernorm_opset14": (nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)),
                              torch.randn(4, 6), {"opset_version": 14}),
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
        options = {"dynamo": False, **options}
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], **options)
        onnx.checker.check_model(onnx.load(str(path)))
        with torch.no_grad():
            y = model(x)
            if not isinstance(model[-1], nn.Softmax):
                y = torch.softmax(y, dim=1)
        (out / f"{name}.json").write_text(json.dumps({
            "input": x.tolist(),
            "probabilities": y.tolist(),
        }) + "\n")
        print(f"{path}: {path.stat().st_size} bytes, ops {[n.op_type for n in onnx.load(str(path)).graph.node]}")
    (out / "versions.json").write_text(json.dumps({
        "torch": torch.__version__, "onnx": onnx.__version__, "python": sys.version.split()[0],
    }, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
