//! The write-ahead log, in etcd's style.
//!
//! - Segments live in `<data-dir>/member/wal` as `%016x-%016x.wal` (sequence,
//!   first index), each preallocated to 64,000,000 bytes ([`segment`]).
//! - Records are typed (metadata, entry, state, crc, snapshot, truncate,
//!   commit), length-prefixed, 8-byte aligned and CRC32-Castagnoli chained across
//!   records and segments ([`record`]).
//! - One writer thread does group commit: whatever is queued while an fdatasync
//!   runs goes out in the next single write + fdatasync ([`writer`]).
//! - At start every segment is decoded and the chain verified ([`replay`]). A torn
//!   tail in the last segment is cut off (the damaged file is kept as
//!   `*.wal.broken`); damage anywhere else stops kvd with the file and offset.
//!
//! Durability contract: an append's `done` callback runs with `Ok` only after the
//! fdatasync that covers its records returned successfully. After any IO error
//! the WAL fails every later append: a failed fsync is never retried.

mod queue;
pub mod record;
pub mod replay;
pub mod segment;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use bytes::Bytes;

pub use queue::DEFAULT_POLL;
pub use record::{Metadata, Record};
pub use replay::Replay;
pub use writer::Done;

use queue::OpQueue;
use record::Encoder;
use segment::SegmentName;
use writer::{Op, Writer};

/// Errors of the WAL layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("wal: io error on {file}: {msg}")]
    Io { file: PathBuf, msg: String },
    #[error("wal: corrupt log in {file} at offset {offset}: {reason}")]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error(
        "wal: data dir belongs to member {found_member:x} of cluster {found_cluster:x}, not member {member:x} of cluster {cluster:x} (a member that joined a running cluster restarts with --initial-cluster-state existing)"
    )]
    ClusterMismatch { found_member: u64, found_cluster: u64, member: u64, cluster: u64 },
    #[error("wal: failed earlier and refuses writes: {0}")]
    Failed(String),
    #[error("wal: closed")]
    Closed,
}

impl WalError {
    pub(crate) fn io(file: &Path, e: std::io::Error) -> Self {
        WalError::Io { file: file.to_path_buf(), msg: e.to_string() }
    }
}

/// Handle to the WAL; cloning shares the single writer thread.
#[derive(Clone)]
pub struct Wal {
    tx: Arc<Sender>,
}

/// The writer's queue, closed when the last handle goes (the writer then
/// writes what is queued and stops).
struct Sender(Arc<OpQueue<Op>>);

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Wal {
    /// Opens the WAL in `dir`, creating it when there are no segments yet.
    /// Refuses a WAL that belongs to another member or cluster.
    pub fn open(dir: &Path, meta: Metadata) -> Result<(Wal, Replay), WalError> {
        Self::open_with(dir, meta, segment::real_file)
    }

    /// [`open`](Self::open), with every segment file wrapped by `hook` (tests
    /// use it to lose unsynced writes).
    pub fn open_with(dir: &Path, meta: Metadata, hook: segment::OpenHook) -> Result<(Wal, Replay), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        // Persist the directory entries of a newly made WAL dir and its parents.
        for d in dir.ancestors().skip(1).take(2) {
            segment::sync_dir(d).map_err(|e| WalError::io(d, e))?;
        }
        remove_stale_tmp(dir)?;
        let has_segments = !segment::list_segments(dir).map_err(|e| WalError::io(dir, e))?.is_empty();
        let (writer, replay) = if has_segments {
            let (replay, tail) = replay::replay(dir)?;
            let found = replay.metadata.expect("replay requires metadata");
            if found != meta {
                return Err(WalError::ClusterMismatch {
                    found_member: found.node_id,
                    found_cluster: found.cluster_id,
                    member: meta.node_id,
                    cluster: meta.cluster_id,
                });
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&tail.path)
                .map_err(|e| WalError::io(&tail.path, e))?;
            let last_index = replay.entries.back().map(|(i, _)| *i).or(replay.snapshot.as_ref().map(|s| s.0));
            let segments =
                segment::list_segments(dir).map_err(|e| WalError::io(dir, e))?.into_iter().map(|s| s.0).collect();
            let w = Writer {
                segments,
                dir: dir.to_path_buf(),
                meta,
                file: hook(file),
                hook,
                name: tail.name,
                offset: tail.offset,
                zeroed: tail.offset,
                enc: Encoder::new(tail.crc),
                last_index: last_index.unwrap_or(0),
                last_state: replay.state.clone().map(Record::State),
                last_commit: replay.commit.clone().map(Record::Commit),
                unsynced: false,
                failed: None,
                pipeline: segment::Pipeline::start(dir),
            };
            (w, replay)
        } else {
            let name = SegmentName { seq: 0, index: 0 };
            let mut enc = Encoder::new(0);
            let mut head = Vec::new();
            enc.encode(&Record::Crc(0), &mut head);
            enc.encode(&Record::Metadata(meta), &mut head);
            let file = segment::create_segment(dir, name, &head).map_err(|e| WalError::io(dir, e))?;
            let w = Writer {
                segments: vec![name],
                dir: dir.to_path_buf(),
                meta,
                file: hook(file),
                hook,
                name,
                offset: head.len() as u64,
                zeroed: head.len() as u64,
                enc,
                last_index: 0,
                last_state: None,
                last_commit: None,
                unsynced: false,
                failed: None,
                pipeline: segment::Pipeline::start(dir),
            };
            let replay = Replay { metadata: Some(meta), ..Default::default() };
            (w, replay)
        };
        let queue = Arc::new(OpQueue::new());
        let rx = queue.clone();
        std::thread::Builder::new()
            .name("kvd-wal".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| WalError::io(dir, e))?;
        Ok((Wal { tx: Arc::new(Sender(queue)) }, replay))
    }

    /// The longest the writer polls for work before it sleeps (zero: never;
    /// on a single CPU it never does; see `queue.rs`).
    pub fn set_poll(&self, limit: std::time::Duration) {
        self.tx.0.set_poll(limit);
    }

    /// Appends `records`; `done` runs once they are durable.
    pub fn append(&self, records: Vec<Record>, done: Done) {
        if let Err(Op::Append { done: Some(d), .. }) = self.tx.0.push(Op::Append { records, done: Some(done) }) {
            d(Err(WalError::Closed));
        }
    }

    /// Appends `records` and waits until they are durable.
    pub async fn append_sync(&self, records: Vec<Record>) -> Result<(), WalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.append(
            records,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// Appends `records` in order with everything else, without waiting and
    /// without waking the writer: they are written with the next append that
    /// waits (or within [`writer::LAZY_IDLE`] without one) and become durable
    /// with the next fdatasync.
    pub fn append_lazy(&self, records: Vec<Record>) {
        let _ = self.tx.0.push_lazy(Op::Append { records, done: None });
    }

    /// Durably records that entries at or below `upto` are gone (`marker` is
    /// the Snapshot record), then deletes the segments holding only such entries.
    pub async fn purge(&self, upto: u64, data: Bytes) -> Result<(), WalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let marker = Record::Snapshot { index: upto, data };
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        if let Err(Op::Purge { done, .. }) = self.tx.0.push(Op::Purge { upto, marker, done }) {
            done(Err(WalError::Closed));
        }
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// Flushes and stops the writer thread.
    pub fn close(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.0.push(Op::Close(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// The identity recorded in an existing WAL (None when there is no WAL yet).
pub fn read_metadata(dir: &Path) -> Result<Option<Metadata>, WalError> {
    if !dir.exists() {
        return Ok(None);
    }
    let segs = segment::list_segments(dir).map_err(|e| WalError::io(dir, e))?;
    let Some((_, path)) = segs.first() else { return Ok(None) };
    let buf = std::fs::read(path).map_err(|e| WalError::io(path, e))?;
    // The head of a segment: a crc record (carrying the chain's seed), then metadata.
    let mut dec = record::Decoder::new(&buf, replay::peek_crc_record(&buf).unwrap_or(0));
    let mut off = 0;
    while let Ok(record::Decoded::Record(rec, next)) = dec.decode_at(off) {
        match rec {
            Record::Crc(_) => off = next,
            Record::Metadata(m) => return Ok(Some(m)),
            _ => break,
        }
    }
    Err(WalError::Corrupt { file: path.clone(), offset: off as u64, reason: "no metadata record at the head".into() })
}

/// A `*.wal.tmp` is a segment whose creation did not finish, or a spare
/// file made ahead ([`segment::Pipeline`]): it never held data.
fn remove_stale_tmp(dir: &Path) -> Result<(), WalError> {
    for ent in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let ent = ent.map_err(|e| WalError::io(dir, e))?;
        if ent.file_name().to_string_lossy().ends_with(".wal.tmp") {
            // A closed WAL's file pipeline may remove its spare first.
            match std::fs::remove_file(ent.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(WalError::io(&ent.path(), e)),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod zero_ahead_tests;
