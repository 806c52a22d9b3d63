//! Rényi differential privacy (RDP) of the Poisson-subsampled Gaussian mechanism.
//!
//! One step samples each record independently with probability `q` and adds Gaussian noise of
//! standard deviation `σ` (the noise multiplier, relative to the clipping norm) to the sum.
//! Following Mironov, Talwar and Zhang (2019), its RDP at order `α > 1` is
//! `ε(α) = log(A_α) / (α − 1)` with `A_α = E_{z∼N(0,σ²)}[((1−q) + q·e^{(2z−1)/(2σ²)})^α]`:
//!
//! - for integer `α`, by the binomial expansion (their Section 3.3):
//!   `A_α = Σ_{k=0}^{α} C(α,k) (1−q)^{α−k} q^k e^{(k²−k)/(2σ²)}`;
//! - for fractional `α`, by splitting the integral at `z₀ = σ² log(1/q − 1) + ½` and expanding
//!   each half in a generalised binomial series whose terms carry a Gaussian tail
//!   `½ erfc(·/(√2 σ))` (their Section 3.3, "fractional α"). The series is summed in log space
//!   with signs until its terms fall below `e^{−30}` relative to one.
//!
//! RDP composes additively over steps. The conversion to (ε, δ) is the improved bound of
//! Canonne, Kamath and Steinke (2020, Proposition 12; also Asoodeh et al. 2020, eq. 20):
//! `ε = ε(α) + log(1 − 1/α) − log(δ α)/(α − 1)`, minimised over the orders. The default orders
//! are those of Google's dp-accounting (`RdpAccountant` defaults), so results are comparable.

/// Accounting errors: invalid parameters from the caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountingError {
    /// A parameter is outside its domain.
    #[error("invalid {name}: {value} ({rule})")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// What it must satisfy.
        rule: &'static str,
    },
    /// No noise multiplier in the search range reaches the target.
    #[error("no noise multiplier up to {max_sigma} reaches ε ≤ {target} (ε there is {reached})")]
    Unreachable {
        /// Target ε.
        target: f64,
        /// Largest σ tried.
        max_sigma: f64,
        /// ε at that σ.
        reached: f64,
    },
}

fn invalid(name: &'static str, value: f64, rule: &'static str) -> AccountingError {
    AccountingError::Invalid { name, value, rule }
}

/// The default RDP orders of dp-accounting: 1.1, 1.2, …, 10.9, then 11…63, 128, 256, 512,
/// 1024.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// `log(e^a + e^b)`.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `log(e^a − e^b)` for `a ≥ b`; `−∞` when equal.
fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a <= b {
        return f64::NEG_INFINITY;
    }
    a + (-(b - a).exp()).ln_1p()
}

/// `log(erfc(x))`, accurate in the far tail where `erfc` underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 20.0 {
        libm::erfc(x).ln()
    } else {
        // Asymptotic series (Abramowitz & Stegun 7.1.23):
        // erfc(x) ≈ e^{−x²}/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶)).
        let x2 = x * x;
        let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2);
        -x2 - x.ln() - 0.5 * std::f64::consts::PI.ln() + series.ln()
    }
}

/// `log A_α` for integer `α ≥ 2`.
fn log_a_integer(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut acc = f64::NEG_INFINITY;
    let mut log_binom = 0.0; // log C(α, 0)
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    for k in 0..=alpha {
        if k > 0 {
            log_binom += ((alpha - k + 1) as f64).ln() - (k as f64).ln();
        }
        let kf = k as f64;
        let term = log_binom
            + kf * lq
            + (alpha as f64 - kf) * l1q
            + (kf * kf - kf) / (2.0 * sigma * sigma);
        acc = log_add(acc, term);
    }
    acc
}

/// `log A_α` for fractional `α > 1`, by the split series of Mironov et al. (2019).
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let s2 = std::f64::consts::SQRT_2 * sigma;
    let (mut pos0, mut neg0, mut pos1, mut neg1) = (
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    );
    // Generalised binomial coefficient C(α, i), as sign and log-magnitude.
    let (mut sign, mut log_binom) = (1.0f64, 0.0f64);
    for i in 0..100_000u32 {
        let fi = f64::from(i);
        if i > 0 {
            let factor = alpha - (fi - 1.0);
            if factor == 0.0 {
                break; // integer α: the series ends
            }
            sign *= factor.signum();
            log_binom += factor.abs().ln() - fi.ln();
        }
        let j = alpha - fi;
        let t0 = log_binom
            + fi * lq
            + j * l1q
            + (fi * fi - fi) / (2.0 * sigma * sigma)
            + 0.5f64.ln()
            + log_erfc((fi - z0) / s2);
        let t1 = log_binom
            + j * lq
            + fi * l1q
            + (j * j - j) / (2.0 * sigma * sigma)
            + 0.5f64.ln()
            + log_erfc((z0 - j) / s2);
        if sign > 0.0 {
            pos0 = log_add(pos0, t0);
            pos1 = log_add(pos1, t1);
        } else {
            neg0 = log_add(neg0, t0);
            neg1 = log_add(neg1, t1);
        }
        if t0.max(t1) < -30.0 {
            break;
        }
    }
    log_add(log_sub(pos0, neg0), log_sub(pos1, neg1))
}

/// RDP at order `alpha` of one step of the Poisson-subsampled Gaussian mechanism.
pub fn rdp_subsampled_gaussian(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if sigma == 0.0 || alpha.is_infinite() {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 && alpha <= 1.0e6 {
        log_a_integer(q, sigma, alpha as u64)
    } else {
        log_a_fractional(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// The best (ε, order) for RDP values at `orders` and a target `delta`.
pub fn epsilon_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    delta: f64,
) -> Result<(f64, f64), AccountingError> {
    if !(0.0..1.0).contains(&delta) {
        return Err(invalid("delta", delta, "must be in [0, 1)"));
    }
    if delta == 0.0 {
        return Ok(if rdp.iter().all(|&r| r == 0.0) {
            (0.0, 0.0)
        } else {
            (f64::INFINITY, 0.0)
        });
    }
    let mut best = (f64::INFINITY, orders.first().copied().unwrap_or(0.0));
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
            // Negative divergence (numerical) or the KL bound δ ≤ √(1 − e^{−r}) already holds.
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

fn check(q: f64, sigma: f64) -> Result<(), AccountingError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(invalid("q", q, "sampling rate must be in [0, 1]"));
    }
    if !(sigma >= 0.0 && sigma.is_finite()) {
        return Err(invalid(
            "sigma",
            sigma,
            "noise multiplier must be finite and non-negative",
        ));
    }
    Ok(())
}

/// An RDP accountant over a fixed set of orders.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new(default_orders())
    }
}

impl RdpAccountant {
    /// An accountant with no privacy spent.
    pub fn new(orders: Vec<f64>) -> Self {
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }

    /// Adds `steps` steps of the Poisson-subsampled Gaussian mechanism.
    pub fn compose_subsampled_gaussian(
        &mut self,
        q: f64,
        sigma: f64,
        steps: u64,
    ) -> Result<(), AccountingError> {
        check(q, sigma)?;
        for (r, &a) in self.rdp.iter_mut().zip(&self.orders) {
            *r += steps as f64 * rdp_subsampled_gaussian(q, sigma, a);
        }
        Ok(())
    }

    /// The smallest ε, and its order, for `delta`.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), AccountingError> {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }
}

/// ε of `steps` steps at sampling rate `q` and noise multiplier `sigma`, for `delta`.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> Result<f64, AccountingError> {
    let mut acc = RdpAccountant::default();
    acc.compose_subsampled_gaussian(q, sigma, steps)?;
    Ok(acc.epsilon(delta)?.0)
}

/// The smallest noise multiplier (to relative precision 1e-6) whose ε is at most `target`.
/// ε decreases as σ grows, so a bisection on `[0, 1000]` finds it.
pub fn noise_multiplier_for(
    target: f64,
    q: f64,
    steps: u64,
    delta: f64,
) -> Result<f64, AccountingError> {
    if !(target > 0.0 && target.is_finite()) {
        return Err(invalid(
            "target epsilon",
            target,
            "must be positive and finite",
        ));
    }
    check(q, 1.0)?;
    let max_sigma = 1000.0;
    let reached = epsilon(q, max_sigma, steps, delta)?;
    if reached > target {
        return Err(AccountingError::Unreachable {
            target,
            max_sigma,
            reached,
        });
    }
    let (mut lo, mut hi) = (0.0f64, max_sigma);
    while hi - lo > 1e-6 * hi.max(1e-3) {
        let mid = 0.5 * (lo + hi);
        if epsilon(q, mid, steps, delta)? <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_orders_match_dp_accounting() {
        let o = default_orders();
        assert_eq!(o.len(), 99 + 53 + 4);
        assert!((o[0] - 1.1).abs() < 1e-12 && (o[98] - 10.9).abs() < 1e-12);
        assert_eq!(&o[99..101], &[11.0, 12.0]);
        assert_eq!(o[o.len() - 1], 1024.0);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(rdp_subsampled_gaussian(0.0, 1.0, 2.0), 0.0);
        assert_eq!(rdp_subsampled_gaussian(1.0, 2.0, 3.0), 3.0 / 8.0); // plain Gaussian: α/(2σ²)
        assert!(rdp_subsampled_gaussian(0.5, 0.0, 2.0).is_infinite());
        assert!(epsilon(1.5, 1.0, 1, 1e-5).is_err());
        assert!(epsilon(0.1, -1.0, 1, 1e-5).is_err());
        assert!(epsilon(0.1, 1.0, 1, 1.5).is_err());
    }

    #[test]
    fn integer_and_fractional_series_agree_near_integers() {
        // The fractional series at α = 3 ± 1e-9 must meet the closed binomial sum at α = 3.
        for (q, s) in [(0.01, 1.0), (0.2, 2.0), (0.05, 0.7)] {
            let exact = rdp_subsampled_gaussian(q, s, 3.0);
            let near = rdp_subsampled_gaussian(q, s, 3.0 + 1e-9);
            assert!(
                (exact - near).abs() <= 1e-6 * exact.abs().max(1e-12),
                "{q} {s}: {exact} vs {near}"
            );
        }
    }

    #[test]
    fn matches_dp_accounting_golden_values() {
        let text = include_str!("../testdata/dp_accounting_rdp.json");
        let v: serde_json::Value = serde_json::from_str(text).expect("json");
        let cases = v["cases"].as_array().expect("cases");
        let mut checked = 0;
        for c in cases {
            let q = c["q"].as_f64().expect("q");
            let s = c["sigma"].as_f64().expect("sigma");
            let t = c["steps"].as_u64().expect("steps");
            let d = c["delta"].as_f64().expect("delta");
            let ours = epsilon(q, s, t, d).expect("epsilon");
            // Where dp-accounting could not sum the series at some orders, it dropped them and
            // returned a looser bound; the reference is then numerical integration.
            let golden = match c["quad_epsilon"].as_f64() {
                Some(quad) => {
                    assert!(ours <= c["rdp_epsilon"].as_f64().expect("eps") + 1e-9);
                    quad
                }
                None => c["rdp_epsilon"].as_f64().expect("eps"),
            };
            let rel = (ours - golden).abs() / golden;
            assert!(
                rel <= 1e-3,
                "q={q} σ={s} T={t} δ={d}: ours {ours}, dp-accounting {golden} ({rel:.2e})"
            );
            // The inverse finds a σ whose ε meets the golden ε.
            let sigma = noise_multiplier_for(golden, q, t, d).expect("sigma");
            assert!((sigma - s).abs() / s <= 2e-3, "inverse: {sigma} vs {s}");
            checked += 1;
        }
        assert_eq!(checked, cases.len());
        assert!(checked >= 5, "the vector file has {checked} cases");
    }
}
