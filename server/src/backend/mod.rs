//! The backend: redb behind a write buffer, committed in batches.
//!
//! Commit protocol (see ARCHITECTURE.md, "Apply and the backend"):
//! - Apply writes every effect of an entry, *and* the consistent index, into the
//!   pending [`Buffer`]. Reads consult the pending buffer, then the buffer being
//!   committed, then redb.
//! - Every batch interval (100 ms) or once the batch limit (10,000 ops) is
//!   reached, the committer swaps the pending buffer out and writes it in one
//!   redb transaction with `Durability::Immediate`. The consistent index travels
//!   in the same transaction as the effects, so after a crash redb holds a
//!   prefix of the applied entries and exactly says which; the rest is replayed
//!   from the WAL.
//! - A buffer being committed stays readable until redb's commit returned, so
//!   a reader never misses a key between the buffer and the file.

pub mod buffer;
mod chunk;
mod defrag;
mod read;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use redb::{Database, Durability, TableDefinition};
use tracing::{info_span, warn};

pub use buffer::{Buffer, Table};

use crate::metrics;

/// Errors of the backend layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend: cannot open {path}: {msg}")]
    Open { path: PathBuf, msg: String },
    #[error("backend: {0}")]
    Storage(String),
}

impl From<redb::Error> for BackendError {
    fn from(e: redb::Error) -> Self {
        BackendError::Storage(e.to_string())
    }
}

macro_rules! storage_err {
    ($($t:ty),*) => {$(
        impl From<$t> for BackendError {
            fn from(e: $t) -> Self { BackendError::Storage(e.to_string()) }
        }
    )*};
}
storage_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

const fn def(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

#[derive(Default)]
struct Buffers {
    pending: Buffer,
    committing: Option<Arc<Buffer>>,
}

pub struct Backend {
    path: PathBuf,
    /// The open file. Readers hold the lock only to begin a transaction
    /// (see `read.rs`); commits and the defragmentation's swap hold
    /// `commit_lock` as well.
    db: RwLock<Arc<Database>>,
    bufs: RwLock<Buffers>,
    /// Serialises commits, and the final swap of a defragmentation.
    commit_lock: Mutex<()>,
    /// One defragmentation (or snapshot install) at a time.
    defrag_lock: Mutex<()>,
    /// While a defragmentation runs: the batches committed since its copy began.
    journal: Mutex<Option<Vec<Arc<Buffer>>>>,
    cache_size: usize,
    batch_limit: usize,
    wake: (Mutex<bool>, Condvar),
    size: AtomicU64,
    size_in_use: AtomicU64,
    /// The bytes of the pending and committing buffers' puts, which the
    /// file does not hold yet (see [`Backend::size_with_buffered`]).
    buffered: AtomicU64,
    /// When a paced compaction's step is next committed durably.
    step_durable_due: Mutex<Option<Instant>>,
    /// When `size_in_use` is next counted (None: at once).
    in_use_due: Mutex<Option<Instant>>,
    /// Called with each batch before it is committed; it may wait (for the
    /// WAL to hold what the batch's entries applied) or refuse.
    gate: RwLock<Option<CommitGate>>,
}

/// See [`Backend::set_commit_gate`].
pub type CommitGate = Arc<dyn Fn(&Buffer) -> Result<(), BackendError> + Send + Sync>;

/// The start of the warning that redb is repairing the file: a stop
/// between the last commit that recorded redb's allocator state and the
/// file's close (commits record it since quick repair, see
/// [`begin_durable`]).
pub const REPAIRING: &str = "the backend file was not closed after its last commit";

/// How stale the bytes-in-use figure may get (Status, metrics), where
/// counting is cheap.
const IN_USE_REFRESH: Duration = Duration::from_secs(10);
/// At most this long between two durable steps of a paced compaction, as
/// between two batch commits (`--backend-batch-interval`'s default).
const STEP_DURABLE_EVERY: Duration = Duration::from_millis(100);
/// Counting the pages in use reads every page of the file (5-6 s at 8 GB
/// here), and its read transaction keeps the pages freed meanwhile from
/// reuse, so the counter waits this many times as long as the count took
/// before it counts again: 2% of the time at most. (Counted inside a commit
/// every 10 s, as it once was, an 8 GB backend's commits waited half the
/// time, and the writes applied meanwhile piled up in memory: 537,288 in
/// one batch, 2.3 GB of RSS.)
const IN_USE_SPACING: u32 = 50;

/// When to count the pages in use again, after a count that took `took`.
pub(crate) fn next_in_use_count(now: Instant, took: Duration) -> Instant {
    now + IN_USE_REFRESH.max(took * IN_USE_SPACING)
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("path", &self.path).finish()
    }
}

impl Backend {
    /// Opens (or creates) the redb file at `path`, with a page cache of
    /// `cache_size` bytes.
    pub fn open(path: &Path, batch_limit: usize, cache_size: usize) -> Result<Arc<Backend>, BackendError> {
        let open_err = |msg: String| BackendError::Open { path: path.to_path_buf(), msg };
        defrag::remove_leftover(path).map_err(|e| open_err(e.to_string()))?;
        let mut builder = Database::builder();
        builder.set_cache_size(cache_size).set_repair_callback(|session| {
            if session.progress() == 0.0 {
                warn!("{REPAIRING}: redb reads every page twice, to check it and to rebuild its allocator");
            }
        });
        let db = crate::powercut::create_database(&builder, path).map_err(|e| {
            open_err(format!(
                "{e} (the file is damaged or not a kvd backend; move it away and kvd rebuilds it from the WAL)"
            ))
        })?;
        let be = Backend {
            path: path.to_path_buf(),
            db: RwLock::new(Arc::new(db)),
            bufs: RwLock::new(Buffers::default()),
            commit_lock: Mutex::new(()),
            defrag_lock: Mutex::new(()),
            journal: Mutex::new(None),
            cache_size,
            batch_limit: batch_limit.max(1),
            wake: (Mutex::new(false), Condvar::new()),
            size: AtomicU64::new(0),
            size_in_use: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            step_durable_due: Mutex::new(None),
            in_use_due: Mutex::new(None),
            gate: RwLock::new(None),
        };
        // Sync the parent directory to persist a newly created file's entry.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| open_err(e.to_string()))?;
        }
        // Make sure every table exists so readers never see "table does not exist".
        {
            let db = be.db.read();
            let tx = begin_durable(&db)?;
            for t in Table::ALL {
                tx.open_table(def(t))?;
            }
            be.count_in_use_in(&tx)?;
            tx.commit()?;
        }
        be.refresh_size();
        Ok(Arc::new(be))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Buffers writes. Returns true when the batch limit is reached; the
    /// committer is woken then.
    pub fn write(&self, f: impl FnOnce(&mut Buffer)) {
        let full = {
            let mut b = self.bufs.write();
            f(&mut b.pending);
            self.note_buffered(&b);
            b.pending.ops() >= self.batch_limit
        };
        if full {
            self.wake();
        }
    }

    /// Records the bytes `b` holds for the file (under the `bufs` lock).
    fn note_buffered(&self, b: &Buffers) {
        let committing = b.committing.as_ref().map_or(0, |c| c.bytes());
        self.buffered.store(b.pending.bytes() + committing, Ordering::Relaxed);
    }

    fn wake(&self) {
        let (m, cv) = &self.wake;
        *m.lock() = true;
        cv.notify_one();
    }

    /// Makes every commit first pass its batch to `gate`.
    pub fn set_commit_gate(&self, gate: CommitGate) {
        *self.gate.write() = Some(gate);
    }

    /// Commits the pending buffer durably in one redb transaction.
    pub fn commit(&self) -> Result<(), BackendError> {
        let _g = self.commit_lock.lock();
        let batch = {
            let mut b = self.bufs.write();
            if b.pending.is_empty() {
                return Ok(());
            }
            let p = Arc::new(std::mem::take(&mut b.pending));
            b.committing = Some(p.clone());
            p
        };
        crate::failpoints::crash_point("backend_before_commit");
        let _span = info_span!("backend_commit", ops = batch.ops()).entered();
        let gate = self.gate.read().clone();
        let start = Instant::now();
        let res = gate.map_or(Ok(()), |g| g(&batch)).and_then(|()| self.write_batch(&batch));
        {
            let mut b = self.bufs.write();
            b.committing = None;
            if res.is_err() {
                // Nothing of the batch reached the file: put it back under the
                // writes made since, so a later commit cannot skip it.
                let newer = std::mem::take(&mut b.pending);
                let mut restored = (*batch).clone();
                restored.absorb(newer);
                b.pending = restored;
            }
            self.note_buffered(&b);
        }
        res?;
        if let Some(j) = self.journal.lock().as_mut() {
            j.push(batch.clone());
        }
        let took = start.elapsed();
        metrics::get().backend_commit.observe(took.as_secs_f64());
        if took > Duration::from_secs(1) {
            warn!(took_ms = took.as_millis() as u64, ops = batch.ops(), "slow backend commit");
        }
        Ok(())
    }

    /// Removes the committed rows of each of `tables` from `from` through
    /// `through` that `doomed` (in key order) names, in one transaction of
    /// its own: a paced compaction's step (the tables share their keys:
    /// `key` and `keyMeta`), one pass over each table's leaves
    /// ([`chunk::Writer::remove_named`]). Nothing buffered is touched: the
    /// rows are older than any write since the compaction's first commit. A
    /// defragmentation's journal gets the removals as a batch of deletes.
    pub fn remove_committed(
        &self,
        tables: &[Table],
        from: &[u8],
        through: &[u8],
        doomed: Vec<Vec<u8>>,
    ) -> Result<(), BackendError> {
        if doomed.is_empty() {
            return Ok(());
        }
        let g = self.commit_lock.lock();
        let start = Instant::now();
        // A defragmentation starts its journal under the commit lock.
        let journaled = self.journal.lock().is_some();
        let mut removed = Buffer::default();
        {
            let db = self.db.read();
            // A step's removals need not survive a crash (an unfinished
            // compaction runs again at start), and redb reuses the pages a
            // step frees once a later commit is durable: one step in
            // `STEP_DURABLE_EVERY` pays for the two fsyncs of a durable one.
            let mut due = self.step_durable_due.lock();
            let tx = if due.is_none_or(|t| Instant::now() >= t) {
                *due = Some(Instant::now() + STEP_DURABLE_EVERY);
                begin_durable(&db)?
            } else {
                let mut tx = db.begin_write()?;
                tx.set_durability(Durability::None)?;
                tx
            };
            drop(due);
            for &table in tables {
                chunk::Writer::open(&tx, table)?.remove_named(from, through, &doomed, |k| {
                    if journaled {
                        removed.delete(table, k.to_vec());
                    }
                })?;
            }
            tx.commit()?;
            self.refresh_size();
        }
        if let Some(j) = self.journal.lock().as_mut() {
            j.push(Arc::new(removed));
        }
        // The compactor's next step follows at once: the committer, if it
        // waits, goes first.
        parking_lot::MutexGuard::unlock_fair(g);
        metrics::get().backend_commit.observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Whether tables `a` and `b` hold the same number of committed rows
    /// under the same first and last keys: how the store checks that the
    /// derived `keyMeta` still matches `key` (a file written by a build
    /// that did not keep it adds, removes or copies `key` rows alone).
    pub fn same_keys(&self, a: Table, b: Table) -> Result<bool, BackendError> {
        use redb::{ReadableTable, ReadableTableMetadata};
        let read = self.begin_read()?;
        let (a, b) = (read.tx.open_table(def(a))?, read.tx.open_table(def(b))?);
        if a.len()? != b.len()? {
            return Ok(false);
        }
        type Row<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);
        let key = |row: Option<Row<'_>>| row.map(|(k, _)| k.value().to_vec());
        Ok(key(a.first()?) == key(b.first()?) && key(a.last()?) == key(b.last()?))
    }

    /// Writes `rows` (in key order) into table `t` in one durable
    /// transaction of its own, with nothing buffered: a derived table
    /// rebuilt at start, a step at a time. With `clear`, the table's rows
    /// are removed first, in the same transaction. Not journaled: no
    /// defragmentation runs before the store has opened.
    pub fn put_committed(&self, t: Table, clear: bool, rows: &[(Vec<u8>, Bytes)]) -> Result<(), BackendError> {
        let _g = self.commit_lock.lock();
        let db = self.db.read().clone();
        let tx = begin_durable(&db)?;
        {
            let mut table = chunk::Writer::open(&tx, t)?;
            if clear {
                table.clear()?;
            }
            for (k, v) in rows {
                table.insert(k, v)?;
            }
        }
        tx.commit()?;
        self.refresh_size();
        Ok(())
    }

    /// Stages the replacement of every table's whole content (a raft
    /// snapshot's install): `load` is called with an insert function for
    /// each record, then `extra` meta entries are written on top, all in one
    /// redb transaction that nobody sees until [`Replacement::commit`].
    /// Until then reads see the old content, and no commit or
    /// defragmentation runs.
    pub fn stage_replacement(
        &self,
        load: impl FnOnce(&mut dyn FnMut(Table, &[u8], &[u8])) -> Result<(), String>,
        extra: Vec<(Vec<u8>, Bytes)>,
    ) -> Result<Replacement<'_>, BackendError> {
        // A defragmentation's journal could not express "replace everything".
        let no_defrag = self.defrag_lock.lock();
        self.commit()?;
        let no_commit = self.commit_lock.lock();
        let db = self.db.read().clone();
        let tx = begin_durable(&db)?;
        {
            // Indexed by table code; `key` writes its chunks' table too.
            let mut tables = Vec::new();
            for t in Table::ALL {
                if t != Table::KeyChunk {
                    let mut table = chunk::Writer::open(&tx, t)?;
                    table.clear()?;
                    tables.push(table);
                }
            }
            let mut failed = None;
            let mut insert = |t: Table, k: &[u8], v: &[u8]| {
                if failed.is_none()
                    && let Some(table) = tables.get_mut(t as usize)
                    && let Err(e) = table.insert(k, v)
                {
                    failed = Some(e);
                }
            };
            load(&mut insert).map_err(BackendError::Storage)?;
            for (k, v) in &extra {
                insert(Table::Meta, k, v);
            }
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        self.count_in_use_in(&tx)?;
        crate::failpoints::crash_point("snapshot_install_mid");
        Ok(Replacement { be: self, tx, _db: db, _no_commit: no_commit, _no_defrag: no_defrag })
    }

    /// Writes one batch in one durable redb transaction.
    fn write_batch(&self, batch: &Buffer) -> Result<(), BackendError> {
        let db = self.db.read();
        // One commit covers the batch and its consistent index.
        let tx = begin_durable(&db)?;
        put_batch(&tx, batch)?;
        tx.commit()?;
        self.refresh_size();
        Ok(())
    }

    /// Counts the bytes in use as `tx` leaves them, now (after an open or a
    /// snapshot's install; [`Backend::run_committer`]'s counter otherwise
    /// counts now and then, off the commit path: counting reads every page).
    fn count_in_use_in(&self, tx: &redb::WriteTransaction) -> Result<(), BackendError> {
        let start = Instant::now();
        self.size_in_use.store(bytes_in_use(tx)?, Ordering::Relaxed);
        *self.in_use_due.lock() = Some(next_in_use_count(Instant::now(), start.elapsed()));
        Ok(())
    }

    /// Refreshes the size from the file, after a commit: the quota is
    /// checked against it, so it includes what the commit just wrote.
    fn refresh_size(&self) {
        let in_use = self.size_in_use();
        let size = allocated_bytes(&self.path).unwrap_or(in_use);
        self.size.store(size.max(in_use), Ordering::Relaxed);
    }

    /// Runs the batch committer until `stop` is set. Fatal errors go to `on_fatal`.
    pub fn run_committer(self: &Arc<Self>, interval: Duration, on_fatal: impl Fn(BackendError) + Send + 'static) {
        let be = self.clone();
        std::thread::Builder::new()
            .name("kvd-backend-commit".into())
            .spawn(move || {
                loop {
                    {
                        let (m, cv) = &be.wake;
                        let mut woken = m.lock();
                        if !*woken {
                            cv.wait_for(&mut woken, interval);
                        }
                        *woken = false;
                    }
                    if Arc::strong_count(&be) == 1 {
                        return;
                    }
                    if let Err(e) = be.commit() {
                        on_fatal(e);
                        return;
                    }
                }
            })
            .expect("spawning the backend committer thread");
        self.run_in_use_counter();
    }

    /// Counts the bytes in use when due ([`next_in_use_count`]), in a read
    /// transaction of its own, so that commits go on meanwhile. Ends with
    /// the backend.
    fn run_in_use_counter(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kvd-backend-use".into())
            .spawn(move || {
                loop {
                    let Some(be) = weak.upgrade() else { return };
                    if be.in_use_due.lock().is_none_or(|t| Instant::now() >= t)
                        && let Err(e) = be.recount_in_use()
                    {
                        warn!(error = %e, "counting the backend's bytes in use");
                    }
                    drop(be);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
            .expect("spawning the backend's bytes-in-use counter");
    }

    /// Counts the bytes in use now, in a read transaction of its own (commits
    /// go on), and sets the next count's time. Called by the counter when
    /// due, and at the end of a compaction, whose freed pages Status and the
    /// defragmentation's threshold then see at once, as etcd's do.
    pub fn recount_in_use(&self) -> Result<(), BackendError> {
        let start = Instant::now();
        let counted = self.count_in_use();
        *self.in_use_due.lock() = Some(next_in_use_count(Instant::now(), start.elapsed()));
        let n = counted?;
        self.size_in_use.store(n, Ordering::Relaxed);
        self.size.fetch_max(n, Ordering::Relaxed);
        Ok(())
    }

    /// The bytes of the pages every table holds, from one read transaction.
    fn count_in_use(&self) -> Result<u64, BackendError> {
        use redb::{ReadableTableMetadata, TableError};
        let read = self.begin_read()?;
        let mut bytes = 0;
        for t in Table::ALL {
            let table = match read.tx.open_table(def(t)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let st = table.stats()?;
            bytes += st.stored_bytes() + st.metadata_bytes() + st.fragmented_bytes();
        }
        Ok(bytes)
    }

    /// Size of the backend file in bytes: what it holds, see [`allocated_bytes`].
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// [`size`](Self::size) and the keys and values applied but not yet
    /// committed: what the quota is checked against. A commit can take
    /// seconds (large values, a slow disk) while writes are applied into
    /// the next batch; measured by the file alone, a 64 MiB quota let 143 MB
    /// of 64 KiB values in (`tests/quota.rs`). The pages redb adds around
    /// them count once they are committed.
    pub fn size_with_buffered(&self) -> u64 {
        self.size().saturating_add(self.buffered.load(Ordering::Relaxed))
    }

    /// Bytes of the file in use (the rest is free pages that defrag reclaims).
    pub fn size_in_use(&self) -> u64 {
        self.size_in_use.load(Ordering::Relaxed)
    }
}

/// A staged replacement of the backend's whole content
/// ([`Backend::stage_replacement`]); dropped without a commit, it leaves the
/// old content as it was.
pub struct Replacement<'a> {
    be: &'a Backend,
    tx: redb::WriteTransaction,
    _db: Arc<Database>,
    _no_commit: parking_lot::MutexGuard<'a, ()>,
    _no_defrag: parking_lot::MutexGuard<'a, ()>,
}

impl Replacement<'_> {
    /// Makes the new content durable and visible, in one atomic commit: the
    /// old content and the new one never mix. Writes buffered since the
    /// replacement was staged belong to the old content and are dropped.
    pub fn commit(self) -> Result<(), BackendError> {
        let mut bufs = self.be.bufs.write();
        self.tx.commit()?;
        let stale = std::mem::take(&mut bufs.pending);
        self.be.note_buffered(&bufs);
        drop(bufs);
        self.be.refresh_size();
        if !stale.is_empty() {
            tracing::info!(ops = stale.ops(), "dropped writes to the content a snapshot replaced");
        }
        Ok(())
    }
}

/// A write transaction whose commit is durable (one fsync) and records
/// redb's allocator state (quick repair, which commits in two phases): a
/// start after a crash then loads that state instead of repairing the file,
/// two walks of every page (checksums, then the allocator): at 8 GB, most
/// of the time to serve again after a kill -9 (BENCHMARKS.md, session 27).
fn begin_durable(db: &Database) -> Result<redb::WriteTransaction, BackendError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.set_quick_repair(true);
    Ok(tx)
}

/// The bytes of the backend file that hold data: its length less the holes
/// of a sparse file. redb grows a file by doubling its length (up to 4 GiB
/// at a time) and writes only the pages it allocates, so the length can be
/// twice the data (a defragmentation that ran redb's `compact` on its new
/// file left a full file, whose next commit doubled it again). etcd's
/// dbSize, which the quota is checked against, is bbolt's high-water mark:
/// the bytes written. Measured by the length, kvd
/// refused every write under etcd's default quota of 2 GiB with 1.46 GB in
/// use, in a 2.28 GB file holding 1.4 GB (etcd keeps that data in 1.39 GB;
/// `tests/quota.rs`). Pages freed inside the file still count, as bbolt's
/// free pages do. A filesystem that reports no blocks gives the length.
pub(crate) fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    let blocks = m.blocks().saturating_mul(512);
    Ok(if blocks == 0 { m.len() } else { m.len().min(blocks) })
}

/// Bytes of the file's allocated pages. Walks every page of every table.
fn bytes_in_use(tx: &redb::WriteTransaction) -> Result<u64, BackendError> {
    let stats = tx.stats()?;
    Ok(stats.allocated_pages() * stats.page_size() as u64)
}

/// Writes a batch's puts and deletes into `tx`.
fn put_batch(tx: &redb::WriteTransaction, batch: &Buffer) -> Result<(), BackendError> {
    for (t, entries) in batch.tables() {
        let mut table = chunk::Writer::open(tx, t)?;
        for (k, v) in entries {
            match v {
                Some(v) => table.insert(k, v)?,
                None => table.remove(k)?,
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod in_use_tests {
    use super::*;

    #[test]
    fn counting_the_pages_in_use_takes_at_most_a_fiftieth_of_the_time() {
        let now = Instant::now();
        // Cheap counts (a small file) are as fresh as before.
        assert_eq!(next_in_use_count(now, Duration::from_millis(3)), now + IN_USE_REFRESH);
        // An 8 GB file's 5.4 s count waits 270 s, not 10 s.
        assert_eq!(next_in_use_count(now, Duration::from_millis(5400)), now + Duration::from_secs(270));
        for ms in [1, 150, 200, 201, 900, 6000] {
            let took = Duration::from_millis(ms);
            let gap = next_in_use_count(now, took) - now;
            assert!(gap >= IN_USE_REFRESH && took * 50 <= gap, "{ms} ms -> {gap:?}");
        }
    }
}

/// Long `key` rows through the backend's every write: commits, a paced
/// compaction's removals, a snapshot's install and a defragmentation.
#[cfg(test)]
mod chunk_tests {
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;

    fn long(seed: u8, len: usize) -> Bytes {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect::<Vec<u8>>().into()
    }

    fn chunks_stored(be: &Backend) -> u64 {
        let read = be.begin_read().unwrap();
        read.tx.open_table(def(Table::KeyChunk)).unwrap().len().unwrap()
    }

    fn key(i: u8) -> Vec<u8> {
        vec![0, 0, 0, 0, 0, 0, 0, i]
    }

    /// Every read (point, buffered range, committed scan, snapshot scan)
    /// sees whole rows; compaction's removals and deletes leave no chunk.
    #[test]
    fn long_rows_read_whole_and_leave_no_chunks_behind() {
        let dir = tempfile::tempdir().unwrap();
        let be = Backend::open(&dir.path().join("db.redb"), 100, 1 << 20).unwrap();
        let rows: Vec<_> = (1..=4).map(|i| (key(i), long(i, usize::from(i) * 9000))).collect();
        be.write(|b| rows.iter().for_each(|(k, v)| b.put(Table::Key, k.clone(), v.clone())));
        be.commit().unwrap();
        // 9,000 B: 2 chunks of a page; 18,000: 1 of 4 pages; 27,000: 1 and
        // 2; 36,000: 2 of 4 pages.
        assert_eq!(chunks_stored(&be), 2 + 1 + 3 + 2);
        for (k, v) in &rows {
            assert_eq!(be.get(Table::Key, k).unwrap().as_ref(), Some(v));
        }
        assert_eq!(be.scan(Table::Key, &key(0), &key(9)).unwrap(), rows);
        let mut scanned = Vec::new();
        be.scan_all_committed(|t, k, v| {
            if t == Table::Key {
                scanned.push((k.to_vec(), Bytes::copy_from_slice(v)));
            }
            true
        })
        .unwrap();
        assert_eq!(scanned, rows);
        be.remove_committed(&[Table::Key], &key(1), &key(3), vec![key(1), key(3)]).unwrap();
        assert_eq!(chunks_stored(&be), 1 + 2);
        assert_eq!(be.get(Table::Key, &key(2)).unwrap().as_ref(), Some(&rows[1].1));
        be.write(|b| b.delete(Table::Key, key(4)));
        be.commit().unwrap();
        assert_eq!(chunks_stored(&be), 1);
        be.write(|b| b.put(Table::Key, key(2), Bytes::from_static(b"\x0ashort")));
        be.commit().unwrap();
        assert_eq!(chunks_stored(&be), 0);
    }

    /// A snapshot's install replaces the chunks with the new rows' own.
    #[test]
    fn an_install_replaces_the_chunks_too() {
        let dir = tempfile::tempdir().unwrap();
        let be = Backend::open(&dir.path().join("db.redb"), 100, 1 << 20).unwrap();
        be.write(|b| b.put(Table::Key, key(1), long(1, 50_000)));
        be.commit().unwrap();
        let new = long(2, 20_000);
        let staged = be
            .stage_replacement(
                |insert| {
                    insert(Table::Key, &key(5), &new);
                    Ok(())
                },
                Vec::new(),
            )
            .unwrap();
        staged.commit().unwrap();
        assert_eq!(chunks_stored(&be), 1);
        assert_eq!(be.get(Table::Key, &key(1)).unwrap(), None);
        assert_eq!(be.get(Table::Key, &key(5)).unwrap(), Some(new));
    }

    /// A long row that a build before chunks stored whole reads back as it
    /// is, and a defragmentation stores it cut, at least a fifth smaller.
    #[test]
    fn a_long_row_stored_whole_reads_back_and_a_defragmentation_cuts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let rows: Vec<_> = (1..=50).map(|i| (key(i), long(i, 9000))).collect();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(def(Table::Key)).unwrap();
                for (k, v) in &rows {
                    t.insert(k.as_slice(), v.as_ref()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        assert_eq!(be.scan(Table::Key, &key(0), &key(99)).unwrap(), rows);
        assert_eq!(chunks_stored(&be), 0);
        let before = be.size_in_use();
        be.defrag().unwrap();
        assert_eq!(chunks_stored(&be), 100);
        assert_eq!(be.scan(Table::Key, &key(0), &key(99)).unwrap(), rows);
        let after = be.size_in_use();
        assert!(after * 100 < before * 80, "in use: {before} bytes stored whole, {after} cut");
        drop(be);
        let db = Database::open(&path).unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(read.open_table(def(Table::KeyChunk)).unwrap().len().unwrap(), 100);
    }

    /// Long rows stored whole by a build before chunks, between rows
    /// already cut: the copy cuts them while it appends the `key` table, so
    /// the chunks it then copies as they are land before theirs, not at the
    /// table's end. Every row reads back, with all its chunks and no others.
    #[test]
    fn a_defragmentation_mixes_rows_it_cuts_with_rows_cut_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let rows: Vec<_> = (1..=40).map(|i| (key(i), long(i, 9000 + usize::from(i) * 500))).collect();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut cut = chunk::KeyRows::open(&tx).unwrap();
                for (k, v) in rows.iter().filter(|(k, _)| k[7] % 4 != 0) {
                    cut.insert(k, v).unwrap();
                }
                drop(cut);
                let mut whole = tx.open_table(def(Table::Key)).unwrap();
                for (k, v) in rows.iter().filter(|(k, _)| k[7] % 4 == 0) {
                    whole.insert(k.as_slice(), v.as_ref()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        let before = chunks_stored(&be);
        be.defrag().unwrap();
        assert_eq!(be.scan(Table::Key, &key(0), &key(99)).unwrap(), rows);
        let expected: u64 = rows.iter().map(|(_, v)| chunk::cut(v).map_or(0, |(_, p)| p.len() as u64)).sum();
        assert!(before < expected, "{before} chunks before, all {expected} after");
        assert_eq!(chunks_stored(&be), expected);
        drop(be);
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        assert_eq!(be.scan(Table::Key, &key(0), &key(99)).unwrap(), rows);
    }
}
