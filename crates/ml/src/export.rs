//! Export of a released model: the weights as safetensors, with a small JSON sidecar that
//! describes the architecture and preprocessing, so that other tools (PyTorch, NumPy, burn)
//! can load it without Confide.
//!
//! Tensor names are `layers.{i}.weight` (shape `[d_in, d_out]`, `y = x·W + b`) and
//! `layers.{i}.bias` (shape `[d_out]`), all `F32` little-endian. For a layer list, `i` is the
//! layer's position in the list and the shapes are each layer's own (see [`crate::stack`]);
//! the card's `spec.layers` and `spec.input_shape` rebuild the architecture.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::model::{ModelError, ModelKind, ModelSpec};
use crate::standardize::Standardizer;

/// The JSON sidecar written next to the safetensors file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Always `confide-model/v1`.
    pub format: String,
    /// Architecture.
    pub spec: ModelSpec,
    /// Activation between hidden layers.
    pub hidden_activation: String,
    /// How the output is read: `sigmoid` (one logit) or `softmax`.
    pub output: String,
    /// Weight layout convention.
    pub weight_layout: String,
    /// Feature names in input order.
    pub feature_names: Vec<String>,
    /// Standardisation applied to inputs before the first layer, if any.
    pub standardization: Option<Standardizer>,
    /// Tensor names in parameter-vector order.
    pub tensors: Vec<String>,
    /// Free-form provenance (job id, rounds, scheme).
    pub provenance: HashMap<String, String>,
}

/// Export errors.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The parameters do not fit the architecture.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing or reading failed.
    #[error("{path}: {message}")]
    Io {
        /// File path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The safetensors file is malformed or does not match its card.
    #[error("invalid model file: {0}")]
    Format(String),
}

fn tensor_names(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    if spec.kind == ModelKind::Layers {
        return crate::stack::Plan::new(spec).map_or_else(|_| Vec::new(), |p| p.tensor_names());
    }
    let mut out = Vec::new();
    for (i, (d_in, d_out)) in spec.layer_dims().into_iter().enumerate() {
        out.push((format!("layers.{i}.weight"), vec![d_in, d_out]));
        out.push((format!("layers.{i}.bias"), vec![d_out]));
    }
    out
}

/// Every tensor's name and shape in Confide's layout, in parameter order, and whether
/// PyTorch stores it transposed (a dense layer's weight: Confide keeps `[d_in, d_out]`,
/// `torch.nn.Linear` `[out, in]`).
pub fn tensor_layout(spec: &ModelSpec) -> Vec<(String, Vec<usize>, bool)> {
    tensor_names(spec)
        .into_iter()
        .map(|(name, shape)| {
            let dense = match name.split('.').collect::<Vec<_>>().as_slice() {
                ["layers", i, "weight"] => match spec.kind {
                    ModelKind::Layers => i
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| spec.layers.get(i))
                        .is_some_and(|l| matches!(l, confide_core::Layer::Dense { .. })),
                    _ => true,
                },
                _ => false,
            };
            (name, shape, dense)
        })
        .collect()
}

/// Serialises parameters to safetensors bytes.
pub fn to_safetensors(spec: &ModelSpec, params: &[f32]) -> Result<Vec<u8>, ExportError> {
    if params.len() != spec.param_count() {
        return Err(ModelError::ShapeMismatch {
            expected: spec.param_count(),
            found: params.len(),
        }
        .into());
    }
    let bytes: Vec<u8> = params.iter().flat_map(|p| p.to_le_bytes()).collect();
    let mut offset = 0;
    let mut views = Vec::new();
    for (name, shape) in tensor_names(spec) {
        let len = shape.iter().product::<usize>() * 4;
        let view = TensorView::new(Dtype::F32, shape, &bytes[offset..offset + len])
            .map_err(|e| ExportError::Format(e.to_string()))?;
        offset += len;
        views.push((name, view));
    }
    let meta = HashMap::from([("format".to_string(), "confide-model/v1".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| ExportError::Format(e.to_string()))
}

/// Reads parameters back from safetensors bytes, checking names, shapes and dtypes.
pub fn from_safetensors(spec: &ModelSpec, bytes: &[u8]) -> Result<Vec<f32>, ExportError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ExportError::Format(e.to_string()))?;
    let mut params = Vec::with_capacity(spec.param_count());
    let expected = tensor_names(spec);
    if st.len() != expected.len() {
        return Err(ExportError::Format(format!(
            "{} tensors, the architecture has {}",
            st.len(),
            expected.len()
        )));
    }
    for (name, shape) in expected {
        let view = st
            .tensor(&name)
            .map_err(|e| ExportError::Format(format!("{name}: {e}")))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
            return Err(ExportError::Format(format!(
                "{name}: expected F32 {shape:?}, found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        params.extend(
            view.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok(params)
}

/// Writes `<stem>.safetensors` and `<stem>.json` into `dir`; returns both paths.
pub fn export_model(
    dir: &Path,
    stem: &str,
    params: &[f32],
    card: &ModelCard,
) -> Result<(std::path::PathBuf, std::path::PathBuf), ExportError> {
    let io = |path: &Path, e: std::io::Error| ExportError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let bytes = to_safetensors(&card.spec, params)?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let weights = dir.join(format!("{stem}.safetensors"));
    let sidecar = dir.join(format!("{stem}.json"));
    std::fs::write(&weights, bytes).map_err(|e| io(&weights, e))?;
    let json =
        serde_json::to_string_pretty(card).map_err(|e| ExportError::Format(e.to_string()))?;
    std::fs::write(&sidecar, json).map_err(|e| io(&sidecar, e))?;
    Ok((weights, sidecar))
}

impl ModelCard {
    /// A card for `spec` with the conventions of this module.
    pub fn new(
        spec: &ModelSpec,
        feature_names: Vec<String>,
        standardization: Option<Standardizer>,
        provenance: HashMap<String, String>,
    ) -> Self {
        let layers = spec.kind == ModelKind::Layers;
        Self {
            format: "confide-model/v1".into(),
            spec: spec.clone(),
            hidden_activation: if layers { "as listed in spec.layers" } else { "relu" }.into(),
            output: if spec.outputs() == 1 {
                "sigmoid"
            } else {
                "softmax"
            }
            .into(),
            weight_layout: if layers {
                "dense [d_in, d_out] (y = x W + b); conv2d [out, in, k, k] (PyTorch's); group_norm and layer_norm: weight = scale, bias = shift; embedding [vocab, dim]; layers.{i} is the i-th entry of spec.layers"
            } else {
                "[d_in, d_out], y = x W + b"
            }
            .into(),
            feature_names,
            standardization,
            tensors: tensor_names(spec).into_iter().map(|(n, _)| n).collect(),
            provenance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelKind;

    #[test]
    fn safetensors_round_trip_and_sidecar() {
        let spec = ModelSpec::preset(ModelKind::Mlp, 3, vec![4], 2);
        let params = spec.initial_vector(11);
        let dir = tempfile::tempdir().expect("tempdir");
        let card = ModelCard::new(
            &spec,
            vec!["a".into(), "b".into(), "c".into()],
            None,
            HashMap::new(),
        );
        let (w, j) = export_model(dir.path(), "model", &params, &card).expect("export");
        let bytes = std::fs::read(w).expect("read");
        assert_eq!(from_safetensors(&spec, &bytes).expect("load"), params);
        let back: ModelCard =
            serde_json::from_slice(&std::fs::read(j).expect("read")).expect("json");
        assert_eq!(back, card);
        assert_eq!(
            back.tensors,
            vec![
                "layers.0.weight",
                "layers.0.bias",
                "layers.1.weight",
                "layers.1.bias"
            ]
        );
    }

    #[test]
    fn loading_with_the_wrong_architecture_fails_cleanly() {
        let spec = ModelSpec::preset(ModelKind::Logistic, 3, vec![], 2);
        let bytes = to_safetensors(&spec, &spec.initial_vector(0)).expect("export");
        let other = ModelSpec {
            input_dim: 4,
            ..spec
        };
        assert!(from_safetensors(&other, &bytes).is_err());
        assert!(from_safetensors(&other, &bytes[..10]).is_err());
    }
}
