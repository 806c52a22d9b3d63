"""Identities, manifests and approvals: Python and the `confide` command read and verify each
other's files, and sign the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

import confide
from conftest import DEMO_ID, DEMO_KEY, ROOT, cli, cli_json, example_job


def test_a_manifest_signed_from_python_is_byte_identical_to_the_commands(tmp_path: Path) -> None:
    job = example_job(tmp_path, rounds=10)
    recipient = confide.Identity.generate(tls=False).id
    ours = tmp_path / "python.json"
    me = confide.Identity.load(DEMO_KEY)
    assert me.id == DEMO_ID
    confide.Job.load(job).sign(me, recipients=[DEMO_ID, recipient]).save(ours)
    theirs = tmp_path / "cli.json"
    cli("job", "sign", "--config", str(job), "--key", str(DEMO_KEY), "--out", str(theirs),
        "--recipient", DEMO_ID, "--recipient", recipient)
    assert ours.read_bytes() == theirs.read_bytes()
    # Each verifies the other's.
    assert cli_json("job", "verify", "--manifest", str(ours), "--config", str(job))["describes_config"]
    v = confide.SignedJob.load(theirs).verify()
    assert v["model_owner"] == DEMO_ID and v["recipients"] == [DEMO_ID, recipient]
    assert confide.SignedJob.load(theirs).describes(confide.Job.load(job))


def test_approvals_cross_between_python_and_the_command(tmp_path: Path) -> None:
    job = example_job(tmp_path, rounds=10)
    manifest = tmp_path / "job.json"
    confide.Job.load(job).sign(confide.Identity.load(DEMO_KEY)).save(manifest)

    # An owner's key made by the command, encrypted, approves from Python.
    key = tmp_path / "guest.key"
    made = cli_json("keygen", "--out", str(key), "--passphrase-env", "PW", env={"PW": "correct horse"})
    with pytest.raises(confide.IdentityError, match="passphrase"):
        confide.Identity.load(key, passphrase="wrong")
    with pytest.raises(confide.IdentityError):
        confide.Identity.load(key)
    guest = confide.Identity.load(key, passphrase="correct horse")
    assert guest.id == made["id"]
    signed = confide.SignedJob.load(manifest)
    signed.approve(guest)
    with pytest.raises(confide.UsageError, match="refusing to overwrite"):
        signed.save(manifest)
    signed.save(manifest, overwrite=True)
    assert cli_json("job", "verify", "--manifest", str(manifest))["approvals"] == [guest.id]

    # A key made in Python, encrypted, approves with the command.
    host_key = tmp_path / "host.key"
    host = confide.Identity.generate()
    saved = host.save(host_key, passphrase="pw2")
    assert saved["encrypted"] and Path(saved["public_file"]).exists() and Path(saved["tls_key_file"]).exists()
    with pytest.raises(confide.IdentityError):
        host.save(host_key)
    cli("job", "approve", "--manifest", str(manifest), "--key", str(host_key), "--passphrase-env", "PW",
        env={"PW": "pw2"})
    assert confide.SignedJob.load(manifest).verify()["approvals"] == [guest.id, host.id]


def test_a_tampered_manifest_fails_in_both(tmp_path: Path) -> None:
    job = example_job(tmp_path, rounds=10)
    signed = confide.Job.load(job).sign(confide.Identity.load(DEMO_KEY))
    text = signed.to_json().replace('"rounds": 10', '"rounds": 11')
    assert text != signed.to_json()
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(confide.ManifestError):
        confide.SignedJob.load(bad).verify()
    assert cli("job", "verify", "--manifest", str(bad), check=False).returncode != 0


def test_review_agrees_with_the_command_and_names_each_rule(tmp_path: Path) -> None:
    job = example_job(tmp_path, rounds=10, source="breast_homo_dp.toml")
    manifest = tmp_path / "job.json"
    confide.Job.load(job).sign(confide.Identity.load(DEMO_KEY)).save(manifest)
    policy = ROOT / "examples" / "policies" / "breast_homo_dp_guest.toml"
    review = confide.SignedJob.load(manifest).review(policy)
    command = cli_json("job", "verify", "--manifest", str(manifest), "--policy", str(policy))["policy"]
    assert review.allowed == command["allowed"] is True
    assert review.rule == command["rule"] == "breast-homo DP study"
    assert review.cost is None and "records=N" in (review.note or "")

    # With the dataset's size, the node's cost: ε at most the target, σ calibrated for it.
    rows = sum(1 for _ in open(ROOT / "data" / "breast_homo" / "breast_homo_guest.csv")) - 1
    costed = confide.SignedJob.load(manifest).review(policy, records=rows)
    assert costed.cost is not None and costed.cost["level"] == "record"
    assert 0 < costed.cost["epsilon"] <= 2.0 + 1e-9
    assert costed.cost["epsilon"] == pytest.approx(
        confide.epsilon(costed.cost["sampling_rate"], costed.cost["noise_multiplier"], costed.cost["steps"],
                        costed.cost["delta"], costed.cost["accountant"]))
    assert "ε = " in str(costed)

    # A policy whose rule caps ε below the job's refuses it, and says which rule and why.
    strict = tmp_path / "strict.toml"
    strict.write_text(policy.read_text().replace("max_epsilon = 3.0", "max_epsilon = 1.0"))
    refused = confide.SignedJob.load(manifest).review(strict, records=rows)
    assert not refused.allowed and refused.reason
    assert [r.allows for r in refused.rules] == [False]
    assert "above this rule's 1" in refused.rules[0].why

    # A job that fixes σ has no ε until the dataset's size is known: no verdict without it.
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(job.read_text().replace("target_epsilon = 2.0", "noise_multiplier = 1.2"))
    fixed_job = confide.Job.load(fixed).sign(confide.Identity.load(DEMO_KEY))
    with pytest.raises(confide.UsageError, match="records=N"):
        fixed_job.review(policy)
    assert fixed_job.review(policy, records=rows).cost["noise_multiplier"] == 1.2

    broken = tmp_path / "broken.toml"
    broken.write_text("[dataset]\nname = 3\n")
    with pytest.raises(confide.PolicyError):
        confide.SignedJob.load(manifest).review(broken)


def test_bad_job_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(confide.ManifestError):
        confide.Job.parse("[job]\nid = 'x'\n")
    with pytest.raises(confide.ManifestError):
        confide.Job.load(tmp_path / "missing.toml")
    with pytest.raises(confide.ManifestError):
        confide.Job.load(example_job(tmp_path, rounds=10)).sign(confide.Identity.load(DEMO_KEY),
                                                              recipients=["not-a-party"])
