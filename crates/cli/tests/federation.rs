//! End-to-end federations through the `confide` binary: separate processes on loopback, the
//! in-process mode, scheme equivalence, and the bad-input rules for data and disconnects.

mod common;

use std::path::{Path, PathBuf};

use common::root;
use serde_json::Value;

/// Runs `confide simulate --quiet` and returns (exit code, report, stderr).
fn simulate(config: &Path, work: &Path, extra: &[&str]) -> (i32, Value, String) {
    let args: Vec<&str> = ["--quiet"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let s = common::simulate(config, work, &args);
    (s.code, s.report, s.stderr)
}

/// Writes a copy of the example with text replacements and absolute data paths.
fn config_with(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let mut text =
        std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
    let data = root().join("data/breast_homo");
    text = text.replace("../data/breast_homo", &data.display().to_string());
    let examples = root().join("examples");
    text = text.replace(
        "\"policies/",
        &format!("\"{}/policies/", examples.display()),
    );
    text = text.replace("\"keys/", &format!("\"{}/keys/", examples.display()));
    for (a, b) in replace {
        assert!(text.contains(a), "example has `{a}`");
        text = text.replace(a, b);
    }
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("write");
    path
}

const THIRD_OWNER: &str = "\n[[parties]]\nname = \"third\"\ndata = \"THIRD\"\n";

/// A config with a third owner whose CSV is `csv`.
fn three_owners(dir: &Path, csv: &str, min_owners: usize, extra: &[(&str, &str)]) -> PathBuf {
    let third = dir.join("third.csv");
    std::fs::write(&third, csv).expect("write");
    let path = config_with(dir, extra);
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str(&THIRD_OWNER.replace("THIRD", &third.display().to_string()));
    text = text.replace("min_owners = 2", &format!("min_owners = {min_owners}"));
    std::fs::write(&path, text).expect("write");
    path
}

/// The first `n` data rows of guest's file, with its header.
fn guest_rows(n: usize) -> String {
    let text = std::fs::read_to_string(root().join("data/breast_homo/breast_homo_guest.csv"))
        .expect("read");
    text.lines().take(n + 1).map(|l| format!("{l}\n")).collect()
}

#[test]
fn processes_paillier_breast_homo_reaches_target_accuracy() {
    let dir = tempfile::tempdir().expect("tmp");
    let (code, r, err) = simulate(
        &root().join("examples/breast_homo.toml"),
        dir.path(),
        &["--mode", "processes"],
    );
    assert_eq!(code, 0, "{err}\n{r}");
    assert_eq!(r["status"], "finished");
    assert_eq!(r["scheme"], "paillier");
    assert_eq!(r["mode"], "processes");
    assert_eq!(r["parties"], serde_json::json!(["guest", "host"]));
    assert_eq!(r["lost_owners"], serde_json::json!([]), "no owner lost");
    assert_eq!(r["rounds"], 80);
    assert_eq!(r["history"].as_array().expect("history").len(), 80);
    assert!(r["wall_seconds"].as_f64().expect("wall") > 0.0);
    let acc = r["test_accuracy"].as_f64().expect("accuracy");
    let correct = r["test_correct"].as_u64().expect("correct");
    assert_eq!(r["test_rows"], 114);
    assert!(
        correct >= 110,
        "breast_homo target is >= 110/114 correct, got {correct} ({acc})"
    );
    assert!(r["test_auc"].as_f64().expect("auc") > 0.98);
    for h in r["history"].as_array().expect("history") {
        assert_eq!(h["contributors"], serde_json::json!(["guest", "host"]));
    }
    // The released model is a loadable safetensors file with its card.
    let weights =
        std::fs::read(r["model"]["safetensors"].as_str().expect("path")).expect("weights");
    assert!(weights.len() > 31 * 4);
    let card: Value = serde_json::from_str(
        &std::fs::read_to_string(r["model"]["card"].as_str().expect("card")).expect("read"),
    )
    .expect("json");
    assert_eq!(card["format"], "confide-model/v1");
    assert_eq!(
        card["tensors"],
        serde_json::json!(["layers.0.weight", "layers.0.bias"])
    );
}

#[test]
fn paillier_and_plain_train_the_same_model() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = root().join("examples/breast_homo.toml");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let (c1, plain, e1) = simulate(
        &cfg,
        &a,
        &["--mode", "in-process", "--scheme", "plain", "--rounds", "5"],
    );
    let (c2, paillier, e2) = simulate(
        &cfg,
        &b,
        &[
            "--mode",
            "in-process",
            "--scheme",
            "paillier",
            "--rounds",
            "5",
        ],
    );
    assert_eq!((c1, c2), (0, 0), "{e1}\n{e2}");
    // Both schemes sum the same fixed-point integers exactly, so the models are identical; both
    // differ from an unencoded float average only by the fixed-point rounding (2^-24 per owner).
    let wa = std::fs::read(plain["model"]["safetensors"].as_str().expect("p")).expect("read");
    let wb = std::fs::read(paillier["model"]["safetensors"].as_str().expect("p")).expect("read");
    assert_eq!(wa, wb, "plain and paillier models differ");
    assert_eq!(plain["test_accuracy"], paillier["test_accuracy"]);
    assert_eq!(plain["history"].as_array().map(Vec::len), Some(5));
}

#[test]
fn every_scheme_trains_the_same_model_as_plain() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config_with(dir.path(), &[]);
    let mut out = Vec::new();
    // lattice, shares and threshold run as separate processes (coordinator, the key holder or
    // two or seven aggregators, two nodes); under threshold one aggregator crashes at round 3
    // and another returns wrong partial sums throughout. masking runs as processes in
    // `masking_survives_an_owner_that_crashes_between_stages`, paillier in
    // `processes_paillier_breast_homo_reaches_target_accuracy`.
    let faults = [
        "--faulty-aggregator",
        "aggregator-2:crash@3",
        "--faulty-aggregator",
        "aggregator-5:lie",
    ];
    for (scheme, mode, extra) in [
        ("plain", "in-process", &[][..]),
        ("masking", "in-process", &[][..]),
        ("lattice", "processes", &[][..]),
        ("shares", "processes", &[][..]),
        ("threshold", "processes", &faults[..]),
    ] {
        let mut args = vec!["--mode", mode, "--scheme", scheme, "--rounds", "5"];
        args.extend(extra);
        let (code, r, err) = simulate(&cfg, &dir.path().join(scheme), &args);
        assert_eq!(code, 0, "{scheme}: {err}\n{r}");
        assert_eq!(r["scheme"], scheme);
        out.push(r);
    }
    // All sum the same fixed-point integers exactly (masks cancel mod 2^64; BFV decrypts the
    // exact sum modulo t, which holds every possible sum; Prio3 and Shamir shares reconstruct
    // the exact sum in their fields), so the models are identical.
    let read =
        |r: &Value| std::fs::read(r["model"]["safetensors"].as_str().expect("p")).expect("read");
    for (i, name) in [
        (1, "masking"),
        (2, "lattice"),
        (3, "shares"),
        (4, "threshold"),
    ] {
        assert_eq!(read(&out[0]), read(&out[i]), "plain and {name} differ");
    }
    assert!(out[2]["keyholder_key"].is_string(), "{}", out[2]);
    // The lattice key holder generated its key, so it ran attested (dev TEE) and each node
    // checked its evidence before encrypting.
    assert!(out[2]["keyholder_attestation"].is_string(), "{}", out[2]);
    for node in ["guest", "host"] {
        let log = std::fs::read_to_string(
            dir.path()
                .join("lattice")
                .join("run")
                .join("logs")
                .join(format!("node-{node}.log")),
        )
        .expect("node log");
        assert!(log.contains("the key holder is attested"), "{node}: {log}");
    }
    // The liar is named in every round, the crashed aggregator from round 3 on.
    let events: Vec<&str> = out[4]["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for round in 1..=5 {
        assert!(
            events.iter().any(|e| e.starts_with(&format!(
                "round {round}: faulty aggregator: aggregator-5: its partial sum is off"
            ))),
            "{events:?}"
        );
        assert_eq!(
            events.iter().any(|e| e.starts_with(&format!(
                "round {round}: faulty aggregator: aggregator-2: did not answer"
            ))),
            round >= 3,
            "{events:?}"
        );
    }
}

#[test]
fn masking_survives_an_owner_that_crashes_between_stages() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = three_owners(
        dir.path(),
        &guest_rows(100),
        2,
        &[
            ("rounds = 80", "rounds = 4"),
            ("scheme = \"paillier\"", "scheme = \"masking\""),
            ("round_timeout_secs = 60.0", "round_timeout_secs = 4.0"),
        ],
    );
    // `third` shares its keys in round 2 (stage 1), then disappears: the others' pairwise masks
    // with it are removed with its key, rebuilt from their shares.
    let (code, r, err) = simulate(
        &cfg,
        dir.path(),
        &["--mode", "processes", "--crash", "third:2.1"],
    );
    assert_eq!(code, 0, "{err}\n{r}");
    let h = r["history"].as_array().expect("history");
    assert_eq!(h.len(), 4);
    assert_eq!(
        h[0]["contributors"],
        serde_json::json!(["guest", "host", "third"])
    );
    assert_eq!(h[1]["contributors"], serde_json::json!(["guest", "host"]));
    assert_eq!(h[1]["excluded"], serde_json::json!(["third"]));
    assert!(r["test_accuracy"].as_f64().expect("accuracy") > 0.9, "{r}");
}

#[test]
fn malformed_csv_row_withdraws_that_owner_and_the_round_proceeds() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut bad = guest_rows(20);
    bad.push_str("999,1,0.1,oops\n");
    let cfg = three_owners(dir.path(), &bad, 2, &[("rounds = 80", "rounds = 3")]);
    let (code, r, err) = simulate(&cfg, dir.path(), &["--mode", "in-process"]);
    assert_eq!(code, 0, "{err}\n{r}");
    for h in r["history"].as_array().expect("history") {
        assert_eq!(h["contributors"], serde_json::json!(["guest", "host"]));
    }
    let events = r["events"].to_string();
    assert!(
        events.contains("`third` withdrew") && events.contains("DATA-003 line 22"),
        "{events}"
    );
}

#[test]
fn malformed_csv_below_min_owners_fails_the_job_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut bad = guest_rows(5);
    bad.push_str("1,0,1,2\n");
    let cfg = three_owners(dir.path(), &bad, 3, &[("rounds = 80", "rounds = 3")]);
    let (code, r, err) = simulate(&cfg, dir.path(), &["--mode", "in-process"]);
    assert_eq!(code, 2, "{err}\n{r}");
    assert_eq!(r["status"], "failed");
    assert_eq!(r["rounds"], 0);
    let msg = r["message"].as_str().expect("message");
    // Only two owners stay: the job does not start a round it cannot complete.
    assert!(
        msg.contains("only 2 of 3 owners approved the job and stayed")
            && msg.contains("the job needs 3"),
        "{msg}"
    );
}

#[test]
fn wrong_feature_count_is_refused_by_the_schema_check() {
    let dir = tempfile::tempdir().expect("tmp");
    // Drop the last column of every line: 29 features instead of 30.
    let short: String = guest_rows(10)
        .lines()
        .map(|l| format!("{}\n", &l[..l.rfind(',').expect("comma")]))
        .collect();
    let cfg = three_owners(dir.path(), &short, 2, &[("rounds = 80", "rounds = 2")]);
    let (code, r, err) = simulate(&cfg, dir.path(), &["--mode", "in-process"]);
    assert_eq!(code, 0, "{err}\n{r}");
    let events = r["events"].to_string();
    assert!(
        events.contains("expects 30 feature columns, the file has 29"),
        "{events}"
    );
}

#[test]
fn a_node_that_disconnects_mid_job_is_excluded_and_the_job_continues() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = three_owners(
        dir.path(),
        &guest_rows(100),
        2,
        &[
            ("rounds = 80", "rounds = 4"),
            ("round_timeout_secs = 60.0", "round_timeout_secs = 4.0"),
        ],
    );
    let (code, r, err) = simulate(
        &cfg,
        dir.path(),
        &["--mode", "processes", "--crash", "third:2"],
    );
    assert_eq!(code, 0, "{err}\n{r}");
    let h = r["history"].as_array().expect("history");
    assert_eq!(h.len(), 4);
    assert_eq!(
        h[1]["contributors"],
        serde_json::json!(["guest", "host", "third"])
    );
    assert_eq!(h[2]["contributors"], serde_json::json!(["guest", "host"]));
    assert_eq!(h[2]["excluded"], serde_json::json!(["third"]));
    // The run says it lost an owner, and which.
    let lost = r["lost_owners"].as_array().expect("lost owners");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["owner"], "third");
}

#[test]
fn a_disconnect_below_min_owners_fails_the_round_and_keeps_the_last_model() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config_with(
        dir.path(),
        &[
            ("rounds = 80", "rounds = 4"),
            ("round_timeout_secs = 60.0", "round_timeout_secs = 4.0"),
        ],
    );
    let (code, r, err) = simulate(
        &cfg,
        dir.path(),
        &["--mode", "processes", "--crash", "host:1"],
    );
    assert_eq!(code, 2, "{err}\n{r}");
    assert_eq!(r["status"], "failed");
    assert_eq!(r["rounds"], 1, "round 1 completed before the crash");
    let msg = r["message"].as_str().expect("message");
    assert!(msg.contains("round 2 failed"), "{msg}");
    // Only the crashed owner is lost: guest stayed to the failed job's end (exit code 2).
    let lost = r["lost_owners"].as_array().expect("lost owners");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["owner"], "host");
    // The released model is round 1's.
    assert!(r["test_accuracy"].as_f64().is_some());
}

#[test]
fn bad_job_files_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config_with(dir.path(), &[("min_owners = 2", "min_owners = 5")]);
    let (code, _, err) = simulate(&cfg, dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("job.min_owners"), "{err}");
    let cfg = config_with(dir.path(), &[("breast_homo_host.csv", "missing.csv")]);
    let (code, _, err) = simulate(&cfg, dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("party `host`") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn a_large_model_crosses_the_default_grpc_message_limit() {
    // 30 → 40000 → 2 MLP: 1,320,002 parameters. Each round task carries 5.3 MB of parameters
    // and each `plain` update 10.6 MB, above tonic's 4 MiB default; the raised limits carry them.
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config_with(
        dir.path(),
        &[
            ("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [40000]"),
            ("rounds = 80", "rounds = 1"),
            ("local_epochs = 5", "local_epochs = 1"),
        ],
    );
    let (code, r, err) = simulate(
        &cfg,
        dir.path(),
        &["--mode", "in-process", "--scheme", "plain"],
    );
    assert_eq!(code, 0, "{err}\n{r}");
    assert_eq!(r["param_count"], 1_320_002);
    assert_eq!(
        r["history"][0]["contributors"],
        serde_json::json!(["guest", "host"])
    );
}
