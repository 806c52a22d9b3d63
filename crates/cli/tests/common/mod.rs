//! Helpers shared by the binary's integration tests.

#![allow(dead_code)]

pub mod daemons;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `confide` with `args`.
pub fn confide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .output()
        .expect("run confide")
}

/// The address a role process prints at the end of its first stdout line (`confide … listening
/// on ADDR`); fails with the process's log when it did not start.
pub fn listening_address(child: &mut std::process::Child, log: &Path, what: &str) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        addr.contains(':'),
        "{what} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    addr
}

/// Runs `confide` with `args`, expecting success.
pub fn ok(args: &[&str]) {
    let out = confide(args);
    assert!(
        out.status.success(),
        "confide {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON a successful command printed.
pub fn json_out(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "confide failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// An example's data, policy and key paths made absolute, for a copy written elsewhere.
pub fn absolute_example_paths(text: &str) -> String {
    let examples = root().join("examples");
    text.replace("\"../data/", &format!("\"{}/data/", root().display()))
        .replace(
            "\"policies/",
            &format!("\"{}/policies/", examples.display()),
        )
        .replace("\"keys/", &format!("\"{}/keys/", examples.display()))
}

/// What a `confide simulate` run left: its exit code, its report (`Null` when none was
/// written), and its output.
#[derive(Debug)]
pub struct Simulated {
    pub code: i32,
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `confide simulate` on `config` in `work/run` with the test Paillier key, the report
/// in `work/out.json`, and `extra` arguments.
pub fn simulate(config: &Path, work: &Path, extra: &[&str]) -> Simulated {
    let report = work.join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .arg("simulate")
        .arg("--config")
        .arg(config)
        .arg("--work-dir")
        .arg(work.join("run"))
        .arg("--report")
        .arg(&report)
        .arg("--paillier-key")
        .arg(root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json"))
        .args(extra)
        .output()
        .expect("run confide");
    Simulated {
        code: out.status.code().unwrap_or(-1),
        report: std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}
