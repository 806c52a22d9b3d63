//! Confide's role servers over gRPC (tonic, codegen by protox, so no `protoc`) with mutual TLS
//! (rustls with the ring provider), and the federation's certificate authority.
//!
//! - [`pki`]: `confide ca`: an Ed25519 CA per federation, party certificates naming role and
//!   name, identity checks.
//! - [`transport`]: mutual-TLS servers and clients; the caller's identity and role per call.
//! - [`coordinator`]: rounds, FedAvg, deadlines, dropouts; never holds a key.
//! - [`keyholder`]: the Paillier key holder.
//! - [`node`]: a data owner.
//! - [`roles`]: starting each role on a listener.
//!
//! Only this crate and the CLI open sockets (ARCHITECTURE.md, "Layout").

pub mod coordinator;
pub mod keyholder;
pub mod node;
pub mod pki;
pub mod roles;
pub mod transport;

/// Generated protocol types and gRPC stubs (`proto/confide.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("confide.v1");
}
