//! Confide's governance (the governance issue; in progress).
//!
//! - [`merkle`]: the Merkle tree of RFC 9162 (Certificate Transparency 2.0, Section 2.1): tree
//!   hashes, inclusion proofs and consistency proofs, with their verification algorithms.
//! - [`audit`]: an append-only audit log of that shape on `confide-store`: every appended entry
//!   becomes a leaf, and anyone holding a tree head can check that an entry is in the log and
//!   that a later head extends an earlier one.
//!
//! Not built yet: signed tree heads, witnesses that cosign them, signed job manifests
//! (RFC 8785), policies, approvals and revocation.

pub mod audit;
pub mod merkle;
