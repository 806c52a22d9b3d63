//! Hostile input against the role servers (the hardening issue): every method refuses an
//! unauthorised role before reading its body, sizes and repeated fields are bounded before
//! decoding, peer strings never flood the audit log or replies, and only a job's admitted
//! owners and recipients see its rounds. The soak of random requests against role processes,
//! with peak memory and a valid job afterwards, is `crates/cli/tests/hostile_processes.rs`.

mod common;

use std::time::Duration;

use confide_core::{JobSpec, Role};
use confide_net::coordinator::JobReport;
use confide_net::guard::{self, Guard, MAX_STATUS_MESSAGE};
use confide_net::pb;
use confide_net::pki::{self, Credentials};
use confide_net::raw::long_field;
use confide_net::roles::{CoordinatorRole, run_coordinator, serve_aggregator, serve_keyholder};
use confide_net::transport::connect;
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::{Code, Status};

/// Sends `body` to `/{service}/{method}`; long polls get 3 s.
async fn raw_call(
    channel: &tonic::transport::Channel,
    service: &str,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    confide_net::raw::call(channel, service, method, body, Duration::from_secs(3)).await
}

/// The servers of one job, with the guards that protect them.
struct Servers {
    fed: std::path::PathBuf,
    /// (server name for TLS, address, guard)
    endpoints: Vec<(&'static str, String, Guard)>,
    coordinator:
        tokio::task::JoinHandle<Result<(JobReport, Vec<f32>), confide_net::transport::NetError>>,
    _dir: tempfile::TempDir,
}

/// The parties of the test federation: the job's owners, an outsider node, a model owner who
/// is not a recipient, and every other role.
const PARTIES: &[&str] = &[
    "guest",
    "host",
    "outsider",
    "owner",
    "snoop",
    "coordinator",
    "keyholder",
    "aggregator-1",
];

fn spec(rounds: u32) -> JobSpec {
    let mut spec = common::breast_homo_spec(&[
        ("round_timeout_secs = 60.0", "round_timeout_secs = 600.0"),
        ("rounds = 80", &format!("rounds = {rounds}")),
    ]);
    // Small enough that every limit can be exceeded cheaply in a test.
    spec.limits.max_message_bytes = 256 << 10;
    spec
}

async fn start() -> Servers {
    start_with(80).await
}

async fn start_with(rounds: u32) -> Servers {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    common::federation(&fed, &["guest", "host", "outsider"]);
    let now = time::OffsetDateTime::now_utc();
    pki::issue(&fed, "snoop", Role::ModelOwner, now).expect("issue");
    pki::issue(&fed, "aggregator-1", Role::Aggregator, now).expect("issue");
    let spec = spec(rounds);

    let kh = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let kh_addr = kh.local_addr().expect("addr").to_string();
    let kh_creds = Credentials::load(&fed, "keyholder").expect("creds");
    let (kh_spec, kh_guard) = (
        spec.clone(),
        guard::keyholder(&spec, kh_creds.revocations.clone()),
    );
    tokio::spawn(async move {
        serve_keyholder(
            kh,
            &kh_creds,
            &kh_spec,
            common::test_key(),
            (None, None),
            std::future::pending(),
        )
        .await
    });

    // An aggregator of a `shares` job over the same owners.
    let mut shares = spec.clone();
    shares.job.scheme = confide_core::SchemeKind::Shares;
    let ag = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ag_addr = ag.local_addr().expect("addr").to_string();
    let ag_creds = Credentials::load(&fed, "aggregator-1").expect("creds");
    let ag_guard = guard::aggregator(&shares, ag_creds.revocations.clone());
    tokio::spawn(async move {
        serve_aggregator(
            ag,
            &ag_creds,
            &shares,
            0,
            Some([7; 32]),
            confide_net::aggregator::Chaos::default(),
            std::future::pending(),
        )
        .await
    });

    let co = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let co_addr = co.local_addr().expect("addr").to_string();
    let co_creds = Credentials::load(&fed, "coordinator").expect("creds");
    let co_guard = guard::coordinator(&spec, co_creds.revocations.clone());
    let mut manifest = common::manifest(&fed, &spec);
    for owner in ["guest", "host"] {
        let id =
            confide_governance::identity::Identity::load(&fed.join(format!("{owner}.key")), None)
                .expect("key");
        manifest.approve(&id).expect("co-sign");
    }
    let eval = confide_net::node::load_job_data(
        &spec,
        &common::repo_root().join("data/breast_homo/breast_homo_test.csv"),
    )
    .expect("test set");
    let role = CoordinatorRole {
        creds: co_creds,
        spec: spec.clone(),
        eval: Some(eval),
        keyholder: Some(kh_addr.clone()),
        aggregators: Vec::new(),
        linger: Duration::from_secs(5),
        manifest,
        audit_store: None,
        audit_export: None,
    };
    let coordinator = tokio::spawn(run_coordinator(co, role));

    // The long-running coordinator's control port, on an empty job store.
    let ctl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ctl_addr = ctl.local_addr().expect("addr").to_string();
    let ctl_creds = Credentials::load(&fed, "coordinator").expect("creds");
    let ctl_guard = guard::control(ctl_creds.revocations.clone());
    let store: std::sync::Arc<dyn confide_store::Store> =
        std::sync::Arc::new(confide_store::MemoryStore::new());
    let control = confide_net::control::ControlService::new(
        confide_service::Jobs::new(store),
        ctl_creds.id(),
        ctl_creds.revocations.clone(),
    );
    // Its fleet port: the nodes' `Fleet` service and the routed per-job `Coordinator`.
    let fl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fl_addr = fl.local_addr().expect("addr").to_string();
    let fleet = confide_net::fleet::FleetService::new(
        control.clone(),
        ctl_creds.cert_der().expect("certificate"),
    );
    let fl_guard = fleet.guard();
    let routes = control.routes().clone();
    let fl_creds = ctl_creds.clone();
    tokio::spawn(async move {
        confide_net::roles::serve_fleet(fl, &fl_creds, fleet, routes, std::future::pending()).await
    });
    tokio::spawn(async move {
        confide_net::roles::serve_control(ctl, &ctl_creds, control, std::future::pending()).await
    });
    // A long-running key holder (`confide keyholder serve`), with no open job.
    let khd = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let khd_addr = khd.local_addr().expect("addr").to_string();
    let khd_creds = Credentials::load(&fed, "keyholder").expect("creds");
    let khd_guard = confide_net::keyholders::guard(khd_creds.revocations.clone());
    let khd_jobs = confide_net::keyholders::KeyHolderJobs::new(
        khd_creds.clone(),
        std::sync::Arc::new(confide_store::MemoryStore::new()),
        &[5; 32],
        dir.path().join("keyholder-daemon-state.jsonl"),
        confide_net::keyholders::KeySource::Fresh,
    );
    tokio::spawn(async move {
        confide_net::roles::serve_keyholder_daemon(
            khd,
            &khd_creds,
            khd_jobs,
            std::future::pending(),
        )
        .await
    });
    // A long-running aggregator (`confide aggregator serve`), with no open job.
    let agd = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agd_addr = agd.local_addr().expect("addr").to_string();
    let agd_creds = Credentials::load(&fed, "aggregator-1").expect("creds");
    let agd_guard = confide_net::aggregators::guard(agd_creds.revocations.clone());
    let agd_jobs = confide_net::aggregators::AggregatorJobs::new(
        agd_creds.clone(),
        0,
        Some([6; 32]),
        std::sync::Arc::new(confide_store::MemoryStore::new()),
        &[9; 32],
    );
    tokio::spawn(async move {
        confide_net::roles::serve_aggregator_daemon(
            agd,
            &agd_creds,
            agd_jobs,
            std::future::pending(),
        )
        .await
    });
    Servers {
        fed,
        endpoints: vec![
            ("coordinator", co_addr, co_guard),
            ("keyholder", kh_addr, kh_guard),
            ("aggregator-1", ag_addr, ag_guard),
            // Served with the coordinator's certificate (its TLS name is `coordinator`).
            ("control", ctl_addr, ctl_guard),
            ("fleet", fl_addr, fl_guard),
            ("keyholder-daemon", khd_addr, khd_guard),
            ("aggregator-daemon", agd_addr, agd_guard),
        ],
        coordinator,
        _dir: dir,
    }
}

impl Servers {
    fn creds(&self, party: &str) -> Credentials {
        Credentials::load(&self.fed, party).expect("creds")
    }

    async fn channel(&self, server: &str, party: &str) -> tonic::transport::Channel {
        let (name, addr, _) = self
            .endpoints
            .iter()
            .find(|(n, _, _)| *n == server)
            .expect("server");
        let tls_name = match *name {
            "control" | "fleet" => "coordinator",
            "keyholder-daemon" => "keyholder",
            "aggregator-daemon" => "aggregator-1",
            other => other,
        };
        // The coordinator may still be fetching the key holder's key: retry briefly.
        for _ in 0..100 {
            if let Ok(ch) = connect(addr, tls_name, &self.creds(party)).await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot reach {server}");
    }

    fn coordinator_client(
        ch: tonic::transport::Channel,
    ) -> pb::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
        pb::coordinator_client::CoordinatorClient::new(ch)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    async fn audit_bytes(&self) -> usize {
        let mut c = Self::coordinator_client(self.channel("coordinator", "guest").await);
        c.export_audit(pb::ExportAuditRequest {})
            .await
            .expect("export works")
            .into_inner()
            .log_file
            .len()
    }
}

fn role_of(party: &str) -> Role {
    match party {
        "guest" | "host" | "outsider" => Role::Node,
        "owner" | "snoop" => Role::ModelOwner,
        "coordinator" => Role::Coordinator,
        "keyholder" => Role::KeyHolder,
        _ => Role::Aggregator,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_an_unauthorised_role_before_reading_its_body() {
    let s = start().await;
    let (mut checked, mut on_control) = (0, 0);
    for (server, _, guard) in &s.endpoints {
        for (method, rule) in guard.methods() {
            for party in PARTIES {
                if rule.roles().contains(&role_of(party)) {
                    continue;
                }
                // A body over the method's limit: a server that decoded before checking the
                // role would answer about the size (or the content), not the role.
                let body = long_field(15, rule.max_bytes() + 1024);
                let ch = s.channel(server, party).await;
                let err = raw_call(&ch, guard.service(), &method, body)
                    .await
                    .expect_err("refused");
                assert_eq!(
                    err.code(),
                    Code::PermissionDenied,
                    "{server}/{method} {party}: {err:?}"
                );
                assert!(
                    err.message().starts_with("NET-001"),
                    "{server}/{method} {party}: {}",
                    err.message()
                );
                checked += 1;
                on_control += usize::from(*server == "control");
            }
        }
    }
    assert!(checked > 40, "{checked} refusals checked");
    assert!(on_control > 10, "{on_control} refusals on the control port");
    let stats = s.endpoints[0].2.stats().by_rule();
    eprintln!("checked {checked} (method, role) refusals; coordinator: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_unseal_or_commit_is_refused_from_its_length_prefix() {
    let s = start().await;
    for (server, method) in [
        ("keyholder", "Unseal"),
        ("aggregator-1", "Commit"),
        ("aggregator-1", "Prepare"),
    ] {
        let (_, _, guard) = s
            .endpoints
            .iter()
            .find(|(n, _, _)| *n == server)
            .expect("server");
        let limit = guard
            .methods()
            .into_iter()
            .find(|(m, _)| m == method)
            .expect("method")
            .1
            .max_bytes();
        let ch = s.channel(server, "coordinator").await;
        let err = raw_call(&ch, guard.service(), method, long_field(15, limit + 1))
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "{server}/{method}: {err:?}"
        );
        assert!(err.message().starts_with("NET-003"), "{}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_empty_contributions_are_counted_before_they_are_decoded() {
    let s = start().await;
    // 100,000 empty relayed contributions: 200 kB on the wire, ~13 MB once decoded.
    let many = pb::UnsealRequest {
        round: 1,
        contributions: vec![pb::RelayedContribution::default(); 100_000],
    }
    .encode_to_vec();
    for (server, method) in [("keyholder", "Unseal"), ("aggregator-1", "Prepare")] {
        let (_, _, guard) = s
            .endpoints
            .iter()
            .find(|(n, _, _)| *n == server)
            .expect("server");
        let ch = s.channel(server, "coordinator").await;
        let err = raw_call(&ch, guard.service(), method, many.clone())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::ResourceExhausted, "{server}: {err:?}");
        assert!(err.message().starts_with("NET-004"), "{}", err.message());
    }
    // The same for the rows of a Commit.
    let rows = pb::FinishRequest {
        round: 1,
        rows: vec![pb::FinishRow::default(); 50_000],
        ..Default::default()
    }
    .encode_to_vec();
    let ch = s.channel("aggregator-1", "coordinator").await;
    let err = raw_call(&ch, "confide.v1.Aggregator", "Commit", rows)
        .await
        .expect_err("refused");
    assert!(err.message().starts_with("NET-004"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_cannot_fetch_a_running_jobs_round_model() {
    let s = start().await;
    let mut outsider = Servers::coordinator_client(s.channel("coordinator", "outsider").await);
    let err = outsider
        .next_round(pb::NextRoundRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("NET-007"), "{}", err.message());
    let err = outsider
        .next_stage(pb::NextStageRequest::default())
        .await
        .expect_err("refused");
    assert!(err.message().starts_with("NET-007"), "{}", err.message());
    // An owner of the job that has not approved it yet is not admitted either.
    let mut guest = Servers::coordinator_client(s.channel("coordinator", "guest").await);
    let err = guest
        .next_round(pb::NextRoundRequest::default())
        .await
        .expect_err("refused");
    assert!(err.message().starts_with("NET-007"), "{}", err.message());
    s.coordinator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_owner_who_is_not_a_recipient_cannot_watch_the_metrics() {
    let s = start().await;
    let mut snoop = Servers::coordinator_client(s.channel("coordinator", "snoop").await);
    let err = snoop.watch(pb::WatchRequest {}).await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("NET-008"), "{}", err.message());
    // Nor end the coordinator's wait for the recipients by acknowledging the model.
    let err = snoop
        .ack_model(pb::AckModelRequest {})
        .await
        .expect_err("refused");
    assert!(err.message().starts_with("NET-008"), "{}", err.message());
    let err = snoop
        .fetch_model(pb::FetchModelRequest {})
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut owner = Servers::coordinator_client(s.channel("coordinator", "owner").await);
    owner
        .watch(pb::WatchRequest {})
        .await
        .expect("a recipient may watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_strings_do_not_flood_the_audit_log_or_the_replies() {
    let s = start().await;
    let before = s.audit_bytes().await;
    // Three Submits naming a 32 MiB owner, from a node outside the job.
    let mut outsider = Servers::coordinator_client(s.channel("coordinator", "outsider").await);
    for _ in 0..3 {
        let huge = pb::SubmitRequest {
            contribution: Some(pb::Contribution {
                owner: "PATIENT".repeat(32 << 20 >> 3),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = outsider.submit(huge).await.expect_err("refused");
        assert!(
            err.message().len() <= MAX_STATUS_MESSAGE,
            "{} bytes",
            err.message().len()
        );
        assert!(
            err.message().starts_with("NET-003") || err.message().starts_with("NET-004"),
            "{}",
            err.message()
        );
    }
    // A 250-byte owner name (within the field's cap) is refused with an excerpt of it.
    let reply = outsider
        .submit(pb::SubmitRequest {
            contribution: Some(pb::Contribution {
                owner: "\u{1b}[31m".to_string() + &"x".repeat(240),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("answered")
        .into_inner();
    assert!(!reply.accepted);
    assert!(
        reply.detail.len() < 300 && !reply.detail.contains('\u{1b}'),
        "{}",
        reply.detail
    );
    // A hundred joins and forty refused joins.
    let mut guest = Servers::coordinator_client(s.channel("coordinator", "guest").await);
    for _ in 0..100 {
        guest.join(pb::JoinRequest {}).await.expect("join");
    }
    for _ in 0..40 {
        outsider
            .join(pb::JoinRequest {})
            .await
            .expect_err("not an owner");
    }
    // A withdrawal reason at its field's cap is kept as an excerpt.
    // Repeated a hundred times: once out of the job, a withdrawal changes and logs nothing.
    let mut host = Servers::coordinator_client(s.channel("coordinator", "host").await);
    for _ in 0..100 {
        host.withdraw(pb::WithdrawRequest {
            reason: "R".repeat(2000),
            kind: "x".repeat(32),
            statement_json: String::new(),
        })
        .await
        .expect("withdraw");
    }
    let grown = s.audit_bytes().await.saturating_sub(before);
    eprintln!("audit log grew by {grown} bytes");
    assert!(grown < 16 << 10, "the audit log grew by {grown} bytes");
    s.coordinator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_model_waits_for_the_report_once_the_rounds_have_ended() {
    use confide_net::coordinator::{fixed_point, scheme_params};
    use confide_secagg::AggregationClient as _;
    let s = start_with(1).await;
    // guest runs a whole node; host contributes to the one round by hand and then never
    // cosigns the final head, so the coordinator waits (up to 10 s) for it before its report.
    let guest = tokio::spawn(confide_net::node::run_node(
        confide_net::node::NodeOptions {
            job: None,
            approval: None,
            creds: s.creds("guest"),
            coordinator: s.endpoints[0].1.clone(),
            data: common::repo_root().join("data/breast_homo/breast_homo_guest.csv"),
            crash_after_round: None,
            crash_after_stage: None,
            ledger: None,
            policy: None,
            witness_store: None,
            keyholder_attestation: None,
            approver: None,
            code: None,
        },
    ));
    let host_creds = s.creds("host");
    let mut host = Servers::coordinator_client(s.channel("coordinator", "host").await);
    let join = host
        .join(pb::JoinRequest {})
        .await
        .expect("join")
        .into_inner();
    common::approve(&mut host, &join, &host_creds).await;
    let spec = confide_core::JobSpec::from_wire(&join.job_spec).expect("spec");
    let mut kh = pb::key_holder_client::KeyHolderClient::new(s.channel("keyholder", "host").await);
    let pk_json = kh
        .get_public_key(pb::PublicKeyRequest::default())
        .await
        .expect("key")
        .into_inner()
        .public_key_json;
    let fixed = fixed_point(&spec).expect("fixed point");
    let params = scheme_params(&spec, fixed);
    let Ok(confide_secagg::HolderPublicKey::Paillier(pk)) = confide_secagg::HolderPublicKey::parse(
        spec.job.scheme,
        &pk_json,
        &params,
        spec.modulus_bits,
    ) else {
        panic!("a paillier key")
    };
    let task = host
        .next_round(pb::NextRoundRequest::default())
        .await
        .expect("round 1")
        .into_inner();
    let payload = confide_secagg::PaillierClient::new(pk, &params, [5; 32])
        .expect("client")
        .start(&vec![fixed.encode(0.01); params.len])
        .expect("encrypt");
    let digest: [u8; 32] = join.job_digest.clone().try_into().expect("digest");
    let c = confide_secagg::sign_contribution(
        &host_creds.signing_key().expect("key"),
        &digest,
        confide_secagg::Unsigned {
            owner: "host".into(),
            round: task.round,
            stage: 0,
            model_digest: confide_secagg::model_digest(&task.params),
            payload,
        },
    );
    let reply = host
        .submit(pb::SubmitRequest {
            contribution: Some(confide_net::wire::to_pb(c)),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    assert!(reply.accepted, "{}", reply.detail);
    let summary = guest.await.expect("task").expect("guest");
    assert!(summary.finished, "{}", summary.message);
    // The rounds are over, the report is not written yet: the fetch waits for it.
    let started = std::time::Instant::now();
    let mut owner = Servers::coordinator_client(s.channel("coordinator", "owner").await);
    let release = owner
        .fetch_model(pb::FetchModelRequest {})
        .await
        .expect("the model, once the report is written")
        .into_inner();
    eprintln!(
        "FetchModel answered after {:.1} s with {} parameters",
        started.elapsed().as_secs_f64(),
        release.params.len()
    );
    assert_eq!(release.params.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_port_refuses_a_job_request_that_names_no_job_or_an_unknown_one() {
    let s = start().await;
    let ch = s.channel("fleet", "guest").await;
    let body = pb::JoinRequest {}.encode_to_vec();
    // No `confide-job` metadata: FLEET-001.
    let err = raw_call(&ch, "confide.v1.Coordinator", "Join", body.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("FLEET-001"), "{}", err.message());
    // A job that does not run here: FLEET-002, for any well-formed hash.
    let mut client = pb::coordinator_client::CoordinatorClient::with_interceptor(
        ch.clone(),
        confide_net::fleet::JobHeader::new(Some(&[7; 32])),
    );
    let err = client.join(pb::JoinRequest {}).await.expect_err("refused");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().starts_with("FLEET-002"), "{}", err.message());
    // A decision on a job that does not name the caller is answered as unknown (JOB-005).
    let mut fleet = pb::fleet_client::FleetClient::new(ch);
    let err = fleet
        .decide(pb::DecideRequest {
            manifest_hash: hex::encode([7u8; 32]),
            approve: true,
            rule: String::new(),
            signature: String::new(),
            owner_statement: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().starts_with("JOB-005"), "{}", err.message());
    // A node's heartbeat on an empty store: no offers, and the coordinator's certificate.
    let offers = fleet
        .offers(pb::OffersRequest::default())
        .await
        .expect("offers")
        .into_inner();
    assert!(offers.offers.is_empty());
    assert!(!offers.coordinator_certificate.is_empty());
    // A long-running key holder opens a job only from a manifest whose signatures verify.
    let ch = s.channel("keyholder-daemon", "coordinator").await;
    let mut jobs = pb::key_holder_jobs_client::KeyHolderJobsClient::new(ch.clone());
    let err = jobs
        .open_job(pb::OpenJobRequest {
            manifest_json: "{\"manifest\": 1}".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Its per-job service names a job it does not hold: FLEET-002.
    let mut kh = pb::key_holder_client::KeyHolderClient::with_interceptor(
        ch,
        confide_net::fleet::JobHeader::new(Some(&[9; 32])),
    );
    let err = kh
        .get_public_key(pb::PublicKeyRequest::default())
        .await
        .expect_err("refused");
    assert!(err.message().starts_with("FLEET-002"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_answer_standard_grpc_health() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let s = start().await;
    for (server, party) in [
        ("control", "owner"),
        ("fleet", "guest"),
        ("keyholder-daemon", "coordinator"),
        ("aggregator-daemon", "coordinator"),
    ] {
        let status = HealthClient::new(s.channel(server, party).await)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{server}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{server}");
    }
}
