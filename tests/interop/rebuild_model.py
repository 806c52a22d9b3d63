#!/usr/bin/env python3
"""Rebuilds a model that Confide exported from its card and its safetensors file alone, in
plain Python (standard library only, no Confide code), and checks that it scores exactly as
Confide reported on the test set.

This is the check behind "the model card and the safetensors export describe the
architecture fully": another tool that reads only these two files gets the same predictions.

    python3 tests/interop/rebuild_model.py CARD.json MODEL.safetensors TEST.csv LABEL REPORT.json

The safetensors layout (an 8-byte little-endian header length, a JSON header of dtype, shape
and data offsets, then the raw data) is that of https://github.com/huggingface/safetensors
(its README, "Format"). Each layer follows the definition in Confide's docs/models.md.
"""

import csv
import json
import math
import struct
import sys

EPS = 1e-5


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        start, end = meta["data_offsets"]
        count = (end - start) // 4
        values = list(struct.unpack("<%df" % count, data[start:end]))
        tensors[name] = (meta["shape"], values)
    return tensors


def layer_list(spec):
    """The card's layers, or a preset written as its layers."""
    if spec["kind"] == "layers":
        return spec["layers"], spec.get("input_shape") or [spec["input_dim"]], "softmax"
    widths = spec["hidden"] + [1 if spec["kind"] == "logistic" else spec["classes"]]
    layers = []
    for i, w in enumerate(widths):
        if i:
            layers.append({"type": "relu"})
        layers.append({"type": "dense", "units": w})
    return layers, [spec["input_dim"]], "sigmoid" if spec["kind"] == "logistic" else "softmax"


def normalise(values):
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return [(v - mean) / math.sqrt(var + EPS) for v in values]


def dense(x, w, b):
    d_in, d_out = len(x), len(b)
    return [b[j] + sum(x[i] * w[i * d_out + j] for i in range(d_in)) for j in range(d_out)]


def forward(layers, tensors, input_shape, record):
    """One record through the layers. Activations: ("flat", [..]), ("img", c, h, w, [..]),
    ("seq", [[..], ..]) or ("tok", [ids])."""
    if layers[0]["type"] == "embedding":
        act = ("tok", [int(v) for v in record])
    elif len(input_shape) == 3:
        c, h, w = input_shape
        act = ("img", c, h, w, list(record))
    elif len(input_shape) == 2:
        t, d = input_shape
        act = ("seq", [list(record[s * d : (s + 1) * d]) for s in range(t)])
    else:
        act = ("flat", list(record))
    for i, layer in enumerate(layers):
        kind = layer["type"]
        weight = tensors.get("layers.%d.weight" % i, (None, None))[1]
        bias = tensors.get("layers.%d.bias" % i, (None, None))[1]
        if kind == "dense":
            if act[0] == "flat":
                act = ("flat", dense(act[1], weight, bias))
            else:
                act = ("seq", [dense(v, weight, bias) for v in act[1]])
        elif kind == "conv2d":
            _, c, h, w, x = act
            o, k = layer["channels"], layer["kernel"]
            s, p = layer.get("stride", 1), layer.get("padding", 0)
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            out = []
            for oc in range(o):
                for y in range(oh):
                    for xx in range(ow):
                        z = bias[oc]
                        for ic in range(c):
                            for ky in range(k):
                                iy = y * s + ky - p
                                if iy < 0 or iy >= h:
                                    continue
                                for kx in range(k):
                                    ix = xx * s + kx - p
                                    if 0 <= ix < w:
                                        z += weight[((oc * c + ic) * k + ky) * k + kx] * x[(ic * h + iy) * w + ix]
                        out.append(z)
            act = ("img", o, oh, ow, out)
        elif kind in ("max_pool2d", "avg_pool2d"):
            _, c, h, w, x = act
            size = layer["size"]
            s = layer.get("stride") or size
            oh, ow = (h - size) // s + 1, (w - size) // s + 1
            out = []
            for ch in range(c):
                for y in range(oh):
                    for xx in range(ow):
                        win = [x[(ch * h + y * s + dy) * w + xx * s + dx] for dy in range(size) for dx in range(size)]
                        out.append(max(win) if kind == "max_pool2d" else sum(win) / len(win))
            act = ("img", c, oh, ow, out)
        elif kind == "group_norm":
            _, c, h, w, x = act
            g = layer["groups"]
            per = (c // g) * h * w
            out = []
            for grp in range(g):
                out.extend(normalise(x[grp * per : (grp + 1) * per]))
            out = [v * weight[j // (h * w)] + bias[j // (h * w)] for j, v in enumerate(out)]
            act = ("img", c, h, w, out)
        elif kind == "layer_norm":
            norm = lambda v: [a * g + b for a, g, b in zip(normalise(v), weight, bias)]
            act = ("flat", norm(act[1])) if act[0] == "flat" else ("seq", [norm(v) for v in act[1]])
        elif kind == "embedding":
            dim = layer["dim"]
            act = ("seq", [weight[t * dim : (t + 1) * dim] for t in act[1]])
        elif kind == "flatten":
            if act[0] == "img":
                act = ("flat", act[4])
            elif act[0] == "seq":
                act = ("flat", [v for row in act[1] for v in row])
        elif kind == "dropout":
            pass  # the identity when predicting
        else:
            f = {
                "relu": lambda v: max(0.0, v),
                "tanh": math.tanh,
                "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)),
                "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
            }[kind]
            if act[0] == "img":
                act = ("img", act[1], act[2], act[3], [f(v) for v in act[4]])
            elif act[0] == "seq":
                act = ("seq", [[f(v) for v in row] for row in act[1]])
            else:
                act = ("flat", [f(v) for v in act[1]])
    assert act[0] == "flat"
    return act[1]


def probabilities(logits, output):
    if output == "sigmoid":
        p = 1.0 / (1.0 + math.exp(-logits[0]))
        return [1.0 - p, p]
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    return [v / sum(e) for v in e]


def main():
    card_path, weights_path, test_path, label, report_path = sys.argv[1:6]
    with open(card_path) as f:
        card = json.load(f)
    with open(report_path) as f:
        report = json.load(f)
    tensors = read_safetensors(weights_path)
    assert sorted(tensors) == sorted(card["tensors"]), "the file holds the card's tensors"
    layers, input_shape, output = layer_list(card["spec"])
    names = card["feature_names"]
    std = card.get("standardization")
    correct, nll, rows = 0, 0.0, 0
    with open(test_path) as f:
        for row in csv.DictReader(f):
            x = [float(row[n]) for n in names]
            if std:
                x = [(v - m) / s for v, m, s in zip(x, std["mean"], std["std"])]
            p = probabilities(forward(layers, tensors, input_shape, x), output)
            y = int(row[label])
            correct += max(range(len(p)), key=lambda j: p[j]) == y
            nll -= math.log(min(1.0, max(1e-15, p[y])))
            rows += 1
    acc, loss = correct / rows, nll / rows
    print(json.dumps({"rows": rows, "correct": correct, "accuracy": acc, "log_loss": loss,
                      "confide_accuracy": report["test_accuracy"], "confide_log_loss": report["test_log_loss"]}))
    assert abs(acc - report["test_accuracy"]) < 1e-9, "accuracy differs from Confide's"
    assert abs(loss - report["test_log_loss"]) < 1e-4, "log-loss differs from Confide's"
    print("rebuilt from the card and the safetensors file: the same %d of %d correct" % (correct, rows))


if __name__ == "__main__":
    main()
