//! DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) with per-sample
//! gradient clipping by book-keeping (Bu, Wang, Zha, Karypis, "Differentially Private
//! Optimization on Large Model at Small Cost", ICML 2023, arXiv:2210.00038).
//!
//! One step:
//! 1. **Poisson sampling**: every record joins the batch independently with probability `q`
//!    (the sampling the accountant assumes; a batch may be empty).
//! 2. **One forward and one backward pass** in which only zero "probe" tensors added to each
//!    dense layer's output require gradients. Their gradients are the per-sample output
//!    gradients `g_i = ∂L_i/∂z_i`, where `L = Σ_i L_i` is the summed loss. The weights do not
//!    require gradients, so autodiff never forms the (unclipped) weight gradients.
//! 3. **Per-sample norms** from activations and output gradients alone (the "ghost norm" of
//!    Goodfellow 2015 and Li et al. 2021): for a dense layer `z = a·W + b`, the per-sample
//!    gradient of `W` is the outer product `a_iᵀ g_i`, so
//!    `‖∇_W L_i‖² + ‖∇_b L_i‖² = (‖a_i‖² + 1)·‖g_i‖²`, summed over layers.
//! 4. **Book-keeping**: the clipped sum is `Σ_i c_i a_iᵀ g_i = (c ⊙ a)ᵀ g` with
//!    `c_i = min(1, C / ‖∇L_i‖)` — one matrix product per layer, the same cost as the weight
//!    gradient of plain training, and no second backward pass (ghost clipping needs one).
//! 5. **Noise**: `N(0, σ²C²)` on every coordinate of the clipped sum, from a [`NoiseSource`]
//!    (the CSPRNG-backed sampler of `confide-dp`), then division by the *expected* batch size
//!    `q·N` (so the sensitivity of the released average does not depend on the sampled size).
//! 6. An SGD step (optional heavy-ball momentum and L2 decay, both post-processing).
//!
//! The privacy of the whole run is that of `steps` compositions of the Poisson-subsampled
//! Gaussian mechanism with noise multiplier `σ` and sampling rate `q`, which the accountants of
//! `confide-dp` compute. The tests check the norms and the clipped sum against brute-force
//! per-sample gradients.

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use confide_core::{AccountantKind, PrivacySection};
use confide_dp::noise::{GaussianNoise, NoiseRng, draw_standard_normals};
use confide_dp::plan::{Accountant, NoiseChoice, PrivacyPlan};

use crate::dataset::Dataset;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::model::{self, ModelError, ModelKind, ModelSpec};
use crate::stack;

/// Where DP-SGD's Gaussian noise comes from. Drawing is separate from adding because the
/// noise does not depend on the data: [`train_dp`] draws a step's noise on a second thread
/// while it computes that step's gradient.
pub trait NoiseSource: Send {
    /// `n` independent standard normals.
    ///
    /// # Errors
    /// A message when the noise cannot be drawn.
    fn draw(&mut self, n: usize) -> Result<Vec<f64>, String>;

    /// Adds `std · z[i]` to `values[i]`. `bound` is the largest `|value|` the inputs can have
    /// (the clipped sum of every record); a source may snap the results to a grid coarser
    /// than the floating-point spacing, as a defence against Mironov's 2012 attack, and must
    /// not clamp below `bound` plus its largest noise.
    ///
    /// # Errors
    /// A message for non-finite inputs or a draw of the wrong length.
    fn apply(&mut self, values: &mut [f32], z: &[f64], std: f64, bound: f64) -> Result<(), String>;
}

/// The production noise source: `confide-dp`'s ChaCha20 CSPRNG, its ziggurat Gaussian, and
/// snapping to a power-of-two grid (see `confide_dp::noise` for what the grid does and does
/// not guarantee).
#[derive(Debug)]
pub struct CsprngNoise {
    rng: NoiseRng,
    last_grid: f64,
}

impl CsprngNoise {
    /// Seeded from the operating system (the only private choice).
    ///
    /// # Errors
    /// The operating system's entropy source failed.
    pub fn from_entropy() -> Result<Self, String> {
        Ok(Self {
            rng: NoiseRng::from_os().map_err(|e| e.to_string())?,
            last_grid: 0.0,
        })
    }

    /// Seeded from a number: reproducible, and NOT private against anyone who knows it.
    pub fn from_seed(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            rng: NoiseRng::from_seed(bytes),
            last_grid: 0.0,
        }
    }

    /// The grid spacing of the last noisy release (0 before any).
    pub fn last_grid(&self) -> f64 {
        self.last_grid
    }
}

impl NoiseSource for CsprngNoise {
    fn draw(&mut self, n: usize) -> Result<Vec<f64>, String> {
        // One thread: DP-SGD already runs this beside the gradient computation.
        Ok(draw_standard_normals(n, &mut self.rng, 1))
    }

    fn apply(&mut self, values: &mut [f32], z: &[f64], std: f64, bound: f64) -> Result<(), String> {
        let reach = std * confide_dp::noise::ziggurat_max_abs();
        let noise = GaussianNoise::new(std, bound + reach).map_err(|e| e.to_string())?;
        self.last_grid = noise.grid();
        noise.apply(values, z).map_err(|e| e.to_string())
    }
}

/// Below this many parameters, drawing the noise inline is cheaper than a thread.
const OVERLAP_MIN_PARAMS: usize = 16_384;

/// Hyper-parameters of DP-SGD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpSgdConfig {
    /// Optimisation steps (each one a Poisson-sampled batch).
    pub steps: u64,
    /// Poisson sampling rate `q` (expected batch size over dataset size), in (0, 1].
    pub sampling_rate: f64,
    /// Step size.
    pub learning_rate: f64,
    /// Heavy-ball momentum in [0, 1) (0 for plain SGD).
    pub momentum: f64,
    /// L2 decay on weights (not biases).
    pub l2: f64,
    /// Per-sample L2 clipping norm `C`.
    pub clip_norm: f64,
    /// Noise multiplier `σ`: the noise standard deviation is `σ·C`.
    pub noise_multiplier: f64,
    /// FedProx's proximal term μ (0: none): `μ·(w − w₀)` joins each step's gradient after the
    /// noise. It depends only on the parameters (public to the owner), not on any record, so
    /// it changes nothing in the accounting (post-processing).
    #[serde(default)]
    pub proximal_mu: f64,
}

impl DpSgdConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the first invalid parameter.
    pub fn validate(&self) -> Result<(), String> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !(self.sampling_rate > 0.0 && self.sampling_rate <= 1.0) {
            return Err(format!(
                "sampling rate must be in (0, 1], got {}",
                self.sampling_rate
            ));
        }
        if !finite_pos(self.learning_rate) {
            return Err(format!(
                "learning rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return Err(format!("proximal_mu must be ≥ 0, got {}", self.proximal_mu));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(format!("l2 must be ≥ 0, got {}", self.l2));
        }
        if !finite_pos(self.clip_norm) {
            return Err(format!(
                "clip norm must be positive, got {}",
                self.clip_norm
            ));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(format!(
                "noise multiplier must be ≥ 0, got {}",
                self.noise_multiplier
            ));
        }
        Ok(())
    }
}

/// What a DP-SGD run returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpSgdOutcome {
    /// Parameters after training.
    pub params: Vec<f32>,
    /// Steps taken.
    pub steps: u64,
    /// Steps whose Poisson batch was empty (they still add noise and count for privacy).
    pub empty_batches: u64,
    /// Records processed, summed over steps.
    pub sampled_records: u64,
    /// Fraction of processed records whose gradient norm exceeded the clip norm.
    pub clipped_fraction: f64,
    /// Mean training loss per record over the last 10 % of steps (non-private diagnostic).
    pub recent_loss: f64,
}

/// The clipped per-sample gradient sum of one batch, in parameter-vector order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClippedSum {
    /// `Σ_i clip(∇L_i)`, laid out like the parameter vector.
    pub sum: Vec<f32>,
    /// Unclipped per-sample gradient norms `‖∇L_i‖`.
    pub norms: Vec<f32>,
    /// Summed loss over the batch.
    pub loss_sum: f64,
}

/// A DP-SGD run planned for a dataset: the optimiser settings and what they spend.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateRun {
    /// DP-SGD settings for one training call (one federated round, or the whole central run).
    pub config: DpSgdConfig,
    /// Calls the plan covers (federated rounds; 1 for central training).
    pub calls: u64,
    /// The accountant's verdict for all calls together.
    pub plan: PrivacyPlan,
}

/// Plans record-level DP-SGD on a dataset of `rows` records: expected batch `batch_size`
/// (so `q = batch_size / rows`), `epochs` passes per call (`⌈epochs·rows/batch_size⌉` steps),
/// repeated `calls` times, with the noise multiplier fixed or calibrated to the target ε over
/// all `calls · steps` compositions.
///
/// # Errors
/// An empty dataset, a zero batch, or accounting parameters out of range.
pub fn plan_private_run(
    privacy: &PrivacySection,
    rows: usize,
    batch_size: usize,
    epochs: u32,
    calls: u64,
    learning_rate: f64,
    l2: f64,
) -> Result<PrivateRun, String> {
    if rows == 0 || batch_size == 0 || epochs == 0 || calls == 0 {
        return Err(format!(
            "cannot plan DP-SGD over {rows} records, batch {batch_size}, {epochs} epochs, {calls} calls"
        ));
    }
    if privacy.level != confide_core::PrivacyLevel::Record {
        return Err("DP-SGD plans record-level privacy only".into());
    }
    let q = (batch_size as f64 / rows as f64).min(1.0);
    let steps = (u64::from(epochs) * rows as u64).div_ceil(batch_size as u64);
    let accountant = match privacy.accountant {
        AccountantKind::Rdp => Accountant::Rdp,
        AccountantKind::Pld => Accountant::Pld,
    };
    let noise = match (privacy.target_epsilon, privacy.noise_multiplier) {
        (Some(e), _) => NoiseChoice::TargetEpsilon(e),
        (None, Some(s)) => NoiseChoice::NoiseMultiplier(s),
        (None, None) => return Err("privacy needs target_epsilon or noise_multiplier".into()),
    };
    let plan = PrivacyPlan::new(accountant, noise, q, steps * calls, privacy.delta)
        .map_err(|e| e.to_string())?;
    Ok(PrivateRun {
        config: DpSgdConfig {
            steps,
            sampling_rate: q,
            learning_rate,
            momentum: 0.0,
            l2,
            clip_norm: privacy.clip_norm,
            noise_multiplier: plan.noise_multiplier,
            proximal_mu: 0.0,
        },
        calls,
        plan,
    })
}

/// Weights and biases of the dense layers as plain (non-autodiff) tensors.
struct Layers {
    weights: Vec<Tensor<2>>,
    biases: Vec<Tensor<1>>,
}

impl Layers {
    fn from_vector(spec: &ModelSpec, params: &[f32], device: &Device) -> Self {
        let mut offset = 0;
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for (d_in, d_out) in spec.layer_dims() {
            let w = params[offset..offset + d_in * d_out].to_vec();
            offset += d_in * d_out;
            let b = params[offset..offset + d_out].to_vec();
            offset += d_out;
            weights.push(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device));
            biases.push(Tensor::from_data(TensorData::new(b, [d_out]), device));
        }
        Self { weights, biases }
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    match t.into_data().try_into_vec::<f32>() {
        Ok(v) => v,
        // Every tensor here is created as f32 by this module.
        Err(e) => unreachable!("f32 tensor data: {e:?}"),
    }
}

/// Book-keeping clipped gradient sum over the rows `rows` of `data` (see the module docs).
/// `clip_norm = None` gives the unclipped sum (used by tests and diagnostics).
///
/// # Errors
/// If `params` does not fit `spec` or the data's width differs from the model's input.
pub fn clipped_gradient_sum(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    rows: &[usize],
    clip_norm: Option<f64>,
) -> Result<ClippedSum, ModelError> {
    if spec.kind == ModelKind::Layers {
        return stack::clipped_sum(spec, params, data, rows, clip_norm, None);
    }
    check_inputs(spec, params, data)?;
    let device = Device::flex();
    let layers = Layers::from_vector(spec, params, &device);
    Ok(clipped_sum(spec, &layers, data, rows, clip_norm, &device))
}

fn check_inputs(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<(), ModelError> {
    spec.validate()?;
    if data.feature_count != spec.input_dim {
        return Err(ModelError::Architecture(format!(
            "data has {} features, the model expects {}",
            data.feature_count, spec.input_dim
        )));
    }
    if params.len() != spec.param_count() {
        return Err(ModelError::ShapeMismatch {
            expected: spec.param_count(),
            found: params.len(),
        });
    }
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(ModelError::NonFinite { index });
    }
    Ok(())
}

fn clipped_sum(
    spec: &ModelSpec,
    layers: &Layers,
    data: &Dataset,
    rows: &[usize],
    clip_norm: Option<f64>,
    device: &Device,
) -> ClippedSum {
    let b = rows.len();
    if b == 0 {
        return ClippedSum {
            sum: vec![0.0; spec.param_count()],
            norms: Vec::new(),
            loss_sum: 0.0,
        };
    }
    let ad = device.clone().autodiff();
    let mut features = Vec::with_capacity(b * data.feature_count);
    let mut labels = Vec::with_capacity(b);
    for &i in rows {
        features.extend_from_slice(data.row(i));
        labels.push(data.labels[i]);
    }
    let batch = model::make_batch(spec, features, &labels, device);

    // Forward with a zero probe on every layer output; only the probes require gradients.
    let last = layers.weights.len() - 1;
    let mut activations: Vec<Tensor<2>> = Vec::with_capacity(layers.weights.len());
    let mut probes: Vec<Tensor<2>> = Vec::with_capacity(layers.weights.len());
    let mut h = batch.x.autodiff();
    for (l, (w, bias)) in layers.weights.iter().zip(&layers.biases).enumerate() {
        activations.push(h.clone().inner());
        let d_out = w.dims()[1];
        let probe = Tensor::<2>::zeros([b, d_out], &ad).require_grad();
        let z = h.matmul(w.clone().autodiff())
            + bias.clone().autodiff().unsqueeze_dim::<2>(0)
            + probe.clone();
        probes.push(probe);
        h = if l < last { relu(z) } else { z };
    }
    // Summed (not mean) loss, so that probe gradients are the per-sample gradients.
    let loss = model::loss(spec, h, batch.target.autodiff()) * (b as f32);
    let grads = loss.backward();
    let loss_sum = f64::from(loss.inner().into_scalar::<f32>());

    let mut out_grads = Vec::with_capacity(probes.len());
    let mut norm_sq: Option<Tensor<2>> = None;
    for (probe, a) in probes.iter().zip(&activations) {
        let g = match probe.grad(&grads) {
            Some(g) => g,
            // Every probe is on the loss's path, so autodiff always produces its gradient.
            None => unreachable!("probe gradient missing"),
        };
        let a_sq = (a.clone() * a.clone()).sum_dim(1) + 1.0;
        let g_sq = (g.clone() * g.clone()).sum_dim(1);
        let layer = a_sq * g_sq;
        norm_sq = Some(match norm_sq {
            Some(acc) => acc + layer,
            None => layer,
        });
        out_grads.push(g);
    }
    let norms = match norm_sq {
        Some(n) => n.sqrt(),
        None => unreachable!("a network has at least one layer"),
    };
    let scale = clip_norm.map(|c| (norms.clone() + 1e-6).recip().mul_scalar(c).clamp_max(1.0));

    let mut sum = Vec::with_capacity(spec.param_count());
    for (g, a) in out_grads.into_iter().zip(activations) {
        let g = match &scale {
            Some(s) => g * s.clone(),
            None => g,
        };
        let gw = a.transpose().matmul(g.clone());
        sum.extend(to_vec(gw));
        sum.extend(to_vec(g.sum_dim(0)));
    }
    ClippedSum {
        sum,
        norms: to_vec(norms),
        loss_sum,
    }
}

/// Draws a Poisson batch: every index of `0..n` independently with probability `q`.
pub fn poisson_sample(n: usize, q: f64, rng: &mut dyn RngCore) -> Vec<usize> {
    if q >= 1.0 {
        return (0..n).collect();
    }
    // Include iff a uniform 64-bit integer falls below q·2^64.
    let threshold = (q * 18_446_744_073_709_551_616.0) as u64;
    (0..n).filter(|_| rng.next_u64() < threshold).collect()
}

/// Trains with DP-SGD from `params` on `data`. `sampler` draws the Poisson batches (it must be
/// a CSPRNG seeded secretly for the amplification by subsampling to hold); `noise` supplies the
/// Gaussian noise. `on_step(done, total)` is called after every step.
///
/// # Errors
/// If the configuration is invalid, `params` does not fit `spec`, or the data's width differs
/// from the model's input.
pub fn train_dp(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    config: &DpSgdConfig,
    sampler: &mut dyn RngCore,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(u64, u64),
) -> Result<DpSgdOutcome, ModelError> {
    config.validate().map_err(ModelError::Architecture)?;
    check_inputs(spec, params, data)?;
    if data.is_empty() {
        return Err(ModelError::Architecture(
            "DP-SGD needs a non-empty dataset".into(),
        ));
    }
    let device = Device::flex();
    let anchor = params.to_vec();
    let mu = config.proximal_mu as f32;
    let mut params = params.to_vec();
    let mut velocity = vec![0.0f32; params.len()];
    let decay_mask = weight_mask(spec);
    // A layer list goes through `stack`, with its own dropout generator when it has dropout
    // (seeded once from the secret sampler; the masks need no secrecy, only independence).
    let mut dropout: Option<Option<ChaCha20Rng>> = (spec.kind == ModelKind::Layers).then(|| {
        let mut seed = [0u8; 32];
        sampler.fill_bytes(&mut seed);
        Some(ChaCha20Rng::from_seed(seed))
    });
    let expected_batch = config.sampling_rate * data.len() as f64;
    let std = config.noise_multiplier * config.clip_norm;
    let inv_batch = (1.0 / expected_batch) as f32;
    let lr = config.learning_rate as f32;
    let momentum = config.momentum as f32;
    let l2 = config.l2 as f32;
    let recent_from = config.steps - config.steps.div_ceil(10);
    let (mut empty, mut sampled, mut clipped) = (0u64, 0u64, 0u64);
    let (mut recent_loss, mut recent_rows) = (0.0f64, 0u64);
    for step in 0..config.steps {
        let rows = poisson_sample(data.len(), config.sampling_rate, sampler);
        if rows.is_empty() {
            empty += 1;
        }
        let n = params.len();
        let clip = Some(config.clip_norm);
        let mut compute = || match &mut dropout {
            Some(rng) => stack::clipped_sum(spec, &params, data, &rows, clip, rng.as_mut()),
            None => Ok(clipped_sum(
                spec,
                &Layers::from_vector(spec, &params, &device),
                data,
                &rows,
                clip,
                &device,
            )),
        };
        // The noise does not depend on the data: draw it beside the gradient computation.
        let (batch, z) = if std > 0.0 && n >= OVERLAP_MIN_PARAMS {
            std::thread::scope(|scope| {
                let drawing = scope.spawn(|| noise.draw(n));
                let batch = compute();
                let z = drawing
                    .join()
                    .unwrap_or_else(|_| Err("the noise thread panicked".into()));
                (batch, Some(z))
            })
        } else {
            let batch = compute();
            let z = (std > 0.0).then(|| noise.draw(n));
            (batch, z)
        };
        let mut batch = batch?;
        sampled += rows.len() as u64;
        let limit = config.clip_norm as f32;
        clipped += batch.norms.iter().filter(|&&n| n > limit).count() as u64;
        if step >= recent_from {
            recent_loss += batch.loss_sum;
            recent_rows += rows.len() as u64;
        }
        if let Some(z) = z {
            let z = z.map_err(|e| ModelError::Architecture(format!("DP noise: {e}")))?;
            // Every coordinate of a clipped sum is at most C per record in absolute value.
            let bound = data.len() as f64 * config.clip_norm;
            noise
                .apply(&mut batch.sum, &z, std, bound)
                .map_err(|e| ModelError::Architecture(format!("DP noise: {e}")))?;
        }
        for ((((p, v), g), &decay), p0) in params
            .iter_mut()
            .zip(&mut velocity)
            .zip(&batch.sum)
            .zip(&decay_mask)
            .zip(&anchor)
        {
            let mut grad = g * inv_batch;
            if decay {
                grad += l2 * *p;
            }
            if mu > 0.0 {
                grad += mu * (*p - p0);
            }
            *v = momentum * *v + grad;
            *p -= lr * *v;
        }
        on_step(step + 1, config.steps);
    }
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(ModelError::NonFinite { index });
    }
    Ok(DpSgdOutcome {
        params,
        steps: config.steps,
        empty_batches: empty,
        sampled_records: sampled,
        clipped_fraction: if sampled == 0 {
            0.0
        } else {
            clipped as f64 / sampled as f64
        },
        recent_loss: if recent_rows == 0 {
            0.0
        } else {
            recent_loss / recent_rows as f64
        },
    })
}

/// `true` for weight entries, `false` for biases, in parameter-vector order.
fn weight_mask(spec: &ModelSpec) -> Vec<bool> {
    if spec.kind == ModelKind::Layers {
        return stack::Plan::new(spec).map_or_else(|_| Vec::new(), |p| p.decay_mask());
    }
    let mut mask = Vec::with_capacity(spec.param_count());
    for (d_in, d_out) in spec.layer_dims() {
        mask.extend(std::iter::repeat_n(true, d_in * d_out));
        mask.extend(std::iter::repeat_n(false, d_out));
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelKind, Network};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn toy_data(n: usize, d: usize, classes: u32, seed: u64) -> Dataset {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let features = (0..n * d).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let labels = (0..n).map(|_| rng.gen_range(0..classes)).collect();
        Dataset {
            features,
            labels,
            feature_count: d,
            feature_names: (0..d).map(|i| format!("x{i}")).collect(),
        }
    }

    /// Per-sample gradients the slow way: one backward pass per record through the standard
    /// burn module with every parameter requiring gradients.
    fn brute_force(spec: &ModelSpec, params: &[f32], data: &Dataset, i: usize) -> Vec<f32> {
        let device = Device::flex().autodiff();
        let net = Network::from_vector(spec, params, &device).expect("shape");
        let batch = model::make_batch(spec, data.row(i).to_vec(), &[data.labels[i]], &device);
        let grads = model::loss(spec, net.forward(batch.x), batch.target).backward();
        let mut out = Vec::new();
        for layer in &net.layers {
            out.extend(to_vec(
                layer.weight.val().grad(&grads).expect("weight grad"),
            ));
            let b = layer.bias.as_ref().expect("bias");
            out.extend(to_vec(b.val().grad(&grads).expect("bias grad")));
        }
        out
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    fn specs() -> Vec<ModelSpec> {
        vec![
            ModelSpec::preset(ModelKind::Mlp, 6, vec![5, 4], 3),
            ModelSpec::preset(ModelKind::Logistic, 6, vec![], 2),
            ModelSpec::preset(ModelKind::Softmax, 6, vec![], 4),
        ]
    }

    #[test]
    fn per_sample_norms_and_clipped_sum_match_brute_force() {
        for spec in specs() {
            let data = toy_data(9, 6, spec.classes as u32, 11);
            let params = spec.initial_vector(5);
            let rows: Vec<usize> = (0..data.len()).collect();
            let clip = 0.3;
            let got = clipped_gradient_sum(&spec, &params, &data, &rows, Some(clip)).expect("ok");
            let mut expected_sum = vec![0.0f64; params.len()];
            for &i in &rows {
                let g = brute_force(&spec, &params, &data, i);
                let n = norm(&g);
                let rel = (f64::from(got.norms[i]) - n).abs() / n.max(1e-12);
                assert!(
                    rel < 1e-4,
                    "{:?} row {i}: {} vs {n}",
                    spec.kind,
                    got.norms[i]
                );
                let c = (clip / (n + 1e-6)).min(1.0);
                for (e, x) in expected_sum.iter_mut().zip(&g) {
                    *e += c * f64::from(*x);
                }
            }
            let expected: Vec<f32> = expected_sum.iter().map(|&x| x as f32).collect();
            let diff: Vec<f32> = got.sum.iter().zip(&expected).map(|(a, b)| a - b).collect();
            assert!(
                norm(&diff) < 1e-4 * norm(&expected).max(1e-6),
                "{:?}",
                spec.kind
            );
            // Clipping really bit: some rows exceed 0.3 for these random models.
            assert!(got.norms.iter().any(|&n| f64::from(n) > clip));
        }
    }

    #[test]
    fn unclipped_sum_is_the_plain_gradient_sum() {
        let spec = &specs()[0];
        let data = toy_data(7, 6, 3, 2);
        let params = spec.initial_vector(1);
        let rows: Vec<usize> = (0..7).collect();
        let got = clipped_gradient_sum(spec, &params, &data, &rows, None).expect("ok");
        let device = Device::flex().autodiff();
        let net = Network::from_vector(spec, &params, &device).expect("shape");
        let mut feats = Vec::new();
        for &i in &rows {
            feats.extend_from_slice(data.row(i));
        }
        let batch = model::make_batch(spec, feats, &data.labels, &device);
        let grads = (model::loss(spec, net.forward(batch.x), batch.target) * 7.0).backward();
        let mut expected = Vec::new();
        for layer in &net.layers {
            expected.extend(to_vec(layer.weight.val().grad(&grads).expect("w")));
            expected.extend(to_vec(
                layer
                    .bias
                    .as_ref()
                    .expect("b")
                    .val()
                    .grad(&grads)
                    .expect("b"),
            ));
        }
        let diff: Vec<f32> = got.sum.iter().zip(&expected).map(|(a, b)| a - b).collect();
        assert!(norm(&diff) < 1e-4 * norm(&expected));
    }

    #[test]
    fn empty_batch_gives_zero_sum() {
        let spec = &specs()[0];
        let data = toy_data(4, 6, 3, 2);
        let got =
            clipped_gradient_sum(spec, &spec.initial_vector(1), &data, &[], Some(1.0)).expect("ok");
        assert!(got.sum.iter().all(|&x| x == 0.0));
        assert_eq!(got.sum.len(), spec.param_count());
    }

    #[test]
    fn poisson_sampling_has_the_right_rate() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let n = 100_000;
        let got = poisson_sample(n, 0.01, &mut rng).len() as f64;
        // Binomial(1e5, 0.01): sd ≈ 31.5, so 6 sd is ≈ 189.
        assert!((got - 1000.0).abs() < 189.0, "{got}");
        assert_eq!(poisson_sample(10, 1.0, &mut rng).len(), 10);
        let mut tiny = 0;
        for _ in 0..100 {
            tiny += poisson_sample(10, 1e-3, &mut rng).len();
        }
        assert!(tiny < 10, "{tiny}");
    }

    /// A noise source that records what it added, so the test can see the calibrated scale.
    struct Recording {
        rng: ChaCha20Rng,
        added: Vec<f32>,
        stds: Vec<f64>,
    }

    impl NoiseSource for Recording {
        fn draw(&mut self, n: usize) -> Result<Vec<f64>, String> {
            // Box–Muller; test-only (the production source lives in confide-dp).
            Ok((0..n)
                .map(|_| {
                    let u1: f64 = 1.0 - self.rng.r#gen::<f64>();
                    let u2: f64 = self.rng.r#gen::<f64>();
                    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                })
                .collect())
        }

        fn apply(
            &mut self,
            values: &mut [f32],
            z: &[f64],
            std: f64,
            _bound: f64,
        ) -> Result<(), String> {
            for (v, z) in values.iter_mut().zip(z) {
                let added = (std * z) as f32;
                *v += added;
                self.added.push(added);
            }
            self.stds.push(std);
            Ok(())
        }
    }

    #[test]
    fn invalid_configuration_is_refused() {
        let spec = &specs()[0];
        let data = toy_data(4, 6, 3, 2);
        let base = DpSgdConfig {
            steps: 1,
            sampling_rate: 0.5,
            learning_rate: 0.1,
            momentum: 0.0,
            l2: 0.0,
            proximal_mu: 0.0,
            clip_norm: 1.0,
            noise_multiplier: 1.0,
        };
        for bad in [
            DpSgdConfig {
                sampling_rate: 0.0,
                ..base.clone()
            },
            DpSgdConfig {
                clip_norm: -1.0,
                ..base.clone()
            },
            DpSgdConfig {
                noise_multiplier: f64::NAN,
                ..base.clone()
            },
            DpSgdConfig {
                momentum: 1.0,
                ..base.clone()
            },
        ] {
            let mut noise = Recording {
                rng: ChaCha20Rng::seed_from_u64(1),
                added: vec![],
                stds: vec![],
            };
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let err = train_dp(
                spec,
                &spec.initial_vector(0),
                &data,
                &bad,
                &mut rng,
                &mut noise,
                &mut |_, _| {},
            );
            assert!(err.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dp_step_moves_parameters_by_the_clipped_sum_plus_calibrated_noise() {
        let spec = &specs()[0];
        let data = toy_data(40, 6, 3, 4);
        let params = spec.initial_vector(3);
        let config = DpSgdConfig {
            steps: 1,
            sampling_rate: 1.0,
            learning_rate: 1.0,
            momentum: 0.0,
            l2: 0.0,
            proximal_mu: 0.0,
            clip_norm: 0.5,
            noise_multiplier: 1.3,
        };
        let mut noise = Recording {
            rng: ChaCha20Rng::seed_from_u64(8),
            added: vec![],
            stds: vec![],
        };
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let out = train_dp(
            spec,
            &params,
            &data,
            &config,
            &mut rng,
            &mut noise,
            &mut |_, _| {},
        )
        .expect("trains");
        assert_eq!(noise.stds, vec![1.3 * 0.5]);
        let rows: Vec<usize> = (0..40).collect();
        let clean = clipped_gradient_sum(spec, &params, &data, &rows, Some(0.5)).expect("ok");
        // p_new = p − (clipped_sum + noise)/40, so the noise is recoverable exactly enough.
        let recovered: Vec<f64> = params
            .iter()
            .zip(&out.params)
            .zip(&clean.sum)
            .map(|((p, q), s)| f64::from(p - q) * 40.0 - f64::from(*s))
            .collect();
        for (r, a) in recovered.iter().zip(&noise.added) {
            assert!((r - f64::from(*a)).abs() < 1e-3, "{r} vs {a}");
        }
    }

    /// FedProx in DP-SGD: with every row sampled and no noise, the first step is the same
    /// with or without μ (the parameters are still the anchor), and the second differs by
    /// exactly `−lr·μ·(p₁ − p₀)`: the term is added after clipping and noise, from the
    /// parameters alone.
    #[test]
    fn the_proximal_term_joins_the_step_after_clipping_and_noise() {
        let spec = &specs()[0];
        let data = toy_data(30, 6, 3, 5);
        let p0 = spec.initial_vector(2);
        let run = |steps: u64, mu: f64| {
            let config = DpSgdConfig {
                steps,
                sampling_rate: 1.0,
                learning_rate: 0.3,
                momentum: 0.0,
                l2: 0.0,
                proximal_mu: mu,
                clip_norm: 0.05,
                noise_multiplier: 0.8,
            };
            let mut noise = Recording {
                rng: ChaCha20Rng::seed_from_u64(8),
                added: vec![],
                stds: vec![],
            };
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            train_dp(
                spec,
                &p0,
                &data,
                &config,
                &mut rng,
                &mut noise,
                &mut |_, _| {},
            )
            .expect("trains")
        };
        // The same seeded noise in every run: the runs differ only by μ.
        assert_eq!(
            run(1, 0.0).params,
            run(1, 0.7).params,
            "no pull at the anchor itself"
        );
        let p1 = run(1, 0.0).params;
        assert_ne!(p1, p0);
        let prox = run(2, 0.7);
        assert!(
            prox.clipped_fraction > 0.5,
            "records were clipped: {}",
            prox.clipped_fraction
        );
        let (free, prox) = (run(2, 0.0).params, prox.params);
        for ((a, b), (q1, q0)) in prox.iter().zip(&free).zip(p1.iter().zip(&p0)) {
            let expected = -0.3 * 0.7 * (q1 - q0);
            assert!((a - b - expected).abs() < 1e-5, "{} vs {expected}", a - b);
        }
    }

    #[test]
    fn the_production_noise_source_adds_noise_of_the_calibrated_scale() {
        let spec = ModelSpec::preset(ModelKind::Mlp, 30, vec![64], 3);
        let data = toy_data(50, 30, 3, 6);
        let params = spec.initial_vector(2);
        let (clip, sigma) = (0.8, 1.7);
        let config = DpSgdConfig {
            steps: 1,
            sampling_rate: 1.0,
            learning_rate: 1.0,
            momentum: 0.0,
            l2: 0.0,
            proximal_mu: 0.0,
            clip_norm: clip,
            noise_multiplier: sigma,
        };
        let mut noise = CsprngNoise::from_seed(77);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let out = train_dp(
            &spec,
            &params,
            &data,
            &config,
            &mut rng,
            &mut noise,
            &mut |_, _| {},
        )
        .expect("trains");
        let rows: Vec<usize> = (0..50).collect();
        let clean = clipped_gradient_sum(&spec, &params, &data, &rows, Some(clip)).expect("ok");
        // p_new = p − (clipped_sum + noise)/50: recover the noise the real sampler added.
        let added: Vec<f64> = params
            .iter()
            .zip(&out.params)
            .zip(&clean.sum)
            .map(|((p, q), s)| f64::from(p - q) * 50.0 - f64::from(*s))
            .collect();
        let n = added.len() as f64;
        let mean = added.iter().sum::<f64>() / n;
        let sd = (added.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        let expected = sigma * clip;
        // n ≈ 2,200: the sample sd is within 1.5 % (one standard error) of the truth; 6 % is
        // four standard errors. A noise multiplier off by √2 or a missing clip factor fails.
        assert!(
            (sd - expected).abs() < 0.06 * expected,
            "sd {sd} vs {expected}"
        );
        assert!(mean.abs() < 4.0 * expected / n.sqrt(), "mean {mean}");
        assert!(noise.last_grid() > 0.0 && noise.last_grid() < 1e-3 * expected);
    }
}
