//! Server optimisers: how the coordinator moves the global model by a round's mean update.
//!
//! FedAvgM is server momentum (Hsu, Qi and Brown, "Measuring the Effects of Non-Identical
//! Data Distribution for Federated Visual Classification", arXiv:1909.06335, 2019). FedAdagrad,
//! FedAdam and FedYogi follow Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
//! Algorithm 2, with `Δ` the round's mean update, `m` starting at 0 and `v` at τ²:
//!
//! - `m ← β₁·m + (1 − β₁)·Δ`
//! - FedAdagrad: `v ← v + Δ²`; FedAdam: `v ← β₂·v + (1 − β₂)·Δ²`;
//!   FedYogi: `v ← v − (1 − β₂)·Δ²·sign(v − Δ²)`
//! - `x ← x + η·m / (√v + τ)`
//!
//! The state (`m`, `v`) is the coordinator's, kept with its checkpoint so that a restart goes
//! on with the same moments. Everything is per coordinate and in f64; the model is f32.

use confide_core::{ServerOptimizer, ServerOptimizerKind};

/// A server optimiser's moments (empty until its first step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerState {
    /// First moment (FedAdagrad, FedAdam, FedYogi) or velocity (FedAvgM).
    pub m: Vec<f64>,
    /// Second moment (not used by FedAvgM).
    pub v: Vec<f64>,
}

impl ServerState {
    /// The moments as bytes: `m` then `v`, little-endian f64s.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.m
            .iter()
            .chain(&self.v)
            .flat_map(|x| x.to_le_bytes())
            .collect()
    }

    /// The inverse of [`ServerState::to_bytes`] for a model of `n` parameters (no bytes: the
    /// state before the first step).
    ///
    /// # Errors
    /// The length is neither 0 nor `16·n`.
    pub fn from_bytes(bytes: &[u8], n: usize) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        if bytes.len() != 16 * n {
            return Err(format!(
                "a server optimiser state of {} bytes for {n} parameters",
                bytes.len()
            ));
        }
        let all: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        Ok(Self {
            m: all[..n].to_vec(),
            v: all[n..].to_vec(),
        })
    }
}

/// One server step: the next global model from `params`, the mean update `delta` and the
/// server learning rate `lr` (η), and the next state. `state` is the state before the step.
///
/// # Errors
/// `delta` or the state does not match the model's size, or the step is not finite.
pub fn step(
    opt: &ServerOptimizer,
    lr: f64,
    params: &[f32],
    delta: &[f64],
    state: &ServerState,
) -> Result<(Vec<f32>, ServerState), String> {
    let n = params.len();
    if delta.len() != n {
        return Err(format!(
            "a mean update of {} coordinates for {n} parameters",
            delta.len()
        ));
    }
    let tau2 = opt.tau * opt.tau;
    let (m0, v0) = if state.m.is_empty() {
        (vec![0.0; n], vec![tau2; n])
    } else if state.m.len() == n && state.v.len() == n {
        (state.m.clone(), state.v.clone())
    } else {
        return Err("a server optimiser state of another size".into());
    };
    let (b1, b2) = (opt.beta1, opt.beta2);
    let mut next = ServerState {
        m: Vec::with_capacity(n),
        v: Vec::with_capacity(n),
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let d = delta[i];
        let (m, v, moved) = match opt.kind {
            ServerOptimizerKind::FedAvgM => {
                let m = b1 * m0[i] + d;
                (m, v0[i], lr * m)
            }
            kind => {
                let m = b1 * m0[i] + (1.0 - b1) * d;
                let d2 = d * d;
                let v = match kind {
                    ServerOptimizerKind::FedAdagrad => v0[i] + d2,
                    ServerOptimizerKind::FedAdam => b2 * v0[i] + (1.0 - b2) * d2,
                    _ => v0[i] - (1.0 - b2) * d2 * sign(v0[i] - d2),
                };
                (m, v, lr * m / (v.sqrt() + opt.tau))
            }
        };
        let x = (f64::from(params[i]) + moved) as f32;
        if !x.is_finite() {
            return Err(format!("the server step made parameter {i} non-finite"));
        }
        next.m.push(m);
        next.v.push(v);
        out.push(x);
    }
    Ok((out, next))
}

/// The sign as Yogi uses it: −1, 0 or 1.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(kind: ServerOptimizerKind) -> ServerOptimizer {
        ServerOptimizer {
            kind,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.01,
        }
    }

    /// Two steps of each optimiser on one coordinate, against values worked out from the update
    /// rules in the module's documentation, by hand and in a separate Python script (x = 1,
    /// η = 0.1, Δ = 0.5 then −0.2; the model is f32, so to 1e-6).
    #[test]
    fn each_optimiser_takes_the_steps_of_its_update_rule() {
        let cases = [
            // FedAvgM: v = 0.5, x = 1.05; v = 0.9·0.5 − 0.2 = 0.25, x = 1.075.
            (ServerOptimizerKind::FedAvgM, [1.05, 1.075]),
            // FedAdagrad: m = 0.05, v = 1e-4 + 0.25 = 0.2501, x = 1 + 0.1·0.05/(0.50010 + 0.01)
            // = 1.0098019…; m = 0.045 − 0.02 = 0.025, v = 0.2901, x += 0.1·0.025/(0.538609… +
            // 0.01) = 0.0045569…
            (ServerOptimizerKind::FedAdagrad, [1.009_802_0, 1.014_359_0]),
            // FedAdam: m = 0.05, v = 0.99e-4 + 0.0025 = 0.002599, x = 1 + 0.005/(0.050980… +
            // 0.01) = 1.0819944…; m = 0.025, v = 0.00257301 + 0.0004 = 0.00297301, x += 0.0025 /
            // (0.054525… + 0.01) = 0.0387444…
            (ServerOptimizerKind::FedAdam, [1.081_993_6, 1.120_738_1]),
            // FedYogi: v = 1e-4 − 0.01·0.25·sign(1e-4 − 0.25) = 0.0026, x = 1 + 0.005/(0.050990…
            // + 0.01) = 1.0819806…; v = 0.0026 − 0.01·0.04·sign(0.0026 − 0.04) = 0.003, x +=
            // 0.0025/(0.054772… + 0.01) = 0.0385968…
            (ServerOptimizerKind::FedYogi, [1.081_980_4, 1.120_577_2]),
        ];
        for (kind, want) in cases {
            let o = opt(kind);
            let (x1, s1) = step(&o, 0.1, &[1.0], &[0.5], &ServerState::default()).expect("step");
            let (x2, _) = step(&o, 0.1, &x1, &[-0.2], &s1).expect("step");
            assert!(
                (f64::from(x1[0]) - want[0]).abs() < 1e-6,
                "{kind:?}: {x1:?}"
            );
            assert!(
                (f64::from(x2[0]) - want[1]).abs() < 1e-6,
                "{kind:?}: {x2:?}"
            );
        }
    }

    #[test]
    fn the_state_round_trips_and_sizes_are_checked() {
        let o = opt(ServerOptimizerKind::FedAdam);
        let (_, s) =
            step(&o, 0.1, &[1.0, 2.0], &[0.5, -0.5], &ServerState::default()).expect("step");
        let back = ServerState::from_bytes(&s.to_bytes(), 2).expect("bytes");
        assert_eq!(back, s);
        assert_eq!(
            ServerState::from_bytes(&[], 2).expect("empty"),
            ServerState::default()
        );
        assert!(ServerState::from_bytes(&s.to_bytes(), 3).is_err());
        assert!(step(&o, 0.1, &[1.0, 2.0], &[0.5], &ServerState::default()).is_err());
        assert!(step(&o, 0.1, &[1.0], &[0.5], &s).is_err());
        let momentum = opt(ServerOptimizerKind::FedAvgM);
        assert!(
            step(
                &momentum,
                0.1,
                &[f32::MAX],
                &[1e300],
                &ServerState::default()
            )
            .is_err()
        );
    }
}
