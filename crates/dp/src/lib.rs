//! Confide's differential-privacy accounting.
//!
//! - [`rdp`]: Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang,
//!   "Rényi Differential Privacy of the Sampled Gaussian Mechanism", 2019), composed over
//!   steps, converted to (ε, δ), and inverted to find the noise multiplier for a target ε.
//!
//! Golden values come from Google's dp-accounting (see `testdata/`). The PLD accountant,
//! DP-SGD, noise samplers and the budget ledger of the DP issue are not built yet.

pub mod rdp;

pub use rdp::{
    AccountingError, RdpAccountant, default_orders, epsilon_from_rdp, noise_multiplier_for,
};
