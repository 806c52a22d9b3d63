//! Regression tests of the hardening issue that need the `confide` binary: a bad cell's
//! content never leaves the owner's machine, unallocatable models and absurd learning rates
//! are refused at validation, a diverging job says so, the CLI survives a failing stdout, and
//! the smaller defects (policy warnings, key file errors, per-round lines, policy paths).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{confide, root};
use serde_json::Value;

/// Runs `confide simulate` and returns (exit code, report, stdout, stderr).
fn simulate(config: &Path, work: &Path, extra: &[&str]) -> (i32, Value, String, String) {
    let s = common::simulate(config, work, extra);
    (s.code, s.report, s.stdout, s.stderr)
}

/// The breast_homo example with replacements, absolute paths, written to `dir/job.toml`.
fn config_with(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = common::absolute_example_paths(
        &std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example"),
    );
    for (a, b) in replace {
        assert!(text.contains(a), "example has `{a}`");
        text = text.replace(a, b);
    }
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("write");
    path
}

/// Every file below `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const MARKER: &str = "PATIENT Jane Doe DOB 1961-04-02 SSN 123-45-6789";

#[test]
fn a_bad_cells_content_and_the_local_path_never_leave_the_owners_machine() {
    let dir = tempfile::tempdir().expect("tmp");
    // A third owner whose line 22 has the marker in a feature cell.
    let guest = std::fs::read_to_string(root().join("data/breast_homo/breast_homo_guest.csv"))
        .expect("read");
    let mut lines: Vec<String> = guest.lines().take(21).map(str::to_string).collect();
    let mut cells: Vec<String> = lines[1].split(',').map(str::to_string).collect();
    cells[3] = MARKER.to_string();
    lines.push(cells.join(","));
    let third = dir.path().join("private-third-data.csv");
    std::fs::write(&third, lines.join("\n") + "\n").expect("write");
    let cfg = config_with(dir.path(), &[("rounds = 80", "rounds = 2")]);
    let mut text = std::fs::read_to_string(&cfg).expect("read");
    text.push_str(&format!(
        "\n[[parties]]\nname = \"third\"\ndata = \"{}\"\n",
        third.display()
    ));
    std::fs::write(&cfg, text).expect("write");

    let (code, r, out, err) = simulate(&cfg, dir.path(), &["--quiet"]);
    assert_eq!(code, 0, "{err}\n{r}");
    let events = r["events"].to_string();
    assert!(
        events.contains("`third` withdrew") && events.contains("DATA-004 line 22"),
        "{events}"
    );
    // The owner itself is told where and what (its own log).
    let work = dir.path().join("run");
    let own = std::fs::read(work.join("logs/node-third.log")).expect("node log");
    assert!(
        contains(&own, MARKER.as_bytes()),
        "the owner's own error shows the cell"
    );
    // Nothing else holds the cell or the local path: not the coordinator's log, its audit
    // store or export, the key holder's log, nor the report and output.
    let mut searched = 0;
    for f in files(&work)
        .into_iter()
        .chain([dir.path().join("out.json")])
        // The owner's own log, and the simulation's copy of its input (which names every
        // party's data file) stay with the owner; everything else is another party's.
        .filter(|f| !f.ends_with("logs/node-third.log") && !f.ends_with("run/job.toml"))
    {
        let bytes = std::fs::read(&f).expect("read");
        for needle in [MARKER, "1961-04-02", "private-third-data"] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "`{needle}` found in {}",
                f.display()
            );
        }
        searched += 1;
    }
    for needle in [MARKER, "private-third-data"] {
        assert!(!out.contains(needle) && !r.to_string().contains(needle));
    }
    assert!(searched >= 5, "{searched} files searched");
}

#[test]
fn models_that_cannot_be_allocated_and_absurd_learning_rates_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config_with(
        dir.path(),
        &[(
            "kind = \"logistic\"",
            "kind = \"mlp\"\nhidden = [1000000, 1000000]",
        )],
    );
    let (code, _, _, err) = simulate(&cfg, dir.path(), &["--quiet"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("model.hidden") && err.contains("parameters"),
        "{err}"
    );
    let cfg = config_with(
        dir.path(),
        &[("learning_rate = 0.1", "learning_rate = 1e300")],
    );
    let (code, _, _, err) = simulate(&cfg, dir.path(), &["--quiet"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("training.learning_rate"), "{err}");
}

#[test]
fn a_diverging_job_says_training_diverged() {
    let dir = tempfile::tempdir().expect("tmp");
    // An MLP at the largest accepted learning rate on unstandardised features overflows.
    let cfg = config_with(
        dir.path(),
        &[
            ("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [64, 64]"),
            ("learning_rate = 0.1", "learning_rate = 100.0"),
            ("rounds = 80", "rounds = 3"),
        ],
    );
    let (code, r, _, err) = simulate(
        &cfg,
        dir.path(),
        &["--quiet", "--mode", "in-process", "--scheme", "plain"],
    );
    assert_ne!(code, 0, "{err}\n{r}");
    let all = format!("{err}\n{r}");
    assert!(all.contains("TRAIN-001 training diverged"), "{all}");
    assert!(!all.contains("already trained from"), "{all}");
}

#[test]
fn the_cli_does_not_panic_when_stdout_fails() {
    let policy = root().join("examples/policies/breast_homo_guest.toml");
    let args = [
        "policy",
        "check",
        "--policy",
        policy.to_str().expect("utf-8"),
    ];
    // A full disk: a clear error and exit 1.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .stdout(full)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A closed pipe (`| head` that has read enough): quiet, exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn policy_check_warns_about_a_policy_that_allows_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let expired = dir.path().join("expired.toml");
    std::fs::write(
        &expired,
        "[dataset]\nname = \"d\"\nexpires = 2020-01-01T00:00:00Z\n\n[[rule]]\nname = \"r\"\nmodel_owners = [\"b547bdb0e95a80974d0ccd4b00544743\"]\nmodes = [\"federated\"]\nschemes = [\"plain\"]\napproval = \"automatic\"\n",
    )
    .expect("write");
    let empty = dir.path().join("empty.toml");
    std::fs::write(
        &empty,
        "[dataset]\nname = \"d\"\nexpires = 2099-01-01T00:00:00Z\n",
    )
    .expect("write");
    for (file, warning) in [(&expired, "expired"), (&empty, "no rules")] {
        let out = confide(&["policy", "check", "--policy", file.to_str().expect("utf-8")]);
        let json = common::json_out(&out);
        assert_eq!(json["allows_jobs"], false, "{json}");
        assert!(json["warnings"].to_string().contains(warning), "{json}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("warning:"));
    }
    let out = confide(&[
        "policy",
        "check",
        "--policy",
        root()
            .join("examples/policies/breast_homo_guest.toml")
            .to_str()
            .expect("utf-8"),
    ]);
    assert_eq!(common::json_out(&out)["allows_jobs"], true);
}

#[test]
fn a_truncated_key_file_is_reported_as_a_key_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    let fed_s = fed.to_str().expect("utf-8");
    assert!(
        confide(&["ca", "init", "--dir", fed_s, "--federation", "t"])
            .status
            .success()
    );
    assert!(
        confide(&[
            "ca", "issue", "--dir", fed_s, "--name", "guest", "--role", "node"
        ])
        .status
        .success()
    );
    let key = fed.join("guest.key");
    let text = std::fs::read_to_string(&key).expect("key");
    std::fs::write(&key, &text[..text.len() / 2]).expect("truncate");
    let csv = root().join("data/breast_homo/breast_homo_guest.csv");
    let out = confide(&[
        "node",
        "--fed",
        fed_s,
        "--name",
        "guest",
        "--coordinator",
        "127.0.0.1:9",
        "--data",
        csv.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("key file") && err.contains("guest.key"),
        "{err}"
    );
    assert!(!err.contains("certificate rejected"), "{err}");
}

#[test]
fn simulate_names_the_users_bad_policy_and_prints_rounds_without_a_terminal() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("my-bad-policy.toml");
    std::fs::write(&bad, "[dataset]\nname = 3\n").expect("write");
    let cfg = config_with(dir.path(), &[]);
    let text = std::fs::read_to_string(&cfg).expect("read");
    let guest_policy = root().join("examples/policies/breast_homo_guest.toml");
    let text = text.replace(
        &format!("\"{}\"", guest_policy.display()),
        &format!("\"{}\"", bad.display()),
    );
    std::fs::write(&cfg, text).expect("write");
    let (code, _, _, err) = simulate(&cfg, dir.path(), &["--quiet"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("my-bad-policy.toml"), "{err}");
    assert!(!err.contains("policies/guest.toml"), "{err}");

    // Stderr is a pipe here, not a terminal: one line per round.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).expect("mkdir");
    let cfg = config_with(&second, &[("rounds = 80", "rounds = 2")]);
    let (code, _, _, err) = simulate(&cfg, &second, &["--mode", "in-process"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("round 1/2") && err.contains("round 2/2"),
        "{err}"
    );
}
