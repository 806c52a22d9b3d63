//! The standing federation end to end, as real processes over mutual TLS: a coordinator
//! daemon (`confide coordinator serve`), two node daemons (`confide node serve`), and model
//! owners who submit jobs. One node's policy approves on its own; the other's asks its owner,
//! who approves and rejects from the inbox. Two jobs run at once and complete, the recipient
//! downloads the model, a job cancelled while it runs stops, and every daemon ends with
//! SIGTERM and exit code 0.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, root};
use serde_json::Value;

/// A running daemon and the addresses it printed (in order).
struct Daemon {
    child: Child,
    addrs: Vec<String>,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(args: &[&str], lines: usize, log: PathBuf) -> Daemon {
        Self::start_with(args, &[], lines, log)
    }

    fn start_with(args: &[&str], env: &[(&str, &str)], lines: usize, log: PathBuf) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confide"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addrs = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            out.read_line(&mut line).expect("address line");
            assert!(
                line.contains(" listening on "),
                "{args:?}: {line}{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            addrs.push(line.trim().rsplit(' ').next().expect("address").to_string());
        }
        Daemon { child, addrs, log }
    }

    /// SIGTERM, then the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

struct Fed {
    dir: tempfile::TempDir,
    fed: PathBuf,
}

impl Fed {
    fn new() -> Fed {
        let dir = tempfile::tempdir().expect("dir");
        let fed = dir.path().join("fed");
        let f = path(&fed);
        ok(&["ca", "init", "--dir", f, "--federation", "fleet-test"]);
        for (name, role) in [
            ("coordinator", "coordinator"),
            ("keyholder", "keyholder"),
            ("guest", "node"),
            ("host", "node"),
            ("mallory", "model-owner"),
        ] {
            ok(&["ca", "issue", "--dir", f, "--name", name, "--role", role]);
        }
        // The model owner is the examples' demo identity, which the example policies name.
        let keys = root().join("examples/keys");
        std::fs::copy(keys.join("model-owner.key"), fed.join("owner.key")).expect("key");
        ok(&[
            "ca",
            "issue",
            "--dir",
            f,
            "--name",
            "owner",
            "--role",
            "model-owner",
            "--public-key",
            path(&keys.join("model-owner.key.pub")),
        ]);
        Fed { dir, fed }
    }

    /// A signed manifest of the breast_homo example under `scheme`, `rounds` rounds.
    fn manifest(&self, id: &str, scheme: &str, rounds: u32) -> PathBuf {
        let example =
            std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
        let text = common::absolute_example_paths(&example)
            .replace("id = \"breast-homo\"", &format!("id = \"{id}\""))
            .replace("rounds = 80", &format!("rounds = {rounds}"))
            .replace("scheme = \"paillier\"", &format!("scheme = \"{scheme}\""))
            .replace("round_timeout_secs = 60.0", "round_timeout_secs = 20.0");
        let config = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&config, text).expect("write");
        let out = self.dir.path().join(format!("{id}.json"));
        ok(&[
            "job",
            "sign",
            "--config",
            path(&config),
            "--key",
            path(&self.fed.join("owner.key")),
            "--out",
            path(&out),
        ]);
        out
    }

    /// `confide job …` as `name` against `control`, with `--format json`.
    fn job(&self, control: &str, name: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_confide"))
            .arg("job")
            .args(args)
            .args(["--format", "json"])
            .env("CONFIDE_CONTROL", control)
            .env("CONFIDE_FED", &self.fed)
            .env("CONFIDE_NAME", name)
            .output()
            .expect("run confide")
    }

    /// `confide node inbox …` against the node daemon at `admin`, as `name`.
    fn inbox(&self, admin: &str, name: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_confide"))
            .args(["node", "inbox"])
            .args(args)
            .args(["--format", "json", "--admin", admin])
            .env("CONFIDE_FED", &self.fed)
            .env("CONFIDE_NAME", name)
            .output()
            .expect("run confide")
    }

    /// The key holder daemon, with the test Paillier key for every `paillier` job (a fresh
    /// 2048-bit key per job takes 10–60 s here).
    fn keyholder(&self) -> Daemon {
        self.keyholder_at("127.0.0.1:0", &[], "keyholder.log")
    }

    /// The key holder daemon on `listen`, with `env`.
    fn keyholder_at(&self, listen: &str, env: &[(&str, &str)], log: &str) -> Daemon {
        Daemon::start_with(
            &[
                "keyholder",
                "serve",
                "--fed",
                path(&self.fed),
                "--listen",
                listen,
                "--admin",
                "127.0.0.1:0",
                "--insecure-fixed-key",
                path(&root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json")),
            ],
            env,
            2,
            self.dir.path().join(log),
        )
    }

    fn coordinator(&self, keyholder: &str) -> Daemon {
        let store = self.dir.path().join("coordinator.redb");
        Daemon::start(
            &[
                "coordinator",
                "serve",
                "--keyholder",
                keyholder,
                "--fed",
                path(&self.fed),
                "--control",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--fleet",
                "127.0.0.1:0",
                "--store",
                path(&store),
            ],
            3,
            self.dir.path().join("coordinator.log"),
        )
    }

    fn node(&self, name: &str, fleet: &str, policy: &Path) -> Daemon {
        let data = root().join(format!("data/breast_homo/breast_homo_{name}.csv"));
        Daemon::start(
            &[
                "node",
                "serve",
                "--fed",
                path(&self.fed),
                "--name",
                name,
                "--coordinator",
                fleet,
                "--data",
                path(&data),
                "--policy",
                path(policy),
                "--admin",
                "127.0.0.1:0",
                "--poll",
                "0.3",
                "--store",
                path(&self.dir.path().join(format!("{name}-node.redb"))),
            ],
            1,
            self.dir.path().join(format!("{name}.log")),
        )
    }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state_of(fed: &Fed, control: &str, job: &str) -> String {
    let out = fed.job(control, "owner", &["status", job]);
    json(&out)["state"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn node_daemons_approve_run_and_finish_jobs_from_a_standing_coordinator() {
    let fed = Fed::new();
    let mut keyholder = fed.keyholder();
    let mut coordinator = fed.coordinator(&keyholder.addrs[1]);
    let (admin, control, fleet) = (
        coordinator.addrs[0].clone(),
        coordinator.addrs[1].clone(),
        coordinator.addrs[2].clone(),
    );
    // guest's policy approves by itself; host's asks its owner (a co-signature).
    let policies = root().join("examples/policies");
    let host_policy = fed.dir.path().join("host-policy.toml");
    std::fs::write(
        &host_policy,
        std::fs::read_to_string(policies.join("breast_homo_host.toml"))
            .expect("policy")
            .replace("approval = \"automatic\"", "approval = \"co-signature\""),
    )
    .expect("write");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &host_policy);
    let host_admin = host.addrs[0].clone();

    let a = fed.manifest("fleet-masking", "masking", 3);
    let b = fed.manifest("fleet-rejected", "plain", 3);
    let c = fed.manifest("fleet-plain", "plain", 3);
    let p = fed.manifest("fleet-paillier", "paillier", 3);
    for m in [&a, &b, &c, &p] {
        let out = fed.job(&control, "owner", &["submit", path(m)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // host's inbox holds all three, waiting for its owner; guest approved all three.
    let pending = wait_for(30, "host's inbox", || {
        let out = fed.inbox(&host_admin, "host", &["list"]);
        let list = json(&out);
        let n = list
            .as_array()
            .map_or(0, |l| l.iter().filter(|e| e["status"] == "pending").count());
        (n == 4).then_some(list)
    });
    assert!(
        pending[0]["why"]
            .as_str()
            .unwrap_or_default()
            .contains("co-signature"),
        "{pending}"
    );
    assert_eq!(
        state_of(&fed, &control, "fleet-masking"),
        "awaiting_approval"
    );

    // host's owner approves two from the inbox and rejects one, each signed by its key.
    for job in ["fleet-masking", "fleet-plain", "fleet-paillier"] {
        let out = fed.inbox(&host_admin, "host", &["approve", job]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&out)["status"], "approved");
    }
    // A stranger's key cannot approve for host.
    let out = fed.inbox(
        &host_admin,
        "guest",
        &["reject", "fleet-rejected", "--reason", "x"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fed.inbox(
        &host_admin,
        "host",
        &["reject", "fleet-rejected", "--reason", "not this study"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The approved jobs run (two at once, the third queued) and complete; the rejected one
    // ends rejected.
    for job in ["fleet-masking", "fleet-plain", "fleet-paillier"] {
        wait_for(180, job, || {
            let s = state_of(&fed, &control, job);
            assert!(
                !["failed", "cancelled", "rejected", "expired"].contains(&s.as_str()),
                "{job} ended {s}:\n{}\n{}\n{}",
                coordinator.log(),
                guest.log(),
                host.log()
            );
            (s == "completed").then_some(())
        });
    }
    let rejected = json(&fed.job(&control, "owner", &["status", "fleet-rejected"]));
    assert_eq!(rejected["state"]["name"], "rejected", "{rejected}");
    assert_eq!(rejected["state"]["owner"], "host");
    assert!(
        rejected["state"]["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("not this study")
    );

    // The recipient downloads the model; a stranger may not.
    let out_dir = fed.dir.path().join("model");
    let out = fed.job(
        &control,
        "owner",
        &["download", "fleet-masking", "--out", path(&out_dir)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("model.safetensors").is_file());
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("coordinator-report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["status"], "finished", "{report}");
    assert_eq!(report["rounds"], 3, "{report}");
    assert_eq!(report["scheme"], "masking", "{report}");
    // The same jobs, run one-shot by `confide simulate`, give the same models bit for bit:
    // the service runs the same code path (the masks cancel, the key holder decrypts the
    // same sums; training is seeded by the job).
    for job in ["fleet-masking", "fleet-paillier"] {
        let served = fed.dir.path().join(format!("served-{job}"));
        let out = fed.job(
            &control,
            "owner",
            &["download", job, "--out", path(&served)],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let work = fed.dir.path().join(format!("one-shot-{job}"));
        let one_shot = common::simulate(&fed.dir.path().join(format!("{job}.toml")), &work, &[]);
        assert_eq!(one_shot.code, 0, "{}", one_shot.stderr);
        assert_eq!(
            std::fs::read(work.join("run/model/model.safetensors")).expect("one-shot model"),
            std::fs::read(served.join("model.safetensors")).expect("served model"),
            "{job}: the served model differs from the one-shot run's"
        );
    }
    // The key holder erased each job's key when the job ended.
    let keys = get(&keyholder.addrs[0], "/metrics");
    assert!(keys.contains("confide_keyholder_open_jobs 0"), "{keys}");
    let out = fed.job(
        &control,
        "mallory",
        &["download", "fleet-masking", "--out", path(&out_dir)],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator sees both nodes; the inboxes say how each job ended for them.
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "nodes",
            "list",
            "--format",
            "json",
            "--coordinator",
            &control,
        ])
        .args(["--fed", path(&fed.fed), "--name", "coordinator"])
        .output()
        .expect("nodes list");
    let nodes = json(&out);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["guest", "host"], "{nodes}");
    let list = json(&fed.inbox(&host_admin, "host", &["list"]));
    let ended = list
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["status"] == "ended")
        .count();
    assert_eq!(ended, 3, "{list}");

    // The metrics moved: two completed, one rejected, both nodes connected.
    let metrics = get(&admin, "/metrics");
    for line in [
        "confide_jobs{state=\"completed\"} 3",
        "confide_jobs{state=\"rejected\"} 1",
        "confide_nodes_connected 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // A job cancelled while it runs stops, and stays cancelled.
    let long = fed.manifest("fleet-long", "plain", 500);
    assert_eq!(
        fed.job(&control, "owner", &["submit", path(&long)])
            .status
            .code(),
        Some(0)
    );
    wait_for(30, "fleet-long in host's inbox", || {
        let out = fed.inbox(&host_admin, "host", &["approve", "fleet-long"]);
        (out.status.code() == Some(0)).then_some(())
    });
    wait_for(60, "fleet-long running", || {
        let r = json(&fed.job(&control, "owner", &["status", "fleet-long"]));
        (r["state"]["name"] == "running" && r["state"]["round"].as_u64() >= Some(2)).then_some(())
    });
    let out = fed.job(
        &control,
        "owner",
        &["cancel", "fleet-long", "--reason", "enough"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["state"]["name"], "cancelled");
    // The nodes hear that the job no longer runs, and end it.
    wait_for(60, "the nodes to end fleet-long", || {
        let list = json(&fed.inbox(&host_admin, "host", &["list"]));
        list.as_array()?
            .iter()
            .any(|e| e["job_id"] == "fleet-long" && e["status"] == "ended")
            .then_some(())
    });
    assert_eq!(state_of(&fed, &control, "fleet-long"), "cancelled");

    for d in [&mut guest, &mut host, &mut coordinator, &mut keyholder] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// `GET path` on an admin port: the body.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// RES-001…003 with a long-running key holder: it aborts itself right after recording round
/// 3's decryption of a `lattice` job (a fresh BFV key, sealed in its store), and is started
/// again on its address. It unseals the job's key from its store before it serves, the
/// coordinator asks it again (RES-002), it answers the identical request (RES-001), and the
/// job completes with the model of an uninterrupted one-shot run.
#[test]
fn a_key_holder_daemon_killed_mid_job_comes_back_with_the_jobs_sealed_key() {
    let fed = Fed::new();
    let mut first = fed.keyholder_at(
        "127.0.0.1:0",
        &[("CONFIDE_CRASH_AT", "keyholder-after-record@3")],
        "keyholder-1.log",
    );
    let listen = first.addrs[1].clone();
    let mut coordinator = fed.coordinator(&listen);
    let control = coordinator.addrs[1].clone();
    let fleet = coordinator.addrs[2].clone();
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let m = fed.manifest("fleet-lattice", "lattice", 6);
    assert_eq!(
        fed.job(&control, "owner", &["submit", path(&m)])
            .status
            .code(),
        Some(0)
    );
    // The key holder aborts itself in round 3, after its record.
    wait_for(120, "the key holder to abort", || {
        first.child.try_wait().expect("wait").map(|_| ())
    });
    assert!(
        first.log().contains("keyholder-after-record"),
        "{}",
        first.log()
    );
    let mut second = fed.keyholder_at(&listen, &[], "keyholder-2.log");
    assert!(
        second.log().contains("recovered (1 open jobs)"),
        "{}",
        second.log()
    );
    wait_for(180, "fleet-lattice", || {
        let s = state_of(&fed, &control, "fleet-lattice");
        assert!(
            !["failed", "cancelled", "rejected"].contains(&s.as_str()),
            "ended {s}:\n{}\n{}\n{}",
            coordinator.log(),
            second.log(),
            guest.log()
        );
        (s == "completed").then_some(())
    });
    let served = fed.dir.path().join("served");
    let out = fed.job(
        &control,
        "owner",
        &["download", "fleet-lattice", "--out", path(&served)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = fed.dir.path().join("one-shot");
    let one_shot = common::simulate(&fed.dir.path().join("fleet-lattice.toml"), &work, &[]);
    assert_eq!(one_shot.code, 0, "{}", one_shot.stderr);
    assert_eq!(
        std::fs::read(work.join("run/model/model.safetensors")).expect("one-shot model"),
        std::fs::read(served.join("model.safetensors")).expect("served model"),
        "the model differs from an uninterrupted run's"
    );
    // Round 3 was decrypted once, before the crash; the restarted key holder answered the
    // identical request from its record, and the job's key is gone now.
    let state = std::fs::read_to_string(fed.fed.join("keyholder-state.jsonl")).expect("state");
    assert_eq!(
        state.lines().filter(|l| l.contains("\"round\":3,")).count(),
        1,
        "{state}"
    );
    let keys = get(&second.addrs[0], "/metrics");
    assert!(keys.contains("confide_keyholder_open_jobs 0"), "{keys}");
    for d in [&mut guest, &mut host, &mut coordinator, &mut second] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}
