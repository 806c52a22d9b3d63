//! Confide's aggregation schemes as sans-I/O state machines, behind one interface
//! ([`scheme::AggregationClient`], [`scheme::AggregationServer`]), plus the signed
//! contribution envelope and the key holder's decision logic (`paillier` and `lattice`).
//!
//! Nothing here opens a socket or reads a clock; `confide-net` drives these machines over gRPC
//! and the tests drive them directly.

pub mod aggregators;
pub mod contribution;
pub mod holder;
pub mod keyholder;
pub mod lattice;
pub mod masking;
pub mod robust;
pub mod scheme;
pub mod shamir;
pub mod threshold;

pub use aggregators::{Aggregator, AggregatorKey, MultiClient, MultiParams, MultiServer};
pub use contribution::{
    Contribution, Unsigned, VerifiedContribution, model_digest, sign_contribution,
};
pub use holder::{HolderPublicKey, KeyHolderServer};
pub use keyholder::{HolderKey, UnsealError, UnsealRecord, Unsealer};
pub use lattice::LatticeClient;
pub use scheme::{
    AggregateSum, AggregationClient, AggregationServer, ExternalRequest, ExternalResult,
    PaillierClient, PlainClient, PlainServer, Reject, Rejection, RoundContext, SchemeError,
    SchemeParams, StageResult,
};

#[cfg(test)]
mod tests;
