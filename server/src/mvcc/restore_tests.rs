//! The index a store rebuilds at start, from its `keyMeta` rows or, where
//! those do not match, from its `key` rows: both answer every read at every
//! revision as the store did before it stopped, and the `keyMeta` rows stay
//! the `key` rows less their values through puts, deletes and compactions.

use std::sync::Arc;

use bytes::Bytes;
use kvd_api::mvccpb::KeyValue;
use proptest::prelude::*;
use prost::Message;

use super::{KvStore, RangeEnd, RangeOptions};
use crate::backend::{Backend, Table};

#[derive(Debug, Clone)]
enum Op {
    /// Puts key `k` (of 6) with a value of `len` bytes and lease `lease`.
    Put { k: u8, len: usize, lease: i64 },
    /// Deletes keys `from` up to (not including) `to`.
    Delete { from: u8, to: u8 },
    /// Compacts at the current revision less `back` (when above the last);
    /// without `physical`, only schedules it, as a stop before the
    /// compactor ran (the next start carries it out).
    Compact { back: i64, physical: bool },
    /// Several puts in one entry.
    Txn { ks: Vec<u8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0usize..300, prop_oneof![Just(0i64), 1i64..4]).prop_map(|(k, len, lease)| Op::Put { k, len, lease }),
        2 => (0u8..6, 0u8..7).prop_map(|(from, to)| Op::Delete { from, to }),
        1 => (0i64..6, any::<bool>()).prop_map(|(back, physical)| Op::Compact { back, physical }),
        1 => proptest::collection::vec(0u8..6, 1..4).prop_map(|ks| Op::Txn { ks }),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("/registry/pods/{k}").into_bytes()
}

fn apply(store: &KvStore, op: &Op, index: &mut u64) {
    *index += 1;
    let mut tx = store.write();
    match op {
        Op::Put { k, len, lease } => {
            tx.put(&key(*k), &vec![*k; *len], *lease);
        }
        Op::Delete { from, to } => {
            tx.delete_range(&key(*from), RangeEnd::Before(&key(*to)));
        }
        Op::Compact { back, physical } => {
            let at = store.rev() - back;
            if at > store.compact_rev() && at > 0 {
                tx.schedule_compaction(at).unwrap();
                tx.end(*index, 1);
                if *physical {
                    store.compact_physical(at).unwrap();
                }
                return;
            }
        }
        Op::Txn { ks } => {
            for k in ks {
                tx.put(&key(*k), k.to_string().as_bytes(), 0);
            }
        }
    }
    tx.end(*index, 1);
}

/// Every read a client can make: all keys at each revision still readable,
/// the revisions, and the leased keys a restart hands the lessor.
#[derive(Debug, PartialEq)]
struct Answers {
    rev: i64,
    compact: i64,
    at: Vec<(i64, Vec<KeyValue>)>,
}

fn answers(store: &KvStore) -> Answers {
    let (rev, compact) = (store.rev(), store.compact_rev());
    let at = (compact.max(1)..=rev)
        .map(|r| {
            let opts = RangeOptions { rev: r, ..Default::default() };
            (r, store.range(b"\0", RangeEnd::Unbounded, opts).unwrap().kvs)
        })
        .collect();
    Answers { rev, compact, at }
}

fn leased(store: &KvStore) -> Vec<(Vec<u8>, i64)> {
    let mut l = store.take_restored_leased_keys();
    l.sort();
    l
}

/// The live keys with a lease, as the reads at the current revision show
/// them: what a restart must hand the lessor.
fn leased_in(a: &Answers) -> Vec<(Vec<u8>, i64)> {
    let live = a.at.last().map(|(_, kvs)| kvs.as_slice()).unwrap_or_default();
    live.iter().filter(|kv| kv.lease != 0).map(|kv| (kv.key.clone(), kv.lease)).collect()
}

pub(super) fn rows(be: &Backend, t: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    be.scan_committed(t, &[], None, |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    out
}

/// The `keyMeta` rows are exactly the `key` rows, each less its value and
/// mod revision.
fn assert_key_meta_matches(be: &Backend) {
    let want: Vec<_> = rows(be, Table::Key)
        .into_iter()
        .map(|(k, v)| (k, super::key_meta::encode(&KeyValue::decode(v.as_slice()).unwrap()).to_vec()))
        .collect();
    assert_eq!(rows(be, Table::KeyMeta), want);
}

fn reopen(path: &std::path::Path, store: Arc<KvStore>) -> Arc<KvStore> {
    store.backend().commit().unwrap();
    drop(store);
    KvStore::open(Backend::open(path, 100, 1 << 20).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_restart_rebuilds_the_same_index_from_key_meta_or_from_keys(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = KvStore::open(Backend::open(&path, 100, 1 << 20).unwrap()).unwrap();
        let mut index = 0;
        for op in &ops {
            apply(&store, op, &mut index);
        }
        let before = answers(&store);
        store.backend().commit().unwrap();
        assert_key_meta_matches(store.backend());
        // From the keyMeta rows.
        let store = reopen(&path, store);
        prop_assert!(!store.key_meta_rebuilt());
        prop_assert_eq!(&answers(&store), &before);
        // A compaction left scheduled was carried out at the start.
        store.backend().commit().unwrap();
        assert_key_meta_matches(store.backend());
        prop_assert_eq!(leased(&store), leased_in(&before));
        // From the key rows, as after a build that kept no keyMeta rows:
        // they come back as they were.
        store.backend().put_committed(Table::KeyMeta, true, &[]).unwrap();
        let store = reopen(&path, store);
        prop_assert!(store.key_meta_rebuilt() || before.rev == 1);
        assert_key_meta_matches(store.backend());
        prop_assert_eq!(&answers(&store), &before);
        prop_assert_eq!(leased(&store), leased_in(&before));
        // Installed as a raft snapshot into another store, whose old
        // content the snapshot replaces: keyMeta rows come from the
        // snapshot's key rows (snapshots carry none).
        let other = KvStore::open(Backend::open(&dir.path().join("other.redb"), 100, 1 << 20).unwrap()).unwrap();
        apply(&other, &Op::Put { k: 9, len: 3, lease: 0 }, &mut 0);
        let src = store.backend().clone();
        other
            .install_snapshot(
                |f| {
                    src.scan_all_committed(|t, k, v| {
                        assert_ne!(t, Table::KeyMeta);
                        f(t, k, v);
                        true
                    })
                    .map_err(|e| e.to_string())
                },
                Vec::new(),
            )
            .unwrap();
        other.backend().commit().unwrap();
        assert_key_meta_matches(other.backend());
        prop_assert_eq!(&answers(&other), &before);
    }
}

/// A `keyMeta` row that does not decode, under the same keys as `key`'s,
/// is repaired from the `key` rows at start.
#[test]
fn a_damaged_key_meta_row_is_rebuilt_from_the_key_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let store = KvStore::open(Backend::open(&path, 100, 1 << 20).unwrap()).unwrap();
    let mut index = 0;
    for k in 0..5 {
        apply(&store, &Op::Put { k, len: 10, lease: 0 }, &mut index);
    }
    let before = answers(&store);
    store.backend().commit().unwrap();
    let damaged = rows(store.backend(), Table::KeyMeta);
    let damaged: Vec<_> = damaged
        .into_iter()
        .enumerate()
        .map(|(i, (k, v))| (k, Bytes::from(if i == 2 { b"\xff\xff".to_vec() } else { v })))
        .collect();
    store.backend().put_committed(Table::KeyMeta, true, &damaged).unwrap();
    let store = reopen(&path, store);
    assert!(store.key_meta_rebuilt());
    assert_key_meta_matches(store.backend());
    assert_eq!(answers(&store), before);
}
