//! Helpers shared by the binary's integration tests.

#![allow(dead_code)]

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
