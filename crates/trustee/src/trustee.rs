//! One trustee: what it checks, itself, before it accepts a write or answers a read, and what
//! it keeps in its store. No sockets: the daemon feeds it what it replayed from the log and
//! what callers ask, and sends what it returns.
//!
//! | rule | the trustee refuses |
//! |---|---|
//! | TRU-001 | a write whose TDH2 proof fails, or whose label names another epoch |
//! | TRU-002 | a write whose ciphertext (its `U`) was already written under another label |
//! | TRU-003 | a grant or read of a write it has not accepted |
//! | TRU-004 | a read whose caller is not the request's reader, or whose key proof fails |
//! | TRU-005 | a read that no grant of the write's owner allows, or whose grant is revoked |
//! | TRU-006 | a second share for one request: the same request gets the stored share again, and a share is stored before it is returned |
//!
//! TRU-007 and TRU-008 are the reader's ([`crate::secret::open`]); TRU-009 and TRU-010 the
//! DKG's ([`crate::dkg`]).

use std::sync::Arc;

use confide_store::{Store, StoreError, StoreExt};
use sha2::{Digest, Sha256};

use crate::KeyShare;
use crate::group::{enc, framed};
use crate::secret::{ReadRequest, Share, Write};

const WRITES: &str = "trustee.writes";
const CIPHERTEXTS: &str = "trustee.ciphertexts";
const GRANTS: &str = "trustee.grants";
const REVOKED: &str = "trustee.revoked";
const SHARES: &str = "trustee.shares";

/// An owner's grant: `reader` may read `write` for `purpose` in `job` (`*`: any job).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The write's id.
    pub write: String,
    /// Who grants it: must be the write's owner.
    pub owner: String,
    /// Who may read.
    pub reader: String,
    /// For what.
    pub purpose: String,
    /// For which job (manifest hash), or `*`.
    pub job: String,
}

impl Grant {
    /// The grant's id: SHA-256 of its framed fields.
    pub fn id(&self) -> String {
        let mut t = Vec::new();
        for f in [
            &self.write,
            &self.owner,
            &self.reader,
            &self.purpose,
            &self.job,
        ] {
            framed(&mut t, f.as_bytes());
        }
        hex::encode(Sha256::digest(t))
    }

    fn allows(&self, r: &ReadRequest) -> bool {
        self.write == r.write
            && self.reader == r.reader
            && self.purpose == r.purpose
            && (self.job == "*" || self.job == r.job)
    }
}

/// Why the trustee refused, by rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// TRU-001.
    #[error("TRU-001: {0}")]
    BadWrite(String),
    /// TRU-002.
    #[error("TRU-002: this ciphertext was already written as {0} under another label")]
    Relabelled(String),
    /// TRU-003.
    #[error("TRU-003: no accepted write {0}")]
    UnknownWrite(String),
    /// TRU-004.
    #[error("TRU-004: {0}")]
    Reader(String),
    /// TRU-005.
    #[error("TRU-005: {0}")]
    NotAllowed(String),
    /// The store failed; nothing was released.
    #[error("the trustee's store failed: {0}")]
    Store(String),
}

impl Refusal {
    /// The rule id.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::BadWrite(_) => "TRU-001",
            Refusal::Relabelled(_) => "TRU-002",
            Refusal::UnknownWrite(_) => "TRU-003",
            Refusal::Reader(_) => "TRU-004",
            Refusal::NotAllowed(_) => "TRU-005",
            Refusal::Store(_) => "STORE",
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e.to_string())
    }
}

/// One trustee of one epoch.
#[derive(Debug, Clone)]
pub struct Trustee {
    share: KeyShare,
    epoch: String,
    store: Arc<dyn Store>,
}

impl Trustee {
    /// The trustee holding `share`, keeping its records in `store`.
    pub fn new(share: KeyShare, store: Arc<dyn Store>) -> Trustee {
        let epoch = share.group.digest();
        Trustee {
            share,
            epoch,
            store,
        }
    }

    /// This trustee's index.
    pub fn index(&self) -> u16 {
        self.share.index
    }

    /// The epoch (group-key digest) it serves.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Accepts a logged write from `caller` (the authenticated writer, who must be the owner
    /// its label names): TRU-001, TRU-002. The same write again is accepted again.
    pub fn accept_write(&self, caller: &str, w: &Write) -> Result<String, Refusal> {
        if caller != w.label.owner {
            return Err(Refusal::BadWrite(format!(
                "`{caller}` wrote a secret labelled as `{}`'s",
                w.label.owner
            )));
        }
        if w.label.epoch != self.epoch {
            return Err(Refusal::BadWrite(format!(
                "the write's label names epoch {}, this trustee serves {}",
                w.label.epoch, self.epoch
            )));
        }
        if !w.verify() {
            return Err(Refusal::BadWrite(
                "the write's label proof does not verify".into(),
            ));
        }
        let id = w.id();
        let u = enc(&w.u);
        self.store.transact(|txn| {
            if let Some(existing) = txn.get(CIPHERTEXTS, &u)? {
                let existing = String::from_utf8_lossy(&existing).into_owned();
                return if existing == id {
                    Ok(id.clone())
                } else {
                    // Another label, or the same label with a fresh proof: either way not the
                    // write already accepted for this ciphertext.
                    Err(Refusal::Relabelled(existing))
                };
            }
            txn.put(CIPHERTEXTS, &u, id.as_bytes())?;
            txn.put(WRITES, id.as_bytes(), &w.to_bytes())?;
            Ok(id.clone())
        })
    }

    fn write(&self, id: &str) -> Result<Write, Refusal> {
        let bytes = self
            .store
            .read(|r| r.get(WRITES, id.as_bytes()))?
            .ok_or_else(|| Refusal::UnknownWrite(id.to_string()))?;
        let w = Write::from_bytes(&bytes).map_err(|e| Refusal::Store(e.to_string()))?;
        if !w.verify() {
            return Err(Refusal::Store(format!(
                "stored write {id} no longer verifies"
            )));
        }
        Ok(w)
    }

    /// Checks that `caller` (the authenticated party) owns write `write`.
    fn owned_by(&self, write: &str, caller: &str) -> Result<(), Refusal> {
        let w = self.write(write)?;
        if w.label.owner != caller {
            return Err(Refusal::NotAllowed(format!(
                "`{caller}` cannot grant or revoke reads of {write}, which `{}` owns",
                w.label.owner
            )));
        }
        Ok(())
    }

    /// Records a logged grant from `caller`, who must be the grant's owner and the write's
    /// (TRU-005). A grant made again after its revocation is a new decision: it holds again.
    pub fn grant(&self, caller: &str, g: &Grant) -> Result<String, Refusal> {
        if caller != g.owner {
            return Err(Refusal::NotAllowed(format!(
                "`{caller}` sent a grant made by `{}`",
                g.owner
            )));
        }
        if [&g.reader, &g.purpose, &g.job]
            .iter()
            .any(|f| f.len() > crate::secret::MAX_FIELD)
        {
            return Err(Refusal::NotAllowed("a grant field is too long".into()));
        }
        self.owned_by(&g.write, caller)?;
        let id = g.id();
        let key = format!("{}/{id}", g.write);
        let value = serde_json::to_vec(g).map_err(|e| Refusal::Store(e.to_string()))?;
        self.store.transact(|txn| {
            txn.put(GRANTS, key.as_bytes(), &value)?;
            txn.delete(REVOKED, key.as_bytes())?;
            Ok::<_, Refusal>(())
        })?;
        Ok(id)
    }

    /// Records a logged revocation by `caller` of its grant `id` on `write`: from then on, no
    /// read under it (TRU-005). Only the write's owner revokes, and only a grant it made.
    pub fn revoke(&self, caller: &str, write: &str, id: &str) -> Result<(), Refusal> {
        self.owned_by(write, caller)?;
        let key = format!("{write}/{id}");
        self.store.transact(|txn| {
            if txn.get(GRANTS, key.as_bytes())?.is_none() {
                return Err(Refusal::NotAllowed(format!(
                    "no grant {id} on {write} to revoke"
                )));
            }
            txn.put(REVOKED, key.as_bytes(), caller.as_bytes())?;
            Ok(())
        })
    }

    /// Answers a read for `caller` (the authenticated peer): checks TRU-004, TRU-003, TRU-005,
    /// then returns the request's one share (TRU-006), stored before it leaves.
    pub fn reencrypt(
        &self,
        caller: &str,
        request: &ReadRequest,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<Share, Refusal> {
        if caller != request.reader {
            return Err(Refusal::Reader(format!(
                "`{caller}` sent a request made by `{}`",
                request.reader
            )));
        }
        if !request.key_proof_holds() {
            return Err(Refusal::Reader(
                "the reader's proof of its key does not hold for this request".into(),
            ));
        }
        let write = self.write(&request.write)?;
        let request_id = request.id();
        let fresh = Share::make(&self.share, &write, &request.reader_key, rng);
        self.store.transact(|txn| {
            let grants = txn.scan_prefix(GRANTS, format!("{}/", request.write).as_bytes())?;
            let mut allowed = false;
            let mut revoked = false;
            for (key, value) in grants {
                let g: Grant = serde_json::from_slice(&value)
                    .map_err(|e| Refusal::Store(format!("a stored grant: {e}")))?;
                if !g.allows(request) {
                    continue;
                }
                if txn.get(REVOKED, &key)?.is_some() {
                    revoked = true;
                } else {
                    allowed = true;
                }
            }
            if !allowed {
                return Err(Refusal::NotAllowed(if revoked {
                    format!(
                        "the owner revoked the grant for `{}` on {}",
                        request.reader, request.write
                    )
                } else {
                    format!(
                        "no grant lets `{}` read {} for `{}` in job {}",
                        request.reader, request.write, request.purpose, request.job
                    )
                }));
            }
            if let Some(stored) = txn.get(SHARES, request_id.as_bytes())? {
                return Share::from_bytes(&stored).map_err(|e| Refusal::Store(e.to_string()));
            }
            txn.put(SHARES, request_id.as_bytes(), &fresh.to_bytes())?;
            Ok(fresh)
        })
    }

    /// How many shares this trustee has released.
    pub fn released(&self) -> Result<usize, Refusal> {
        Ok(self.store.read(|r| r.scan_prefix(SHARES, b""))?.len())
    }
}
