//! Confide's machine-learning core, on burn 0.22 (pure-Rust `flex` CPU backend with autodiff).
//!
//! - [`arrays`]: records, labels and groups as one safetensors file (images).
//! - [`dataset`]: CSV loading with label and excluded columns by name or index, schema checks,
//!   stratified splits.
//! - [`standardize`]: standardisation fitted on training data only.
//! - [`model`]: logistic regression, softmax regression and an MLP as one burn module; the
//!   parameter vector round trip.
//! - [`stack`]: models as a list of layers (dense, conv2d, pooling, norms, dropout,
//!   embedding), their training and per-sample clipping for DP-SGD.
//! - [`text`]: text for next-character prediction, cut into windows of character ids.
//! - [`train`]: mini-batch SGD, and accuracy, log-loss and AUC.
//! - [`dpsgd`]: DP-SGD with per-sample clipping by book-keeping, Poisson sampling and
//!   Gaussian noise.
//! - [`export`]: safetensors plus a JSON sidecar.
//! - [`idx`]: IDX image and label arrays (MNIST), gzipped or not.
//! - [`partition`]: seeded splits of one dataset among simulated owners (natural, IID,
//!   Dirichlet over labels, shards, quantity skew).
//!
//! burn lives only in this crate (docs/ARCHITECTURE.md, "Layout").

pub mod arrays;
pub mod dataset;
pub mod dpsgd;
pub mod export;
pub mod idx;
pub mod job;
pub mod model;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod partition;
pub mod server_opt;
pub mod stack;
pub mod standardize;
pub mod text;
pub mod train;

pub use dataset::{Column, CsvSpec, DataError, Dataset};
pub use dpsgd::{CsprngNoise, DpSgdConfig, DpSgdOutcome, NoiseSource};
pub use model::{ModelError, ModelKind, ModelSpec, Network};
pub use standardize::Standardizer;
pub use train::{Metrics, TrainConfig, TrainOutcome};
