"""Exports the CNN of examples/digits_cnn.toml from PyTorch to ONNX (examples/onnx/digits_cnn.onnx),
for `confide model import` and examples/digits_cnn_onnx.toml. Needs torch (not CI):

    python examples/onnx/export_digits_cnn.py examples/onnx/digits_cnn.onnx

The same layers as the TOML example: conv 3x3 to 8 channels with padding 1, group norm in 2
groups, ReLU, 2x2 max pool, flatten, dropout 0.1, and a linear layer to the 10 digits, on
1x8x8 images. PyTorch initialises the weights (seed 1); torch's default exporter (dynamo, opset 18+)
writes the graph.
"""

import sys

import torch
from torch import nn

torch.manual_seed(1)
net = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1),
    nn.GroupNorm(2, 8),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Dropout(0.1),
    nn.Linear(8 * 4 * 4, 10),
)
net.eval()
torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), sys.argv[1], input_names=["pixels"], output_names=["logits"],
                  opset_version=21, external_data=False)
print(sys.argv[1], sum(p.numel() for p in net.parameters()), "parameters, torch", torch.__version__)
