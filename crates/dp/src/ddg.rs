//! Client-level DP for federations: the distributed discrete Gaussian mechanism of Kairouz,
//! Liu and Steinke ("The Distributed Discrete Gaussian Mechanism for Federated Learning with
//! Secure Aggregation", ICML 2021, arXiv:2102.06387; "KLS21" below).
//!
//! Every owner turns its model update `x ∈ ℝ^d` into integers that only a secure sum reveals:
//! 1. **clip** to L2 norm `c`;
//! 2. **rotate**: pad to `d' = 2^⌈log₂ d⌉` and apply the randomised Hadamard transform
//!    `H·D/√d'` (`D` a diagonal of random signs from a *public* per-round seed), which spreads
//!    the norm evenly over the coordinates (KLS21, Section 4.2);
//! 3. **scale** by `1/γ` (the granularity) and **round randomly** to integers (each coordinate
//!    up with probability equal to its fractional part), retrying until the rounded vector's
//!    norm is at most the bound `Δ₂` of KLS21 Theorem 1 / Proposition 22 (conditional
//!    randomised rounding with parameter `β`);
//! 4. **add noise** `N_Z(0, σ_z²)` on every coordinate from the exact discrete Gaussian sampler
//!    ([`crate::noise::DiscreteGaussian`]), so the sum of `n` owners carries the noise of all;
//! 5. **reduce modulo** `m = 2^bits` into `[−m/2, m/2)` (modular clipping, KLS21 Section 4.3).
//!
//! The aggregator reduces the sum modulo `m`, multiplies by `γ`, undoes the rotation, drops the
//! padding and divides by the number of contributors. No single party adds the whole noise: the
//! privacy guarantee needs at least `n` honest owners to have added theirs, and [`DdgConfig`]
//! is calibrated for the `min_honest` owners the job declares.
//!
//! **Accounting** (KLS21 Proposition 14 with Theorem 1): with `τ = 10·Σ_{k=1}^{n−1}
//! e^{−2π²σ_z² k/(k+1)}`, sensitivities `Δ₂` (after rounding) and `Δ₁ = Δ₂·min(√d', Δ₂)`, and
//! `s = √n·σ_z`, one round is `(α, ε(α))`-RDP for every order `α ≥ 1` with
//! `ε(α) = min(α/2·(Δ₂/s)² + τd', α/2·((Δ₂/s)² + 2τΔ₁/s + τ²d'), α/2·(Δ₂/s + τ√d')²)`.
//! Rounds compose additively (every owner takes part in every round: no amplification is
//! claimed) and the total converts to (ε, δ) as in [`crate::rdp`]. The orders are the integers
//! 2…128 and 256, as in the authors' accounting.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::noise::{DiscreteGaussian, NoiseRng, SigmaSq};
use crate::rdp::{AccountingError, epsilon_from_rdp};

/// Parameters of the distributed discrete Gaussian for one job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DdgConfig {
    /// Coordinates of an update (the model's parameter count).
    pub dim: usize,
    /// L2 clip norm `c` of each owner's update.
    pub l2_clip: f64,
    /// Granularity `γ`: an integer step is worth `γ` in model units.
    pub gamma: f64,
    /// Conditional-rounding parameter `β` (KLS21 use `e^{−1/2}`).
    pub beta: f64,
    /// Each owner's noise standard deviation in integer units, `σ_z`.
    pub local_sigma: f64,
    /// Bits of the modulus `m = 2^bits`.
    pub modulus_bits: u32,
}

/// Errors of the mechanism: parameters or inputs out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DdgError {
    /// A parameter is out of range.
    #[error("client-level DP: {0}")]
    Invalid(String),
    /// The accountant refused.
    #[error(transparent)]
    Accounting(#[from] AccountingError),
}

fn bad(msg: impl Into<String>) -> DdgError {
    DdgError::Invalid(msg.into())
}

/// The accounting orders: 2…128 and 256.
fn orders() -> Vec<f64> {
    (2..=128).map(f64::from).chain([256.0]).collect()
}

impl DdgConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// The first parameter out of range.
    pub fn validate(&self) -> Result<(), DdgError> {
        if self.dim == 0 || self.dim > 1 << 26 {
            return Err(bad(format!("dimension {} out of range", self.dim)));
        }
        if !(self.l2_clip > 0.0 && self.l2_clip.is_finite()) {
            return Err(bad("the clip norm must be positive"));
        }
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return Err(bad("the granularity must be positive"));
        }
        if !(0.0..1.0).contains(&self.beta) {
            return Err(bad("beta must be in [0, 1)"));
        }
        if !(self.local_sigma >= 0.5 && self.local_sigma.is_finite()) {
            // KLS21 Theorem 1 needs σ_z ≥ 1/2.
            return Err(bad(format!(
                "the local noise σ_z = {} must be at least 1/2 (integer units)",
                self.local_sigma
            )));
        }
        if !(4..=40).contains(&self.modulus_bits) {
            return Err(bad("modulus bits must be between 4 and 40"));
        }
        Ok(())
    }

    /// `d'`, the padded dimension (a power of two).
    pub fn padded_dim(&self) -> usize {
        self.dim.next_power_of_two()
    }

    /// `m / 2`: encoded values lie in `[−m/2, m/2)`.
    pub fn half_modulus(&self) -> i64 {
        1i64 << (self.modulus_bits - 1)
    }

    /// `Δ₂`: the L2 norm bound of a clipped, scaled and conditionally rounded update (KLS21
    /// Theorem 1: `min(c/γ + √d', √(c²/γ² + d'/4 + √(2 ln(1/β))·(c/γ + √d'/2)))`).
    pub fn rounded_l2_bound(&self) -> f64 {
        let c = self.l2_clip / self.gamma;
        let d = self.padded_dim() as f64;
        let plain = c + d.sqrt();
        if self.beta == 0.0 {
            return plain;
        }
        let conditional =
            (c * c + d / 4.0 + (2.0 * (1.0 / self.beta).ln()).sqrt() * (c + d.sqrt() / 2.0)).sqrt();
        plain.min(conditional)
    }

    /// ε over `rounds` rounds with at least `n` honest owners adding noise, at `delta`.
    ///
    /// # Errors
    /// Invalid parameters or `n = 0`.
    pub fn epsilon(&self, n: usize, rounds: u64, delta: f64) -> Result<f64, DdgError> {
        self.validate()?;
        if n == 0 || rounds == 0 {
            return Err(bad("need at least one honest owner and one round"));
        }
        let d = self.padded_dim() as f64;
        let sz2 = self.local_sigma * self.local_sigma;
        let tau = 10.0
            * (1..n)
                .map(|k| {
                    let k = k as f64;
                    (-2.0 * std::f64::consts::PI.powi(2) * sz2 * k / (k + 1.0)).exp()
                })
                .sum::<f64>();
        let l2 = self.rounded_l2_bound();
        let l1 = l2 * d.sqrt().min(l2);
        let s = (n as f64).sqrt() * self.local_sigma;
        let (a2, a1) = (l2 / s, l1 / s);
        let orders = orders();
        let rdp: Vec<f64> = orders
            .iter()
            .map(|&alpha| {
                let t1 = alpha / 2.0 * a2 * a2 + tau * d;
                let t2 = alpha / 2.0 * (a2 * a2 + 2.0 * a1 * tau + tau * tau * d);
                let t3 = alpha / 2.0 * (a2 + d.sqrt() * tau).powi(2);
                t1.min(t2).min(t3) * rounds as f64
            })
            .collect();
        Ok(epsilon_from_rdp(&orders, &rdp, delta)?.0)
    }

    /// The smallest local noise `σ_z` (to relative precision 1e-6) that meets `target_epsilon`.
    ///
    /// # Errors
    /// Invalid parameters, or no `σ_z ≤ 2^40` reaches the target.
    pub fn calibrate(
        mut self,
        target_epsilon: f64,
        n: usize,
        rounds: u64,
        delta: f64,
    ) -> Result<Self, DdgError> {
        if !(target_epsilon > 0.0 && target_epsilon.is_finite()) {
            return Err(bad("the target ε must be positive"));
        }
        let eps_at = |cfg: &mut Self, s: f64| {
            cfg.local_sigma = s;
            cfg.epsilon(n, rounds, delta)
        };
        let (mut lo, mut hi) = (0.5f64, 1.0f64);
        while eps_at(&mut self, hi)? > target_epsilon {
            lo = hi;
            hi *= 2.0;
            if hi > 2f64.powi(40) {
                return Err(bad(format!("no local noise reaches ε ≤ {target_epsilon}")));
            }
        }
        if eps_at(&mut self, lo)? <= target_epsilon {
            self.local_sigma = lo;
            return Ok(self);
        }
        while hi - lo > 1e-6 * hi {
            let mid = 0.5 * (lo + hi);
            if eps_at(&mut self, mid)? <= target_epsilon {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.local_sigma = hi;
        Ok(self)
    }

    /// Checks that the modulus leaves room for the aggregate: `k` standard deviations of a sum
    /// of `n` rotated, scaled, noisy updates (KLS21 Section 4.4: per coordinate about
    /// `(n·c/γ)²/d' + n·(σ_z² + 1/4)`) must fit in `[−m/2, m/2)`, with
    /// `k = √(2 ln(2d'/p))` for `p = 0.01` (a sub-Gaussian tail bound over all `d'`
    /// coordinates), so that a round's sum wraps anywhere with probability at most about 1 %.
    ///
    /// # Errors
    /// A message with the numbers when it does not fit.
    pub fn check_headroom(&self, n: usize) -> Result<(), DdgError> {
        let n = n as f64;
        let c = self.l2_clip / self.gamma;
        let var = (n * c).powi(2) / self.padded_dim() as f64
            + n * (self.local_sigma * self.local_sigma + 0.25);
        let k = (2.0 * (2.0 * self.padded_dim() as f64 / 0.01).ln()).sqrt();
        let needed = k * var.sqrt();
        if needed >= self.half_modulus() as f64 {
            return Err(bad(format!(
                "{} modulus bits leave no headroom: {k:.1} standard deviations of the sum are \
                 {needed:.0}, above m/2 = {}; raise the bits or the granularity",
                self.modulus_bits,
                self.half_modulus()
            )));
        }
        Ok(())
    }

    /// One owner's encoding of `update` for round seed `seed` (public, the same for every
    /// owner), with rounding and noise from `rng`.
    ///
    /// # Errors
    /// A wrong length or non-finite values.
    pub fn encode(
        &self,
        update: &[f32],
        seed: [u8; 32],
        rng: &mut NoiseRng,
    ) -> Result<Vec<i64>, DdgError> {
        self.validate()?;
        if update.len() != self.dim {
            return Err(bad(format!(
                "update has {} values, the job {}",
                update.len(),
                self.dim
            )));
        }
        if update.iter().any(|v| !v.is_finite()) {
            return Err(bad("update has non-finite values"));
        }
        let norm = update
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let scale = (self.l2_clip / norm.max(f64::MIN_POSITIVE)).min(1.0) / self.gamma;
        let mut x: Vec<f64> = update.iter().map(|&v| f64::from(v) * scale).collect();
        x.resize(self.padded_dim(), 0.0);
        rotate(&mut x, seed);
        let bound = self.rounded_l2_bound();
        let rounded = loop {
            let r: Vec<i64> = x
                .iter()
                .map(|&v| {
                    let f = v.floor();
                    let up = unit(rng) < v - f;
                    f as i64 + i64::from(up)
                })
                .collect();
            let n2: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
            if n2.sqrt() <= bound {
                break r;
            }
        };
        let sampler = DiscreteGaussian::new(
            SigmaSq::from_sigma(self.local_sigma).map_err(|e| bad(e.to_string()))?,
        )
        .map_err(|e| bad(e.to_string()))?;
        let m = 2 * self.half_modulus();
        Ok(rounded
            .into_iter()
            .map(|v| centered_mod(v + sampler.sample(rng), m))
            .collect())
    }

    /// The mean update from the exact integer sum of `contributors` owners' encodings.
    ///
    /// # Errors
    /// A sum of the wrong length, or no contributors.
    pub fn decode_mean(
        &self,
        sum: &[i128],
        contributors: usize,
        seed: [u8; 32],
    ) -> Result<Vec<f32>, DdgError> {
        if sum.len() != self.padded_dim() || contributors == 0 {
            return Err(bad(format!(
                "cannot decode a sum of {} values from {contributors} owners",
                sum.len()
            )));
        }
        let m = 2 * i128::from(self.half_modulus());
        let mut y: Vec<f64> = sum
            .iter()
            .map(|&s| {
                let r = s.rem_euclid(m);
                (if r >= m / 2 { r - m } else { r }) as f64 * self.gamma
            })
            .collect();
        unrotate(&mut y, seed);
        Ok(y[..self.dim]
            .iter()
            .map(|&v| (v / contributors as f64) as f32)
            .collect())
    }
}

fn unit(rng: &mut NoiseRng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn centered_mod(v: i64, m: i64) -> i64 {
    let r = v.rem_euclid(m);
    if r >= m / 2 { r - m } else { r }
}

/// The public round seed's random signs.
fn signs(n: usize, seed: [u8; 32]) -> Vec<f64> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let w = rng.next_u64();
        for b in 0..64 {
            if out.len() == n {
                break;
            }
            out.push(if (w >> b) & 1 == 1 { -1.0 } else { 1.0 });
        }
    }
    out
}

/// In-place fast Walsh–Hadamard transform (unnormalised, Sylvester order).
fn hadamard(v: &mut [f64]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for block in v.chunks_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                let (s, t) = (*x + *y, *x - *y);
                *x = s;
                *y = t;
            }
        }
        h *= 2;
    }
}

/// `x ← H·D·x / √d'`.
fn rotate(x: &mut [f64], seed: [u8; 32]) {
    let d = signs(x.len(), seed);
    for (v, s) in x.iter_mut().zip(d) {
        *v *= s;
    }
    hadamard(x);
    let k = 1.0 / (x.len() as f64).sqrt();
    x.iter_mut().for_each(|v| *v *= k);
}

/// The inverse, `x ← D·H·x / √d'` (`H` is symmetric and `H² = d'·I`).
fn unrotate(x: &mut [f64], seed: [u8; 32]) {
    hadamard(x);
    let k = 1.0 / (x.len() as f64).sqrt();
    let d = signs(x.len(), seed);
    for (v, s) in x.iter_mut().zip(d) {
        *v *= s * k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dim: usize) -> DdgConfig {
        DdgConfig {
            dim,
            l2_clip: 1.0,
            gamma: 1e-3,
            beta: (-0.5f64).exp(),
            local_sigma: 50.0,
            modulus_bits: 20,
        }
    }

    #[test]
    fn rotation_is_orthogonal_and_inverted() {
        let mut x: Vec<f64> = (0..64).map(|i| (i as f64 * 0.37).sin()).collect();
        let orig = x.clone();
        rotate(&mut x, [4; 32]);
        let n0: f64 = orig.iter().map(|v| v * v).sum();
        let n1: f64 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-9 * n0);
        assert!(x.iter().zip(&orig).any(|(a, b)| (a - b).abs() > 1e-3));
        unrotate(&mut x, [4; 32]);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-12);
        }
        // A spike is spread flat: every coordinate gets 1/√d'.
        let mut spike = vec![0.0; 64];
        spike[5] = 1.0;
        rotate(&mut spike, [9; 32]);
        assert!(spike.iter().all(|v| (v.abs() - 0.125).abs() < 1e-12));
    }

    #[test]
    fn the_sum_of_encodings_decodes_to_the_mean_within_the_noise() {
        let cfg = config(40);
        let updates: Vec<Vec<f32>> = (0..5)
            .map(|k| {
                (0..40)
                    .map(|i| ((i * 7 + k) as f32 * 0.1).cos() * 0.05)
                    .collect()
            })
            .collect();
        let seed = [3; 32];
        let mut rng = NoiseRng::from_seed([1; 32]);
        let mut sum = vec![0i128; cfg.padded_dim()];
        for u in &updates {
            let e = cfg.encode(u, seed, &mut rng).expect("encode");
            assert!(
                e.iter()
                    .all(|&v| (-cfg.half_modulus()..cfg.half_modulus()).contains(&v))
            );
            for (s, v) in sum.iter_mut().zip(e) {
                *s += i128::from(v);
            }
        }
        let mean = cfg.decode_mean(&sum, 5, seed).expect("decode");
        // Noise per coordinate of the mean: γ·√5·σ_z/5 = 1e-3·50/√5 ≈ 0.022, plus rounding.
        let exact: Vec<f64> = (0..40)
            .map(|i| updates.iter().map(|u| f64::from(u[i])).sum::<f64>() / 5.0)
            .collect();
        let err: f64 = mean
            .iter()
            .zip(&exact)
            .map(|(a, b)| (f64::from(*a) - b).powi(2))
            .sum::<f64>()
            / 40.0;
        let sd = err.sqrt();
        assert!(sd < 0.04 && sd > 0.01, "rms error {sd}");
    }

    #[test]
    fn clipping_bounds_each_owners_influence() {
        let cfg = DdgConfig {
            local_sigma: 0.5,
            ..config(16)
        };
        let big = vec![10.0f32; 16]; // norm 40, clipped to 1
        let mut rng = NoiseRng::from_seed([2; 32]);
        let e = cfg.encode(&big, [5; 32], &mut rng).expect("encode");
        let sum: Vec<i128> = e.iter().map(|&v| i128::from(v)).collect();
        let back = cfg.decode_mean(&sum, 1, [5; 32]).expect("decode");
        let norm = back
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 0.05, "norm {norm}");
    }

    #[test]
    fn modular_wrap_is_undone_for_sums_inside_the_range() {
        assert_eq!(centered_mod(5, 16), 5);
        assert_eq!(centered_mod(8, 16), -8);
        assert_eq!(centered_mod(-9, 16), 7);
        let cfg = DdgConfig {
            modulus_bits: 4,
            ..config(1)
        };
        // Two owners' encodings 7 and 7 sum to 14 ≡ −2 (mod 16): the aggregate wrapped, and
        // decodes to ±2γ/2 (the sign is the public rotation's, d' = 1).
        let mean = cfg.decode_mean(&[14], 2, [0; 32]).expect("decode");
        assert!((f64::from(mean[0]).abs() - 1e-3).abs() < 1e-9);
    }

    #[test]
    fn epsilon_decreases_with_noise_and_honest_owners_and_calibration_meets_the_target() {
        let cfg = config(1024);
        let e1 = cfg.epsilon(10, 20, 1e-5).expect("eps");
        let e2 = DdgConfig {
            local_sigma: 100.0,
            ..cfg
        }
        .epsilon(10, 20, 1e-5)
        .expect("eps");
        let e3 = cfg.epsilon(40, 20, 1e-5).expect("eps");
        assert!(e2 < e1 && e3 < e1, "{e1} {e2} {e3}");
        let cal = cfg.calibrate(2.0, 10, 20, 1e-5).expect("calibrate");
        let e = cal.epsilon(10, 20, 1e-5).expect("eps");
        assert!(e <= 2.0 && e > 1.98, "{e} at σ_z {}", cal.local_sigma);
    }

    #[test]
    fn large_noise_matches_the_continuous_gaussian_mechanism() {
        // With σ_z large, τ vanishes and the bound is the Gaussian mechanism's RDP α·Δ₂²/(2s²),
        // so ε must equal crate::rdp's answer for q = 1 and noise multiplier s/Δ₂.
        let cfg = DdgConfig {
            local_sigma: 400.0,
            ..config(64)
        };
        let (n, rounds) = (8usize, 30u64);
        let ours = cfg.epsilon(n, rounds, 1e-5).expect("eps");
        let z = (n as f64).sqrt() * cfg.local_sigma / cfg.rounded_l2_bound();
        let mut acc = crate::rdp::RdpAccountant::new(orders());
        acc.compose_subsampled_gaussian(1.0, z, rounds)
            .expect("compose");
        let reference = acc.epsilon(1e-5).expect("eps").0;
        assert!(
            (ours - reference).abs() < 1e-9 * reference,
            "{ours} vs {reference}"
        );
    }

    #[test]
    fn headroom_is_checked_and_bad_parameters_are_refused() {
        let cfg = config(1024);
        assert!(cfg.check_headroom(10).is_ok());
        let small = DdgConfig {
            modulus_bits: 8,
            ..cfg
        };
        let err = small.check_headroom(10).expect_err("too small");
        assert!(err.to_string().contains("headroom"), "{err}");
        assert!(
            DdgConfig {
                local_sigma: 0.1,
                ..cfg
            }
            .validate()
            .is_err()
        );
        let mut rng = NoiseRng::from_seed([0; 32]);
        assert!(cfg.encode(&[0.0; 3], [0; 32], &mut rng).is_err());
        assert!(cfg.encode(&[f32::NAN; 1024], [0; 32], &mut rng).is_err());
        assert!(cfg.decode_mean(&[0; 3], 1, [0; 32]).is_err());
    }
}
