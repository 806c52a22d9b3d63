//! Shared helpers for the network tests: a federation directory and a small job.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use confide_core::{JobConfig, JobSpec, Role};
use confide_crypto::{SecretKey, SecretKeyJson};
use confide_net::pki;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn test_key() -> SecretKey {
    let json: SecretKeyJson = serde_json::from_str(include_str!(
        "../../../crypto/testdata/paillier-2048-TEST-ONLY.json"
    ))
    .expect("json");
    SecretKey::from_json(&json, false).expect("key")
}

/// A federation with a coordinator, a key holder, a model owner and the given nodes.
pub fn federation(dir: &Path, nodes: &[&str]) {
    let now = time::OffsetDateTime::now_utc();
    pki::init_ca(dir, "test", now).expect("ca");
    pki::issue(dir, "coordinator", Role::Coordinator, now).expect("issue");
    pki::issue(dir, "keyholder", Role::KeyHolder, now).expect("issue");
    pki::issue(dir, "owner", Role::ModelOwner, now).expect("issue");
    for n in nodes {
        pki::issue(dir, n, Role::Node, now).expect("issue");
    }
}

/// The job's manifest, signed by the federation's model owner (`owner.key`), released to it.
pub fn manifest(fed: &Path, spec: &JobSpec) -> confide_governance::manifest::SignedManifest {
    use confide_governance::manifest::{Manifest, Mode, SignedManifest};
    let owner = confide_governance::identity::Identity::load(&fed.join("owner.key"), None)
        .expect("owner key");
    let m = Manifest::new(spec, Mode::Federated, owner.public(), vec![]).expect("manifest");
    SignedManifest::sign(m, &owner).expect("sign")
}

/// Approves the job the coordinator sent in `join`, as the party `creds`.
pub async fn approve(
    client: &mut confide_net::pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    join: &confide_net::pb::JoinReply,
    creds: &pki::Credentials,
) {
    use confide_governance::manifest::{SignedManifest, online_approval_message};
    let verified = SignedManifest::from_json(&join.manifest_json)
        .expect("manifest")
        .verify()
        .expect("verifies");
    let coordinator = pki::read_identity(&join.coordinator_certificate).expect("certificate");
    let sig = creds
        .identity()
        .signing_key()
        .sign(&online_approval_message(&coordinator.id, &verified.hash));
    client
        .approve(confide_net::pb::ApproveRequest {
            manifest_hash: verified.hash_hex(),
            basis: "test".into(),
            signature: hex::encode(sig),
            declared_rows: 0,
        })
        .await
        .expect("approve");
}

/// The breast_homo example as a spec, with overrides applied to its TOML text.
pub fn breast_homo_spec(replace: &[(&str, &str)]) -> JobSpec {
    let mut text =
        std::fs::read_to_string(repo_root().join("examples/breast_homo.toml")).expect("example");
    for (a, b) in replace {
        assert!(text.contains(a), "example has `{a}`");
        text = text.replace(a, b);
    }
    JobConfig::parse(&text).expect("valid").spec()
}
