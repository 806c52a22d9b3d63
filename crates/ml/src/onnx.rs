//! ONNX graphs as layer lists (feature `onnx`; `confide model import`): a model defined in
//! PyTorch and exported to ONNX becomes a [`Layer`] list with its initial weights in
//! Confide's parameter layout. The graph is data, never code: only the operators below are
//! recognised, each checked against what the layer it becomes computes, and anything else is
//! refused by operator and node. Training then uses Confide's own DP-SGD, so record-level ε
//! is enforced and ledgered as for any layer list.
//!
//! The parser is onnx-ir (burn's ONNX front end), which already rewrites two exporter
//! patterns into one linear node: `Gemm` with `transB = 1` (PyTorch's `nn.Linear`, weight
//! `[out, in]`) and `MatMul` by a constant followed by `Add` of a constant (weight
//! `[in, out]`). Both become [`Layer::Dense`], transposed to Confide's `[in, out]` where
//! needed. Recognised operators: Gemm/MatMul(+Add), Conv (2-D, square kernel, one group,
//! symmetric padding), MaxPool and AveragePool (2-D, square, no padding), GlobalAveragePool,
//! Relu, Tanh, Sigmoid, Gelu (the erf form), Flatten and Reshape to `[batch, -1]`,
//! LayerNormalization over the last axis and GroupNormalization (ε = 1e-5, PyTorch's
//! default, as Confide computes them), Gather on a constant table as the first node
//! (an embedding), Dropout (kept with its rate), Identity, and a final Softmax or
//! LogSoftmax (dropped: the loss decides). Batch normalisation is refused, as in every
//! layer list.

use std::path::Path;

use confide_core::layers::{Layer, Shape};
use onnx_ir::ir::{ArgType, Argument, Node};
use onnx_ir::{OnnxGraphBuilder, TensorDataExt};

/// The ε of Confide's layer and group normalisation (and PyTorch's default).
const NORM_EPSILON: f64 = 1e-5;

/// A graph turned into a layer list.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// One record's shape: `[features]`, `[channels, height, width]`, or `[steps]` token ids.
    pub input: Vec<usize>,
    /// The layers, ending in one logit per class.
    pub layers: Vec<Layer>,
    /// Classes (the last layer's width).
    pub classes: usize,
    /// The graph's weights in Confide's parameter order and layout.
    pub params: Vec<f32>,
    /// Nodes that computed nothing Confide keeps (a final softmax), by operator and name.
    pub dropped: Vec<String>,
}

impl Imported {
    /// The layer list as a model (for the weights' safetensors and a forward pass).
    pub fn model_spec(&self) -> crate::ModelSpec {
        crate::ModelSpec {
            kind: crate::ModelKind::Layers,
            input_dim: self.input.iter().product(),
            hidden: Vec::new(),
            classes: self.classes,
            input_shape: self.input.clone(),
            layers: self.layers.clone(),
        }
    }
}

/// Why a graph cannot be imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnnxError {
    /// The file is not a readable ONNX model.
    #[error("not a readable ONNX model: {0}")]
    Parse(String),
    /// An operator Confide does not import.
    #[error("unsupported ONNX operator `{op}` (node `{node}`){hint}")]
    Unsupported {
        /// The operator.
        op: String,
        /// The node's name in the graph.
        node: String,
        /// What to do instead, when there is something.
        hint: String,
    },
    /// A supported operator used in a way its layer cannot compute.
    #[error("node `{node}` ({op}): {why}")]
    Pattern {
        /// The operator.
        op: String,
        /// The node's name.
        node: String,
        /// What does not fit.
        why: String,
    },
    /// The graph as a whole does not fit a layer list.
    #[error("{0}")]
    Graph(String),
}

/// Reads and imports an ONNX file.
///
/// # Errors
/// See [`OnnxError`].
pub fn import_file(path: &Path) -> Result<Imported, OnnxError> {
    let bytes = std::fs::read(path)
        .map_err(|e| OnnxError::Parse(format!("cannot read {}: {e}", path.display())))?;
    import(&bytes)
}

/// Imports an ONNX model from its bytes.
///
/// # Errors
/// See [`OnnxError`].
pub fn import(bytes: &[u8]) -> Result<Imported, OnnxError> {
    let graph = OnnxGraphBuilder::new()
        .parse_bytes(bytes)
        .map_err(|e| OnnxError::Parse(e.to_string()))?;
    if graph.inputs.len() != 1 {
        return Err(OnnxError::Graph(format!(
            "the graph has {} inputs; a layer list reads one",
            graph.inputs.len()
        )));
    }
    let input = record_shape(&graph.inputs[0])?;
    let features = input.iter().product();
    let first_is_gather = graph
        .nodes
        .iter()
        .find(|n| !matches!(n, Node::Constant(_)))
        .is_some_and(|n| matches!(n, Node::Gather(_)));
    let start = confide_core::layers::record_shape(&input, features, first_is_gather)
        .map_err(OnnxError::Graph)?;
    let batch = match &graph.inputs[0].ty {
        ArgType::Tensor(t) => t
            .static_shape
            .as_ref()
            .and_then(|d| d.first().copied().flatten()),
        _ => None,
    };
    let mut b = Builder {
        input: start,
        batch,
        current: graph.inputs[0].name.clone(),
        layers: Vec::new(),
        params: Vec::new(),
        dropped: Vec::new(),
    };
    let nodes: Vec<&Node> = graph
        .nodes
        .iter()
        .filter(|n| !matches!(n, Node::Constant(_)))
        .collect();
    let mut i = 0;
    while i < nodes.len() {
        // PyTorch's exporters write some layers as several nodes: recognise those first.
        if let Some(used) = b.decomposed_group_norm(&nodes[i..])? {
            i += used;
            continue;
        }
        if let Some(used) = b.decomposed_layer_norm(&nodes[i..])? {
            i += used;
            continue;
        }
        // A layer list is a chain: each node reads the previous one's output, and nothing
        // else that is computed.
        b.reads(nodes[i], &[b.current.clone()])?;
        b.node(nodes[i], i == 0, i + 1 == nodes.len())?;
        b.current = output_of(nodes[i])?;
        i += 1;
    }
    if graph.outputs.len() != 1 || graph.outputs[0].name != b.current {
        return Err(OnnxError::Graph(format!(
            "the graph must have one output, the last node's; it has {} ({})",
            graph.outputs.len(),
            graph
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let classes = match b.layers.last() {
        Some(Layer::Dense { units }) => *units,
        _ => {
            return Err(OnnxError::Graph(
                "the graph must end in a linear layer (one logit per class), before any softmax"
                    .into(),
            ));
        }
    };
    // The list must be one Confide accepts, with exactly these parameters.
    let shape =
        confide_core::layers::input_shape(&input, features, &b.layers).map_err(OnnxError::Graph)?;
    let count =
        confide_core::layers::param_count(shape, &b.layers, classes).map_err(OnnxError::Graph)?;
    if count != b.params.len() {
        return Err(OnnxError::Graph(format!(
            "the graph's weights have {} numbers, its layers {count}",
            b.params.len()
        )));
    }
    Ok(Imported {
        input,
        layers: b.layers,
        classes,
        params: b.params,
        dropped: b.dropped,
    })
}

/// The shape of one record: the graph input's static shape without its batch axis.
fn record_shape(input: &Argument) -> Result<Vec<usize>, OnnxError> {
    let ArgType::Tensor(t) = &input.ty else {
        return Err(OnnxError::Graph(format!(
            "the graph's input `{}` is not a tensor",
            input.name
        )));
    };
    let dims = t.static_shape.as_ref().ok_or_else(|| {
        OnnxError::Graph(format!(
            "the graph's input `{}` has no static shape (export with a fixed record shape)",
            input.name
        ))
    })?;
    let rest: Option<Vec<usize>> = dims.iter().skip(1).copied().collect();
    match rest {
        Some(r) if !r.is_empty() && dims.len() >= 2 => Ok(r),
        _ => Err(OnnxError::Graph(format!(
            "the graph's input `{}` must be [batch, …] with every other axis fixed, not {dims:?}",
            input.name
        ))),
    }
}

/// A pooling node's window, from its config (max and average pools name the fields alike).
macro_rules! window_of {
    ($c:expr) => {
        Window {
            kernel: $c.kernel_size,
            strides: $c.strides,
            padding: &$c.padding,
            auto_pad: &$c.auto_pad,
            dilation: $c.dilation,
            ceil_mode: $c.ceil_mode,
        }
    };
}

/// A pooling node's window.
struct Window<'a> {
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: &'a onnx_ir::node::padding::PaddingConfig2d,
    auto_pad: &'a onnx_ir::node::padding::AutoPad,
    dilation: [usize; 2],
    ceil_mode: bool,
}

impl Window<'_> {
    /// Square, equal strides, no padding, no dilation, no ceil mode: the window size and the
    /// stride when it differs from the size.
    fn check(
        &self,
        pattern: &dyn Fn(&str) -> OnnxError,
    ) -> Result<(usize, Option<usize>), OnnxError> {
        let [k, k2] = self.kernel;
        let [s, s2] = self.strides;
        if k != k2 || s != s2 {
            return Err(pattern("only square windows with equal strides"));
        }
        let no_pad = matches!(
            self.padding,
            onnx_ir::node::padding::PaddingConfig2d::Valid
                | onnx_ir::node::padding::PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
        let explicit = matches!(
            self.auto_pad,
            onnx_ir::node::padding::AutoPad::NotSet | onnx_ir::node::padding::AutoPad::Valid
        );
        if !no_pad || !explicit || self.dilation != [1, 1] || self.ceil_mode {
            return Err(pattern(
                "only without padding (auto_pad included), dilation or ceil mode",
            ));
        }
        Ok((k, (s != k).then_some(s)))
    }
}

struct Builder {
    /// One record's shape.
    input: Shape,
    /// The graph input's batch size, when it was exported fixed.
    batch: Option<usize>,
    /// The tensor the next node must read: the previous node's output.
    current: String,
    layers: Vec<Layer>,
    params: Vec<f32>,
    dropped: Vec<String>,
}

/// The f32 values and shape of a constant input, or why it is not one.
fn weights(
    node: &Node,
    arg: Option<&Argument>,
    what: &str,
) -> Result<(Vec<f32>, Vec<usize>), OnnxError> {
    let pattern = |why: String| OnnxError::Pattern {
        op: node.node_type().to_string(),
        node: node.name().to_string(),
        why,
    };
    let arg = arg.ok_or_else(|| pattern(format!("no {what}")))?;
    let data = arg
        .value()
        .ok_or_else(|| pattern(format!("its {what} is computed, not a constant")))?;
    let shape = data.shape().as_slice().to_vec();
    let values = data
        .to_f32_vec()
        .map_err(|e| pattern(format!("its {what} is not numeric: {e:?}")))?;
    Ok((values, shape))
}

/// The static shape of a node's input or output `arg`, without the batch axis.
fn static_dims(arg: &Argument) -> Option<Vec<usize>> {
    match &arg.ty {
        ArgType::Tensor(t) => t
            .static_shape
            .as_ref()
            .and_then(|d| d.iter().skip(1).copied().collect()),
        _ => None,
    }
}

/// The names of a node's computed (not constant) inputs, in order.
fn dynamic_inputs(node: &Node) -> Vec<&str> {
    node.inputs()
        .iter()
        .filter(|a| !a.name.is_empty() && a.value().is_none())
        .map(|a| a.name.as_str())
        .collect()
}

/// A node's one output (a Dropout's unused mask aside).
fn output_of(node: &Node) -> Result<String, OnnxError> {
    let outputs = node.outputs();
    match outputs.first() {
        Some(o) if outputs.len() == 1 || matches!(node, Node::Dropout(_)) => Ok(o.name.clone()),
        _ => Err(OnnxError::Pattern {
            op: node.node_type().to_string(),
            node: node.name().to_string(),
            why: format!("{} outputs; a layer has one", outputs.len()),
        }),
    }
}

/// The constant operand of a binary node, when its shape is `want` after leading 1s (so that
/// it broadcasts as the layer's scale or shift does: `[C, 1, 1]` per channel of an image,
/// `[D]` per feature).
fn broadcast_constant(
    node: &Node,
    inputs: &[Argument],
    want: &[usize],
) -> Result<Vec<f32>, OnnxError> {
    let constant = inputs.iter().find(|a| a.value().is_some());
    let (values, shape) = weights(node, constant, "constant operand")?;
    let trimmed: Vec<usize> = shape.iter().copied().skip_while(|&d| d == 1).collect();
    let want_trimmed: Vec<usize> = want.iter().copied().skip_while(|&d| d == 1).collect();
    if trimmed != want_trimmed {
        return Err(OnnxError::Pattern {
            op: node.node_type().to_string(),
            node: node.name().to_string(),
            why: format!("a constant of shape {shape:?}, where {want:?} was expected"),
        });
    }
    Ok(values)
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

impl Builder {
    /// The shape the layers so far give.
    fn shape(&self) -> Result<Shape, OnnxError> {
        confide_core::layers::output_shape(self.input, &self.layers).map_err(OnnxError::Graph)
    }

    /// Checks that `node` computes on exactly `names` (a chain, not a graph with branches).
    fn reads(&self, node: &Node, names: &[String]) -> Result<(), OnnxError> {
        let got = dynamic_inputs(node);
        if got.len() != names.len() || got.iter().zip(names).any(|(a, b)| *a != b.as_str()) {
            return Err(OnnxError::Pattern {
                op: node.node_type().to_string(),
                node: node.name().to_string(),
                why: format!(
                    "reads {got:?}, not the previous layer's output {names:?}: only a chain of layers is imported"
                ),
            });
        }
        Ok(())
    }

    /// The width a dense or normalisation layer reads here.
    fn width(&self, pattern: &dyn Fn(&str) -> OnnxError) -> Result<usize, OnnxError> {
        match self.shape()? {
            Shape::Flat(d) | Shape::Seq { d, .. } => Ok(d),
            other => Err(pattern(&format!(
                "needs a vector (or each step of a sequence), not {other}: flatten first"
            ))),
        }
    }

    fn node(&mut self, node: &Node, first: bool, last: bool) -> Result<(), OnnxError> {
        let op = node.node_type().to_string();
        let name = node.name().to_string();
        let pattern = |why: &str| OnnxError::Pattern {
            op: op.clone(),
            node: name.clone(),
            why: why.to_string(),
        };
        match node {
            Node::Linear(n) => {
                let (w, shape) = weights(node, n.inputs.get(1), "weight")?;
                let [a, b] = shape[..] else {
                    return Err(pattern("the weight is not a matrix"));
                };
                // `transpose_weight`: PyTorch's [out, in] (from Gemm with transB = 1).
                let (d_in, units, w) = if n.config.transpose_weight {
                    (b, a, transpose(&w, a, b))
                } else {
                    (a, b, w)
                };
                let bias = match n
                    .inputs
                    .get(2)
                    .filter(|a| a.value().is_some() || !a.name.is_empty())
                {
                    Some(arg) => weights(node, Some(arg), "bias")?.0,
                    None => vec![0.0; units],
                };
                if bias.len() != units || d_in != self.width(&pattern)? {
                    return Err(pattern("the weight or bias does not fit its input"));
                }
                self.layers.push(Layer::Dense { units });
                self.params.extend(w);
                self.params.extend(bias);
            }
            Node::Gemm(n) => {
                let c = &n.config;
                if c.alpha != 1.0 || c.beta != 1.0 || c.trans_a != 0 {
                    return Err(pattern(&format!(
                        "only x·Wᵀ + b or x·W + b (alpha = beta = 1, transA = 0), not alpha = {}, beta = {}, transA = {}",
                        c.alpha, c.beta, c.trans_a
                    )));
                }
                let (w, shape) = weights(node, n.inputs.get(1), "weight")?;
                let [a, b] = shape[..] else {
                    return Err(pattern("the weight is not a matrix"));
                };
                let (d_in, units, w) = if c.trans_b == 1 {
                    (b, a, transpose(&w, a, b))
                } else {
                    (a, b, w)
                };
                let bias = match n.inputs.get(2) {
                    Some(arg) => weights(node, Some(arg), "bias")?.0,
                    None => vec![0.0; units],
                };
                if bias.len() != units || d_in != self.width(&pattern)? {
                    return Err(pattern(
                        "the weight or bias does not fit its input (a broadcast bias is not imported)",
                    ));
                }
                self.layers.push(Layer::Dense { units });
                self.params.extend(w);
                self.params.extend(bias);
            }
            Node::Conv2d(n) => {
                let c = &n.config;
                let [k, k2] = c.kernel_size;
                let [s, s2] = c.stride;
                if k != k2 || s != s2 {
                    return Err(pattern("only square kernels with equal strides"));
                }
                if c.dilation != [1, 1] || c.groups != 1 {
                    return Err(pattern("only dilation 1 and one group"));
                }
                let padding = match (&c.auto_pad, &c.padding) {
                    (
                        onnx_ir::node::padding::AutoPad::NotSet
                        | onnx_ir::node::padding::AutoPad::Valid,
                        onnx_ir::node::padding::PaddingConfig2d::Valid,
                    ) => 0,
                    (
                        onnx_ir::node::padding::AutoPad::NotSet,
                        onnx_ir::node::padding::PaddingConfig2d::Explicit(t, l, b, r),
                    ) if t == l && l == b && b == r => *t,
                    _ => return Err(pattern("only the same zero padding on every side")),
                };
                let (w, shape) = weights(node, n.inputs.get(1), "weight")?;
                let [channels, c_in, _, _] = shape[..] else {
                    return Err(pattern("the weight is not [out, in, k, k]"));
                };
                let Shape::Image { c, .. } = self.shape()? else {
                    return Err(pattern("needs an image [channels, height, width]"));
                };
                let bias = match n.inputs.get(2) {
                    Some(arg) => weights(node, Some(arg), "bias")?.0,
                    None => vec![0.0; channels],
                };
                if c_in != c || bias.len() != channels {
                    return Err(pattern("the weight or bias does not fit its input"));
                }
                self.layers.push(Layer::Conv2d {
                    channels,
                    kernel: k,
                    stride: s,
                    padding,
                });
                // The weight is [out, in, k, k] in both ONNX and Confide.
                self.params.extend(w);
                self.params.extend(bias);
            }
            Node::MaxPool2d(n) => {
                let (size, stride) = window_of!(n.config).check(&pattern)?;
                self.layers.push(Layer::MaxPool2d { size, stride });
            }
            Node::AveragePool2d(n) => {
                let (size, stride) = window_of!(n.config).check(&pattern)?;
                self.layers.push(Layer::AvgPool2d { size, stride });
            }
            Node::GlobalAveragePool(_) => match self.shape()? {
                Shape::Image { h, w, .. } if h == w => self.layers.push(Layer::AvgPool2d {
                    size: h,
                    stride: None,
                }),
                _ => {
                    return Err(pattern(
                        "only over a square image of known size (export with a fixed input shape)",
                    ));
                }
            },
            Node::ReduceMean(n) => {
                // The dynamo exporter's global average pool: the mean over height and width.
                match (self.shape()?, &n.config.axes) {
                    (
                        Shape::Image { h, w, .. },
                        onnx_ir::node::reduce::ReduceAxes::Static(axes),
                    ) if h == w && axes[..] == [2, 3] => {
                        self.layers.push(Layer::AvgPool2d {
                            size: h,
                            stride: None,
                        });
                        if !n.config.keepdims {
                            self.flatten();
                        }
                    }
                    _ => {
                        return Err(pattern(
                            "only as a global average pool (the mean over height and width of a square image)",
                        ));
                    }
                }
            }
            Node::Relu(_) => self.layers.push(Layer::Relu),
            Node::Tanh(_) => self.layers.push(Layer::Tanh),
            Node::Sigmoid(_) => self.layers.push(Layer::Sigmoid),
            Node::Gelu(n) => {
                if n.config.approximate != onnx_ir::node::gelu::GeluApproximate::Exact {
                    return Err(pattern(
                        "only the exact (erf) GELU, not the tanh approximation",
                    ));
                }
                self.layers.push(Layer::Gelu);
            }
            Node::Dropout(n) => {
                let rate = match n.config.prob {
                    onnx_ir::node::dropout::DropoutInput::Static(p) => p,
                    onnx_ir::node::dropout::DropoutInput::Runtime(_) => {
                        return Err(pattern("its rate is computed, not a constant"));
                    }
                };
                if rate > 0.0 {
                    self.layers.push(Layer::Dropout { rate });
                }
            }
            Node::Identity(_) => {}
            Node::Flatten(n) => {
                if n.config.axis != 1 {
                    return Err(pattern(
                        "only Flatten(axis = 1), which keeps the batch axis",
                    ));
                }
                self.flatten();
            }
            Node::Reshape(n) => {
                let size = self.shape()?.size();
                let keeps_batch =
                    |b: i64| b == 0 || b == -1 || (b > 0 && self.batch == usize::try_from(b).ok());
                let flat = match &n.config.shape {
                    onnx_ir::node::reshape::ReshapeInput::Static(v) => {
                        v.len() == 2
                            && keeps_batch(v[0])
                            && (v[1] == -1 || usize::try_from(v[1]).ok() == Some(size))
                    }
                    onnx_ir::node::reshape::ReshapeInput::Runtime(_) => n
                        .outputs
                        .first()
                        .and_then(static_dims)
                        .is_some_and(|d| d == [size]),
                };
                if !flat {
                    return Err(pattern("only a reshape to [batch, -1] (a flatten)"));
                }
                self.flatten();
            }
            Node::LayerNormalization(n) => {
                let c = &n.config;
                let rank: i64 = match self.shape()? {
                    Shape::Flat(_) => 2,
                    Shape::Seq { .. } => 3,
                    _ => return Err(pattern("only over a vector or each step of a sequence")),
                };
                if c.axis != -1 && c.axis != rank - 1 {
                    return Err(pattern("only over the last axis"));
                }
                if (c.epsilon - NORM_EPSILON).abs() > 1e-12 {
                    return Err(pattern(&format!(
                        "ε = {} (Confide's is {NORM_EPSILON})",
                        c.epsilon
                    )));
                }
                let (scale, _) = weights(node, n.inputs.get(1), "scale")?;
                let shift = match n.inputs.get(2) {
                    Some(arg) => weights(node, Some(arg), "bias")?.0,
                    None => vec![0.0; scale.len()],
                };
                self.layers.push(Layer::LayerNorm);
                self.params.extend(scale);
                self.params.extend(shift);
            }
            Node::GroupNormalization(n) => {
                let c = &n.config;
                if (c.epsilon - NORM_EPSILON).abs() > 1e-12 {
                    return Err(pattern(&format!(
                        "ε = {} (Confide's is {NORM_EPSILON})",
                        c.epsilon
                    )));
                }
                let Shape::Image { c: channels, .. } = self.shape()? else {
                    return Err(pattern("only over an image"));
                };
                let (scale, _) = weights(node, n.inputs.get(1), "scale")?;
                let (shift, _) = weights(node, n.inputs.get(2), "bias")?;
                if scale.len() != channels || shift.len() != channels {
                    return Err(pattern(
                        "only a scale and shift per channel (opset 21's GroupNormalization; PyTorch's own)",
                    ));
                }
                self.layers.push(Layer::GroupNorm {
                    groups: c.num_groups,
                });
                self.params.extend(scale);
                self.params.extend(shift);
            }
            Node::Gather(n) => {
                if !first || n.config.axis != 0 {
                    return Err(pattern(
                        "only as an embedding: the first node, a table indexed by the input",
                    ));
                }
                let (table, shape) = weights(node, n.inputs.first(), "table")?;
                let [vocab, dim] = shape[..] else {
                    return Err(pattern("the table is not [vocab, dim]"));
                };
                self.layers.push(Layer::Embedding { vocab, dim });
                self.params.extend(table);
            }
            Node::Softmax(_) | Node::LogSoftmax(_) if last => {
                self.dropped
                    .push(format!("{op} `{name}` (the loss applies its own)"));
            }
            Node::BatchNormalization(_) => {
                return Err(OnnxError::Unsupported {
                    op,
                    node: name,
                    hint: ": batch normalisation mixes records, which per-record DP cannot bound; use group_norm (nn.GroupNorm)".into(),
                });
            }
            _ => {
                let hint = match op.as_str() {
                    "ReduceMean" | "Pow" | "Sqrt" | "Div" | "Sub" => {
                        ": a decomposed normalisation? export with opset_version >= 17 so that LayerNormalization stays one node"
                    }
                    "Erf" => ": a decomposed GELU? export with opset_version >= 20",
                    "Add" | "MatMul" => {
                        ": only a matrix product by a constant weight, then the addition of a constant bias"
                    }
                    _ => "",
                };
                return Err(OnnxError::Unsupported {
                    op,
                    node: name,
                    hint: hint.into(),
                });
            }
        }
        Ok(())
    }

    /// `nn.GroupNorm` as PyTorch's TorchScript exporter writes it: Reshape to
    /// `[batch, groups, -1]`, InstanceNormalization with unit scale and zero shift, Reshape
    /// back (after a Shape of the input, or to a constant shape), then Mul by the per-channel
    /// scale and Add of the shift (`[C, 1, 1]`; absent without `affine`). Returns the nodes
    /// used, or `None` when `nodes` does not start with this pattern.
    fn decomposed_group_norm(&mut self, nodes: &[&Node]) -> Result<Option<usize>, OnnxError> {
        let (Some(Node::Reshape(first)), Some(Node::InstanceNormalization(norm))) =
            (nodes.first(), nodes.get(1))
        else {
            return Ok(None);
        };
        let Shape::Image { c, .. } = self.shape()? else {
            return Ok(None);
        };
        let keeps_batch = |b: i64| b == 0 || (b > 0 && self.batch == usize::try_from(b).ok());
        let groups = match &first.config.shape {
            onnx_ir::node::reshape::ReshapeInput::Static(v)
                if v.len() == 3 && v[2] == -1 && keeps_batch(v[0]) =>
            {
                usize::try_from(v[1]).unwrap_or(0)
            }
            _ => return Ok(None),
        };
        let pattern = |why: &str| OnnxError::Pattern {
            op: "InstanceNormalization".into(),
            node: norm.name.clone(),
            why: format!("as a group normalisation: {why}"),
        };
        if groups == 0 || c % groups != 0 {
            return Err(pattern("the groups do not divide the channels"));
        }
        if (norm.config.epsilon - NORM_EPSILON).abs() > 1e-12 {
            return Err(pattern(&format!(
                "ε = {} (Confide's is {NORM_EPSILON})",
                norm.config.epsilon
            )));
        }
        let input = self.current.clone();
        self.reads(nodes[0], std::slice::from_ref(&input))?;
        self.reads(nodes[1], &[output_of(nodes[0])?])?;
        let (unit, _) = weights(nodes[1], norm.inputs.get(1), "scale")?;
        let (zero, _) = weights(nodes[1], norm.inputs.get(2), "bias")?;
        if unit.iter().any(|&v| v != 1.0) || zero.iter().any(|&v| v != 0.0) {
            return Err(pattern(
                "the per-group scale and shift must be 1 and 0 (PyTorch's)",
            ));
        }
        let mut used = 2;
        let mut back = vec![output_of(nodes[1])?];
        if let Some(shape @ Node::Shape(_)) = nodes.get(used) {
            // The shape to restore: the image's own.
            self.reads(shape, std::slice::from_ref(&input))?;
            back.push(output_of(shape)?);
            used += 1;
        }
        let Some(restore @ Node::Reshape(r)) = nodes.get(used) else {
            return Err(pattern("no reshape back to the image"));
        };
        self.reads(restore, &back)?;
        let restored = match &r.config.shape {
            onnx_ir::node::reshape::ReshapeInput::Runtime(_) => back.len() == 2,
            onnx_ir::node::reshape::ReshapeInput::Static(v) => match self.shape()? {
                Shape::Image { c, h, w } => {
                    v.len() == 4
                        && keeps_batch(v[0])
                        && v[1..]
                            .iter()
                            .zip([c, h, w])
                            .all(|(&a, b)| usize::try_from(a).ok() == Some(b))
                }
                _ => false,
            },
        };
        if !restored {
            return Err(pattern(
                "the reshape back does not restore the image's shape",
            ));
        }
        let mut current = output_of(restore)?;
        used += 1;
        // The per-channel scale, then shift (either may have been simplified away when it was
        // 1 or 0).
        let (mut scale, mut shift) = (vec![1.0; c], vec![0.0; c]);
        if let Some(mul @ Node::Mul(m)) = nodes.get(used) {
            self.reads(mul, std::slice::from_ref(&current))?;
            scale = broadcast_constant(mul, &m.inputs, &[c, 1, 1])?;
            current = output_of(mul)?;
            used += 1;
        }
        if let Some(add @ Node::Add(a)) = nodes.get(used)
            && dynamic_inputs(add) == [current.as_str()]
        {
            shift = broadcast_constant(add, &a.inputs, &[c, 1, 1])?;
            current = output_of(add)?;
            used += 1;
        }
        self.layers.push(Layer::GroupNorm { groups });
        self.params.extend(scale);
        self.params.extend(shift);
        self.current = current;
        Ok(Some(used))
    }

    /// `nn.LayerNorm` as exporters write it before opset 17: ReduceMean over the last axis,
    /// Sub, Pow by 2, ReduceMean, Add ε, Sqrt, Div, then Mul by the scale and Add of the
    /// shift. Returns the nodes used, or `None` when `nodes` does not start with it.
    fn decomposed_layer_norm(&mut self, nodes: &[&Node]) -> Result<Option<usize>, OnnxError> {
        let kinds: Vec<String> = nodes
            .iter()
            .take(7)
            .map(|n| n.node_type().to_string())
            .collect();
        let expected = [
            "ReduceMean",
            "Sub",
            "Pow",
            "ReduceMean",
            "Add",
            "Sqrt",
            "Div",
        ];
        if kinds != expected {
            return Ok(None);
        }
        let pattern = |why: &str| OnnxError::Pattern {
            op: "ReduceMean".into(),
            node: nodes[0].name().to_string(),
            why: format!("as a layer normalisation: {why}"),
        };
        let (Node::ReduceMean(mean), Node::Pow(pow), Node::ReduceMean(var), Node::Add(eps)) =
            (nodes[0], nodes[2], nodes[3], nodes[4])
        else {
            return Ok(None);
        };
        let (width, last) = match self.shape()? {
            Shape::Flat(d) => (d, 1),
            Shape::Seq { d, .. } => (d, 2),
            _ => return Err(pattern("only over a vector or each step of a sequence")),
        };
        let over_last = onnx_ir::node::reduce::ReduceAxes::Static(vec![last]);
        if mean.config.axes != over_last
            || var.config.axes != over_last
            || !mean.config.keepdims
            || !var.config.keepdims
        {
            return Err(pattern("only over the last axis"));
        }
        // The wiring: m = mean(x); d = x − m; v = mean(d²); y = d / sqrt(v + ε).
        let x = self.current.clone();
        let out = |i: usize| output_of(nodes[i]);
        self.reads(nodes[0], std::slice::from_ref(&x))?;
        self.reads(nodes[1], &[x.clone(), out(0)?])?;
        self.reads(nodes[2], &[out(1)?])?;
        self.reads(nodes[3], &[out(2)?])?;
        self.reads(nodes[4], &[out(3)?])?;
        self.reads(nodes[5], &[out(4)?])?;
        self.reads(nodes[6], &[out(1)?, out(5)?])?;
        let (two, _) = weights(nodes[2], pow.inputs.get(1), "exponent")?;
        if two != [2.0] {
            return Err(pattern("the variance must be the mean of squares"));
        }
        let epsilon = broadcast_constant(nodes[4], &eps.inputs, &[])?;
        if epsilon.len() != 1 || (f64::from(epsilon[0]) - NORM_EPSILON).abs() > 1e-9 {
            return Err(pattern(&format!(
                "ε = {epsilon:?} (Confide's is {NORM_EPSILON})"
            )));
        }
        let mut current = out(6)?;
        let mut used = 7;
        let (mut scale, mut shift) = (vec![1.0; width], vec![0.0; width]);
        if let Some(mul @ Node::Mul(m)) = nodes.get(used) {
            self.reads(mul, std::slice::from_ref(&current))?;
            scale = broadcast_constant(mul, &m.inputs, &[width])?;
            current = output_of(mul)?;
            used += 1;
        }
        if let Some(add @ Node::Add(a)) = nodes.get(used)
            && dynamic_inputs(add) == [current.as_str()]
        {
            shift = broadcast_constant(add, &a.inputs, &[width])?;
            current = output_of(add)?;
            used += 1;
        }
        self.layers.push(Layer::LayerNorm);
        self.params.extend(scale);
        self.params.extend(shift);
        self.current = current;
        Ok(Some(used))
    }

    /// A flatten; a second one in a row (an image already flat) adds nothing.
    fn flatten(&mut self) {
        if self.layers.last() != Some(&Layer::Flatten) {
            self.layers.push(Layer::Flatten);
        }
    }
}
