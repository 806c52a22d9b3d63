//! The key holder over gRPC: who may call Unseal, the certificate checks on relayed
//! contributions (KEY-002), and that its record of decrypted rounds survives a restart (KEY-005).

mod common;

use confide_core::Role;
use confide_net::coordinator::{fixed_point, scheme_params};
use confide_net::pb;
use confide_net::pki::{self, Credentials};
use confide_net::roles::serve_keyholder;
use confide_net::transport::connect;
use confide_secagg::{
    AggregationClient, PaillierClient, Unsigned, model_digest, sign_contribution,
};
use tokio::net::TcpListener;

type KeyHolder = pb::key_holder_client::KeyHolderClient<tonic::transport::Channel>;

async fn start(
    fed: &std::path::Path,
    state: &std::path::Path,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    start_with(fed, state, None).await
}

async fn start_with(
    fed: &std::path::Path,
    state: &std::path::Path,
    attester: Option<confide_attest::dev::DevTee>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let creds = Credentials::load(fed, "keyholder").expect("creds");
    let spec = common::breast_homo_spec(&[]);
    let state = state.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async {
            let _ = rx.await;
        };
        serve_keyholder(
            listener,
            &creds,
            &spec,
            common::test_key(),
            (Some(state), attester),
            stop,
        )
        .await
    });
    (addr, tx)
}

/// A relayed contribution from `signer` (its key signs, `cert` is attached).
fn relayed(
    signer: &Credentials,
    owner: &str,
    cert: Vec<u8>,
    model: [u8; 32],
) -> pb::RelayedContribution {
    let spec = common::breast_homo_spec(&[]);
    let fixed = fixed_point(&spec).expect("fp");
    let params = scheme_params(&spec, fixed);
    let pk = common::test_key().public_key().clone();
    let mut client = PaillierClient::new(pk, &params, [3; 32]).expect("client");
    let payload = client
        .start(&vec![fixed.encode(0.5); params.len])
        .expect("protect");
    let digest = confide_crypto::sha256(&spec.digest_input());
    let c = sign_contribution(
        &signer.signing_key().expect("key"),
        &digest,
        Unsigned {
            owner: owner.into(),
            round: 1,
            stage: 0,
            model_digest: model,
            payload,
        },
    );
    pb::RelayedContribution {
        contribution: Some(confide_net::wire::to_pb(c)),
        owner_certificate: cert,
    }
}

async fn unseal(
    addr: &str,
    as_party: &Credentials,
    cs: Vec<pb::RelayedContribution>,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut kh = KeyHolder::new(connect(addr, "keyholder", as_party).await.expect("connect"));
    kh.unseal(pb::UnsealRequest {
        round: 1,
        contributions: cs,
    })
    .await
    .map(|r| r.into_inner().plaintexts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_holder_checks_callers_certificates_and_remembers_decryptions() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    common::federation(&fed, &["guest", "host"]);
    pki::issue(
        &fed,
        "mallory",
        Role::ModelOwner,
        time::OffsetDateTime::now_utc(),
    )
    .expect("issue");
    let other = dir.path().join("other");
    common::federation(&other, &["guest"]);
    let state = dir.path().join("keyholder-state.jsonl");
    let (addr, stop) = start(&fed, &state).await;

    let coordinator = Credentials::load(&fed, "coordinator").expect("creds");
    let guest = Credentials::load(&fed, "guest").expect("creds");
    let host = Credentials::load(&fed, "host").expect("creds");
    let mallory = Credentials::load(&fed, "mallory").expect("creds");
    let foreign_guest = Credentials::load(&other, "guest").expect("creds");
    let model = model_digest(&[0.25; 31]);
    let g = relayed(&guest, "guest", guest.cert_der().expect("der"), model);
    let h = relayed(&host, "host", host.cert_der().expect("der"), model);

    // Only the coordinator may ask for a decryption.
    let err = unseal(&addr, &guest, vec![g.clone(), h.clone()])
        .await
        .expect_err("node");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // KEY-004 over the wire: one contribution alone.
    let err = unseal(&addr, &coordinator, vec![g.clone()])
        .await
        .expect_err("one");
    assert!(err.message().contains("KEY-004"), "{}", err.message());
    // KEY-002: a certificate from another CA for the same name.
    let fg = relayed(
        &foreign_guest,
        "guest",
        foreign_guest.cert_der().expect("der"),
        model,
    );
    let err = unseal(&addr, &coordinator, vec![fg, h.clone()])
        .await
        .expect_err("foreign");
    assert!(err.message().contains("KEY-002"), "{}", err.message());
    // KEY-002: guest's contribution with host's certificate attached.
    let swapped = relayed(&guest, "guest", host.cert_der().expect("der"), model);
    let err = unseal(&addr, &coordinator, vec![swapped, h.clone()])
        .await
        .expect_err("swapped");
    assert!(err.message().contains("KEY-002"), "{}", err.message());
    // KEY-002: a certificate of the federation but not of a node.
    let m = relayed(&mallory, "mallory", mallory.cert_der().expect("der"), model);
    let err = unseal(&addr, &coordinator, vec![m, h.clone()])
        .await
        .expect_err("role");
    assert!(err.message().contains("KEY-002"), "{}", err.message());

    // A valid request decrypts the sum: 0.5 + 0.5 per coordinate.
    let plaintexts = unseal(&addr, &coordinator, vec![g.clone(), h.clone()])
        .await
        .expect("unseal");
    let spec = common::breast_homo_spec(&[]);
    let fixed = fixed_point(&spec).expect("fp");
    let layout = confide_crypto::PackingLayout::new(&fixed, 2, 2048).expect("layout");
    let sums = layout.unpack_sum(&plaintexts, 31, 2).expect("unpack");
    assert!(sums.iter().all(|&s| fixed.decode(s) == 1.0), "{sums:?}");

    // RES-001: the identical request again gets the same sum; KEY-005: any other subset of
    // the round is refused, and neither changes after a restart (the record is on disk).
    let again = unseal(&addr, &coordinator, vec![h.clone(), g.clone()])
        .await
        .expect("the identical request is answered");
    assert_eq!(again, plaintexts);
    let err = unseal(&addr, &coordinator, vec![g.clone()])
        .await
        .expect_err("a subset");
    assert!(err.message().contains("KEY-005"), "{}", err.message());
    let _ = stop.send(());
    assert!(
        std::fs::read_to_string(&state)
            .expect("state")
            .contains("\"round\":1")
    );
    let (addr2, _stop2) = start(&fed, &state).await;
    let err = unseal(&addr2, &coordinator, vec![h.clone()])
        .await
        .expect_err("a subset after restart");
    assert!(err.message().contains("KEY-005"), "{}", err.message());
    let after = unseal(&addr2, &coordinator, vec![g, h])
        .await
        .expect("the identical request after a restart");
    assert_eq!(after, plaintexts);
}

fn dev_tee(measurement: [u8; 32]) -> confide_attest::dev::DevTee {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    let key = confide_crypto::SigningKey::from_pkcs8_der(der.as_ref()).expect("key");
    confide_attest::dev::DevTee::new(key, measurement)
}

async fn public_key(addr: &str, node: &Credentials, nonce: &[u8; 32]) -> pb::PublicKeyReply {
    KeyHolder::new(connect(addr, "keyholder", node).await.expect("connect"))
        .get_public_key(pb::PublicKeyRequest {
            nonce: nonce.to_vec(),
        })
        .await
        .expect("public key")
        .into_inner()
}

/// The key holder as a trusted core: its evidence binds the job and its public key to the
/// node's nonce, and a node refuses it under a policy pinning other code, for another nonce,
/// another job, a substituted key, or without evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_check_the_key_holders_evidence_before_encrypting_to_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let fed = dir.path().join("fed");
    common::federation(&fed, &["guest", "host"]);
    let measurement = [9u8; 32];
    let tee = dev_tee(measurement);
    let policy = |m: [u8; 32]| {
        confide_attest::Policy::parse(&format!(
            "[dev]\nallow = true\nsigners = [\"{}\"]\nmeasurements = [\"{}\"]\n",
            hex::encode(tee.signer()),
            hex::encode(m)
        ))
        .expect("policy")
    };
    let (good, other_code) = (policy(measurement), policy([8u8; 32]));
    let (addr, stop) = start_with(&fed, &dir.path().join("s1"), Some(tee)).await;
    let node = Credentials::load(&fed, "guest").expect("creds");
    let job = confide_crypto::sha256(&common::breast_homo_spec(&[]).digest_input());
    let nonce = [4u8; 32];
    let reply = public_key(&addr, &node, &nonce).await;
    let now = 1_800_000_000;
    let check = |policy: &confide_attest::Policy, job: &[u8; 32], key: &str, nonce: &[u8; 32]| {
        confide_net::keyholder::check_keyholder_evidence(
            policy,
            job,
            key,
            &reply.evidence_json,
            nonce,
            now,
        )
    };
    let claims = check(&good, &job, &reply.public_key_json, &nonce).expect("attested");
    assert!(claims.insecure);
    assert_eq!(claims.measurement, measurement.to_vec());
    assert!(check(&other_code, &job, &reply.public_key_json, &nonce).is_err());
    assert!(check(&good, &job, &reply.public_key_json, &[5u8; 32]).is_err());
    assert!(check(&good, &[0u8; 32], &reply.public_key_json, &nonce).is_err());
    let substituted = reply.public_key_json.replace('1', "2");
    assert_ne!(substituted, reply.public_key_json);
    assert!(check(&good, &job, &substituted, &nonce).is_err());
    let _ = stop.send(());

    // A key holder without a TEE gives no evidence, and a node that requires it refuses.
    let (addr, stop) = start_with(&fed, &dir.path().join("s2"), None).await;
    let reply = public_key(&addr, &node, &nonce).await;
    let err = confide_net::keyholder::check_keyholder_evidence(
        &good,
        &job,
        &reply.public_key_json,
        &reply.evidence_json,
        &nonce,
        now,
    )
    .expect_err("no evidence");
    assert!(err.contains("no attestation evidence"), "{err}");
    let _ = stop.send(());
}
