//! ONNX import against graphs exported by PyTorch (`tests/onnx/*.onnx`, made by
//! `tests/onnx/make_fixtures.py`; versions in `versions.json`): each supported pattern becomes
//! the expected layer list, and Confide's forward pass on the imported weights gives the
//! probabilities PyTorch computed for the same records; unsupported graphs are refused by
//! operator and node.
#![cfg(feature = "onnx")]

use std::path::PathBuf;

use confide_core::layers::Layer;
use confide_ml::onnx::{Imported, OnnxError, import, import_file};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/onnx")
        .join(name)
}

/// Imports `name`.onnx and checks Confide's probabilities against PyTorch's.
fn imported_and_checked(name: &str) -> Imported {
    let m = import_file(&fixture(&format!("{name}.onnx"))).expect("import");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{name}.json"))).expect("json"),
    )
    .expect("parse");
    let flat = |v: &serde_json::Value| -> Vec<f32> {
        fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                serde_json::Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
                _ => panic!("not a number: {v}"),
            }
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        out
    };
    let spec = m.model_spec();
    let ours = confide_ml::model::predict_proba(&spec, &m.params, &flat(&expected["input"]))
        .expect("forward");
    let theirs = flat(&expected["probabilities"]);
    assert_eq!(ours.len(), theirs.len(), "{name}");
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{name}: largest difference {worst}");
    m
}

#[test]
fn nn_linear_exported_as_gemm_becomes_dense_layers() {
    let m = imported_and_checked("mlp_gemm");
    assert_eq!(m.input, [6]);
    assert_eq!(
        m.layers,
        [
            Layer::Dense { units: 8 },
            Layer::Relu,
            Layer::Dense { units: 3 }
        ]
    );
    assert_eq!(m.params.len(), 6 * 8 + 8 + 8 * 3 + 3);
    assert_eq!(m.dropped.len(), 1, "the final softmax: {:?}", m.dropped);
}

#[test]
fn a_matmul_then_add_becomes_a_dense_layer() {
    let m = imported_and_checked("mlp_matmul");
    assert_eq!(
        m.layers,
        [
            Layer::Dense { units: 8 },
            Layer::Tanh,
            Layer::Dense { units: 3 }
        ]
    );
}

#[test]
fn a_cnn_with_group_norm_pools_and_a_global_pool() {
    let m = imported_and_checked("cnn");
    assert_eq!(m.input, [1, 8, 8]);
    assert!(m.layers.contains(&Layer::GroupNorm { groups: 2 }));
    assert!(m.layers.iter().any(|l| matches!(
        l,
        Layer::Conv2d {
            padding: 1,
            kernel: 3,
            ..
        }
    )));
    // The global average pool of a 2x2 image: a 2x2 average pool.
    assert!(m.layers.contains(&Layer::AvgPool2d {
        size: 2,
        stride: None
    }));
    assert_eq!(m.classes, 10);
}

#[test]
fn the_same_cnn_through_the_dynamo_exporter() {
    let legacy = imported_and_checked("cnn");
    let dynamo = imported_and_checked("cnn_dynamo");
    assert_eq!(legacy.layers, dynamo.layers);
}

#[test]
fn a_layer_norm_decomposed_by_an_old_opset() {
    let m = imported_and_checked("layernorm_opset14");
    assert_eq!(
        m.layers,
        [
            Layer::Dense { units: 8 },
            Layer::LayerNorm,
            Layer::Relu,
            Layer::Dense { units: 3 }
        ]
    );
}

#[test]
fn layer_norm_and_gelu_as_single_nodes() {
    let m = imported_and_checked("layernorm");
    assert!(m.layers.contains(&Layer::LayerNorm));
    assert!(m.layers.contains(&Layer::Gelu));
}

#[test]
fn dropout_from_a_training_mode_export_keeps_its_rate() {
    let m = imported_and_checked("dropout");
    assert!(
        m.layers.contains(&Layer::Dropout { rate: 0.25 }),
        "{:?}",
        m.layers
    );
}

#[test]
fn gemm_with_transb_0_and_with_default_attributes() {
    // Both stay Gemm in onnx-ir (it turns only a fully specified transB = 1 into Linear).
    for name in ["gemm_plain", "gemm_defaults"] {
        let m = imported_and_checked(name);
        assert_eq!(m.layers, [Layer::Dense { units: 3 }], "{name}");
    }
}

#[test]
fn an_embedding_from_a_gather_on_the_input() {
    let m = imported_and_checked("embedding");
    assert_eq!(m.input, [5]);
    assert_eq!(m.layers[0], Layer::Embedding { vocab: 12, dim: 4 });
}

#[test]
fn unsupported_graphs_are_refused_by_operator_and_node() {
    let op_of = |name: &str| match import_file(&fixture(&format!("{name}.onnx"))) {
        Err(OnnxError::Unsupported { op, node, hint }) => (op, node, hint),
        other => panic!("{name}: {other:?}"),
    };
    let (op, node, _) = op_of("softplus");
    assert_eq!(op, "Softplus");
    assert!(!node.is_empty());
    let (op, _, hint) = op_of("batchnorm");
    assert_eq!(op, "BatchNormalization");
    assert!(hint.contains("group_norm"), "{hint}");
    assert!(matches!(
        import(b"not an onnx file"),
        Err(OnnxError::Parse(_))
    ));
}

#[test]
fn graphs_that_are_not_a_chain_or_pad_implicitly_are_refused() {
    // Two heads on one body: the parameter count alone would not tell.
    match import_file(&fixture("two_heads.onnx")) {
        Err(OnnxError::Graph(why)) | Err(OnnxError::Pattern { why, .. }) => {
            assert!(why.contains("one output") || why.contains("chain"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // auto_pad = SAME_UPPER pads implicitly: a 3x3 window of stride 2 on 8x8 gives 4x4.
    match import_file(&fixture("pool_same.onnx")) {
        Err(OnnxError::Pattern { op, why, .. }) => {
            assert_eq!(op, "MaxPool2d");
            assert!(why.contains("auto_pad"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}
