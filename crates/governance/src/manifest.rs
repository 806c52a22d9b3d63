//! Signed job manifests.
//!
//! A manifest is the one document that says what a job is: its id, mode, the whole job
//! specification (model, hyper-parameters, data selection and schema, privacy parameters,
//! aggregation scheme, limits), the participating data owners and the parties allowed to
//! receive the model. Its bytes are the RFC 8785 canonical JSON of that document
//! ([`crate::jcs`]); its **hash** is the SHA-256 of those bytes.
//!
//! A manifest file (`confide job sign`) holds the manifest, its hash in hex, and signatures:
//! - exactly one `model-owner` signature, by the key the manifest names as model owner;
//! - zero or more `approval` signatures (`confide job approve`): a data owner co-signing the
//!   hash, which is how an owner approves a job by hand.
//!
//! Each signature is Ed25519 over `"confide/manifest-signature/v1\n" ‖ role ‖ "\n" ‖ hash`.
//! Changing any byte of the manifest changes its hash, so every earlier signature and approval
//! stops verifying: a manifest that changed after approval is refused.

use std::path::Path;

use confide_core::JobSpec;
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PublicIdentity, party_id};
use crate::jcs;

/// The manifest format tag.
pub const FORMAT: &str = "confide-manifest/1";

/// Manifest errors.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
    /// The document is malformed.
    #[error("manifest: {0}")]
    Malformed(String),
    /// A signature is missing or does not verify.
    #[error("manifest signature: {0}")]
    Signature(String),
}

/// How a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Federated: data stays with its owners; updates are aggregated.
    Federated,
    /// Confidential: owners upload encrypted data to an attested trainer.
    Confidential,
}

impl Mode {
    /// The name used in manifests and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Federated => "federated",
            Mode::Confidential => "confidential",
        }
    }
}

/// The job manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The job id (also inside `spec`).
    pub job_id: String,
    /// How the job runs.
    pub mode: Mode,
    /// Who proposes the job and signs the manifest.
    pub model_owner: PublicIdentity,
    /// The data owners taking part, by name (the job's owners).
    pub participants: Vec<String>,
    /// The party ids allowed to receive the trained model.
    pub recipients: Vec<String>,
    /// The whole job specification.
    pub spec: serde_json::Value,
}

impl Manifest {
    /// The manifest of `spec`, proposed by `model_owner`, released to `recipients` (the model
    /// owner alone when empty).
    ///
    /// # Errors
    /// A recipient that is not a party id, or a spec that does not serialise.
    pub fn new(
        spec: &JobSpec,
        mode: Mode,
        model_owner: PublicIdentity,
        recipients: Vec<String>,
    ) -> Result<Self, ManifestError> {
        let recipients = if recipients.is_empty() {
            vec![model_owner.id.clone()]
        } else {
            recipients
        };
        let m = Self {
            format: FORMAT.into(),
            job_id: spec.job.id.clone(),
            mode,
            model_owner,
            participants: spec.owners.clone(),
            recipients,
            spec: spec_value(spec)?,
        };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Malformed(m));
        if self.format != FORMAT {
            return bad(format!("format `{}`, expected `{FORMAT}`", self.format));
        }
        let key = self.model_owner.key().map_err(ManifestError::Malformed)?;
        if party_id(&key) != self.model_owner.id {
            return bad("the model owner's id is not derived from its key".into());
        }
        if self.recipients.is_empty() {
            return bad("no model recipients".into());
        }
        if let Some(r) = self
            .recipients
            .iter()
            .find(|r| !crate::identity::is_party_id(r))
        {
            return bad(format!("recipient `{r}` is not a party id"));
        }
        let spec = self.job_spec()?;
        if spec.job.id != self.job_id {
            return bad(format!(
                "job id `{}` but the spec says `{}`",
                self.job_id, spec.job.id
            ));
        }
        if spec.owners != self.participants {
            return bad("the participants differ from the spec's owners".into());
        }
        Ok(())
    }

    /// The canonical bytes.
    ///
    /// # Errors
    /// Cannot happen for a manifest built by [`Manifest::new`] or parsed from JSON.
    pub fn canonical(&self) -> Result<Vec<u8>, ManifestError> {
        jcs::to_vec(self).map_err(|e| ManifestError::Malformed(e.to_string()))
    }

    /// SHA-256 of the canonical bytes.
    ///
    /// # Errors
    /// As [`Manifest::canonical`].
    pub fn hash(&self) -> Result<[u8; 32], ManifestError> {
        Ok(confide_crypto::sha256(&self.canonical()?))
    }

    /// The job specification, parsed and validated.
    ///
    /// # Errors
    /// The spec is not a valid job.
    pub fn job_spec(&self) -> Result<JobSpec, ManifestError> {
        let spec: JobSpec = serde_json::from_value(self.spec.clone())
            .map_err(|e| ManifestError::Malformed(format!("spec: {e}")))?;
        spec.validate()
            .map_err(|e| ManifestError::Malformed(format!("spec: {e}")))?;
        Ok(spec)
    }

    /// Whether this manifest describes exactly `spec` (canonical bytes equal).
    pub fn describes(&self, spec: &JobSpec) -> bool {
        match (spec_value(spec), jcs::to_vec(&self.spec)) {
            (Ok(v), Ok(mine)) => jcs::to_vec(&v).is_ok_and(|theirs| theirs == mine),
            _ => false,
        }
    }
}

fn spec_value(spec: &JobSpec) -> Result<serde_json::Value, ManifestError> {
    serde_json::to_value(spec).map_err(|e| ManifestError::Malformed(format!("spec: {e}")))
}

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureRole {
    /// The model owner's signature (exactly one).
    ModelOwner,
    /// A data owner's approval (a co-signature of the hash).
    Approval,
    /// A code reviewer's co-signature of the job's code bundle digest (`[code] digest`), not
    /// of the manifest hash: one review covers every job that runs the same bundle.
    CodeReview,
}

impl SignatureRole {
    fn as_str(self) -> &'static str {
        match self {
            SignatureRole::ModelOwner => "model-owner",
            SignatureRole::Approval => "approval",
            SignatureRole::CodeReview => "code-review",
        }
    }
}

/// One signature on a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// What it is for.
    pub role: SignatureRole,
    /// The signer's party id.
    pub signer: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// The message a node signs when it approves a job to a coordinator over the network: bound to
/// that coordinator's party id, and distinct from a co-signature, so an approval recorded in an
/// audit log can never be replayed as the owner's co-signature of the manifest.
pub fn online_approval_message(coordinator_id: &str, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = format!("confide/job-approval/v1\n{coordinator_id}\n").into_bytes();
    m.extend_from_slice(hash);
    m
}

/// The message a node signs when it rejects a job to a coordinator over the network, under
/// the rule that refused it (domain-separated from approvals and co-signatures).
pub fn online_rejection_message(coordinator_id: &str, hash: &[u8; 32], rule: &str) -> Vec<u8> {
    let mut m = format!("confide/job-rejection/v1\n{coordinator_id}\n").into_bytes();
    m.extend_from_slice(hash);
    m.push(b'\n');
    m.extend_from_slice(rule.as_bytes());
    m
}

/// The message a manifest signature covers.
pub fn signature_message(role: SignatureRole, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = format!("confide/manifest-signature/v1\n{}\n", role.as_str()).into_bytes();
    m.extend_from_slice(hash);
    m
}

impl ManifestSignature {
    fn make(role: SignatureRole, hash: &[u8; 32], id: &Identity) -> Self {
        Self {
            role,
            signer: id.id(),
            public_key: hex::encode(id.public_key()),
            signature: hex::encode(id.signing_key().sign(&signature_message(role, hash))),
        }
    }

    /// Checks this signature over `hash`.
    ///
    /// # Errors
    /// The key does not match the signer id, or the signature does not verify.
    pub fn verify(&self, hash: &[u8; 32]) -> Result<(), String> {
        let key: [u8; 32] = jcs::hex_array(&self.public_key)?;
        if party_id(&key) != self.signer {
            return Err(format!("signer `{}` does not match its key", self.signer));
        }
        let sig: [u8; 64] = jcs::hex_array(&self.signature)?;
        confide_crypto::sign::verify(&key, &signature_message(self.role, hash), &sig).map_err(
            |_| {
                format!(
                    "{} signature by `{}` does not verify",
                    self.role.as_str(),
                    self.signer
                )
            },
        )
    }
}

/// A manifest with its signatures (the manifest file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// SHA-256 of its canonical bytes, hex.
    pub hash: String,
    /// The model owner's signature and any approvals.
    pub signatures: Vec<ManifestSignature>,
}

/// A manifest whose signatures all verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// Its job specification.
    pub spec: JobSpec,
    /// Its hash.
    pub hash: [u8; 32],
    /// The party ids that approved it by co-signature.
    pub approvals: Vec<String>,
    /// The party ids that co-signed its code bundle's digest (`[code]` jobs only).
    pub code_reviews: Vec<String>,
}

impl VerifiedManifest {
    /// What `confide job verify` and Python's `SignedJob.verify()` print: the job, its
    /// signers and, for user code, the bundle's files and digest and who reviewed it.
    pub fn summary(&self) -> serde_json::Value {
        let mut out = serde_json::json!({
            "valid": true,
            "hash": self.hash_hex(),
            "job_id": self.manifest.job_id,
            "mode": self.manifest.mode.as_str(),
            "scheme": self.spec.job.scheme.as_str(),
            "model_owner": self.manifest.model_owner.id,
            "participants": self.manifest.participants,
            "recipients": self.manifest.recipients,
            "approvals": self.approvals,
        });
        if let Some(c) = &self.spec.code {
            out["code"] = serde_json::json!({
                "kind": c.kind.as_str(),
                "bundle": c.bundle,
                "entry": c.entry,
                "env": c.env,
                "lock": c.lock,
                "digest": c.digest,
                "files": c.files,
                "reviewed_by": self.code_reviews,
                "privacy": match &self.spec.privacy {
                    Some(p) if p.level == confide_core::PrivacyLevel::Client =>
                        "client-level DP, enforced by each node (it clips the code's update and adds the distributed discrete Gaussian)",
                    _ => "no differential privacy: the code's updates leave each node clipped by nothing",
                },
            });
        }
        out
    }

    /// What a policy is asked about this job, given what it spends on the dataset.
    pub fn job_request(&self, privacy: Option<(f64, f64)>) -> crate::policy::JobRequest {
        crate::policy::JobRequest {
            job_id: self.manifest.job_id.clone(),
            manifest_hash: self.hash_hex(),
            model_owner: self.manifest.model_owner.id.clone(),
            mode: self.manifest.mode,
            scheme: self.spec.job.scheme.as_str().into(),
            privacy,
            recipients: self.manifest.recipients.clone(),
            code: self
                .spec
                .code
                .as_ref()
                .map_or("builtin", |c| c.kind.as_str())
                .into(),
            code_reviews: self.code_reviews.clone(),
        }
    }

    /// The hash in hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl SignedManifest {
    /// Signs `manifest` as its model owner.
    ///
    /// # Errors
    /// `owner` is not the model owner the manifest names.
    pub fn sign(manifest: Manifest, owner: &Identity) -> Result<Self, ManifestError> {
        manifest.check()?;
        if owner.public() != manifest.model_owner {
            return Err(ManifestError::Signature(format!(
                "the manifest names model owner `{}`, this key is `{}`",
                manifest.model_owner.id,
                owner.id()
            )));
        }
        let hash = manifest.hash()?;
        Ok(Self {
            signatures: vec![ManifestSignature::make(
                SignatureRole::ModelOwner,
                &hash,
                owner,
            )],
            hash: hex::encode(hash),
            manifest,
        })
    }

    /// Verifies the model owner's signature and every approval.
    ///
    /// # Errors
    /// The manifest is malformed, its hash is not its own, the model owner's signature is
    /// missing or wrong, or any approval does not verify (for example because the manifest
    /// changed after it was approved).
    pub fn verify(&self) -> Result<VerifiedManifest, ManifestError> {
        self.manifest.check()?;
        let hash = self.manifest.hash()?;
        if jcs::hex_decode(&self.hash).ok().as_deref() != Some(&hash[..]) {
            return Err(ManifestError::Signature(
                "the manifest's content does not match its hash: it changed after it was signed"
                    .into(),
            ));
        }
        let owners: Vec<&ManifestSignature> = self
            .signatures
            .iter()
            .filter(|s| s.role == SignatureRole::ModelOwner)
            .collect();
        match owners.as_slice() {
            [s] => {
                if s.signer != self.manifest.model_owner.id
                    || s.public_key != self.manifest.model_owner.public_key
                {
                    return Err(ManifestError::Signature(format!(
                        "signed by `{}`, not by the model owner `{}`",
                        s.signer, self.manifest.model_owner.id
                    )));
                }
                s.verify(&hash).map_err(ManifestError::Signature)?;
            }
            [] => {
                return Err(ManifestError::Signature(
                    "the model owner has not signed".into(),
                ));
            }
            _ => {
                return Err(ManifestError::Signature(
                    "more than one model-owner signature".into(),
                ));
            }
        }
        let mut approvals = Vec::new();
        for s in self
            .signatures
            .iter()
            .filter(|s| s.role == SignatureRole::Approval)
        {
            s.verify(&hash).map_err(|e| {
                ManifestError::Signature(format!(
                    "{e} (a manifest that changed after approval is refused)"
                ))
            })?;
            if approvals.contains(&s.signer) {
                return Err(ManifestError::Signature(format!(
                    "`{}` approved twice",
                    s.signer
                )));
            }
            approvals.push(s.signer.clone());
        }
        let spec = self.manifest.job_spec()?;
        let mut code_reviews = Vec::new();
        for s in self
            .signatures
            .iter()
            .filter(|s| s.role == SignatureRole::CodeReview)
        {
            let Some(code) = &spec.code else {
                return Err(ManifestError::Signature(format!(
                    "a code review by `{}` on a job without [code]",
                    s.signer
                )));
            };
            let digest =
                confide_core::code::digest_bytes(&code.digest).map_err(ManifestError::Signature)?;
            s.verify(&digest).map_err(|e| {
                ManifestError::Signature(format!("{e} (it reviewed another bundle)"))
            })?;
            if code_reviews.contains(&s.signer) {
                return Err(ManifestError::Signature(format!(
                    "`{}` reviewed the code twice",
                    s.signer
                )));
            }
            code_reviews.push(s.signer.clone());
        }
        Ok(VerifiedManifest {
            spec,
            manifest: self.manifest.clone(),
            hash,
            approvals,
            code_reviews,
        })
    }

    /// Adds `approver`'s co-signature, after verifying everything already there.
    ///
    /// # Errors
    /// The manifest does not verify, or `approver` already approved it.
    pub fn approve(&mut self, approver: &Identity) -> Result<(), ManifestError> {
        let verified = self.verify()?;
        if verified.approvals.contains(&approver.id()) {
            return Err(ManifestError::Signature(format!(
                "`{}` already approved",
                approver.id()
            )));
        }
        self.signatures.push(ManifestSignature::make(
            SignatureRole::Approval,
            &verified.hash,
            approver,
        ));
        Ok(())
    }

    /// Adds `reviewer`'s co-signature of the job's code bundle digest, after verifying
    /// everything already there.
    ///
    /// # Errors
    /// The manifest does not verify, has no `[code]`, or `reviewer` already reviewed it.
    pub fn review_code(&mut self, reviewer: &Identity) -> Result<(), ManifestError> {
        let verified = self.verify()?;
        let Some(code) = &verified.spec.code else {
            return Err(ManifestError::Signature(
                "the job has no [code] to review".into(),
            ));
        };
        if verified.code_reviews.contains(&reviewer.id()) {
            return Err(ManifestError::Signature(format!(
                "`{}` already reviewed this bundle",
                reviewer.id()
            )));
        }
        let digest =
            confide_core::code::digest_bytes(&code.digest).map_err(ManifestError::Signature)?;
        self.signatures.push(ManifestSignature::make(
            SignatureRole::CodeReview,
            &digest,
            reviewer,
        ));
        Ok(())
    }

    /// Parses a manifest file (JSON).
    ///
    /// # Errors
    /// Not a manifest file.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        serde_json::from_str(text).map_err(|e| ManifestError::Malformed(e.to_string()))
    }

    /// The manifest file's text (pretty JSON; only the manifest's canonical bytes are hashed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads a manifest file.
    ///
    /// # Errors
    /// Unreadable or malformed.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ManifestError::Io(format!("{}: {e}", path.display())))?;
        Self::from_json(&text)
            .map_err(|e| ManifestError::Malformed(format!("{}: {e}", path.display())))
    }

    /// Writes the manifest file atomically (a temporary file renamed into place).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| ManifestError::Io(format!("{}: {e}", path.display()));
        std::fs::write(&tmp, self.to_json()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec() -> JobSpec {
        let text = r#"
            [job]
            id = "t"
            rounds = 3
            scheme = "plain"
            min_owners = 2
            [model]
            kind = "logistic"
            classes = 2
            [data]
            label = "y"
            feature_count = 2
            [training]
            local_epochs = 1
            batch_size = 8
            learning_rate = 0.1
            [[parties]]
            name = "a"
            data = "a.csv"
            [[parties]]
            name = "b"
            data = "b.csv"
        "#;
        confide_core::JobConfig::parse(text).expect("job").spec()
    }

    fn with_code(text: &str) -> JobSpec {
        let mut spec = spec();
        let files = vec![
            confide_core::code::CodeFile {
                path: "train.py".into(),
                sha256: "aa".repeat(32),
                size: text.len() as u64,
            },
            confide_core::code::CodeFile {
                path: "requirements.lock".into(),
                sha256: "bb".repeat(32),
                size: 1,
            },
        ];
        spec.code = Some(confide_core::code::CodeSection {
            kind: confide_core::code::CodeKind::Python,
            dir: None,
            bundle: "loop".into(),
            entry: "train:fit".into(),
            lock: "requirements.lock".into(),
            env: "numpy".into(),
            digest: confide_core::code::digest(&files),
            files,
        });
        spec.validate().expect("valid");
        spec
    }

    #[test]
    fn a_code_review_signs_the_bundle_digest_and_nothing_else() {
        let owner = Identity::generate().expect("key");
        let reviewer = Identity::generate().expect("key");
        // A job without code cannot be reviewed.
        let m = Manifest::new(&spec(), Mode::Federated, owner.public(), vec![]).expect("m");
        let mut plain = SignedManifest::sign(m, &owner).expect("sign");
        assert!(plain.review_code(&reviewer).is_err());

        let code = with_code("a");
        let m = Manifest::new(&code, Mode::Federated, owner.public(), vec![]).expect("m");
        let mut signed = SignedManifest::sign(m, &owner).expect("sign");
        assert!(signed.verify().expect("ok").code_reviews.is_empty());
        signed.review_code(&reviewer).expect("review");
        assert!(signed.review_code(&reviewer).is_err(), "reviewing twice");
        let v = signed.verify().expect("ok");
        assert_eq!(v.code_reviews, vec![reviewer.id()]);
        assert!(v.approvals.is_empty(), "a review is not an approval");
        assert_eq!(
            v.job_request(None).code_reviews,
            vec![reviewer.id()],
            "the policy sees it"
        );
        assert_eq!(v.job_request(None).code, "python");
        let review = signed
            .signatures
            .iter()
            .find(|s| s.role == SignatureRole::CodeReview)
            .cloned()
            .expect("review");
        // The same review on a job with another bundle (another digest) fails.
        let other = with_code("bb");
        let m = Manifest::new(&other, Mode::Federated, owner.public(), vec![]).expect("m");
        let mut moved = SignedManifest::sign(m, &owner).expect("sign");
        moved.signatures.push(review.clone());
        let e = moved.verify().expect_err("another bundle");
        assert!(e.to_string().contains("reviewed another bundle"), "{e}");
        // A review cannot pass for an approval of the manifest.
        let mut as_approval = signed.clone();
        as_approval
            .signatures
            .retain(|s| s.role != SignatureRole::CodeReview);
        as_approval.signatures.push(ManifestSignature {
            role: SignatureRole::Approval,
            ..review
        });
        assert!(as_approval.verify().is_err());
    }

    #[test]
    fn sign_verify_approve_and_tamper() {
        let owner = Identity::generate().expect("key");
        let node = Identity::generate().expect("key");
        let m = Manifest::new(&spec(), Mode::Federated, owner.public(), vec![]).expect("manifest");
        assert_eq!(m.recipients, vec![owner.id()]);
        assert!(m.describes(&spec()));
        let mut signed = SignedManifest::sign(m, &owner).expect("sign");
        let v = signed.verify().expect("verifies");
        assert!(v.approvals.is_empty());
        signed.approve(&node).expect("approve");
        assert!(signed.approve(&node).is_err(), "approving twice");
        let back = SignedManifest::from_json(&signed.to_json()).expect("parse");
        assert_eq!(back.verify().expect("verifies").approvals, vec![node.id()]);

        // Only the model owner can sign.
        let m = Manifest::new(&spec(), Mode::Federated, owner.public(), vec![]).expect("manifest");
        assert!(SignedManifest::sign(m, &node).is_err());

        // A change after approval: the hash no longer matches.
        let mut changed = back.clone();
        changed.manifest.spec["training"]["learning_rate"] = serde_json::json!(0.5);
        assert!(changed.verify().is_err());
        // Re-hashed and re-signed by the model owner, the old approval still fails.
        let mut resigned = SignedManifest::sign(changed.manifest.clone(), &owner).expect("sign");
        resigned.signatures.extend(
            back.signatures
                .iter()
                .filter(|s| s.role == SignatureRole::Approval)
                .cloned(),
        );
        let err = resigned.verify().expect_err("stale approval");
        assert!(err.to_string().contains("changed after approval"), "{err}");
        // A flipped signature bit.
        let mut bad = back.clone();
        let s = &mut bad.signatures[0].signature;
        let flipped = if s.starts_with('0') { "1" } else { "0" };
        s.replace_range(0..1, flipped);
        assert!(bad.verify().is_err());
        // A spec that no longer describes the job.
        let mut other = spec();
        other.job.rounds = 4;
        assert!(!back.manifest.describes(&other));
    }
}
