"""Confide from Python.

Federated training across parties that may not share their data, with secure aggregation and
differential privacy that the system enforces. This package is a client of Confide: it signs
and reviews jobs, computes privacy costs, splits data sets, submits jobs to a running
coordinator and loads the models it releases. The nodes, key holders and coordinator stay the
``confide`` binary.

Everything that decides a guarantee runs in Confide's Rust code (``confide._native``): the same
key files, manifest bytes, signatures, policy checks and accountants as the ``confide``
command, so a manifest signed here is byte-identical to one from ``confide job sign``.

    import confide
    me = confide.Identity.load("examples/keys/model-owner.key")
    signed = confide.Job.load("examples/breast_homo_dp.toml").sign(me)
    signed.save("job.signed.json")
    print(signed.review("examples/policies/breast_homo_dp_guest.toml", records=300))
"""

from __future__ import annotations

from ._native import (
    AccountingError,
    ConfideError,
    IdentityError,
    ManifestError,
    ModelError,
    NotFoundError,
    PartitionError,
    PolicyError,
    RefusedError,
    UnavailableError,
    UsageError,
)
from .accounting import epsilon, sigma
from .coordinator import Coordinator, Download, Submission
from .identity import Identity
from .jobs import Job, Review, RuleVerdict, SignedJob
from .models import Model
from .partition import partition

__all__ = [
    "AccountingError",
    "ConfideError",
    "Coordinator",
    "Download",
    "IdentityError",
    "Identity",
    "Job",
    "ManifestError",
    "Model",
    "ModelError",
    "NotFoundError",
    "PartitionError",
    "PolicyError",
    "RefusedError",
    "Review",
    "RuleVerdict",
    "SignedJob",
    "Submission",
    "UnavailableError",
    "UsageError",
    "epsilon",
    "partition",
    "sigma",
]

__version__ = "0.1.0"
