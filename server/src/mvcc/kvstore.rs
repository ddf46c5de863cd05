//! The MVCC key-value store: reads at a revision, the write transaction entry
//! point, compaction, hashing, rebuilding the index at start, and swapping
//! in a raft snapshot's content.
//!
//! A read looks keys up in the index, then reads their values from the
//! backend: the two must be of the same content. A snapshot install
//! therefore builds the new index while it stages the new content, and
//! swaps both in under `swap`, which every read holds for its lookup and
//! its value reads: a read sees the old content or the new one, never a
//! mix (which showed as "mvcc: corrupt value").

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use kvd_api::mvccpb::KeyValue;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use tracing::{info, warn};

use super::generations::KeyAt;
use super::index::{RangeEnd, TreeIndex};
use super::revision::Revision;
use super::txn::WriteTxn;
use super::{MvccError, meta};
use crate::backend::{Backend, Table};

/// Keys from which a range's values are read and decoded off the runtime's
/// worker ([`crate::blocking::long`]): about a millisecond of work at 2 KiB
/// values, where moving off costs some tens of microseconds.
const LONG_RANGE: usize = 1000;

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

/// Index keys compacted per hold of the index's lock.
const COMPACT_BATCH: usize = 1000;
/// `keyMeta` rows rebuilt per transaction at start, each step's scan of
/// `key` before its writes: 3.7M rows took 10.7 s so, against 15.6 s in one
/// transaction whose writes shared redb's page cache with the scan.
const KEY_META_STEP: usize = if cfg!(test) { 4 } else { 65_536 };
/// The start of the warning that a start found the `keyMeta` rows not
/// matching the `key` rows, and rebuilds them.
pub const KEY_META_MISMATCH: &str = "the keyMeta rows do not match the key rows";

/// How a physical compaction goes through the backend: rows examined per
/// step, and the pause after each step (etcd's `--compaction-batch-limit`
/// and `--compaction-sleep-interval`).
///
/// etcd pauses 10 ms after each step because its step holds the batch
/// transaction's lock, which every apply needs. A kvd step holds only the
/// backend's commit lock, which no write waits for (writes apply to the
/// write buffer), so by default it does not pause: under 100 clients putting
/// and 100 reading, compacting 1M revisions took 15.6-17.0 s with etcd's
/// pause and 4.6-4.7 s without, at the same put p99; 3.7M revisions 56.0 s
/// and 15.3-26.9 s, put p99 20.5 and 17.6-34.4 ms (etcd: 55.1 s, 119.4 ms;
/// BENCHMARKS.md, session 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPacing {
    /// Rows examined per step.
    pub batch: usize,
    /// Pause after each step.
    pub pause: std::time::Duration,
}

impl CompactionPacing {
    /// Rows per step unless told otherwise (etcd's default).
    pub const DEFAULT_BATCH: usize = 1000;
}

impl Default for CompactionPacing {
    fn default() -> Self {
        CompactionPacing { batch: Self::DEFAULT_BATCH, pause: std::time::Duration::ZERO }
    }
}

/// A hold on the store's content ([`KvStore::content`]).
pub struct Content<'a>(#[allow(dead_code, reason = "held, not read")] parking_lot::RwLockReadGuard<'a, ()>);

pub struct KvStore {
    pub(super) backend: Arc<Backend>,
    pub(super) index: RwLock<TreeIndex>,
    /// The last revision whose write has finished.
    pub(super) current_rev: AtomicI64,
    /// The last compaction revision (reads below it fail).
    pub(super) compact_rev: AtomicI64,
    /// Serialises write transactions (apply is single-threaded; this makes it explicit).
    pub(super) write_lock: Mutex<()>,
    /// Held shared by every read across its index lookup and value reads,
    /// and exclusively by a snapshot install for its swap. Whoever holds it
    /// takes no backend lock but the read buffers': an install holds the
    /// backend's commit lock while it waits for `swap`.
    swap: RwLock<()>,
    /// Physical compaction and snapshot installs, one at a time: a
    /// compaction planned on the old content must not delete from the new.
    maintenance: Mutex<()>,
    /// Live keys with a lease, found by the last restore, until the lessor takes them.
    restored_leased: Mutex<Vec<(Vec<u8>, i64)>>,
    /// Whether the start rebuilt the `keyMeta` rows from the `key` rows.
    key_meta_rebuilt: std::sync::atomic::AtomicBool,
    /// How physical compactions step through the backend.
    pacing: Mutex<CompactionPacing>,
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
            swap: RwLock::new(()),
            maintenance: Mutex::new(()),
            restored_leased: Mutex::new(Vec::new()),
            key_meta_rebuilt: Default::default(),
            pacing: Mutex::new(CompactionPacing::default()),
        };
        store.restore()?;
        Ok(Arc::new(store))
    }

    /// Sets how the physical compactions from here on step through the
    /// backend.
    pub fn set_compaction_pacing(&self, pacing: CompactionPacing) {
        *self.pacing.lock() = CompactionPacing { batch: pacing.batch.max(1), ..pacing };
    }

    /// The live keys that hold a lease, as the last restore found them
    /// (taken once: the lessor rebuilds its attachments from them).
    pub fn take_restored_leased_keys(&self) -> Vec<(Vec<u8>, i64)> {
        std::mem::take(&mut *self.restored_leased.lock())
    }

    /// Replaces the whole content with a raft snapshot's records (`load`
    /// feeds them to an insert function, in table and key order), plus
    /// `extra` meta rows: the new index is built while the content is
    /// staged, and both are swapped in at once.
    pub fn install_snapshot(
        &self,
        load: impl FnOnce(&mut dyn FnMut(Table, &[u8], &[u8])) -> Result<(), String>,
        extra: Vec<(Vec<u8>, Bytes)>,
    ) -> Result<(), MvccError> {
        let _one = self.maintenance.lock();
        let _w = self.write_lock.lock();
        let mut rebuild = Rebuild::default();
        let (mut scheduled, mut finished) = (None, None);
        let staged = self.backend.stage_replacement(
            |insert| {
                load(&mut |t, k, v| {
                    match t {
                        Table::Key => {
                            if let Some(m) = rebuild.row_with_meta(k, v) {
                                insert(Table::KeyMeta, k, &m);
                            }
                        }
                        Table::Meta if k == meta::SCHEDULED_COMPACT_REV => scheduled = meta::decode(v),
                        Table::Meta if k == meta::FINISHED_COMPACT_REV => finished = meta::decode(v),
                        // Derived, here from the snapshot's `key` rows.
                        Table::KeyMeta => return,
                        _ => {}
                    }
                    insert(t, k, v)
                })
            },
            extra,
        )?;
        let rebuilt = rebuild.finish()?;
        {
            // Reads wait here for the commit (one fsync), not for the load.
            let _readers = self.swap.write();
            staged.commit()?;
            self.publish(rebuilt, scheduled, finished);
        }
        // The backend holds the snapshot; the WAL's record of it comes next.
        crate::failpoints::crash_point("snapshot_installed");
        self.finish_scheduled_compaction(scheduled, finished)
    }

    fn restore(&self) -> Result<(), MvccError> {
        let rebuilt = match self.restore_from_key_meta()? {
            Some(r) => r,
            None => {
                self.key_meta_rebuilt.store(true, Ordering::Relaxed);
                self.restore_from_keys()?
            }
        };
        let read_meta = |k: &[u8]| -> Result<Option<u64>, MvccError> {
            Ok(self.backend.get(Table::Meta, k)?.and_then(|b| meta::decode(&b)))
        };
        let (scheduled, finished) = (read_meta(meta::SCHEDULED_COMPACT_REV)?, read_meta(meta::FINISHED_COMPACT_REV)?);
        self.publish(rebuilt, scheduled, finished);
        let _one = self.maintenance.lock();
        self.finish_scheduled_compaction(scheduled, finished)
    }

    /// The index rebuilt from the `keyMeta` rows ([`super::key_meta`]), or
    /// `None` where they do not match the `key` rows.
    fn restore_from_key_meta(&self) -> Result<Option<Rebuilt>, MvccError> {
        if !self.backend.same_keys(Table::Key, Table::KeyMeta)? {
            warn!(
                "{KEY_META_MISMATCH} (a file last written or restored by a build without them, or damage): \
                 rebuilding them from the key rows"
            );
            return Ok(None);
        }
        let mut rebuild = Rebuild::default();
        self.backend.scan_committed(Table::KeyMeta, &[], None, |k, v| {
            rebuild.row(k, v);
            rebuild.bad.is_none()
        })?;
        match rebuild.finish() {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                warn!(error = %e, "a keyMeta row is damaged: rebuilding them from the key rows");
                Ok(None)
            }
        }
    }

    /// The index rebuilt from the `key` rows, which also rewrites the
    /// `keyMeta` rows from them, [`KEY_META_STEP`] rows per transaction.
    fn restore_from_keys(&self) -> Result<Rebuilt, MvccError> {
        let mut rebuild = Rebuild::default();
        self.backend.put_committed(Table::KeyMeta, true, &[])?;
        let mut start = Vec::new();
        loop {
            let mut rows = Vec::with_capacity(KEY_META_STEP);
            self.backend.scan_committed(Table::Key, &start, None, |k, v| {
                if let Some(m) = rebuild.row_with_meta(k, v) {
                    rows.push((k.to_vec(), m));
                }
                rebuild.bad.is_none() && rows.len() < KEY_META_STEP
            })?;
            self.backend.put_committed(Table::KeyMeta, false, &rows)?;
            match rows.pop() {
                Some((mut last, _)) if rows.len() + 1 == KEY_META_STEP => {
                    // The next step starts just after the last row written.
                    last.push(0);
                    start = last;
                }
                _ => break,
            }
        }
        let rebuilt = rebuild.finish()?;
        info!(revisions = rebuilt.rows, "rebuilt the keyMeta rows");
        Ok(rebuilt)
    }

    /// Whether the start rebuilt the `keyMeta` rows (see [`super::key_meta`]).
    pub fn key_meta_rebuilt(&self) -> bool {
        self.key_meta_rebuilt.load(Ordering::Relaxed)
    }

    /// Makes a rebuilt index and its revisions the store's.
    fn publish(&self, r: Rebuilt, scheduled: Option<u64>, finished: Option<u64>) {
        let compact = scheduled.or(finished).map_or(-1, |v| v as i64);
        let cur = r.cur.max(compact);
        let keys = r.idx.live_keys();
        *self.index.write() = r.idx;
        *self.restored_leased.lock() = r.leased;
        self.current_rev.store(cur, Ordering::SeqCst);
        self.compact_rev.store(compact, Ordering::SeqCst);
        info!(current_revision = cur, compact_revision = compact, keys, "restored mvcc index");
    }

    /// A compaction that was scheduled but had not finished before the stop
    /// (or in the snapshot's source) is carried out now. The caller holds
    /// `maintenance`.
    fn finish_scheduled_compaction(&self, scheduled: Option<u64>, finished: Option<u64>) -> Result<(), MvccError> {
        if let Some(s) = scheduled
            && finished != Some(s)
        {
            self.compact_physical_locked(s as i64, false)?;
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
        let content = self.content();
        self.range_in(&content, key, end, opts)
    }

    /// Holds off snapshot swaps while it lives, so that reads under it see
    /// the index, values and revisions of one content (see the module doc):
    /// a read at a revision taken under it never finds that revision
    /// compacted by a snapshot swapped in after.
    pub fn content(&self) -> Content<'_> {
        Content(self.swap.read())
    }

    /// [`range`](Self::range) under a [`Content`] the caller holds.
    pub fn range_in(
        &self,
        _content: &Content<'_>,
        key: &[u8],
        end: RangeEnd<'_>,
        opts: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.range_at(key, end, opts, self.rev(), &|_| None)
    }

    /// Shared by reads and write transactions. `cur` is the revision visible to
    /// the caller; `local` serves values the caller wrote but has not published.
    /// The caller holds `swap` (a read) or `write_lock` (a write transaction),
    /// so no snapshot is swapped in meanwhile.
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
        if keys.len() >= LONG_RANGE {
            // A large LIST: its reads and decoding off the runtime's worker.
            return crate::blocking::long(|| self.values_of(keys, count, at, cur, local));
        }
        self.values_of(keys, count, at, cur, local)
    }

    /// The values of `keys` (from the index, at `at`) for a range's result.
    fn values_of(
        &self,
        keys: Vec<(Vec<u8>, KeyAt)>,
        count: usize,
        at: i64,
        cur: i64,
        local: &dyn Fn(&[u8]) -> Option<Bytes>,
    ) -> Result<RangeResult, MvccError> {
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
    /// revision older than the newest one at or before `rev`, per key. As
    /// etcd's, it goes a slice at a time: the index a thousand keys per hold
    /// of its lock, the backend [`CompactionPacing::batch`] rows per step,
    /// each step a transaction of its own, so that reads and writes go on
    /// throughout.
    pub fn compact_physical(&self, rev: i64) -> Result<usize, MvccError> {
        let _one = self.maintenance.lock();
        self.compact_physical_locked(rev, true)
    }

    /// [`compact_physical`](Self::compact_physical) with `maintenance` held;
    /// `pace`: each step in a transaction of its own, with the pause after
    /// it (not at start or during a snapshot's install, when nothing else
    /// runs).
    fn compact_physical_locked(&self, rev: i64, pace: bool) -> Result<usize, MvccError> {
        let mut keep = HashSet::new();
        let mut from: Option<Box<[u8]>> = None;
        loop {
            let next = self.index.write().compact_some(from.as_deref(), COMPACT_BATCH, rev, &mut keep);
            match next {
                Some(k) => from = Some(k),
                None => break,
            }
        }
        // Every revision up to `rev` is in the file from here on.
        self.backend.commit()?;
        let end = Revision::new(rev + 1, 0).to_key(false);
        let (mut start, mut n) = (Vec::new(), 0);
        let pacing = *self.pacing.lock();
        loop {
            let (mut seen, mut last, mut doomed) = (0, Vec::new(), Vec::new());
            // The `keyMeta` rows name the same revisions as `key`'s, in a
            // twentieth of the bytes.
            self.backend.scan_committed(Table::KeyMeta, &start, Some(&end), |k, _| {
                seen += 1;
                last.clear();
                last.extend_from_slice(k);
                if let Some((r, _)) = Revision::from_key(k)
                    && !keep.contains(&r)
                {
                    doomed.push(k.to_vec());
                }
                seen < pacing.batch
            })?;
            n += doomed.len();
            if pace {
                // Each step's removals are committed at once, as etcd's
                // ForceCommit after each batch, so a commit carries a
                // thousand of them, not ten steps' worth: put p99 during a
                // compaction went from 15-20 to 13-14 ms (BENCHMARKS.md).
                self.backend.remove_committed(&[Table::Key, Table::KeyMeta], &start, &last, doomed)?;
                crate::failpoints::crash_point("compaction_step");
            } else if !doomed.is_empty() {
                self.backend.write(|b| {
                    for k in doomed {
                        b.delete(Table::KeyMeta, k.clone());
                        b.delete(Table::Key, k);
                    }
                });
            }
            if seen < pacing.batch {
                break;
            }
            // The next step starts just after the last row seen.
            last.push(0);
            start = last;
            if pace && !pacing.pause.is_zero() {
                std::thread::sleep(pacing.pause);
            }
        }
        self.backend.write(|b| b.put(Table::Meta, meta::FINISHED_COMPACT_REV.to_vec(), meta::encode(rev as u64)));
        self.backend.commit()?;
        if n > 0 {
            self.backend.recount_in_use()?;
        }
        info!(revision = rev, removed = n, "finished compaction");
        Ok(n)
    }

    /// etcd's HashKV, bit for bit: CRC32-Castagnoli over the bucket's name
    /// `key`, then the MVCC keys and values up to `rev` that a compaction at
    /// `rev` would keep (every row above the compacted revision; below it,
    /// the kept ones, or all of them if none is kept), less a tombstone at
    /// the compacted revision itself (etcd before 3.4.34 and 3.5.16
    /// removed those in compaction, later ones keep them, and both hash
    /// alike). The rows are encoded as etcd's, so the same history hashes
    /// the same on kvd and etcd. `rev` <= 0 means the current revision.
    /// Returns (hash, hash revision, compact revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        // Committed first: a commit waits for an install's staging, which
        // waits for `swap`; under `swap` nothing may take the backend's locks.
        self.backend.commit()?;
        let _content = self.swap.read();
        let rev = if rev <= 0 { self.rev() } else { rev };
        self.check_rev(rev)?;
        let compact = self.compact_rev();
        let keep: HashSet<Revision> = self.index.read().keep(rev);
        let lower = Revision::new(compact + 1, 0);
        let upper = Revision::new(rev + 1, 0).to_key(false);
        let mut h = crc32c::crc32c(Table::Key.name().as_bytes());
        self.backend.scan_committed(Table::Key, &[], Some(&upper), |k, v| {
            if let Some((r, tombstone)) = Revision::from_key(k)
                && (r >= lower || keep.is_empty() || keep.contains(&r))
                && !(tombstone && r.main == compact)
            {
                h = crc32c::crc32c_append(h, k);
                h = crc32c::crc32c_append(h, v);
            }
            true
        })?;
        Ok((h, rev, compact))
    }
}

/// An index rebuilt from the backend's `key` (or `keyMeta`) rows, in
/// revision order.
#[derive(Default)]
struct Rebuild {
    idx: TreeIndex,
    cur: i64,
    rows: u64,
    /// Revisions come in order, so the last one of a key says whether its
    /// live version holds a lease.
    leased: std::collections::HashMap<Vec<u8>, i64>,
    prev: Option<Revision>,
    /// The first damaged row.
    bad: Option<Revision>,
}

/// What a [`Rebuild`] produced.
struct Rebuilt {
    idx: TreeIndex,
    cur: i64,
    rows: u64,
    leased: Vec<(Vec<u8>, i64)>,
}

impl Rebuild {
    /// Adds a `key` or `keyMeta` row (the index reads no value).
    fn row(&mut self, k: &[u8], v: &[u8]) {
        if let Some((rev, tomb, kv)) = self.decode(k, v) {
            self.add(rev, tomb, kv);
        }
    }

    /// Adds a `key` row; returns its `keyMeta` row.
    fn row_with_meta(&mut self, k: &[u8], v: &[u8]) -> Option<Bytes> {
        let (rev, tomb, kv) = self.decode(k, v)?;
        let m = super::key_meta::encode(&kv);
        self.add(rev, tomb, kv);
        Some(m)
    }

    fn decode(&mut self, k: &[u8], v: &[u8]) -> Option<(Revision, bool, KeyValue)> {
        if self.bad.is_some() {
            return None;
        }
        let Some((rev, tomb)) = Revision::from_key(k) else {
            self.bad = Some(Revision::default());
            return None;
        };
        // Rows come in revision order, one per revision; a revision seen
        // twice (as a put and as a tombstone) or a row without a key can
        // only be damage (found by fuzzing the backend rows).
        match KeyValue::decode(v) {
            Ok(kv) if !kv.key.is_empty() && self.prev.is_none_or(|p| rev > p) => Some((rev, tomb, kv)),
            _ => {
                self.bad = Some(rev);
                None
            }
        }
    }

    fn add(&mut self, rev: Revision, tomb: bool, kv: KeyValue) {
        self.prev = Some(rev);
        self.rows += 1;
        self.idx.restore(&kv.key, rev, kv.create_revision, kv.version, tomb);
        self.cur = self.cur.max(rev.main);
        if tomb || kv.lease == 0 {
            self.leased.remove(&kv.key);
        } else {
            self.leased.insert(kv.key, kv.lease);
        }
    }

    fn finish(self) -> Result<Rebuilt, MvccError> {
        if let Some(rev) = self.bad {
            return Err(MvccError::Corrupt(rev));
        }
        Ok(Rebuilt { idx: self.idx, cur: self.cur.max(1), rows: self.rows, leased: self.leased.into_iter().collect() })
    }
}
