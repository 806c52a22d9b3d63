//! Models on burn 0.22: logistic regression, softmax regression and an MLP, all as one
//! [`Network`] of dense layers (ReLU between hidden layers).
//!
//! A model's parameters travel as one `f32` vector ([`Network::to_vector`],
//! [`Network::from_vector`]) in a fixed order: for each layer, its weight matrix
//! `[d_in, d_out]` row-major (burn's layout, `y = x·W + b`), then its bias `[d_out]`. FedAvg,
//! encoding and export all use this order.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{log_sigmoid, log_softmax, relu, sigmoid, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

pub use confide_core::{Layer, ModelKind};

/// Errors of model construction. A wrong parameter count means a peer or file sent a model of
/// another shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// The parameter vector does not fit the architecture.
    #[error("model shape mismatch: the architecture has {expected} parameters, got {found}")]
    ShapeMismatch {
        /// Parameters the architecture needs.
        expected: usize,
        /// Parameters supplied.
        found: usize,
    },
    /// A parameter is NaN or infinite.
    #[error("model parameter {index} is not finite")]
    NonFinite {
        /// Position in the vector.
        index: usize,
    },
    /// The architecture itself is inconsistent.
    #[error("invalid architecture: {0}")]
    Architecture(String),
}

/// The architecture of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Family.
    pub kind: ModelKind,
    /// Input features.
    pub input_dim: usize,
    /// Hidden widths (MLP only).
    pub hidden: Vec<usize>,
    /// Classes.
    pub classes: usize,
    /// The shape of one record for a layer list (empty: `[input_dim]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_shape: Vec<usize>,
    /// The layers of a layer list ([`ModelKind::Layers`] only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
}

impl ModelSpec {
    /// One of the preset families (logistic, softmax, MLP).
    pub fn preset(kind: ModelKind, input_dim: usize, hidden: Vec<usize>, classes: usize) -> Self {
        Self {
            kind,
            input_dim,
            hidden,
            classes,
            input_shape: Vec::new(),
            layers: Vec::new(),
        }
    }

    /// A layer list on records of `input_shape` (empty: a flat vector of `input_dim`).
    pub fn layer_list(
        input_dim: usize,
        input_shape: Vec<usize>,
        layers: Vec<Layer>,
        classes: usize,
    ) -> Self {
        Self {
            kind: ModelKind::Layers,
            input_dim,
            hidden: Vec::new(),
            classes,
            input_shape,
            layers,
        }
    }

    /// A preset written as the equivalent layer list (dense layers with ReLU between them);
    /// a layer list as it is. Logistic regression's single logit under a sigmoid is the
    /// one exception: as a list it becomes two logits under a softmax, the same model family
    /// with another parameterisation.
    pub fn as_layer_list(&self) -> Vec<Layer> {
        if self.kind == ModelKind::Layers {
            return self.layers.clone();
        }
        let mut out = Vec::new();
        for (i, (_, d_out)) in self.layer_dims().into_iter().enumerate() {
            if i > 0 {
                out.push(Layer::Relu);
            }
            out.push(Layer::Dense {
                units: if self.kind == ModelKind::Logistic {
                    2
                } else {
                    d_out
                },
            });
        }
        out
    }

    /// Checks the architecture.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::Architecture(m.to_string()));
        if self.kind == ModelKind::Layers {
            if !self.hidden.is_empty() {
                return bad("a layer list gives its widths in its layers");
            }
            return crate::stack::Plan::new(self).map(|_| ());
        }
        if !self.layers.is_empty() || !self.input_shape.is_empty() {
            return bad("only a layer list has layers");
        }
        match self.kind {
            _ if self.input_dim == 0 => bad("input_dim must be positive"),
            _ if self.classes < 2 => bad("at least 2 classes"),
            ModelKind::Logistic if self.classes != 2 => bad("logistic regression is binary"),
            ModelKind::Logistic | ModelKind::Softmax if !self.hidden.is_empty() => {
                bad("only an MLP has hidden layers")
            }
            ModelKind::Mlp if self.hidden.is_empty() => bad("an MLP needs a hidden layer"),
            _ if self.hidden.contains(&0) => bad("hidden widths must be positive"),
            _ => Ok(()),
        }
    }

    /// Output units: 1 for logistic regression (a logit), `classes` otherwise.
    pub fn outputs(&self) -> usize {
        match self.kind {
            ModelKind::Logistic => 1,
            _ => self.classes,
        }
    }

    /// `(d_in, d_out)` per dense layer of a preset (empty for a layer list).
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        if self.kind == ModelKind::Layers {
            return Vec::new();
        }
        let mut widths = vec![self.input_dim];
        widths.extend_from_slice(&self.hidden);
        widths.push(self.outputs());
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        if self.kind == ModelKind::Layers {
            return crate::stack::Plan::new(self).map_or(0, |p| p.param_count());
        }
        self.layer_dims().iter().map(|(i, o)| i * o + o).sum()
    }

    /// Initial parameters: zeros for the linear models (a convex problem, as in Intel's
    /// sample), He-uniform weights and zero biases for an MLP, from a seeded generator so every
    /// role derives the same initial model from the job's seed.
    pub fn initial_vector(&self, seed: u64) -> Vec<f32> {
        if self.kind == ModelKind::Layers {
            return crate::stack::Plan::new(self)
                .map_or_else(|_| Vec::new(), |p| p.initial_vector(seed));
        }
        let mut out = Vec::with_capacity(self.param_count());
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for (d_in, d_out) in self.layer_dims() {
            let bound = if self.kind == ModelKind::Mlp {
                (6.0 / d_in as f64).sqrt() as f32
            } else {
                0.0
            };
            for _ in 0..d_in * d_out {
                out.push(if bound > 0.0 {
                    rng.gen_range(-bound..bound)
                } else {
                    0.0
                });
            }
            out.extend(std::iter::repeat_n(0.0, d_out));
        }
        out
    }
}

/// The burn module: dense layers with ReLU between them.
#[derive(Module, Debug)]
pub struct Network {
    /// Dense layers, input first.
    pub layers: Vec<Linear>,
}

pub(crate) fn tensor2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    match t.into_data().try_into_vec::<f32>() {
        Ok(v) => v,
        // Every tensor here is created as f32 by this module.
        Err(e) => unreachable!("f32 tensor data: {e:?}"),
    }
}

impl Network {
    /// Builds a network on `device` from a parameter vector (see the module docs for order).
    pub fn from_vector(
        spec: &ModelSpec,
        params: &[f32],
        device: &Device,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        if spec.kind == ModelKind::Layers {
            return Err(ModelError::Architecture(
                "a layer list is not a dense network (use the layer-list engine)".into(),
            ));
        }
        let expected = spec.param_count();
        if params.len() != expected {
            return Err(ModelError::ShapeMismatch {
                expected,
                found: params.len(),
            });
        }
        if let Some(index) = params.iter().position(|p| !p.is_finite()) {
            return Err(ModelError::NonFinite { index });
        }
        let mut offset = 0;
        let mut layers = Vec::new();
        for (d_in, d_out) in spec.layer_dims() {
            let w = params[offset..offset + d_in * d_out].to_vec();
            offset += d_in * d_out;
            let b = params[offset..offset + d_out].to_vec();
            offset += d_out;
            layers.push(Linear {
                weight: Param::from_tensor(tensor2(w, d_in, d_out, device)),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(b, [d_out]),
                    device,
                ))),
            });
        }
        Ok(Self { layers })
    }

    /// The parameters as one vector.
    pub fn to_vector(&self) -> Vec<f32> {
        let mut out = Vec::new();
        for layer in &self.layers {
            out.extend(to_vec(layer.weight.val().inner()));
            if let Some(b) = &layer.bias {
                out.extend(to_vec(b.val().inner()));
            }
        }
        out
    }

    /// Logits `[batch, outputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = relu(h);
            }
        }
        h
    }
}

/// A batch in tensor form.
pub(crate) struct Batch {
    pub x: Tensor<2>,
    /// Logistic: `[b, 1]` 0/1 targets. Softmax/MLP: `[b, classes]` one-hot.
    pub target: Tensor<2>,
}

pub(crate) fn make_batch(
    spec: &ModelSpec,
    features: Vec<f32>,
    labels: &[u32],
    device: &Device,
) -> Batch {
    let b = labels.len();
    let x = tensor2(features, b, spec.input_dim, device);
    let target = match spec.kind {
        ModelKind::Logistic => tensor2(labels.iter().map(|&l| l as f32).collect(), b, 1, device),
        _ => {
            let mut onehot = vec![0.0f32; b * spec.classes];
            for (i, &l) in labels.iter().enumerate() {
                onehot[i * spec.classes + l as usize] = 1.0;
            }
            tensor2(onehot, b, spec.classes, device)
        }
    };
    Batch { x, target }
}

/// Mean cross-entropy of logits against targets (binary cross-entropy for logistic
/// regression), written with log-sigmoid / log-softmax for numerical stability.
pub(crate) fn loss(spec: &ModelSpec, logits: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    match spec.kind {
        ModelKind::Logistic => {
            let pos = log_sigmoid(logits.clone());
            let neg = log_sigmoid(logits.neg());
            let ones = target.ones_like();
            let ll = target.clone() * pos + (ones - target) * neg;
            ll.neg().mean()
        }
        _ => {
            let logp = log_softmax(logits, 1);
            (target * logp).sum_dim(1).neg().mean()
        }
    }
}

/// Class probabilities `[rows × classes]`, row-major, computed without autodiff.
pub fn predict_proba(
    spec: &ModelSpec,
    params: &[f32],
    features: &[f32],
) -> Result<Vec<f32>, ModelError> {
    if spec.kind == ModelKind::Layers {
        return crate::stack::predict_proba(spec, params, features);
    }
    let device = Device::flex();
    let net = Network::from_vector(spec, params, &device)?;
    let rows = features.len() / spec.input_dim;
    let logits = net.forward(tensor2(features.to_vec(), rows, spec.input_dim, &device));
    Ok(match spec.kind {
        ModelKind::Logistic => {
            let p1 = to_vec(sigmoid(logits));
            p1.into_iter().flat_map(|p| [1.0 - p, p]).collect()
        }
        _ => to_vec(softmax(logits, 1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> ModelSpec {
        ModelSpec::preset(ModelKind::Mlp, 5, vec![4, 3], 3)
    }

    #[test]
    fn param_count_matches_layers() {
        assert_eq!(mlp().param_count(), 5 * 4 + 4 + 4 * 3 + 3 + 3 * 3 + 3);
        let lr = ModelSpec::preset(ModelKind::Logistic, 30, vec![], 2);
        assert_eq!(lr.param_count(), 31);
    }

    #[test]
    fn vector_round_trips_bit_exactly() {
        let spec = mlp();
        let v = spec.initial_vector(3);
        let net = Network::from_vector(&spec, &v, &Device::flex()).expect("shape");
        let back = net.to_vector();
        assert_eq!(v.len(), back.len());
        assert!(v.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()));
        let net = Network::from_vector(&spec, &v, &Device::flex().autodiff()).expect("shape");
        assert_eq!(net.to_vector(), v);
    }

    #[test]
    fn wrong_shape_is_an_error_not_a_panic() {
        let spec = mlp();
        let err = Network::from_vector(&spec, &[0.0; 3], &Device::flex()).expect_err("shape");
        assert_eq!(
            err,
            ModelError::ShapeMismatch {
                expected: spec.param_count(),
                found: 3
            }
        );
        let mut v = spec.initial_vector(0);
        v[7] = f32::NAN;
        assert_eq!(
            Network::from_vector(&spec, &v, &Device::flex()).expect_err("nan"),
            ModelError::NonFinite { index: 7 }
        );
    }

    #[test]
    fn probabilities_sum_to_one() {
        let spec = mlp();
        let v = spec.initial_vector(1);
        let p = predict_proba(&spec, &v, &[0.5; 10]).expect("ok");
        assert_eq!(p.len(), 6);
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
