"""The Control API from Python against running daemons: a job signed in Python, submitted to a
coordinator, run by two node daemons, followed, downloaded and scored with numpy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import confide
from conftest import DEMO_KEY, ROOT, binary, cli, example_job
from test_tools import score


class Daemon:
    """A `confide … serve` child process and the addresses it printed first."""

    def __init__(self, args: list[str], lines: int, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([str(binary()), *args], stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        self.addrs = []
        assert self.proc.stdout is not None
        for _ in range(lines):
            line = self.proc.stdout.readline()
            assert " listening on " in line, f"{args}: {line!r}\n{log.read_text()}"
            self.addrs.append(line.strip().rsplit(" ", 1)[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def serve(tmp_path: Path, fed: Path, nodes: dict[str, list[str]]) -> Iterator[str]:
    """Runs a key holder (the test-only fixed Paillier key), a coordinator and one node daemon
    per entry of `nodes` (its name and extra arguments: data, policy, …) for federation `fed`;
    yields the coordinator's control address, and stops them all."""
    local = "127.0.0.1:0"
    daemons = []
    try:
        # The test-only fixed Paillier key: a fresh 2048-bit key per job takes 10–60 s here.
        keyholder = Daemon(["keyholder", "serve", "--fed", str(fed), "--listen", local, "--admin", local,
                            "--insecure-fixed-key", str(ROOT / "crates/crypto/testdata/paillier-2048-TEST-ONLY.json")],
                           2, tmp_path / "keyholder.log")
        daemons.append(keyholder)
        coordinator = Daemon(["coordinator", "serve", "--fed", str(fed), "--keyholder", keyholder.addrs[1],
                              "--control", local, "--admin", local, "--fleet", local,
                              "--store", str(tmp_path / "coordinator.redb")], 3, tmp_path / "coordinator.log")
        daemons.append(coordinator)
        control, fleet = coordinator.addrs[1], coordinator.addrs[2]
        for name, extra in nodes.items():
            daemons.append(Daemon(
                ["node", "serve", "--fed", str(fed), "--name", name, "--coordinator", fleet,
                 "--admin", local, "--poll", "0.3", "--store", str(tmp_path / f"{name}.redb"), *extra],
                1, tmp_path / f"{name}.log"))
        yield control
    finally:
        for d in daemons:
            d.stop()


def make_fed(tmp_path: Path, federation: str, parties: list[tuple[str, str]]) -> Path:
    """A federation with `parties` (name, role) and the demo model owner as `owner`."""
    fed = tmp_path / "fed"
    cli("ca", "init", "--dir", str(fed), "--federation", federation)
    for name, role in parties:
        cli("ca", "issue", "--dir", str(fed), "--name", name, "--role", role)
    (fed / "owner.key").write_bytes(DEMO_KEY.read_bytes())
    cli("ca", "issue", "--dir", str(fed), "--name", "owner", "--role", "model-owner", "--public-key",
        str(DEMO_KEY) + ".pub")
    return fed


@pytest.fixture()
def federation(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    fed = make_fed(tmp_path, "python-test", [("coordinator", "coordinator"), ("keyholder", "keyholder"),
                                             ("guest", "node"), ("host", "node"), ("mallory", "model-owner")])
    nodes = {name: ["--data", str(ROOT / f"data/breast_homo/breast_homo_{name}.csv"),
                    "--policy", str(ROOT / f"examples/policies/breast_homo_{name}.toml")] for name in ["guest", "host"]}
    for control in serve(tmp_path, fed, nodes):
        yield fed, control


def test_sign_submit_follow_download_and_score_from_python(federation: tuple[Path, str], tmp_path: Path) -> None:
    fed, control = federation
    signed = confide.Job.load(example_job(tmp_path, rounds=10)).sign(confide.Identity.load(DEMO_KEY))
    owner = confide.Coordinator(control, fed, "owner")

    first = owner.submit(signed)
    assert first.created and first.hash == signed.hash
    again = owner.submit(signed.to_json().encode())
    assert not again.created and again.hash == signed.hash

    events = list(owner.events(signed.hash, follow=True))
    assert events and all("what" in e for e in events)
    final = owner.status("breast-homo")
    assert confide.coordinator.state_name(final) == "completed", final
    assert [r["hash"] for r in owner.list(state="completed")] == [signed.hash]

    got = owner.download(signed.hash[:12], tmp_path / "model")
    assert got.weights.exists() and got.report.exists()
    model = confide.Model.load(got.card)
    assert model.card["provenance"]["job_id"] == "breast-homo"
    assert score(model, ROOT / "data/breast_homo/breast_homo_test.csv", "y") > 0.9

    # Another model owner sees nothing of it and may not download it.
    mallory = confide.Coordinator(control, fed, "mallory")
    assert mallory.list() == []
    with pytest.raises((confide.NotFoundError, confide.RefusedError)):
        mallory.download(signed.hash, tmp_path / "stolen")
    assert not (tmp_path / "stolen").exists()
    with pytest.raises(confide.NotFoundError):
        owner.status("no-such-job")
    # A finished job cannot be cancelled.
    with pytest.raises(confide.RefusedError):
        owner.cancel(signed.hash, "too late")
    with pytest.raises(confide.RefusedError):
        owner.nodes()

    # The operator (the coordinator's own identity) sees both nodes.
    operator = confide.Coordinator(control, fed, "coordinator")
    assert sorted(n["name"] for n in operator.nodes()) == ["guest", "host"]
    assert [r["hash"] for r in operator.list()] == [signed.hash]


def test_follow_from_an_event_wait_and_cancel(federation: tuple[Path, str], tmp_path: Path) -> None:
    fed, control = federation
    owner = confide.Coordinator(control, fed, "owner")
    # A third party that runs no node: the job waits for its approval until cancelled.
    job = example_job(tmp_path, rounds=3)
    job.write_text(job.read_text().replace('id = "breast-homo"', 'id = "waits"') + '\n[[parties]]\nname = "clinic"\ndata = "unused.csv"\n')
    signed = confide.Job.load(job).sign(confide.Identity.load(DEMO_KEY))
    owner.submit(signed)
    assert confide.coordinator.state_name(owner.status("waits")) == "awaiting_approval"
    cancelled = owner.cancel("waits", "wrong cohort")
    assert confide.coordinator.state_name(cancelled) == "cancelled"
    assert confide.coordinator.state_name(owner.wait("waits")) == "cancelled"
    seen = list(owner.events("waits"))
    assert any("wrong cohort" in e["what"] for e in seen)
    # The job has ended: its events are final. From an event on: that event first, none before.
    assert [e["seq"] for e in seen] == list(range(len(seen))) and len(seen) >= 2
    assert [e["seq"] for e in owner.events("waits", start=1)] == list(range(1, len(seen)))
    with pytest.raises(confide.NotFoundError):
        owner.events("no-such-job")


def test_a_wrong_passphrase_or_no_coordinator_fails_clearly(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    cli("ca", "init", "--dir", str(fed), "--federation", "python-test")
    cli("ca", "issue", "--dir", str(fed), "--name", "owner", "--role", "model-owner")
    with pytest.raises(confide.UnavailableError, match="coordinator serve"):
        confide.Coordinator("127.0.0.1:9", fed, "owner")
    with pytest.raises(confide.IdentityError):
        confide.Coordinator("127.0.0.1:9", fed, "nobody")
    # An encrypted key opened with the wrong passphrase.
    confide.Identity.generate().save(fed / "locked.key", passphrase="right")
    cli("ca", "issue", "--dir", str(fed), "--name", "locked", "--role", "model-owner", "--public-key",
        str(fed / "locked.key.pub"))
    with pytest.raises(confide.IdentityError, match="passphrase"):
        confide.Coordinator("127.0.0.1:9", fed, "locked", passphrase="wrong")
    with pytest.raises(confide.UnavailableError):
        confide.Coordinator("127.0.0.1:9", fed, "locked", passphrase="right")
