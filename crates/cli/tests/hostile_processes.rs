//! The hardening issue's attacks against real role processes, measured as the issue states
//! them: a 64 MiB `Unseal` and `Commit` from a node certificate against a key holder and an
//! aggregator under a 3 GiB address-space limit; 1 MiB of empty repeated elements; three
//! 100 MiB `Submit`s from a node outside the job against the coordinator; then a soak of
//! random and boundary requests over every method of every server, from a certificate of
//! every role (members of the job and not). Then the job runs to its end and still reaches
//! 111/114.
//!
//! Peak memory is each process's VmHWM (peak resident set) from /proc. The soak's size is
//! `CONFIDE_SOAK_REQUESTS` (default 10,000, about 3 s).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ok, root};
use confide_net::pki::Credentials;
use confide_net::{guard, pb};
use prost::Message as _;
use rand::{Rng, SeedableRng};

/// A role process under a 3 GiB address-space limit, its address, and its log file.
struct Role {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Role {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Role {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -v 3145728 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_confide"))
            .args(args)
            .env("CONFIDE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"));
        let mut child = cmd.spawn().expect("spawn");
        let addr = common::listening_address(&mut child, &log, name);
        Role { child, addr, log }
    }

    /// Peak resident set (kB).
    fn peak_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

fn job_file(dir: &Path, name: &str, scheme: &str) -> PathBuf {
    let text = common::absolute_example_paths(
        &std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example"),
    )
    .replace("scheme = \"paillier\"", &format!("scheme = \"{scheme}\""))
    .replace("round_timeout_secs = 60.0", "round_timeout_secs = 300.0")
        // A job's own bound on one update: breast_homo's are a few kB. Every method's limit
        // derives from it, so the soak's memory bound below is tight.
        + "\n[limits]\nmax_message_bytes = 1048576\n";
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn attacks_on_role_processes_are_refused_cheaply_and_the_job_still_trains() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let fed = d.join("fed");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let fed_s = s(&fed);
    ok(&["ca", "init", "--dir", &fed_s, "--federation", "t"]);
    for (name, role) in [
        ("coordinator", "coordinator"),
        ("keyholder", "keyholder"),
        ("owner", "model-owner"),
        ("guest", "node"),
        ("host", "node"),
        ("outsider", "node"),
        ("aggregator-1", "aggregator"),
    ] {
        ok(&[
            "ca", "issue", "--dir", &fed_s, "--name", name, "--role", role,
        ]);
    }
    let job = job_file(d, "job.toml", "paillier");
    let shares = job_file(d, "shares.toml", "shares");
    let manifest = d.join("job.manifest.json");
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
        ok(&[
            "job",
            "approve",
            "--manifest",
            &s(&manifest),
            "--key",
            &s(&fed.join(format!("{owner}.key"))),
        ]);
    }
    let key = root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json");
    let vk = d.join("verify-key.hex");
    std::fs::write(&vk, "07".repeat(32)).expect("write");

    let mut kh = Role::start(
        d,
        "keyholder",
        &[
            "keyholder",
            "--config",
            &s(&job),
            "--fed",
            &fed_s,
            "--key",
            &s(&key),
        ],
    );
    let mut ag = Role::start(
        d,
        "aggregator",
        &[
            "aggregator",
            "--config",
            &s(&shares),
            "--fed",
            &fed_s,
            "--index",
            "1",
            "--verify-key",
            &s(&vk),
        ],
    );
    let release = d.join("release");
    let audit = d.join("audit.redb");
    let mut co = Role::start(
        d,
        "coordinator",
        &[
            "coordinator",
            "--config",
            &s(&job),
            "--fed",
            &fed_s,
            "--keyholder",
            &kh.addr,
            "--manifest",
            &s(&manifest),
            "--audit-store",
            &s(&audit),
            "--out",
            &s(&release),
            "--linger-secs",
            "2",
        ],
    );

    let idle = [kh.peak_kb(), ag.peak_kb(), co.peak_kb()];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let creds = |n: &str| Credentials::load(&fed, n).expect("creds");
        let channel = |addr: &str, server: &str, party: &str| {
            let (addr, server, c) = (addr.to_string(), server.to_string(), creds(party));
            async move {
                confide_net::transport::connect(&addr, &server, &c)
                    .await
                    .expect("connect")
            }
        };
        let wait = Duration::from_secs(30);

        // 1. 64 MiB Unseal and Commit from a node certificate.
        let big = confide_net::raw::long_field(2, 64 << 20);
        for (role, addr, server, service, method) in [
            (&kh, kh.addr.clone(), "keyholder", "confide.v1.KeyHolder", "Unseal"),
            (&ag, ag.addr.clone(), "aggregator-1", "confide.v1.Aggregator", "Commit"),
            (&ag, ag.addr.clone(), "aggregator-1", "confide.v1.Aggregator", "Prepare"),
        ] {
            let before = role.peak_kb();
            let ch = channel(&addr, server, "guest").await;
            let err = confide_net::raw::call(&ch, service, method, big.clone(), wait)
                .await
                .expect_err("refused");
            let after = role.peak_kb();
            eprintln!(
                "64 MiB {method} from a node to the {server}: {:?} `{}`; peak memory {before} kB -> {after} kB (+{} kB)",
                err.code(),
                err.message(),
                after - before
            );
            assert!(err.message().starts_with("NET-001"), "{}", err.message());
            assert!(after - before < 16 << 10, "+{} kB", after - before);
        }
        // 1 MiB of empty relayed contributions (within the size limit) from the coordinator's
        // own certificate: 524,288 elements, ~70 MB once decoded.
        let empties = pb::UnsealRequest {
            round: 1,
            contributions: vec![pb::RelayedContribution::default(); 1 << 19],
        }
        .encode_to_vec();
        let before = kh.peak_kb();
        let ch = channel(&kh.addr, "keyholder", "coordinator").await;
        let err = confide_net::raw::call(&ch, "confide.v1.KeyHolder", "Unseal", empties, wait)
            .await
            .expect_err("refused");
        let after = kh.peak_kb();
        eprintln!(
            "1 MiB of empty contributions to the key holder: `{}`; peak memory +{} kB",
            err.message(),
            after - before
        );
        assert!(err.message().starts_with("NET-004"), "{}", err.message());
        assert!(after - before < 16 << 10, "+{} kB", after - before);

        // 2. Three 100 MiB Submits from a node outside the job.
        let (log_before, audit_before) = (co.log_bytes(), std::fs::metadata(&audit).expect("audit").len());
        let mut outsider = pb::coordinator_client::CoordinatorClient::new(
            channel(&co.addr, "coordinator", "outsider").await,
        )
        .max_encoding_message_size(usize::MAX);
        let started = std::time::Instant::now();
        for _ in 0..3 {
            let err = outsider
                .submit(pb::SubmitRequest {
                    contribution: Some(pb::Contribution {
                        owner: "O".repeat(100 << 20),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect_err("refused");
            assert!(err.message().len() <= 1024, "{} bytes", err.message().len());
        }
        let grown_log = co.log_bytes() - log_before;
        let grown_audit = std::fs::metadata(&audit).expect("audit").len() - audit_before;
        eprintln!(
            "three 100 MiB Submits in {:.1} s: coordinator stderr +{grown_log} B, audit store +{grown_audit} B",
            started.elapsed().as_secs_f64()
        );
        assert!(grown_log < 64 << 10 && grown_audit < 64 << 10);
        let mut guest = pb::coordinator_client::CoordinatorClient::new(
            channel(&co.addr, "coordinator", "guest").await,
        )
        .max_decoding_message_size(usize::MAX);
        let export = guest
            .export_audit(pb::ExportAuditRequest {})
            .await
            .expect("ExportAudit still works")
            .into_inner();
        eprintln!("ExportAudit: {} bytes", export.log_file.len());

        // 4. The soak.
        let load = |p: &Path| {
            confide_core::JobConfig::parse(&std::fs::read_to_string(p).expect("job"))
                .expect("valid")
                .spec()
        };
        let revocations = creds("guest").revocations;
        let servers = [
            (co.addr.clone(), "coordinator", guard::coordinator(&load(&job), revocations.clone())),
            (kh.addr.clone(), "keyholder", guard::keyholder(&load(&job), revocations.clone())),
            (ag.addr.clone(), "aggregator-1", guard::aggregator(&load(&shares), revocations)),
        ];
        soak(&fed, &servers).await;
    });
    for ((role, name), idle) in [
        (&kh, "key holder"),
        (&ag, "aggregator"),
        (&co, "coordinator"),
    ]
    .into_iter()
    .zip(idle)
    {
        let peak = role.peak_kb();
        eprintln!("{name}: idle peak {idle} kB, peak after the attacks and the soak {peak} kB");
        // Twice idle plus the job's largest valid request (an Unseal of two owners' 1 MiB
        // updates, ~2.1 MiB) held twice, as bytes and decoded: 8 MiB.
        assert!(peak < 2 * idle + 8 * 1024, "{name}: {peak} kB");
    }
    assert!(
        kh.alive() && ag.alive() && co.alive(),
        "every server survived"
    );

    // 5. The job itself.
    let data = root().join("data/breast_homo");
    let nodes: Vec<Child> = [
        ("guest", "breast_homo_guest.csv"),
        ("host", "breast_homo_host.csv"),
    ]
    .into_iter()
    .map(|(name, file)| {
        Command::new(env!("CARGO_BIN_EXE_confide"))
            .args([
                "node",
                "--fed",
                &fed_s,
                "--name",
                name,
                "--coordinator",
                &co.addr,
                "--data",
                &s(&data.join(file)),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join(format!("node-{name}.log"))).expect("log"))
            .spawn()
            .expect("node")
    })
    .collect();
    for mut n in nodes {
        assert!(n.wait().expect("node").success());
    }
    let status = co.child.wait().expect("coordinator");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(release.join("coordinator-report.json")).expect("report"),
    )
    .expect("json");
    let last = &report["history"][report["rounds"].as_u64().expect("rounds") as usize - 1];
    eprintln!(
        "the job after the attacks: {} rounds, {}/114 correct; refusals {}",
        report["rounds"], last["test_correct"], report["refusals"]
    );
    assert!(status.success(), "{report}");
    assert!(
        report["refusals"]["NET-001"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(
        last["test_correct"].as_u64().expect("correct") >= 111,
        "{last}"
    );
}

/// Random and boundary requests (`CONFIDE_SOAK_REQUESTS`, default 10,000) to random methods of
/// `servers` (address, TLS name, the guard whose table lists its methods) from every party:
/// each is answered, with a capped message when refused.
async fn soak(fed: &Path, servers: &[(String, &'static str, guard::Guard)]) {
    let requests: usize = std::env::var("CONFIDE_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let parties = [
        "coordinator",
        "keyholder",
        "owner",
        "guest",
        "host",
        "outsider",
        "aggregator-1",
    ];
    let mut channels = std::collections::HashMap::new();
    for (addr, server, _) in servers {
        for p in parties {
            let creds = Credentials::load(fed, p).expect("creds");
            let ch = confide_net::transport::connect(addr, server, &creds)
                .await
                .expect("connect");
            channels.insert((*server, p), ch);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let mut answers: std::collections::BTreeMap<String, u64> = Default::default();
    let started = std::time::Instant::now();
    for _ in 0..requests {
        let (_, server, guard) = &servers[rng.gen_range(0..servers.len())];
        let methods = guard.methods();
        let (method, rule) = &methods[rng.gen_range(0..methods.len())];
        let party = parties[rng.gen_range(0..parties.len())];
        // An owner's own withdrawal is its right, not an attack (the job needs both);
        // Watch is a stream.
        if (method == "Withdraw" && (party == "guest" || party == "host")) || method == "Watch" {
            continue;
        }
        let body = confide_net::raw::hostile_body(&mut rng, rule.max_bytes());
        let r = confide_net::raw::call(
            &channels[&(*server, party)],
            guard.service(),
            method,
            body,
            Duration::from_secs(2),
        )
        .await;
        if let Err(e) = &r {
            let len = e.message().len();
            assert!(len <= 1040, "{server}/{method}: {len} bytes");
        }
        let key = r.map_or_else(|e| format!("{:?}", e.code()), |_| "Ok".into());
        *answers.entry(key).or_default() += 1;
    }
    eprintln!(
        "soak: {requests} requests in {:.1} s: {answers:?}",
        started.elapsed().as_secs_f64()
    );
}
