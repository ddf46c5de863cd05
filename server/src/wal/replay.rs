//! Reading the WAL at start: decode every segment in order, verify the CRC
//! chain across records and segments, repair a torn tail, and refuse
//! corruption anywhere else with the file and offset.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;

use super::WalError;
use super::record::{Decoded, Decoder, FrameError, Metadata, Record};
use super::segment::{self, SEGMENT_SIZE, SegmentName};

/// What the WAL holds, after truncations and purges are applied.
#[derive(Debug, Default)]
pub struct Replay {
    pub metadata: Option<Metadata>,
    /// Contiguous entries, ascending by index.
    pub entries: VecDeque<(u64, Bytes)>,
    /// The last State record.
    pub state: Option<Bytes>,
    /// The last Commit record.
    pub commit: Option<Bytes>,
    /// The last Snapshot record (index and opaque data).
    pub snapshot: Option<(u64, Bytes)>,
}

impl Replay {
    fn apply(&mut self, rec: Record) -> Result<(), String> {
        match rec {
            Record::Metadata(m) => {
                if let Some(prev) = self.metadata
                    && prev != m
                {
                    return Err(format!("metadata changed from {prev:?} to {m:?}"));
                }
                self.metadata = Some(m);
            }
            Record::Entry { index, data } => {
                self.truncate(index);
                if let Some(&(last, _)) = self.entries.back()
                    && index != last + 1
                {
                    return Err(format!("entry index {index} does not follow {last}"));
                }
                self.entries.push_back((index, data));
            }
            Record::State(b) => self.state = Some(b),
            Record::Commit(b) => self.commit = Some(b),
            Record::Crc(_) => {}
            Record::Snapshot { index, data } => {
                while self.entries.front().is_some_and(|(i, _)| *i <= index) {
                    self.entries.pop_front();
                }
                self.snapshot = Some((index, data));
            }
            Record::Truncate { since } => self.truncate(since),
        }
        Ok(())
    }

    fn truncate(&mut self, since: u64) {
        while self.entries.back().is_some_and(|(i, _)| *i >= since) {
            self.entries.pop_back();
        }
    }
}

/// Where the writer continues after replay.
#[derive(Debug)]
pub struct Tail {
    pub name: SegmentName,
    pub path: PathBuf,
    /// Offset of the first unwritten byte in the last segment.
    pub offset: u64,
    /// The CRC of the last record.
    pub crc: u32,
}

/// Reads every segment in `dir`. Returns the replayed state and the tail to continue at.
pub fn replay(dir: &Path) -> Result<(Replay, Tail), WalError> {
    let segs = segment::list_segments(dir).map_err(|e| WalError::io(dir, e))?;
    if segs.is_empty() {
        return Err(WalError::Corrupt { file: dir.to_path_buf(), offset: 0, reason: "no WAL segments".into() });
    }
    for (i, (name, path)) in segs.iter().enumerate() {
        if name.seq != segs[0].0.seq + i as u64 {
            return Err(WalError::Corrupt {
                file: path.clone(),
                offset: 0,
                reason: format!("segment sequence gap: expected {}, found {}", segs[0].0.seq + i as u64, name.seq),
            });
        }
    }
    let mut out = Replay::default();
    let mut crc = 0u32;
    let mut tail = None;
    for (i, (name, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let buf = std::fs::read(path).map_err(|e| WalError::io(path, e))?;
        let mut dec = Decoder::new(&buf, crc);
        let mut off = 0usize;
        let mut first = true;
        // The first record of a segment is a CRC record carrying the previous
        // segment's last CRC; for the oldest segment kept, it seeds the chain.
        if i == 0
            && let Some(seed) = peek_crc_record(&buf)
        {
            dec.set_crc(seed);
        }
        let end = loop {
            match dec.decode_at(off) {
                Ok(Decoded::Record(rec, next)) => {
                    if first {
                        match &rec {
                            Record::Crc(c) if i == 0 || *c == crc => {}
                            Record::Crc(c) => {
                                return Err(WalError::Corrupt {
                                    file: path.clone(),
                                    offset: off as u64,
                                    reason: format!("crc chain broken between segments: {c:#x} != {crc:#x}"),
                                });
                            }
                            _ => {
                                return Err(WalError::Corrupt {
                                    file: path.clone(),
                                    offset: off as u64,
                                    reason: "segment does not start with a crc record".into(),
                                });
                            }
                        }
                        first = false;
                    }
                    out.apply(rec).map_err(|reason| WalError::Corrupt {
                        file: path.clone(),
                        offset: off as u64,
                        reason,
                    })?;
                    off = next;
                }
                Ok(Decoded::End) => break Ok(off),
                Err(e) => break Err(e),
            }
        };
        crc = dec.crc();
        match end {
            Ok(end) => {
                if first {
                    return Err(WalError::Corrupt { file: path.clone(), offset: 0, reason: "empty segment".into() });
                }
                if last && buf[end..].iter().any(|&b| b != 0) {
                    // Bytes after the end marker: a write that did not finish.
                    repair_tail(path, end as u64, "data after the end of the log")?;
                }
                if last {
                    tail = Some(Tail { name: *name, path: path.clone(), offset: end as u64, crc });
                }
            }
            Err(e) if last && is_torn(e) && !first => {
                repair_tail(path, off as u64, &e.to_string())?;
                tail = Some(Tail { name: *name, path: path.clone(), offset: off as u64, crc });
            }
            Err(e) => {
                return Err(WalError::Corrupt { file: path.clone(), offset: off as u64, reason: e.to_string() });
            }
        }
    }
    if out.metadata.is_none() {
        return Err(WalError::Corrupt { file: segs[0].1.clone(), offset: 0, reason: "no metadata record".into() });
    }
    Ok((out, tail.expect("last segment sets the tail")))
}

/// A failure that only an interrupted write can produce.
fn is_torn(e: FrameError) -> bool {
    matches!(e, FrameError::Truncated | FrameError::CrcMismatch { torn: true })
}

/// If the segment starts with a well-formed CRC frame, returns the CRC it carries,
/// which is the seed of the chain for that segment.
pub(super) fn peek_crc_record(buf: &[u8]) -> Option<u32> {
    if buf.len() < 16 || buf[4] != 4 || u32::from_le_bytes(buf[0..4].try_into().ok()?) != 4 {
        return None;
    }
    Some(u32::from_le_bytes(buf[12..16].try_into().ok()?))
}

/// Keeps a copy of the damaged segment as `<name>.broken`, then cuts the log at
/// `offset` and zero-fills the rest of the segment again.
fn repair_tail(path: &Path, offset: u64, reason: &str) -> Result<(), WalError> {
    let broken = path.with_extension("wal.broken");
    warn!(file = %path.display(), offset, reason, broken = %broken.display(), "repairing torn WAL tail");
    std::fs::copy(path, &broken).map_err(|e| WalError::io(&broken, e))?;
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(path, e))?;
    f.set_len(offset).map_err(|e| WalError::io(path, e))?;
    segment::preallocate(&f, SEGMENT_SIZE.max(offset)).map_err(|e| WalError::io(path, e))?;
    // The repaired segment must be durable before new records are appended after `offset`.
    f.sync_all().map_err(|e| WalError::io(path, e))?;
    // Sync the directory to persist the `.broken` copy's entry.
    if let Some(dir) = path.parent() {
        segment::sync_dir(dir).map_err(|e| WalError::io(dir, e))?;
    }
    Ok(())
}
