//! Local training (mini-batch SGD with burn autodiff) and evaluation metrics.

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::model::{self, ModelError, ModelKind, ModelSpec, Network};

/// Hyper-parameters of local training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: u32,
    /// Mini-batch size (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// SGD step size.
    pub learning_rate: f64,
    /// L2 penalty on weights (not biases).
    pub l2: f64,
    /// FedProx's proximal term μ (0: none): the step adds `μ·(w − w₀)` to every parameter's
    /// gradient, `w₀` being the parameters training started from.
    #[serde(default)]
    pub proximal_mu: f64,
    /// Shuffling seed.
    pub seed: u64,
}

/// What a training run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// Parameters after training.
    pub params: Vec<f32>,
    /// Mean training loss over the last epoch's batches.
    pub last_epoch_loss: f64,
    /// Optimisation steps taken.
    pub steps: u64,
}

/// Trains from `params` on `data` with mini-batch SGD.
///
/// # Errors
/// If `params` does not fit `spec`, or the data's width differs from the model's input.
pub fn train(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    config: &TrainConfig,
) -> Result<TrainOutcome, ModelError> {
    if data.feature_count != spec.input_dim {
        return Err(ModelError::Architecture(format!(
            "data has {} features, the model expects {}",
            data.feature_count, spec.input_dim
        )));
    }
    if !(config.proximal_mu.is_finite() && config.proximal_mu >= 0.0) {
        return Err(ModelError::Architecture(format!(
            "proximal_mu must be ≥ 0, got {}",
            config.proximal_mu
        )));
    }
    if spec.kind == ModelKind::Layers {
        return crate::stack::train(spec, params, data, config);
    }
    let device = Device::flex().autodiff();
    let mut net = Network::from_vector(spec, params, &device)?;
    // The proximal term's anchor: the parameters training starts from, off the tape.
    let anchor = (config.proximal_mu > 0.0).then(|| Anchor::of(&net));
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let batch_size = config.batch_size.max(1);
    let mut last_epoch_loss = 0.0;
    let mut steps = 0;
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        let mut batches = 0u32;
        for chunk in order.chunks(batch_size) {
            let mut features = Vec::with_capacity(chunk.len() * data.feature_count);
            let mut labels = Vec::with_capacity(chunk.len());
            for &i in chunk {
                features.extend_from_slice(data.row(i));
                labels.push(data.labels[i]);
            }
            let batch = model::make_batch(spec, features, &labels, &device);
            let loss = model::loss(spec, net.forward(batch.x), batch.target);
            let grads = loss.backward();
            total += f64::from(loss.inner().into_scalar::<f32>());
            net = sgd_step(
                net,
                &grads,
                config.learning_rate,
                config.l2,
                anchor.as_ref().map(|a| (a, config.proximal_mu)),
            );
            batches += 1;
            steps += 1;
        }
        last_epoch_loss = total / f64::from(batches.max(1));
    }
    Ok(TrainOutcome {
        params: net.to_vector(),
        last_epoch_loss,
        steps,
    })
}

/// Each layer's weights and bias at the start of local training (FedProx's `w₀`).
struct Anchor(Vec<(Tensor<2>, Option<Tensor<1>>)>);

impl Anchor {
    fn of(net: &Network) -> Anchor {
        Anchor(
            net.layers
                .iter()
                .map(|l| {
                    (
                        l.weight.val().inner(),
                        l.bias.as_ref().map(|b| b.val().inner()),
                    )
                })
                .collect(),
        )
    }
}

fn sgd_step(
    mut net: Network,
    grads: &burn::tensor::Gradients,
    lr: f64,
    l2: f64,
    proximal: Option<(&Anchor, f64)>,
) -> Network {
    for (i, layer) in net.layers.iter_mut().enumerate() {
        let anchor = proximal.map(|(a, mu)| (&a.0[i], mu));
        let w = layer.weight.val();
        let new_w = match w.grad(grads) {
            Some(g) => {
                let w = w.inner();
                let g = if l2 > 0.0 { g + w.clone() * l2 } else { g };
                let g = match anchor {
                    Some(((w0, _), mu)) => g + (w.clone() - w0.clone()) * mu,
                    None => g,
                };
                w - g * lr
            }
            None => w.inner(),
        };
        layer.weight = Param::from_tensor(new_w.autodiff());
        if let Some(bias) = &layer.bias {
            let b = bias.val();
            let new_b: Tensor<1> = match b.grad(grads) {
                Some(g) => {
                    let b = b.inner();
                    let g = match anchor {
                        Some(((_, Some(b0)), mu)) => g + (b.clone() - b0.clone()) * mu,
                        _ => g,
                    };
                    b - g * lr
                }
                None => b.inner(),
            };
            layer.bias = Some(Param::from_tensor(new_b.autodiff()));
        }
    }
    net
}

/// Evaluation metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of rows whose most probable class is the label.
    pub accuracy: f64,
    /// Rows classified correctly.
    pub correct: usize,
    /// Rows evaluated.
    pub rows: usize,
    /// Mean negative log-likelihood of the true class (probabilities clipped to [1e-15, 1]).
    pub log_loss: f64,
    /// Area under the ROC curve of P(class 1), binary tasks only.
    pub auc: Option<f64>,
}

/// Evaluates parameters on a dataset.
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<Metrics, ModelError> {
    if data.feature_count != spec.input_dim {
        return Err(ModelError::Architecture(format!(
            "data has {} features, the model expects {}",
            data.feature_count, spec.input_dim
        )));
    }
    let proba = model::predict_proba(spec, params, &data.features)?;
    Ok(metrics_from_proba(&proba, &data.labels, spec.classes))
}

/// Metrics from class probabilities (`rows × classes`, row-major).
pub fn metrics_from_proba(proba: &[f32], labels: &[u32], classes: usize) -> Metrics {
    let mut correct = 0;
    let mut nll = 0.0;
    for (row, &label) in proba.chunks(classes).zip(labels) {
        let best = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
            )
            .0;
        if best == label as usize {
            correct += 1;
        }
        nll -= f64::from(row[label as usize]).clamp(1e-15, 1.0).ln();
    }
    let rows = labels.len();
    let auc = (classes == 2).then(|| {
        let scores: Vec<f64> = proba.chunks(2).map(|r| f64::from(r[1])).collect();
        roc_auc(&scores, labels)
    });
    Metrics {
        accuracy: correct as f64 / rows.max(1) as f64,
        correct,
        rows,
        log_loss: nll / rows.max(1) as f64,
        auc: auc.flatten(),
    }
}

/// ROC AUC by the rank-sum (Mann–Whitney U) formula, with average ranks for ties. `None` when
/// one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[u32]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let rank_sum: f64 = labels
        .iter()
        .zip(&ranks)
        .filter(|(l, _)| **l == 1)
        .map(|(_, r)| r)
        .sum();
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelKind;

    #[test]
    fn auc_matches_hand_computed_values() {
        // Perfect ranking.
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        // One inverted pair out of four: 3/4.
        assert_eq!(roc_auc(&[0.1, 0.8, 0.2, 0.9], &[0, 0, 1, 1]), Some(0.75));
        // Ties count one half.
        assert_eq!(roc_auc(&[0.5, 0.5], &[0, 1]), Some(0.5));
        assert_eq!(roc_auc(&[0.5, 0.6], &[1, 1]), None);
    }

    #[test]
    fn log_loss_and_accuracy() {
        let m = metrics_from_proba(&[0.9, 0.1, 0.2, 0.8], &[0, 0], 2);
        assert_eq!(m.correct, 1);
        let expected = -(0.9f64.ln() + 0.2f64.ln()) / 2.0;
        assert!((m.log_loss - expected).abs() < 1e-6);
    }

    fn separable(n: usize) -> Dataset {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let x = (i as f32 / n as f32) * 4.0 - 2.0;
            features.extend([x, 0.5 * x + 0.1]);
            labels.push(u32::from(x > 0.0));
        }
        Dataset {
            features,
            labels,
            feature_count: 2,
            feature_names: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn logistic_regression_learns_a_separable_problem() {
        let spec = ModelSpec::preset(ModelKind::Logistic, 2, vec![], 2);
        let data = separable(200);
        let cfg = TrainConfig {
            epochs: 20,
            batch_size: 16,
            learning_rate: 0.5,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 1,
        };
        let out = train(&spec, &spec.initial_vector(0), &data, &cfg).expect("train");
        let m = evaluate(&spec, &out.params, &data).expect("eval");
        assert!(m.accuracy >= 0.97, "{m:?}");
        assert!(m.auc.expect("binary") > 0.99);
        assert_eq!(out.steps, 20 * 13);
    }

    #[test]
    fn mlp_and_softmax_train_and_reduce_loss() {
        let data = separable(120);
        for spec in [
            ModelSpec::preset(ModelKind::Softmax, 2, vec![], 2),
            ModelSpec::preset(ModelKind::Mlp, 2, vec![8], 2),
        ] {
            let init = spec.initial_vector(5);
            let before = evaluate(&spec, &init, &data).expect("eval").log_loss;
            let cfg = TrainConfig {
                epochs: 30,
                batch_size: 10,
                learning_rate: 0.2,
                l2: 1e-4,
                proximal_mu: 0.0,
                seed: 2,
            };
            let out = train(&spec, &init, &data, &cfg).expect("train");
            let after = evaluate(&spec, &out.params, &data).expect("eval");
            assert!(
                after.log_loss < before * 0.5,
                "{:?}: {before} -> {after:?}",
                spec.kind
            );
            assert!(after.accuracy > 0.95, "{:?}: {after:?}", spec.kind);
        }
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let spec = ModelSpec::preset(ModelKind::Mlp, 2, vec![4], 2);
        let data = separable(50);
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 8,
            learning_rate: 0.1,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 9,
        };
        let a = train(&spec, &spec.initial_vector(1), &data, &cfg).expect("train");
        let b = train(&spec, &spec.initial_vector(1), &data, &cfg).expect("train");
        assert_eq!(a.params, b.params);
    }

    /// One SGD step with FedProx's term moves each parameter by exactly `−lr·μ·(w − w₀)` more
    /// than the same step without it (weights and biases alike).
    #[test]
    fn the_proximal_term_adds_mu_times_the_distance_to_the_anchor() {
        let spec = ModelSpec::preset(ModelKind::Mlp, 2, vec![3], 2);
        let data = separable(16);
        let device = Device::flex().autodiff();
        let start = spec.initial_vector(3);
        // The anchor sits at w₀ = w − 0.25 in every coordinate.
        let shifted: Vec<f32> = start.iter().map(|w| w - 0.25).collect();
        let anchor = Anchor::of(&Network::from_vector(&spec, &shifted, &device).expect("net"));
        let (lr, mu) = (0.1, 0.5);
        let step = |proximal: Option<(&Anchor, f64)>| {
            let net = Network::from_vector(&spec, &start, &device).expect("net");
            let batch = model::make_batch(&spec, data.features.clone(), &data.labels, &device);
            let grads = model::loss(&spec, net.forward(batch.x), batch.target).backward();
            sgd_step(net, &grads, lr, 0.0, proximal).to_vector()
        };
        let plain = step(None);
        let prox = step(Some((&anchor, mu)));
        let expected = -(lr * mu * 0.25) as f32;
        for (a, b) in prox.iter().zip(&plain) {
            assert!((a - b - expected).abs() < 1e-6, "{} vs {}", a - b, expected);
        }
    }

    /// With μ > 0, local training ends nearer the model it started from.
    #[test]
    fn fedprox_keeps_local_training_near_the_global_model() {
        let spec = ModelSpec::preset(ModelKind::Logistic, 2, vec![], 2);
        let data = separable(100);
        let start = spec.initial_vector(4);
        let distance = |mu: f64| {
            let cfg = TrainConfig {
                epochs: 5,
                batch_size: 10,
                learning_rate: 0.5,
                l2: 0.0,
                proximal_mu: mu,
                seed: 7,
            };
            let out = train(&spec, &start, &data, &cfg).expect("train");
            out.params
                .iter()
                .zip(&start)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (free, near) = (distance(0.0), distance(1.0));
        assert!(near < 0.8 * free, "μ = 1: {near}, μ = 0: {free}");
    }
}
