//! `confide trainer`, `confide upload` and `confide fetch` as separate processes over mutual
//! TLS: owners check the core's evidence, their dataset policy and their ledger before
//! uploading; a recipient checks the core's evidence of the release; the host's audit log
//! records every upload, refusal and release, and the host keeps ciphertext only.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{confide, json_out, root};
use serde_json::Value;

fn run(args: &[&str]) -> std::process::Output {
    confide(args)
}

fn issue(fed: &Path, name: &str, role: &str) {
    let out = run(&[
        "ca",
        "issue",
        "--dir",
        &fed.display().to_string(),
        "--name",
        name,
        "--role",
        role,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn party(fed: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fed.join(format!("{name}.key.pub"))).expect("pub"))
        .expect("json")
}

struct Trainer {
    child: Child,
    addr: String,
}

fn start_trainer(config: &Path, fed: &Path, work: &Path) -> Trainer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confide"))
        .arg("trainer")
        .arg("--config")
        .arg(config)
        .arg("--fed")
        .arg(fed)
        .arg("--work-dir")
        .arg(work)
        .arg("--until-released")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("trainer");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let addr = line
        .trim()
        .strip_prefix("confide trainer listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Trainer { child, addr }
}

fn link<'a>(
    config: &'a str,
    fed: &'a str,
    name: &'a str,
    addr: &'a str,
    policy: &'a str,
) -> Vec<&'a str> {
    vec![
        "--config",
        config,
        "--fed",
        fed,
        "--name",
        name,
        "--trainer",
        addr,
        "--attestation-policy",
        policy,
    ]
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into()
}

#[test]
fn owners_upload_and_a_recipient_fetches_over_the_network_with_every_check() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = tmp.path().join("fed");
    let fed_s = fed.display().to_string();
    let out = run(&["ca", "init", "--dir", &fed_s, "--federation", "test"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    issue(&fed, "coordinator", "coordinator");
    issue(&fed, "clinic-a", "node");
    issue(&fed, "clinic-b", "node");
    issue(&fed, "model-owner", "model-owner");
    issue(&fed, "eve", "model-owner");
    let config: PathBuf = root().join("examples/confidential_digits.toml");
    let config_s = config.display().to_string();
    let work = tmp.path().join("trainer");
    let mut trainer = start_trainer(&config, &fed, &work);
    let addr = trainer.addr.clone();
    let policy = work.join("attestation-policy.toml");
    let policy_s = policy.display().to_string();

    // The host's request guard: each method refuses the roles it does not serve before it
    // reads the body (NET-001), and bounds what the roles it serves may send (NET-003/004).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let call = |party: &'static str, method: &'static str, body: Vec<u8>| {
            let (fed, addr) = (fed.clone(), addr.clone());
            async move {
                let creds = confide_net::pki::Credentials::load(&fed, party).expect("creds");
                let ch = confide_net::transport::connect(&addr, "coordinator", &creds)
                    .await
                    .expect("connect");
                let wait = std::time::Duration::from_secs(10);
                confide_net::raw::call(&ch, "confide.v1.Trainer", method, body, wait)
                    .await
                    .expect_err("refused")
            }
        };
        let big = confide_net::raw::long_field(2, 8 << 20);
        for (party, method) in [
            ("model-owner", "Upload"),
            ("coordinator", "Attest"),
            ("clinic-a", "Fetch"),
            ("coordinator", "TrainerStatus"),
        ] {
            let err = call(party, method, big.clone()).await;
            assert!(
                err.message().starts_with("NET-001"),
                "{party} {method}: {err:?}"
            );
        }
        let err = call("clinic-a", "Upload", big.clone()).await;
        assert!(err.message().starts_with("NET-003"), "{err:?}");
        let err = call("clinic-a", "Attest", confide_net::raw::long_field(1, 500)).await;
        assert!(err.message().starts_with("NET-004"), "{err:?}");
    });

    // An owner whose attestation policy pins another measurement refuses the trainer.
    let text = std::fs::read_to_string(&policy).expect("policy");
    let wrong = tmp.path().join("wrong-policy.toml");
    let measurement = text
        .split("measurements = [\"")
        .nth(1)
        .and_then(|t| t.get(..64))
        .expect("measurement")
        .to_string();
    std::fs::write(&wrong, text.replace(&measurement, &"ab".repeat(32))).expect("write");
    let wrong_s = wrong.display().to_string();
    let mut args = vec!["upload"];
    args.extend(link(&config_s, &fed_s, "clinic-a", &addr, &wrong_s));
    let out = run(&args);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("refuses the trainer"),
        "{}",
        stderr_of(&out)
    );

    // An owner whose job file names one more recipient expects another configuration than
    // the one the core attests, and refuses it too.
    let widened = tmp.path().join("widened.toml");
    std::fs::write(
        &widened,
        common::absolute_example_paths(&std::fs::read_to_string(&config).expect("job")).replace(
            "recipients = [\"model-owner\"]",
            "recipients = [\"model-owner\", \"eve\"]",
        ),
    )
    .expect("write");
    let widened_s = widened.display().to_string();
    let mut args = vec!["upload"];
    args.extend(link(&widened_s, &fed_s, "clinic-a", &addr, &policy_s));
    let out = run(&args);
    assert!(
        stderr_of(&out).contains("the trainer serves configuration"),
        "{}",
        stderr_of(&out)
    );

    // A fetch before training is refused as "not trained yet"; one by a party the core was
    // not configured for is refused by the host (and logged).
    let mut args = vec!["fetch", "--wait-secs", "0", "--out"];
    let early = tmp.path().join("early").display().to_string();
    args.push(&early);
    args.extend(link(&config_s, &fed_s, "model-owner", &addr, &policy_s));
    let out = run(&args);
    assert!(
        stderr_of(&out).contains("not trained yet"),
        "{}",
        stderr_of(&out)
    );
    let mut args = vec!["fetch", "--wait-secs", "0", "--out"];
    args.push(&early);
    args.extend(link(&config_s, &fed_s, "eve", &addr, &policy_s));
    let out = run(&args);
    assert!(
        stderr_of(&out).contains("`eve` is not a model-owner of job"),
        "{}",
        stderr_of(&out)
    );

    // clinic-a uploads under a policy that allows the job, debiting its ledger.
    let model_owner = party(&fed, "model-owner")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let allow = tmp.path().join("allow.toml");
    std::fs::write(
        &allow,
        format!(
            "[dataset]\nname = \"digits-a\"\nexpires = 2099-01-01T00:00:00Z\nlifetime_epsilon = 10.0\nlifetime_delta = 1e-5\n\n[[rule]]\nname = \"confidential digits\"\nmodel_owners = [\"{model_owner}\"]\nmodes = [\"confidential\"]\nschemes = [\"confidential\"]\nmax_epsilon = 8.0\napproval = \"automatic\"\n"
        ),
    )
    .expect("policy");
    let ledger = tmp.path().join("ledger.redb").display().to_string();
    let allow_s = allow.display().to_string();
    let mut args = vec!["upload", "--policy", &allow_s, "--ledger", &ledger];
    args.extend(link(&config_s, &fed_s, "clinic-a", &addr, &policy_s));
    let up = json_out(&run(&args));
    assert_eq!(up["rows"], 719);
    assert_eq!(up["policy_rule"], "confidential digits");
    assert_eq!(up["attestation"]["insecure"], true);
    let shown = json_out(&run(&[
        "ledger",
        "show",
        "--ledger",
        &ledger,
        "--dataset",
        "digits-a",
    ]));
    let text = shown.to_string();
    assert!(
        text.contains("confidential-digits@core-") && text.contains("started"),
        "{text}"
    );
    assert_eq!(
        up["ledger_job"].as_str().map(|j| text.contains(j)),
        Some(true)
    );
    // What each party may see: clinic-a its own upload, not the other's; a stranger nothing.
    let status = |name: &str| {
        run(&[
            "trainer-status",
            "--fed",
            &fed_s,
            "--name",
            name,
            "--trainer",
            &addr,
        ])
    };
    let seen = json_out(&status("clinic-a"));
    assert_eq!(seen["phase"], "uploading");
    assert_eq!(seen["uploads"]["clinic-a"]["rows"], 719);
    assert_eq!(seen["uploads"].as_object().map(|u| u.len()), Some(1));
    assert!(seen["report"].is_null());
    let out = status("eve");
    assert!(
        stderr_of(&out).contains("is not a party of job"),
        "{}",
        stderr_of(&out)
    );
    // A second upload by the same owner is refused by the host (and logged).
    let mut args = vec!["upload"];
    args.extend(link(&config_s, &fed_s, "clinic-a", &addr, &policy_s));
    let out = run(&args);
    assert!(
        stderr_of(&out).contains("already uploaded"),
        "{}",
        stderr_of(&out)
    );

    // clinic-b's policy caps ε at 4: it does not upload, and nothing reaches the trainer.
    let strict = tmp.path().join("strict.toml");
    std::fs::write(
        &strict,
        std::fs::read_to_string(&allow)
            .expect("allow")
            .replace("max_epsilon = 8.0", "max_epsilon = 4.0")
            .replace("lifetime_epsilon = 10.0\nlifetime_delta = 1e-5\n", ""),
    )
    .expect("strict");
    let strict_s = strict.display().to_string();
    let mut args = vec!["upload", "--policy", &strict_s];
    args.extend(link(&config_s, &fed_s, "clinic-b", &addr, &policy_s));
    let out = run(&args);
    assert!(
        stderr_of(&out).contains("does not upload") && stderr_of(&out).contains("above"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        std::fs::read_dir(work.join("host/uploads"))
            .expect("uploads")
            .count(),
        1
    );

    // Without that policy clinic-b uploads; the core trains; the recipient fetches.
    let mut args = vec!["upload"];
    args.extend(link(&config_s, &fed_s, "clinic-b", &addr, &policy_s));
    json_out(&run(&args));
    // The recipient sees the report once trained, and the number of uploads, not the
    // owners' entries (polled: training runs in the background).
    let seen = (0..600)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            json_out(&status("model-owner"))
        })
        .find(|s| s["phase"] != "training")
        .expect("status");
    assert_eq!(seen["phase"], "trained", "{seen}");
    assert_eq!(seen["report"]["rows"], 1438);
    assert_eq!(seen["uploads"], 2);
    assert_eq!(seen["releases"].as_array().map(Vec::len), Some(0));
    let model_dir = tmp.path().join("model").display().to_string();
    let mut args = vec!["fetch", "--out", &model_dir];
    args.extend(link(&config_s, &fed_s, "model-owner", &addr, &policy_s));
    let got = json_out(&run(&args));
    assert_eq!(got["train_rows"], 1438);
    assert!(got["epsilon"].as_f64().expect("epsilon") <= 8.0 + 1e-9);
    // DP noise comes from the OS: a floor far below the measured 0.95.
    assert!(
        got["test_accuracy"].as_f64().expect("accuracy") > 0.85,
        "{got}"
    );
    assert!(tmp.path().join("model/model.safetensors").exists());

    // The host stops once every recipient has the model.
    let status = trainer.child.wait().expect("wait");
    assert!(status.success());

    // The audit log: signed by the host's certified key, with every access.
    let log_key = party(&fed, "coordinator")["public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let audit = json_out(&run(&[
        "audit",
        "verify",
        "--store",
        &work.join("host/audit.redb").display().to_string(),
        "--log-key",
        &log_key,
    ]));
    assert_eq!(audit["valid"], true);
    assert_eq!(audit["kinds"]["upload"], 2);
    assert_eq!(audit["kinds"]["model-release"], 1);
    assert_eq!(audit["kinds"]["refusal"], 3, "{audit}");
    assert_eq!(audit["kinds"]["round"], 1);
    assert_eq!(audit["kinds"]["job-end"], 1);

    // The host keeps ciphertext only.
    let csv = std::fs::read_to_string(root().join("data/digits/clinic_b.csv")).expect("csv");
    let row = csv.lines().nth(1).expect("row");
    for dir in ["host/store", "host/uploads", "host/releases"] {
        for entry in std::fs::read_dir(work.join(dir)).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("p0,p1") && !text.contains(row), "{dir}");
        }
    }
}
