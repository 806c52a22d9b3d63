//! A witness: a data owner's node remembers the last tree head it cosigned for each log, and
//! cosigns a new head only if the log proves (RFC 9162 consistency proof) that the new tree
//! extends the old one. A log operator that rolls back, forks or rewrites its history cannot
//! get that owner's cosignature again, and the heads the witness stored prove what the log
//! showed before.

use std::sync::Arc;

use confide_store::{Store, StoreError, StoreExt};

use crate::audit::{Cosignature, SignedTreeHead};
use crate::identity::Identity;
use crate::merkle::{self, Hash};

const SEEN: &str = "witness.heads";

/// Why a witness refused a head.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The head's signature does not verify under the log's key.
    #[error("tree head refused: {0}")]
    BadHead(String),
    /// The head covers fewer entries than one the witness already cosigned.
    #[error("rollback: the log showed {seen} entries before and now shows {got}")]
    Rollback {
        /// Size seen before.
        seen: u64,
        /// Size now.
        got: u64,
    },
    /// Same size, different root: two histories.
    #[error("fork: two different trees of {size} entries")]
    Fork {
        /// The size.
        size: u64,
    },
    /// The consistency proof does not show that the new tree extends the old one.
    #[error(
        "history rewritten: the tree of {got} entries does not extend the tree of {seen} entries it cosigned"
    )]
    Rewritten {
        /// Size seen before.
        seen: u64,
        /// Size now.
        got: u64,
    },
    /// The witness's own store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A witness with its durable memory of heads.
#[derive(Debug, Clone)]
pub struct Witness {
    store: Arc<dyn Store>,
    identity: Arc<Identity>,
}

impl Witness {
    /// A witness signing with `identity`, remembering heads in `store`.
    pub fn new(store: Arc<dyn Store>, identity: Arc<Identity>) -> Self {
        Self { store, identity }
    }

    /// The last head this witness cosigned for `log_id`.
    ///
    /// # Errors
    /// The store failed or holds a malformed head.
    pub fn last_seen(&self, log_id: &str) -> Result<Option<SignedTreeHead>, WitnessError> {
        let raw = self
            .store
            .read(|txn| Ok::<_, WitnessError>(txn.get(SEEN, log_id.as_bytes())?))?;
        raw.map(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| WitnessError::BadHead(format!("stored head is malformed: {e}")))
        })
        .transpose()
    }

    /// Checks `head` (signed by `log_public_key`) against the last head seen from that log,
    /// using `proof` (the consistency proof from the last size to the new one), remembers it,
    /// and cosigns it.
    ///
    /// # Errors
    /// A bad signature, a rollback, a fork or a rewritten history; nothing is remembered then.
    pub fn observe(
        &self,
        head: &SignedTreeHead,
        log_public_key: &[u8],
        proof: &[Hash],
    ) -> Result<Cosignature, WitnessError> {
        let new = head
            .verify(log_public_key)
            .map_err(|e| WitnessError::BadHead(e.to_string()))?;
        let json = crate::jcs::to_vec(head).map_err(|e| WitnessError::BadHead(e.to_string()))?;
        // Read, check and remember in one transaction: two observers of one log (a node
        // running two jobs of one coordinator) are serialised, so the head remembered never
        // moves backwards and each check is against the head remembered at that moment.
        self.store.transact(|txn| {
            let last: Option<SignedTreeHead> = txn
                .get(SEEN, head.log_id.as_bytes())?
                .map(|b| {
                    serde_json::from_slice(&b).map_err(|e| {
                        WitnessError::BadHead(format!("stored head is malformed: {e}"))
                    })
                })
                .transpose()?;
            if let Some(last) = last {
                let old = last
                    .unverified_head()
                    .map_err(|e| WitnessError::BadHead(e.to_string()))?;
                if new.size < old.size {
                    return Err(WitnessError::Rollback {
                        seen: old.size,
                        got: new.size,
                    });
                }
                if new.size == old.size && new.root != old.root {
                    return Err(WitnessError::Fork { size: new.size });
                }
                if new.size > old.size
                    && old.size > 0
                    && !merkle::verify_consistency(old.size, new.size, &old.root, &new.root, proof)
                {
                    return Err(WitnessError::Rewritten {
                        seen: old.size,
                        got: new.size,
                    });
                }
            }
            txn.put(SEEN, head.log_id.as_bytes(), &json)?;
            Ok::<_, WitnessError>(())
        })?;
        Cosignature::sign(head, &self.identity).map_err(|e| WitnessError::BadHead(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Event, EventKind};
    use confide_store::MemoryStore;

    fn log_with(n: usize, tag: &str) -> AuditLog {
        let log = AuditLog::new(Arc::new(MemoryStore::new()));
        for i in 0..n {
            log.record(&Event {
                kind: EventKind::Round,
                job: "j".into(),
                actor: "c".into(),
                time: "2026-11-22T00:00:00Z".into(),
                detail: serde_json::json!({ "round": i, "tag": tag }),
            })
            .expect("append");
        }
        log
    }

    fn witness() -> Witness {
        Witness::new(
            Arc::new(MemoryStore::new()),
            Arc::new(Identity::generate().expect("key")),
        )
    }

    #[test]
    fn an_extending_head_is_cosigned_and_remembered() {
        let key = Identity::generate().expect("key");
        let log = log_with(3, "a");
        let w = witness();
        let h3 = log.sign_head(&key).expect("sign");
        let c = w.observe(&h3, &key.public_key(), &[]).expect("first head");
        c.verify(&h3).expect("cosignature verifies");
        log.add_cosignature(&h3, &c).expect("stored");
        assert_eq!(log.cosignatures(&h3).expect("read"), vec![c]);
        for i in 3..7 {
            log.record(&Event::now(
                EventKind::Round,
                "j",
                "c",
                serde_json::json!({ "round": i }),
            ))
            .expect("append");
        }
        let h7 = log.sign_head(&key).expect("sign");
        let proof = log.consistency_proof(3, 7).expect("proof");
        w.observe(&h7, &key.public_key(), &proof).expect("extends");
        assert_eq!(w.last_seen(&key.id()).expect("read"), Some(h7.clone()));
        // The same head again is fine.
        w.observe(&h7, &key.public_key(), &[]).expect("same head");
    }

    #[test]
    fn rollback_fork_and_rewrite_are_refused() {
        let key = Identity::generate().expect("key");
        let honest = log_with(6, "a");
        let w = witness();
        let h6 = honest.sign_head(&key).expect("sign");
        w.observe(&h6, &key.public_key(), &[]).expect("first");

        // Rollback: an older, smaller head signed by the same key.
        let small = log_with(4, "a");
        let h4 = small.sign_head(&key).expect("sign");
        assert!(matches!(
            w.observe(&h4, &key.public_key(), &[]),
            Err(WitnessError::Rollback { seen: 6, got: 4 })
        ));

        // Fork: a different history of the same size.
        let other = log_with(6, "b");
        let f6 = other.sign_head(&key).expect("sign");
        assert!(matches!(
            w.observe(&f6, &key.public_key(), &[]),
            Err(WitnessError::Fork { size: 6 })
        ));

        // Rewritten: a longer tree that does not extend the one cosigned, with the only
        // consistency proof the rewriter can produce (its own).
        let rewritten = log_with(9, "b");
        let r9 = rewritten.sign_head(&key).expect("sign");
        let proof = rewritten.consistency_proof(6, 9).expect("proof");
        assert!(matches!(
            w.observe(&r9, &key.public_key(), &proof),
            Err(WitnessError::Rewritten { seen: 6, got: 9 })
        ));

        // A tampered signature.
        let mut bad = h6.clone();
        bad.signature.replace_range(
            0..2,
            if bad.signature.starts_with("00") {
                "01"
            } else {
                "00"
            },
        );
        assert!(matches!(
            w.observe(&bad, &key.public_key(), &[]),
            Err(WitnessError::BadHead(_))
        ));
        // A head signed by another key under this log's id.
        let impostor = Identity::generate().expect("key");
        assert!(matches!(
            w.observe(&h6, &impostor.public_key(), &[]),
            Err(WitnessError::BadHead(_))
        ));

        // Nothing refused was remembered.
        assert_eq!(w.last_seen(&key.id()).expect("read"), Some(h6));
    }
}
