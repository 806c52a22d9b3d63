//! The trusted core's state machine (sans-I/O): it holds the upload key, the sealing key and
//! the attestation signer; it decrypts uploads, trains with DP-SGD, seals what it keeps and
//! releases the model only to the configured recipients. Everything arrives through
//! [`TrustedCore::handle`]; nothing here opens a file or a socket.

use std::collections::BTreeMap;

use confide_attest::dev::DevTee;
use confide_crypto::envelope::{self, RecipientKey};
use confide_crypto::seal::SealingKey;
use confide_ml::Dataset;
use confide_ml::dpsgd::{self, CsprngNoise};
use rand::SeedableRng;

use crate::protocol::{
    CoreConfig, CoreReply, CoreRequest, SealedBlob, TrainingReport, bound_key, dataset_context,
    model_context, recipient_key_message, release_statement, upload_message,
};

/// The trusted core's identity in its sealing key derivation.
pub const IDENTITY: &str = "confide-trainer-core";

/// Where the evidence comes from: a TEE's quoting facility, or the insecure dev TEE.
pub trait Attester: Send {
    /// Evidence carrying `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> confide_attest::Evidence;
}

impl Attester for DevTee {
    fn evidence(&self, report_data: &[u8; 64]) -> confide_attest::Evidence {
        DevTee::evidence(self, report_data)
    }
}

/// The trusted core of one job.
pub struct TrustedCore {
    config: CoreConfig,
    config_digest: [u8; 32],
    job_digest: [u8; 32],
    attester: Box<dyn Attester>,
    upload_key: RecipientKey,
    sealing: SealingKey,
    /// The latest version sealed per slot: an older blob handed back is a rollback.
    versions: BTreeMap<String, u64>,
    /// Owners whose dataset was accepted, with the envelope id.
    accepted: BTreeMap<String, String>,
    /// Whether the model was trained: a core trains once, so the job's ε is spent once.
    trained: bool,
    /// The training report as released (its digest is bound into each release's evidence).
    report_json: Option<String>,
}

impl std::fmt::Debug for TrustedCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustedCore(job {}, config {})",
            self.config.spec.job.id,
            hex::encode(self.config_digest)
        )
    }
}

type Refusal = String;

impl TrustedCore {
    /// A core for `config`, attesting with `attester`, sealing under a key derived from
    /// `seal_root` (the platform's sealing key; a key file in dev mode), its `measurement` and
    /// [`IDENTITY`]. The job must have a `[privacy]` section.
    pub fn new(
        config: CoreConfig,
        attester: Box<dyn Attester>,
        seal_root: &[u8; 32],
        measurement: &[u8; 32],
    ) -> Result<Self, String> {
        config.spec.validate().map_err(|e| e.to_string())?;
        if config.spec.privacy.is_none() {
            return Err("the confidential trainer trains with DP-SGD only: the job needs a [privacy] section".into());
        }
        if config.recipients.is_empty() {
            return Err("the configuration names no model recipient".into());
        }
        for (name, key) in config.owners.iter().chain(&config.recipients) {
            let ok = hex::decode(key).is_ok_and(|k| k.len() == 32);
            if !ok {
                return Err(format!("`{name}`: not a 32-byte Ed25519 public key in hex"));
            }
        }
        // The sealing key is bound to this configuration and to this instance: a blob sealed
        // for another job, or by an earlier core with the same root, does not open here
        // (versions live in this instance's memory, so nothing may outlive it).
        let mut instance = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut instance);
        let config_digest = config.digest();
        let identity = format!(
            "{IDENTITY} config={} instance={}",
            hex::encode(config_digest),
            hex::encode(instance)
        );
        Ok(Self {
            config_digest,
            job_digest: config.job_digest(),
            config,
            attester,
            upload_key: RecipientKey::generate(),
            sealing: SealingKey::derive(seal_root, measurement, &identity),
            versions: BTreeMap::new(),
            accepted: BTreeMap::new(),
            trained: false,
            report_json: None,
        })
    }

    /// Handles one request from the host.
    pub fn handle(&mut self, request: CoreRequest) -> CoreReply {
        let result = match request {
            CoreRequest::Attest { nonce } => self.attest(&nonce),
            CoreRequest::Ingest {
                owner,
                envelope,
                signature,
            } => self.ingest(&owner, &envelope, &signature),
            CoreRequest::Train {
                datasets,
                public_test,
                seed,
            } => self.train(&datasets, &public_test, seed),
            CoreRequest::Release {
                recipient,
                key,
                signature,
                model,
                nonce,
            } => self.release(&recipient, &key, &signature, &model, &nonce),
        };
        result.unwrap_or_else(|reason| CoreReply::Refused { reason })
    }

    fn attest(&self, nonce: &[u8]) -> Result<CoreReply, Refusal> {
        let nonce: [u8; 32] = nonce
            .try_into()
            .map_err(|_| format!("a nonce must be 32 bytes, not {}", nonce.len()))?;
        let public_key = self.upload_key.public_bytes();
        let report_data =
            confide_attest::binding(&bound_key(&public_key, &self.config_digest), &nonce);
        Ok(CoreReply::Evidence {
            evidence: self.attester.evidence(&report_data),
            public_key,
            config_digest: self.config_digest.to_vec(),
        })
    }

    fn owner_key(&self, owner: &str) -> Result<Vec<u8>, Refusal> {
        let key = self
            .config
            .owners
            .get(owner)
            .ok_or_else(|| format!("`{owner}` is not an owner of this job"))?;
        hex::decode(key).map_err(|e| e.to_string())
    }

    fn next_version(&mut self, slot: &str) -> u64 {
        let v = self.versions.get(slot).map_or(1, |v| v + 1);
        self.versions.insert(slot.to_string(), v);
        v
    }

    fn seal(&mut self, slot: &str, plaintext: &[u8]) -> Result<SealedBlob, Refusal> {
        let version = self.next_version(slot);
        let blob = self
            .sealing
            .seal(slot, version, plaintext)
            .map_err(|e| e.to_string())?;
        Ok(SealedBlob {
            slot: slot.to_string(),
            version,
            blob,
        })
    }

    /// Opens a blob the host hands back: it must be the latest version sealed in this slot.
    fn unseal(&self, b: &SealedBlob) -> Result<Vec<u8>, Refusal> {
        let latest = self
            .versions
            .get(&b.slot)
            .ok_or_else(|| format!("nothing was sealed as `{}`", b.slot))?;
        self.sealing
            .unseal_version(&b.slot, *latest, &b.blob)
            .map_err(|e| e.to_string())
    }

    fn ingest(
        &mut self,
        owner: &str,
        envelope_bytes: &[u8],
        signature: &[u8],
    ) -> Result<CoreReply, Refusal> {
        if self.trained {
            return Err("the model was trained: no more data is accepted".into());
        }
        let key = self.owner_key(owner)?;
        let id = envelope::content_id(envelope_bytes);
        confide_crypto::sign::verify(
            &key,
            &upload_message(&self.job_digest, owner, &id),
            signature,
        )
        .map_err(|_| format!("the upload of `{owner}` is not signed by its key"))?;
        let mut csv = Vec::new();
        let opened = envelope::open(&self.upload_key, &mut &envelope_bytes[..], &mut csv)
            .map_err(|e| e.to_string())?;
        if opened.context != dataset_context(&self.job_digest, owner) {
            return Err(format!(
                "the envelope of `{owner}` is for another job or owner: `{}`",
                String::from_utf8_lossy(&opened.context)
            ));
        }
        let data = self.parse(&csv, owner)?;
        let sealed = self.seal(&format!("dataset/{owner}"), &csv)?;
        self.accepted.insert(owner.to_string(), id.clone());
        Ok(CoreReply::Stored {
            sealed,
            envelope_id: id,
            rows: data.len(),
        })
    }

    /// Parses a CSV under the job's schema. The error names the source and, for a bad cell,
    /// its line, never its content: refusals go to the untrusted host.
    fn parse(&self, csv: &[u8], shown: &str) -> Result<Dataset, Refusal> {
        confide_ml::job::read_job_data(&self.config.spec, csv, shown).map_err(|e| {
            format!(
                "`{shown}` does not parse under the job's schema: {} (details withheld from the host)",
                e.public_reason(&self.config.spec.data.features)
            )
        })
    }

    fn train(
        &mut self,
        datasets: &[SealedBlob],
        public_test: &[u8],
        seed: u64,
    ) -> Result<CoreReply, Refusal> {
        if self.trained {
            return Err(
                "the model was already trained: a core trains once, so the job's ε is spent once"
                    .into(),
            );
        }
        let spec = &self.config.spec;
        let missing: Vec<&String> = self
            .config
            .owners
            .keys()
            .filter(|o| !self.accepted.contains_key(*o))
            .collect();
        if self.accepted.len() < spec.job.min_owners {
            return Err(format!(
                "{} owners uploaded, the job needs {}; missing: {missing:?}",
                self.accepted.len(),
                spec.job.min_owners
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut parts = Vec::with_capacity(datasets.len());
        for b in datasets {
            let owner = b
                .slot
                .strip_prefix("dataset/")
                .ok_or_else(|| format!("`{}` is not a dataset", b.slot))?;
            if !self.accepted.contains_key(owner) || !seen.insert(owner.to_string()) {
                return Err(format!(
                    "`{}` is not an accepted dataset, or repeated",
                    b.slot
                ));
            }
            parts.push(self.parse(&self.unseal(b)?, owner)?);
        }
        if seen.len() != self.accepted.len() {
            return Err(format!(
                "{} of the {} accepted datasets were handed over",
                seen.len(),
                self.accepted.len()
            ));
        }
        let train = Dataset::concat(parts).ok_or("no dataset")?;
        let privacy = spec.privacy.as_ref().ok_or("no [privacy] section")?;
        let epochs = spec
            .job
            .rounds
            .checked_mul(spec.training.local_epochs)
            .ok_or("job.rounds × training.local_epochs overflows")?;
        let run = dpsgd::plan_private_run(
            privacy,
            train.len(),
            spec.training.batch_size,
            epochs,
            1,
            spec.training.learning_rate,
            spec.training.l2,
        )?;
        let model = confide_ml::job::model_spec(spec);
        let mut sampler = rand_chacha::ChaCha20Rng::from_entropy();
        let mut noise = CsprngNoise::from_entropy()?;
        let out = dpsgd::train_dp(
            &model,
            &confide_ml::job::initial_params(spec, seed)?,
            &train,
            &run.config,
            &mut sampler,
            &mut noise,
            &mut |_, _| {},
        )
        .map_err(|e| e.to_string())?;
        let public_test_accuracy = if public_test.is_empty() {
            None
        } else {
            let test = self.parse(public_test, "public test set")?;
            Some(
                confide_ml::train::evaluate(&model, &out.params, &test)
                    .map_err(|e| e.to_string())?
                    .accuracy,
            )
        };
        let bytes: Vec<u8> = out.params.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.trained = true;
        let sealed = self.seal("model", &bytes)?;
        let report = TrainingReport {
            rows: train.len(),
            steps: out.steps,
            epsilon: run.plan.epsilon,
            delta: run.plan.delta,
            accountant: run.plan.accountant.as_str().to_string(),
            noise_multiplier: run.config.noise_multiplier,
            public_test_accuracy,
        };
        self.report_json = Some(serde_json::to_string(&report).map_err(|e| e.to_string())?);
        Ok(CoreReply::Trained {
            model: sealed,
            report,
        })
    }

    fn release(
        &mut self,
        recipient: &str,
        key: &[u8],
        signature: &[u8],
        model: &SealedBlob,
        nonce: &[u8],
    ) -> Result<CoreReply, Refusal> {
        let nonce: [u8; 32] = nonce
            .try_into()
            .map_err(|_| format!("a nonce must be 32 bytes, not {}", nonce.len()))?;
        let signer = self
            .config
            .recipients
            .get(recipient)
            .ok_or_else(|| format!("`{recipient}` may not receive this model"))?;
        let signer = hex::decode(signer).map_err(|e| e.to_string())?;
        confide_crypto::sign::verify(
            &signer,
            &recipient_key_message(&self.job_digest, recipient, key),
            signature,
        )
        .map_err(|_| format!("the key offered for `{recipient}` is not signed by it"))?;
        if model.slot != "model" {
            return Err(format!("`{}` is not the model", model.slot));
        }
        let params = self.unseal(model)?;
        let mut out = Vec::new();
        let summary = envelope::seal(
            key,
            &model_context(&self.job_digest, recipient),
            envelope::DEFAULT_CHUNK,
            &mut &params[..],
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        let report_json = self
            .report_json
            .clone()
            .ok_or("the model has no training report: this core did not train it")?;
        let report_data = confide_attest::binding(
            &release_statement(&summary.id, &report_json, &self.config_digest),
            &nonce,
        );
        Ok(CoreReply::Released {
            envelope: out,
            envelope_id: summary.id,
            report_json,
            evidence: self.attester.evidence(&report_data),
        })
    }
}
