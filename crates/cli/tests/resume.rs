//! The key holder's restart rules, with real processes and a crash point that aborts the key
//! holder (as `kill -9` would) at an exact place in round 3 of an 8-round `paillier` job:
//! - before it records the decryption (`keyholder-before-record`);
//! - after the record is on disk, before it decrypts (`keyholder-after-record`);
//! - after it decrypted, before it answers (`keyholder-after-decrypt`).
//!
//! The test restarts the key holder on the same address at once. The coordinator asks again
//! with the byte-identical request (RES-002), and the restarted key holder either decrypts for
//! the first time or answers the identical request it already decrypted (RES-001), while any
//! other subset stays refused (KEY-005, unit-tested in confide-secagg). Each job completes with
//! a model **bit-identical** to an uninterrupted run's, and the key holder's record holds each
//! round exactly once. A key holder restarted with another key refuses to start (RES-003).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, root};

const ROUNDS: usize = 8;

/// The tests here run one at a time: each runs a whole federation of processes, and the pause
/// and freeze tests depend on the coordinator being scheduled promptly.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8").to_string()
}

/// A federation, an 8-round breast_homo job under `paillier`, its approved manifest.
struct Fed {
    dir: tempfile::TempDir,
    fed: PathBuf,
    job: PathBuf,
    manifest: PathBuf,
}

fn federation() -> Fed {
    federation_with(ROUNDS, 60.0)
}

/// A federation and a breast_homo job of `rounds` rounds with round timeout `timeout` s.
fn federation_with(rounds: usize, timeout: f64) -> Fed {
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("KEEP").is_some())
        .tempdir()
        .expect("tmp");
    eprintln!("work directory {}", dir.path().display());
    let fed = dir.path().join("fed");
    ok(&["ca", "init", "--dir", &s(&fed), "--federation", "resume"]);
    for (name, role) in [
        ("coordinator", "coordinator"),
        ("keyholder", "keyholder"),
        ("owner", "model-owner"),
        ("guest", "node"),
        ("host", "node"),
    ] {
        ok(&[
            "ca",
            "issue",
            "--dir",
            &s(&fed),
            "--name",
            name,
            "--role",
            role,
        ]);
    }
    let text = common::absolute_example_paths(
        &std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example"),
    );
    assert!(text.contains("rounds = 80") && text.contains("round_timeout_secs = 60.0"));
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        text.replace("rounds = 80", &format!("rounds = {rounds}"))
            .replace(
                "round_timeout_secs = 60.0",
                &format!("round_timeout_secs = {timeout:.1}"),
            ),
    )
    .expect("write");
    let manifest = dir.path().join("job.manifest.json");
    ok(&[
        "job",
        "sign",
        "--config",
        &s(&job),
        "--key",
        &s(&fed.join("owner.key")),
        "--out",
        &s(&manifest),
    ]);
    for owner in ["guest", "host"] {
        let key = s(&fed.join(format!("{owner}.key")));
        ok(&["job", "approve", "--manifest", &s(&manifest), "--key", &key]);
    }
    Fed {
        dir,
        fed,
        job,
        manifest,
    }
}

/// Starts `confide args…` with `env`; returns the process and the address on its first line.
fn start(args: &[String], env: &[(&str, &str)], log: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn");
    let addr = common::listening_address(&mut child, log, &format!("{args:?}"));
    (child, addr)
}

/// The key holder's arguments: the test key, its record in `d`, listening on `listen`.
fn keyholder_args(f: &Fed, d: &Path, listen: &str) -> Vec<String> {
    let key = root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json");
    let state = d.join("keyholder-state.jsonl");
    [
        "keyholder",
        "--config",
        &s(&f.job),
        "--fed",
        &s(&f.fed),
        "--key",
        &s(&key),
        "--state",
        &s(&state),
        "--listen",
        listen,
    ]
    .map(String::from)
    .to_vec()
}

/// A fresh work directory `name` for one run, and a key holder started in it: the directory,
/// the process and its address.
fn keyholder_in(f: &Fed, name: &str) -> (PathBuf, Child, String) {
    let d = f.dir.path().join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let (kh, addr) = start(
        &keyholder_args(f, &d, "127.0.0.1:0"),
        &[],
        &d.join("keyholder.log"),
    );
    (d, kh, addr)
}

/// The one-shot coordinator's arguments, with its audit store in `d`.
fn coordinator_args(f: &Fed, d: &Path, kh_addr: &str) -> Vec<String> {
    [
        "coordinator",
        "--config",
        &s(&f.job),
        "--fed",
        &s(&f.fed),
        "--keyholder",
        kh_addr,
        "--manifest",
        &s(&f.manifest),
        "--audit-store",
        &s(&d.join("audit.redb")),
    ]
    .map(String::from)
    .to_vec()
}

/// Starts the two owners' nodes against the coordinator at `co_addr`, logging in `d`.
fn start_nodes(f: &Fed, d: &Path, co_addr: &str) -> Vec<Child> {
    start_nodes_with(f, d, co_addr, &[])
}

/// As [`start_nodes`], with `env` set for the second owner (`host`).
fn start_nodes_with(f: &Fed, d: &Path, co_addr: &str, env: &[(&str, &str)]) -> Vec<Child> {
    let data = root().join("data/breast_homo");
    [
        ("guest", "breast_homo_guest.csv"),
        ("host", "breast_homo_host.csv"),
    ]
    .into_iter()
    .map(|(name, file)| {
        Command::new(env!("CARGO_BIN_EXE_confide"))
            .args([
                "node",
                "--fed",
                &s(&f.fed),
                "--name",
                name,
                "--coordinator",
                co_addr,
            ])
            .args(["--data", &s(&data.join(file))])
            // Each run is its own coordinator with its own audit log: a witness that
            // remembered another run's heads would refuse this one (witness continuity).
            .args([
                "--witness-store",
                &s(&d.join(format!("{name}-witness.redb"))),
            ])
            .envs(env.iter().copied().filter(|_| name == "host"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join(format!("{name}.log"))).expect("log"))
            .spawn()
            .expect("node")
    })
    .collect()
}

/// What a run left: the released model's bytes, the report, the key holder's record lines,
/// and how many times the key holder was started.
struct Run {
    model: Vec<u8>,
    report: serde_json::Value,
    records: Vec<serde_json::Value>,
    starts: usize,
}

/// Runs the job once in `work`, with the key holder's crash point `crash` armed (if any), and
/// restarts the key holder whenever it dies before the job ends.
fn run(f: &Fed, work: &str, crash: Option<&str>) -> Run {
    let d = f.dir.path().join(work);
    std::fs::create_dir_all(&d).expect("dir");
    let state = d.join("keyholder-state.jsonl");
    let kh_args = |listen: &str| keyholder_args(f, &d, listen);
    let armed: Vec<(&str, &str)> = crash
        .map(|c| vec![("CONFIDE_CRASH_AT", c)])
        .unwrap_or_default();
    let (mut kh, kh_addr) = start(&kh_args("127.0.0.1:0"), &armed, &d.join("keyholder.log"));
    let release = d.join("release");
    let mut co_args = coordinator_args(f, &d, &kh_addr);
    co_args.extend(["--out", &s(&release), "--linger-secs", "1"].map(String::from));
    let (mut co, co_addr) = start(&co_args, &[], &d.join("coordinator.log"));
    let mut nodes = start_nodes(f, &d, &co_addr);
    let mut starts = 1;
    let started = Instant::now();
    while co.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the job did not end"
        );
        if let Some(status) = kh.try_wait().expect("wait") {
            assert!(starts < 3, "the key holder died again: {status}");
            // Restart at once, on the same address, without the crash point.
            let (again, addr) = start(&kh_args(&kh_addr), &[], &d.join("keyholder-2.log"));
            assert_eq!(addr, kh_addr);
            kh = again;
            starts += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (n, name) in nodes.iter_mut().zip(["guest", "host"]) {
        let log = d.join(format!("{name}.log"));
        assert!(
            n.wait().expect("node").success(),
            "{name} failed in {work}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let _ = kh.kill();
    let _ = kh.wait();
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(release.join("coordinator-report.json")).expect("report"),
    )
    .expect("json");
    let model_file = std::fs::read_dir(&release)
        .expect("release")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("a released model");
    let records = std::fs::read_to_string(&state)
        .expect("state")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    Run {
        model: std::fs::read(model_file).expect("model"),
        report,
        records,
        starts,
    }
}

#[test]
fn res_001_002_a_key_holder_killed_at_each_point_of_a_round_loses_nothing() {
    let _serial = serial();
    let f = federation();
    let baseline = run(&f, "baseline", None);
    assert_eq!(baseline.report["rounds"], ROUNDS);
    assert_eq!(baseline.records.len(), ROUNDS);
    assert_eq!(baseline.starts, 1);
    let again = run(&f, "again", None);
    assert_eq!(
        again.model, baseline.model,
        "an uninterrupted run is reproducible"
    );
    for point in [
        "keyholder-before-record",
        "keyholder-after-record",
        "keyholder-after-decrypt",
    ] {
        let crashed = run(&f, point, Some(&format!("{point}@3")));
        eprintln!(
            "{point}@3: {} key holder starts, {} rounds, {} model bytes identical to the baseline",
            crashed.starts,
            crashed.report["rounds"],
            crashed.model.len()
        );
        assert_eq!(crashed.starts, 2, "{point}: the crash point fired once");
        assert_eq!(crashed.report["rounds"], ROUNDS, "{point}");
        assert_eq!(
            crashed.model, baseline.model,
            "{point}: bit-identical model"
        );
        // Each round recorded exactly once, under one key, with its contribution set.
        let mut rounds: Vec<u64> = crashed
            .records
            .iter()
            .map(|r| r["round"].as_u64().expect("round"))
            .collect();
        rounds.sort_unstable();
        assert_eq!(rounds, (1..=ROUNDS as u64).collect::<Vec<_>>(), "{point}");
        assert!(
            crashed
                .records
                .iter()
                .all(|r| r["contributions"].is_string() && r["key"].is_string())
        );
    }
}

#[test]
fn res_003_a_key_holder_restarted_with_another_key_refuses_to_start() {
    let _serial = serial();
    let f = federation();
    let state = f.dir.path().join("state.jsonl");
    // A record of round 1 of this job made under another key.
    let spec = confide_core::JobConfig::load(&f.job).expect("job").spec();
    let job_hex = hex::encode(confide_net::coordinator::job_digest(&spec));
    let line = format!(
        "{{\"job\":\"{job_hex}\",\"round\":1,\"model\":\"{}\",\"contributions\":\"{}\",\"key\":\"not-this-key\"}}\n",
        "00".repeat(32),
        "11".repeat(32)
    );
    std::fs::write(&state, line).expect("write");
    let key = root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json");
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "keyholder",
            "--config",
            &s(&f.job),
            "--fed",
            &s(&f.fed),
            "--key",
            &s(&key),
        ])
        .args(["--state", &s(&state), "--listen", "127.0.0.1:0"])
        .output()
        .expect("keyholder");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("RES-003"), "{stderr}");
}

#[test]
fn node_001_nodes_stop_on_their_own_when_the_coordinator_freezes() {
    let _serial = serial();
    // Many short rounds with a 3 s round timeout; the coordinator is frozen (SIGSTOP) in the
    // middle of the job, as a hung machine would be.
    let f = federation_with(100_000, 3.0);
    let (d, mut kh, kh_addr) = keyholder_in(&f, "frozen");
    let co_args = coordinator_args(&f, &d, &kh_addr);
    let (mut co, co_addr) = start(&co_args, &[], &d.join("coordinator.log"));
    let mut nodes = start_nodes(&f, &d, &co_addr);
    // Let the job run a few rounds, then freeze the coordinator.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        co.try_wait().expect("wait").is_none(),
        "the job is still running"
    );
    let pid = co.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let frozen = Instant::now();
    for (n, name) in nodes.iter_mut().zip(["guest", "host"]) {
        // A guard against a hung test, not a timing assertion: the nodes must end at all.
        let status = loop {
            if let Some(status) = n.try_wait().expect("wait") {
                break status;
            }
            assert!(
                frozen.elapsed() < Duration::from_secs(180),
                "{name} still waits for a frozen coordinator"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default();
        eprintln!(
            "{name} stopped {:.1} s after the coordinator froze: {}",
            frozen.elapsed().as_secs_f64(),
            log.lines().last().unwrap_or_default()
        );
        assert!(!status.success(), "{name}");
        assert!(log.contains("NODE-001"), "{name}: {log}");
    }
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let _ = co.kill();
    let _ = co.wait();
    let _ = kh.kill();
    let _ = kh.wait();
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped, …), from /proc.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn res_004_updates_that_arrive_while_the_coordinator_is_frozen_still_count() {
    let _serial = serial();
    // Round 3, round timeout 3 s: `host` sends its update 4 s late (a slow owner); half a
    // second into the deadline the coordinator freezes (SIGSTOP) between a look at the state and a
    // look at the clock, and stays frozen 7 s, past the deadline, while host's update reaches
    // its socket. Continued, it must serve that update instead of closing the round on it.
    let f = federation_with(ROUNDS, 3.0);
    let (d, mut kh, kh_addr) = keyholder_in(&f, "paused");
    let release = d.join("release");
    let mut co_args = coordinator_args(&f, &d, &kh_addr);
    co_args.extend(["--out", &s(&release), "--linger-secs", "1"].map(String::from));
    let (mut co, co_addr) = start(
        &co_args,
        &[("CONFIDE_PAUSE_AT", "coordinator-deadline-wait@3")],
        &d.join("coordinator.log"),
    );
    let mut nodes = start_nodes_with(
        &f,
        &d,
        &co_addr,
        &[("CONFIDE_DELAY_AT", "node-before-submit@3")],
    );
    let started = Instant::now();
    while process_state(co.id()) != Some('T') {
        assert!(
            co.try_wait().expect("wait").is_none(),
            "the coordinator ended without its pause"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the pause point was not reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(7));
    let pid = co.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    for (n, name) in nodes.iter_mut().zip(["guest", "host"]) {
        let log = std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default();
        assert!(n.wait().expect("node").success(), "{name}: {log}");
    }
    assert!(co.wait().expect("coordinator").success());
    let _ = kh.kill();
    let _ = kh.wait();
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(release.join("coordinator-report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["rounds"], ROUNDS);
    let history = report["history"].as_array().expect("history");
    assert_eq!(history.len(), ROUNDS);
    for (i, round) in history.iter().enumerate() {
        let contributors = round["contributors"].as_array().map(Vec::len);
        assert_eq!(contributors, Some(2), "round {}: {round}", i + 1);
    }
}

#[test]
fn res_005_owners_never_train_a_round_again_for_a_restarted_coordinator() {
    let _serial = serial();
    // The coordinator is killed (-9) mid-job and restarted on the same address and audit store;
    // it starts the job again from round 1 and the initial model (a one-shot coordinator has
    // no checkpoint). The owners, restarted with their stores, rejoin without approving again
    // (RES-008); the fresh coordinator has no record of their approvals and refuses them
    // (NET-007), so they train nothing again. Were they admitted, RES-005 would refuse round 1:
    // they already trained those rounds from those models.
    let f = federation_with(100_000, 5.0);
    let (d, mut kh, kh_addr) = keyholder_in(&f, "restarted");
    let co_args = coordinator_args(&f, &d, &kh_addr);
    let (mut co, co_addr) = start(&co_args, &[], &d.join("coordinator.log"));
    let mut nodes = start_nodes(&f, &d, &co_addr);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        co.try_wait().expect("wait").is_none(),
        "the job is still running"
    );
    // Everything goes down at once (kill -9), as in a site's power cut.
    co.kill().expect("kill -9");
    let _ = co.wait();
    for n in &mut nodes {
        n.kill().expect("kill -9");
        let _ = n.wait();
    }
    let mut again = co_args.clone();
    again.extend(["--listen".to_string(), co_addr.clone()]);
    let (mut co2, addr2) = start(&again, &[], &d.join("coordinator-2.log"));
    assert_eq!(addr2, co_addr);
    for name in ["guest", "host"] {
        std::fs::rename(
            d.join(format!("{name}.log")),
            d.join(format!("{name}-1.log")),
        )
        .expect("rename");
    }
    let mut restarted = start_nodes(&f, &d, &co_addr);
    for (n, name) in restarted.iter_mut().zip(["guest", "host"]) {
        let status = n.wait().expect("node");
        let log = std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default();
        eprintln!(
            "{name} restarted: {}",
            log.lines().last().unwrap_or_default()
        );
        assert!(!status.success(), "{name}: {log}");
        assert!(log.contains("rejoins job"), "{name}: {log}");
        assert!(log.contains("NET-007"), "{name}: {log}");
    }
    let _ = co2.kill();
    let _ = co2.wait();
    let _ = kh.kill();
    let _ = kh.wait();
}

/// NODE-003: nodes started before their coordinator keep asking for it (backing off to 2 s,
/// for at most 60 s) instead of failing at the first refused connection; the job then runs.
#[test]
fn node_003_nodes_started_before_their_coordinator_wait_for_it() {
    let _serial = serial();
    let f = federation();
    let (d, mut kh, kh_addr) = keyholder_in(&f, "late");
    // A free port for the coordinator that is not there yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let mut nodes = start_nodes(&f, &d, &addr);
    std::thread::sleep(Duration::from_secs(2));
    for n in &mut nodes {
        assert!(
            n.try_wait().expect("wait").is_none(),
            "a node gave up while its coordinator was not there yet"
        );
    }
    let mut co_args = coordinator_args(&f, &d, &kh_addr);
    co_args.extend(["--listen", &addr, "--linger-secs", "1"].map(String::from));
    let (mut co, co_addr) = start(&co_args, &[], &d.join("coordinator.log"));
    assert_eq!(co_addr, addr);
    let started = Instant::now();
    while co.try_wait().expect("wait").is_none() {
        // A guard against a hung test, not a timing assertion.
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the job did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, name) in nodes.iter_mut().zip(["guest", "host"]) {
        assert!(
            n.wait().expect("node").success(),
            "{name}: {}",
            std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default()
        );
    }
    assert!(co.wait().expect("coordinator").success());
    let _ = kh.kill();
    let _ = kh.wait();
}
