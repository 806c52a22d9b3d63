//! Confide's shared vocabulary: the job configuration every role reads, party roles, and the
//! numbered validation rules. This crate does no I/O beyond reading a configuration file.

pub mod config;
pub mod crash;
pub mod role;

pub use config::{
    AccountantKind, AggregatorsSection, ColumnRef, ConfidentialSection, ConfigError, JobConfig,
    JobSpec, ModelKind, Partition, PrivacyLevel, PrivacySection, RobustKind, RobustRule,
    SchemeKind, ServerOptimizer, ServerOptimizerKind, SimulateMode, StandardizeSpec,
};
pub use role::Role;
