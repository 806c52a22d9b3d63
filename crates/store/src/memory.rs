//! [`MemoryStore`]: the store in memory, for tests and simulations of protocol code.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{KeyValue, Outcome, ReadTxn, Store, StoreError, Txn, validate_table_name};

/// A [`Store`] in memory with the same transactional semantics as the durable one.
///
/// One mutex serialises all transactions. A read-write transaction changes the tables in place
/// and records an undo entry per change; a rollback (the body returned
/// [`Outcome::Rollback`], or panicked) replays the undo log backwards, so a transaction costs
/// time in proportion to what it changes, not to the size of the store. Contents are lost when
/// the store is dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic inside a transaction body poisons the mutex, but the transaction's undo log
        // has already restored the tables by then (see `MemoryTxn`'s `Drop`), so the data
        // behind a poisoned lock is consistent.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct Tables {
    maps: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    logs: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Tables {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        validate_table_name(table)?;
        Ok(self.maps.get(table).and_then(|map| map.get(key)).cloned())
    }

    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        validate_table_name(table)?;
        let Some(map) = self.maps.get(table) else {
            return Ok(Vec::new());
        };
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    fn log(&self, table: &str) -> Result<&[Vec<u8>], StoreError> {
        validate_table_name(table)?;
        Ok(self.logs.get(table).map_or(&[], Vec::as_slice))
    }
}

fn seq_to_index(seq: u64) -> usize {
    // Beyond usize::MAX nothing can be stored in memory anyway.
    usize::try_from(seq).unwrap_or(usize::MAX)
}

fn index_to_seq(index: usize) -> u64 {
    // usize is at most 64 bits on every platform Rust supports.
    u64::try_from(index).unwrap_or(u64::MAX)
}

fn log_range_of(log: &[Vec<u8>], range: Range<u64>) -> Vec<(u64, Vec<u8>)> {
    let start = seq_to_index(range.start).min(log.len());
    let end = seq_to_index(range.end).min(log.len());
    if start >= end {
        return Vec::new();
    }
    log[start..end]
        .iter()
        .enumerate()
        .map(|(offset, value)| (index_to_seq(start + offset), value.clone()))
        .collect()
}

impl ReadTxn for Tables {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Tables::get(self, table, key)
    }

    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Tables::scan_prefix(self, table, prefix)
    }

    fn log_len(&self, table: &str) -> Result<u64, StoreError> {
        Ok(index_to_seq(self.log(table)?.len()))
    }

    fn log_get(&self, table: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.log(table)?.get(seq_to_index(seq)).cloned())
    }

    fn log_range(&self, table: &str, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        Ok(log_range_of(self.log(table)?, range))
    }
}

/// How to undo one change.
#[derive(Debug)]
enum Undo {
    /// Restore `key` of map `table` to `previous` (remove it if `None`).
    Map {
        table: String,
        key: Vec<u8>,
        previous: Option<Vec<u8>>,
    },
    /// Remove the last entry of log `table`.
    Append { table: String },
}

struct MemoryTxn<'a> {
    tables: &'a mut Tables,
    undo: Vec<Undo>,
    committed: bool,
}

impl MemoryTxn<'_> {
    fn rollback(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Map {
                    table,
                    key,
                    previous,
                } => {
                    let map = self.tables.maps.entry(table).or_default();
                    match previous {
                        Some(value) => map.insert(key, value),
                        None => map.remove(&key),
                    };
                }
                Undo::Append { table } => {
                    if let Some(log) = self.tables.logs.get_mut(&table) {
                        log.pop();
                    }
                }
            }
        }
    }
}

impl Drop for MemoryTxn<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.rollback();
        }
    }
}

impl ReadTxn for MemoryTxn<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.get(table, key)
    }

    fn scan_prefix(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.tables.scan_prefix(table, prefix)
    }

    fn log_len(&self, table: &str) -> Result<u64, StoreError> {
        ReadTxn::log_len(&*self.tables, table)
    }

    fn log_get(&self, table: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        ReadTxn::log_get(&*self.tables, table, seq)
    }

    fn log_range(&self, table: &str, range: Range<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        ReadTxn::log_range(&*self.tables, table, range)
    }
}

impl Txn for MemoryTxn<'_> {
    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        validate_table_name(table)?;
        let previous = self
            .tables
            .maps
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        self.undo.push(Undo::Map {
            table: table.to_owned(),
            key: key.to_vec(),
            previous,
        });
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<bool, StoreError> {
        validate_table_name(table)?;
        let previous = self
            .tables
            .maps
            .get_mut(table)
            .and_then(|map| map.remove(key));
        let existed = previous.is_some();
        if existed {
            self.undo.push(Undo::Map {
                table: table.to_owned(),
                key: key.to_vec(),
                previous,
            });
        }
        Ok(existed)
    }

    fn append(&mut self, table: &str, value: &[u8]) -> Result<u64, StoreError> {
        validate_table_name(table)?;
        let log = self.tables.logs.entry(table.to_owned()).or_default();
        let seq = index_to_seq(log.len());
        log.push(value.to_vec());
        self.undo.push(Undo::Append {
            table: table.to_owned(),
        });
        Ok(seq)
    }
}

impl Store for MemoryStore {
    fn transact_dyn(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Outcome,
    ) -> Result<(), StoreError> {
        let mut tables = self.lock();
        let mut txn = MemoryTxn {
            tables: &mut tables,
            undo: Vec::new(),
            committed: false,
        };
        if body(&mut txn) == Outcome::Commit {
            txn.committed = true;
        }
        // Dropping an uncommitted `txn` rolls it back, also when `body` panics.
        drop(txn);
        Ok(())
    }

    fn read_dyn(&self, body: &mut dyn FnMut(&dyn ReadTxn)) -> Result<(), StoreError> {
        let tables = self.lock();
        body(&*tables);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreExt;

    #[test]
    fn memory_store_conforms() {
        crate::conformance::check_store(&MemoryStore::new());
    }

    #[test]
    fn rollback_restores_a_key_changed_twice() {
        let store = MemoryStore::new();
        store
            .transact(|txn| txn.put("t", b"k", b"original"))
            .expect("write transaction");
        let result: Result<(), StoreError> = store.transact(|txn| {
            txn.put("t", b"k", b"first")?;
            txn.put("t", b"k", b"second")?;
            txn.delete("t", b"k")?;
            txn.put("t", b"k", b"third")?;
            Err(StoreError::Bug("roll back on purpose"))
        });
        assert!(result.is_err());
        let value = store
            .read(|txn| txn.get("t", b"k"))
            .expect("read transaction");
        assert_eq!(value.as_deref(), Some(&b"original"[..]));
    }
}
