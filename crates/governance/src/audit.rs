//! The append-only audit log.
//!
//! Every entry (a registration, approval, job start, round, job end, model release, upload,
//! refusal or revocation: an [`Event`] in RFC 8785 canonical JSON) is stored and becomes a
//! leaf of an RFC 9162 Merkle tree ([`crate::merkle`]). An entry and its leaf hash are
//! appended in one store transaction: a crash in the middle of an append leaves either both or
//! neither, so the log always verifies.
//!
//! The log's operator (the coordinator, or the trainer) signs **tree heads** `(size, root,
//! timestamp)` with its Ed25519 identity; the log id is that key's party id. Witnesses (every
//! data owner's node, [`crate::witness`]) cosign a head only after checking that it extends the
//! last head they saw, so a log that rewrites or forks its history is caught by every owner.
//!
//! # Signed messages
//! - tree head: `"confide/tree-head/v1\n" ‖ log id ‖ "\n" ‖ size (u64 BE) ‖ root (32 bytes) ‖
//!   timestamp (u64 BE, Unix milliseconds)`;
//! - cosignature: the same with the prefix `"confide/witness-cosignature/v1\n"`.
//!
//! # The exported log file (`confide audit export`)
//! One JSON object in RFC 8785 canonical form followed by a single `\n`:
//! `{"cosignatures": [...], "entries": [...], "format": "confide-audit-log/1",
//! "log_public_key": hex, "tree_head": {...}}`. `entries` are the events in log order (each
//! entry's leaf is its canonical bytes); `tree_head` is the signed head over exactly those
//! entries; `cosignatures` are the witnesses' cosignatures of that head. All binary values are
//! lowercase hex. A reader ([`verify_export`]) refuses a file that is not byte-for-byte in this
//! form, so one log has exactly one file, and any changed, deleted, reordered or truncated
//! byte is detected.

use std::sync::Arc;

use confide_store::{Store, StoreError, StoreExt, Txn};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, party_id};
use crate::jcs;
use crate::merkle::{self, Hash};

const ENTRIES: &str = "audit.entries";
const LEAVES: &str = "audit.leaves";
const HEADS: &str = "audit.heads";
const COSIGS: &str = "audit.cosignatures";
/// The export format tag.
pub const EXPORT_FORMAT: &str = "confide-audit-log/1";
/// The inclusion-proof format tag.
pub const PROOF_FORMAT: &str = "confide-audit-proof/1";

/// Audit-log errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A tree size or index beyond the log.
    #[error("audit log: {0}")]
    OutOfRange(String),
    /// Stored data that is not what the log wrote.
    #[error("audit log is corrupt: {0}")]
    Corrupt(String),
    /// A log file, head, proof or signature that does not verify.
    #[error("audit log does not verify: {0}")]
    Invalid(String),
}

fn invalid(m: impl Into<String>) -> AuditError {
    AuditError::Invalid(m.into())
}

/// A tree head: the log's size and its Merkle root at that size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// RFC 9162 root over the first `size` entries.
    pub root: Hash,
}

/// An audit log on a store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
}

impl AuditLog {
    /// The log kept in `store` (tables `audit.entries` and `audit.leaves`).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Appends an entry and returns its index.
    ///
    /// # Errors
    /// The store failed, or entries and leaves disagree (a corrupt log).
    pub fn append(&self, entry: &[u8]) -> Result<u64, AuditError> {
        self.store.transact(|txn| Self::append_in(txn, entry))
    }

    /// Appends an entry inside the caller's transaction, so that a change of state and the
    /// entry that records it commit together or not at all. Returns the entry's index.
    ///
    /// # Errors
    /// The store failed, or entries and leaves disagree (a corrupt log).
    pub fn append_in(txn: &mut dyn Txn, entry: &[u8]) -> Result<u64, AuditError> {
        let leaf = merkle::leaf_hash(entry);
        let index = txn.append(ENTRIES, entry)?;
        let leaf_index = txn.append(LEAVES, &leaf)?;
        if index != leaf_index {
            return Err(AuditError::Corrupt(format!(
                "entry {index} has leaf {leaf_index}"
            )));
        }
        Ok(index)
    }

    /// Appends an event inside the caller's transaction (see [`AuditLog::append_in`]).
    ///
    /// # Errors
    /// The store failed.
    pub fn record_in(txn: &mut dyn Txn, event: &Event) -> Result<u64, AuditError> {
        let bytes = jcs::to_vec(event).map_err(|e| invalid(e.to_string()))?;
        Self::append_in(txn, &bytes)
    }

    /// Entries in the log.
    ///
    /// # Errors
    /// The store failed.
    pub fn size(&self) -> Result<u64, AuditError> {
        self.store
            .read(|txn| Ok::<_, AuditError>(txn.log_len(ENTRIES)?))
    }

    /// Entry `index`.
    ///
    /// # Errors
    /// The store failed.
    pub fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, AuditError> {
        self.store
            .read(|txn| Ok::<_, AuditError>(txn.log_get(ENTRIES, index)?))
    }

    fn leaves(&self, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.store.read(|txn| {
            let have = txn.log_len(LEAVES)?;
            if size > have {
                return Err(AuditError::OutOfRange(format!(
                    "tree size {size} beyond the log's {have} entries"
                )));
            }
            txn.log_range(LEAVES, 0..size)?
                .into_iter()
                .map(|(i, v)| {
                    <Hash>::try_from(v.as_slice())
                        .map_err(|_| AuditError::Corrupt(format!("leaf {i} is not 32 bytes")))
                })
                .collect()
        })
    }

    /// The tree head at `size` entries (the current head with `size = self.size()?`).
    ///
    /// # Errors
    /// `size` beyond the log, or the store failed.
    pub fn head(&self, size: u64) -> Result<TreeHead, AuditError> {
        Ok(TreeHead {
            size,
            root: merkle::root(&self.leaves(size)?),
        })
    }

    /// The proof that entry `index` is in the tree of `size` entries.
    ///
    /// # Errors
    /// `index ≥ size`, `size` beyond the log, or the store failed.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        let leaves = self.leaves(size)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| merkle::inclusion_proof(i, &leaves))
            .ok_or_else(|| AuditError::OutOfRange(format!("entry {index} not in a tree of {size}")))
    }

    /// The proof that the tree of `new` entries extends the tree of `old` entries.
    ///
    /// # Errors
    /// Not `0 < old ≤ new`, `new` beyond the log, or the store failed.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, AuditError> {
        let leaves = self.leaves(new)?;
        usize::try_from(old)
            .ok()
            .and_then(|o| merkle::consistency_proof(o, &leaves))
            .ok_or_else(|| {
                AuditError::OutOfRange(format!("no consistency proof from {old} to {new}"))
            })
    }
}

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A party registered (joined a job, or uploaded under an identity).
    Registration,
    /// A data owner approved a job.
    Approval,
    /// A job started.
    JobStart,
    /// A round completed.
    Round,
    /// A job ended.
    JobEnd,
    /// A model was released to its recipients.
    ModelRelease,
    /// A dataset was uploaded.
    Upload,
    /// Something was refused (a contribution, a join, a fetch, a job).
    Refusal,
    /// An owner revoked its consent, or an identity was revoked.
    Revocation,
    /// A model owner submitted a signed job manifest to a running coordinator.
    Submission,
    /// A job changed state in a running coordinator (queued, running, ended).
    StateChange,
    /// A party cancelled a job with a signed statement.
    Cancellation,
    /// An owner's signed contribution record, at the job's end.
    Contribution,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The job it concerns.
    pub job: String,
    /// Who did it (a party name or id).
    pub actor: String,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Details (kind-specific JSON).
    pub detail: serde_json::Value,
}

impl Event {
    /// An event stamped with the current time.
    pub fn now(kind: EventKind, job: &str, actor: &str, detail: serde_json::Value) -> Self {
        Self {
            kind,
            job: job.to_string(),
            actor: actor.to_string(),
            time: crate::policy::rfc3339(time::OffsetDateTime::now_utc()),
            detail,
        }
    }
}

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    /// The log's id: its operator's party id.
    pub log_id: String,
    /// Entries covered.
    pub size: u64,
    /// RFC 9162 root, hex.
    pub root: String,
    /// Unix milliseconds.
    pub timestamp: u64,
    /// Ed25519 signature by the log's key, hex.
    pub signature: String,
}

fn head_message(prefix: &str, log_id: &str, size: u64, root: &Hash, timestamp: u64) -> Vec<u8> {
    let mut m = format!("{prefix}\n{log_id}\n").into_bytes();
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(root);
    m.extend_from_slice(&timestamp.to_be_bytes());
    m
}

const STH_PREFIX: &str = "confide/tree-head/v1";
const COSIG_PREFIX: &str = "confide/witness-cosignature/v1";

impl SignedTreeHead {
    /// Signs `head` as the log `key`.
    pub fn sign(head: TreeHead, timestamp: u64, key: &Identity) -> Self {
        let log_id = key.id();
        let sig = key.signing_key().sign(&head_message(
            STH_PREFIX, &log_id, head.size, &head.root, timestamp,
        ));
        Self {
            log_id,
            size: head.size,
            root: hex::encode(head.root),
            timestamp,
            signature: hex::encode(sig),
        }
    }

    /// Checks the signature under `log_public_key` (whose party id must be the log id) and
    /// returns the head.
    ///
    /// # Errors
    /// A malformed head, a key that is not the log's, or a bad signature.
    pub fn verify(&self, log_public_key: &[u8]) -> Result<TreeHead, AuditError> {
        if party_id(log_public_key) != self.log_id {
            return Err(invalid(format!(
                "the tree head is from log `{}`, not from the key given (`{}`)",
                self.log_id,
                party_id(log_public_key)
            )));
        }
        let root: Hash = jcs::hex_array(&self.root).map_err(invalid)?;
        let sig: [u8; 64] = jcs::hex_array(&self.signature).map_err(invalid)?;
        let m = head_message(STH_PREFIX, &self.log_id, self.size, &root, self.timestamp);
        confide_crypto::sign::verify(log_public_key, &m, &sig)
            .map_err(|_| invalid("the tree head's signature does not verify"))?;
        Ok(TreeHead {
            size: self.size,
            root,
        })
    }

    /// The head without its signature (not verified).
    ///
    /// # Errors
    /// A malformed root.
    pub fn unverified_head(&self) -> Result<TreeHead, AuditError> {
        Ok(TreeHead {
            size: self.size,
            root: jcs::hex_array(&self.root).map_err(invalid)?,
        })
    }
}

/// A witness's cosignature of a signed tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosignature {
    /// The witness's party id.
    pub witness: String,
    /// Its public key, hex.
    pub public_key: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

impl Cosignature {
    /// `witness` cosigns `head` (call only after checking consistency: see
    /// [`crate::witness::Witness::observe`]).
    ///
    /// # Errors
    /// A malformed head.
    pub fn sign(head: &SignedTreeHead, witness: &Identity) -> Result<Self, AuditError> {
        let root: Hash = jcs::hex_array(&head.root).map_err(invalid)?;
        let m = head_message(COSIG_PREFIX, &head.log_id, head.size, &root, head.timestamp);
        Ok(Self {
            witness: witness.id(),
            public_key: hex::encode(witness.public_key()),
            signature: hex::encode(witness.signing_key().sign(&m)),
        })
    }

    /// Checks this cosignature of `head`.
    ///
    /// # Errors
    /// Key and id disagree, or the signature does not verify.
    pub fn verify(&self, head: &SignedTreeHead) -> Result<(), AuditError> {
        let key: [u8; 32] = jcs::hex_array(&self.public_key).map_err(invalid)?;
        if party_id(&key) != self.witness {
            return Err(invalid(format!(
                "witness `{}` does not match its key",
                self.witness
            )));
        }
        let root: Hash = jcs::hex_array(&head.root).map_err(invalid)?;
        let sig: [u8; 64] = jcs::hex_array(&self.signature).map_err(invalid)?;
        let m = head_message(COSIG_PREFIX, &head.log_id, head.size, &root, head.timestamp);
        confide_crypto::sign::verify(&key, &m, &sig).map_err(|_| {
            invalid(format!(
                "the cosignature of witness `{}` does not verify",
                self.witness
            ))
        })
    }
}

/// Unix milliseconds now.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AuditLog {
    /// Appends an event (as canonical JSON) and returns its index.
    ///
    /// # Errors
    /// The store failed.
    pub fn record(&self, event: &Event) -> Result<u64, AuditError> {
        let bytes = jcs::to_vec(event).map_err(|e| invalid(e.to_string()))?;
        self.append(&bytes)
    }

    /// Signs the current head with the log's key, stores it as the latest head, and returns
    /// it. The head only moves forward: signing never covers fewer entries than the last head.
    ///
    /// # Errors
    /// The store failed, or `key` is not the key of the heads already stored.
    pub fn sign_head(&self, key: &Identity) -> Result<SignedTreeHead, AuditError> {
        if let Some(last) = self.latest_head()?
            && last.log_id != key.id()
        {
            return Err(invalid(format!(
                "this log is signed by `{}`, not by `{}`",
                last.log_id,
                key.id()
            )));
        }
        let size = self.size()?;
        let sth = SignedTreeHead::sign(self.head(size)?, now_millis(), key);
        let json = jcs::to_vec(&sth).map_err(|e| invalid(e.to_string()))?;
        self.store.transact(|txn| {
            txn.put(HEADS, b"latest", &json)?;
            Ok::<_, AuditError>(())
        })?;
        Ok(sth)
    }

    /// The latest signed head, if any.
    ///
    /// # Errors
    /// The store failed or holds a malformed head.
    pub fn latest_head(&self) -> Result<Option<SignedTreeHead>, AuditError> {
        let raw = self
            .store
            .read(|txn| Ok::<_, AuditError>(txn.get(HEADS, b"latest")?))?;
        raw.map(|b| {
            serde_json::from_slice(&b).map_err(|e| AuditError::Corrupt(format!("head: {e}")))
        })
        .transpose()
    }

    /// Records a witness's cosignature of `head` after checking it.
    ///
    /// # Errors
    /// The cosignature does not verify, or the store failed.
    pub fn add_cosignature(
        &self,
        head: &SignedTreeHead,
        cosig: &Cosignature,
    ) -> Result<(), AuditError> {
        cosig.verify(head)?;
        let key = format!("{:020}/{}/{}", head.size, head.signature, cosig.witness);
        let json = jcs::to_vec(cosig).map_err(|e| invalid(e.to_string()))?;
        self.store.transact(|txn| {
            txn.put(COSIGS, key.as_bytes(), &json)?;
            Ok::<_, AuditError>(())
        })
    }

    /// The cosignatures recorded for `head`.
    ///
    /// # Errors
    /// The store failed.
    pub fn cosignatures(&self, head: &SignedTreeHead) -> Result<Vec<Cosignature>, AuditError> {
        let prefix = format!("{:020}/{}/", head.size, head.signature);
        let rows = self
            .store
            .read(|txn| Ok::<_, AuditError>(txn.scan_prefix(COSIGS, prefix.as_bytes())?))?;
        rows.into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v)
                    .map_err(|e| AuditError::Corrupt(format!("cosignature: {e}")))
            })
            .collect()
    }

    /// Verifies the live store: every entry against its stored leaf, the tree of the latest
    /// signed head against that head's root and signature. Returns the head.
    ///
    /// # Errors
    /// No signed head yet, or anything that does not verify.
    pub fn verify_store(&self, log_public_key: &[u8]) -> Result<SignedTreeHead, AuditError> {
        let sth = self
            .latest_head()?
            .ok_or_else(|| invalid("the log has no signed head yet"))?;
        let head = sth.verify(log_public_key)?;
        let leaves = self.leaves(head.size)?;
        for (i, leaf) in leaves.iter().enumerate() {
            let entry = self
                .entry(i as u64)?
                .ok_or_else(|| AuditError::Corrupt(format!("entry {i} is missing")))?;
            if merkle::leaf_hash(&entry) != *leaf {
                return Err(invalid(format!("entry {i} does not match its leaf")));
            }
        }
        if merkle::root(&leaves) != head.root {
            return Err(invalid("the entries do not hash to the signed root"));
        }
        Ok(sth)
    }

    /// The exported log file: the latest signed head, the entries it covers and its
    /// cosignatures, in canonical form.
    ///
    /// # Errors
    /// No signed head, an entry that is not canonical JSON, or the store failed.
    pub fn export(&self, log_public_key: &[u8]) -> Result<Vec<u8>, AuditError> {
        let sth = self.verify_store(log_public_key)?;
        let mut entries = Vec::with_capacity(sth.size as usize);
        for i in 0..sth.size {
            let bytes = self
                .entry(i)?
                .ok_or_else(|| AuditError::Corrupt(format!("entry {i} is missing")))?;
            entries.push(
                jcs::parse_canonical(&bytes)
                    .map_err(|e| invalid(format!("entry {i} cannot be exported: {e}")))?,
            );
        }
        let file = ExportedLog {
            format: EXPORT_FORMAT.into(),
            log_public_key: hex::encode(log_public_key),
            cosignatures: self.cosignatures(&sth)?,
            tree_head: sth,
            entries,
        };
        let mut out = jcs::to_vec(&file).map_err(|e| invalid(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The exported log file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedLog {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The log's public key, hex.
    pub log_public_key: String,
    /// The signed head over all `entries`.
    pub tree_head: SignedTreeHead,
    /// The entries, in order.
    pub entries: Vec<serde_json::Value>,
    /// Witness cosignatures of `tree_head`.
    pub cosignatures: Vec<Cosignature>,
}

/// A verified exported log.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedLog {
    /// The file's content.
    pub log: ExportedLog,
    /// The verified head.
    pub head: TreeHead,
    /// The leaf hashes.
    pub leaves: Vec<Hash>,
    /// Witnesses whose cosignatures verified.
    pub witnesses: Vec<String>,
}

/// Verifies an exported log file end to end: canonical form, the log key (and that it is
/// `pinned_key` when given), every entry's leaf, the root, the head's signature, and every
/// cosignature.
///
/// # Errors
/// The first thing that does not verify.
pub fn verify_export(bytes: &[u8], pinned_key: Option<&[u8]>) -> Result<VerifiedLog, AuditError> {
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or_else(|| invalid("the file does not end with its single newline (truncated?)"))?;
    let value = jcs::parse_canonical(body).map_err(|e| invalid(e.to_string()))?;
    let log: ExportedLog = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    if log.format != EXPORT_FORMAT {
        return Err(invalid(format!(
            "format `{}`, expected `{EXPORT_FORMAT}`",
            log.format
        )));
    }
    let key: [u8; 32] = jcs::hex_array(&log.log_public_key).map_err(invalid)?;
    if let Some(pinned) = pinned_key
        && pinned != key
    {
        return Err(invalid(format!(
            "the log is signed by `{}`, not by the pinned key `{}`",
            party_id(&key),
            party_id(pinned)
        )));
    }
    let claimed = log.tree_head.unverified_head()?;
    if claimed.size != log.entries.len() as u64 {
        return Err(invalid(format!(
            "the head covers {} entries, the file has {}",
            claimed.size,
            log.entries.len()
        )));
    }
    let mut leaves = Vec::with_capacity(log.entries.len());
    for (i, e) in log.entries.iter().enumerate() {
        serde_json::from_value::<Event>(e.clone())
            .map_err(|err| invalid(format!("entry {i} is not an audit event: {err}")))?;
        leaves.push(merkle::leaf_hash(
            &jcs::to_vec(e).map_err(|e| invalid(e.to_string()))?,
        ));
    }
    if merkle::root(&leaves) != claimed.root {
        return Err(invalid("the entries do not hash to the head's root"));
    }
    let head = log.tree_head.verify(&key)?;
    let mut witnesses = Vec::new();
    for c in &log.cosignatures {
        c.verify(&log.tree_head)?;
        if witnesses.contains(&c.witness) {
            return Err(invalid(format!("witness `{}` appears twice", c.witness)));
        }
        witnesses.push(c.witness.clone());
    }
    Ok(VerifiedLog {
        log,
        head,
        leaves,
        witnesses,
    })
}

/// An inclusion proof that a third party can check offline (`confide audit check-proof`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The log's public key, hex.
    pub log_public_key: String,
    /// The signed head the proof is against.
    pub tree_head: SignedTreeHead,
    /// Witness cosignatures of that head.
    pub cosignatures: Vec<Cosignature>,
    /// The entry's index.
    pub index: u64,
    /// The entry.
    pub entry: serde_json::Value,
    /// The audit path (RFC 9162 §2.1.3.1), hex.
    pub path: Vec<String>,
}

/// The inclusion proof of entry `index` of a verified log.
///
/// # Errors
/// `index` beyond the log.
pub fn prove(log: &VerifiedLog, index: u64) -> Result<InclusionProof, AuditError> {
    let i = usize::try_from(index).map_err(|_| invalid("index"))?;
    let entry = log.log.entries.get(i).ok_or_else(|| {
        AuditError::OutOfRange(format!(
            "entry {index} not in a log of {}",
            log.leaves.len()
        ))
    })?;
    let path = merkle::inclusion_proof(i, &log.leaves)
        .ok_or_else(|| AuditError::OutOfRange(format!("entry {index}")))?;
    Ok(InclusionProof {
        format: PROOF_FORMAT.into(),
        log_public_key: log.log.log_public_key.clone(),
        tree_head: log.log.tree_head.clone(),
        cosignatures: log.log.cosignatures.clone(),
        index,
        entry: entry.clone(),
        path: path.iter().map(hex::encode).collect(),
    })
}

/// Checks an inclusion proof: the head's signature (by `pinned_key` when given), every
/// cosignature, and the audit path from the entry to the signed root. Returns the witnesses.
///
/// # Errors
/// Anything that does not verify.
pub fn check_proof(
    proof: &InclusionProof,
    pinned_key: Option<&[u8]>,
) -> Result<Vec<String>, AuditError> {
    if proof.format != PROOF_FORMAT {
        return Err(invalid(format!(
            "format `{}`, expected `{PROOF_FORMAT}`",
            proof.format
        )));
    }
    let key: [u8; 32] = jcs::hex_array(&proof.log_public_key).map_err(invalid)?;
    if let Some(pinned) = pinned_key
        && pinned != key
    {
        return Err(invalid("the proof's log key is not the pinned key"));
    }
    let head = proof.tree_head.verify(&key)?;
    let mut witnesses = Vec::new();
    for c in &proof.cosignatures {
        c.verify(&proof.tree_head)?;
        if witnesses.contains(&c.witness) {
            return Err(invalid(format!("witness `{}` appears twice", c.witness)));
        }
        witnesses.push(c.witness.clone());
    }
    let path = proof
        .path
        .iter()
        .map(|h| jcs::hex_array::<32>(h).map_err(invalid))
        .collect::<Result<Vec<Hash>, _>>()?;
    let leaf = merkle::leaf_hash(&jcs::to_vec(&proof.entry).map_err(|e| invalid(e.to_string()))?);
    if !merkle::verify_inclusion(proof.index, head.size, &leaf, &path, &head.root) {
        return Err(invalid(format!(
            "entry {} is not in the signed tree of {} entries",
            proof.index, head.size
        )));
    }
    Ok(witnesses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_store::MemoryStore;

    #[test]
    fn appended_entries_are_provably_in_the_log_and_heads_extend_each_other() {
        let log = AuditLog::new(Arc::new(MemoryStore::new()));
        assert_eq!(log.size().expect("size"), 0);
        let mut heads = Vec::new();
        for i in 0..20u32 {
            let e = format!("{{\"event\":\"round\",\"n\":{i}}}");
            assert_eq!(log.append(e.as_bytes()).expect("append"), u64::from(i));
            heads.push(log.head(u64::from(i) + 1).expect("head"));
        }
        let last = heads[19];
        for i in 0..20u64 {
            let entry = log.entry(i).expect("read").expect("entry");
            let proof = log.inclusion_proof(i, 20).expect("proof");
            assert!(merkle::verify_inclusion(
                i,
                20,
                &merkle::leaf_hash(&entry),
                &proof,
                &last.root
            ));
        }
        for old in &heads {
            let proof = log.consistency_proof(old.size, 20).expect("proof");
            assert!(merkle::verify_consistency(
                old.size, 20, &old.root, &last.root, &proof
            ));
        }
        assert!(log.inclusion_proof(20, 20).is_err());
        assert!(log.head(21).is_err());
        assert!(log.consistency_proof(0, 20).is_err());
    }

    fn small_signed_log() -> (AuditLog, Identity, Vec<u8>) {
        let log = AuditLog::new(Arc::new(MemoryStore::new()));
        let kinds = [EventKind::JobStart, EventKind::Round, EventKind::JobEnd];
        for (i, k) in kinds.into_iter().enumerate() {
            log.record(&Event {
                kind: k,
                job: "j".into(),
                actor: "c".into(),
                time: "2026-11-22T00:00:00Z".into(),
                detail: serde_json::json!({ "n": i }),
            })
            .expect("append");
        }
        let key = Identity::generate().expect("key");
        let head = log.sign_head(&key).expect("sign");
        let witness = Identity::generate().expect("key");
        let c = Cosignature::sign(&head, &witness).expect("cosign");
        log.add_cosignature(&head, &c).expect("store");
        let bytes = log.export(&key.public_key()).expect("export");
        (log, key, bytes)
    }

    #[test]
    fn an_exported_log_verifies_and_every_single_byte_change_is_detected() {
        let (_, key, bytes) = small_signed_log();
        let v = verify_export(&bytes, Some(&key.public_key())).expect("verifies");
        assert_eq!((v.head.size, v.witnesses.len()), (3, 1));
        let mut tried = 0u64;
        let mut copy = bytes.clone();
        for pos in 0..bytes.len() {
            for b in 0..=255u8 {
                if b == bytes[pos] {
                    continue;
                }
                copy[pos] = b;
                assert!(
                    verify_export(&copy, None).is_err(),
                    "byte {pos} changed to {b:#04x} went undetected"
                );
                tried += 1;
            }
            copy[pos] = bytes[pos];
        }
        assert_eq!(tried, bytes.len() as u64 * 255);
    }

    #[test]
    fn every_deletion_truncation_and_reordering_is_detected() {
        let (_, _, bytes) = small_signed_log();
        for pos in 0..bytes.len() {
            let mut cut = bytes.clone();
            cut.remove(pos);
            assert!(verify_export(&cut, None).is_err(), "deleting byte {pos}");
        }
        for len in 0..bytes.len() {
            assert!(
                verify_export(&bytes[..len], None).is_err(),
                "truncated to {len}"
            );
        }
        // Every other order of the entries, re-serialised in canonical form.
        let log: ExportedLog = serde_json::from_slice(&bytes[..bytes.len() - 1]).expect("parse");
        let perms = [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        for p in perms {
            let mut l = log.clone();
            l.entries = p.iter().map(|&i| log.entries[i].clone()).collect();
            let mut out = jcs::to_vec(&l).expect("json");
            out.push(b'\n');
            assert!(verify_export(&out, None).is_err(), "order {p:?}");
        }
        // Dropping an entry (with the head left as it was).
        let mut l = log.clone();
        l.entries.remove(1);
        let mut out = jcs::to_vec(&l).expect("json");
        out.push(b'\n');
        assert!(verify_export(&out, None).is_err());
    }

    #[test]
    fn a_tampered_head_or_cosignature_signature_is_detected_and_keys_can_be_pinned() {
        let (log, key, bytes) = small_signed_log();
        let l: ExportedLog = serde_json::from_slice(&bytes[..bytes.len() - 1]).expect("parse");
        let flip = |s: &mut String| {
            let c = if s.starts_with('a') { "b" } else { "a" };
            s.replace_range(0..1, c);
        };
        let mut a = l.clone();
        flip(&mut a.tree_head.signature);
        assert!(a.tree_head.verify(&key.public_key()).is_err());
        let mut b = l.clone();
        flip(&mut b.cosignatures[0].signature);
        assert!(b.cosignatures[0].verify(&b.tree_head).is_err());
        let other = Identity::generate().expect("key");
        assert!(verify_export(&bytes, Some(&other.public_key())).is_err());
        assert!(log.verify_store(&other.public_key()).is_err());
        assert!(
            log.sign_head(&other).is_err(),
            "another key cannot sign this log"
        );
    }

    #[test]
    fn inclusion_proofs_check_offline() {
        let (log, key, bytes) = small_signed_log();
        let v = verify_export(&bytes, None).expect("verifies");
        for i in 0..3 {
            let p = prove(&v, i).expect("proof");
            let text = serde_json::to_string(&p).expect("json");
            let back: InclusionProof = serde_json::from_str(&text).expect("parse");
            assert_eq!(
                check_proof(&back, Some(&key.public_key()))
                    .expect("checks")
                    .len(),
                1
            );
            let mut wrong = back.clone();
            wrong.entry["detail"]["n"] = serde_json::json!(9);
            assert!(check_proof(&wrong, None).is_err());
            let mut moved = back.clone();
            moved.index = (i + 1) % 3;
            assert!(check_proof(&moved, None).is_err());
        }
        assert!(prove(&v, 3).is_err());
        // The live store verifies against its signed head too.
        assert_eq!(log.verify_store(&key.public_key()).expect("store").size, 3);
    }

    #[test]
    fn an_interrupted_append_leaves_a_log_that_verifies() {
        let (log, key, _) = small_signed_log();
        // A transaction that writes the entry and then fails before its leaf: nothing of it
        // may remain.
        let r: Result<(), AuditError> = log.store.transact(|txn| {
            txn.append(ENTRIES, b"{\"half\":true}")?;
            Err(AuditError::Corrupt("simulated crash".into()))
        });
        assert!(r.is_err());
        assert_eq!(log.size().expect("size"), 3);
        log.verify_store(&key.public_key()).expect("still verifies");
    }

    #[test]
    fn a_durable_log_survives_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.redb");
        let key = Identity::generate().expect("key");
        {
            let log = AuditLog::new(Arc::new(
                confide_store::RedbStore::open(&path).expect("open"),
            ));
            log.record(&Event::now(
                EventKind::JobStart,
                "j",
                "c",
                serde_json::json!({}),
            ))
            .expect("append");
            log.sign_head(&key).expect("sign");
        }
        let log = AuditLog::new(Arc::new(
            confide_store::RedbStore::open(&path).expect("reopen"),
        ));
        assert_eq!(
            log.verify_store(&key.public_key()).expect("verifies").size,
            1
        );
    }
}
