//! The behaviour every [`Store`] must have, as one test function run against each backend.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Barrier;

use crate::{ReadTxn, Store, StoreError, StoreExt, Txn};

/// An error a transaction body returns on purpose.
#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error("the body gave up")]
    GaveUp,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn get(store: &dyn Store, table: &str, key: &[u8]) -> Option<Vec<u8>> {
    store
        .read(|txn| txn.get(table, key))
        .expect("read transaction")
}

fn keys(store: &dyn Store, table: &str, prefix: &[u8]) -> Vec<Vec<u8>> {
    store
        .read(|txn| txn.scan_prefix(table, prefix))
        .expect("read transaction")
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

fn log_len(store: &dyn Store, table: &str) -> u64 {
    store
        .read(|txn| txn.log_len(table))
        .expect("read transaction")
}

fn put(store: &dyn Store, table: &str, key: &[u8], value: &[u8]) {
    store
        .transact(|txn| txn.put(table, key, value))
        .expect("write transaction");
}

/// Runs every check on `store`, which must be empty.
pub(crate) fn check_store(store: &dyn Store) {
    empty_tables_read_as_empty(store);
    put_get_delete(store);
    prefix_scan_is_ordered_and_exact(store);
    error_rolls_back_everything(store);
    ignored_failure_rolls_back(store);
    panic_rolls_back(store);
    append_assigns_dense_sequence_numbers(store);
    invalid_table_names_are_refused(store);
    concurrent_transactions_are_serialised(store);
}

fn empty_tables_read_as_empty(store: &dyn Store) {
    let check = |txn: &dyn ReadTxn| -> Result<(), StoreError> {
        assert_eq!(txn.get("never", b"k")?, None);
        assert!(txn.scan_prefix("never", b"")?.is_empty());
        assert_eq!(txn.log_len("never")?, 0);
        assert_eq!(txn.log_get("never", 0)?, None);
        assert!(txn.log_range("never", 0..10)?.is_empty());
        Ok(())
    };
    store.read(check).expect("read transaction");
    store
        .transact(|txn| check(&*txn))
        .expect("write transaction");
}

fn put_get_delete(store: &dyn Store) {
    put(store, "kv", b"k", b"v1");
    assert_eq!(get(store, "kv", b"k").as_deref(), Some(&b"v1"[..]));
    put(store, "kv", b"k", b"v2");
    assert_eq!(get(store, "kv", b"k").as_deref(), Some(&b"v2"[..]));
    // Tables are separate namespaces.
    assert_eq!(get(store, "kv-other", b"k"), None);

    let (existed, missing) = store
        .transact(|txn| -> Result<_, StoreError> {
            let existed = txn.delete("kv", b"k")?;
            // A transaction reads its own writes.
            assert_eq!(txn.get("kv", b"k")?, None);
            Ok((existed, txn.delete("kv", b"k")?))
        })
        .expect("write transaction");
    assert!(existed);
    assert!(!missing);
    assert_eq!(get(store, "kv", b"k"), None);

    // Empty keys and values are values like any other.
    put(store, "kv", b"", b"");
    assert_eq!(get(store, "kv", b"").as_deref(), Some(&b""[..]));
}

fn prefix_scan_is_ordered_and_exact(store: &dyn Store) {
    // Inserted out of order, across two transactions; 0xff checks bytes compare unsigned.
    let inserted: [&[u8]; 9] = [
        b"a\x00z",
        b"b",
        b"a\x00b",
        &[0xff, 0x00],
        b"a",
        b"a\x00",
        b"ab\x00a",
        b"a\x01",
        b"a\x00b\x00",
    ];
    let (first, second) = inserted.split_at(4);
    for half in [first, second] {
        store
            .transact(|txn| -> Result<(), StoreError> {
                for key in half {
                    txn.put("scan", key, &[key.len() as u8])?;
                }
                Ok(())
            })
            .expect("write transaction");
    }

    let expected: Vec<Vec<u8>> = [&b"a\x00"[..], b"a\x00b", b"a\x00b\x00", b"a\x00z"]
        .iter()
        .map(|key| key.to_vec())
        .collect();
    assert_eq!(keys(store, "scan", b"a\x00"), expected);

    let mut everything: Vec<Vec<u8>> = inserted.iter().map(|key| key.to_vec()).collect();
    everything.sort();
    assert_eq!(keys(store, "scan", b""), everything);
    assert_eq!(
        keys(store, "scan", &[0xff]),
        vec![vec![0xff, 0x00]],
        "a prefix of 0xff must not stop early or wrap"
    );
    assert!(keys(store, "scan", b"c").is_empty());

    // Values come back with their keys.
    let pairs = store
        .read(|txn| txn.scan_prefix("scan", b"ab"))
        .expect("read transaction");
    assert_eq!(pairs, vec![(b"ab\x00a".to_vec(), vec![4])]);
}

fn error_rolls_back_everything(store: &dyn Store) {
    put(store, "atomic", b"kept", b"before");
    let before = log_len(store, "atomic-log");

    let result: Result<(), TestError> = store.transact(|txn| {
        txn.put("atomic", b"kept", b"changed")?;
        txn.put("atomic", b"new", b"x")?;
        txn.delete("atomic", b"kept")?;
        txn.append("atomic-log", b"entry")?;
        assert_eq!(txn.log_len("atomic-log")?, before + 1);
        Err(TestError::GaveUp)
    });
    assert!(matches!(result, Err(TestError::GaveUp)), "{result:?}");

    assert_eq!(
        get(store, "atomic", b"kept").as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(get(store, "atomic", b"new"), None);
    assert_eq!(log_len(store, "atomic-log"), before);

    // The next transaction starts from the state before the rolled-back one.
    let seq = store
        .transact(|txn| txn.append("atomic-log", b"real"))
        .expect("write transaction");
    assert_eq!(seq, before);
}

fn ignored_failure_rolls_back(store: &dyn Store) {
    let result: Result<(), StoreError> = store.transact(|txn| {
        txn.put("ignored", b"k", b"v")?;
        // A body that swallows a failed operation must not commit the rest.
        let _ = txn.put("bad name!", b"k", b"v");
        Ok(())
    });
    assert!(
        matches!(result, Err(StoreError::FailedOperation { ref first }) if first.contains("bad name!")),
        "{result:?}"
    );
    assert_eq!(get(store, "ignored", b"k"), None);
}

fn panic_rolls_back(store: &dyn Store) {
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _: Result<(), StoreError> = store.transact(|txn| {
            txn.put("panic", b"k", b"v")?;
            txn.append("panic-log", b"v")?;
            panic!("body panics mid-transaction");
        });
    }));
    assert!(panicked.is_err());
    assert_eq!(get(store, "panic", b"k"), None);
    assert_eq!(log_len(store, "panic-log"), 0);
    // The store is still usable.
    put(store, "panic", b"k", b"after");
    assert_eq!(get(store, "panic", b"k").as_deref(), Some(&b"after"[..]));
}

fn append_assigns_dense_sequence_numbers(store: &dyn Store) {
    let first = store
        .transact(|txn| -> Result<_, StoreError> {
            Ok([
                txn.append("log", b"zero")?,
                txn.append("log", b"one")?,
                txn.append("log", b"two")?,
            ])
        })
        .expect("write transaction");
    assert_eq!(first, [0, 1, 2]);
    let next = store
        .transact(|txn| txn.append("log", b"three"))
        .expect("write transaction");
    assert_eq!(next, 3);
    // Logs are numbered independently, and a map of the same name is a different table.
    assert_eq!(
        store
            .transact(|txn| txn.append("log2", b"a"))
            .expect("write transaction"),
        0
    );
    assert_eq!(get(store, "log", b"\x00\x00\x00\x00\x00\x00\x00\x00"), None);

    store
        .read(|txn| -> Result<(), StoreError> {
            assert_eq!(txn.log_len("log")?, 4);
            assert_eq!(txn.log_get("log", 1)?.as_deref(), Some(&b"one"[..]));
            assert_eq!(txn.log_get("log", 4)?, None);
            assert_eq!(
                txn.log_range("log", 1..3)?,
                vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
            );
            assert_eq!(
                txn.log_range("log", 2..100)?,
                vec![(2, b"two".to_vec()), (3, b"three".to_vec())]
            );
            assert!(txn.log_range("log", 3..3)?.is_empty());
            #[allow(clippy::reversed_empty_ranges)]
            let backwards = txn.log_range("log", 3..1)?;
            assert!(backwards.is_empty());
            assert!(txn.log_range("log", 10..20)?.is_empty());
            assert_eq!(txn.log_range("log", 0..u64::MAX)?.len(), 4);
            Ok(())
        })
        .expect("read transaction");
}

fn invalid_table_names_are_refused(store: &dyn Store) {
    for name in ["", "has space", "colon:", "slash/", "é", &"x".repeat(65)] {
        let read = store.read(|txn| txn.get(name, b"k"));
        assert!(
            matches!(read, Err(StoreError::InvalidTableName { .. })),
            "{name:?}: {read:?}"
        );
        let write = store.transact(|txn| txn.append(name, b"v"));
        assert!(
            matches!(write, Err(StoreError::InvalidTableName { .. })),
            "{name:?}: {write:?}"
        );
    }
    put(store, &"x".repeat(64), b"k", b"v");
    put(store, "Az09_-.", b"k", b"v");
}

/// Read-modify-write from many OS threads at once: lost updates would show as a short count,
/// broken isolation as duplicate sequence numbers.
fn concurrent_transactions_are_serialised(store: &dyn Store) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 25;
    let barrier = Barrier::new(THREADS);
    let seqs: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let mut seqs = Vec::new();
                    for _ in 0..ROUNDS {
                        let seq = store
                            .transact(|txn: &mut dyn Txn| -> Result<u64, StoreError> {
                                let count =
                                    txn.get("counter", b"n")?.map_or(0, |bytes| bytes.len());
                                txn.put("counter", b"n", &vec![0; count + 1])?;
                                txn.append("counter-log", b"tick")
                            })
                            .expect("write transaction");
                        seqs.push(seq);
                    }
                    seqs
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("thread"))
            .collect()
    });
    let total = THREADS * ROUNDS;
    assert_eq!(get(store, "counter", b"n").map(|v| v.len()), Some(total));
    let distinct: BTreeSet<u64> = seqs.into_iter().collect();
    assert_eq!(distinct, (0..total as u64).collect());
}

/// Runs the single test `test` (its path without the crate name, e.g. `redb_store::tests::x`)
/// of this test binary in a child process with `var` set to `value`, and returns what it did.
/// Tests use it to take part in a scenario as a second process.
pub(crate) fn run_as_child(test: &str, var: &str, value: &str) -> std::process::Output {
    let exe = std::env::current_exe().expect("path of the test binary");
    std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, value)
        .output()
        .expect("spawn the test binary as a child process")
}
