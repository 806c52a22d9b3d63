"""Shared helpers: the repository, the `confide` binary the package is checked against
(CONFIDE_BIN, or target/debug/confide), and running it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = ROOT / "examples" / "keys" / "model-owner.key"
DEMO_ID = "b547bdb0e95a80974d0ccd4b00544743"


def binary() -> Path:
    path = Path(os.environ.get("CONFIDE_BIN", ROOT / "target" / "debug" / "confide"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build` or set CONFIDE_BIN")
    return path


def cli(*args: str, env: Optional[dict[str, str]] = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs `confide ARGS`; with `check`, fails the test on a non-zero exit."""
    out = subprocess.run(
        [str(binary()), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )
    if check and out.returncode != 0:
        pytest.fail(f"confide {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def cli_json(*args: str, env: Optional[dict[str, str]] = None) -> Any:
    return json.loads(cli(*args, env=env).stdout)


def example_job(tmp: Path, rounds: int, scheme: str = "paillier", source: str = "breast_homo.toml") -> Path:
    """An example job with absolute data paths, `rounds` rounds and `scheme`."""
    text = (ROOT / "examples" / source).read_text()
    text = (
        text.replace('"../data/', f'"{ROOT}/data/')
        .replace('"policies/', f'"{ROOT}/examples/policies/')
        .replace('"keys/', f'"{ROOT}/examples/keys/')
    )
    text = text.replace("rounds = 80", f"rounds = {rounds}").replace("rounds = 10", f"rounds = {rounds}")
    text = text.replace('scheme = "paillier"', f'scheme = "{scheme}"')
    path = tmp / f"job-{rounds}-{scheme}.toml"
    path.write_text(text)
    return path
