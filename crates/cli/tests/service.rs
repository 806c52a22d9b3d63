//! The long-lived coordinator (`confide coordinator serve`) and the job commands, as real
//! processes over mutual TLS: submission is idempotent by manifest hash, a job id names one
//! manifest, bad submissions and strangers get numbered refusals and leave the daemon serving,
//! a follower sees a cancel, a `kill -9` loses nothing (a cancelled job stays cancelled), and
//! SIGTERM ends the daemon with exit code 0 even while a follower is connected.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, root};
use serde_json::Value;

/// A running `confide coordinator serve`: its control and admin addresses.
struct Daemon {
    child: Child,
    addr: String,
    admin: String,
    /// Held while the daemon lives: a daemon whose stdout is closed stops at its next line.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(fed: &Path, store: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confide"))
            .args(["coordinator", "serve", "--control", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0", "--fleet", "127.0.0.1:0", "--fed"])
            .arg(fed)
            .arg("--store")
            .arg(store)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(store.with_extension("log"))
                    .expect("log"),
            )
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut address = |what: &str| {
            let mut line = String::new();
            out.read_line(&mut line).expect("address line");
            let prefix = format!("confide coordinator {what} listening on 127.0.0.1:");
            assert!(line.starts_with(&prefix), "{line}");
            line.trim().rsplit(' ').next().expect("address").to_string()
        };
        let admin = address("admin");
        let addr = address("control");
        address("fleet");
        Daemon {
            child,
            addr,
            admin,
            _stdout: out,
        }
    }

    /// `GET path` on the admin port: status code and body.
    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.admin).expect("admin port");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// `/readyz` until it says 200: the ports print their addresses as they bind, and
    /// readiness follows once the dispatcher runs, so the first probe may still say 503.
    fn ready_code(&self) -> u16 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let code = self.get("/readyz").0;
            if code == 200 || std::time::Instant::now() > deadline {
                return code;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The metrics, checked line by line against the text format, as (series, value).
    fn metrics(&self) -> Vec<(String, f64)> {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200);
        assert!(
            body.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        let mut samples = Vec::new();
        for line in body.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let known = ["HELP ", "TYPE "].iter().any(|p| comment.starts_with(p));
                assert!(known || comment == "EOF", "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            assert!(name_ok, "metric name in {line}");
            if name_end < series.len() {
                let labels = &series[name_end..];
                assert!(labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
            };
            samples.push((series.to_string(), value));
        }
        samples
    }

    /// One series' value (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .into_iter()
            .find(|(s, _)| s == series)
            .map_or(0.0, |(_, v)| v)
    }

    /// `confide job …` as `name`, with `--format json`.
    fn job(&self, fed: &Path, name: &str, args: &[&str]) -> Output {
        self.job_command(fed, name, args)
            .output()
            .expect("run confide")
    }

    fn job_command(&self, fed: &Path, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confide"));
        cmd.arg("job")
            .args(args)
            .args(["--format", "json"])
            .env("CONFIDE_CONTROL", &self.addr)
            .env("CONFIDE_FED", fed)
            .env("CONFIDE_NAME", name);
        cmd
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Asserts that `out` is a refusal under `rule` (exit code 3).
fn refused(out: &Output, rule: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(rule), "expected {rule}: {stderr}");
}

/// A federation with a coordinator, two model owners and a node, and signed manifests.
struct Setup {
    _dir: tempfile::TempDir,
    fed: PathBuf,
    store: PathBuf,
    manifest: PathBuf,
    second: PathBuf,
    same_id: PathBuf,
    unsigned: PathBuf,
    tampered: PathBuf,
    garbage: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("dir");
    let fed = dir.path().join("fed");
    let f = fed.to_str().expect("utf-8");
    ok(&["ca", "init", "--dir", f, "--federation", "service-test"]);
    for (name, role) in [
        ("coordinator", "coordinator"),
        ("alice", "model-owner"),
        ("mallory", "model-owner"),
        ("hospital", "node"),
    ] {
        ok(&["ca", "issue", "--dir", f, "--name", name, "--role", role]);
    }
    let example =
        std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
    let example = common::absolute_example_paths(&example);
    let sign = |text: &str, out: &str| -> PathBuf {
        let config = dir.path().join(format!("{out}.toml"));
        std::fs::write(&config, text).expect("write");
        let path = dir.path().join(format!("{out}.json"));
        ok(&[
            "job",
            "sign",
            "--config",
            config.to_str().expect("utf-8"),
            "--key",
            fed.join("alice.key").to_str().expect("utf-8"),
            "--out",
            path.to_str().expect("utf-8"),
        ]);
        path
    };
    let manifest = sign(&example, "m");
    let second = sign(
        &example.replace("id = \"breast-homo\"", "id = \"breast-homo-2\""),
        "m2",
    );
    let same_id = sign(&example.replace("rounds = 80", "rounds = 81"), "m3");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["signatures"] = serde_json::json!([]);
    let unsigned = dir.path().join("unsigned.json");
    std::fs::write(&unsigned, v.to_string()).expect("write");
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["manifest"]["spec"]["job"]["rounds"] = 1.into();
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, v.to_string()).expect("write");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"\x00\x01 not a manifest").expect("write");
    let store = dir.path().join("coordinator.redb");
    Setup {
        _dir: dir,
        fed,
        store,
        manifest,
        second,
        same_id,
        unsigned,
        tampered,
        garbage,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[test]
fn a_standing_coordinator_keeps_jobs_refuses_bad_input_and_survives_kill_9() {
    let s = setup();
    let fed = s.fed.as_path();
    let mut d = Daemon::start(fed, &s.store);
    assert_eq!(d.get("/livez").0, 200);
    assert_eq!(d.ready_code(), 200, "ready once the store is recovered");
    assert_eq!(d.metric("confide_jobs{state=\"awaiting_approval\"}"), 0.0);

    // Submission, and the same manifest again.
    let first = d.job(fed, "alice", &["submit", path(&s.manifest)]);
    assert_eq!(first.status.code(), Some(0));
    let first = json(&first);
    assert_eq!(first["created"], true);
    assert_eq!(first["state"]["name"], "awaiting_approval");
    let hash = first["hash"].as_str().expect("hash").to_string();
    let again = json(&d.job(fed, "alice", &["submit", path(&s.manifest)]));
    assert_eq!(again["created"], false);
    assert_eq!(again["hash"], hash.as_str());
    let second = json(&d.job(fed, "alice", &["submit", path(&s.second)]));
    assert_eq!(second["created"], true);

    // Bad input: each gets its numbered refusal.
    refused(
        &d.job(fed, "alice", &["submit", path(&s.same_id)]),
        "JOB-003",
    );
    refused(
        &d.job(fed, "alice", &["submit", path(&s.garbage)]),
        "JOB-001",
    );
    refused(
        &d.job(fed, "alice", &["submit", path(&s.unsigned)]),
        "JOB-002",
    );
    refused(
        &d.job(fed, "alice", &["submit", path(&s.tampered)]),
        "JOB-002",
    );
    refused(
        &d.job(fed, "mallory", &["submit", path(&s.manifest)]),
        "JOB-004",
    );
    refused(&d.job(fed, "alice", &["status", "no-such-job"]), "JOB-005");
    // A stranger may neither see nor cancel alice's job.
    // (as if it did not exist: its existence is not theirs to learn).
    refused(&d.job(fed, "mallory", &["status", &hash]), "JOB-005");
    refused(
        &d.job(fed, "mallory", &["status", "breast-homo"]),
        "JOB-005",
    );
    refused(
        &d.job(fed, "mallory", &["cancel", &hash, "--reason", "mine"]),
        "JOB-005",
    );
    // A node's certificate has no business on the control port (the guard, NET-001).
    refused(&d.job(fed, "hospital", &["list"]), "NET-001");
    assert!(d.alive(), "the daemon keeps serving");
    // Every refusal is counted by its rule, and the job gauges moved.
    for (rule, n) in [
        ("JOB-001", 1.0),
        ("JOB-002", 2.0),
        ("JOB-003", 1.0),
        ("JOB-004", 1.0),
        ("JOB-005", 4.0),
        ("NET-001", 1.0),
    ] {
        assert_eq!(
            d.metric(&format!("confide_refusals_total{{rule=\"{rule}\"}}")),
            n,
            "{rule}"
        );
    }
    assert_eq!(d.metric("confide_jobs{state=\"awaiting_approval\"}"), 2.0);
    assert_eq!(d.metric("confide_audit_entries"), 2.0);
    assert!(d.metric("confide_store_commit_seconds_count") >= 3.0);

    // What each party sees.
    let mine = json(&d.job(fed, "alice", &["list"]));
    assert_eq!(mine.as_array().map(Vec::len), Some(2));
    let theirs = json(&d.job(fed, "mallory", &["list"]));
    assert_eq!(theirs.as_array().map(Vec::len), Some(0));
    let operator = json(&d.job(
        fed,
        "coordinator",
        &["list", "--state", "awaiting_approval"],
    ));
    assert_eq!(operator.as_array().map(Vec::len), Some(2));

    // A follower sees the cancel and exits with the cancelled code.
    let follower = d
        .job_command(fed, "alice", &["logs", "breast-homo", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follower");
    std::thread::sleep(Duration::from_millis(500));
    let cancelled = d.job(
        fed,
        "alice",
        &["cancel", &hash[..10], "--reason", "wrong cohort"],
    );
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    assert_eq!(json(&cancelled)["state"]["name"], "cancelled");
    let followed = follower.wait_with_output().expect("follower");
    assert_eq!(followed.status.code(), Some(5));
    let events: Vec<Value> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["state"]["reason"], "wrong cohort");
    // A repeated cancel is answered; status exits with the outcome.
    assert_eq!(
        d.job(fed, "alice", &["cancel", &hash, "--reason", "again"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        d.job(fed, "alice", &["status", &hash]).status.code(),
        Some(5)
    );

    // kill -9, then restart on the same store: nothing is lost, nothing is revived.
    d.child.kill().expect("kill -9");
    let _ = d.child.wait();
    drop(d);
    let mut d = Daemon::start(fed, &s.store);
    let status = d.job(fed, "alice", &["status", "breast-homo"]);
    assert_eq!(
        status.status.code(),
        Some(5),
        "{}\n{}",
        String::from_utf8_lossy(&status.stderr),
        std::fs::read_to_string(s.store.with_extension("log")).unwrap_or_default()
    );
    assert_eq!(json(&status)["state"]["reason"], "wrong cohort");
    let resubmitted = json(&d.job(fed, "alice", &["submit", path(&s.manifest)]));
    assert_eq!(resubmitted["created"], false);
    assert_eq!(resubmitted["state"]["name"], "cancelled");
    assert_eq!(
        json(&d.job(fed, "alice", &["status", "breast-homo-2"]))["state"]["name"],
        "awaiting_approval"
    );
    refused(
        &d.job(fed, "alice", &["submit", path(&s.same_id)]),
        "JOB-003",
    );

    // SIGTERM with a follower connected: the daemon ends its streams and exits 0.
    let follower = d
        .job_command(fed, "alice", &["logs", "breast-homo-2", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("follower");
    std::thread::sleep(Duration::from_millis(500));
    let pid = d.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let start = Instant::now();
    let code = loop {
        if let Some(status) = d.child.try_wait().expect("wait") {
            break status.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "SIGTERM did not stop the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    let ended = follower.wait_with_output().expect("follower");
    let told = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(1), "{told}");
    assert!(told.contains("the coordinator is stopping"), "{told}");
}
