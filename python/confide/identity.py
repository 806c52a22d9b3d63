"""Party identities: Ed25519 keys in the files ``confide keygen`` writes."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

from . import _native

PathLike = Union[str, "os.PathLike[str]"]


class Identity:
    """A party's signing identity.

    Its party id (32 hex digits) is what policies, manifests and certificates name. Keys are
    read and written in the same files as ``confide keygen``: PKCS#8 PEM, encrypted under a
    passphrase when one is given, with the public half in ``<key>.pub``.
    """

    def __init__(self, native: "_native.NativeIdentity") -> None:
        self._native = native

    @classmethod
    def generate(cls, tls: bool = True) -> "Identity":
        """Make a new identity; with ``tls``, also the P-256 TLS key bound to it (as
        ``confide keygen`` does; ``tls=False`` is ``--no-tls-key``)."""
        return cls(_native.NativeIdentity.generate(tls))

    @classmethod
    def load(cls, path: PathLike, passphrase: Optional[str] = None) -> "Identity":
        """Read a key file. Raises :class:`confide.IdentityError` for an unreadable file, a key
        that is not Ed25519, or a wrong or missing passphrase."""
        return cls(_native.NativeIdentity.load(os.fspath(path), passphrase))

    def save(self, path: PathLike, passphrase: Optional[str] = None) -> dict[str, Any]:
        """Write the key (mode 0600, encrypted when ``passphrase`` is given), ``<path>.pub``
        and, for a generated identity, the TLS key. Refuses to overwrite. Returns what
        ``confide keygen`` prints."""
        result: dict[str, Any] = json.loads(self._native.save(os.fspath(path), passphrase))
        return result

    @property
    def id(self) -> str:
        """The party id: 32 lowercase hex digits."""
        return self._native.party_id

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._native.public_key

    def __repr__(self) -> str:
        return f"Identity({self.id})"
