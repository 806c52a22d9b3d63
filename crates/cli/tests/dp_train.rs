//! Differential privacy end to end through the `confide` binary: central DP-SGD with
//! `confide train`, the budget ledger refusing and recording jobs, and record-level DP in a
//! federation.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{absolute_example_paths, confide, json_out, root};

/// The digits example with absolute data paths and text replacements.
fn digits_job(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join("examples/digits_dp.toml")).expect("read");
    text = text.replace(
        "../data/digits",
        &root().join("data/digits").display().to_string(),
    );
    for (a, b) in replace {
        assert!(text.contains(a), "example has `{a}`");
        text = text.replace(a, b);
    }
    let path = dir.join("digits.toml");
    std::fs::write(&path, text).expect("write");
    path
}

/// `confide ledger show` for the digits dataset.
fn show(ledger: &str) -> Value {
    json_out(&confide(&[
        "ledger",
        "show",
        "--ledger",
        ledger,
        "--dataset",
        "digits",
    ]))
}

#[test]
fn central_dp_sgd_on_digits_spends_at_most_its_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let job = digits_job(dir.path(), &[]);
    let out = dir.path().join("out");
    let report = json_out(&confide(&[
        "train",
        "--config",
        job.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
        "--quiet",
    ]));
    assert_eq!(report["method"], "dp-sgd");
    let eps = report["epsilon"].as_f64().expect("epsilon");
    assert!(eps <= 8.0 && eps > 7.5, "ε {eps}");
    assert_eq!(report["delta"].as_f64(), Some(1e-5));
    assert_eq!(report["accountant"], "rdp");
    assert!(report["noise_multiplier"].as_f64().expect("σ") > 0.3);
    // A loose floor: the README's 5-seed figure is measured with the release binary.
    let acc = report["test_accuracy"].as_f64().expect("accuracy");
    assert!(acc >= 0.85, "accuracy {acc}");
    assert!(out.join("model.safetensors").exists());
    assert!(out.join("report.json").exists());
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).expect("card"))
            .expect("json");
    assert_eq!(card["provenance"]["accountant"], "rdp");
}

#[test]
fn the_ledger_refuses_jobs_over_budget_and_runs_a_job_id_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let job = digits_job(dir.path(), &[("local_epochs = ", "local_epochs = 1 # ")]);
    let job = job.to_str().expect("utf8");
    let ledger = dir.path().join("ledger.redb");
    let ledger = ledger.to_str().expect("utf8");
    let train = |extra: &[&str]| {
        let out = dir.path().join("m");
        let mut args = vec![
            "train",
            "--config",
            job,
            "--quiet",
            "--ledger",
            ledger,
            "--dataset",
            "digits",
            "--out",
            out.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        confide(&args)
    };

    // No budget set: refused.
    let out = train(&[]);
    assert!(!out.status.success());
    json_out(&confide(&[
        "ledger",
        "set-budget",
        "--ledger",
        ledger,
        "--dataset",
        "digits",
        "--epsilon",
        "3",
        "--delta",
        "1e-4",
    ]));
    // ε = 8 > 3: refused with the numbers, nothing spent.
    let out = train(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("budget"), "{err}");
    let shown = show(ledger);
    assert_eq!(shown["spent"]["epsilon"].as_f64(), Some(0.0));

    // Within budget: runs, and the spend is recorded as finished.
    let report = json_out(&train(&["--target-epsilon", "2"]));
    let eps = report["epsilon"].as_f64().expect("ε");
    let shown = show(ledger);
    assert_eq!(shown["spent"]["epsilon"].as_f64(), Some(eps));
    assert_eq!(shown["entries"][0]["state"], "finished");

    // The same job id again: refused, however much budget is left.
    let out = train(&["--target-epsilon", "0.5"]);
    assert!(!out.status.success());
    let shown = show(ledger);
    assert_eq!(shown["spent"]["epsilon"].as_f64(), Some(eps));
}

#[test]
fn a_job_without_dp_is_refused_on_a_dataset_with_a_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(digits_job(dir.path(), &[])).expect("read");
    let start = text.find("[privacy]").expect("privacy");
    let end = text[start..].find("[evaluation]").expect("evaluation") + start;
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, format!("{}{}", &text[..start], &text[end..])).expect("write");
    let ledger = dir.path().join("ledger.redb");
    let ledger = ledger.to_str().expect("utf8");
    json_out(&confide(&[
        "ledger",
        "set-budget",
        "--ledger",
        ledger,
        "--dataset",
        "digits",
        "--epsilon",
        "10",
        "--delta",
        "1e-4",
    ]));
    let out = confide(&[
        "train",
        "--config",
        plain.to_str().expect("utf8"),
        "--quiet",
        "--ledger",
        ledger,
        "--dataset",
        "digits",
        "--out",
        dir.path().join("m").to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unbounded"), "{err}");
}

#[test]
fn record_level_dp_federation_reports_each_owners_epsilon() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut text =
        std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
    text = text.replace(
        "../data/breast_homo",
        &root().join("data/breast_homo").display().to_string(),
    );
    text = absolute_example_paths(&text);
    text.push_str(
        "\n[privacy]\nlevel = \"record\"\ntarget_epsilon = 3.0\ndelta = 1e-5\nclip_norm = 1.0\n",
    );
    let job = dir.path().join("job.toml");
    std::fs::write(&job, text).expect("write");
    let report_path = dir.path().join("report.json");
    let out = confide(&[
        "simulate",
        "--config",
        job.to_str().expect("utf8"),
        "--mode",
        "in-process",
        "--scheme",
        "plain",
        "--rounds",
        "10",
        "--work-dir",
        dir.path().join("run").to_str().expect("utf8"),
        "--report",
        report_path.to_str().expect("utf8"),
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("json");
    let eps = report["epsilon"].as_f64().expect("ε");
    assert!(eps <= 3.0 && eps > 2.5, "ε {eps}");
    assert_eq!(report["privacy_level"], "record");
    assert_eq!(report["clip_norm"].as_f64(), Some(1.0));
    let owners = report["privacy_by_owner"].as_object().expect("owners");
    assert_eq!(owners.len(), 2);
    for (name, claim) in owners {
        let steps = claim["steps"].as_u64().expect("steps");
        // 10 rounds × ⌈5 epochs × rows / 32⌉ steps.
        assert!(steps > 10 * 5 * 200 / 32, "{name}: {steps}");
        assert!(claim["epsilon"].as_f64().expect("ε") <= 3.0);
    }
    let acc = report["test_accuracy"].as_f64().expect("accuracy");
    assert!(acc >= 0.8, "accuracy {acc}");
}

/// breast_homo under `paillier` with a `[privacy]` section appended.
fn breast_job(dir: &Path, privacy: &str) -> PathBuf {
    let mut text =
        std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
    text = text.replace(
        "../data/breast_homo",
        &root().join("data/breast_homo").display().to_string(),
    );
    text = absolute_example_paths(&text);
    text.push_str(privacy);
    let job = dir.join("job.toml");
    std::fs::write(&job, text).expect("write");
    job
}

fn simulate_report(dir: &Path, job: &Path, rounds: &str, extra: &[&str]) -> (bool, Value, String) {
    let report_path = dir.join("report.json");
    let key = root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json");
    let mut args = vec![
        "simulate",
        "--config",
        job.to_str().expect("utf8"),
        "--mode",
        "in-process",
        "--paillier-key",
        key.to_str().expect("utf8"),
        "--rounds",
        rounds,
        "--report",
        report_path.to_str().expect("utf8"),
        "--quiet",
    ];
    let work = dir.join("run");
    args.extend_from_slice(&["--work-dir", work.to_str().expect("utf8")]);
    args.extend_from_slice(extra);
    let out = confide(&args);
    let report = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn client_level_dp_decodes_the_noisy_sum_and_accounts_it() {
    // A small fixed noise multiplier: the mechanism (clip, rotation, rounding, discrete
    // Gaussian shares, modular sum under Paillier, decoding) must still train a good model.
    let dir = tempfile::tempdir().expect("tmp");
    let job = breast_job(
        dir.path(),
        "\n[privacy]\nlevel = \"client\"\nnoise_multiplier = 0.02\ndelta = 1e-5\nclip_norm = 2.0\n",
    );
    let (ok, report, err) = simulate_report(dir.path(), &job, "20", &[]);
    assert!(ok, "{err}");
    assert_eq!(report["privacy_level"], "client");
    assert_eq!(report["accountant"], "ddg-rdp");
    let acc = report["test_accuracy"].as_f64().expect("accuracy");
    assert!(acc >= 0.9, "accuracy {acc}");
    let sigma = report["noise_multiplier"].as_f64().expect("σ");
    assert!((sigma - 0.02).abs() < 1e-9, "σ {sigma}");
    assert!(report["epsilon"].as_f64().expect("ε") > 100.0);

    // A target ε is met, and the noise is calibrated to it.
    let dir = tempfile::tempdir().expect("tmp");
    let job = breast_job(
        dir.path(),
        "\n[privacy]\nlevel = \"client\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 2.0\n",
    );
    let (ok, report, err) = simulate_report(dir.path(), &job, "20", &[]);
    assert!(ok, "{err}");
    let eps = report["epsilon"].as_f64().expect("ε");
    assert!(eps <= 8.0 && eps > 7.9, "ε {eps}");
    assert!(report["noise_multiplier"].as_f64().expect("σ") > 1.0);
}

#[test]
fn client_level_dp_is_refused_without_secure_aggregation_or_headroom() {
    let dir = tempfile::tempdir().expect("tmp");
    let job = breast_job(
        dir.path(),
        "\n[privacy]\nlevel = \"client\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 2.0\n",
    );
    let (ok, _, err) = simulate_report(dir.path(), &job, "20", &["--scheme", "plain"]);
    assert!(!ok && err.contains("secure aggregation"), "{err}");
    let dir = tempfile::tempdir().expect("tmp");
    let job = breast_job(
        dir.path(),
        "\n[privacy]\nlevel = \"client\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 2.0\nmodulus_bits = 8\n",
    );
    let (ok, _, err) = simulate_report(dir.path(), &job, "20", &[]);
    assert!(!ok && err.contains("headroom"), "{err}");
}

#[test]
fn client_level_dp_works_for_a_model_spanning_many_ciphertexts() {
    // An MLP of 1,058 parameters (2,048 after padding): the owners, the coordinator and the key
    // holder must agree on the padded length and the ring's packing.
    let dir = tempfile::tempdir().expect("tmp");
    let job = breast_job(
        dir.path(),
        "\n[privacy]\nlevel = \"client\"\nnoise_multiplier = 0.02\ndelta = 1e-5\nclip_norm = 2.0\n",
    );
    let text = std::fs::read_to_string(&job)
        .expect("read")
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [32]");
    std::fs::write(&job, text).expect("write");
    let (ok, report, err) = simulate_report(dir.path(), &job, "5", &[]);
    assert!(ok, "{err}");
    assert_eq!(report["param_count"].as_u64(), Some(1058));
    assert_eq!(report["rounds"].as_u64(), Some(5));
    let acc = report["test_accuracy"].as_f64().expect("accuracy");
    assert!(acc >= 0.85, "accuracy {acc}");
}
