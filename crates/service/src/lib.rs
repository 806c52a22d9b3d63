//! Confide's long-lived service, without I/O.
//!
//! A standing federation runs many jobs, one after another and side by side, and must survive
//! restarts of any daemon. This crate holds the parts of that which decide things, so that they
//! can be tested without sockets (docs/service.md):
//!
//! - [`job`]: the job lifecycle as a closed state machine. A [`job::JobRecord`] changes only by
//!   [`job::JobRecord::apply`], which either returns the next record or a numbered
//!   [`job::Refusal`]; terminal states are never left.
//! - [`jobs`]: the coordinator's durable job store on [`confide_store`]. A submission, and every
//!   change of state, is one store transaction that also appends the job's event and its audit
//!   entry, so two racing changes (a cancel and a dispatch) have exactly one winner and a crash
//!   leaves either all of a change or none of it.
//!
//! The gRPC `Control` service in `confide-net` and the `confide job …` commands only translate
//! between messages and these types.

pub mod job;
pub mod jobs;

pub use job::{Code, JobRecord, JobState, Outcome, Refusal, Stage, Transition};
pub use jobs::{JobEvent, Jobs, ServiceError, Submitted};
