//! Governance through the `confide` binary: identities, signed manifests and approvals,
//! policies enforced by every node (allow, deny, revocation during a running job), CA
//! revocation, and the audit log the example leaves behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{absolute_example_paths, confide, json_out, root};

/// The breast_homo example copied into `dir` with absolute paths and text replacements.
fn example(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let mut text =
        std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
    for (a, b) in replace {
        assert!(text.contains(a), "example has `{a}`");
        text = text.replace(a, b);
    }
    text = absolute_example_paths(&text);
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("write");
    path
}

/// Runs `confide simulate` (quiet, test Paillier key) and returns (exit code, report).
fn simulate(config: &Path, work: &Path, extra: &[&str]) -> (i32, Value) {
    let report = work.join("report-out.json");
    let key = root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json");
    let mut args: Vec<String> = [
        "simulate",
        "--config",
        &config.display().to_string(),
        "--work-dir",
        &work.join("run").display().to_string(),
        "--report",
        &report.display().to_string(),
        "--paillier-key",
        &key.display().to_string(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(&args)
        .output()
        .expect("run");
    let json = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    assert!(
        json != Value::Null,
        "no report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), json)
}

fn kinds(log: &Path) -> Value {
    json_out(&confide(&[
        "audit",
        "verify",
        "--log",
        &log.display().to_string(),
    ]))["kinds"]
        .clone()
}

#[test]
fn the_example_signs_approves_by_policy_and_leaves_a_verifiable_audit_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = example(dir.path(), &[]);
    let (code, r) = simulate(&cfg, dir.path(), &["--rounds", "3", "--mode", "in-process"]);
    assert_eq!(code, 0, "{r}");
    // Both nodes approved automatically through their policy rule: no co-signatures needed.
    assert_eq!(r["manifest"]["approvals"], serde_json::json!([]));
    assert_eq!(
        r["manifest"]["model_owner"],
        "b547bdb0e95a80974d0ccd4b00544743"
    );
    let audit = &r["audit"];
    // registration ×2, approval ×2, job start, 3 rounds, job end, a contribution record per
    // owner ×2, model release.
    assert_eq!(audit["entries"], 12, "{audit}");
    assert_eq!(audit["tree_head"]["size"], 12);
    assert_eq!(audit["witnesses"], 2, "both owners cosigned the final head");
    let log = PathBuf::from(audit["log_file"].as_str().expect("log file"));
    let key = audit["log_public_key"].as_str().expect("key").to_string();
    let v = json_out(&confide(&[
        "audit",
        "verify",
        "--log",
        &log.display().to_string(),
        "--log-key",
        &key,
    ]));
    assert_eq!(v["entries"], 12);
    assert_eq!(v["pinned"], true);
    assert_eq!(v["root"], audit["tree_head"]["root"]);
    // Requiring the witnesses that cosigned passes; requiring another party fails.
    let w0 = audit["cosignatures"][0]["witness"]
        .as_str()
        .expect("witness");
    let log_arg = log.display().to_string();
    json_out(&confide(&[
        "audit",
        "verify",
        "--log",
        &log_arg,
        "--witness",
        w0,
    ]));
    let absent = confide(&[
        "audit",
        "verify",
        "--log",
        &log_arg,
        "--witness",
        "00000000000000000000000000000000",
    ]);
    assert!(!absent.status.success());
    assert_eq!(v["kinds"]["approval"], 2);
    for e in std::fs::read_to_string(&log)
        .expect("log")
        .split("\"basis\":")
        .skip(1)
    {
        assert!(e.starts_with("\"policy rule `breast-homo study`\""), "{e}");
    }

    // Any changed byte makes it fail (exhaustively tested in confide-governance; here the
    // command's exit code on a sample of positions).
    let bytes = std::fs::read(&log).expect("read");
    for pos in [
        0,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 2,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x01;
        let p = dir.path().join(format!("bad-{pos}.json"));
        std::fs::write(&p, &bad).expect("write");
        let out = confide(&["audit", "verify", "--log", &p.display().to_string()]);
        assert!(
            !out.status.success(),
            "a change at byte {pos} went undetected"
        );
    }

    // Inclusion proofs check offline, against the pinned log key.
    let proof = dir.path().join("proof.json");
    json_out(&confide(&[
        "audit",
        "prove",
        "--log",
        &log.display().to_string(),
        "4",
        "--out",
        &proof.display().to_string(),
    ]));
    let c = json_out(&confide(&[
        "audit",
        "check-proof",
        "--proof",
        &proof.display().to_string(),
        "--log-key",
        &key,
    ]));
    assert_eq!(
        (c["index"].as_u64(), c["tree_size"].as_u64()),
        (Some(4), Some(12))
    );
    let mut p: Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).expect("read")).expect("json");
    p["entry"]["actor"] = Value::from("someone else");
    std::fs::write(&proof, p.to_string()).expect("write");
    assert!(
        !confide(&[
            "audit",
            "check-proof",
            "--proof",
            &proof.display().to_string()
        ])
        .status
        .success()
    );

    // The live store verifies against its signed head too, and exports the same file.
    let store = dir.path().join("run/audit.redb");
    let again = dir.path().join("again.json");
    json_out(&confide(&[
        "audit",
        "export",
        "--store",
        &store.display().to_string(),
        "--log-key",
        &key,
        "--out",
        &again.display().to_string(),
    ]));
    assert_eq!(std::fs::read(&again).expect("read"), bytes);
}

#[test]
fn a_revocation_during_a_running_job_stops_it_at_the_next_round() {
    let dir = tempfile::tempdir().expect("tmp");
    // A third owner without a policy file: the simulation co-signs the manifest for it.
    let cfg = example(dir.path(), &[]);
    let mut text = std::fs::read_to_string(&cfg).expect("read");
    text.push_str(&format!(
        "\n[[parties]]\nname = \"third\"\ndata = \"{}\"\n",
        root()
            .join("data/breast_homo/breast_homo_host.csv")
            .display()
    ));
    std::fs::write(&cfg, text).expect("write");
    let (code, r) = simulate(
        &cfg,
        dir.path(),
        &["--rounds", "8", "--revoke-after", "guest:2"],
    );
    assert_eq!(code, 0, "{r}");
    let history = r["history"].as_array().expect("history");
    assert_eq!(history.len(), 8);
    // Revoked once round 2 was seen: guest may still have been in round 3 (already under
    // way), never later.
    for h in &history[3..] {
        assert_eq!(
            h["contributors"],
            serde_json::json!(["host", "third"]),
            "{h}"
        );
    }
    assert_eq!(r["manifest"]["approvals"].as_array().map(Vec::len), Some(1));
    assert!(
        r["events"]
            .to_string()
            .contains("revoked: job `breast-homo` is revoked"),
        "{}",
        r["events"]
    );
    let log = PathBuf::from(r["audit"]["log_file"].as_str().expect("log"));
    assert_eq!(kinds(&log)["revocation"], 1);
    // Only host and third witnessed the final head.
    assert_eq!(r["audit"]["witnesses"], 2);
    contribution_records_match(&r, &log, dir.path());
}

/// Each owner's signed contribution record says what the job did: the rounds its update was
/// summed in (from the report's history), its declared rows, and it verifies offline through
/// an inclusion proof of its entry.
fn contribution_records_match(r: &Value, log: &Path, dir: &Path) {
    let out = confide(&[
        "contributions",
        "breast-homo",
        "--log",
        log.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listing["pinned"], false, "no --log-key given");
    let records = listing["records"].as_array().expect("records");
    let history = r["history"].as_array().expect("history");
    let mut owners = Vec::new();
    for rec in records {
        let record = &rec["signed"]["record"];
        let owner = record["owner"].as_str().expect("owner");
        owners.push(owner.to_string());
        let summed: Vec<u64> = history
            .iter()
            .filter(|h| {
                h["contributors"]
                    .as_array()
                    .expect("list")
                    .iter()
                    .any(|c| c == owner)
            })
            .map(|h| h["round"].as_u64().expect("round"))
            .collect();
        assert_eq!(record["rounds"], serde_json::json!(summed), "{owner}");
        assert_eq!(record["rounds_run"], history.len(), "{owner}");
        // guest revoked once round 2 was seen: in rounds 1 and 2, perhaps 3, never later.
        if owner == "guest" {
            assert!(summed.len() == 2 || summed == [1, 2, 3], "{summed:?}");
            assert_eq!(summed[..2], [1, 2]);
        } else {
            assert_eq!(summed, (1..=8).collect::<Vec<u64>>(), "{owner}");
        }
        // guest's and host's policies declare rows (guest has its own data file; host's
        // file has one row more); third has no policy, so it declares nothing.
        match owner {
            "third" => {
                assert_eq!(record["rows"], Value::Null);
                assert_eq!(record["rows_basis"], "unknown");
            }
            _ => {
                let rows = if owner == "guest" { 227 } else { 228 };
                assert_eq!(record["rows"], rows, "{owner}: the rows its node declared");
                assert_eq!(record["rows_basis"], "declared");
            }
        }
        // Offline: the entry's inclusion proof under the log's signed head.
        let entry = rec["entry"].as_u64().expect("entry").to_string();
        let proof = dir.join(format!("{owner}-proof.json"));
        let proved = confide(&[
            "audit",
            "prove",
            "--log",
            log.to_str().expect("utf-8"),
            &entry,
            "--out",
            proof.to_str().expect("utf-8"),
        ]);
        assert!(
            proved.status.success(),
            "{}",
            String::from_utf8_lossy(&proved.stderr)
        );
        let checked = json_out(&confide(&[
            "audit",
            "check-proof",
            "--proof",
            proof.to_str().expect("utf-8"),
        ]));
        assert_eq!(checked["valid"], true);
        assert_eq!(
            checked["entry"]["detail"], rec["signed"],
            "{owner}: the proof is of its record"
        );
    }
    owners.sort();
    assert_eq!(
        owners,
        ["guest", "host", "third"],
        "one record per owner that approved"
    );
    // The table names every owner.
    let table = confide(&[
        "contributions",
        "breast-homo",
        "--log",
        log.to_str().expect("utf-8"),
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    for o in ["guest", "host", "third"] {
        assert!(text.contains(o), "{text}");
    }
}

#[test]
fn a_job_the_policy_does_not_allow_is_refused_with_an_audit_entry() {
    let dir = tempfile::tempdir().expect("tmp");
    // guest's policy allows only plain; the job is paillier.
    let policy = dir.path().join("guest.toml");
    let original = std::fs::read_to_string(root().join("examples/policies/breast_homo_guest.toml"))
        .expect("read");
    let text: String = original
        .lines()
        .map(|l| {
            if l.starts_with("schemes = ") {
                "schemes = [\"plain\"]\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(text, original, "the policy lists its schemes");
    std::fs::write(&policy, text).expect("write");
    let cfg = example(
        dir.path(),
        &[(
            "\"policies/breast_homo_guest.toml\"",
            &format!("\"{}\"", policy.display()),
        )],
    );
    let cfg_text = std::fs::read_to_string(&cfg).expect("read");
    assert!(cfg_text.contains(&policy.display().to_string()));
    let (code, r) = simulate(&cfg, dir.path(), &["--rounds", "2", "--mode", "in-process"]);
    assert_eq!(code, 2, "{r}");
    assert!(
        r["message"]
            .as_str()
            .expect("message")
            .contains("approved the job and stayed"),
        "{r}"
    );
    assert!(
        r["events"]
            .to_string()
            .contains("scheme `paillier` is not allowed"),
        "{}",
        r["events"]
    );
    let log = PathBuf::from(r["audit"]["log_file"].as_str().expect("log"));
    let k = kinds(&log);
    assert_eq!(
        (k["refusal"].as_u64(), k["approval"].as_u64()),
        (Some(1), Some(1)),
        "{k}"
    );
}

#[test]
fn keys_manifests_and_approvals_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = |n: &str| dir.path().join(n).display().to_string();
    let owner = json_out(&confide(&["keygen", "--out", &d("owner.key")]));
    let node = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "keygen",
            "--out",
            &d("node.key"),
            "--passphrase-env",
            "NODE_PASS",
        ])
        .env("NODE_PASS", "tr0ub4dor")
        .output()
        .expect("run");
    let node = json_out(&node);
    assert_eq!(node["encrypted"], true);
    let cfg = example(dir.path(), &[]);
    let signed = json_out(&confide(&[
        "job",
        "sign",
        "--config",
        &cfg.display().to_string(),
        "--key",
        &d("owner.key"),
        "--out",
        &d("job.manifest.json"),
    ]));
    assert_eq!(signed["model_owner"], owner["id"]);
    let v = json_out(&confide(&[
        "job",
        "verify",
        "--manifest",
        &d("job.manifest.json"),
        "--config",
        &cfg.display().to_string(),
    ]));
    assert_eq!(v["approvals"], serde_json::json!([]));

    // Approving needs the passphrase of the encrypted key.
    let no_pass = confide(&[
        "job",
        "approve",
        "--manifest",
        &d("job.manifest.json"),
        "--key",
        &d("node.key"),
    ]);
    assert!(!no_pass.status.success());
    assert!(String::from_utf8_lossy(&no_pass.stderr).contains("encrypted"));
    let approved = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "job",
            "approve",
            "--manifest",
            &d("job.manifest.json"),
            "--key",
            &d("node.key"),
            "--passphrase-env",
            "NODE_PASS",
        ])
        .env("NODE_PASS", "tr0ub4dor")
        .output()
        .expect("run");
    assert_eq!(
        json_out(&approved)["approvals"],
        serde_json::json!([node["id"]])
    );

    // The example policy names the demo model owner, not this one.
    let p = json_out(&confide(&[
        "job",
        "verify",
        "--manifest",
        &d("job.manifest.json"),
        "--policy",
        &root()
            .join("examples/policies/breast_homo_guest.toml")
            .display()
            .to_string(),
    ]));
    assert_eq!(p["policy"]["allowed"], false, "{p}");

    // A manifest changed after approval is refused.
    let text = std::fs::read_to_string(d("job.manifest.json")).expect("read");
    let changed = text.replace("\"rounds\": 80", "\"rounds\": 81");
    assert_ne!(changed, text);
    std::fs::write(d("job.manifest.json"), changed).expect("write");
    let out = confide(&["job", "verify", "--manifest", &d("job.manifest.json")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed after it was signed"));

    // A policy error names its line and field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[dataset]\nname = \"x\"\nexpires = 2030-01-01\nlifetime_epsilon = 1.0\n",
    )
    .expect("write");
    let out = confide(&["policy", "check", "--policy", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4: `dataset.lifetime_delta`"),
        "{err}"
    );
}

#[test]
fn a_party_revoked_by_the_ca_cannot_take_part() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    let f = fed.display().to_string();
    assert!(confide(&["ca", "init", "--dir", &f]).status.success());
    let key = dir.path().join("guest.key");
    let id = json_out(&confide(&["keygen", "--out", &key.display().to_string()]));
    let issued = confide(&[
        "ca",
        "issue",
        "--dir",
        &f,
        "--name",
        "guest",
        "--role",
        "node",
        "--public-key",
        &format!("{}.pub", key.display()),
    ]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    std::fs::copy(&key, fed.join("guest.key")).expect("copy");
    // keygen made the TLS key beside the identity key; the party keeps both.
    std::fs::copy(dir.path().join("guest.tls.key"), fed.join("guest.tls.key")).expect("copy");
    let revoked = confide(&[
        "ca",
        "revoke",
        "--dir",
        &f,
        "--name",
        "guest",
        "--reason",
        "laptop stolen",
    ]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(String::from_utf8_lossy(&revoked.stdout).contains(id["id"].as_str().expect("id")));
    // The node refuses to start with a revoked identity.
    let out = confide(&[
        "node",
        "--fed",
        &f,
        "--name",
        "guest",
        "--coordinator",
        "127.0.0.1:9",
        "--data",
        "x.csv",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("laptop stolen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
