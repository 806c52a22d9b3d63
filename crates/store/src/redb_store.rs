//! [`RedbStore`]: the embedded, durable default, on redb.
//!
//! redb is a copy-on-write B-tree database in one file with ACID transactions: one write
//! transaction at a time (others wait in `begin_write`), readers on MVCC snapshots that never
//! block, and commits that are durable when `commit` returns (redb's default
//! `Durability::Immediate`: the commit is fsynced; after a crash the file opens at the last
//! committed transaction). Map `x` is the redb table `map:x` with byte keys and values; log `x`
//! is the table `log:x` keyed by `u64` sequence numbers. The prefixes keep the two kinds apart,
//! since validated names cannot contain `:`.
//!
//! redb locks the file (byte-range locks on the open file description) in its default
//! `ExclusiveWriter` mode, so a second `RedbStore::open` of the same file, from this process or
//! another, fails with [`StoreError::AlreadyOpen`] until the first is dropped; the lock goes
//! away with the process, crashed or not.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::{KeyValue, Outcome, ReadTxn, Store, StoreError, Txn, validate_table_name};

/// A [`Store`] in one redb database file.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database file at `path`, creating it if it does not exist (its directory must
    /// exist). Fails with [`StoreError::AlreadyOpen`] if another handle holds the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        match redb::Database::create(&path) {
            Ok(db) => Ok(Self { db, path }),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::AlreadyOpen { path }),
            Err(error) => Err(StoreError::Open {
                path,
                source: Box::new(error),
            }),
        }
    }

    /// The store at `path`, shared within this process: a second caller gets the handle the
    /// first one opened while it is still held (redb lets one handle open a file; a daemon
    /// running two jobs opens its ledger and witness store once for both).
    ///
    /// # Errors
    /// As [`RedbStore::open`].
    pub fn open_shared(path: impl AsRef<Path>) -> Result<std::sync::Arc<Self>, StoreError> {
        use std::sync::{Arc, Mutex, OnceLock, Weak};
        static OPEN: OnceLock<
            Mutex<std::collections::HashMap<std::path::PathBuf, Weak<RedbStore>>>,
        > = OnceLock::new();
        let path = path.as_ref();
        // The same file under two spellings is one key: its directory, resolved, and its name.
        let key = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                dir.canonicalize()
                    .map(|d| d.join(name))
                    .unwrap_or_else(|_| path.to_path_buf())
            }
            _ => path.to_path_buf(),
        };
        let mut open = OPEN
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(store) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(Self::open(path)?);
        open.insert(key, Arc::downgrade(&store));
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A map table in a read transaction.
type ReadOnlyMap = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
/// A log table in a read transaction.
type ReadOnlyLog = redb::ReadOnlyTable<u64, &'static [u8]>;

fn map_name(table: &str) -> Result<String, StoreError> {
    validate_table_name(table)?;
    Ok(format!("map:{table}"))
}

fn log_name(table: &str) -> Result<String, StoreError> {
    validate_table_name(table)?;
    Ok(format!("log:{table}"))
}

fn map_def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

fn log_def(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

/// Turns a redb error into a [`StoreError::Backend`] naming the file and the operation.
fn backend<E: Into<redb::Error>>(path: &Path, operation: &'static str) -> impl Fn(E) -> StoreError {
    move |error| StoreError::Backend {
        path: path.to_path_buf(),
        operation,
        source: Box::new(error.into()),
    }
}

/// The sequence number after `last` (0 for an empty log).
fn next_seq(table: &str, last: Option<u64>) -> Result<u64, StoreError> {
    match last {
        None => Ok(0),
        Some(last) => last.checked_add(1).ok_or_else(|| StoreError::LogFull {
            table: table.to_owned(),
            last,
        }),
    }
}

/// The read operations, over any redb table type that can read (a write transaction's `Table`
/// or a read transaction's `ReadOnlyTable`).
fn scan<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    table: &T,
    prefix: &[u8],
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    for item in table
        .range::<&[u8]>(prefix..)
        .map_err(backend(path, "scan"))?
    {
        let (key, value) = item.map_err(backend(path, "scan"))?;
        if !key.value().starts_with(prefix) {
            break;
        }
        out.push((key.value().to_vec(), value.value().to_vec()));
    }
    Ok(out)
}

fn last_seq<T: ReadableTable<u64, &'static [u8]>>(
    path: &Path,
    table: &T,
) -> Result<Option<u64>, StoreError> {
    Ok(table
        .last()
        .map_err(backend(path, "read the end of a log"))?
        .map(|(key, _)| key.value()))
}

fn range_of<T: ReadableTable<u64, &'static [u8]>>(
    path: &Path,
    table: &T,
    range: Range<u64>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    if range.start >= range.end {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in table
        .range(range)
        .map_err(backend(path, "read a log range"))?
    {
        let (key, value) = item.map_err(backend(path, "read a log range"))?;
        out.push((key.value(), value.value().to_vec()));
    }
    Ok(out)
}

struct RedbTxn<'a> {
    txn: &'a redb::WriteTransaction,
    path: &'a Path,
}

impl RedbTxn<'_> {
    fn map(
        &self,
        table: &str,
    ) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, StoreError> {
        let name = map_name(table)?;
        self.txn
            .open_table(map_def(&name))
            .map_err(backend(self.path, "open a table"))
    }

    fn log(&self, table: &str) -> Result<redb::Table<'_, u64, &'static [u8]>, StoreError> {
        let name = log_name(table)?;
        self.txn
            .open_table(log_def(&name))
            .map_err(backend(self.path, "open a log"))
    }
}

impl ReadTxn for RedbTxn<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map(table)?
            .get(key)
            .map_err(backend(self.path, "get"))?
            .map(|value| value.value().to_vec()))
    }

    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        scan(self.path, &self.map(table)?, prefix)
    }

    fn log_len(&self, table: &str) -> Result<u64, StoreError> {
        next_seq(table, last_seq(self.path, &self.log(table)?)?)
    }

    fn log_get(&self, table: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .log(table)?
            .get(seq)
            .map_err(backend(self.path, "read a log entry"))?
            .map(|value| value.value().to_vec()))
    }

    fn log_range(&self, table: &str, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        range_of(self.path, &self.log(table)?, range)
    }
}

impl Txn for RedbTxn<'_> {
    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.map(table)?
            .insert(key, value)
            .map_err(backend(self.path, "put"))?;
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .map(table)?
            .remove(key)
            .map_err(backend(self.path, "delete"))?
            .is_some())
    }

    fn append(&mut self, table: &str, value: &[u8]) -> Result<u64, StoreError> {
        let mut log = self.log(table)?;
        let seq = next_seq(table, last_seq(self.path, &log)?)?;
        log.insert(seq, value)
            .map_err(backend(self.path, "append"))?;
        Ok(seq)
    }
}

struct RedbRead<'a> {
    txn: redb::ReadTransaction,
    path: &'a Path,
}

impl RedbRead<'_> {
    /// `None` if the table was never created (reads as empty).
    fn map(&self, table: &str) -> Result<Option<ReadOnlyMap>, StoreError> {
        let name = map_name(table)?;
        match self.txn.open_table(map_def(&name)) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(backend(self.path, "open a table")(error)),
        }
    }

    fn log(&self, table: &str) -> Result<Option<ReadOnlyLog>, StoreError> {
        let name = log_name(table)?;
        match self.txn.open_table(log_def(&name)) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(backend(self.path, "open a log")(error)),
        }
    }
}

impl ReadTxn for RedbRead<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(map) = self.map(table)? else {
            return Ok(None);
        };
        Ok(map
            .get(key)
            .map_err(backend(self.path, "get"))?
            .map(|value| value.value().to_vec()))
    }

    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        match self.map(table)? {
            Some(map) => scan(self.path, &map, prefix),
            None => Ok(Vec::new()),
        }
    }

    fn log_len(&self, table: &str) -> Result<u64, StoreError> {
        match self.log(table)? {
            Some(log) => next_seq(table, last_seq(self.path, &log)?),
            None => Ok(0),
        }
    }

    fn log_get(&self, table: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(log) = self.log(table)? else {
            return Ok(None);
        };
        Ok(log
            .get(seq)
            .map_err(backend(self.path, "read a log entry"))?
            .map(|value| value.value().to_vec()))
    }

    fn log_range(&self, table: &str, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        match self.log(table)? {
            Some(log) => range_of(self.path, &log, range),
            None => Ok(Vec::new()),
        }
    }
}

impl Store for RedbStore {
    fn transact_dyn(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Outcome,
    ) -> Result<(), StoreError> {
        let path = self.path.as_path();
        let txn = self
            .db
            .begin_write()
            .map_err(backend(path, "begin a write transaction"))?;
        let outcome = body(&mut RedbTxn { txn: &txn, path });
        match outcome {
            Outcome::Commit => txn.commit().map_err(backend(path, "commit")),
            Outcome::Rollback => txn.abort().map_err(backend(path, "roll back")),
        }
        // A panicking `body` drops `txn` uncommitted, which redb treats as an abort.
    }

    fn read_dyn(&self, body: &mut dyn FnMut(&dyn ReadTxn)) -> Result<(), StoreError> {
        let path = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(backend(path, "begin a read transaction"))?;
        body(&RedbRead { txn, path });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreExt;
    use crate::conformance::run_as_child;

    /// Set in a child process to the database path it should work on.
    const CHILD_VAR: &str = "CONFIDE_STORE_TEST_CHILD_DB";

    fn test_path(name: &str) -> String {
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        format!("{module}::{name}")
    }

    #[test]
    fn redb_store_conforms() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = RedbStore::open(dir.path().join("store.redb")).expect("open store");
        crate::conformance::check_store(&store);
    }

    #[test]
    fn committed_data_survives_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.redb");
        {
            let store = RedbStore::open(&path).expect("open store");
            store
                .transact(|txn| -> Result<(), StoreError> {
                    txn.put("map", b"k", b"v")?;
                    txn.append("log", b"zero")?;
                    txn.append("log", b"one")?;
                    Ok(())
                })
                .expect("write transaction");
            let rolled_back: Result<(), StoreError> = store.transact(|txn| {
                txn.put("map", b"gone", b"v")?;
                txn.append("log", b"gone")?;
                Err(StoreError::Bug("roll back on purpose"))
            });
            assert!(rolled_back.is_err());
        }
        let store = RedbStore::open(&path).expect("reopen store");
        store
            .read(|txn| -> Result<(), StoreError> {
                assert_eq!(txn.get("map", b"k")?.as_deref(), Some(&b"v"[..]));
                assert_eq!(txn.get("map", b"gone")?, None);
                assert_eq!(
                    txn.log_range("log", 0..10)?,
                    vec![(0, b"zero".to_vec()), (1, b"one".to_vec())]
                );
                Ok(())
            })
            .expect("read transaction");
        let seq = store
            .transact(|txn| txn.append("log", b"two"))
            .expect("write transaction");
        assert_eq!(seq, 2, "sequence numbers continue after a reopen");
    }

    #[test]
    fn second_open_in_this_process_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.redb");
        let first = RedbStore::open(&path).expect("open store");
        let second = RedbStore::open(&path);
        match second {
            Err(error @ StoreError::AlreadyOpen { .. }) => {
                assert!(error.to_string().contains(&path.display().to_string()));
            }
            other => panic!("expected AlreadyOpen, got {other:?}"),
        }
        drop(first);
        RedbStore::open(&path).expect("open after the first handle is dropped");
    }

    #[test]
    fn open_held_by_another_process_is_refused() {
        if let Ok(path) = std::env::var(CHILD_VAR) {
            // Child: the parent holds the file open.
            match RedbStore::open(&path) {
                Err(StoreError::AlreadyOpen { .. }) => println!("CHILD: refused as already open"),
                other => panic!("child expected AlreadyOpen, got {other:?}"),
            }
            return;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.redb");
        let held = RedbStore::open(&path).expect("open store");
        let child = run_as_child(
            &test_path("open_held_by_another_process_is_refused"),
            CHILD_VAR,
            &path.display().to_string(),
        );
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && stdout.contains("CHILD: refused as already open"),
            "child: {:?}\n{stdout}\n{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );
        drop(held);
    }

    #[test]
    fn commit_survives_process_abort() {
        if let Ok(path) = std::env::var(CHILD_VAR) {
            // Child: commit, then die without closing the database.
            let store = RedbStore::open(&path).expect("child opens store");
            store
                .transact(|txn| -> Result<(), StoreError> {
                    txn.put("map", b"k", b"committed")?;
                    txn.append("log", b"committed")?;
                    Ok(())
                })
                .expect("child commits");
            println!("CHILD: committed");
            std::process::abort();
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.redb");
        let child = run_as_child(
            &test_path("commit_survives_process_abort"),
            CHILD_VAR,
            &path.display().to_string(),
        );
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            !child.status.success() && stdout.contains("CHILD: committed"),
            "child: {:?}\n{stdout}\n{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );
        let store = RedbStore::open(&path).expect("reopen after the crash");
        store
            .read(|txn| -> Result<(), StoreError> {
                assert_eq!(txn.get("map", b"k")?.as_deref(), Some(&b"committed"[..]));
                assert_eq!(txn.log_len("log")?, 1);
                Ok(())
            })
            .expect("read transaction");
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("missing-dir").join("store.redb");
        let error = RedbStore::open(&path).expect_err("directory does not exist");
        assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }
}
