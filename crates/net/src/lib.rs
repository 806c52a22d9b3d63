//! Confide's role servers over gRPC (tonic, codegen by protox, so no `protoc`) with mutual TLS
//! (rustls with the ring provider), and the federation's certificate authority.
//!
//! - [`pki`]: `confide ca`: an Ed25519 CA per federation, party certificates naming role and
//!   name, identity checks.
//! - [`transport`]: mutual-TLS servers and clients; the caller's identity and role per call.
//! - [`guard`]: every server's first layer: role, revocation and size checks before a body is
//!   read (NET-xxx).
//! - [`coordinator`]: rounds, FedAvg, deadlines, dropouts; never holds a key.
//! - [`keyholder`]: the Paillier key holder.
//! - [`node`]: a data owner.
//! - [`trainer`]: the confidential trainer's untrusted host, and the owners' upload and the
//!   recipients' fetch.
//! - [`roles`]: starting each role on a listener.
//!
//! Only this crate and the CLI open sockets (docs/ARCHITECTURE.md, "Layout").

pub mod admin;
pub mod aggregator;
pub mod aggregators;
pub mod checkpoint;
pub mod client;
pub mod control;
pub mod coordinator;
pub mod fleet;
pub mod guard;
pub mod keyholder;
pub mod keyholders;
pub mod node;
pub mod pki;
pub mod raw;
pub mod roles;
pub mod trainer;
pub mod transport;

/// Generated protocol types and gRPC stubs (`proto/confide.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("confide.v1");
}

/// Conversions between wire and domain contributions.
pub mod wire {
    use confide_secagg::Contribution;

    use crate::pb;

    /// Domain → wire.
    pub fn to_pb(c: Contribution) -> pb::Contribution {
        pb::Contribution {
            owner: c.owner,
            round: c.round,
            stage: c.stage,
            payload: c.payload,
            signature: c.signature,
            model_digest: c.model_digest.to_vec(),
        }
    }

    /// Wire → domain. A model digest of the wrong length becomes all zeroes, which no honest
    /// round uses, so the contribution fails its checks with a clear rule instead of a parse
    /// error.
    pub fn from_pb(c: pb::Contribution) -> Contribution {
        Contribution {
            owner: c.owner,
            round: c.round,
            stage: c.stage,
            model_digest: c.model_digest.try_into().unwrap_or([0u8; 32]),
            payload: c.payload,
            signature: c.signature,
        }
    }
}
