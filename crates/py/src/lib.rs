//! The native part of the `confide` Python package.
//!
//! Everything here is Confide's own Rust, reached from Python: the same identities, manifest
//! bytes, signatures, policy checks, accountants and partitioners as the `confide` command.
//! This module holds the operations, testable with `cargo test` and no Python; [`python`]
//! (feature `python`, turned on by `pyproject.toml`) exposes them through PyO3. Answers cross
//! into Python as JSON text, which the package's Python layer (`python/confide`) turns into
//! typed objects.

use std::path::Path;

use confide_core::{JobConfig, JobSpec, PrivacyLevel};
use confide_dp::plan::Accountant;
use confide_governance::identity::{Identity, TlsKey, public_path, tls_key_path};
use confide_governance::manifest::{Manifest, Mode, SignedManifest};
use confide_governance::policy::Policy;
use confide_ml::export::{ModelCard, from_safetensors};
use confide_ml::partition::Partitioner;
use serde_json::{Value, json};

#[cfg(feature = "python")]
pub mod python;

/// Which Python exception a failure becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A key file: unreadable, not Ed25519, a wrong or missing passphrase.
    Identity,
    /// A job file or a manifest: invalid, or a signature that does not verify.
    Manifest,
    /// A policy file.
    Policy,
    /// Privacy parameters outside their domain, or an unreachable target.
    Accounting,
    /// A split that cannot be made.
    Partition,
    /// A released model's files.
    Model,
    /// The coordinator refused the request.
    Refused,
    /// No such job (or none the caller may see).
    NotFound,
    /// The coordinator could not be reached, or answered nonsense.
    Unavailable,
    /// Bad arguments, or a file that exists where a new one was asked for.
    Usage,
}

/// A failure: its kind and the message shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Which exception class.
    pub kind: Kind,
    /// What went wrong, in words.
    pub message: String,
}

impl Error {
    fn new(kind: Kind, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<confide_net::client::ClientError> for Error {
    fn from(e: confide_net::client::ClientError) -> Self {
        use confide_net::client::ClientError as C;
        let kind = match &e {
            C::Refused(_) => Kind::Refused,
            C::NotFound(_) => Kind::NotFound,
            C::Unavailable(_) | C::Malformed(_) => Kind::Unavailable,
            C::Local(_) => Kind::Identity,
        };
        Self::new(kind, e)
    }
}

/// The result of an operation.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn manifest_error(e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Manifest, e)
}

/// Makes a new identity (an Ed25519 key and, unless `tls` is false, the P-256 TLS key bound
/// to it), as `confide keygen`.
///
/// # Errors
/// The system's randomness failed.
pub fn generate_identity(tls: bool) -> Result<(Identity, Option<TlsKey>)> {
    let id = Identity::generate().map_err(|e| Error::new(Kind::Identity, e))?;
    let tls = if tls {
        Some(TlsKey::generate().map_err(|e| Error::new(Kind::Identity, e))?)
    } else {
        None
    };
    Ok((id, tls))
}

/// Writes an identity as `confide keygen` does: the key (mode 0600, encrypted under a
/// passphrase when one is given), `<path>.pub`, and the TLS key beside it. Refuses to
/// overwrite. Returns what `confide keygen` prints.
///
/// # Errors
/// A file exists or cannot be written.
pub fn save_identity(
    id: &Identity,
    tls: Option<&TlsKey>,
    path: &Path,
    passphrase: Option<&str>,
) -> Result<Value> {
    id.save_with(path, passphrase, tls)
        .map_err(|e| Error::new(Kind::Identity, e))?;
    Ok(json!({
        "id": id.id(),
        "public_key": hex::encode(id.public_key()),
        "key_file": path.display().to_string(),
        "tls_key_file": tls.map(|_| tls_key_path(path).display().to_string()),
        "public_file": public_path(path).display().to_string(),
        "encrypted": passphrase.is_some(),
    }))
}

/// Reads a key file (encrypted ones need their passphrase).
///
/// # Errors
/// Unreadable, not an Ed25519 key, or a wrong or missing passphrase.
pub fn load_identity(path: &Path, passphrase: Option<&str>) -> Result<Identity> {
    Identity::load(path, passphrase).map_err(|e| Error::new(Kind::Identity, e))
}

/// Reads and validates a job file (TOML), as `confide job sign` does.
///
/// # Errors
/// Unreadable or invalid (the message names the field).
pub fn load_job(path: &Path) -> Result<JobSpec> {
    Ok(JobConfig::load(path).map_err(manifest_error)?.spec())
}

/// Parses and validates a job from TOML text.
///
/// # Errors
/// Invalid (the message names the field).
pub fn parse_job(text: &str) -> Result<JobSpec> {
    Ok(JobConfig::parse(text).map_err(manifest_error)?.spec())
}

/// The job with its model replaced by an ONNX graph's layer list and weights
/// ([`confide_ml::onnx`]), as `confide model import` writes them into a job file: the weights
/// travel in the job (`[model] init`), bound by the manifest. Returns the new job and what was
/// imported (input, classes, layer names, parameter count, dropped nodes, the digests).
///
/// # Errors
/// An unreadable or unsupported graph (refused by operator and node), weights too large to
/// carry in a job, or a layer list that does not fit the job's data.
pub fn model_from_onnx(spec: &JobSpec, path: &Path) -> Result<(JobSpec, Value)> {
    use base64::Engine as _;
    let model_error = |e: &dyn std::fmt::Display| Error::new(Kind::Model, e);
    let bytes = std::fs::read(path)
        .map_err(|e| model_error(&format!("cannot read {}: {e}", path.display())))?;
    let imported = confide_ml::onnx::import(&bytes).map_err(|e| model_error(&e))?;
    let mut next = spec.clone();
    next.model.kind = confide_ml::ModelKind::Layers;
    next.model.hidden = Vec::new();
    next.model.classes = imported.classes;
    next.model.input = imported.input.clone();
    next.model.layers = imported.layers.clone();
    let weights =
        confide_ml::export::to_safetensors(&confide_ml::job::model_spec(&next), &imported.params)
            .map_err(|e| model_error(&e))?;
    if weights.len() > confide_core::config::MAX_INIT_BYTES {
        return Err(model_error(&format!(
            "the graph's weights have {} bytes; a job carries at most {}",
            weights.len(),
            confide_core::config::MAX_INIT_BYTES
        )));
    }
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &weights));
    next.model.init = Some(confide_core::config::InitWeights {
        file: None,
        sha256: sha256.clone(),
        safetensors: base64::engine::general_purpose::STANDARD.encode(&weights),
    });
    next.validate().map_err(manifest_error)?;
    confide_ml::job::initial_params(&next, next.job.seed).map_err(|e| model_error(&e))?;
    let summary = json!({
        "onnx_sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
        "init_sha256": sha256,
        "input": imported.input,
        "classes": imported.classes,
        "layers": imported.layers.iter().map(|l| l.name()).collect::<Vec<_>>(),
        "parameters": imported.params.len(),
        "dropped": imported.dropped,
    });
    Ok((next, summary))
}

/// The job with the model owner's training code attached: `dir` is hashed into the file list
/// and digest the manifest binds (see [`confide_core::code`]). Returns the new job and the
/// digest.
///
/// # Errors
/// An unreadable directory, a link or special file in it, no file for the entry point's
/// module or for `lock`, or a job that cannot run user code (record-level DP).
pub fn attach_code(
    spec: &JobSpec,
    dir: &Path,
    code: (&str, &str, &str, &str),
) -> Result<(JobSpec, String)> {
    let (bundle, entry, lock, env) = code;
    let files = confide_core::code::hash_dir(dir).map_err(|e| Error::new(Kind::Manifest, e))?;
    let mut next = spec.clone();
    next.code = Some(confide_core::code::CodeSection {
        kind: confide_core::code::CodeKind::Python,
        dir: None,
        bundle: bundle.into(),
        entry: entry.into(),
        lock: lock.into(),
        env: env.into(),
        digest: confide_core::code::digest(&files),
        files,
    });
    next.validate().map_err(manifest_error)?;
    let digest = next
        .code
        .as_ref()
        .map(|c| c.digest.clone())
        .unwrap_or_default();
    Ok((next, digest))
}

/// Signs a federated job as its model owner: the same manifest, hash and signature as
/// `confide job sign` for the same job, key and recipients.
///
/// # Errors
/// A recipient that is not a party id, or a job the manifest cannot carry.
pub fn sign_job(
    spec: &JobSpec,
    owner: &Identity,
    recipients: Vec<String>,
) -> Result<SignedManifest> {
    let manifest =
        Manifest::new(spec, Mode::Federated, owner.public(), recipients).map_err(manifest_error)?;
    SignedManifest::sign(manifest, owner).map_err(manifest_error)
}

/// Writes a signed manifest; refuses to replace a file unless `overwrite`.
///
/// # Errors
/// The file exists (without `overwrite`) or cannot be written.
pub fn save_manifest(signed: &SignedManifest, path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::new(
            Kind::Usage,
            format!("{} already exists; refusing to overwrite", path.display()),
        ));
    }
    signed.save(path).map_err(manifest_error)
}

/// Verifies a manifest's signatures and describes it, as `confide job verify` prints.
///
/// # Errors
/// A signature does not verify, or the manifest is malformed.
pub fn verify_manifest(signed: &SignedManifest) -> Result<Value> {
    Ok(signed.verify().map_err(manifest_error)?.summary())
}

/// Whether a signed manifest describes `spec` (the job has not changed since signing).
///
/// # Errors
/// The manifest does not verify.
pub fn describes(signed: &SignedManifest, spec: &JobSpec) -> Result<bool> {
    let v = signed.verify().map_err(manifest_error)?;
    Ok(v.manifest.describes(spec))
}

/// A data owner's review of a signed job against a policy file: the decision (the first
/// rule that allows it, or why it is refused), each rule's own verdict, and the privacy cost.
///
/// With `records` (the size of the owner's dataset), the cost is what the node's accountant
/// computes for that dataset, as the node daemon does when the job is offered. Without it, a
/// record-level job that fixes σ has a cost that depends on the dataset, so the policy's ε
/// rules are checked against its target ε when it states one, and the answer says so.
///
/// # Errors
/// The manifest does not verify, the policy is invalid, or the job's privacy settings
/// cannot be met for `records` records.
pub fn review(signed: &SignedManifest, policy: &Path, records: Option<usize>) -> Result<Value> {
    let v = signed.verify().map_err(manifest_error)?;
    let policy = Policy::load(policy).map_err(|e| Error::new(Kind::Policy, e))?;
    let spec = &v.spec;
    let client_level = spec
        .privacy
        .as_ref()
        .is_some_and(|p| p.level == PrivacyLevel::Client);
    let mut note = Value::Null;
    let cost = match (records, client_level) {
        (Some(n), _) => {
            confide_net::node::privacy_cost(spec, n).map_err(|e| Error::new(Kind::Accounting, e))?
        }
        // Client-level noise does not depend on the dataset's size.
        (None, true) => {
            confide_net::node::privacy_cost(spec, 1).map_err(|e| Error::new(Kind::Accounting, e))?
        }
        (None, false) => {
            if spec.privacy.is_some() {
                note = json!(
                    "record-level ε depends on the dataset's size: give records=N for the cost a node with N records computes"
                );
            }
            None
        }
    };
    let privacy = match &cost {
        Some(c) => Some((c.epsilon, c.delta)),
        None => spec
            .privacy
            .as_ref()
            .and_then(|p| p.target_epsilon.map(|e| (e, p.delta))),
    };
    if spec.privacy.is_some() && privacy.is_none() {
        // Without its ε, every `max_epsilon` rule would read the job as having no DP.
        return Err(Error::new(
            Kind::Usage,
            "the job fixes σ, so its ε depends on the dataset's size: give records=N",
        ));
    }
    let request = v.job_request(privacy);
    let (decision, rules) = policy.review(&request, time::OffsetDateTime::now_utc());
    let decision = match decision {
        Ok(a) => json!({ "allowed": true, "rule": a.rule, "approval": a.approval }),
        Err(d) => json!({ "allowed": false, "reason": d.to_string() }),
    };
    Ok(json!({
        "hash": v.hash_hex(),
        "job_id": v.manifest.job_id,
        "model_owner": v.manifest.model_owner.id,
        "decision": decision,
        "rules": rules,
        "cost": cost,
        "checked_epsilon": privacy.map(|p| p.0),
        "note": note,
        "code": v.summary()["code"],
    }))
}

fn accountant(name: &str) -> Result<Accountant> {
    match name {
        "rdp" => Ok(Accountant::Rdp),
        "pld" => Ok(Accountant::Pld),
        other => Err(Error::new(
            Kind::Usage,
            format!("unknown accountant `{other}` (rdp or pld)"),
        )),
    }
}

/// ε of `steps` Poisson-subsampled Gaussian steps, as `confide dp epsilon` computes it.
///
/// # Errors
/// Parameters outside their domain, or an unknown accountant.
pub fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64, acc: &str) -> Result<f64> {
    accountant(acc)?
        .epsilon(q, sigma, steps, delta)
        .map_err(|e| Error::new(Kind::Accounting, e))
}

/// The smallest σ whose ε is at most `target_epsilon`, as `confide dp sigma` computes it.
///
/// # Errors
/// Parameters outside their domain, an unreachable target, or an unknown accountant.
pub fn sigma(target_epsilon: f64, q: f64, steps: u64, delta: f64, acc: &str) -> Result<f64> {
    accountant(acc)?
        .noise_multiplier_for(target_epsilon, q, steps, delta)
        .map_err(|e| Error::new(Kind::Accounting, e))
}

/// A partitioner by name: `natural`, `iid`, `dirichlet` (with `alpha`), `shards` (with
/// `shards_per_owner`) or `quantity` (with `beta`).
///
/// # Errors
/// An unknown name, or a missing parameter.
pub fn partitioner(
    how: &str,
    alpha: Option<f64>,
    beta: Option<f64>,
    shards_per_owner: Option<usize>,
) -> Result<Partitioner> {
    let need = |what: &str| Error::new(Kind::Usage, format!("`{how}` needs {what}"));
    Ok(match how {
        "natural" => Partitioner::Natural,
        "iid" => Partitioner::Iid,
        "dirichlet" => Partitioner::Dirichlet {
            alpha: alpha.ok_or_else(|| need("alpha"))?,
        },
        "quantity" => Partitioner::Quantity {
            beta: beta.ok_or_else(|| need("beta"))?,
        },
        "shards" => Partitioner::Shards {
            per_owner: shards_per_owner.ok_or_else(|| need("shards_per_owner"))?,
        },
        other => {
            return Err(Error::new(
                Kind::Usage,
                format!(
                    "unknown partitioner `{other}` (natural, iid, dirichlet, shards, quantity)"
                ),
            ));
        }
    })
}

/// Splits records among owners with Confide's seeded partitioners (the same split as
/// `[simulate.partition]` for the same labels, groups and seed).
///
/// # Errors
/// See [`confide_ml::partition::PartitionError`].
pub fn partition(
    labels: &[u32],
    groups: Option<&[String]>,
    owners: usize,
    how: &Partitioner,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    confide_ml::partition::partition(labels, groups, owners, how, seed)
        .map_err(|e| Error::new(Kind::Partition, e))
}

/// A released model read back: its card and its tensors in parameter order.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The card (`model.json`), as JSON.
    pub card: Value,
    /// Each tensor: its name, shape and values.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Reads a released model: the card (`model.json`, or a directory holding it) and the
/// safetensors file beside it, checked against the card's architecture.
///
/// # Errors
/// A file is missing or unreadable, or the weights do not match the card.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let card_path = if path.is_dir() {
        path.join("model.json")
    } else {
        path.to_path_buf()
    };
    let model_error = |e: &dyn std::fmt::Display| Error::new(Kind::Model, e);
    let text = std::fs::read_to_string(&card_path)
        .map_err(|e| model_error(&format!("cannot read {}: {e}", card_path.display())))?;
    let card: ModelCard = serde_json::from_str(&text)
        .map_err(|e| model_error(&format!("{} is not a model card: {e}", card_path.display())))?;
    let weights = card_path.with_extension("safetensors");
    let bytes = std::fs::read(&weights)
        .map_err(|e| model_error(&format!("cannot read {}: {e}", weights.display())))?;
    let params = from_safetensors(&card.spec, &bytes)
        .map_err(|e| model_error(&format!("{}: {e}", weights.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| model_error(&e))?;
    // `from_safetensors` checked every tensor of the architecture; each is read by its own
    // name, so a card that lists them in another order cannot pair values with wrong names.
    if card.tensors.len() != st.len() {
        return Err(model_error(&"the card's tensors do not match its weights"));
    }
    let mut tensors = Vec::with_capacity(card.tensors.len());
    for name in &card.tensors {
        let view = st.tensor(name).map_err(|e| model_error(&e))?;
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push((name.clone(), view.shape().to_vec(), values));
    }
    if tensors.iter().map(|t| t.2.len()).sum::<usize>() != params.len() {
        return Err(model_error(&"the card's tensors do not match its weights"));
    }
    Ok(LoadedModel {
        card: serde_json::to_value(&card).map_err(|e| model_error(&e))?,
        tensors,
    })
}

#[cfg(test)]
mod tests;
