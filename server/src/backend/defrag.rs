//! Online defragmentation: the backend is rewritten into a new file while
//! reads and writes go on, and only the final swap pauses anything.
//!
//! 1. Under the commit lock (so no batch is half-written), start a journal of
//!    committed batches and open a redb read transaction: a frozen view of the
//!    file as of the last commit.
//! 2. Append every table of that view to `<file>.defrag`, 4 MiB per durable
//!    transaction. Applies and commits to the live file go on; each committed
//!    batch is also kept in the journal.
//! 3. Replay the journal into the new file, round after round, while it
//!    keeps growing, until a round finds almost nothing new; commit durably.
//! 4. Under the commit lock (the committer waits; applies and reads do not),
//!    replay the rest, commit durably, fsync, rename over the live file, fsync
//!    the directory, and swap the open database. Readers wait only for the
//!    swap itself.
//!
//! Crash safety: until the rename, the live file is untouched and a leftover
//! `<file>.defrag` is deleted when the backend opens. After the rename, the new
//! file holds every committed batch and its consistent index.

use std::borrow::Cow;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{
    CursorError, Database, Durability, Range as RedbRange, ReadTransaction, ReadableDatabase, WriteTransaction,
};
use tracing::{info, warn};

use super::{Backend, BackendError, Buffer, IN_USE_REFRESH, Table, def};
use crate::metrics;

/// Bytes copied per write transaction. Each copy transaction is durable: redb
/// reuses the pages a transaction frees only after a durable commit, and the
/// final commit then has little left to flush (copied without durable
/// commits, 1.4 GB under load held up puts for up to 361 ms, and the WAL's
/// fsyncs past 64 ms). 4 MiB, not 32: a transaction's pages then fit in the
/// write buffer (half of a 16 MiB cache) and each fsync writes less. Under
/// load, 1.4 GB copied in 10.9 s (median of 5 runs) against 15.7 (of 7),
/// the longest put 79 ms (median) against 96; unloaded, the same time.
const COPY_CHUNK_BYTES: usize = 4 << 20;
/// A catch-up round that finds at most this many batches ends the rounds.
const FEW_BATCHES: usize = 2;

/// Where the new file is built.
pub(super) fn defrag_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".defrag");
    PathBuf::from(p)
}

/// Removes the unfinished file of a defragmentation that a crash interrupted.
pub(super) fn remove_leftover(path: &Path) -> std::io::Result<()> {
    let tmp = defrag_path(path);
    if tmp.exists() {
        warn!(file = %tmp.display(), "removing the unfinished file of an interrupted defragmentation");
        std::fs::remove_file(&tmp)?;
    }
    Ok(())
}

/// How long each step of a defragmentation took, for its log line.
#[derive(Default)]
struct Phases {
    copy: Duration,
    catch_up: Duration,
}

/// A defragmentation between its steps.
struct Rewrite {
    view: Option<ReadTransaction>,
    new: Database,
    tmp: PathBuf,
}

impl Backend {
    /// Rewrites the file without free pages while reads and writes go on.
    pub fn defrag(&self) -> Result<(), BackendError> {
        let _one = self.defrag_lock.lock();
        let start = Instant::now();
        let before = self.size();
        let mut took = Phases::default();
        let res = self.defrag_begin().and_then(|mut rw| {
            copy(&mut rw, &mut took)?;
            crate::failpoints::crash_point("defrag_mid_copy");
            let t = Instant::now();
            self.defrag_catch_up(&rw)?;
            took.catch_up = t.elapsed();
            self.defrag_finish(rw)
        });
        // Whatever happened, commits stop feeding the journal.
        *self.journal.lock() = None;
        if res.is_err() {
            let _ = std::fs::remove_file(defrag_path(&self.path));
        }
        let pause = res?;
        let after = self.size();
        metrics::get().backend_defrag.observe(start.elapsed().as_secs_f64());
        info!(
            before,
            after,
            took_ms = start.elapsed().as_millis() as u64,
            pause_us = pause.as_micros() as u64,
            copy_ms = took.copy.as_millis() as u64,
            catch_up_ms = took.catch_up.as_millis() as u64,
            "defragmented backend"
        );
        Ok(())
    }

    /// Step 1: the journal starts and the frozen view opens at one commit
    /// boundary; the new file is created.
    fn defrag_begin(&self) -> Result<Rewrite, BackendError> {
        let tmp = defrag_path(&self.path);
        remove_leftover(&self.path).map_err(|e| BackendError::Storage(format!("defrag: {e}")))?;
        let new = crate::powercut::create_database(Database::builder().set_cache_size(self.cache_size), &tmp)
            .map_err(|e| BackendError::Storage(format!("defrag: {}: {e}", tmp.display())))?;
        let _g = self.commit_lock.lock();
        *self.journal.lock() = Some(Vec::new());
        let view = self.db.read().begin_read()?;
        Ok(Rewrite { view: Some(view), new, tmp })
    }

    /// Step 3: replays journaled batches until a round finds almost nothing,
    /// then makes the new file durable so far (outside the pause).
    fn defrag_catch_up(&self, rw: &Rewrite) -> Result<(), BackendError> {
        loop {
            let batches = std::mem::take(self.journal.lock().get_or_insert_default());
            for b in &batches {
                write_to(&rw.new, b)?;
            }
            if batches.len() <= FEW_BATCHES {
                break;
            }
        }
        commit_durable(&rw.new)
    }

    /// Step 4: the last replay, a durable commit, the rename and the swap,
    /// with the committer paused. Returns the pause.
    fn defrag_finish(&self, rw: Rewrite) -> Result<Duration, BackendError> {
        let Rewrite { new, tmp, .. } = rw;
        let io = |e: std::io::Error| BackendError::Storage(format!("defrag: {e}"));
        let g = self.commit_lock.lock();
        let paused = Instant::now();
        for b in &self.journal.lock().take().unwrap_or_default() {
            write_to(&new, b)?;
        }
        // One durable commit covers everything written to the new file.
        commit_durable(&new)?;
        // The new file holds the pages in use and those its own commits
        // freed (a few unloaded: 1,456,222,208 bytes on disk against a
        // count of 1,456,181,248 at 1M revisions; more after a long
        // catch-up), so its bytes on disk stand for the bytes in use.
        // Counting them walks every page (0.6-1.0 s per 1.4 GB, 5 s at
        // 8 GB); the periodic count refines this figure in `IN_USE_REFRESH`.
        let in_use = super::allocated_bytes(&tmp).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        crate::failpoints::crash_point("defrag_after_rename");
        // From the rename on, commits must go to the new file: swap first,
        // then make the rename durable.
        let old = std::mem::replace(&mut *self.db.write(), std::sync::Arc::new(new));
        let synced = match self.path.parent() {
            Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io),
            None => Ok(()),
        };
        self.size_in_use.store(in_use, Ordering::Relaxed);
        *self.in_use_due.lock() = Some(Instant::now() + IN_USE_REFRESH);
        self.refresh_size();
        drop(g);
        let pause = paused.elapsed();
        // Closing the old database writes to its (now unlinked) file: no
        // lock held. A read still going on in it closes it when done.
        drop(old);
        synced?;
        Ok(pause)
    }
}

/// Step 2: copies the frozen view into the new file. The copy is as small as
/// redb's `compact` makes it: that call (once two) took 1.8-2.7 s of a 1.4 GB
/// defragmentation's 8-10 s, and left the same blocks on disk (1,422,324 KiB
/// with it, 1,422,348 without), in a file twice as long (sparse: 2.91 GB
/// against 2.28), as its last commit then doubled the length.
fn copy(rw: &mut Rewrite, took: &mut Phases) -> Result<(), BackendError> {
    let t = Instant::now();
    if let Some(view) = rw.view.take() {
        copy_all(&view, &rw.new)?;
    }
    took.copy = t.elapsed();
    Ok(())
}

/// Copies every table of `view` into `new`, `COPY_CHUNK_BYTES` per
/// transaction. Rows and chunks are copied as they are stored, but a long
/// `key` row stored whole (by a build before chunks) is cut.
fn copy_all(view: &ReadTransaction, new: &Database) -> Result<(), BackendError> {
    for t in Table::ALL {
        let src = view.open_table(def(t))?;
        let mut rows = src.range::<&[u8]>(..)?;
        loop {
            let tx = new.begin_write()?;
            let more = append(&tx, t, &mut rows)?;
            tx.commit()?;
            if !more {
                break;
            }
        }
    }
    Ok(())
}

/// Appends the next `COPY_CHUNK_BYTES` of `rows` (in key order) to table `t`
/// of `tx`; returns whether rows are left. The rows go in through a cursor
/// at the table's end, which packs them into full leaves and updates the
/// branches once per megabyte, not once per row: unloaded, 1.4 GB took
/// 2.3 s of user CPU instead of 3.1-4.1 (one descent from the root per row).
fn append(tx: &WriteTransaction, t: Table, rows: &mut RedbRange<'_, &[u8], &[u8]>) -> Result<bool, BackendError> {
    let mut dst = tx.open_table(def(t))?;
    let mut chunks = if t == Table::Key { Some(tx.open_table(def(Table::KeyChunk))?) } else { None };
    let mut bytes = 0;
    loop {
        let mut end = dst.upper_bound_mut(Bound::<&[u8]>::Unbounded)?;
        let mut behind = None;
        for item in rows.by_ref() {
            let (k, v) = item?;
            let (k, stored) = (k.value(), v.value());
            bytes += k.len() + stored.len();
            let v = match chunks.as_mut() {
                Some(chunks) => super::chunk::recut(chunks, k, stored)?,
                None => Cow::Borrowed(stored),
            };
            match end.insert_before(k, v.as_ref()) {
                Ok(()) => {}
                // A chunk copied as it is can sort before the chunks of a
                // row that this copy cut (a build before chunks stored it
                // whole), which are in the table already: put it in place.
                Err(CursorError::UnorderedKey) => {
                    behind = Some((k.to_vec(), v.into_owned()));
                    break;
                }
                Err(e) => return Err(BackendError::Storage(e.to_string())),
            }
            if bytes >= COPY_CHUNK_BYTES {
                end.close()?;
                return Ok(true);
            }
        }
        end.close()?;
        let Some((k, v)) = behind else { return Ok(false) };
        dst.insert(k.as_slice(), v.as_slice())?;
    }
}

/// An empty durable commit: makes every earlier non-durable commit of `db`
/// durable in one commit (two-phase, see [`super::begin_durable`]).
fn commit_durable(db: &Database) -> Result<(), BackendError> {
    super::begin_durable(db)?.commit()?;
    Ok(())
}

/// Writes one journaled batch into `db`, not yet durably.
fn write_to(db: &Database, batch: &Arc<Buffer>) -> Result<(), BackendError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    super::put_batch(&tx, batch)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn put(be: &Backend, k: &str, v: &str) {
        be.write(|b| b.put(Table::Key, k.as_bytes().to_vec(), Bytes::from(v.to_string())));
        be.commit().unwrap();
    }

    fn get(be: &Backend, k: &str) -> Option<String> {
        be.get(Table::Key, k.as_bytes()).unwrap().map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    /// Commits that land before the copy, during it, and in the last window
    /// before the pause all reach the new file, and it is the file on disk.
    #[test]
    fn every_commit_since_the_view_reaches_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        put(&be, "before", "1");
        put(&be, "gone", "x");
        let mut rw = be.defrag_begin().unwrap();
        put(&be, "during-copy", "2");
        be.write(|b| b.delete(Table::Key, b"gone".to_vec()));
        be.commit().unwrap();
        copy(&mut rw, &mut Phases::default()).unwrap();
        be.defrag_catch_up(&rw).unwrap();
        put(&be, "last-window", "3");
        put(&be, "before", "4");
        be.defrag_finish(rw).unwrap();
        *be.journal.lock() = None;
        put(&be, "after", "5");
        assert!(!defrag_path(&path).exists());
        for (k, v) in [("before", Some("4")), ("gone", None), ("during-copy", Some("2")), ("last-window", Some("3"))] {
            assert_eq!(get(&be, k).as_deref(), v, "{k}");
        }
        drop(be);
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        for (k, v) in [("before", Some("4")), ("gone", None), ("last-window", Some("3")), ("after", Some("5"))] {
            assert_eq!(get(&be, k).as_deref(), v, "{k} after reopening");
        }
    }

    /// A compaction step's removals take only the named rows within its
    /// range, and reach a defragmentation's new file when they land while
    /// it copies.
    #[test]
    fn removals_of_committed_rows_reach_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        for k in ["a", "b", "c", "d", "e"] {
            put(&be, k, k);
        }
        let mut rw = be.defrag_begin().unwrap();
        // "e" is named but beyond the range; "x" is named and not there.
        let doomed = ["b", "d", "e", "x"].map(|k| k.as_bytes().to_vec()).to_vec();
        be.remove_committed(&[Table::Key], b"a", b"d", doomed).unwrap();
        for (k, v) in [("a", Some("a")), ("b", None), ("c", Some("c")), ("d", None), ("e", Some("e"))] {
            assert_eq!(get(&be, k).as_deref(), v, "{k}");
        }
        copy(&mut rw, &mut Phases::default()).unwrap();
        be.defrag_catch_up(&rw).unwrap();
        be.defrag_finish(rw).unwrap();
        *be.journal.lock() = None;
        drop(be);
        let be = Backend::open(&path, 100, 1 << 20).unwrap();
        for (k, v) in [("a", Some("a")), ("b", None), ("c", Some("c")), ("d", None), ("e", Some("e"))] {
            assert_eq!(get(&be, k).as_deref(), v, "{k} after the defragmentation and reopening");
        }
    }
}
