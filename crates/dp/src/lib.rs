//! Confide's differential privacy: accounting and noise.
//!
//! - [`rdp`]: Rényi DP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar, Zhang,
//!   "Rényi Differential Privacy of the Sampled Gaussian Mechanism", 2019), composed over
//!   steps, converted to (ε, δ), and inverted to find the noise multiplier for a target ε.
//! - [`pld`]: privacy-loss-distribution accounting of the same mechanism (Koskela, Jälkö and
//!   Honkela 2020, FFT composition; Doroshenko et al. 2022, pessimistic connect-the-dots
//!   discretisation), tighter than RDP; its ε is an upper bound on the true ε.
//! - [`noise`]: a ChaCha20 CSPRNG, the exact discrete Gaussian sampler of Canonne, Kamath and
//!   Steinke (2020), and a fast ziggurat Gaussian (Box–Muller kept as a reference) whose
//!   releases are snapped to a power-of-two grid against Mironov's (2012) floating-point
//!   attack (the module docs say exactly what the snapping does and does not guarantee).
//! - [`plan`]: from a job's privacy settings (target ε or σ, q, steps, δ) to the calibrated
//!   noise multiplier and the ε it spends, with either accountant.
//! - [`ddg`]: client-level DP for federations, the distributed discrete Gaussian of Kairouz,
//!   Liu and Steinke (2021): clipping, random rotation, conditional randomised rounding,
//!   discrete Gaussian noise shares and modular clipping, with its RDP accounting.
//! - [`ledger`]: the durable privacy budget ledger per dataset, on `confide-store` (redb by
//!   default): (ε, δ) debited before a job starts, basic composition across jobs, refusals
//!   over budget, one run per job id.
//!
//! Golden values come from Google's dp-accounting (see `testdata/`, which records the version
//! and the command for each file).

pub mod ddg;
pub mod ledger;
pub mod noise;
pub mod plan;
pub mod pld;
pub mod rdp;

pub use ledger::{
    Budget, BudgetLedger, Clock, EntryState, LedgerEntry, LedgerError, Receipt, SystemClock,
};
pub use noise::{
    DiscreteGaussian, GaussianNoise, NoiseError, NoiseRng, SigmaSq, fill_discrete_gaussian,
};
pub use pld::PldAccountant;
pub use rdp::{
    AccountingError, RdpAccountant, default_orders, epsilon_from_rdp, noise_multiplier_for,
};
