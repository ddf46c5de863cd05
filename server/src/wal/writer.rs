//! The WAL writer: one thread owns the open segment and turns everything queued
//! while the previous fdatasync ran into one write and one fdatasync (group commit).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{error, info_span, warn};

use super::WalError;
use super::queue::OpQueue;
use super::record::{Encoder, Metadata, Record};
use super::segment::{self, OpenHook, SEGMENT_SIZE, SegmentFile, SegmentName, ZERO_AHEAD};
use crate::metrics;

/// Called once the records of one `append` are durable (or failed).
pub type Done = Box<dyn FnOnce(Result<(), WalError>) + Send>;

pub(super) enum Op {
    Append {
        records: Vec<Record>,
        done: Option<Done>,
    },
    /// Writes the purge marker durably, then deletes the segments that hold
    /// only entries at or below `upto`.
    Purge {
        upto: u64,
        marker: Record,
        done: Done,
    },
    /// Stop after flushing what is queued.
    Close(std::sync::mpsc::SyncSender<()>),
}

impl Op {
    /// Tells the caller that this operation will never be carried out.
    pub(super) fn refuse(self) {
        match self {
            Op::Append { done: Some(d), .. } => d(Err(WalError::Closed)),
            Op::Append { done: None, .. } => {}
            Op::Purge { done, .. } => done(Err(WalError::Closed)),
            Op::Close(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// An fdatasync slower than this is logged, as etcd does.
const SLOW_FSYNC: Duration = Duration::from_secs(1);
/// Upper bound on one group write, so a flood cannot build unbounded buffers.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How long lazy records wait at most for an append to ride with before
/// they are written alone (an idle member's last commit index reaches the
/// file); an idle writer wakes this often to look.
pub(super) const LAZY_IDLE: Duration = Duration::from_millis(100);
/// Source of the zeros [`Writer::zero_ahead`] writes.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

pub(super) struct Writer {
    pub dir: PathBuf,
    pub meta: Metadata,
    pub file: Box<dyn SegmentFile>,
    /// Wraps every segment file the writer opens.
    pub hook: OpenHook,
    pub name: SegmentName,
    pub offset: u64,
    /// The segment holds written zeros (not just preallocated blocks) up to
    /// here; see [`Writer::zero_ahead`].
    pub zeroed: u64,
    pub enc: Encoder,
    /// Index of the last entry written, for naming the next segment.
    pub last_index: u64,
    /// Last State and Commit records, copied to the head of each new segment.
    pub last_state: Option<Record>,
    pub last_commit: Option<Record>,
    /// Records were written since the last fdatasync.
    pub unsynced: bool,
    /// Set after the first IO error: the WAL refuses everything afterwards.
    pub failed: Option<String>,
    /// Every segment on disk, oldest first (the last is the open one).
    pub segments: Vec<SegmentName>,
    /// The next segment's file, made ahead.
    pub pipeline: segment::Pipeline,
}

impl Writer {
    pub(super) fn run(mut self, queue: &OpQueue<Op>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut dones: Vec<Done> = Vec::new();
        loop {
            let Some(first) = queue.wait(LAZY_IDLE) else { return };
            let mut close = None;
            let mut purge_to = None;
            buf.clear();
            dones.clear();
            let mut pending = Some(first);
            // Gather everything queued behind the first op into one write.
            while let Some(op) = pending.take() {
                match op {
                    Op::Append { records, done } => {
                        for r in &records {
                            self.track(r);
                            self.enc.encode(r, &mut buf);
                        }
                        if let Some(d) = done {
                            dones.push(d);
                        }
                    }
                    Op::Purge { upto, marker, done } => {
                        self.enc.encode(&marker, &mut buf);
                        dones.push(done);
                        purge_to = purge_to.max(Some(upto));
                    }
                    Op::Close(ack) => close = Some(ack),
                }
                if close.is_none() && buf.len() < MAX_BATCH_BYTES {
                    pending = queue.try_pop();
                }
            }
            // Records appended lazily (commit, truncate) need no fdatasync of
            // their own, as etcd syncs no hard state that changed only its
            // commit: written alone (after LAZY_IDLE), they wait in the file
            // for the next one. Before, every put paid a second fdatasync
            // for its commit record.
            let sync = !dones.is_empty() || close.is_some();
            let mut res = self.write(&buf, sync);
            if let (Ok(()), Some(upto)) = (&res, purge_to) {
                res = self.delete_segments_upto(upto);
            }
            if sync {
                metrics::get().wal_batch_records(dones.len());
            }
            for d in dones.drain(..) {
                d(res.clone());
            }
            if res.is_ok() {
                self.zero_ahead();
            }
            if res.is_ok()
                && self.offset >= SEGMENT_SIZE
                && let Err(e) = self.cut()
            {
                error!(error = %e, "cutting WAL segment failed; the WAL is now read-only");
                self.failed = Some(e.to_string());
            }
            if let Some(ack) = close {
                // Whatever was queued behind the Close (or comes later) is refused.
                for op in queue.close_and_take() {
                    op.refuse();
                }
                let _ = ack.send(());
                return;
            }
        }
    }

    fn track(&mut self, r: &Record) {
        match r {
            Record::Entry { index, .. } => self.last_index = *index,
            Record::Truncate { since } => self.last_index = since.saturating_sub(1),
            Record::State(_) => self.last_state = Some(r.clone()),
            Record::Commit(_) => self.last_commit = Some(r.clone()),
            _ => {}
        }
    }

    /// Writes `buf` at the end of the open segment; with `sync`, then
    /// fdatasyncs everything written so far (if anything is unsynced).
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), WalError> {
        if let Some(f) = &self.failed {
            return Err(WalError::Failed(f.clone()));
        }
        if !buf.is_empty() {
            let _span = info_span!("wal_append", bytes = buf.len()).entered();
            if let Err(e) = self.file.pwrite(buf, self.offset) {
                let path = self.path();
                self.failed = Some(format!("write {}: {e}", path.display()));
                return Err(WalError::io(&path, e));
            }
            self.offset += buf.len() as u64;
            self.unsynced = true;
        }
        if sync && self.unsynced { self.sync() } else { Ok(()) }
    }

    /// The open segment's path (for errors: built only when one happens).
    fn path(&self) -> PathBuf {
        self.dir.join(self.name.file_name())
    }

    /// Keeps the [`ZERO_AHEAD`] bytes past the tail written with real zeros.
    /// A segment is preallocated with fallocate, whose blocks ext4 and XFS
    /// mark unwritten: the first write into each must also convert it, a
    /// metadata change the next fdatasync commits to the journal. Writing the
    /// zeros ahead, a MiB at a time and with writeback started at once, leaves
    /// the fdatasyncs behind it to flush data only, as PostgreSQL's
    /// zero-filled WAL segments do. On this machine's ext4, 8 KiB appends each
    /// followed by fdatasync: 160 µs before, 97 µs after. Failing here only
    /// forgoes that: the region reads as zeros either way.
    fn zero_ahead(&mut self) {
        if self.failed.is_some() || self.zeroed >= SEGMENT_SIZE || self.zeroed >= self.offset + ZERO_AHEAD / 2 {
            return;
        }
        let from = self.zeroed.max(self.offset);
        let to = (from + ZERO_AHEAD).min(SEGMENT_SIZE);
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(ZEROS.len());
            if let Err(e) = self.file.pwrite(&ZEROS[..n], at) {
                warn!(error = %e, "writing zeros ahead of the WAL tail failed; going on without");
                self.zeroed = SEGMENT_SIZE;
                return;
            }
            at += n as u64;
        }
        if let Err(e) = self.file.start_writeback(from, to - from) {
            warn!(error = %e, "starting writeback of the WAL's zeros failed");
        }
        self.zeroed = to;
    }

    /// fdatasync of the open segment.
    fn sync(&mut self) -> Result<(), WalError> {
        let start = Instant::now();
        // fdatasync: the records are durable once this returns; callers ack only after it.
        crate::failpoints::crash_point("wal_before_fsync");
        let synced = {
            let _s = info_span!("wal_fsync").entered();
            self.file.fdatasync()
        };
        let took = start.elapsed();
        metrics::get().wal_fsync.observe(took.as_secs_f64());
        if took > SLOW_FSYNC {
            warn!(took_ms = took.as_millis() as u64, expected_ms = SLOW_FSYNC.as_millis() as u64, "slow fdatasync");
        }
        if let Err(e) = synced {
            // After a failed fsync the page cache state is unknown: never retry.
            let path = self.path();
            self.failed = Some(format!("fdatasync {}: {e}", path.display()));
            return Err(WalError::io(&path, e));
        }
        self.unsynced = false;
        crate::failpoints::crash_point("wal_after_fsync");
        Ok(())
    }

    /// Deletes every closed segment whose entries are all at or below `upto`:
    /// those whose successor starts at or before `upto + 1`. Runs only after
    /// the purge marker is durable, so a crash in between leaves a log that
    /// still replays (entries below the marker are dropped at replay).
    fn delete_segments_upto(&mut self, upto: u64) -> Result<(), WalError> {
        let mut n = 0;
        while self.segments.len() > 1 && self.segments[1].index <= upto + 1 {
            let path = self.dir.join(self.segments[0].file_name());
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
            self.segments.remove(0);
            n += 1;
        }
        if n > 0 {
            // Sync the directory to persist the removals.
            segment::sync_dir(&self.dir).map_err(|e| WalError::io(&self.dir, e))?;
            tracing::info!(removed = n, upto, "purged WAL segments");
        }
        Ok(())
    }

    /// Starts the next segment: CRC of the previous record, metadata, last state.
    fn cut(&mut self) -> Result<(), WalError> {
        // Lazy records at the end of this segment become durable before the
        // next segment exists: a later segment implies a complete earlier one.
        if self.unsynced {
            self.sync()?;
        }
        let name = SegmentName { seq: self.name.seq + 1, index: self.last_index + 1 };
        let mut head = Vec::new();
        let mut enc = self.enc.clone();
        enc.encode(&Record::Crc(enc.crc()), &mut head);
        enc.encode(&Record::Metadata(self.meta), &mut head);
        for r in self.last_state.iter().chain(self.last_commit.iter()) {
            enc.encode(r, &mut head);
        }
        let file = self.pipeline.cut_to(name, &head).map_err(|e| WalError::io(&self.dir, e))?;
        self.file = (self.hook)(file);
        self.name = name;
        self.segments.push(name);
        self.offset = head.len() as u64;
        self.zeroed = self.offset;
        self.enc = enc;
        tracing::info!(segment = %name.file_name(), "cut WAL segment");
        Ok(())
    }
}
