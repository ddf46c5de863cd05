//! The MVCC key-value store: reads at a revision, the write transaction entry
//! point, compaction, hashing, and rebuilding the index at start.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use kvd_api::mvccpb::KeyValue;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use tracing::info;

use super::index::{RangeEnd, TreeIndex};
use super::revision::Revision;
use super::txn::WriteTxn;
use super::{MvccError, meta};
use crate::backend::{Backend, Table};

/// Options of a read, after the API layer's own processing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// At most this many keys (0 = all).
    pub limit: usize,
    /// Read at this revision (<= 0 = current).
    pub rev: i64,
    /// Only count, return no keys.
    pub count_only: bool,
}

#[derive(Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the revision, regardless of the limit.
    pub count: usize,
    /// The store's current revision.
    pub rev: i64,
}

pub struct KvStore {
    pub(super) backend: Arc<Backend>,
    pub(super) index: RwLock<TreeIndex>,
    /// The last revision whose write has finished.
    pub(super) current_rev: AtomicI64,
    /// The last compaction revision (reads below it fail).
    pub(super) compact_rev: AtomicI64,
    /// Serialises write transactions (apply is single-threaded; this makes it explicit).
    pub(super) write_lock: Mutex<()>,
    /// Live keys with a lease, found by the last restore, until the lessor takes them.
    restored_leased: Mutex<Vec<(Vec<u8>, i64)>>,
}

impl KvStore {
    /// Opens the store over `backend`, rebuilding the index from it.
    pub fn open(backend: Arc<Backend>) -> Result<Arc<KvStore>, MvccError> {
        let store = KvStore {
            backend,
            index: RwLock::new(TreeIndex::default()),
            current_rev: AtomicI64::new(1),
            compact_rev: AtomicI64::new(-1),
            write_lock: Mutex::new(()),
            restored_leased: Mutex::new(Vec::new()),
        };
        store.restore()?;
        Ok(Arc::new(store))
    }

    /// The live keys that hold a lease, as the last restore found them
    /// (taken once: the lessor rebuilds its attachments from them).
    pub fn take_restored_leased_keys(&self) -> Vec<(Vec<u8>, i64)> {
        std::mem::take(&mut *self.restored_leased.lock())
    }

    /// Rebuilds the index and revisions from the backend after its content was
    /// replaced (a raft snapshot was installed).
    pub fn reload(&self) -> Result<(), MvccError> {
        let _w = self.write_lock.lock();
        self.restore()
    }

    fn restore(&self) -> Result<(), MvccError> {
        let mut idx = TreeIndex::default();
        let mut cur = 1i64;
        let mut bad = None;
        // Revisions come in order, so the last one of a key says whether its
        // live version holds a lease.
        let mut leased: std::collections::HashMap<Vec<u8>, i64> = std::collections::HashMap::new();
        let mut prev: Option<Revision> = None;
        self.backend.scan_committed(Table::Key, &[], None, |k, v| {
            let Some((rev, tomb)) = Revision::from_key(k) else {
                bad = Some(Revision::default());
                return false;
            };
            // Rows come in revision order, one per revision; a revision seen
            // twice (as a put and as a tombstone) or a row without a key can
            // only be damage (found by fuzzing the backend rows).
            let Ok(kv) = KeyValue::decode(v) else {
                bad = Some(rev);
                return false;
            };
            if prev.is_some_and(|p| rev <= p) || kv.key.is_empty() {
                bad = Some(rev);
                return false;
            }
            prev = Some(rev);
            idx.restore(&kv.key, rev, kv.create_revision, kv.version, tomb);
            cur = cur.max(rev.main);
            if tomb || kv.lease == 0 {
                leased.remove(&kv.key);
            } else {
                leased.insert(kv.key, kv.lease);
            }
            true
        })?;
        if let Some(rev) = bad {
            return Err(MvccError::Corrupt(rev));
        }
        let read_meta = |k: &[u8]| -> Result<Option<i64>, MvccError> {
            Ok(self.backend.get(Table::Meta, k)?.and_then(|b| meta::decode(&b)).map(|v| v as i64))
        };
        let scheduled = read_meta(meta::SCHEDULED_COMPACT_REV)?;
        let finished = read_meta(meta::FINISHED_COMPACT_REV)?;
        let compact = scheduled.or(finished).unwrap_or(-1);
        cur = cur.max(compact);
        let keys = idx.live_keys();
        *self.index.write() = idx;
        *self.restored_leased.lock() = leased.into_iter().collect();
        self.current_rev.store(cur, Ordering::SeqCst);
        self.compact_rev.store(compact, Ordering::SeqCst);
        info!(current_revision = cur, compact_revision = compact, keys, "restored mvcc index");
        if let Some(s) = scheduled
            && finished != Some(s)
        {
            // A compaction was scheduled but had not finished before the stop.
            self.compact_physical(s)?;
        }
        Ok(())
    }

    /// The current revision.
    pub fn rev(&self) -> i64 {
        self.current_rev.load(Ordering::SeqCst)
    }

    /// The compaction revision (-1 before any compaction).
    pub fn compact_rev(&self) -> i64 {
        self.compact_rev.load(Ordering::SeqCst)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Number of live keys.
    pub fn key_count(&self) -> usize {
        self.index.read().live_keys()
    }

    /// Checks a read revision against the compaction point and the current revision.
    pub fn check_rev(&self, rev: i64) -> Result<(), MvccError> {
        let cur = self.rev();
        if rev > cur {
            return Err(MvccError::FutureRev);
        }
        if rev > 0 && rev < self.compact_rev() {
            return Err(MvccError::Compacted);
        }
        Ok(())
    }

    /// Reads `[key, end)` at `opts.rev`.
    pub fn range(&self, key: &[u8], end: RangeEnd<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range_at(key, end, opts, self.rev(), &|_| None)
    }

    /// Shared by reads and write transactions. `cur` is the revision visible to
    /// the caller; `local` serves values the caller wrote but has not published.
    pub(super) fn range_at(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        opts: RangeOptions,
        cur: i64,
        local: &dyn Fn(&[u8]) -> Option<Bytes>,
    ) -> Result<RangeResult, MvccError> {
        if opts.rev > cur {
            return Err(MvccError::FutureRev);
        }
        let at = if opts.rev <= 0 { cur } else { opts.rev };
        if at < self.compact_rev() {
            return Err(MvccError::Compacted);
        }
        let (keys, count) = self.index.read().range(key, end, at, if opts.count_only { 1 } else { opts.limit });
        // A compaction scheduled since the check above may have pruned the index
        // under this read: the compaction revision is raised before the index is
        // compacted, so checking again after the lookup catches it.
        if at < self.compact_rev() {
            return Err(MvccError::Compacted);
        }
        if opts.count_only {
            return Ok(RangeResult { kvs: Vec::new(), count, rev: cur });
        }
        // Values this caller wrote but has not published come from `local`;
        // the rest from the backend, in one batch, each key encoded once.
        let mut values = vec![None; keys.len()];
        let (mut remote_at, mut remote_keys) = (Vec::new(), Vec::new());
        for (i, (_, a)) in keys.iter().enumerate() {
            let k = a.modified.to_key(false);
            match local(&k) {
                Some(v) => values[i] = Some(v),
                None => {
                    remote_at.push(i);
                    remote_keys.push(k);
                }
            }
        }
        if !remote_keys.is_empty() {
            for (i, v) in remote_at.into_iter().zip(self.backend.get_many(Table::Key, &remote_keys)?) {
                values[i] = v;
            }
        }
        let mut kvs = Vec::with_capacity(values.len());
        for ((_, a), v) in keys.iter().zip(values) {
            let Some(v) = v else {
                // A compaction that started after the revision check removed it.
                if at < self.compact_rev() {
                    return Err(MvccError::Compacted);
                }
                return Err(MvccError::Corrupt(a.modified));
            };
            kvs.push(KeyValue::decode(v).map_err(|_| MvccError::Corrupt(a.modified))?);
        }
        Ok(RangeResult { kvs, count, rev: cur })
    }

    /// Starts the (only) write transaction.
    pub fn write(&self) -> WriteTxn<'_> {
        WriteTxn::new(self)
    }

    /// Physical compaction at `rev`: drops from the index and the backend every
    /// revision older than the newest one at or before `rev`, per key.
    pub fn compact_physical(&self, rev: i64) -> Result<usize, MvccError> {
        let keep = self.index.write().compact(rev);
        self.backend.commit()?;
        let end = Revision::new(rev + 1, 0).to_key(false);
        let mut doomed = Vec::new();
        self.backend.scan_committed(Table::Key, &[], Some(&end), |k, _| {
            if let Some((r, _)) = Revision::from_key(k)
                && !keep.contains(&r)
            {
                doomed.push(k.to_vec());
            }
            true
        })?;
        let n = doomed.len();
        self.backend.write(|b| {
            for k in doomed {
                b.delete(Table::Key, k);
            }
            b.put(Table::Meta, meta::FINISHED_COMPACT_REV.to_vec(), meta::encode(rev as u64));
        });
        self.backend.commit()?;
        info!(revision = rev, removed = n, "finished compaction");
        Ok(n)
    }

    /// CRC32-Castagnoli over the MVCC keys and values that a compaction at
    /// `rev` would keep, as etcd's HashKV. `rev` <= 0 means the current revision.
    /// Returns (hash, hash revision, compact revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let rev = if rev <= 0 { self.rev() } else { rev };
        self.check_rev(rev)?;
        let compact = self.compact_rev();
        let keep: HashSet<Revision> = self.index.read().keep(rev);
        self.backend.commit()?;
        let lower = Revision::new(compact + 1, 0);
        let upper = Revision::new(rev + 1, 0).to_key(false);
        let mut h = 0u32;
        self.backend.scan_committed(Table::Key, &[], Some(&upper), |k, v| {
            if let Some((r, _)) = Revision::from_key(k)
                && (r >= lower || keep.contains(&r))
            {
                h = crc32c::crc32c_append(h, k);
                h = crc32c::crc32c_append(h, v);
            }
            true
        })?;
        Ok((h, rev, compact))
    }
}
