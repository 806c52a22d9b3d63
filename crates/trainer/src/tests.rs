//! The confidential flow end to end in one process (dev TEE): two hospitals check the core's
//! evidence and configuration, upload encrypted and signed halves of the digits training set,
//! the core trains with DP-SGD, and an auditor receives the model; and every refusal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use confide_attest::Policy;
use confide_attest::dev::DevTee;
use confide_core::JobConfig;
use confide_crypto::SigningKey;
use confide_crypto::envelope::RecipientKey;

use crate::core::TrustedCore;
use crate::owner::{check_core, open_model, open_release, seal_dataset, sign_release_key};
use crate::protocol::{CoreConfig, CoreReply, CoreRequest, SealedBlob};

const MEASUREMENT: [u8; 32] = [5u8; 32];
const SEAL_ROOT: [u8; 32] = [6u8; 32];
const NOW: u64 = 1_790_000_000;

fn key_der() -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    der.as_ref().to_vec()
}

fn key() -> SigningKey {
    SigningKey::from_pkcs8_der(&key_der()).expect("key")
}

fn tee_key(w: &World) -> SigningKey {
    SigningKey::from_pkcs8_der(&w.tee).expect("key")
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

struct World {
    config: CoreConfig,
    owners: BTreeMap<String, SigningKey>,
    auditor: SigningKey,
    /// The dev TEE's key (PKCS#8), so the core and the owners' policy can both use it.
    tee: Vec<u8>,
    halves: Vec<Vec<u8>>,
    test_csv: Vec<u8>,
}

/// The digits DP job with two owners and a few epochs (the test checks the flow, not the
/// accuracy target), and the training set split in two halves.
fn world() -> World {
    let mut spec = JobConfig::load(&repo("examples/digits_dp.toml"))
        .expect("job")
        .spec();
    spec.owners = vec!["hospital-a".into(), "hospital-b".into()];
    spec.job.min_owners = 2;
    spec.training.local_epochs = 2;
    let owners: BTreeMap<String, SigningKey> =
        spec.owners.iter().map(|o| (o.clone(), key())).collect();
    let auditor = key();
    let config = CoreConfig {
        spec,
        owners: owners
            .iter()
            .map(|(o, k)| (o.clone(), hex::encode(k.public_key())))
            .collect(),
        recipients: [("auditor".to_string(), hex::encode(auditor.public_key()))].into(),
        partition: confide_core::Partition::Sml2,
    };
    let text = std::fs::read_to_string(repo("data/digits/digits_train.csv")).expect("csv");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let rows: Vec<&str> = lines.collect();
    let half = rows.len() / 2;
    let halves = [&rows[..half], &rows[half..]]
        .iter()
        .map(|part| format!("{header}\n{}\n", part.join("\n")).into_bytes())
        .collect();
    World {
        config,
        owners,
        auditor,
        tee: key_der(),
        halves,
        test_csv: std::fs::read(repo("data/digits/digits_test.csv")).expect("test csv"),
    }
}

fn core(w: &World) -> TrustedCore {
    TrustedCore::new(
        w.config.clone(),
        Box::new(DevTee::new(tee_key(w), MEASUREMENT)),
        &SEAL_ROOT,
        &MEASUREMENT,
    )
    .expect("core")
}

fn policy(w: &World) -> Policy {
    Policy::parse(&format!(
        "[dev]\nallow = true\nsigners = [\"{}\"]\nmeasurements = [\"{}\"]\n",
        hex::encode(tee_key(w).public_key()),
        hex::encode(MEASUREMENT)
    ))
    .expect("policy")
}

/// The core's evidence, checked by an owner with a fresh nonce: the upload key.
fn checked_key(w: &World, core: &mut TrustedCore) -> Vec<u8> {
    let nonce = [3u8; 32];
    let CoreReply::Evidence {
        evidence,
        public_key,
        config_digest,
    } = core.handle(CoreRequest::Attest {
        nonce: nonce.to_vec(),
    })
    else {
        panic!("evidence expected")
    };
    check_core(
        &evidence,
        &public_key,
        &config_digest,
        &w.config,
        &policy(w),
        &nonce,
        NOW,
    )
    .expect("evidence checks out");
    public_key
}

fn ingest(w: &World, core: &mut TrustedCore, owner: &str, csv: &[u8], key: &[u8]) -> CoreReply {
    let up = seal_dataset(&w.config, owner, &w.owners[owner], key, &mut &csv[..]).expect("seal");
    core.handle(CoreRequest::Ingest {
        owner: owner.into(),
        envelope: up.envelope,
        signature: up.signature,
    })
}

fn stored(reply: CoreReply) -> SealedBlob {
    match reply {
        CoreReply::Stored { sealed, .. } => sealed,
        other => panic!("stored expected: {other:?}"),
    }
}

fn refused(reply: CoreReply, containing: &str) {
    match reply {
        CoreReply::Refused { reason } => {
            assert!(
                reason.contains(containing),
                "`{reason}` lacks `{containing}`"
            )
        }
        other => panic!("a refusal expected: {other:?}"),
    }
}

#[test]
fn owners_upload_encrypted_the_core_trains_with_dp_and_releases_to_the_auditor() {
    let w = world();
    let mut core = core(&w);
    let key = checked_key(&w, &mut core);
    let a = stored(ingest(&w, &mut core, "hospital-a", &w.halves[0], &key));
    let b = stored(ingest(&w, &mut core, "hospital-b", &w.halves[1], &key));
    assert_eq!((a.slot.as_str(), a.version), ("dataset/hospital-a", 1));
    // The host stores ciphertext only.
    let needle = &w.halves[0][..40];
    assert!(!a.blob.windows(needle.len()).any(|win| win == needle));
    let CoreReply::Trained { model, report } = core.handle(CoreRequest::Train {
        datasets: vec![a, b],
        public_test: w.test_csv.clone(),
        seed: 1,
    }) else {
        panic!("trained expected")
    };
    assert_eq!(report.rows, 1438);
    assert!(report.epsilon <= 8.0 + 1e-9, "{report:?}");
    let accuracy = report.public_test_accuracy.expect("accuracy");
    assert!(accuracy > 0.5, "{report:?}");
    // Release to the auditor under a key it signed.
    let release = RecipientKey::generate();
    let signature = sign_release_key(&w.config, "auditor", &w.auditor, &release.public_bytes());
    let nonce = [7u8; 32];
    let CoreReply::Released {
        envelope,
        evidence,
        report_json,
        ..
    } = core.handle(CoreRequest::Release {
        recipient: "auditor".into(),
        key: release.public_bytes(),
        signature,
        model: model.clone(),
        nonce: nonce.to_vec(),
    })
    else {
        panic!("released expected")
    };
    let open_with = |envelope: &[u8], report: &str, nonce: &[u8; 32]| {
        open_release(
            (&w.config, &policy(&w)),
            ("auditor", &release),
            (envelope, report, &evidence),
            nonce,
            NOW,
        )
    };
    let open = |envelope: &[u8], nonce: &[u8; 32]| open_with(envelope, &report_json, nonce);
    // A report the host edited (a smaller ε) is refused too.
    let edited = report_json.replace("\"epsilon\":", "\"epsilon\":0.5e0,\"was\":");
    assert_ne!(edited, report_json);
    let err = open_with(&envelope, &edited, &nonce).expect_err("edited report");
    assert!(err.contains("refuses the release"), "{err}");
    // The evidence binds this envelope and this nonce: a replay under another nonce, or an
    // envelope the host made itself for the auditor's key, is refused.
    let err = open(&envelope, &[8u8; 32]).expect_err("replayed evidence");
    assert!(err.contains("refuses the release"), "{err}");
    let mut forged = Vec::new();
    confide_crypto::envelope::seal(
        &release.public_bytes(),
        &crate::protocol::model_context(&w.config.job_digest(), "auditor"),
        1024,
        &mut &[0u8; 64][..],
        &mut forged,
    )
    .expect("seal");
    let err = open(&forged, &nonce).expect_err("substituted model");
    assert!(err.contains("refuses the release"), "{err}");
    assert!(open_model(&w.config, "auditor", &release, &forged).is_ok());
    let (params, released_report, _) = open(&envelope, &nonce).expect("open");
    assert_eq!(released_report, report);
    let spec = confide_ml::job::model_spec(&w.config.spec);
    assert_eq!(params.len(), spec.param_count());
    let test =
        confide_ml::job::read_job_data(&w.config.spec, &w.test_csv[..], "test").expect("test");
    let m = confide_ml::train::evaluate(&spec, &params, &test).expect("eval");
    assert_eq!(m.accuracy, accuracy);
}

#[test]
fn owners_refuse_a_core_with_another_configuration_nonce_or_policy() {
    let w = world();
    let mut core = core(&w);
    let nonce = [3u8; 32];
    let CoreReply::Evidence {
        evidence,
        public_key,
        config_digest,
    } = core.handle(CoreRequest::Attest {
        nonce: nonce.to_vec(),
    })
    else {
        panic!("evidence expected")
    };
    let check = |config: &CoreConfig, policy: &Policy, nonce: &[u8; 32], pk: &[u8]| {
        check_core(&evidence, pk, &config_digest, config, policy, nonce, NOW)
    };
    assert!(check(&w.config, &policy(&w), &nonce, &public_key).is_ok());
    // The core would release to one more recipient than the owner agreed to.
    let mut other = w.config.clone();
    other
        .recipients
        .insert("mallory".into(), hex::encode(key().public_key()));
    let err = check(&other, &policy(&w), &nonce, &public_key).expect_err("config");
    assert!(err.contains("another job"), "{err}");
    // A replayed answer to another nonce, a swapped key, a production policy.
    assert!(check(&w.config, &policy(&w), &[4u8; 32], &public_key).is_err());
    let swapped = RecipientKey::generate().public_bytes();
    assert!(check(&w.config, &policy(&w), &nonce, &swapped).is_err());
    let production = Policy::parse("").expect("policy");
    assert!(check(&w.config, &production, &nonce, &public_key).is_err());
}

#[test]
fn the_core_refuses_forged_misdirected_and_replayed_data() {
    let w = world();
    let mut core = core(&w);
    let key = checked_key(&w, &mut core);
    // An owner the job does not list, and an upload signed with another key.
    let stranger = crate::protocol::CoreRequest::Ingest {
        owner: "mallory".into(),
        envelope: vec![1, 2, 3],
        signature: vec![0; 64],
    };
    refused(core.handle(stranger), "not an owner");
    let up = seal_dataset(
        &w.config,
        "hospital-a",
        &key_of_other(),
        &key,
        &mut &w.halves[0][..],
    )
    .expect("seal");
    refused(
        core.handle(CoreRequest::Ingest {
            owner: "hospital-a".into(),
            envelope: up.envelope,
            signature: up.signature,
        }),
        "not signed",
    );
    // hospital-b re-signs hospital-a's envelope as its own: the context names hospital-a.
    let up = seal_dataset(
        &w.config,
        "hospital-a",
        &w.owners["hospital-a"],
        &key,
        &mut &w.halves[0][..],
    )
    .expect("seal");
    let id = confide_crypto::envelope::content_id(&up.envelope);
    let sig = w.owners["hospital-b"].sign(&crate::protocol::upload_message(
        &w.config.job_digest(),
        "hospital-b",
        &id,
    ));
    refused(
        core.handle(CoreRequest::Ingest {
            owner: "hospital-b".into(),
            envelope: up.envelope,
            signature: sig.to_vec(),
        }),
        "another job or owner",
    );
    // Encrypted to another key (a core that was not attested).
    let other = RecipientKey::generate().public_bytes();
    refused(
        ingest(&w, &mut core, "hospital-a", &w.halves[0], &other),
        "does not authenticate",
    );
    // A CSV with a bad cell: refused, and the cell's content does not reach the host.
    let mut bad = String::from_utf8(w.halves[0].clone()).expect("utf8");
    let first_row_end = bad.find('\n').expect("header") + 1;
    bad.insert_str(first_row_end, "SECRET-PATIENT-42,");
    let reply = ingest(&w, &mut core, "hospital-a", bad.as_bytes(), &key);
    let CoreReply::Refused { reason } = reply else {
        panic!("a refusal expected")
    };
    assert!(reason.contains("does not parse"), "{reason}");
    assert!(!reason.contains("SECRET"), "{reason}");
    // Rollback: hospital-a uploads twice; the host hands back the first sealed copy.
    let first = stored(ingest(&w, &mut core, "hospital-a", &w.halves[0], &key));
    let second = stored(ingest(&w, &mut core, "hospital-a", &w.halves[0], &key));
    assert_eq!(second.version, first.version + 1);
    let b = stored(ingest(&w, &mut core, "hospital-b", &w.halves[1], &key));
    let train = |datasets: Vec<SealedBlob>| CoreRequest::Train {
        datasets,
        public_test: Vec::new(),
        seed: 1,
    };
    refused(core.handle(train(vec![first, b.clone()])), "rollback");
    // A flipped bit in a sealed blob; a dataset missing; one repeated.
    let mut tampered = second.clone();
    let last = tampered.blob.len() - 1;
    tampered.blob[last] ^= 1;
    refused(
        core.handle(train(vec![tampered, b.clone()])),
        "authenticate",
    );
    refused(core.handle(train(vec![b.clone()])), "handed over");
    refused(core.handle(train(vec![b.clone(), b.clone()])), "repeated");
    // hospital-b's blob relabelled as hospital-a's latest version.
    let relabelled = SealedBlob {
        slot: second.slot.clone(),
        version: second.version,
        blob: b.blob.clone(),
    };
    refused(
        core.handle(train(vec![relabelled, b.clone()])),
        "authenticate",
    );
    // Release: to a recipient the configuration does not name, under an unsigned key, or of
    // a blob that is not the model.
    let CoreReply::Trained { model, .. } = core.handle(train(vec![second.clone(), b.clone()]))
    else {
        panic!("trained expected")
    };
    // A core trains once (the job's ε is spent once), and takes no data after that.
    refused(core.handle(train(vec![second.clone(), b])), "trains once");
    refused(
        ingest(&w, &mut core, "hospital-a", &w.halves[0], &key),
        "no more data",
    );
    let release = RecipientKey::generate().public_bytes();
    let good = sign_release_key(&w.config, "auditor", &w.auditor, &release);
    let request = |recipient: &str, signature: Vec<u8>, model: SealedBlob| CoreRequest::Release {
        recipient: recipient.into(),
        key: release.clone(),
        signature,
        model,
        nonce: vec![1u8; 32],
    };
    refused(
        core.handle(request("mallory", good.clone(), model.clone())),
        "may not receive",
    );
    let forged = sign_release_key(&w.config, "auditor", &key_of_other(), &release);
    refused(
        core.handle(request("auditor", forged, model.clone())),
        "not signed",
    );
    refused(
        core.handle(request("auditor", good.clone(), second)),
        "not the model",
    );
    assert!(matches!(
        core.handle(request("auditor", good, model)),
        CoreReply::Released { .. }
    ));
}

fn key_of_other() -> SigningKey {
    key()
}

#[test]
fn a_job_without_differential_privacy_or_recipients_is_refused() {
    let w = world();
    let attester = || Box::new(DevTee::new(key(), MEASUREMENT));
    let mut no_dp = w.config.clone();
    no_dp.spec.privacy = None;
    let err = TrustedCore::new(no_dp, attester(), &SEAL_ROOT, &MEASUREMENT).expect_err("no DP");
    assert!(err.contains("[privacy]"), "{err}");
    let mut nobody = w.config.clone();
    nobody.recipients.clear();
    assert!(TrustedCore::new(nobody, attester(), &SEAL_ROOT, &MEASUREMENT).is_err());
    // What one core sealed does not open in another with the same root, measurement and
    // configuration (the key is bound to the instance): a host cannot feed one job's sealed
    // data or model to a core it configured itself.
    let mut first = core(&w);
    let key = checked_key(&w, &mut first);
    let a = stored(ingest(&w, &mut first, "hospital-a", &w.halves[0], &key));
    let mut second = core(&w);
    let key2 = checked_key(&w, &mut second);
    let dummy = stored(ingest(&w, &mut second, "hospital-a", &w.halves[1], &key2));
    let b = stored(ingest(&w, &mut second, "hospital-b", &w.halves[1], &key2));
    assert_eq!(
        (dummy.slot.as_str(), dummy.version),
        (a.slot.as_str(), a.version)
    );
    refused(
        second.handle(CoreRequest::Train {
            datasets: vec![a, b],
            public_test: Vec::new(),
            seed: 1,
        }),
        "does not authenticate",
    );
}
