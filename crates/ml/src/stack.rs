//! Models as a list of layers ([`ModelKind::Layers`]): dense, conv2d, max and average
//! pooling, flatten, activations, dropout, layer and group normalisation, and embedding, on
//! burn's `flex` backend.
//!
//! The shapes and parameter counts come from `confide_core::layers`, which every role checks
//! when it reads a job. Parameters travel as one `f32` vector, layer by layer in list order,
//! each layer's tensors in the order that module documents (a dense weight is `[in, out]`, a
//! convolution's `[out, in, k, k]`).
//!
//! **Training** slices one autodiff vector into the layers' tensors, so that one backward pass
//! gives the gradient of the whole vector.
//!
//! **Per-sample clipping for DP-SGD** extends the book-keeping of [`crate::dpsgd`]: a zero
//! probe is added to the output of every layer with parameters, and one backward pass of the
//! summed loss gives every record's output gradient `g_i` at each such layer. From it and the
//! layer's input (kept off the tape), each layer gives every record's parameter gradient:
//! - dense on a vector: the ghost norm `(‖a_i‖² + 1)·‖g_i‖²` and the clipped sum `(c ⊙ a)ᵀ g`,
//!   as before;
//! - dense on a sequence: `a_iᵀ g_i` per record (a batched product);
//! - conv2d: `g_i · unfold(x_i)ᵀ`, the convolution as a product over image patches (the
//!   per-example gradient of Goodfellow 2015, as Opacus computes it);
//! - layer and group norm: `Σ g_i ⊙ x̂_i` for the scale and `Σ g_i` for the shift, with `x̂` the
//!   normalised input;
//! - embedding: the norm of the record's gradient rows, each the sum of the output gradients
//!   of the steps holding that token (equal to the ghost norm `Σ_{t,t'} [tok_t = tok_t']
//!   ⟨g_t, g_t'⟩` of Li et al. 2022, "Large Language Models Can Be Strong Differentially
//!   Private Learners", §4), and the clipped sum scattered into the table's rows, on the CPU in
//!   O(steps × dim) per record whatever the vocabulary.
//!
//! Conv2d, norm and dense-on-sequence layers hold their per-record gradients as
//! `[batch, layer parameters]` until the norms are taken: memory grows with the (Poisson)
//! batch times the largest such layer.
//!
//! The clipping factors `c_i = min(1, C/‖∇L_i‖)` weight these into one clipped sum. The tests
//! check every layer against brute-force per-sample gradients. Batch normalisation is refused
//! at the job file (its statistics mix records). Dropout draws its mask per record. The
//! recurrent layer (GRU) trains under client-level DP or none: record-level DP-SGD refuses it,
//! here and when the job file is read.

use burn::tensor::activation::{gelu, relu, sigmoid, softmax, tanh};
use burn::tensor::module::{avg_pool2d, conv2d, embedding, max_pool2d, unfold4d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, UnfoldOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use confide_core::layers::{self as core_layers, Shape};

use crate::dataset::Dataset;
use crate::dpsgd::ClippedSum;
use crate::model::{Layer, ModelError, ModelKind, ModelSpec, to_vec};
use crate::train::{TrainConfig, TrainOutcome};

/// ε of the normalisation layers.
const NORM_EPS: f64 = 1e-5;

/// Rows per forward pass when predicting.
const PREDICT_ROWS: usize = 512;

/// One layer of a checked list: its output shape and where its parameter
/// tensors sit in the vector.
#[derive(Debug, Clone)]
struct Step {
    layer: Layer,
    output: Shape,
    /// `(offset, shape)` of each parameter tensor.
    params: Vec<(usize, Vec<usize>)>,
}

/// A checked layer list.
#[derive(Debug, Clone)]
pub struct Plan {
    input: Shape,
    steps: Vec<Step>,
    total: usize,
    classes: usize,
}

impl Plan {
    /// Checks `spec`'s layer list against its input and classes.
    ///
    /// # Errors
    /// [`ModelError::Architecture`] with the message of `confide_core::layers`.
    pub fn new(spec: &ModelSpec) -> Result<Self, ModelError> {
        let arch = ModelError::Architecture;
        if spec.kind != ModelKind::Layers {
            return Err(arch("not a layer list".into()));
        }
        let input = core_layers::input_shape(&spec.input_shape, spec.input_dim, &spec.layers)
            .map_err(arch)?;
        let shapes = core_layers::infer(input, &spec.layers, spec.classes).map_err(arch)?;
        let mut steps = Vec::with_capacity(shapes.len());
        let mut before = input;
        let mut offset = 0usize;
        for (layer, output) in spec.layers.iter().zip(shapes) {
            let mut params = Vec::new();
            for shape in layer.param_shapes(before) {
                let n = shape.iter().product::<usize>();
                params.push((offset, shape));
                offset = offset.saturating_add(n);
            }
            steps.push(Step {
                layer: *layer,
                output,
                params,
            });
            before = output;
        }
        if offset == 0 {
            return Err(arch("a layer list needs a layer with parameters".into()));
        }
        if offset > confide_core::config::MAX_PARAMS {
            return Err(arch(format!(
                "the model has {offset} parameters; at most {} are accepted",
                confide_core::config::MAX_PARAMS
            )));
        }
        Ok(Self {
            input,
            steps,
            total: offset,
            classes: spec.classes,
        })
    }

    /// Total parameters.
    pub fn param_count(&self) -> usize {
        self.total
    }

    /// `(name, shape)` of every parameter tensor in vector order: `layers.{i}.weight` and
    /// `layers.{i}.bias`, `i` being the layer's position in the list (PyTorch's
    /// `nn.Sequential` naming; a norm's scale is its weight and its shift its bias).
    pub fn tensor_names(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            for (j, (_, shape)) in step.params.iter().enumerate() {
                let role = match (step.layer, j) {
                    (Layer::Gru { .. }, _) => ["weight_ih", "weight_hh", "bias_ih", "bias_hh"][j],
                    (_, 0) => "weight",
                    _ => "bias",
                };
                out.push((format!("layers.{i}.{role}"), shape.clone()));
            }
        }
        out
    }

    /// Initial parameters from a seeded generator: He-uniform weights (bound `√(6/fan_in)`)
    /// and zero biases for dense and conv2d layers, unit scales and zero shifts for the
    /// norms, unit-variance uniform entries for an embedding table.
    pub fn initial_vector(&self, seed: u64) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.total);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for step in &self.steps {
            for (j, (_, shape)) in step.params.iter().enumerate() {
                let n = shape.iter().product::<usize>();
                let fill = |out: &mut Vec<f32>, v: f32| out.extend(std::iter::repeat_n(v, n));
                match (step.layer, j) {
                    (Layer::Dense { .. } | Layer::Conv2d { .. }, 0) => {
                        let fan_in = n / shape[if matches!(step.layer, Layer::Dense { .. }) {
                            1
                        } else {
                            0
                        }];
                        let bound = (6.0 / fan_in as f64).sqrt() as f32;
                        out.extend((0..n).map(|_| rng.gen_range(-bound..bound)));
                    }
                    (Layer::Embedding { .. }, _) => {
                        let bound = 3f32.sqrt();
                        out.extend((0..n).map(|_| rng.gen_range(-bound..bound)));
                    }
                    (Layer::Gru { units, .. }, _) => {
                        // PyTorch's default for recurrent layers: U(−1/√units, 1/√units).
                        let bound = 1.0 / (units as f32).sqrt();
                        out.extend((0..n).map(|_| rng.gen_range(-bound..bound)));
                    }
                    (Layer::LayerNorm | Layer::GroupNorm { .. }, 0) => fill(&mut out, 1.0),
                    _ => fill(&mut out, 0.0),
                }
            }
        }
        out
    }

    /// `true` for the entries L2 decay applies to (dense and conv2d weights, embedding
    /// tables), `false` for biases and the norms' scales and shifts.
    pub fn decay_mask(&self) -> Vec<bool> {
        let mut mask = Vec::with_capacity(self.total);
        for step in &self.steps {
            for (j, (_, shape)) in step.params.iter().enumerate() {
                let decays = match step.layer {
                    Layer::Dense { .. } | Layer::Conv2d { .. } | Layer::Embedding { .. } => j == 0,
                    Layer::Gru { .. } => j < 2,
                    _ => false,
                };
                mask.extend(std::iter::repeat_n(decays, shape.iter().product::<usize>()));
            }
        }
        mask
    }

    /// Whether any layer draws randomness while training.
    fn has_dropout(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.layer, Layer::Dropout { rate } if rate > 0.0))
    }

    /// The parameter vector as one tensor per parameter tensor, sliced from `theta`.
    fn slices(&self, theta: &Tensor<1>) -> Vec<Tensor<1>> {
        self.steps
            .iter()
            .flat_map(|s| s.params.iter())
            .map(|(offset, shape)| {
                let n = shape.iter().product::<usize>();
                theta.clone().slice(*offset..*offset + n)
            })
            .collect()
    }

    /// The batch's input in the list's input shape. Token ids must be whole numbers in
    /// `0..vocab`; the message never shows a value.
    fn input(&self, features: Vec<f32>, rows: usize, device: &Device) -> Result<Act, ModelError> {
        Ok(match self.input {
            Shape::Flat(d) => Act::V(tensor_nd(features, [rows, d], device)),
            Shape::Image { c, h, w } => Act::I(tensor_nd(features, [rows, c, h, w], device)),
            Shape::Seq { t, d } => Act::S(tensor_nd(features, [rows, t, d], device)),
            Shape::Tokens(t) => {
                let vocab = match self.steps.first().map(|s| s.layer) {
                    Some(Layer::Embedding { vocab, .. }) => vocab,
                    _ => unreachable!("token input is checked to start with an embedding"),
                };
                let mut ids = Vec::with_capacity(features.len());
                for v in features {
                    if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab) {
                        return Err(ModelError::Architecture(format!(
                            "a token id is not a whole number in 0..{vocab}"
                        )));
                    }
                    ids.push(v as i64);
                }
                Act::T(Tensor::from_data(TensorData::new(ids, [rows, t]), device))
            }
        })
    }

    /// Logits `[rows, classes]`.
    fn forward(&self, params: &[Tensor<1>], x: Act, ctx: &mut Ctx) -> Tensor<2> {
        let mut h = x;
        let mut k = 0;
        for step in &self.steps {
            let p = &params[k..k + step.params.len()];
            k += step.params.len();
            h = self.layer(step, p, h, ctx);
        }
        match h {
            Act::V(z) => z,
            _ => unreachable!("the list is checked to end in a flat vector"),
        }
    }

    fn layer(&self, step: &Step, p: &[Tensor<1>], h: Act, ctx: &mut Ctx) -> Act {
        let rows = h.rows();
        match (step.layer, h) {
            (Layer::Dense { units }, Act::V(a)) => {
                let d = a.dims()[1];
                let w = p[0].clone().reshape([d, units]);
                let z = a.clone().matmul(w) + p[1].clone().unsqueeze_dim::<2>(0);
                let (z, probe) = ctx.probe2(z);
                ctx.record(|| Record::Dense {
                    a: a.inner().reshape([rows, 1, d]),
                    probe,
                });
                Act::V(z)
            }
            (Layer::Dense { units }, Act::S(a)) => {
                let [_, t, d] = a.dims();
                let w = p[0].clone().reshape([d, units]);
                let z = a
                    .clone()
                    .reshape([rows * t, d])
                    .matmul(w)
                    .reshape([rows, t, units])
                    + p[1].clone().reshape([1, 1, units]);
                let (z, probe) = ctx.probe3(z);
                ctx.record(|| Record::Dense {
                    a: a.inner(),
                    probe,
                });
                Act::S(z)
            }
            (
                Layer::Conv2d {
                    channels,
                    kernel,
                    stride,
                    padding,
                },
                Act::I(x),
            ) => {
                let c = x.dims()[1];
                let w = p[0].clone().reshape([channels, c, kernel, kernel]);
                let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
                let z = conv2d(x.clone(), w, Some(p[1].clone()), options);
                let (z, probe) = ctx.probe4(z);
                ctx.record(|| Record::Conv {
                    x: x.inner(),
                    probe,
                    kernel,
                    stride,
                    padding,
                });
                Act::I(z)
            }
            (Layer::MaxPool2d { size, stride }, Act::I(x)) => Act::I(max_pool2d(
                x,
                MaxPoolOptions::new([size; 2]).with_stride([stride.unwrap_or(size); 2]),
            )),
            (Layer::AvgPool2d { size, stride }, Act::I(x)) => Act::I(avg_pool2d(
                x,
                AvgPoolOptions::new([size; 2]).with_stride([stride.unwrap_or(size); 2]),
            )),
            (Layer::Flatten, h) => {
                let size = step.output.size();
                Act::V(match h {
                    Act::V(x) => x,
                    Act::S(x) => x.reshape([rows, size]),
                    Act::I(x) => x.reshape([rows, size]),
                    Act::T(_) => unreachable!("tokens are checked to be embedded first"),
                })
            }
            (Layer::Relu, h) => h.map(relu, relu, relu),
            (Layer::Tanh, h) => h.map(tanh, tanh, tanh),
            (Layer::Gelu, h) => h.map(gelu, gelu, gelu),
            (Layer::Sigmoid, h) => h.map(sigmoid, sigmoid, sigmoid),
            (Layer::Dropout { rate }, h) => match ctx.dropout.as_mut() {
                Some(rng) if rate > 0.0 => {
                    let n = step.output.size() * rows;
                    let keep = (1.0 / (1.0 - rate)) as f32;
                    let mask: Vec<f32> = (0..n)
                        .map(|_| if rng.gen_bool(rate) { 0.0 } else { keep })
                        .collect();
                    match h {
                        Act::V(x) => {
                            let m = tensor_nd(mask, x.dims(), &x.device());
                            Act::V(x * m)
                        }
                        Act::S(x) => {
                            let m = tensor_nd(mask, x.dims(), &x.device());
                            Act::S(x * m)
                        }
                        Act::I(x) => {
                            let m = tensor_nd(mask, x.dims(), &x.device());
                            Act::I(x * m)
                        }
                        Act::T(_) => unreachable!("tokens are checked to be embedded first"),
                    }
                }
                _ => h,
            },
            (Layer::LayerNorm, h) => {
                let (x, d) = match h {
                    Act::V(x) => {
                        let d = x.dims()[1];
                        (x.reshape([rows, 1, d]), d)
                    }
                    Act::S(x) => {
                        let d = x.dims()[2];
                        (x, d)
                    }
                    _ => unreachable!("layer_norm is checked to read vectors or sequences"),
                };
                let xhat = normalise(x);
                let z = xhat.clone() * p[0].clone().reshape([1, 1, d])
                    + p[1].clone().reshape([1, 1, d]);
                let (z, probe) = ctx.probe3(z);
                ctx.record(|| Record::Norm {
                    xhat: xhat.inner(),
                    probe,
                    axis: 1,
                });
                match step.output {
                    Shape::Flat(_) => Act::V(z.reshape([rows, d])),
                    _ => Act::S(z),
                }
            }
            (Layer::GroupNorm { groups }, Act::I(x)) => {
                let [_, c, hh, ww] = x.dims();
                let xhat = normalise(x.reshape([rows, groups, (c / groups) * hh * ww])).reshape([
                    rows,
                    c,
                    hh * ww,
                ]);
                let z = xhat.clone() * p[0].clone().reshape([1, c, 1])
                    + p[1].clone().reshape([1, c, 1]);
                let (z, probe) = ctx.probe3(z);
                ctx.record(|| Record::Norm {
                    xhat: xhat.inner(),
                    probe,
                    axis: 2,
                });
                Act::I(z.reshape([rows, c, hh, ww]))
            }
            (Layer::Embedding { vocab, dim }, Act::T(ids)) => {
                let table = p[0].clone().reshape([vocab, dim]);
                let z = embedding(table, ids.clone());
                let (z, probe) = ctx.probe3(z);
                ctx.record(|| Record::Embed {
                    ids: to_ids(ids.clone()),
                    vocab,
                    probe,
                });
                Act::S(z)
            }
            (Layer::Gru { units, sequences }, Act::S(x)) => {
                let [_, t, d] = x.dims();
                let w_ih = p[0].clone().reshape([d, 3 * units]);
                let w_hh = p[1].clone().reshape([units, 3 * units]);
                let b_hh = p[3].clone().unsqueeze_dim::<2>(0);
                // The input's share of every gate at every step, in one product.
                let gi = x
                    .reshape([rows * t, d])
                    .matmul(w_ih)
                    .reshape([rows, t, 3 * units])
                    + p[2].clone().reshape([1, 1, 3 * units]);
                let mut h = Tensor::<2>::zeros([rows, units], &gi.device());
                let mut states = Vec::with_capacity(if sequences { t } else { 0 });
                for s in 0..t {
                    let gi = gi
                        .clone()
                        .slice([0..rows, s..s + 1])
                        .reshape([rows, 3 * units]);
                    let gh = h.clone().matmul(w_hh.clone()) + b_hh.clone();
                    let gate = |g: &Tensor<2>, k: usize| {
                        g.clone().slice([0..rows, k * units..(k + 1) * units])
                    };
                    let r = sigmoid(gate(&gi, 0) + gate(&gh, 0));
                    let z = sigmoid(gate(&gi, 1) + gate(&gh, 1));
                    let n = tanh(gate(&gi, 2) + r * gate(&gh, 2));
                    h = (z.ones_like() - z.clone()) * n + z * h;
                    if sequences {
                        states.push(h.clone().unsqueeze_dim::<3>(1));
                    }
                }
                if sequences {
                    Act::S(Tensor::cat(states, 1))
                } else {
                    Act::V(h)
                }
            }
            (layer, _) => unreachable!("{} is checked against its input shape", layer.name()),
        }
    }
}

/// `(x − mean) / √(var + ε)` over the last axis (biased variance).
fn normalise(x: Tensor<3>) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = (centred.clone() * centred.clone()).mean_dim(2);
    centred / (var + NORM_EPS).sqrt()
}

fn tensor_nd<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// An activation between layers.
enum Act {
    V(Tensor<2>),
    S(Tensor<3>),
    I(Tensor<4>),
    T(Tensor<2, Int>),
}

impl Act {
    fn rows(&self) -> usize {
        match self {
            Act::V(x) => x.dims()[0],
            Act::S(x) => x.dims()[0],
            Act::I(x) => x.dims()[0],
            Act::T(x) => x.dims()[0],
        }
    }

    fn map(
        self,
        v: impl Fn(Tensor<2>) -> Tensor<2>,
        s: impl Fn(Tensor<3>) -> Tensor<3>,
        i: impl Fn(Tensor<4>) -> Tensor<4>,
    ) -> Act {
        match self {
            Act::V(x) => Act::V(v(x)),
            Act::S(x) => Act::S(s(x)),
            Act::I(x) => Act::I(i(x)),
            Act::T(_) => unreachable!("tokens are checked to be embedded first"),
        }
    }
}

/// A zero tensor added to a layer's output; only it requires a gradient.
enum Probe {
    P2(Tensor<2>),
    P3(Tensor<3>),
    P4(Tensor<4>),
}

impl Probe {
    /// The per-record output gradient, flattened to `[rows, n]` then reshaped by the caller.
    fn grad(&self, grads: &burn::tensor::Gradients) -> Tensor<2> {
        fn missing<T>() -> T {
            unreachable!("every probe is on the loss's path")
        }
        match self {
            Probe::P2(p) => p.grad(grads).unwrap_or_else(missing),
            Probe::P3(p) => {
                let g = p.grad(grads).unwrap_or_else(missing);
                let [b, t, d] = g.dims();
                g.reshape([b, t * d])
            }
            Probe::P4(p) => {
                let g = p.grad(grads).unwrap_or_else(missing);
                let [b, c, h, w] = g.dims();
                g.reshape([b, c * h * w])
            }
        }
    }
}

/// What one layer with parameters leaves for its per-record gradients.
enum Record {
    /// Dense: its input `[rows, steps, in]` (one step on a vector).
    Dense { a: Tensor<3>, probe: Probe },
    Conv {
        x: Tensor<4>,
        probe: Probe,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// A norm's normalised input `[rows, positions or channels, width or pixels]`; the
    /// per-record gradient of the scale sums over `axis`.
    Norm {
        xhat: Tensor<3>,
        probe: Probe,
        axis: usize,
    },
    Embed {
        /// Token ids `[rows][steps]`.
        ids: Vec<Vec<usize>>,
        vocab: usize,
        probe: Probe,
    },
}

fn to_ids(ids: Tensor<2, Int>) -> Vec<Vec<usize>> {
    let [_, t] = ids.dims();
    let flat: Vec<i64> = match ids.into_data().convert::<i64>().try_into_vec::<i64>() {
        Ok(v) => v,
        Err(e) => unreachable!("token ids are created as integers: {e:?}"),
    };
    flat.chunks(t.max(1))
        .map(|r| r.iter().map(|&v| v as usize).collect())
        .collect()
}

/// Per-forward state: the dropout generator while training, the records while clipping.
struct Ctx {
    dropout: Option<ChaCha20Rng>,
    records: Option<Vec<Record>>,
}

impl Ctx {
    fn new(dropout: Option<ChaCha20Rng>, probing: bool) -> Self {
        Self {
            dropout,
            records: probing.then(Vec::new),
        }
    }

    fn record(&mut self, make: impl FnOnce() -> Record) {
        if let Some(records) = self.records.as_mut() {
            records.push(make());
        }
    }

    fn probe2(&self, z: Tensor<2>) -> (Tensor<2>, Probe) {
        if self.records.is_none() {
            return (z.clone(), Probe::P2(z));
        }
        let p = Tensor::<2>::zeros(z.dims(), &z.device()).require_grad();
        (z + p.clone(), Probe::P2(p))
    }

    fn probe3(&self, z: Tensor<3>) -> (Tensor<3>, Probe) {
        if self.records.is_none() {
            return (z.clone(), Probe::P3(z));
        }
        let p = Tensor::<3>::zeros(z.dims(), &z.device()).require_grad();
        (z + p.clone(), Probe::P3(p))
    }

    fn probe4(&self, z: Tensor<4>) -> (Tensor<4>, Probe) {
        if self.records.is_none() {
            return (z.clone(), Probe::P4(z));
        }
        let p = Tensor::<4>::zeros(z.dims(), &z.device()).require_grad();
        (z + p.clone(), Probe::P4(p))
    }
}

/// One layer's per-record gradients, in a form that gives norms and clipped sums (one per
/// layer with parameters, so the size difference between variants does not matter).
#[allow(clippy::large_enum_variant)]
enum PerRecord {
    /// A dense layer on vectors: input `[rows, in]` and output gradient `[rows, out]`.
    Ghost { a: Tensor<2>, g: Tensor<2> },
    /// Every parameter tensor's per-record gradient, `[rows, n]` each.
    Full(Vec<Tensor<2>>),
    /// An embedding: each record's token ids and its output gradient `[steps × dim]`
    /// (row-major, one `Vec` per record), worked on the CPU: a record's gradient is the sum
    /// of its steps' gradients into the rows of its tokens.
    Embed {
        ids: Vec<Vec<usize>>,
        g: Vec<Vec<f32>>,
        vocab: usize,
        dim: usize,
    },
}

/// Per record, the sum of its steps' output gradients into each distinct token's row.
fn embedding_rows(
    ids: &[usize],
    g: &[f32],
    dim: usize,
) -> std::collections::BTreeMap<usize, Vec<f64>> {
    let mut rows: std::collections::BTreeMap<usize, Vec<f64>> = std::collections::BTreeMap::new();
    for (s, &id) in ids.iter().enumerate() {
        let row = rows.entry(id).or_insert_with(|| vec![0.0; dim]);
        for (r, v) in row.iter_mut().zip(&g[s * dim..(s + 1) * dim]) {
            *r += f64::from(*v);
        }
    }
    rows
}

impl PerRecord {
    fn from_record(record: Record, grads: &burn::tensor::Gradients) -> Self {
        match record {
            Record::Dense { a, probe } => {
                let [b, t, d] = a.dims();
                let g = probe.grad(grads);
                let units = g.dims()[1] / t;
                if t == 1 {
                    return PerRecord::Ghost {
                        a: a.reshape([b, d]),
                        g,
                    };
                }
                let g = g.reshape([b, t, units]);
                let gw = a.swap_dims(1, 2).matmul(g.clone()).reshape([b, d * units]);
                let gb = g.sum_dim(1).reshape([b, units]);
                PerRecord::Full(vec![gw, gb])
            }
            Record::Conv {
                x,
                probe,
                kernel,
                stride,
                padding,
            } => {
                let [b, c, _, _] = x.dims();
                let patches = unfold4d(
                    x,
                    [kernel, kernel],
                    UnfoldOptions::new([stride; 2], [padding; 2], [1, 1]),
                );
                let positions = patches.dims()[2];
                let g = probe.grad(grads);
                let channels = g.dims()[1] / positions;
                let g = g.reshape([b, channels, positions]);
                let gw = g
                    .clone()
                    .matmul(patches.swap_dims(1, 2))
                    .reshape([b, channels * c * kernel * kernel]);
                let gb = g.sum_dim(2).reshape([b, channels]);
                PerRecord::Full(vec![gw, gb])
            }
            Record::Norm { xhat, probe, axis } => {
                let [b, m, n] = xhat.dims();
                let g = probe.grad(grads).reshape([b, m, n]);
                let width = if axis == 1 { n } else { m };
                let gs = (g.clone() * xhat).sum_dim(axis).reshape([b, width]);
                let gt = g.sum_dim(axis).reshape([b, width]);
                PerRecord::Full(vec![gs, gt])
            }
            Record::Embed { ids, vocab, probe } => {
                let t = ids.first().map_or(1, Vec::len).max(1);
                let g = probe.grad(grads);
                let width = g.dims()[1];
                let g = to_vec(g)
                    .chunks(width.max(1))
                    .map(<[f32]>::to_vec)
                    .collect();
                PerRecord::Embed {
                    ids,
                    g,
                    vocab,
                    dim: width / t,
                }
            }
        }
    }

    /// Squared per-record gradient norms `[rows, 1]`.
    fn norm_sq(&self) -> Tensor<2> {
        match self {
            PerRecord::Ghost { a, g } => {
                ((a.clone() * a.clone()).sum_dim(1) + 1.0) * (g.clone() * g.clone()).sum_dim(1)
            }
            PerRecord::Full(parts) => parts
                .iter()
                .map(|p| (p.clone() * p.clone()).sum_dim(1))
                .reduce(|x, y| x + y)
                .unwrap_or_else(|| unreachable!("a layer with parameters has a tensor")),
            PerRecord::Embed { ids, g, dim, .. } => {
                // ‖Σ_t e_{tok_t} g_tᵀ‖² = Σ over distinct tokens of ‖Σ_{t: tok_t = tok} g_t‖²
                // (the ghost norm of Li et al. 2022 without forming the t × t products).
                let norms: Vec<f32> = ids
                    .iter()
                    .zip(g)
                    .map(|(ids, g)| {
                        embedding_rows(ids, g, *dim)
                            .values()
                            .map(|row| row.iter().map(|v| v * v).sum::<f64>())
                            .sum::<f64>() as f32
                    })
                    .collect();
                let b = norms.len();
                tensor_nd(norms, [b, 1], &Device::flex())
            }
        }
    }

    /// `Σ_i c_i ∇θ L_i` in parameter order (`scale = None`: the plain sum).
    fn weighted_sum(self, scale: Option<&Tensor<2>>, out: &mut Vec<f32>) {
        match self {
            PerRecord::Ghost { a, g } => {
                let g = match scale {
                    Some(s) => g * s.clone(),
                    None => g,
                };
                out.extend(to_vec(a.transpose().matmul(g.clone())));
                out.extend(to_vec(g.sum_dim(0)));
            }
            PerRecord::Full(parts) => {
                for p in parts {
                    let p = match scale {
                        Some(s) => p * s.clone(),
                        None => p,
                    };
                    out.extend(to_vec(p.sum_dim(0)));
                }
            }
            PerRecord::Embed { ids, g, vocab, dim } => {
                let scale: Vec<f32> = match scale {
                    Some(s) => to_vec(s.clone()),
                    None => vec![1.0; ids.len()],
                };
                let mut table = vec![0.0f64; vocab * dim];
                for ((ids, g), c) in ids.iter().zip(&g).zip(scale) {
                    for (id, row) in embedding_rows(ids, g, dim) {
                        for (cell, v) in table[id * dim..(id + 1) * dim].iter_mut().zip(row) {
                            *cell += f64::from(c) * v;
                        }
                    }
                }
                out.extend(table.into_iter().map(|v| v as f32));
            }
        }
    }
}

fn targets(labels: &[u32], classes: usize, device: &Device) -> Tensor<2> {
    let mut onehot = vec![0.0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * classes + l as usize] = 1.0;
    }
    tensor_nd(onehot, [labels.len(), classes], device)
}

/// Mean softmax cross-entropy.
fn loss(logits: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    (target * logp).sum_dim(1).neg().mean()
}

fn gather(data: &Dataset, rows: &[usize]) -> (Vec<f32>, Vec<u32>) {
    let mut features = Vec::with_capacity(rows.len() * data.feature_count);
    let mut labels = Vec::with_capacity(rows.len());
    for &i in rows {
        features.extend_from_slice(data.row(i));
        labels.push(data.labels[i]);
    }
    (features, labels)
}

fn check(plan: &Plan, params: &[f32], data: &Dataset) -> Result<(), ModelError> {
    let width = plan.input.size();
    if data.feature_count != width {
        return Err(ModelError::Architecture(format!(
            "data has {} features, the model expects {width}",
            data.feature_count
        )));
    }
    check_params(plan, params)
}

fn check_params(plan: &Plan, params: &[f32]) -> Result<(), ModelError> {
    if params.len() != plan.total {
        return Err(ModelError::ShapeMismatch {
            expected: plan.total,
            found: params.len(),
        });
    }
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(ModelError::NonFinite { index });
    }
    Ok(())
}

/// Mini-batch SGD for a layer list (the counterpart of [`crate::train::train`]).
pub(crate) fn train(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    config: &TrainConfig,
) -> Result<TrainOutcome, ModelError> {
    let plan = Plan::new(spec)?;
    check(&plan, params, data)?;
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let n = plan.total;
    let decay = tensor_nd(
        plan.decay_mask()
            .into_iter()
            .map(|d| if d { config.l2 as f32 } else { 0.0 })
            .collect(),
        [n],
        &plain,
    );
    let anchor = tensor_nd(params.to_vec(), [n], &plain);
    let mut theta = tensor_nd(params.to_vec(), [n], &plain);
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    let mut dropout = plan
        .has_dropout()
        .then(|| ChaCha20Rng::seed_from_u64(config.seed ^ 0x6472_6f70_6f75_7421));
    let mut order: Vec<usize> = (0..data.len()).collect();
    let batch_size = config.batch_size.max(1);
    let (mut last_epoch_loss, mut steps) = (0.0, 0);
    for _ in 0..config.epochs {
        order.shuffle(&mut rng);
        let (mut total, mut batches) = (0.0, 0u32);
        for chunk in order.chunks(batch_size) {
            let (features, labels) = gather(data, chunk);
            let x = plan.input(features, chunk.len(), &device)?;
            let leaf = theta.clone().autodiff().require_grad();
            let mut ctx = Ctx::new(dropout.take(), false);
            let logits = plan.forward(&plan.slices(&leaf), x, &mut ctx);
            dropout = ctx.dropout;
            let loss = loss(logits, targets(&labels, plan.classes, &device));
            let grads = loss.backward();
            total += f64::from(loss.inner().into_scalar::<f32>());
            let mut g = leaf
                .grad(&grads)
                .unwrap_or_else(|| unreachable!("the parameters are on the loss's path"));
            g = g + decay.clone() * theta.clone();
            if config.proximal_mu > 0.0 {
                g = g + (theta.clone() - anchor.clone()) * config.proximal_mu;
            }
            theta = theta - g * config.learning_rate;
            batches += 1;
            steps += 1;
        }
        last_epoch_loss = total / f64::from(batches.max(1));
    }
    Ok(TrainOutcome {
        params: to_vec(theta),
        last_epoch_loss,
        steps,
    })
}

/// Class probabilities `[rows × classes]`, row-major.
pub(crate) fn predict_proba(
    spec: &ModelSpec,
    params: &[f32],
    features: &[f32],
) -> Result<Vec<f32>, ModelError> {
    let plan = Plan::new(spec)?;
    check_params(&plan, params)?;
    let device = Device::flex();
    let theta = tensor_nd(params.to_vec(), [plan.total], &device);
    let slices = plan.slices(&theta);
    let width = plan.input.size();
    let mut out = Vec::with_capacity(features.len() / width * plan.classes);
    for chunk in features.chunks(PREDICT_ROWS * width) {
        let rows = chunk.len() / width;
        let x = plan.input(chunk.to_vec(), rows, &device)?;
        let logits = plan.forward(&slices, x, &mut Ctx::new(None, false));
        out.extend(to_vec(softmax(logits, 1)));
    }
    Ok(out)
}

/// The per-record clipped gradient sum of a layer list over `rows` (see the module docs);
/// `dropout` draws the masks when the list has dropout.
pub(crate) fn clipped_sum(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    rows: &[usize],
    clip_norm: Option<f64>,
    dropout: Option<&mut ChaCha20Rng>,
) -> Result<ClippedSum, ModelError> {
    let plan = Plan::new(spec)?;
    check(&plan, params, data)?;
    core_layers::record_level_dp_supported(&spec.layers).map_err(ModelError::Architecture)?;
    let b = rows.len();
    if b == 0 {
        return Ok(ClippedSum {
            sum: vec![0.0; plan.total],
            norms: Vec::new(),
            loss_sum: 0.0,
        });
    }
    let device = Device::flex().autodiff();
    let (features, labels) = gather(data, rows);
    let x = plan.input(features, b, &device)?;
    let theta = tensor_nd(params.to_vec(), [plan.total], &Device::flex()).autodiff();
    let mut ctx = Ctx::new(dropout.map(|r| ChaCha20Rng::from_seed(r.r#gen())), true);
    let logits = plan.forward(&plan.slices(&theta), x, &mut ctx);
    // Summed (not mean) loss, so that probe gradients are the per-record gradients.
    let loss = loss(logits, targets(&labels, plan.classes, &device)) * (b as f32);
    let grads = loss.backward();
    let loss_sum = f64::from(loss.inner().into_scalar::<f32>());
    let per: Vec<PerRecord> = ctx
        .records
        .unwrap_or_default()
        .into_iter()
        .map(|r| PerRecord::from_record(r, &grads))
        .collect();
    let norms = per
        .iter()
        .map(PerRecord::norm_sq)
        .reduce(|x, y| x + y)
        .unwrap_or_else(|| Tensor::zeros([b, 1], &Device::flex()))
        .clamp_min(0.0)
        .sqrt();
    let scale = clip_norm.map(|c| (norms.clone() + 1e-6).recip().mul_scalar(c).clamp_max(1.0));
    let mut sum = Vec::with_capacity(plan.total);
    for p in per {
        p.weighted_sum(scale.as_ref(), &mut sum);
    }
    Ok(ClippedSum {
        sum,
        norms: to_vec(norms),
        loss_sum,
    })
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
