"""The accountants, the partitioners and released models, against the `confide` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import confide
from conftest import ROOT, cli, cli_json, example_job


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_accountants_are_the_commands(accountant: str) -> None:
    eps = confide.epsilon(0.01, 1.1, 1000, 1e-5, accountant)
    out = cli_json("dp", "epsilon", "--q", "0.01", "--sigma", "1.1", "--steps", "1000",
                   "--delta", "1e-5", "--accountant", accountant)
    assert eps == out["epsilon"]
    s = confide.sigma(2.0, 0.01, 1000, 1e-5, accountant)
    assert confide.epsilon(0.01, s, 1000, 1e-5, accountant) <= 2.0 + 1e-9
    with pytest.raises(confide.AccountingError):
        confide.epsilon(0.01, -1.0, 1000, 1e-5, accountant)
    with pytest.raises(confide.UsageError):
        confide.epsilon(0.01, 1.0, 1000, 1e-5, "moments")


def test_partitions_are_seeded_complete_and_checked() -> None:
    labels = [i % 3 for i in range(60)]
    for how, extra in [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {"shards_per_owner": 2}),
                       ("quantity", {"beta": 1.0})]:
        parts = confide.partition(labels, 4, how, seed=7, **extra)
        assert parts == confide.partition(labels, 4, how, seed=7, **extra)
        assert sorted(i for p in parts for i in p) == list(range(60)), how
        assert all(p == sorted(p) for p in parts)
    natural = confide.partition(labels, 0, "natural", groups=["b", "a", "b"] * 20)
    assert [len(p) for p in natural] == [20, 40]
    with pytest.raises(confide.PartitionError):
        confide.partition(labels, 61, "iid")
    with pytest.raises(confide.PartitionError):
        confide.partition(labels, 2, "natural")
    with pytest.raises(confide.UsageError):
        confide.partition(labels, 2, "dirichlet")


def test_a_released_model_loads_as_arrays_and_scores_as_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = tmp_path / "report.json"
    cli("simulate", "--config", str(ROOT / "examples" / "digits_cnn.toml"), "--mode", "in-process", "--quiet",
        "--work-dir", str(run), "--report", str(report))
    model = confide.Model.load(run / "model")
    arrays = model.arrays()
    assert list(arrays) == model.card["tensors"] == model.names
    assert all(a.dtype == np.float32 for a in arrays.values())
    # The CNN's first layer is conv2d, in PyTorch's [out, in, k, k].
    first = model.card["spec"]["layers"][0]
    assert first["type"] == "conv2d" and arrays["layers.0.weight"].ndim == 4
    reported = json.loads(report.read_text())
    assert 0.9 < reported["test_accuracy"] <= 1.0
    # PyTorch's layout: dense weights transposed to [out, in], conv2d weights unchanged.
    torch_layout = model.torch_layout()
    assert any(layer["type"] == "dense" for layer in model.card["spec"]["layers"])
    for i, layer in enumerate(model.card["spec"]["layers"]):
        if layer["type"] == "dense":
            assert np.array_equal(torch_layout[f"layers.{i}.weight"], arrays[f"layers.{i}.weight"].T)
    assert np.array_equal(torch_layout["layers.0.weight"], arrays["layers.0.weight"])

    # A preset model (logistic regression on breast_homo, `plain`): score the test set with
    # numpy alone and get the accuracy Confide reported.
    run2 = tmp_path / "run2"
    report2 = tmp_path / "report2.json"
    cli("simulate", "--config", str(example_job(tmp_path, rounds=20, scheme="plain")), "--mode", "in-process",
        "--quiet", "--work-dir", str(run2), "--report", str(report2))
    m = confide.Model.load(run2 / "model" / "model.json")
    accuracy = score(m, ROOT / "data" / "breast_homo" / "breast_homo_test.csv", "y")
    assert accuracy == pytest.approx(json.loads(report2.read_text())["test_accuracy"], abs=1e-9)
    assert accuracy > 0.9

    # Weights that are not safetensors, and well-formed safetensors of the wrong shapes.
    (run2 / "model" / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(confide.ModelError):
        confide.Model.load(run2 / "model")
    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, name in enumerate(m.names)}).encode()
    (run2 / "model" / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * (4 * len(m.names)))
    with pytest.raises(confide.ModelError, match="expected F32"):
        confide.Model.load(run2 / "model")


def score(model: confide.Model, csv: Path, label: str) -> float:
    """The accuracy of a dense preset model (Confide's layout, y = x·W + b) on a CSV."""
    card = model.card
    header = csv.read_text().splitlines()[0].split(",")
    data = np.loadtxt(csv, delimiter=",", skiprows=1)
    names = card["feature_names"]
    x = data[:, [header.index(n) for n in names]]
    y = data[:, header.index(label)].astype(int)
    st = card["standardization"]
    if st:
        x = (x - np.asarray(st["mean"])) / np.asarray(st["std"])
    a = model.arrays()
    layers = len(a) // 2
    for i in range(layers):
        x = x @ a[f"layers.{i}.weight"] + a[f"layers.{i}.bias"]
        if i + 1 < layers:
            x = np.maximum(x, 0.0)
    predicted = (x[:, 0] > 0).astype(int) if x.shape[1] == 1 else x.argmax(axis=1)
    return float((predicted == y).mean())
