"""The Python quick start (README, "Confide from Python"): sign the breast_homo job as its model
owner, submit it to a running coordinator, follow it, download the model and score it with
numpy. Start the daemons first, as the README's "The service in five commands" does (its first
three lines); then, from the repository's root:

    python examples/python/quickstart.py --control 127.0.0.1:7101 --fed fed

The job is examples/breast_homo.toml (80 rounds, `paillier`); the key is the examples' demo
model owner, which the example policies name.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import confide

ROOT = Path(__file__).resolve().parents[2]


def accuracy(model: confide.Model, csv: Path) -> float:
    """Scores the released logistic regression on a CSV (label `y`), in Confide's layout."""
    header = csv.read_text().splitlines()[0].split(",")
    data = np.loadtxt(csv, delimiter=",", skiprows=1)
    x = data[:, [header.index(n) for n in model.card["feature_names"]]]
    a = model.arrays()
    logit = x @ a["layers.0.weight"] + a["layers.0.bias"]
    return float(((logit[:, 0] > 0) == data[:, header.index("y")]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", default="127.0.0.1:7101", help="the coordinator's control address")
    parser.add_argument("--fed", default="fed", type=Path, help="the federation directory")
    parser.add_argument("--name", default="owner", help="your name in the federation directory")
    parser.add_argument("--job", default=ROOT / "examples/breast_homo.toml", type=Path, help="the job file")
    parser.add_argument("--out", default=Path("model"), type=Path, help="where to download the model")
    args = parser.parse_args()

    started = time.monotonic()
    owner = confide.Identity.load(args.fed / f"{args.name}.key")
    signed = confide.Job.load(args.job).sign(owner)
    print(f"signed job {signed.hash[:12]} as {owner.id}")

    coordinator = confide.Coordinator(args.control, args.fed, args.name)
    submitted = coordinator.submit(signed)
    print("submitted" if submitted.created else "already submitted", submitted.url or "")
    for event in coordinator.events(signed.hash, follow=True):
        print(f"  #{event['seq']:<4} {event['actor']:<12} {event['what']}")
    final = coordinator.status(signed.hash)
    state = confide.coordinator.state_name(final)
    print(f"job {final['job_id']}: {state}")
    if state != "completed":
        raise SystemExit(1)

    got = coordinator.download(signed.hash, args.out)
    model = confide.Model.load(got.card)
    test = ROOT / "data/breast_homo/breast_homo_test.csv"
    print(f"model {got.weights}: test accuracy {accuracy(model, test):.4f} (numpy, from the released weights)")
    print(f"{time.monotonic() - started:.1f} s from signing to the scored model")


if __name__ == "__main__":
    main()
