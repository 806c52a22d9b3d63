//! The append-only audit log: every entry (an upload, approval, job, round, release or
//! refusal, serialised by the caller) is stored and becomes a leaf of an RFC 9162 Merkle tree
//! ([`crate::merkle`]). Entries and their leaf hashes are appended together in one store
//! transaction, so the tree always matches the entries. Given a tree head `(size, root)`,
//! anyone can check that an entry is in the log ([`AuditLog::inclusion_proof`]) and that a
//! later head extends an earlier one without rewriting it ([`AuditLog::consistency_proof`]).

use std::sync::Arc;

use confide_store::{Store, StoreError, StoreExt};

use crate::merkle::{self, Hash};

const ENTRIES: &str = "audit.entries";
const LEAVES: &str = "audit.leaves";

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
        let leaf = merkle::leaf_hash(entry);
        self.store.transact(|txn| {
            let index = txn.append(ENTRIES, entry)?;
            let leaf_index = txn.append(LEAVES, &leaf)?;
            if index != leaf_index {
                return Err(AuditError::Corrupt(format!(
                    "entry {index} has leaf {leaf_index}"
                )));
            }
            Ok(index)
        })
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
}
