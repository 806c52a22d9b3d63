"""Jobs, signed manifests, approvals and a data owner's policy review."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from . import _native
from .identity import Identity

PathLike = Union[str, "os.PathLike[str]"]


class Job:
    """A job file (TOML, as ``confide simulate`` and ``confide job sign`` read it), validated."""

    def __init__(self, native: "_native.NativeJob") -> None:
        self._native = native
        #: What :meth:`model_from_onnx` imported (input, classes, layers, parameters, the
        #: digests of the graph and of the weights); ``None`` otherwise.
        self.imported: Optional[dict[str, Any]] = None

    @classmethod
    def load(cls, path: PathLike) -> "Job":
        """Read and validate a job file. Raises :class:`confide.ManifestError` naming the field
        for an invalid one."""
        return cls(_native.NativeJob.load(os.fspath(path)))

    from_toml = load

    @classmethod
    def parse(cls, text: str) -> "Job":
        """Validate a job given as TOML text."""
        return cls(_native.NativeJob.parse(text))

    @property
    def id(self) -> str:
        """The job id."""
        return self._native.job_id

    @property
    def scheme(self) -> str:
        """The aggregation scheme (plain, paillier, masking, …)."""
        return self._native.scheme

    @property
    def rounds(self) -> int:
        """Federated rounds."""
        return self._native.rounds

    @property
    def model(self) -> dict[str, Any]:
        """The job's ``[model]`` section (for a layer list: ``input``, ``layers``, ``classes``,
        and ``init`` with the initial weights' ``sha256`` when it has them)."""
        result: dict[str, Any] = json.loads(self._native.model_json)
        if result.get("init"):
            result["init"] = {"sha256": result["init"]["sha256"]}
        return result

    def model_from_onnx(self, path: PathLike) -> "Job":
        """This job with its model replaced by an ONNX graph (PyTorch's ``torch.onnx.export``,
        opset 17 or later): the graph's layers as a layer list, and its weights as the job's
        initial weights, carried in the job and bound by the manifest (as ``confide model
        import`` and ``[model] init`` do). Training stays Confide's own, DP-SGD included, so
        record-level ε is enforced and ledgered. Unsupported operators raise
        :class:`confide.ModelError` naming the operator and the node. The summary of the
        import is in :attr:`imported`."""
        native, summary = self._native.model_from_onnx(os.fspath(path))
        job = Job(native)
        job.imported = json.loads(summary)
        return job

    def attach_code(
        self,
        directory: PathLike,
        entry: str,
        lock: str = "requirements.lock",
        env: str = "default",
        bundle: Optional[str] = None,
    ) -> "Job":
        """This job with your own training code: the files beneath ``directory`` are hashed
        into the file list and digest that the manifest binds (as ``[code] dir`` in a job file
        does). ``entry`` is ``module:function`` in the bundle, called with a
        :class:`confide.client.Context` at each data owner's node; ``lock`` is the bundle's
        pinned requirements file; ``env`` names the environment data owners installed for it;
        ``bundle`` is the name they keep the reviewed copy under (default: the directory's
        name). The job must use client-level DP or none: each node clips the code's update
        and adds its noise share itself, whatever the code does. Returns the new job; its
        digest is in ``job.code["digest"]``."""
        path = os.fspath(directory)
        name = bundle or os.path.basename(os.path.normpath(path))
        native, _digest = self._native.attach_code(path, name, entry, lock, env)
        return Job(native)

    @property
    def code(self) -> Optional[dict[str, Any]]:
        """The job's ``[code]`` section (kind, bundle, entry, lock, env, digest, files), or
        ``None`` when Confide's own trainer runs."""
        result: Optional[dict[str, Any]] = json.loads(self._native.code_json)
        return result

    def sign(self, owner: Identity, recipients: Sequence[str] = ()) -> "SignedJob":
        """Sign the job as its model owner, for federated training. ``recipients`` are the
        party ids that may download the model (the owner itself when empty). The manifest is
        byte-identical to ``confide job sign --config … --key … [--recipient …]``."""
        return SignedJob(self._native.sign(owner._native, list(recipients)))

    def __repr__(self) -> str:
        return f"Job({self.id!r}, scheme={self.scheme!r}, rounds={self.rounds})"


@dataclass(frozen=True)
class RuleVerdict:
    """One policy rule's own verdict on a job."""

    rule: str
    allows: bool
    approval: str
    why: str


@dataclass(frozen=True)
class Review:
    """A data owner's review of a signed job against a policy.

    ``allowed`` and ``rule`` (or ``reason``) are the policy's decision: the first rule that
    allows the job decides. ``rules`` has each rule's own verdict. ``cost`` is what the job
    spends from the dataset's budget, as the node's accountant computes it (``epsilon``,
    ``delta``, ``noise_multiplier``, ``clip_norm``, ``sampling_rate``, ``steps``,
    ``accountant``, ``level``); it is ``None`` without DP, and for a record-level job reviewed
    without ``records`` (``note`` says so). ``checked_epsilon`` is the ε the rules were
    checked against: the cost's, or else the job's target ε.
    """

    hash: str
    job_id: str
    model_owner: str
    allowed: bool
    rule: Optional[str]
    approval: Optional[str]
    reason: Optional[str]
    rules: list[RuleVerdict] = field(default_factory=list)
    cost: Optional[dict[str, Any]] = None
    checked_epsilon: Optional[float] = None
    note: Optional[str] = None
    #: For user code: the bundle (kind, bundle, entry, env, lock, digest, files), who
    #: reviewed it, and the privacy the nodes enforce on it.
    code: Optional[dict[str, Any]] = None

    @classmethod
    def _from(cls, v: dict[str, Any]) -> "Review":
        d = v["decision"]
        return cls(
            hash=v["hash"],
            job_id=v["job_id"],
            model_owner=v["model_owner"],
            allowed=d["allowed"],
            rule=d.get("rule"),
            approval=d.get("approval"),
            reason=d.get("reason"),
            rules=[RuleVerdict(**r) for r in v["rules"]],
            cost=v["cost"],
            checked_epsilon=v["checked_epsilon"],
            note=v["note"],
            code=v.get("code"),
        )

    def __str__(self) -> str:
        lines = [f"job {self.job_id} ({self.hash[:12]}) from {self.model_owner}"]
        if self.allowed:
            lines.append(f"allowed by rule {self.rule!r} ({self.approval} approval)")
        else:
            lines.append(f"refused: {self.reason}")
        for r in self.rules:
            lines.append(f"  {'✓' if r.allows else '✗'} {r.rule}" + (f": {r.why}" if r.why else ""))
        if self.cost:
            c = self.cost
            lines.append(
                f"cost: ε = {c['epsilon']:.4f}, δ = {c['delta']:g} ({c['level']} level, "
                f"σ = {c['noise_multiplier']:.4f}, q = {c['sampling_rate']:.4g}, "
                f"{c['steps']} steps, {c['accountant']})"
            )
        if self.note:
            lines.append(f"note: {self.note}")
        if self.code:
            c = self.code
            reviewers = ", ".join(c["reviewed_by"]) or "nobody"
            lines.append(
                f"code: {c['kind']} bundle {c['bundle']!r} ({c['digest']}), entry {c['entry']}, "
                f"environment {c['env']!r}, reviewed by {reviewers}; {c['privacy']}"
            )
            for f in c["files"]:
                lines.append(f"  {f['sha256'][:16]}  {f['size']:>8}  {f['path']}")
        return "\n".join(lines)


class SignedJob:
    """A signed job manifest: the model owner's signature and any approvals (co-signatures)."""

    def __init__(self, native: "_native.NativeSignedJob") -> None:
        self._native = native

    @classmethod
    def load(cls, path: PathLike) -> "SignedJob":
        """Read a manifest written by :meth:`save` or ``confide job sign``."""
        return cls(_native.NativeSignedJob.load(os.fspath(path)))

    @classmethod
    def from_json(cls, text: str) -> "SignedJob":
        """Parse a manifest from its JSON text."""
        return cls(_native.NativeSignedJob.from_json(text))

    def to_json(self) -> str:
        """The manifest's JSON text (the bytes :meth:`save` writes)."""
        return self._native.to_json()

    def save(self, path: PathLike, overwrite: bool = False) -> None:
        """Write the manifest. Refuses to replace a file unless ``overwrite`` (as ``confide job
        sign`` refuses; approving in place needs ``overwrite=True``)."""
        self._native.save(os.fspath(path), overwrite)

    @property
    def hash(self) -> str:
        """The manifest hash (hex): the job's identity on a coordinator."""
        return self._native.hash

    def verify(self) -> dict[str, Any]:
        """Check every signature. Returns what ``confide job verify`` prints (hash, job id,
        mode, scheme, model owner, participants, recipients, approvals). Raises
        :class:`confide.ManifestError` when a signature does not verify."""
        result: dict[str, Any] = json.loads(self._native.verify())
        return result

    def approve(self, approver: Identity) -> None:
        """Co-sign the manifest as a data owner (``confide job approve``)."""
        self._native.approve(approver._native)

    def review_code(self, reviewer: Identity) -> None:
        """Co-sign the job's code bundle digest as a code reviewer (``confide job
        review-code``). Policies trust reviewers by party id (``code_reviewers``)."""
        self._native.review_code(reviewer._native)

    def describes(self, job: Job) -> bool:
        """Whether this manifest describes ``job`` (it has not changed since signing)."""
        return self._native.describes(job._native)

    def review(self, policy: PathLike, records: Optional[int] = None) -> Review:
        """Review the job against a policy file: the policy's decision, each rule's verdict,
        and the privacy cost for a dataset of ``records`` records, computed as a node daemon
        computes it when the job is offered. What the node checks beyond the policy file is
        not here: the federation's revocation list, its certificates, and whether a rule's
        co-signature has been given (the node keeps such a job in the owner's inbox). A job that
        fixes σ has no ε without ``records``: it raises :class:`confide.UsageError`."""
        return Review._from(json.loads(self._native.review(os.fspath(policy), records)))

    def __repr__(self) -> str:
        return f"SignedJob({self.hash[:12]})"
