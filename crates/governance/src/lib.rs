//! Confide's governance: who may do what with whose data, and a record of what was done that
//! nobody can rewrite unnoticed.
//!
//! - [`identity`]: Ed25519 party keys (`confide keygen`), ids derived from public keys,
//!   passphrase-encrypted key files.
//! - [`jcs`]: the canonical JSON (RFC 8785) that everything signed is written in.
//! - [`manifest`]: signed job manifests, the model owner's signature and the data owners'
//!   approvals (`confide job sign|verify|approve`).
//! - [`policy`]: the data owner's per-dataset policy file, its validation and evaluation,
//!   revocation included.
//! - [`revocation`]: the federation CA's signed list of revoked identities.
//! - [`merkle`]: the Merkle tree of RFC 9162 (Certificate Transparency 2.0, §2.1).
//! - [`audit`]: the append-only audit log on `confide-store`, its signed tree heads, witness
//!   cosignatures and the exported log file (`confide audit …`).
//! - [`witness`]: a data owner's witness, which cosigns a tree head only if it extends every
//!   head it saw before.

pub mod audit;
pub mod contribution;
pub mod identity;
pub mod jcs;
pub mod manifest;
pub mod merkle;
pub mod policy;
pub mod revocation;
pub mod statement;
pub mod witness;
