//! The key holder's decision logic (sans-I/O), under `paillier` and `lattice` alike.
//!
//! The key holder is the only party that can decrypt. It decrypts a round's aggregate only
//! when, by its own checks and its own copy of the job:
//! - KEY-001 every contribution is signed by its owner for this job and this round;
//! - KEY-002 every owner is authorised by the job (its certificate chains to the federation CA
//!   and names a listed owner: checked by the caller, which passes the certified key);
//! - KEY-003 the owners are distinct;
//! - KEY-004 there are at least `min_owners` of them;
//! - KEY-005 neither the round nor the global model the owners trained from was decrypted
//!   before (so a coordinator cannot ask for two different subsets of one round, or of two
//!   rounds it gave the same model, and subtract the sums to isolate one owner). The record is
//!   made durable through the caller's `persist` hook *before* decrypting, so a restarted key
//!   holder remembers it. The record names the exact set of contributions (a digest over each
//!   owner and the SHA-256 of its signed payload), so that
//! - RES-001 an *identical* request (same round, same model, byte-identical contributions) is
//!   answered again: a coordinator that crashed, or lost the key holder's answer, gets the
//!   same sum. Decrypting the same ciphertexts again yields the same plaintexts and reveals
//!   nothing new; it is any *other* subset that KEY-005 refuses. The key holder keeps no
//!   decrypted sum at rest;
//! - KEY-006 each contribution has exactly the ciphertexts the model needs, all well formed;
//! - KEY-007 all contributions were trained from the same global model.
//!
//! It then adds the ciphertexts homomorphically (Paillier or BFV) and decrypts only the sum.
//!
//! Trust assumption (until the confidential-mode issue runs it attested): the key holder is
//! honest-but-curious and does not collude with the coordinator. It sees every ciphertext and
//! could decrypt any one of them if it deviated from this code; it never receives a plaintext
//! update.

use std::collections::{BTreeMap, BTreeSet};

use confide_crypto::{LatticeCiphertext, LatticeSecretKey, PackingLayout, SecretKey};

use crate::contribution::{self, Contribution, VerifiedContribution};
use crate::lattice::{lattice_params, parse_lattice_payload, slots_to_bytes};
use crate::scheme::{SchemeParams, paillier_layout, parse_paillier_payload};

/// The key holder's secret key: a Paillier key (`paillier`) or a BFV key (`lattice`).
#[derive(Debug)]
pub enum HolderKey {
    /// `paillier`.
    Paillier(Box<SecretKey>),
    /// `lattice`.
    Lattice(LatticeSecretKey),
}

impl HolderKey {
    /// The public key's JSON, as published to owners and the coordinator.
    pub fn public_json(&self) -> String {
        match self {
            Self::Paillier(sk) => {
                serde_json::to_string(&sk.public_key().to_json()).unwrap_or_default()
            }
            Self::Lattice(sk) => sk.public_key().to_json(),
        }
    }

    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> String {
        match self {
            Self::Paillier(sk) => sk.public_key().fingerprint(),
            Self::Lattice(sk) => sk.public_key().fingerprint(),
        }
    }
}

impl From<SecretKey> for HolderKey {
    fn from(sk: SecretKey) -> Self {
        Self::Paillier(Box::new(sk))
    }
}

impl From<LatticeSecretKey> for HolderKey {
    fn from(sk: LatticeSecretKey) -> Self {
        Self::Lattice(sk)
    }
}

/// Parsed contributions of one round, before they are summed.
enum Parsed {
    Paillier(Vec<confide_crypto::Ciphertext>),
    Lattice(Vec<LatticeCiphertext>),
}

/// Why the key holder refused to decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    /// KEY-001: a signature does not verify, or is for another round.
    #[error("KEY-001 contribution from `{0}` is not validly signed for this job and round")]
    BadSignature(String),
    /// KEY-002: the owner is not authorised.
    #[error("KEY-002 `{0}` is not an authorised owner of this job")]
    NotAnOwner(String),
    /// KEY-003: two contributions from one owner.
    #[error("KEY-003 owner `{0}` appears more than once")]
    Duplicate(String),
    /// KEY-004: too few owners.
    #[error("KEY-004 only {got} distinct owners, the job requires {min}")]
    TooFew {
        /// Distinct owners.
        got: usize,
        /// `min_owners`.
        min: usize,
    },
    /// KEY-005: the round, or a round with the same global model, was already decrypted.
    #[error(
        "KEY-005 round {0} (or its global model) was already decrypted; each is decrypted once"
    )]
    AlreadyUnsealed(u32),
    /// KEY-007: contributions trained from different models.
    #[error("KEY-007 the contributions were trained from different global models")]
    MixedModels,
    /// The durable record could not be written; nothing was decrypted.
    #[error("key holder could not record the decryption durably: {0}")]
    Persist(String),
    /// KEY-006: a contribution is malformed.
    #[error("KEY-006 contribution from `{owner}` is malformed: {detail}")]
    Malformed {
        /// Owner.
        owner: String,
        /// What is wrong.
        detail: String,
    },
    /// KEY-008 (aggregators): the step-3 request carries an answer that its aggregator did not
    /// sign over the contributions this aggregator was given, or fewer than the quorum of
    /// aggregators committed to the same sum.
    #[error("KEY-008 {0}")]
    Inconsistent(String),
    /// The key holder itself failed (key/layout mismatch).
    #[error("key holder error: {0}")]
    Internal(String),
}

/// The common global model of a round's contributions (`None` when there are none) and the
/// verified contributions by owner.
pub type Checked = (Option<[u8; 32]>, BTreeMap<String, VerifiedContribution>);

/// The checks on a round's relayed contributions that every party finishing a round makes
/// (the key holder, and each `shares` or `threshold` aggregator): KEY-007 one global model,
/// KEY-002 listed owners (the caller checked their certificates), KEY-003 distinct owners and
/// KEY-001 valid signatures for this job, round and stage 0. Each contribution comes with the
/// public key its owner's certificate certifies. Returns the common model digest and the
/// verified contributions by owner.
pub fn check_signed(
    round: u32,
    contributions: Vec<(Contribution, Vec<u8>)>,
    owners: &BTreeSet<String>,
    job_digest: &[u8; 32],
) -> Result<Checked, UnsealError> {
    let model = contributions.first().map(|(c, _)| c.model_digest);
    if contributions
        .iter()
        .any(|(c, _)| Some(c.model_digest) != model)
    {
        return Err(UnsealError::MixedModels);
    }
    let mut seen = BTreeMap::new();
    for (c, key) in contributions {
        if !owners.contains(&c.owner) {
            return Err(UnsealError::NotAnOwner(c.owner));
        }
        if seen.contains_key(&c.owner) {
            return Err(UnsealError::Duplicate(c.owner));
        }
        if c.round != round || c.stage != 0 {
            return Err(UnsealError::BadSignature(c.owner));
        }
        let owner = c.owner.clone();
        let verified = contribution::verify(c, &key, job_digest)
            .map_err(|_| UnsealError::BadSignature(owner.clone()))?;
        seen.insert(owner, verified);
    }
    Ok((model, seen))
}

/// A decryption, as recorded before it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealRecord {
    /// The round.
    pub round: u32,
    /// The global model the contributions were trained from.
    pub model_digest: [u8; 32],
    /// The exact set of contributions decrypted ([`contribution_set_digest`]); `None` in
    /// records written before RES-001, which no repeat can match.
    pub contributions: Option<[u8; 32]>,
}

/// The digest of a round's contribution set: SHA-256 over `"confide/unseal-set/v1\n"` and,
/// for each owner in byte order, its name's length (u32 BE), its name and the SHA-256 of its
/// signed payload. Two requests have the same digest exactly when they carry the same owners
/// with byte-identical payloads.
pub fn contribution_set_digest(checked: &BTreeMap<String, VerifiedContribution>) -> [u8; 32] {
    let mut m = b"confide/unseal-set/v1\n".to_vec();
    for (owner, c) in checked {
        m.extend(u32::try_from(owner.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.extend(owner.as_bytes());
        m.extend(confide_crypto::sha256(&c.get().payload));
    }
    confide_crypto::sha256(&m)
}

/// The key holder's state for one job.
#[derive(Debug)]
pub struct Unsealer {
    key: HolderKey,
    job_digest: [u8; 32],
    owners: BTreeSet<String>,
    params: SchemeParams,
    /// The packing layout under `paillier`.
    layout: Option<PackingLayout>,
    unsealed: BTreeMap<u32, UnsealRecord>,
    models: BTreeSet<[u8; 32]>,
}

impl Unsealer {
    /// State for a job: the secret key, the job digest, the authorised owners and the scheme
    /// parameters from the key holder's own copy of the job, and the decryptions recorded by
    /// earlier runs of this key holder for this job.
    pub fn new(
        key: HolderKey,
        job_digest: [u8; 32],
        owners: BTreeSet<String>,
        params: SchemeParams,
        history: impl IntoIterator<Item = UnsealRecord>,
    ) -> Result<Self, UnsealError> {
        let history: Vec<UnsealRecord> = history.into_iter().collect();
        let internal = |e: crate::scheme::SchemeError| UnsealError::Internal(e.to_string());
        let layout = match &key {
            HolderKey::Paillier(sk) => {
                Some(paillier_layout(&params, sk.public_key().modulus_bits()).map_err(internal)?)
            }
            HolderKey::Lattice(sk) => {
                let expected = lattice_params(&params).map_err(internal)?;
                if expected.plaintext_modulus() != sk.params().plaintext_modulus() {
                    return Err(UnsealError::Internal(
                        "the BFV key was made for another job's parameters".into(),
                    ));
                }
                None
            }
        };
        Ok(Self {
            key,
            job_digest,
            owners,
            params,
            layout,
            unsealed: history.iter().map(|r| (r.round, *r)).collect(),
            models: history.iter().map(|r| r.model_digest).collect(),
        })
    }

    /// The key.
    pub fn key(&self) -> &HolderKey {
        &self.key
    }

    /// Rounds decrypted so far.
    pub fn unsealed_rounds(&self) -> BTreeSet<u32> {
        self.unsealed.keys().copied().collect()
    }

    /// Checks the contributions and returns the decrypted sum plaintexts. Each contribution
    /// comes with the public key that the owner's certificate certifies (KEY-002 is the
    /// caller's certificate check plus the name check here). `persist` must make the record
    /// durable; it runs after every check and before decryption, and an error from it stops
    /// the decryption.
    pub fn unseal(
        &mut self,
        round: u32,
        contributions: Vec<(Contribution, Vec<u8>)>,
        persist: impl FnOnce(&UnsealRecord) -> Result<(), String>,
    ) -> Result<Vec<Vec<u8>>, UnsealError> {
        let (model, checked) = check_signed(round, contributions, &self.owners, &self.job_digest)?;
        let set = contribution_set_digest(&checked);
        // RES-001: the identical request again is answered with the same sum; KEY-005: any
        // other request for a round or a model already decrypted is refused.
        let repeat = match self.unsealed.get(&round) {
            Some(r) if r.contributions == Some(set) && Some(r.model_digest) == model => true,
            Some(_) => return Err(UnsealError::AlreadyUnsealed(round)),
            None => false,
        };
        if !repeat
            && let Some(m) = model
            && self.models.contains(&m)
        {
            return Err(UnsealError::AlreadyUnsealed(round));
        }
        let mut seen = BTreeMap::new();
        for (owner, verified) in checked {
            let parsed =
                self.parse(&verified.get().payload)
                    .map_err(|r| UnsealError::Malformed {
                        owner: owner.clone(),
                        detail: r.to_string(),
                    })?;
            seen.insert(owner, parsed);
        }
        if seen.len() < self.params.min_owners {
            return Err(UnsealError::TooFew {
                got: seen.len(),
                min: self.params.min_owners,
            });
        }
        let acc = self.sum(seen.into_values())?;
        if repeat {
            return self.decrypt(acc);
        }
        // Record before decrypting: whatever happens next, this round and this model are never
        // decrypted again for any other set of contributions, even by a restarted key holder.
        let record = UnsealRecord {
            round,
            model_digest: model.unwrap_or_default(),
            contributions: Some(set),
        };
        persist(&record).map_err(UnsealError::Persist)?;
        self.unsealed.insert(round, record);
        self.models.insert(record.model_digest);
        self.decrypt(acc)
    }

    fn parse(&self, payload: &[u8]) -> Result<Parsed, crate::Rejection> {
        match (&self.key, &self.layout) {
            (HolderKey::Paillier(sk), Some(layout)) => {
                parse_paillier_payload(sk.public_key(), layout, self.params.len, payload)
                    .map(Parsed::Paillier)
            }
            (HolderKey::Lattice(sk), _) => {
                parse_lattice_payload(sk.public_key(), self.params.len, payload)
                    .map(Parsed::Lattice)
            }
            (HolderKey::Paillier(_), None) => Err(crate::Rejection::new(
                crate::Reject::Malformed,
                "no packing layout",
            )),
        }
    }

    /// Adds the parsed contributions homomorphically.
    fn sum(&self, parsed: impl Iterator<Item = Parsed>) -> Result<Parsed, UnsealError> {
        let mut acc: Option<Parsed> = None;
        for p in parsed {
            acc = Some(match (acc, p, &self.key) {
                (None, p, _) => p,
                (Some(Parsed::Paillier(mut a)), Parsed::Paillier(c), HolderKey::Paillier(sk)) => {
                    for (x, y) in a.iter_mut().zip(&c) {
                        *x = sk
                            .public_key()
                            .add(x, y)
                            .map_err(|e| UnsealError::Internal(e.to_string()))?;
                    }
                    Parsed::Paillier(a)
                }
                (Some(Parsed::Lattice(mut a)), Parsed::Lattice(c), HolderKey::Lattice(_)) => {
                    for (x, y) in a.iter_mut().zip(&c) {
                        x.add_assign(y);
                    }
                    Parsed::Lattice(a)
                }
                _ => return Err(UnsealError::Internal("mixed ciphertext kinds".into())),
            });
        }
        acc.ok_or(UnsealError::TooFew {
            got: 0,
            min: self.params.min_owners,
        })
    }

    fn decrypt(&self, acc: Parsed) -> Result<Vec<Vec<u8>>, UnsealError> {
        let internal = |e: String| UnsealError::Internal(e);
        match (acc, &self.key) {
            (Parsed::Paillier(cts), HolderKey::Paillier(sk)) => cts
                .iter()
                .map(|c| sk.decrypt(c).map_err(|e| internal(e.to_string())))
                .collect(),
            (Parsed::Lattice(cts), HolderKey::Lattice(sk)) => cts
                .iter()
                .map(|c| {
                    sk.decrypt(c)
                        .map(|slots| slots_to_bytes(&slots))
                        .map_err(|e| internal(e.to_string()))
                })
                .collect(),
            _ => Err(internal("mixed ciphertext kinds".into())),
        }
    }
}
