//! The operations behind the Python package, checked without Python (the package's own
//! tests, `python/tests`, run them through the wheel and against the `confide` command).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn demo_owner() -> Identity {
    load_identity(&repo("examples/keys/model-owner.key"), None).expect("the demo key")
}

#[test]
fn a_signed_job_is_reviewed_rule_by_rule_with_the_nodes_cost() {
    let spec = load_job(&repo("examples/breast_homo_dp.toml")).expect("job");
    let signed = sign_job(&spec, &demo_owner(), Vec::new()).expect("signed");
    let policy = repo("examples/policies/breast_homo_dp_guest.toml");

    // Without a dataset size, the record-level cost is unknown: the target ε is checked.
    let r = review(&signed, &policy, None).expect("review");
    assert_eq!(r["decision"]["allowed"], json!(true), "{r}");
    assert_eq!(r["decision"]["rule"], json!("breast-homo DP study"));
    assert!(r["cost"].is_null());
    assert_eq!(r["checked_epsilon"], json!(2.0));
    assert!(r["note"].as_str().is_some_and(|n| n.contains("records=N")));

    // With one, the node's accountant calibrates σ for it and reports ε ≤ the target.
    let r = review(&signed, &policy, Some(300)).expect("review");
    let eps = r["cost"]["epsilon"].as_f64().expect("ε");
    assert!(eps > 1.5 && eps <= 2.0 + 1e-9, "{r}");
    assert_eq!(r["cost"]["level"], json!("record"));
    assert_eq!(r["rules"][0]["allows"], json!(true));

    // Another model owner: every rule says why not, and the decision refuses.
    let other = generate_identity(false).expect("id").0;
    let theirs = sign_job(&spec, &other, Vec::new()).expect("signed");
    let r = review(&theirs, &policy, Some(300)).expect("review");
    assert_eq!(r["decision"]["allowed"], json!(false));
    let why = r["rules"][0]["why"].as_str().expect("why");
    assert!(why.contains(&other.id()), "{why}");
}

#[test]
fn a_tampered_manifest_is_refused_before_review() {
    let spec = load_job(&repo("examples/breast_homo_dp.toml")).expect("job");
    let signed = sign_job(&spec, &demo_owner(), Vec::new()).expect("signed");
    let mut tampered = signed.clone();
    tampered.manifest.job_id.push('x');
    let e = review(
        &tampered,
        &repo("examples/policies/breast_homo_dp_guest.toml"),
        None,
    )
    .expect_err("tampered");
    assert_eq!(e.kind, Kind::Manifest, "{e}");
}

#[test]
fn released_models_read_back_by_name_and_shape() {
    let spec = confide_ml::ModelSpec::preset(confide_ml::ModelKind::Mlp, 3, vec![4], 2);
    let params = spec.initial_vector(5);
    let card = ModelCard::new(
        &spec,
        vec!["a".into(), "b".into(), "c".into()],
        None,
        HashMap::new(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    confide_ml::export::export_model(dir.path(), "model", &params, &card).expect("export");
    let m = load_model(dir.path()).expect("load");
    let shapes: Vec<_> = m
        .tensors
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.clone()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("layers.0.weight", vec![3, 4]),
            ("layers.0.bias", vec![4]),
            ("layers.1.weight", vec![4, 2]),
            ("layers.1.bias", vec![2]),
        ]
    );
    let flat: Vec<f32> = m.tensors.iter().flat_map(|(_, _, v)| v.clone()).collect();
    assert_eq!(flat, params);

    // Weights that do not fit the card are refused.
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").expect("write");
    assert_eq!(load_model(dir.path()).expect_err("bad").kind, Kind::Model);
}

#[test]
fn partitioners_and_accountants_refuse_bad_names_and_parameters() {
    assert_eq!(
        partitioner("zipf", None, None, None)
            .expect_err("name")
            .kind,
        Kind::Usage
    );
    assert_eq!(
        partitioner("dirichlet", None, None, None)
            .expect_err("α")
            .kind,
        Kind::Usage
    );
    let how = partitioner("dirichlet", Some(-1.0), None, None).expect("parsed");
    let e = partition(&[0, 1, 0, 1], None, 2, &how, 1).expect_err("α < 0");
    assert_eq!(e.kind, Kind::Partition);
    let parts = partition(&[0, 1, 0, 1, 1, 0], None, 3, &Partitioner::Iid, 7).expect("iid");
    assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 6);
    assert_eq!(
        epsilon(0.01, 1.0, 100, 1e-5, "gdp").expect_err("acc").kind,
        Kind::Usage
    );
    assert_eq!(
        epsilon(0.01, -1.0, 100, 1e-5, "rdp").expect_err("σ").kind,
        Kind::Accounting
    );
    let s = sigma(2.0, 0.01, 1000, 1e-5, "pld").expect("σ");
    assert!(epsilon(0.01, s, 1000, 1e-5, "pld").expect("ε") <= 2.0 + 1e-9);
}
