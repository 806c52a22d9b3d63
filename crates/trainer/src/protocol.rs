//! The narrow, typed channel between the untrusted host and the trusted core (Soteria's SML-2
//! split): one request, one reply, each a length-prefixed JSON frame on a byte stream (the
//! core's stdin and stdout when it runs as its own process). Byte strings travel as hex.
//!
//! The core trusts nothing the host sends: its configuration is bound into its attestation
//! evidence (owners check it before uploading), uploads are signed by their owners, stored
//! blobs are sealed, and release keys are signed by their recipients.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use confide_core::JobSpec;
use serde::{Deserialize, Serialize};

/// The largest frame either side accepts: 1 GiB.
pub const MAX_FRAME: usize = 1 << 30;

/// Bytes as hex in JSON.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises bytes as hex.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Parses hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// What the core is started with. Its digest is bound into the attestation evidence next to
/// the core's public key, so owners check that the core serves the job, owners and recipients
/// they expect before they upload anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    /// The job the core trains (it must have a `[privacy]` section: training is DP-SGD only).
    pub spec: JobSpec,
    /// Each owner's Ed25519 public key (hex), which signs its uploads.
    pub owners: BTreeMap<String, String>,
    /// Each model recipient's Ed25519 public key (hex), which signs the key it receives the
    /// model under.
    pub recipients: BTreeMap<String, String>,
    /// What runs in the trusted part (`sml2`: the core alone, confined; `sml1`: the host too).
    /// Part of the digest, so owners see which partition they are trusting.
    pub partition: confide_core::Partition,
}

impl CoreConfig {
    /// The job digest (as every federated role computes it).
    pub fn job_digest(&self) -> [u8; 32] {
        confide_crypto::sha256(&self.spec.digest_input())
    }

    /// SHA-256 over the job digest and the owners' and recipients' keys.
    pub fn digest(&self) -> [u8; 32] {
        let mut m = b"confide/trainer/config/v1\n".to_vec();
        m.extend(self.job_digest());
        // Serialising maps of strings cannot fail; BTreeMaps make the text canonical.
        m.extend(
            serde_json::to_vec(&(&self.owners, &self.recipients, self.partition.as_str()))
                .unwrap_or_default(),
        );
        confide_crypto::sha256(&m)
    }
}

/// A blob the core sealed, as the host stores it and hands it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob {
    /// Its slot, e.g. `dataset/<owner>` or `model`.
    pub slot: String,
    /// Its version (monotonic per slot).
    pub version: u64,
    /// The sealed bytes.
    #[serde(with = "hex_bytes")]
    pub blob: Vec<u8>,
}

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum CoreRequest {
    /// Evidence binding the core's upload key and configuration to the verifier's nonce.
    Attest {
        /// The verifier's nonce.
        #[serde(with = "hex_bytes")]
        nonce: Vec<u8>,
    },
    /// An owner's encrypted dataset and the owner's signature over its content id.
    Ingest {
        /// The owner.
        owner: String,
        /// The envelope (see `confide_crypto::envelope`).
        #[serde(with = "hex_bytes")]
        envelope: Vec<u8>,
        /// The owner's Ed25519 signature ([`upload_message`]).
        #[serde(with = "hex_bytes")]
        signature: Vec<u8>,
    },
    /// Train on every owner's dataset with DP-SGD.
    Train {
        /// The sealed datasets, one per owner.
        datasets: Vec<SealedBlob>,
        /// A public test set (CSV bytes with the job's schema) for the reported accuracy, or
        /// empty.
        #[serde(with = "hex_bytes")]
        public_test: Vec<u8>,
        /// Seed of the initial weights (the noise and sampling always come from the OS).
        seed: u64,
    },
    /// Encrypt the sealed model to a recipient.
    Release {
        /// The recipient's name in the configuration.
        recipient: String,
        /// Its X25519 public key.
        #[serde(with = "hex_bytes")]
        key: Vec<u8>,
        /// Its Ed25519 signature over the key ([`recipient_key_message`]).
        #[serde(with = "hex_bytes")]
        signature: Vec<u8>,
        /// The sealed model.
        model: SealedBlob,
        /// The recipient's fresh nonce: the reply carries evidence that the core released
        /// this envelope ([`release_statement`]), so the host cannot substitute a model.
        #[serde(with = "hex_bytes")]
        nonce: Vec<u8>,
    },
}

/// What training reports: the DP parameters, the accuracy on the public test set, and the
/// row count (not covered by the DP guarantee; the envelopes' sizes reveal it roughly anyway).
/// The training loss and the fraction of clipped gradients are data-dependent and not
/// privatised, so they are not returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    /// Rows trained on (the owners declared them by uploading; not private here).
    pub rows: usize,
    /// DP-SGD steps.
    pub steps: u64,
    /// ε spent, under `accountant`.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The accountant.
    pub accountant: String,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Accuracy on the public test set (when one was given).
    pub public_test_accuracy: Option<f64>,
}

/// A reply from the core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum CoreReply {
    /// Attestation evidence and the public key it binds.
    Evidence {
        /// The evidence.
        evidence: confide_attest::Evidence,
        /// The X25519 key owners encrypt their datasets to.
        #[serde(with = "hex_bytes")]
        public_key: Vec<u8>,
        /// The configuration digest it binds.
        #[serde(with = "hex_bytes")]
        config_digest: Vec<u8>,
    },
    /// A dataset accepted and sealed, for the host to store.
    Stored {
        /// The sealed plaintext.
        sealed: SealedBlob,
        /// The envelope's content id.
        envelope_id: String,
        /// Rows in the dataset.
        rows: usize,
    },
    /// The model trained and sealed.
    Trained {
        /// The sealed model.
        model: SealedBlob,
        /// What may be reported.
        report: TrainingReport,
    },
    /// The model encrypted to a recipient.
    Released {
        /// The envelope for the recipient.
        #[serde(with = "hex_bytes")]
        envelope: Vec<u8>,
        /// Its content id.
        envelope_id: String,
        /// The training report ([`TrainingReport`] as JSON), bound into the evidence too, so
        /// the host cannot alter the ε or the accuracy a recipient is told.
        report_json: String,
        /// Evidence binding [`release_statement`] to the recipient's nonce.
        evidence: confide_attest::Evidence,
    },
    /// The core refused the request.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What an owner signs for an upload: the job, the owner, and the envelope's content id.
pub fn upload_message(job_digest: &[u8; 32], owner: &str, envelope_id: &str) -> Vec<u8> {
    let mut m = b"confide/trainer/upload/v1\n".to_vec();
    m.extend(job_digest);
    m.extend((owner.len() as u32).to_be_bytes());
    m.extend(owner.as_bytes());
    m.extend(envelope_id.as_bytes());
    m
}

/// What a recipient signs: the job and the X25519 key it receives the model under.
pub fn recipient_key_message(job_digest: &[u8; 32], recipient: &str, key: &[u8]) -> Vec<u8> {
    let mut m = b"confide/trainer/recipient-key/v1\n".to_vec();
    m.extend(job_digest);
    m.extend((recipient.len() as u32).to_be_bytes());
    m.extend(recipient.as_bytes());
    m.extend(key);
    m
}

/// The key material the evidence binds: the upload key and the configuration digest.
pub fn bound_key(public_key: &[u8], config_digest: &[u8; 32]) -> Vec<u8> {
    let mut k = public_key.to_vec();
    k.extend(config_digest);
    k
}

/// What the evidence of a release binds: the envelope's content id, the SHA-256 of the
/// training report's JSON, and the configuration digest. (Its length and prefix differ from
/// [`bound_key`]'s 64 bytes, so one is never taken for the other.)
pub fn release_statement(
    envelope_id: &str,
    report_json: &str,
    config_digest: &[u8; 32],
) -> Vec<u8> {
    let mut m = b"confide/trainer/release/v2\n".to_vec();
    m.extend((envelope_id.len() as u32).to_be_bytes());
    m.extend(envelope_id.as_bytes());
    m.extend(confide_crypto::sha256(report_json.as_bytes()));
    m.extend(config_digest);
    m
}

/// The envelope context of an owner's dataset: names the job and the owner, so the core
/// accepts it only for that job.
pub fn dataset_context(job_digest: &[u8; 32], owner: &str) -> Vec<u8> {
    format!(
        "confide dataset job={} owner={owner}",
        hex::encode(job_digest)
    )
    .into_bytes()
}

/// The envelope context of a released model.
pub fn model_context(job_digest: &[u8; 32], recipient: &str) -> Vec<u8> {
    format!(
        "confide model job={} recipient={recipient}",
        hex::encode(job_digest)
    )
    .into_bytes()
}

/// Frame errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// I/O.
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A frame over [`MAX_FRAME`].
    #[error("a frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
    /// Not the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Writes one message as `u64 length ‖ JSON`.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> Result<(), FrameError> {
    let json = serde_json::to_vec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if json.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(json.len() as u64));
    }
    out.write_all(&(json.len() as u64).to_be_bytes())?;
    out.write_all(&json)?;
    out.flush()?;
    Ok(())
}

/// Reads one message; `None` at a clean end of the stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 8];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u64::from_be_bytes(len);
    if len > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(len));
    }
    // Grows with what arrives, not with what the prefix claims.
    let mut body = Vec::new();
    input.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(FrameError::Malformed(format!(
            "the channel closed after {} of {len} bytes",
            body.len()
        )));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}
