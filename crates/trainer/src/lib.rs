//! Confide's confidential trainer: data owners encrypt
//! their datasets to an attested trusted core, which trains with DP-SGD, seals what it keeps
//! and releases the model only to the configured recipients.
//!
//! - [`protocol`]: the narrow typed channel between the untrusted host and the trusted core
//!   (length-prefixed JSON frames), the core's configuration and what each party signs.
//! - [`core`]: the trusted core's state machine (sans-I/O): attestation evidence binding its
//!   upload key and configuration, signed and encrypted uploads, sealed storage with rollback
//!   detection, DP-SGD, release to signed recipient keys.
//! - [`host`]: the untrusted host's end of the channel to the core (its own process, SML-2,
//!   or in the host's process, SML-1), and the loop the core runs at its end.
//! - [`owner`]: the owners' and recipients' side.
//! - [`entry`]: the core's process entry point (the minimal `confide-trainer-core` binary,
//!   and `confide trainer-core`).
//! - [`sandbox`]: the confinement the trusted core applies to itself before it touches data:
//!   resource limits, landlock (its own directory only) and seccomp (no sockets, no exec).
//! - [`usercode`]: the node's side of a model owner's own training code: the confined worker
//!   process (launched through the same confinement, then `seal_worker`), its frames, and the
//!   checks on what it returns.
//!
//! It links chunked HPKE envelopes and sealed storage from `confide_crypto::{envelope, seal}`,
//! attestation from `confide_attest`, DP-SGD from `confide_ml::dpsgd`, and no network crate.
//! `confide trainer-core` runs the core as its own confined process; `confide simulate` drives
//! it for a job with a `[confidential]` section, and `confide trainer` serves it over the
//! network (`confide_net::trainer`) to `confide upload` and `confide fetch`.

pub mod core;
pub mod entry;
pub mod host;
pub mod owner;
pub mod protocol;
pub mod sandbox;
pub mod usercode;

#[cfg(test)]
mod tests;
