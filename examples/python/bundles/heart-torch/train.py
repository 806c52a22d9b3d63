"""A model owner's own PyTorch training loop: logistic regression for the four
Fed-Heart-Disease hospitals (examples/python/heart_torch.toml), the PyTorch counterpart of
bundles/heart-numpy. Outside CI: it needs an environment with torch.
"""

import torch
from torch import nn

import confide.client as cc

EPOCHS, BATCH, LEARNING_RATE = 2, 16, 0.05


class Net(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        # Named as Confide's layout expects: layers.0.weight [1, features], layers.0.bias [1].
        self.layers = nn.Sequential(nn.Linear(features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)[:, 0]


def fit(ctx: cc.Context) -> None:
    x, y = ctx.arrays()
    x, y = torch.from_numpy(x), torch.from_numpy(y).float()
    net = Net(x.shape[1])
    loss_fn = nn.BCEWithLogitsLoss()
    for rnd in ctx.rounds():
        rnd.load_into(net)
        opt = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
        for _ in range(EPOCHS):
            for batch in torch.randperm(len(x)).split(BATCH):
                opt.zero_grad()
                loss_fn(net(x[batch]), y[batch]).backward()
                opt.step()
        rnd.submit(net.state_dict())
