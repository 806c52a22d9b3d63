//! Hostile and broken updates against a real coordinator and key holder over gRPC + mTLS: each
//! is refused with its numbered rule, counted, and the round still completes with the honest
//! contributions (the coordinator's state stays consistent).

mod common;

use std::time::Duration;

use confide_crypto::FixedPoint;
use confide_net::coordinator::{fixed_point, scheme_params};
use confide_net::pb;
use confide_net::pki::Credentials;
use confide_net::roles::{CoordinatorRole, run_coordinator, serve_keyholder};
use confide_net::transport::connect;
use confide_secagg::{
    AggregationClient, PaillierClient, Reject, SchemeParams, Unsigned, model_digest,
    sign_contribution,
};
use tokio::net::TcpListener;

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

struct Owner {
    client: Client,
    key: confide_crypto::SigningKey,
    digest: [u8; 32],
}

/// What to send: who it claims to be from, for which round and model, and whether to flip a
/// payload bit after signing.
struct Send<'a> {
    owner: &'a str,
    round: u32,
    model: [u8; 32],
    payload: Vec<u8>,
    tamper: bool,
}

impl Owner {
    async fn submit(&mut self, s: Send<'_>) -> pb::SubmitReply {
        let u = Unsigned {
            owner: s.owner.into(),
            round: s.round,
            stage: 0,
            model_digest: s.model,
            payload: s.payload,
        };
        let mut c = sign_contribution(&self.key, &self.digest, u);
        if s.tamper {
            let last = c.payload.len() - 1;
            c.payload[last] ^= 0x01;
        }
        self.client
            .submit(pb::SubmitRequest {
                privacy: None,
                contribution: Some(confide_net::wire::to_pb(c)),
                ..Default::default()
            })
            .await
            .expect("rpc")
            .into_inner()
    }
}

fn rejected(r: &pb::SubmitReply, reason: Reject) {
    assert!(!r.accepted, "expected {reason:?}, was accepted");
    assert_eq!(
        r.reject_code, reason as u32,
        "expected {reason:?}: {}",
        r.detail
    );
    assert!(r.detail.contains(&reason.rule()), "{}", r.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_updates_are_refused_by_rule_and_rounds_complete() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    common::federation(&fed, &["guest", "host"]);
    let spec = common::breast_homo_spec(&[
        ("rounds = 80", "rounds = 2"),
        ("round_timeout_secs = 60.0", "round_timeout_secs = 30.0"),
    ]);

    let kh_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let kh_creds = Credentials::load(&fed, "keyholder").expect("creds");
    let kh_spec = spec.clone();
    let kh_addr = kh_listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        serve_keyholder(
            kh_listener,
            &kh_creds,
            &kh_spec,
            common::test_key(),
            (None, None),
            std::future::pending(),
        )
        .await
    });
    let co_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let co_addr = co_listener.local_addr().expect("addr").to_string();
    let role = CoordinatorRole {
        creds: Credentials::load(&fed, "coordinator").expect("creds"),
        spec: spec.clone(),
        eval: None,
        keyholder: Some(kh_addr),
        aggregators: Vec::new(),
        linger: Duration::from_millis(10),
        manifest: common::manifest(&fed, &spec),
        audit_store: None,
        audit_export: Some(dir.path().join("audit.json")),
    };
    let coordinator = tokio::spawn(run_coordinator(co_listener, role));

    let mut owners = Vec::new();
    let mut pk = None;
    for name in ["guest", "host"] {
        let creds = Credentials::load(&fed, name).expect("creds");
        let mut client = Client::new(
            connect(&co_addr, "coordinator", &creds)
                .await
                .expect("connect"),
        );
        let join = client
            .join(pb::JoinRequest {})
            .await
            .expect("join")
            .into_inner();
        common::approve(&mut client, &join, &creds).await;
        if pk.is_none() {
            let ch = connect(&join.keyholder_endpoint, "keyholder", &creds)
                .await
                .expect("kh");
            let reply = pb::key_holder_client::KeyHolderClient::new(ch)
                .get_public_key(pb::PublicKeyRequest::default())
                .await
                .expect("pk");
            let published = confide_secagg::HolderPublicKey::parse(
                spec.job.scheme,
                &reply.into_inner().public_key_json,
                &scheme_params(&spec, fixed_point(&spec).expect("fp")),
                spec.modulus_bits,
            )
            .expect("pk");
            let confide_secagg::HolderPublicKey::Paillier(key) = published else {
                panic!("the job is paillier")
            };
            pk = Some(key);
        }
        let digest: [u8; 32] = join.job_digest.try_into().expect("32 bytes");
        owners.push(Owner {
            client,
            key: creds.signing_key().expect("key"),
            digest,
        });
    }
    let pk = pk.expect("public key");
    let fixed: FixedPoint = fixed_point(&spec).expect("fp");
    let params: SchemeParams = scheme_params(&spec, fixed);
    let update = |seed: u8| -> Vec<u8> {
        let mut c = PaillierClient::new(pk.clone(), &params, [seed; 32]).expect("client");
        c.start(&vec![fixed.encode(0.01); params.len])
            .expect("protect")
    };
    let mut round1 = None;

    for round in 1..=2u32 {
        let task = owners[0]
            .client
            .next_round(pb::NextRoundRequest {
                witnessed_size: 0,
                after_round: round - 1,
            })
            .await
            .expect("task")
            .into_inner();
        assert_eq!(task.round, round);
        let model = model_digest(&task.params);
        let good = update(round as u8);
        let g = &mut owners[0];
        let send = |owner, round, model, payload, tamper| Send {
            owner,
            round,
            model,
            payload,
            tamper,
        };
        if round == 1 {
            // UPD-005: a model of another shape (101 parameters need two ciphertexts, the job one).
            let wrong = SchemeParams {
                len: 101,
                ..params.clone()
            };
            let mut c = PaillierClient::new(pk.clone(), &wrong, [9; 32]).expect("client");
            let payload = c.start(&vec![0; 101]).expect("protect");
            rejected(
                &g.submit(send("guest", round, model, payload, false)).await,
                Reject::WrongShape,
            );
            // UPD-004: corrupted in transit (one bit flipped after signing).
            rejected(
                &g.submit(send("guest", round, model, good.clone(), true))
                    .await,
                Reject::BadSignature,
            );
            // UPD-007: a corrupted ciphertext, validly signed (zero is not a unit mod N²).
            let mut zero = good.clone();
            zero[4..].fill(0);
            rejected(
                &g.submit(send("guest", round, model, zero, false)).await,
                Reject::Malformed,
            );
            // UPD-006: oversized.
            let mut big = good.clone();
            big.extend(vec![7u8; 1 << 20]);
            rejected(
                &g.submit(send("guest", round, model, big, false)).await,
                Reject::Oversized,
            );
            // UPD-003: guest signing in host's name.
            rejected(
                &g.submit(send("host", round, model, good.clone(), false))
                    .await,
                Reject::NotAnOwner,
            );
            // UPD-001: a contribution made for another round.
            rejected(
                &g.submit(send("guest", round + 5, model, good.clone(), false))
                    .await,
                Reject::WrongRound,
            );
            // UPD-010: trained from another model than this round's.
            rejected(
                &g.submit(send("guest", round, [1; 32], good.clone(), false))
                    .await,
                Reject::StaleModel,
            );
            round1 = Some((model, good.clone()));
        } else {
            // UPD-001: round 1's contribution replayed into round 2.
            let (m1, p1) = round1.clone().expect("round 1");
            rejected(
                &g.submit(send("guest", 1, m1, p1, false)).await,
                Reject::WrongRound,
            );
        }
        let r = g
            .submit(send("guest", round, model, good.clone(), false))
            .await;
        assert!(r.accepted, "{}", r.detail);
        // RES-007: the same bytes again (an owner that did not hear the answer) are answered
        // as accepted and change nothing: the round's sum below counts guest once.
        let again = g.submit(send("guest", round, model, good, false)).await;
        assert!(again.accepted, "{}", again.detail);
        // UPD-002: another update from the same owner in the same round.
        rejected(
            &g.submit(send(
                "guest",
                round,
                model,
                update(200 + round as u8),
                false,
            ))
            .await,
            Reject::Duplicate,
        );
        let h = &mut owners[1];
        let r = h
            .submit(send("host", round, model, update(100 + round as u8), false))
            .await;
        assert!(r.accepted, "host: {}", r.detail);
    }
    let end = owners[0]
        .client
        .next_round(pb::NextRoundRequest {
            after_round: 2,
            witnessed_size: 0,
        })
        .await
        .expect("end")
        .into_inner();
    assert_eq!(end.state, pb::JobState::Finished as i32, "{}", end.message);

    let (report, params_out) = coordinator.await.expect("join").expect("coordinator");
    assert_eq!(report.status, "finished", "{}", report.message);
    assert_eq!(report.rounds, 2);
    for r in &report.history {
        assert_eq!(r.contributors, vec!["guest", "host"]);
    }
    // Both owners sent +0.01 everywhere twice: the model moved by exactly that, up to fixed point.
    for p in &params_out {
        assert!((p - 0.02).abs() < 1e-6, "{p}");
    }
    let expect = [
        ("wrong_shape", 1),
        ("bad_signature", 1),
        ("malformed", 1),
        ("oversized", 1),
        ("not_an_owner", 1),
        ("wrong_round", 2),
        ("stale_model", 1),
        ("duplicate", 2),
    ];
    for (name, n) in expect {
        assert_eq!(
            report.rejections.get(name).copied(),
            Some(n),
            "{name}: {:?}",
            report.rejections
        );
    }
    assert_eq!(report.rejections.values().sum::<u64>(), 10);

    // Each owner's signed contribution record, in the exported log: guest's connection sent
    // every refused contribution, host none; both were summed in rounds 1 and 2.
    let bytes = std::fs::read(dir.path().join("audit.json")).expect("exported log");
    let log = confide_governance::audit::verify_export(&bytes, None).expect("verifies");
    let mut records = std::collections::BTreeMap::new();
    let mut count = 0;
    for entry in &log.log.entries {
        let event: confide_governance::audit::Event =
            serde_json::from_value(entry.clone()).expect("event");
        if event.kind == confide_governance::audit::EventKind::Contribution {
            let signed: confide_governance::contribution::SignedContribution =
                serde_json::from_value(event.detail).expect("record");
            let record = signed.verify().expect("signed by the coordinator").clone();
            assert_eq!(record.author.public_key, log.log.log_public_key);
            records.insert(record.owner.clone(), record);
            count += 1;
        }
    }
    assert_eq!((records.len(), count), (2, 2), "one record per owner, once");
    for r in records.values() {
        assert_eq!(
            (r.rounds.clone(), r.rounds_run),
            (vec![1, 2], 2),
            "{}",
            r.owner
        );
    }
    let guest = &records["guest"].refused;
    assert_eq!(guest.values().sum::<u64>(), 10, "{guest:?}");
    assert_eq!(guest.get(&Reject::Duplicate.rule()), Some(&2));
    assert_eq!(guest.get(&Reject::WrongRound.rule()), Some(&2));
    assert!(records["host"].refused.is_empty());
}
