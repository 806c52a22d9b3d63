//! Confide's shared vocabulary: the job configuration every role reads, party roles, and the
//! numbered validation rules. This crate does no I/O beyond reading a configuration file.

pub mod code;
pub mod config;
pub mod crash;
pub mod layers;
pub mod role;

pub use config::{
    AccountantKind, AggregatorsSection, ColumnRef, ConfidentialSection, ConfigError, DataFormat,
    JobConfig, JobSpec, LEAF_ALPHABET, ModelKind, Partition, PartitionSection, PartySection,
    PrivacyLevel, PrivacySection, RobustKind, RobustRule, SchemeKind, ServerOptimizer,
    ServerOptimizerKind, SimulateMode, StandardizeSpec, TextSpec, UnknownChars,
};
pub use layers::{Layer, Shape};
pub use role::Role;
