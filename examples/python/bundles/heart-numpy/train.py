"""A model owner's own training loop in plain NumPy: logistic regression for the four
Fed-Heart-Disease hospitals (examples/python/heart_numpy.toml).

It runs at each hospital's node, confined; the node sends the records and each round's global
model, and this loop returns only the trained weights. The node computes the update, clips it,
adds its noise share (client-level DP), encrypts and signs it.
"""

import numpy as np

import confide.client as cc

EPOCHS, BATCH, LEARNING_RATE = 2, 16, 0.05


def fit(ctx: cc.Context) -> None:
    x, y = ctx.arrays()
    y = y.astype(np.float32)
    rng = np.random.default_rng()
    for rnd in ctx.rounds():
        w = rnd.weights()
        weight, bias = w["layers.0.weight"], w["layers.0.bias"]  # [1, 13] and [1]
        for _ in range(EPOCHS):
            order = rng.permutation(len(x))
            for start in range(0, len(x), BATCH):
                batch = order[start : start + BATCH]
                xb, yb = x[batch], y[batch]
                p = 1.0 / (1.0 + np.exp(-(xb @ weight.T + bias)[:, 0]))
                g = (p - yb) / len(batch)
                weight = weight - LEARNING_RATE * (g @ xb)[None, :]
                bias = bias - LEARNING_RATE * g.sum(keepdims=True)
        print(f"round {rnd.number}: trained on {len(x)} records")  # stays in the node's log
        rnd.submit({"layers.0.weight": weight, "layers.0.bias": bias})
