"""Models imported from ONNX, from Python and from the command line: the same layer list, the
same weights, the same signed manifest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import confide
from conftest import DEMO_KEY, ROOT, cli, cli_json

ONNX = ROOT / "examples" / "onnx" / "digits_cnn.onnx"
FIXTURES = ROOT / "crates" / "ml" / "tests" / "onnx"


def test_model_from_onnx_signs_the_same_manifest_as_model_import_and_job_sign(tmp_path: Path) -> None:
    job = confide.Job.load(ROOT / "examples" / "digits_cnn.toml").model_from_onnx(ONNX)
    assert job.imported is not None
    assert [layer["type"] for layer in job.model["layers"]] == [
        "conv2d", "group_norm", "relu", "max_pool2d", "flatten", "dense"]
    assert job.model["input"] == [1, 8, 8] and job.model["classes"] == 10
    assert job.imported["parameters"] == 1386
    assert job.model["init"] == {"sha256": job.imported["init_sha256"]}

    # The command line: import, paste the section into the job file, sign.
    imported = cli_json("model", "import", str(ONNX), "--out", str(tmp_path / "model"))
    assert imported["init_sha256"] == job.imported["init_sha256"]
    section = (tmp_path / "model" / "model.toml").read_text()
    text = (ROOT / "examples" / "digits_cnn.toml").read_text()
    text = text.replace('"../data/', f'"{ROOT}/data/')
    text = re.sub(r"\n\[model\]\n.*?\n\]\n", "\n" + section.replace("[model]", "[model]", 1), text, flags=re.S)
    config = tmp_path / "model" / "job.toml"
    config.write_text(text)
    theirs = tmp_path / "cli.json"
    cli("job", "sign", "--config", str(config), "--key", str(DEMO_KEY), "--out", str(theirs))
    ours = tmp_path / "python.json"
    job.sign(confide.Identity.load(DEMO_KEY)).save(ours)
    assert ours.read_bytes() == theirs.read_bytes()
    assert job.imported["init_sha256"] in ours.read_text()

    # Weights that differ from the stated digest are refused when the job is read.
    (tmp_path / "model" / "init.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(confide.ManifestError, match="SHA-256"):
        confide.Job.load(config)
    assert cli("job", "sign", "--config", str(config), "--key", str(DEMO_KEY), "--out", str(tmp_path / "x.json"),
               check=False).returncode != 0


def test_unsupported_graphs_are_refused_by_operator(tmp_path: Path) -> None:
    job = confide.Job.load(ROOT / "examples" / "digits_cnn.toml")
    with pytest.raises(confide.ModelError, match="Softplus"):
        job.model_from_onnx(FIXTURES / "softplus.onnx")
    with pytest.raises(confide.ModelError, match="BatchNormalization"):
        job.model_from_onnx(FIXTURES / "batchnorm.onnx")
    # A graph whose input does not fit the job's data (6 features, not 64 pixels).
    with pytest.raises(confide.ConfideError):
        job.model_from_onnx(FIXTURES / "mlp_gemm.onnx")
    out = cli("model", "import", str(FIXTURES / "softplus.onnx"), "--out", str(tmp_path / "m"), check=False)
    assert out.returncode != 0 and "Softplus" in out.stderr
    assert not (tmp_path / "m").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    out = cli("model", "import", str(ONNX), "--out", str(tmp_path / "full"), check=False)
    assert out.returncode != 0 and "refusing to overwrite" in out.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
