//! Confide's store for durable state: the privacy budget ledger now, the governance audit log and
//! sealed blobs later.
//!
//! Protocol code talks to the small [`Store`] interface and never to a database, so it can be
//! tested without a disk ([`MemoryStore`]) and runs on an embedded database by default
//! ([`RedbStore`], on [redb](https://www.redb.org): no server to install, crash-safe commits).
//!
//! # Model
//!
//! A store holds named tables of two kinds, which live in separate namespaces:
//!
//! - **maps**: byte keys to byte values, ordered by key bytes (lexicographically); read with
//!   [`ReadTxn::get`] and [`ReadTxn::scan_prefix`], written with [`Txn::put`] and
//!   [`Txn::delete`]. Callers encode structured keys so that a prefix selects one group (e.g.
//!   `dataset ‖ 0x00 ‖ job id`).
//! - **logs**: append-only sequences of byte values numbered densely from 0, written only with
//!   [`Txn::append`], which returns the entry's sequence number, and read with
//!   [`ReadTxn::log_len`], [`ReadTxn::log_get`] and [`ReadTxn::log_range`]. There is no way to
//!   change or remove an entry through this interface. This is the shape the audit log needs:
//!   leaf `i` of an RFC 9162 Merkle tree (Section 2.1) is log entry `i`, and signed tree heads go
//!   in a map keyed by tree size.
//!
//! Every access happens inside a transaction. [`StoreExt::transact`] runs a closure in a
//! serialisable read-write transaction: it commits if the closure returns `Ok` and rolls back
//! every change if it returns `Err` (or panics, or if any operation inside it failed, even one
//! whose error the closure ignored). [`StoreExt::read`] runs a closure on a consistent
//! read-only snapshot. Read-write transactions are serialised: one runs at a time per store,
//! and with [`RedbStore`] one process at a time holds the file.
//!
//! [`Store`] itself is object safe (`Arc<dyn Store>` works); the generic, typed entry points are
//! in the blanket extension trait [`StoreExt`].
//!
//! # Durability
//!
//! [`RedbStore`] commits with redb's default durability: when `transact` returns `Ok`, the
//! transaction is on disk and survives a process crash or power loss (redb fsyncs on commit).
//! [`MemoryStore`] keeps the same transactional semantics in memory and loses everything when
//! dropped.

mod memory;
mod redb_store;

#[cfg(test)]
mod conformance;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// The longest table name accepted, in bytes.
pub const MAX_TABLE_NAME_LEN: usize = 64;

/// Store errors. Each says whose fault it is: the caller's (an invalid table name), the
/// environment's (the file is held by another process, an I/O failure), or ours (a bug).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file is held open by another process or another handle in this process.
    #[error(
        "store {} is already open by another process or handle (only one may hold it at a time)",
        path.display()
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be opened or created.
    #[error("cannot open store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What the database reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read, write or commit failed in the database (I/O error, corruption, full disk).
    #[error("store {}: {operation} failed: {source}", path.display())]
    Backend {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// What the database reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The caller named a table that is not a valid name.
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A log has used every sequence number.
    #[error("log {table:?} is full: no sequence number follows {last}")]
    LogFull {
        /// The log.
        table: String,
        /// Its last sequence number.
        last: u64,
    },
    /// The transaction's closure returned `Ok`, but one of its operations had failed; nothing
    /// was committed.
    #[error("transaction rolled back: an operation inside it failed earlier ({first})")]
    FailedOperation {
        /// The first failure.
        first: String,
    },
    /// A broken invariant of this crate.
    #[error("internal error in the store (a bug): {0}")]
    Bug(&'static str),
}

/// A map entry: key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// What a read-write transaction's body decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Make every change durable.
    Commit,
    /// Discard every change.
    Rollback,
}

/// Read access inside a transaction. Reads see the transaction's own earlier writes. A table
/// that was never written reads as empty.
pub trait ReadTxn {
    /// The value stored under `key` in map `table`.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every entry of map `table` whose key starts with `prefix`, in ascending key order
    /// (lexicographic over bytes). An empty prefix returns the whole table. The result is
    /// collected in memory: keep tables that are scanned whole small, or scan narrower prefixes.
    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;

    /// The number of entries in log `table`, which is also the sequence number the next
    /// [`Txn::append`] will assign.
    fn log_len(&self, table: &str) -> Result<u64, StoreError>;

    /// Entry `seq` of log `table`.
    fn log_get(&self, table: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// The entries of log `table` whose sequence numbers lie in `range`, in order, with their
    /// sequence numbers. The part of `range` beyond the end of the log is ignored.
    fn log_range(&self, table: &str, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
}

/// Read-write access inside a transaction.
pub trait Txn: ReadTxn {
    /// Stores `value` under `key` in map `table`, replacing any previous value.
    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Removes `key` from map `table`; says whether it was there.
    fn delete(&mut self, table: &str, key: &[u8]) -> Result<bool, StoreError>;

    /// Appends `value` to log `table` and returns its sequence number: 0 for the first entry,
    /// then one more than the previous entry's.
    fn append(&mut self, table: &str, value: &[u8]) -> Result<u64, StoreError>;
}

/// A transactional store of named tables. Object safe; use it through [`StoreExt`].
///
/// Implementations must run at most one read-write transaction at a time (serialisable
/// isolation), give read transactions a consistent snapshot, and apply all or none of a
/// transaction's changes.
pub trait Store: Send + Sync + fmt::Debug {
    /// Runs `body` once in a read-write transaction and commits its changes if it returns
    /// [`Outcome::Commit`]; otherwise (or if `body` panics) discards them. Returns an error if
    /// the transaction could not be started or committed; in that case nothing was changed.
    fn transact_dyn(&self, body: &mut dyn FnMut(&mut dyn Txn) -> Outcome)
    -> Result<(), StoreError>;

    /// Runs `body` once on a consistent read-only snapshot.
    fn read_dyn(&self, body: &mut dyn FnMut(&dyn ReadTxn)) -> Result<(), StoreError>;
}

/// Typed entry points for every [`Store`], including `dyn Store`.
pub trait StoreExt: Store {
    /// Runs `f` in a read-write transaction. If `f` returns `Ok`, the changes are committed
    /// (durably, for a durable store) before this returns `Ok`. If `f` returns `Err`, panics, or
    /// any [`Txn`] operation inside it failed, nothing it did is kept.
    fn transact<R, E>(&self, f: impl FnOnce(&mut dyn Txn) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let mut f = Some(f);
        let mut result: Option<Result<R, E>> = None;
        self.transact_dyn(&mut |txn| {
            let Some(f) = f.take() else {
                // The backend ran the body twice; refuse to commit the second run.
                return Outcome::Rollback;
            };
            let mut checked = Checked {
                inner: txn,
                first_failure: None,
            };
            match (f(&mut checked), checked.first_failure) {
                (Ok(value), None) => {
                    result = Some(Ok(value));
                    Outcome::Commit
                }
                (Ok(_), Some(first)) => {
                    result = Some(Err(StoreError::FailedOperation { first }.into()));
                    Outcome::Rollback
                }
                (Err(error), _) => {
                    result = Some(Err(error));
                    Outcome::Rollback
                }
            }
        })?;
        result.unwrap_or_else(|| Err(StoreError::Bug("transaction body was not run").into()))
    }

    /// Runs `f` on a consistent read-only snapshot of the store.
    fn read<R, E>(&self, f: impl FnOnce(&dyn ReadTxn) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let mut f = Some(f);
        let mut result: Option<Result<R, E>> = None;
        self.read_dyn(&mut |txn| {
            if let Some(f) = f.take() {
                result = Some(f(txn));
            }
        })?;
        result.unwrap_or_else(|| Err(StoreError::Bug("read body was not run").into()))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// Wraps a backend's transaction and remembers the first failed operation, so that a body that
/// ignores an error cannot commit a partial transaction.
struct Checked<'a> {
    inner: &'a mut dyn Txn,
    first_failure: Option<String>,
}

impl Checked<'_> {
    fn note<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result
            && self.first_failure.is_none()
        {
            self.first_failure = Some(error.to_string());
        }
        result
    }
}

impl ReadTxn for Checked<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // Failed reads change nothing, so they need not block the commit.
        self.inner.get(table, key)
    }

    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_prefix(table, prefix)
    }

    fn log_len(&self, table: &str) -> Result<u64, StoreError> {
        self.inner.log_len(table)
    }

    fn log_get(&self, table: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.log_get(table, seq)
    }

    fn log_range(&self, table: &str, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.log_range(table, range)
    }
}

impl Txn for Checked<'_> {
    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let result = self.inner.put(table, key, value);
        self.note(result)
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<bool, StoreError> {
        let result = self.inner.delete(table, key);
        self.note(result)
    }

    fn append(&mut self, table: &str, value: &[u8]) -> Result<u64, StoreError> {
        let result = self.inner.append(table, value);
        self.note(result)
    }
}

/// Checks a table name: 1 to [`MAX_TABLE_NAME_LEN`] bytes of ASCII letters, digits, `_`, `-`
/// and `.`. Names are an API between crates (the ledger's tables, the audit log's), not data, so
/// a strict alphabet keeps them greppable and free of separators a backend might interpret.
pub fn validate_table_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason| {
        Err(StoreError::InvalidTableName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_TABLE_NAME_LEN {
        return invalid("longer than 64 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return invalid("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}
