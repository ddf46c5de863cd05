//! The MVCC write transaction: all puts and deletes of one applied entry share
//! one main revision, with increasing sub revisions.
//!
//! Effects are kept locally and reach the backend buffer in one step at
//! [`WriteTxn::end`], together with the consistent index: a batch commit can
//! never persist half an entry, or an entry without its index.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use kvd_api::mvccpb::event::EventType;
use kvd_api::mvccpb::{Event, KeyValue};
use parking_lot::MutexGuard;
use prost::Message;

use super::index::RangeEnd;
use super::kvstore::{KvStore, RangeOptions, RangeResult};
use super::revision::Revision;
use super::{MvccError, meta};
use crate::backend::Table;

pub struct WriteTxn<'a> {
    store: &'a KvStore,
    _guard: MutexGuard<'a, ()>,
    begin_rev: i64,
    /// Encoded revision key -> encoded KeyValue and its `keyMeta` row, in
    /// write order.
    writes: Vec<(Vec<u8>, Bytes, Bytes)>,
    local: HashMap<Vec<u8>, Bytes>,
    /// Extra buffered writes (meta, alarms) that go out with the entry.
    extra: Vec<(Table, Vec<u8>, Option<Bytes>)>,
    /// The entry's changes as watch events, when someone watches.
    events: Option<Vec<Event>>,
}

impl<'a> WriteTxn<'a> {
    pub(super) fn new(store: &'a KvStore) -> Self {
        let guard = store.write_lock.lock();
        Self {
            store,
            _guard: guard,
            begin_rev: store.rev(),
            writes: Vec::new(),
            local: HashMap::new(),
            extra: Vec::new(),
            events: None,
        }
    }

    /// Collects the changes as watch events, returned by [`end`](Self::end).
    pub fn collect_events(&mut self) {
        self.events = Some(Vec::new());
    }

    pub fn store(&self) -> &KvStore {
        self.store
    }

    /// The revision this transaction writes at (current + 1).
    fn write_rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// The revision the transaction's reads see: its own writes included.
    pub fn rev(&self) -> i64 {
        if self.writes.is_empty() { self.begin_rev } else { self.begin_rev + 1 }
    }

    pub fn has_changes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Reads, seeing this transaction's earlier writes.
    pub fn range(&self, key: &[u8], end: RangeEnd<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        let mut r = self.store.range_at(key, end, opts, self.rev(), &|k| self.local.get(k).cloned())?;
        r.rev = self.rev();
        Ok(r)
    }

    /// Puts `key`; returns the revision of the write.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> i64 {
        let rev = Revision::new(self.write_rev(), self.writes.len() as i64);
        let prev = self.store.index.write().put(key, rev);
        let (created, version) = match prev {
            Some(p) => (p.created.main, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: created,
            mod_revision: rev.main,
            version,
            value: value.to_vec(),
            lease,
        };
        self.record(rev, false, kv);
        rev.main
    }

    /// Deletes every key in range; returns the deleted keys.
    pub fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Vec<Vec<u8>> {
        let (keys, _) = self.store.index.read().range(key, end, self.rev(), 0);
        let mut deleted = Vec::with_capacity(keys.len());
        for (k, _) in keys {
            let rev = Revision::new(self.write_rev(), self.writes.len() as i64);
            self.store.index.write().tombstone(&k, rev);
            self.record(rev, true, KeyValue { key: k.clone(), ..Default::default() });
            deleted.push(k);
        }
        deleted
    }

    fn record(&mut self, rev: Revision, tombstone: bool, mut kv: KeyValue) {
        let k = rev.to_key(tombstone);
        let v = Bytes::from(kv.encode_to_vec());
        if !tombstone {
            self.local.insert(k.clone(), v.clone());
        }
        self.writes.push((k, v, super::key_meta::encode(&kv)));
        if let Some(events) = &mut self.events {
            // A delete event carries the key and the deleting revision, as etcd's.
            let ty = if tombstone {
                kv.mod_revision = rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event { r#type: ty as i32, kv: Some(kv), prev_kv: None });
        }
    }

    /// Buffers an extra write (alarm, meta) to go out atomically with this entry.
    pub fn put_extra(&mut self, t: Table, k: Vec<u8>, v: Option<Bytes>) {
        self.extra.push((t, k, v));
    }

    /// Ends the transaction for raft entry (`index`, `term`): buffers all writes
    /// with the consistent index, then publishes the new revision. Returns the
    /// revision and, if collected, the events.
    pub fn end(self, index: u64, term: u64) -> (i64, Vec<Event>) {
        let changed = !self.writes.is_empty();
        let Self { store, writes, extra, events, .. } = self;
        store.backend.write(|b| {
            for (k, v, m) in writes {
                b.put(Table::KeyMeta, k.clone(), m);
                b.put(Table::Key, k, v);
            }
            for (t, k, v) in extra {
                match v {
                    Some(v) => b.put(t, k, v),
                    None => b.delete(t, k),
                }
            }
            b.put_named(Table::Meta, meta::CONSISTENT_INDEX, meta::encode(index));
            b.put_named(Table::Meta, meta::CONSISTENT_TERM, meta::encode(term));
        });
        if changed {
            store.current_rev.fetch_add(1, Ordering::SeqCst);
        }
        (store.rev(), events.unwrap_or_default())
    }

    /// Schedules a compaction at `rev` (checked by the caller): reads below it
    /// fail from now on. The physical part runs afterwards.
    pub fn schedule_compaction(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.store.compact_rev() {
            return Err(MvccError::Compacted);
        }
        if rev > self.store.rev() {
            return Err(MvccError::FutureRev);
        }
        self.store.compact_rev.store(rev, Ordering::SeqCst);
        self.extra.push((Table::Meta, meta::SCHEDULED_COMPACT_REV.to_vec(), Some(meta::encode(rev as u64))));
        Ok(())
    }
}
