"""A client of a running coordinator's Control API (``confide coordinator serve``), over
mutual TLS with a party's credentials from the federation directory."""

from __future__ import annotations

import builtins
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from . import _native
from .jobs import SignedJob

PathLike = Union[str, "os.PathLike[str]"]

#: States after which a job never changes.
TERMINAL = {"completed", "cancelled", "rejected", "expired", "failed"}


@dataclass(frozen=True)
class Submission:
    """A submitted job: its record, whether this call created it (the same manifest again
    returns the same job), and its page on the coordinator's dashboard (empty without one)."""

    record: dict[str, Any]
    created: bool
    url: str

    @property
    def hash(self) -> str:
        """The job's manifest hash."""
        return str(self.record["hash"])


@dataclass(frozen=True)
class Download:
    """A downloaded model: the paths of its weights, card and the coordinator's report."""

    weights: Path
    card: Path
    report: Path
    record: dict[str, Any]


def state_name(record: dict[str, Any]) -> str:
    """A job record's state name (``running``, ``completed``, …)."""
    return str(record["state"]["name"])


class Coordinator:
    """A connection to a coordinator as one party: a model owner (submit, cancel), a recipient
    (download) or the operator (every job, ``nodes``). Every call is the same Control API
    call as the ``confide job …`` command of the same name.

    ``fed`` is the federation directory holding ``ca.crt`` and ``<name>.crt``/``<name>.key``.
    Refusals raise :class:`confide.RefusedError`; an unknown job, :class:`confide.NotFoundError`;
    an unreachable coordinator, :class:`confide.UnavailableError`.
    """

    def __init__(
        self,
        address: str,
        fed: PathLike,
        name: str,
        passphrase: Optional[str] = None,
        server_name: str = "coordinator",
    ) -> None:
        self._native = _native.NativeCoordinator(address, os.fspath(fed), name, passphrase, server_name)

    def submit(self, manifest: Union[SignedJob, PathLike, bytes]) -> Submission:
        """Submit a signed manifest (a :class:`SignedJob`, a file, or its bytes)."""
        if isinstance(manifest, SignedJob):
            data = manifest.to_json().encode()
        elif isinstance(manifest, bytes):
            data = manifest
        else:
            data = Path(manifest).read_bytes()
        record, created, url = self._native.submit(data)
        return Submission(json.loads(record), created, url)

    def list(self, state: Optional[str] = None) -> list[dict[str, Any]]:
        """The jobs this party may see, optionally only those in ``state``."""
        result: list[dict[str, Any]] = json.loads(self._native.list(state))
        return result

    def status(self, job: str) -> dict[str, Any]:
        """One job's record: by manifest hash, unique hash prefix (8+ hex digits) or job id."""
        result: dict[str, Any] = json.loads(self._native.status(job))
        return result

    def events(self, job: str, follow: bool = False, start: int = 0) -> Iterator[dict[str, Any]]:
        """A job's events from ``start``; with ``follow``, until the job ends. The call is made
        at once (an unknown job raises here); the events arrive as they are iterated. Ctrl-C
        interrupts a wait."""
        native = self._native.events(job, start, follow)
        return (json.loads(text) for text in native)

    def wait(self, job: str) -> dict[str, Any]:
        """Follow a job until it ends; returns its final record (see :func:`state_name`)."""
        for _ in self.events(job, follow=True):
            pass
        return self.status(job)

    def cancel(self, job: str, reason: str) -> dict[str, Any]:
        """Cancel a job as its model owner, with a statement signed by this party's key (the
        coordinator's audit log keeps it)."""
        result: dict[str, Any] = json.loads(self._native.cancel(job, reason))
        return result

    def download(self, job: str, out: PathLike) -> Download:
        """Download a completed job's model into ``out`` (recipients only): ``model.safetensors``,
        ``model.json`` and ``coordinator-report.json``. Load it with :meth:`confide.Model.load`."""
        weights, card, record = self._native.download(job, os.fspath(out))
        return Download(Path(weights), Path(card), Path(out) / "coordinator-report.json", json.loads(record))

    def nodes(self) -> builtins.list[dict[str, Any]]:
        """The nodes the coordinator has heard from (its operator only)."""
        result: builtins.list[dict[str, Any]] = json.loads(self._native.nodes())
        return result
