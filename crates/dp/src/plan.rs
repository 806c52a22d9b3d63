//! Privacy plans: from a job's privacy settings to the noise multiplier and the ε it spends.

use serde::{Deserialize, Serialize};

use crate::rdp::AccountingError;

/// Which accountant turns (q, σ, steps, δ) into ε.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accountant {
    /// Rényi DP ([`crate::rdp`]).
    Rdp,
    /// Privacy-loss distributions ([`crate::pld`]).
    Pld,
}

impl Accountant {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Accountant::Rdp => "rdp",
            Accountant::Pld => "pld",
        }
    }

    /// ε of `steps` compositions of the Poisson-subsampled Gaussian mechanism.
    ///
    /// # Errors
    /// Parameters outside their domain.
    pub fn epsilon(
        self,
        q: f64,
        sigma: f64,
        steps: u64,
        delta: f64,
    ) -> Result<f64, AccountingError> {
        match self {
            Accountant::Rdp => crate::rdp::epsilon(q, sigma, steps, delta),
            Accountant::Pld => crate::pld::epsilon(q, sigma, steps, delta),
        }
    }

    /// The smallest noise multiplier whose ε is at most `target_epsilon`.
    ///
    /// # Errors
    /// Parameters outside their domain, or a target no σ ≤ 1000 reaches.
    pub fn noise_multiplier_for(
        self,
        target_epsilon: f64,
        q: f64,
        steps: u64,
        delta: f64,
    ) -> Result<f64, AccountingError> {
        match self {
            Accountant::Rdp => crate::rdp::noise_multiplier_for(target_epsilon, q, steps, delta),
            Accountant::Pld => crate::pld::noise_multiplier_for(target_epsilon, q, steps, delta),
        }
    }
}

/// How the noise is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiseChoice {
    /// Calibrate σ so that ε is at most this.
    TargetEpsilon(f64),
    /// Use this σ and report its ε.
    NoiseMultiplier(f64),
}

/// A calibrated DP-SGD run: what it does and what it spends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrivacyPlan {
    /// The accountant used.
    pub accountant: Accountant,
    /// Poisson sampling rate per step.
    pub sampling_rate: f64,
    /// Steps (compositions).
    pub steps: u64,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// ε spent by the whole run at `delta`.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
}

impl PrivacyPlan {
    /// Calibrates (or evaluates) a run of `steps` Poisson-subsampled Gaussian steps.
    ///
    /// # Errors
    /// Parameters outside their domain, or an unreachable target.
    pub fn new(
        accountant: Accountant,
        noise: NoiseChoice,
        sampling_rate: f64,
        steps: u64,
        delta: f64,
    ) -> Result<Self, AccountingError> {
        let noise_multiplier = match noise {
            NoiseChoice::TargetEpsilon(e) => {
                accountant.noise_multiplier_for(e, sampling_rate, steps, delta)?
            }
            NoiseChoice::NoiseMultiplier(s) => s,
        };
        let epsilon = accountant.epsilon(sampling_rate, noise_multiplier, steps, delta)?;
        Ok(Self {
            accountant,
            sampling_rate,
            steps,
            noise_multiplier,
            epsilon,
            delta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrated_plan_meets_its_target_and_fixed_sigma_is_reported() {
        for acc in [Accountant::Rdp, Accountant::Pld] {
            let plan = PrivacyPlan::new(acc, NoiseChoice::TargetEpsilon(4.0), 0.05, 400, 1e-5)
                .expect("ok");
            assert!(plan.epsilon <= 4.0 + 1e-9, "{acc:?} {plan:?}");
            assert!(plan.epsilon > 3.8, "{acc:?} {plan:?}");
            let fixed = PrivacyPlan::new(
                acc,
                NoiseChoice::NoiseMultiplier(plan.noise_multiplier),
                0.05,
                400,
                1e-5,
            )
            .expect("ok");
            assert_eq!(fixed.epsilon, plan.epsilon);
        }
    }
}
