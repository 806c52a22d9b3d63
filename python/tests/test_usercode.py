"""A model owner's own training loop: a NumPy bundle run confined at each node, compared with
Confide's trainer; and every refusal the issue names, each with a clear error and nothing
sent (the coordinator sees no update, and nothing the code printed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import confide
from conftest import DEMO_ID, DEMO_KEY, ROOT, cli, example_job
from test_service import make_fed, serve

BUNDLE = ROOT / "examples" / "python" / "bundles" / "heart-numpy"
GOOD = (BUNDLE / "train.py").read_text()
MARKER = "LEAK-MARKER-" + uuid.uuid4().hex


def bundle(root: Path, name: str, train: str) -> Path:
    """A bundle `name` under `root`, with `train.py` and the lock file."""
    d = root / name
    d.mkdir(parents=True)
    (d / "train.py").write_text(train)
    shutil.copy(BUNDLE / "requirements.lock", d / "requirements.lock")
    return d


def code_section(directory: Path, name: str) -> str:
    return (f'\n[code]\nkind = "python"\ndir = "{directory}"\nbundle = "{name}"\nentry = "train:fit"\n'
            f'lock = "requirements.lock"\nenv = "numpy"\n')


def breast_job(tmp: Path, directory: Path, name: str, policies: bool = False, rounds: int = 2) -> Path:
    """breast_homo under `plain`, with the bundle; without policies the simulation co-signs
    for both owners."""
    path = example_job(tmp, rounds=rounds, scheme="plain")
    text = path.read_text().replace("rounds = 80", f"rounds = {rounds}")
    if not policies:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("policy ="))
    text = text.replace("[simulate]", code_section(directory, name) + "\n[simulate]")
    out = tmp / f"{name}.toml"
    out.write_text(text)
    return out


def simulate(job: Path, code_dir: Path, work: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = cli("simulate", "--config", str(job), "--code-dir", str(code_dir), "--code-env",
              f"numpy={sys.executable}", "--work-dir", str(work), "--quiet", check=False)
    report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
    return out, report


def node_errors(work: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((work / "logs").glob("node-*.log")))


def code_logs(work: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(work.glob("fed/*-code/*.log")))


def shared(work: Path) -> str:
    """Everything the coordinator saw or kept: its log, the audit log and the report."""
    parts = [p.read_text() for p in [work / "logs" / "coordinator.log", work / "audit-log.json", work / "report.json"]
             if p.exists()]
    return "\n".join(parts)


def test_the_numpy_loop_trains_like_confides_trainer(tmp_path: Path) -> None:
    """The issue's target: within 0.03 of the native trainer without DP (heart disease, four
    hospitals, Paillier)."""
    native_job = ROOT / "examples" / "heart_disease.toml"
    user_job = ROOT / "examples" / "python" / "heart_numpy.toml"
    native = cli("simulate", "--config", str(native_job), "--work-dir", str(tmp_path / "native"), "--quiet")
    assert native.returncode == 0
    out, report = simulate(user_job, BUNDLE.parent, tmp_path / "user")
    assert out.returncode == 0, out.stderr + node_errors(tmp_path / "user")
    base = json.loads((tmp_path / "native" / "report.json").read_text())
    a, b = report["test_accuracy"], base["test_accuracy"]
    assert abs(a - b) <= 0.03, (a, b)
    assert a > 0.7, a
    # What the code printed stayed in the nodes' local logs.
    assert "trained on" in code_logs(tmp_path / "user")
    assert "trained on" not in shared(tmp_path / "user")
    # The confinement the launcher reported.
    assert '"landlock":"fully enforced (ABI v3)"' in code_logs(tmp_path / "user")


HOSTILE = {
    "socket": ("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)", "PermissionError: [Errno 1]"),
    "write": ("open('/tmp/{escape}', 'w').write('x')", "PermissionError: [Errno 13]"),
    "exec": ("import os\nos.execv('/bin/true', ['true'])", "PermissionError: [Errno 1]"),
    "subprocess": ("import subprocess\nsubprocess.run(['/bin/true'], check=True)", "PermissionError: [Errno 1]"),
    # A child could outlive the worker's kill; the node's pid is the worker's parent.
    "fork": ("import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)",
             "PermissionError: [Errno 1]"),
    "signal": ("import os\nos.kill(os.getppid(), 0)", "PermissionError: [Errno 1]"),
}


def hostile_train(action: str) -> str:
    return f"""
import sys
import confide.client as cc

def fit(ctx: cc.Context) -> None:
    x, y = ctx.arrays()
    for rnd in ctx.rounds():
        open("scratch.txt", "w").write("the scratch directory is writable")
        print("{MARKER}", x[:3].tolist())
        print("{MARKER}", file=sys.stderr)
{chr(10).join('        ' + line for line in action.splitlines())}
        raise RuntimeError("{MARKER} reached after the forbidden action")
"""


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_the_sandbox_denies_sockets_writes_outside_programs_processes_and_signals(kind: str, tmp_path: Path) -> None:
    escape = f"confide-escape-{uuid.uuid4().hex}"
    action, expected = HOSTILE[kind]
    action = action.replace("{escape}", escape)
    # Unconfined (in a child Python), each action succeeds: the refusals below are the sandbox's.
    free = subprocess.run([sys.executable, "-c", action.replace("/tmp/", str(tmp_path) + "/")], capture_output=True)
    assert free.returncode == 0, free.stderr
    assert (tmp_path / escape).exists() or kind != "write"

    code_dir = tmp_path / "bundles"
    d = bundle(code_dir, f"hostile-{kind}", hostile_train(action))
    out, report = simulate(breast_job(tmp_path, d, d.name), code_dir, tmp_path / "work")
    assert out.returncode != 0
    errors = node_errors(tmp_path / "work")
    assert "CODE-004 user code failed in round 1" in errors, errors
    assert expected in code_logs(tmp_path / "work"), code_logs(tmp_path / "work")
    assert not Path("/tmp", escape).exists()
    # Nothing was sent: no round completed, and nothing the code wrote reached the coordinator.
    assert report.get("rounds", 0) == 0, report
    seen = shared(tmp_path / "work")
    assert "CODE-004" in seen and MARKER not in seen


def test_a_wrong_shaped_state_dict_is_refused(tmp_path: Path) -> None:
    code_dir = tmp_path / "bundles"
    train = GOOD.replace('rnd.submit({"layers.0.weight": weight, "layers.0.bias": bias})',
                         'rnd.submit({"layers.0.weight": weight.T, "layers.0.bias": bias})')
    assert train != GOOD
    d = bundle(code_dir, "wrong-shape", train)
    out, report = simulate(breast_job(tmp_path, d, d.name), code_dir, tmp_path / "work")
    assert out.returncode != 0
    errors = node_errors(tmp_path / "work")
    assert "CODE-005" in errors and "layers.0.weight: expected F32 [30, 1], found F32 [1, 30]" in errors, errors
    assert report.get("rounds", 0) == 0, report


def test_a_worker_that_does_not_answer_is_stopped_at_the_round_deadline(tmp_path: Path) -> None:
    code_dir = tmp_path / "bundles"
    d = bundle(code_dir, "sleeper", "import time\n\ndef fit(ctx):\n    time.sleep(3600)\n")
    job = breast_job(tmp_path, d, d.name)
    job.write_text(job.read_text().replace("round_timeout_secs = 60.0", "round_timeout_secs = 3.0"))
    out, report = simulate(job, code_dir, tmp_path / "work")
    assert out.returncode != 0
    errors = node_errors(tmp_path / "work")
    assert "CODE-006 user code did not submit round 1 within 3 s; it was stopped" in errors, errors
    assert report.get("rounds", 0) == 0


def test_a_bundle_that_differs_from_the_signed_one_is_refused(tmp_path: Path) -> None:
    signed_dir = bundle(tmp_path / "signed", "numpy-loop", GOOD)
    code_dir = tmp_path / "bundles"
    local = bundle(code_dir, "numpy-loop", GOOD + "\n# changed after review\n")
    out, report = simulate(breast_job(tmp_path, signed_dir, "numpy-loop"), code_dir, tmp_path / "work")
    assert out.returncode != 0
    errors = node_errors(tmp_path / "work")
    assert "CODE-001 the bundle `numpy-loop`" in errors and "the signed job names sha256:" in errors, errors
    assert report.get("rounds", 0) == 0
    assert "does not match the signed digest" in shared(tmp_path / "work")
    # The same copy, restored, runs.
    (local / "train.py").write_text(GOOD)
    out, report = simulate(breast_job(tmp_path, signed_dir, "numpy-loop"), code_dir, tmp_path / "again")
    assert out.returncode == 0, node_errors(tmp_path / "again")
    assert report["rounds"] == 2


def test_a_policy_without_the_opt_in_refuses_user_code(tmp_path: Path) -> None:
    code_dir = tmp_path / "bundles"
    d = bundle(code_dir, "numpy-loop", GOOD)
    out, report = simulate(breast_job(tmp_path, d, d.name, policies=True), code_dir, tmp_path / "work")
    assert out.returncode != 0
    errors = node_errors(tmp_path / "work")
    assert "the job runs python training code; this rule allows builtin" in errors, errors
    assert report.get("rounds", 0) == 0
    assert not list((tmp_path / "work").glob("fed/*-code/*.log")), "no worker may start"


def test_record_level_dp_with_user_code_is_refused_when_the_job_is_read(tmp_path: Path) -> None:
    d = bundle(tmp_path / "bundles", "numpy-loop", GOOD)
    job = breast_job(tmp_path, d, d.name)
    job.write_text(job.read_text() + '\n[privacy]\nlevel = "record"\ntarget_epsilon = 4.0\ndelta = 1e-5\nclip_norm = 1.0\n')
    with pytest.raises(confide.ManifestError, match="record-level DP cannot be enforced on user code"):
        confide.Job.load(job)


# --- Reviewers: a policy that trusts a reviewer, against running daemons ---------------------


@pytest.fixture()
def code_federation(tmp_path: Path) -> Iterator[tuple[Path, str, Path, confide.Identity]]:
    fed = make_fed(tmp_path, "code-test", [("coordinator", "coordinator"), ("keyholder", "keyholder"),
                                           ("guest", "node"), ("host", "node")])
    reviewer = confide.Identity.generate()
    code_dir = tmp_path / "bundles"
    bundle(code_dir, "numpy-loop", GOOD)
    nodes = {}
    for name in ["guest", "host"]:
        policy = tmp_path / f"{name}-policy.toml"
        policy.write_text(f"""[dataset]
name = "breast_homo_{name}"
expires = 2030-12-31T23:59:59Z

[[rule]]
name = "reviewed numpy loops"
model_owners = ["{DEMO_ID}"]
modes = ["federated"]
schemes = ["paillier"]
approval = "automatic"
code = ["python"]
code_reviewers = ["{reviewer.id}"]
""")
        nodes[name] = ["--data", str(ROOT / f"data/breast_homo/breast_homo_{name}.csv"), "--policy", str(policy),
                       "--code-dir", str(code_dir), "--code-env", f"numpy={sys.executable}"]
    for control in serve(tmp_path, fed, nodes):
        yield fed, control, code_dir, reviewer


def test_a_policy_that_names_a_reviewer_runs_only_reviewed_code(
    code_federation: tuple[Path, str, Path, confide.Identity], tmp_path: Path
) -> None:
    fed, control, code_dir, reviewer = code_federation
    owner = confide.Coordinator(control, fed, "owner")
    me = confide.Identity.load(DEMO_KEY)

    def job(job_id: str) -> confide.Job:
        path = example_job(tmp_path, rounds=3)
        path.write_text(path.read_text().replace('id = "breast-homo"', f'id = "{job_id}"'))
        return confide.Job.load(path).attach_code(code_dir / "numpy-loop", entry="train:fit", env="numpy")

    unreviewed = job("unreviewed").sign(me)
    assert unreviewed.verify()["code"]["reviewed_by"] == []
    owner.submit(unreviewed)
    final = owner.wait("unreviewed")
    assert confide.coordinator.state_name(final) in ("rejected", "failed"), final
    said = " ".join(e["what"] for e in owner.events("unreviewed"))
    assert "no reviewer this rule trusts has co-signed the code bundle" in said, said

    reviewed = job("reviewed").sign(me)
    reviewed.review_code(reviewer)
    summary = reviewed.verify()["code"]
    assert summary["reviewed_by"] == [reviewer.id]
    assert summary["digest"].startswith("sha256:") and [f["path"] for f in summary["files"]] == [
        "requirements.lock", "train.py"]
    owner.submit(reviewed)
    final = owner.wait("reviewed")
    assert confide.coordinator.state_name(final) == "completed", final
