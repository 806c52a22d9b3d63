//! Models as a declarative list of layers (`[model] kind = "layers"`): the layer vocabulary,
//! shape inference and parameter counts. Pure arithmetic, so that a job file is checked when
//! it is read, by every role, before any tensor exists; `confide-ml` builds and trains the
//! network on burn.
//!
//! A layer list reads an input of shape `model.input` (a flat vector `[d]`, an image
//! `[channels, height, width]`, a sequence of vectors `[steps, width]`, or, when the first
//! layer is an embedding, `[steps]` token ids), and must end in a flat vector of one logit per
//! class. Parameters travel in list order; within a layer, in the order of [`Layer`]'s docs.

use serde::{Deserialize, Serialize};

/// One layer. In TOML: `[[model.layers]]` tables with a `type` key, for example
/// `{ type = "conv2d", channels = 16, kernel = 5, padding = 2 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// Fully connected: `y = x·W + b`, on a flat vector or on each step of a sequence.
    /// Parameters: `W [in, units]` row-major, then `b [units]`.
    Dense {
        /// Output width.
        units: usize,
    },
    /// 2-D convolution over an image. Parameters: `W [channels, in_channels, kernel, kernel]`
    /// (the layout of PyTorch and burn), then `b [channels]`.
    Conv2d {
        /// Output channels.
        channels: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride (1 if absent).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        stride: usize,
        /// Zero padding on each side (0 if absent).
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
    },
    /// Max pooling over square windows of an image.
    MaxPool2d {
        /// Window size.
        size: usize,
        /// Stride (the window size if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// Average pooling over square windows of an image.
    AvgPool2d {
        /// Window size.
        size: usize,
        /// Stride (the window size if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// An image or a sequence to one flat vector (row-major).
    Flatten,
    /// `max(0, x)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// GELU (the erf form).
    Gelu,
    /// The logistic function.
    Sigmoid,
    /// Inverted dropout while training (each unit zeroed with probability `rate`, the rest
    /// scaled by `1/(1 − rate)`); the identity when evaluating.
    Dropout {
        /// Probability of zeroing a unit, in [0, 1).
        rate: f64,
    },
    /// Layer normalisation over the last axis of a flat vector or of each sequence step
    /// (ε = 1e-5), then a learned scale and shift. Parameters: `γ [width]`, then `β [width]`.
    LayerNorm,
    /// Group normalisation of an image (Wu and He, 2018; ε = 1e-5): channels in `groups`
    /// groups, each normalised over its channels and pixels, then a per-channel scale and
    /// shift. Parameters: `γ [channels]`, then `β [channels]`.
    GroupNorm {
        /// Number of groups; must divide the channel count.
        groups: usize,
    },
    /// Token ids to vectors. Parameters: the table `E [vocab, dim]`.
    Embedding {
        /// Number of distinct tokens (ids 0..vocab).
        vocab: usize,
        /// Vector width.
        dim: usize,
    },
    /// A gated recurrent unit over a sequence (Cho et al. 2014, with PyTorch's gate equations:
    /// `r = σ(x·W_ir + b_ir + h·W_hr + b_hr)`, `z = σ(x·W_iz + b_iz + h·W_hz + b_hz)`,
    /// `n = tanh(x·W_in + b_in + r ⊙ (h·W_hn + b_hn))`, `h' = (1 − z) ⊙ n + z ⊙ h`, `h₀ = 0`).
    /// Gives the last state, or every state when `sequences = true`. Parameters:
    /// `W_ih [in, 3·units]`, `W_hh [units, 3·units]`, `b_ih [3·units]`, `b_hh [3·units]`, the
    /// gates in the order r, z, n. Trained under client-level DP only: record-level DP-SGD
    /// refuses it (its per-record gradients are not computed here).
    Gru {
        /// State width.
        units: usize,
        /// Every step's state (`[steps, units]`) instead of the last one.
        #[serde(default, skip_serializing_if = "is_false")]
        sequences: bool,
    },
    /// Refused (see [`infer`]): kept in the vocabulary only so that the refusal names it.
    BatchNorm,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// The shape of one record between layers (the batch axis left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A vector of this width.
    Flat(usize),
    /// An image.
    Image {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// A sequence of token ids (the input of an embedding).
    Tokens(usize),
    /// A sequence of vectors.
    Seq {
        /// Steps.
        t: usize,
        /// Width of each step.
        d: usize,
    },
}

impl Shape {
    /// Numbers per record.
    pub fn size(&self) -> usize {
        match *self {
            Shape::Flat(d) | Shape::Tokens(d) => d,
            Shape::Image { c, h, w } => c.saturating_mul(h).saturating_mul(w),
            Shape::Seq { t, d } => t.saturating_mul(d),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Flat(d) => write!(f, "[{d}]"),
            Shape::Image { c, h, w } => write!(f, "[{c}, {h}, {w}] (image)"),
            Shape::Tokens(t) => write!(f, "[{t}] (token ids)"),
            Shape::Seq { t, d } => write!(f, "[{t}, {d}] (sequence)"),
        }
    }
}

impl Layer {
    /// The name used in job files.
    pub fn name(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "dense",
            Layer::Conv2d { .. } => "conv2d",
            Layer::MaxPool2d { .. } => "max_pool2d",
            Layer::AvgPool2d { .. } => "avg_pool2d",
            Layer::Flatten => "flatten",
            Layer::Relu => "relu",
            Layer::Tanh => "tanh",
            Layer::Gelu => "gelu",
            Layer::Sigmoid => "sigmoid",
            Layer::Dropout { .. } => "dropout",
            Layer::LayerNorm => "layer_norm",
            Layer::GroupNorm { .. } => "group_norm",
            Layer::Embedding { .. } => "embedding",
            Layer::Gru { .. } => "gru",
            Layer::BatchNorm => "batch_norm",
        }
    }

    /// The shapes of this layer's parameter tensors on input `input`, in parameter order
    /// (empty for a layer without parameters). Call after [`infer`] accepted the list.
    pub fn param_shapes(&self, input: Shape) -> Vec<Vec<usize>> {
        match (*self, input) {
            (Layer::Dense { units }, Shape::Flat(d) | Shape::Seq { d, .. }) => {
                vec![vec![d, units], vec![units]]
            }
            (
                Layer::Conv2d {
                    channels, kernel, ..
                },
                Shape::Image { c, .. },
            ) => vec![vec![channels, c, kernel, kernel], vec![channels]],
            (Layer::LayerNorm, Shape::Flat(d) | Shape::Seq { d, .. }) => vec![vec![d], vec![d]],
            (Layer::GroupNorm { .. }, Shape::Image { c, .. }) => vec![vec![c], vec![c]],
            (Layer::Embedding { vocab, dim }, _) => vec![vec![vocab, dim]],
            (Layer::Gru { units, .. }, Shape::Seq { d, .. }) => vec![
                vec![d, 3 * units],
                vec![units, 3 * units],
                vec![3 * units],
                vec![3 * units],
            ],
            _ => Vec::new(),
        }
    }

    /// Parameters of this layer on input `input` (`None` when the count overflows).
    pub fn param_count(&self, input: Shape) -> Option<usize> {
        self.param_shapes(input).iter().try_fold(0usize, |acc, s| {
            acc.checked_add(s.iter().try_fold(1usize, |p, &d| p.checked_mul(d))?)
        })
    }
}

/// Upper bounds on any one dimension, so that products stay far from overflow.
const MAX_DIM: usize = 1 << 20;

/// The most parameters one layer may have (the whole model is bounded lower, by the job's
/// `MAX_PARAMS`); with at most 256 layers the sum cannot overflow.
const MAX_LAYER_PARAMS: usize = 1 << 32;

/// The input shape of a layer list: `input` as written in the job (empty: `[features]`).
pub fn input_shape(input: &[usize], features: usize, layers: &[Layer]) -> Result<Shape, String> {
    let tokens = matches!(layers.first(), Some(Layer::Embedding { .. }));
    record_shape(input, features, tokens)
}

/// The shape of one record written as `input` (empty: `[features]`); `tokens` when the first
/// layer is an embedding, which reads token ids.
///
/// # Errors
/// A shape Confide does not read, or one that does not hold `features` numbers.
pub fn record_shape(input: &[usize], features: usize, tokens: bool) -> Result<Shape, String> {
    let shape = match (input, tokens) {
        ([], false) => Shape::Flat(features),
        ([], true) => Shape::Tokens(features),
        ([t], true) => Shape::Tokens(*t),
        ([_, _], true) | ([_, _, _], true) => {
            return Err(
                "an embedding must be the first layer and reads `input = [steps]` token ids".into(),
            );
        }
        ([d], false) => Shape::Flat(*d),
        ([t, d], false) => Shape::Seq { t: *t, d: *d },
        ([c, h, w], false) => Shape::Image {
            c: *c,
            h: *h,
            w: *w,
        },
        _ => {
            return Err(format!(
                "input has {} axes; use [features], [steps, width], [channels, height, width] or, before an embedding, [steps]",
                input.len()
            ));
        }
    };
    let dims: &[usize] = match input {
        [] => &[features],
        other => other,
    };
    if dims.iter().any(|&d| d == 0 || d > MAX_DIM) {
        return Err(format!("every input axis must be between 1 and {MAX_DIM}"));
    }
    if shape.size() != features {
        return Err(format!(
            "input {shape} holds {} numbers per record, but data.feature_count is {features}",
            shape.size()
        ));
    }
    Ok(shape)
}

/// Checks a layer list on `input` and returns the shape after each layer. Each message
/// names the layer (`layers[i] (kind)`) and says what fits instead.
pub fn infer(input: Shape, layers: &[Layer], classes: usize) -> Result<Vec<Shape>, String> {
    if layers.is_empty() {
        return Err("a layer list needs at least one layer".into());
    }
    if layers.len() > 256 {
        return Err("at most 256 layers".into());
    }
    let (shapes, total) = walk(input, layers)?;
    if total == 0 {
        return Err("a layer list needs a layer with parameters".into());
    }
    match shapes.last() {
        Some(Shape::Flat(d)) if *d == classes => Ok(shapes),
        other => Err(format!(
            "the last layer must give one logit per class, [{classes}], got {}: end with {{ type = \"dense\", units = {classes} }} (after a flatten for images and sequences)",
            other.map_or_else(|| input.to_string(), ToString::to_string)
        )),
    }
}

/// The shape after `layers` (the input itself for none): for building a list layer by layer
/// (the ONNX importer). Checks each layer as [`infer`] does, not the list's end.
///
/// # Errors
/// A layer that does not fit its input (the message names it).
pub fn output_shape(input: Shape, layers: &[Layer]) -> Result<Shape, String> {
    Ok(walk(input, layers)?.0.last().copied().unwrap_or(input))
}

/// Each layer's output shape, and the parameter count.
fn walk(input: Shape, layers: &[Layer]) -> Result<(Vec<Shape>, usize), String> {
    let mut shapes = Vec::with_capacity(layers.len());
    let mut shape = input;
    let (mut before, mut total) = (input, 0usize);
    for (i, layer) in layers.iter().enumerate() {
        let at = |m: String| format!("layers[{i}] ({}): {m}", layer.name());
        let dim_ok = |v: usize, what: &str| {
            if v == 0 || v > MAX_DIM {
                Err(at(format!("{what} must be between 1 and {MAX_DIM}")))
            } else {
                Ok(())
            }
        };
        let needs_image = || {
            at(format!(
                "needs an image [channels, height, width], got {shape}"
            ))
        };
        shape = match (*layer, shape) {
            (Layer::BatchNorm, _) => {
                return Err(at("batch normalisation is refused: its per-batch statistics mix the records of a batch, so one record's gradient depends on the others and per-record DP-SGD's clipping no longer bounds its influence; use group_norm or layer_norm".into()));
            }
            (Layer::Embedding { vocab, dim }, Shape::Tokens(t)) => {
                dim_ok(vocab, "vocab")?;
                dim_ok(dim, "dim")?;
                Shape::Seq { t, d: dim }
            }
            (Layer::Embedding { .. }, _) => {
                return Err(at("an embedding must be the first layer".into()));
            }
            (_, Shape::Tokens(_)) => {
                return Err(at("token ids must go through an embedding first".into()));
            }
            (Layer::Dense { units }, Shape::Flat(_)) => {
                dim_ok(units, "units")?;
                Shape::Flat(units)
            }
            (Layer::Dense { units }, Shape::Seq { t, .. }) => {
                dim_ok(units, "units")?;
                Shape::Seq { t, d: units }
            }
            (Layer::Dense { .. }, Shape::Image { .. }) => {
                return Err(at("needs a flat vector; add a flatten layer first".into()));
            }
            (
                Layer::Conv2d {
                    channels,
                    kernel,
                    stride,
                    padding,
                },
                Shape::Image { h, w, .. },
            ) => {
                dim_ok(channels, "channels")?;
                dim_ok(kernel, "kernel")?;
                dim_ok(stride, "stride")?;
                if padding >= kernel {
                    return Err(at(format!(
                        "padding {padding} must be below the kernel size {kernel}"
                    )));
                }
                let out = |x: usize| {
                    (x + 2 * padding)
                        .checked_sub(kernel)
                        .map(|r| r / stride + 1)
                };
                match (out(h), out(w)) {
                    (Some(oh), Some(ow)) => Shape::Image {
                        c: channels,
                        h: oh,
                        w: ow,
                    },
                    _ => {
                        return Err(at(format!(
                            "kernel {kernel} does not fit the {h}×{w} image with padding {padding}"
                        )));
                    }
                }
            }
            (
                Layer::MaxPool2d { size, stride } | Layer::AvgPool2d { size, stride },
                Shape::Image { c, h, w },
            ) => {
                dim_ok(size, "size")?;
                let s = stride.unwrap_or(size);
                dim_ok(s, "stride")?;
                if size > h || size > w {
                    return Err(at(format!("window {size} does not fit the {h}×{w} image")));
                }
                Shape::Image {
                    c,
                    h: (h - size) / s + 1,
                    w: (w - size) / s + 1,
                }
            }
            (Layer::Conv2d { .. } | Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. }, _) => {
                return Err(needs_image());
            }
            (Layer::GroupNorm { groups }, Shape::Image { c, .. }) => {
                if groups == 0 || c % groups != 0 {
                    return Err(at(format!(
                        "groups = {groups} must divide the {c} channels"
                    )));
                }
                shape
            }
            (Layer::GroupNorm { .. }, _) => {
                return Err(at(format!(
                    "needs an image, got {shape}; use layer_norm on vectors"
                )));
            }
            (Layer::LayerNorm, Shape::Image { .. }) => {
                return Err(at(
                    "on an image, use group_norm (groups = 1 normalises the whole image)".into(),
                ));
            }
            (Layer::LayerNorm, _) => shape,
            (Layer::Gru { units, sequences }, Shape::Seq { t, .. }) => {
                dim_ok(units, "units")?;
                if sequences {
                    Shape::Seq { t, d: units }
                } else {
                    Shape::Flat(units)
                }
            }
            (Layer::Gru { .. }, _) => {
                return Err(at(format!(
                    "needs a sequence [steps, width] (an embedding's output, or input = [steps, width]), got {shape}"
                )));
            }
            (Layer::Flatten, s) => Shape::Flat(s.size()),
            (Layer::Dropout { rate }, s) => {
                if !(rate.is_finite() && (0.0..1.0).contains(&rate)) {
                    return Err(at(format!("rate must be in [0, 1), got {rate}")));
                }
                s
            }
            (Layer::Relu | Layer::Tanh | Layer::Gelu | Layer::Sigmoid, s) => s,
        };
        match layer.param_count(before) {
            Some(n) if n <= MAX_LAYER_PARAMS => {
                total += n;
            }
            _ => {
                return Err(at(format!("has more than {MAX_LAYER_PARAMS} parameters")));
            }
        }
        before = shape;
        if shape.size() > MAX_DIM * 64 {
            return Err(at(format!(
                "its output {shape} holds {} numbers per record; at most {} are accepted",
                shape.size(),
                MAX_DIM * 64
            )));
        }
        shapes.push(shape);
    }
    Ok((shapes, total))
}

/// Whether record-level DP-SGD can clip this list's per-record gradients (every layer but
/// the recurrent one).
pub fn record_level_dp_supported(layers: &[Layer]) -> Result<(), String> {
    match layers.iter().position(|l| matches!(l, Layer::Gru { .. })) {
        Some(i) => Err(format!(
            "layers[{i}] (gru): record-level DP-SGD is not supported for the recurrent layer (its per-record gradients are not computed); train it under client-level DP (privacy level = \"client\", scheme = \"paillier\") or without DP"
        )),
        None => Ok(()),
    }
}

/// Parameters of a whole list on `input`, or the refusal of [`infer`] (which bounds each
/// layer's count, so the sum cannot overflow).
pub fn param_count(input: Shape, layers: &[Layer], classes: usize) -> Result<usize, String> {
    let shapes = infer(input, layers, classes)?;
    let mut total = 0usize;
    let mut before = input;
    for (layer, after) in layers.iter().zip(shapes) {
        total += layer.param_count(before).unwrap_or(MAX_LAYER_PARAMS);
        before = after;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenet() -> Vec<Layer> {
        vec![
            Layer::Conv2d {
                channels: 6,
                kernel: 5,
                stride: 1,
                padding: 2,
            },
            Layer::Relu,
            Layer::MaxPool2d {
                size: 2,
                stride: None,
            },
            Layer::Conv2d {
                channels: 16,
                kernel: 5,
                stride: 1,
                padding: 0,
            },
            Layer::GroupNorm { groups: 4 },
            Layer::Relu,
            Layer::AvgPool2d {
                size: 2,
                stride: None,
            },
            Layer::Flatten,
            Layer::Dense { units: 10 },
        ]
    }

    #[test]
    fn shapes_and_parameter_counts_follow_the_layers() {
        let input = input_shape(&[1, 28, 28], 784, &lenet()).expect("input");
        let shapes = infer(input, &lenet(), 10).expect("fits");
        assert_eq!(shapes[0], Shape::Image { c: 6, h: 28, w: 28 });
        assert_eq!(shapes[2], Shape::Image { c: 6, h: 14, w: 14 });
        assert_eq!(
            shapes[3],
            Shape::Image {
                c: 16,
                h: 10,
                w: 10
            }
        );
        assert_eq!(shapes[6], Shape::Image { c: 16, h: 5, w: 5 });
        assert_eq!(shapes[7], Shape::Flat(400));
        let expected = (6 * 25 + 6) + (16 * 6 * 25 + 16) + 2 * 16 + (400 * 10 + 10);
        assert_eq!(param_count(input, &lenet(), 10), Ok(expected));
    }

    #[test]
    fn text_models_embed_tokens_first() {
        let layers = [
            Layer::Embedding { vocab: 80, dim: 8 },
            Layer::LayerNorm,
            Layer::Dense { units: 16 },
            Layer::Tanh,
            Layer::Flatten,
            Layer::Dense { units: 80 },
        ];
        let input = input_shape(&[], 20, &layers).expect("tokens");
        assert_eq!(input, Shape::Tokens(20));
        let shapes = infer(input, &layers, 80).expect("fits");
        assert_eq!(shapes[2], Shape::Seq { t: 20, d: 16 });
        assert_eq!(
            param_count(input, &layers, 80),
            Ok(80 * 8 + 16 + (8 * 16 + 16) + (320 * 80 + 80))
        );
    }

    #[test]
    fn bad_lists_are_refused_with_the_layer_named() {
        let img = Shape::Image { c: 1, h: 8, w: 8 };
        let cases: Vec<(Shape, Vec<Layer>, &str)> = vec![
            (
                img,
                vec![Layer::BatchNorm],
                "layers[0] (batch_norm): batch normalisation is refused",
            ),
            (
                img,
                vec![Layer::Dense { units: 2 }],
                "add a flatten layer first",
            ),
            (
                Shape::Flat(4),
                vec![Layer::Conv2d {
                    channels: 1,
                    kernel: 3,
                    stride: 1,
                    padding: 0,
                }],
                "needs an image",
            ),
            (
                img,
                vec![Layer::Conv2d {
                    channels: 1,
                    kernel: 9,
                    stride: 1,
                    padding: 0,
                }],
                "does not fit",
            ),
            (img, vec![Layer::GroupNorm { groups: 3 }], "must divide"),
            (
                img,
                vec![Layer::Flatten, Layer::Dense { units: 3 }],
                "one logit per class, [2]",
            ),
            (
                Shape::Flat(4),
                vec![Layer::Dropout { rate: 1.0 }, Layer::Dense { units: 2 }],
                "rate must be in [0, 1)",
            ),
            (
                Shape::Flat(4),
                vec![
                    Layer::Dense { units: 2 },
                    Layer::Embedding { vocab: 3, dim: 2 },
                ],
                "must be the first layer",
            ),
            (
                Shape::Tokens(4),
                vec![
                    Layer::Embedding { vocab: 3, dim: 2 },
                    Layer::Dense { units: 2 },
                ],
                "one logit per class",
            ),
            (img, vec![], "at least one layer"),
            (Shape::Flat(2), vec![Layer::Relu], "a layer with parameters"),
            (
                Shape::Image {
                    c: 1,
                    h: 1,
                    w: 1_000_000,
                },
                vec![
                    Layer::Conv2d {
                        channels: 1 << 20,
                        kernel: 1,
                        stride: 16384,
                        padding: 0,
                    },
                    Layer::Conv2d {
                        channels: 1 << 20,
                        kernel: 4096,
                        stride: 4096,
                        padding: 4095,
                    },
                    Layer::Flatten,
                    Layer::Dense { units: 2 },
                ],
                "layers[1] (conv2d): has more than",
            ),
        ];
        for (input, layers, wanted) in cases {
            let err = infer(input, &layers, 2).expect_err("refused");
            assert!(err.contains(wanted), "{err:?} lacks {wanted:?}");
        }
        assert!(
            input_shape(&[1, 28, 27], 784, &[])
                .expect_err("size")
                .contains("784")
        );
        assert!(input_shape(&[0], 0, &[]).is_err());
    }

    #[test]
    fn layer_lists_read_from_toml() {
        #[derive(Deserialize, Serialize)]
        struct M {
            layers: Vec<Layer>,
        }
        let text = r#"
            layers = [
              { type = "conv2d", channels = 4, kernel = 3, padding = 1 },
              { type = "max_pool2d", size = 2 },
              { type = "flatten" },
              { type = "dropout", rate = 0.25 },
              { type = "dense", units = 10 },
            ]"#;
        let m: M = toml::from_str(text).expect("parses");
        assert_eq!(
            m.layers[0],
            Layer::Conv2d {
                channels: 4,
                kernel: 3,
                stride: 1,
                padding: 1
            }
        );
        let back: M = toml::from_str(&toml::to_string(&m).expect("writes")).expect("reads");
        assert_eq!(back.layers, m.layers);
        let unknown =
            toml::from_str::<M>(r#"layers = [{ type = "dense", units = 3, bias = false }]"#);
        assert!(unknown.is_err());
    }
}
