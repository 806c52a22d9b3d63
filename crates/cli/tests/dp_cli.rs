//! `confide dp epsilon` and `confide dp sigma` through the binary.

use std::process::Command;

fn confide(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn dp_epsilon_matches_dp_accounting_and_sigma_inverts_it() {
    // q = 256/60000, σ = 1.1, 60 epochs (14062 steps), δ = 1e-5: dp-accounting 0.6.0 gives
    // ε = 2.5965558697943036 (crates/dp/testdata/dp_accounting_rdp.json).
    let q = (256.0f64 / 60000.0).to_string();
    let (code, out, err) = confide(&[
        "dp", "epsilon", "--q", &q, "--sigma", "1.1", "--steps", "14062", "--delta", "1e-5",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let eps = v["epsilon"].as_f64().expect("epsilon");
    assert!(
        (eps - 2.5965558697943036).abs() / 2.5965558697943036 < 1e-3,
        "{eps}"
    );
    assert_eq!(v["accountant"], "rdp");

    let (code, out, err) = confide(&[
        "dp",
        "sigma",
        "--target-epsilon",
        "2.5965558697943036",
        "--q",
        &q,
        "--steps",
        "14062",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let sigma = v["noise_multiplier"].as_f64().expect("sigma");
    assert!((sigma - 1.1).abs() < 1e-3, "{sigma}");
    assert!(v["epsilon"].as_f64().expect("eps") <= 2.5965558697943036);
}

#[test]
fn pld_accountant_matches_dp_accounting_and_is_tighter() {
    // Same setting under the PLD accountant: dp-accounting 0.6.0's PLDAccountant gives
    // ε = 2.3816860 (crates/dp/testdata/dp_accounting_pld.json).
    let q = (256.0f64 / 60000.0).to_string();
    let (code, out, err) = confide(&[
        "dp",
        "epsilon",
        "--q",
        &q,
        "--sigma",
        "1.1",
        "--steps",
        "14062",
        "--delta",
        "1e-5",
        "--accountant",
        "pld",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let eps = v["epsilon"].as_f64().expect("epsilon");
    assert!((eps - 2.381686).abs() / 2.381686 < 1e-2, "{eps}");
    assert!(eps < 2.5965558697943036);
    assert_eq!(v["accountant"], "pld");
}

#[test]
fn dp_commands_refuse_bad_parameters_clearly() {
    let (code, _, err) = confide(&[
        "dp", "epsilon", "--q", "2", "--sigma", "1", "--steps", "1", "--delta", "1e-5",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid q: 2"), "{err}");
    let (code, _, err) = confide(&[
        "dp",
        "epsilon",
        "--q",
        "0.1",
        "--sigma",
        "1",
        "--steps",
        "1",
        "--delta",
        "1e-5",
        "--accountant",
        "moments",
    ]);
    assert_eq!(code, 2, "clap rejects an accountant that does not exist");
    assert!(err.contains("rdp") && err.contains("pld"), "{err}");
    let (code, _, err) = confide(&[
        "dp",
        "sigma",
        "--target-epsilon",
        "0",
        "--q",
        "0.1",
        "--steps",
        "10",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("target epsilon"), "{err}");
}
