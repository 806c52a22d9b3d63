//! The data owners' and recipients' side: check the core's evidence and configuration before
//! uploading, encrypt and sign a dataset, sign a release key, open a released model.

use std::io::Read;

use confide_attest::{Claims, Evidence, Policy};
use confide_crypto::SigningKey;
use confide_crypto::envelope::{self, EnvelopeSummary, RecipientKey};

use crate::protocol::{
    CoreConfig, CoreReply, CoreRequest, TrainingReport, bound_key, dataset_context, model_context,
    recipient_key_message, release_statement, upload_message,
};

/// Checks the core's evidence against the owner's attestation policy, its own nonce and the
/// configuration the owner expects (job, owners, recipients). Only then may it upload to
/// `public_key`.
pub fn check_core(
    evidence: &Evidence,
    public_key: &[u8],
    config_digest: &[u8],
    expected: &CoreConfig,
    policy: &Policy,
    nonce: &[u8; 32],
    now_secs: u64,
) -> Result<Claims, String> {
    let digest = expected.digest();
    if config_digest != digest.as_slice() {
        return Err(format!(
            "the trainer serves configuration {}, not the expected {} (another job, other owners or other recipients)",
            hex::encode(config_digest),
            hex::encode(digest)
        ));
    }
    confide_attest::verify(
        evidence,
        policy,
        &confide_attest::binding(&bound_key(public_key, &digest), nonce),
        now_secs,
    )
    .map_err(|e| e.to_string())
}

/// An owner's upload: the envelope of its CSV, encrypted to the checked core key for this job,
/// and its signature over the envelope's content id.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The envelope.
    pub envelope: Vec<u8>,
    /// The owner's signature.
    pub signature: Vec<u8>,
    /// What was sealed.
    pub summary: EnvelopeSummary,
}

/// Encrypts `csv` to the core's `public_key` (checked with [`check_core`]) and signs it.
pub fn seal_dataset(
    config: &CoreConfig,
    owner: &str,
    key: &SigningKey,
    public_key: &[u8],
    csv: &mut impl Read,
) -> Result<Upload, String> {
    let job = config.job_digest();
    let mut out = Vec::new();
    let summary = envelope::seal(
        public_key,
        &dataset_context(&job, owner),
        envelope::DEFAULT_CHUNK,
        csv,
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    let signature = key.sign(&upload_message(&job, owner, &summary.id)).to_vec();
    Ok(Upload {
        envelope: out,
        signature,
        summary,
    })
}

/// An owner's whole upload step: asks the core for evidence with a fresh nonce through `ask`
/// (the host's channel), checks it with [`check_core`], then seals and signs `csv` to the
/// checked key with [`seal_dataset`]. Returns the upload (for the host to pass on as an
/// `Ingest` request) and the verified claims.
pub fn attest_and_seal(
    ask: &mut dyn FnMut(CoreRequest) -> Result<CoreReply, String>,
    (expected, policy): (&CoreConfig, &Policy),
    (owner, key): (&str, &SigningKey),
    csv: &mut dyn Read,
    now_secs: u64,
) -> Result<(Upload, Claims), String> {
    let nonce: [u8; 32] = rand::random();
    let CoreReply::Evidence {
        evidence,
        public_key,
        config_digest,
    } = ask(CoreRequest::Attest {
        nonce: nonce.to_vec(),
    })?
    else {
        return Err("the trusted core answered attestation with something else".into());
    };
    let claims = check_core(
        &evidence,
        &public_key,
        &config_digest,
        expected,
        policy,
        &nonce,
        now_secs,
    )
    .map_err(|e| format!("`{owner}` refuses the trainer: {e}"))?;
    let upload = seal_dataset(expected, owner, key, &public_key, &mut &mut *csv)?;
    Ok((upload, claims))
}

/// A recipient's signature over the X25519 key it wants the model under.
pub fn sign_release_key(
    config: &CoreConfig,
    recipient: &str,
    key: &SigningKey,
    release_key: &[u8],
) -> Vec<u8> {
    key.sign(&recipient_key_message(
        &config.job_digest(),
        recipient,
        release_key,
    ))
    .to_vec()
}

/// A recipient's check of a release: the evidence must bind the envelope's content id (as the
/// recipient computes it), the training report and the expected configuration to the
/// recipient's nonce, under the recipient's attestation policy; then the envelope is opened
/// with [`open_model`]. The host relays the envelope and the report but can alter neither: it
/// has no attestation key, and the core attests only what it produced.
pub fn open_release(
    (expected, policy): (&CoreConfig, &Policy),
    (recipient, key): (&str, &RecipientKey),
    (envelope_bytes, report_json, evidence): (&[u8], &str, &Evidence),
    nonce: &[u8; 32],
    now_secs: u64,
) -> Result<(Vec<f32>, TrainingReport, Claims), String> {
    let id = envelope::content_id(envelope_bytes);
    let claims = confide_attest::verify(
        evidence,
        policy,
        &confide_attest::binding(
            &release_statement(&id, report_json, &expected.digest()),
            nonce,
        ),
        now_secs,
    )
    .map_err(|e| format!("`{recipient}` refuses the release {id}: {e}"))?;
    let report: TrainingReport =
        serde_json::from_str(report_json).map_err(|e| format!("malformed training report: {e}"))?;
    Ok((
        open_model(expected, recipient, key, envelope_bytes)?,
        report,
        claims,
    ))
}

/// Opens a released model: the parameters as little-endian `f32`.
pub fn open_model(
    config: &CoreConfig,
    recipient: &str,
    key: &RecipientKey,
    envelope_bytes: &[u8],
) -> Result<Vec<f32>, String> {
    let mut out = Vec::new();
    let summary =
        envelope::open(key, &mut &envelope_bytes[..], &mut out).map_err(|e| e.to_string())?;
    if summary.context != model_context(&config.job_digest(), recipient) {
        return Err("the envelope is not this job's model for this recipient".into());
    }
    if out.len() % 4 != 0 {
        return Err(format!("{} bytes are not f32 parameters", out.len()));
    }
    Ok(out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
