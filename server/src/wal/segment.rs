//! WAL segment files: naming (`%016x-%016x.wal`, sequence then first index),
//! preallocation, and directory listing.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// What the writer needs from an open segment: positioned writes and
/// fdatasync. The seam lets tests stand in a file that loses unsynced writes,
/// the one failure a kill -9 cannot show (the page cache survives it).
pub trait SegmentFile: Send {
    /// Writes all of `buf` at `offset`.
    fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn fdatasync(&self) -> io::Result<()>;
    /// Starts writing back `[offset, offset + len)` without waiting for it, so
    /// that a later fdatasync finds less to write. A hint only.
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

impl SegmentFile for File {
    fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn fdatasync(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: sync_file_range only reads the arguments; the fd is owned by `self`.
        let rc = unsafe {
            libc::sync_file_range(
                self.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// Wraps each newly opened segment file (identity in production).
pub type OpenHook = fn(File) -> Box<dyn SegmentFile>;

/// The production hook: the real file.
pub fn real_file(f: File) -> Box<dyn SegmentFile> {
    Box::new(f)
}

/// Size every segment is preallocated to; a segment is cut once it grows past it.
pub const SEGMENT_SIZE: u64 = 64_000_000;

/// How far ahead of the tail the writer keeps the segment written with real
/// zeros (see [`Writer::zero_ahead`](super::writer)).
pub const ZERO_AHEAD: u64 = 1 << 20;

/// A segment's identity, parsed from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    /// Position in the sequence of segments, starting at 0.
    pub seq: u64,
    /// Index of the first entry the segment was cut for.
    pub index: u64,
}

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!("{:016x}-{:016x}.wal", self.seq, self.index)
    }

    /// Parses `%016x-%016x.wal`; anything else is not a segment.
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".wal")?;
        let (a, b) = stem.split_once('-')?;
        if a.len() != 16 || b.len() != 16 {
            return None;
        }
        Some(Self { seq: u64::from_str_radix(a, 16).ok()?, index: u64::from_str_radix(b, 16).ok()? })
    }
}

/// Lists the segments in `dir`, sorted by sequence number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(SegmentName, PathBuf)>> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        if let Some(name) = ent.file_name().to_str().and_then(SegmentName::parse) {
            out.push((name, ent.path()));
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// Creates a new, zero-filled segment of [`SEGMENT_SIZE`] bytes at `path` through
/// a temporary file, so a crash never leaves a half-made segment under a real name.
pub fn create_segment(dir: &Path, name: SegmentName, head: &[u8]) -> io::Result<File> {
    let tmp = dir.join(format!("{}.tmp", name.file_name()));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    preallocate(&file, SEGMENT_SIZE)?;
    file.write_all_at(head, 0)?;
    // The head (CRC, metadata, state) must be durable before the segment gets its name.
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name.file_name()))?;
    // Sync the parent directory to persist the rename.
    sync_dir(dir)?;
    Ok(file)
}

/// Reserves `len` bytes of zeros for `file` (fallocate, or set_len where unsupported).
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: fallocate is called on a valid, open file descriptor owned by `file`.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => file.set_len(len),
        _ => Err(err),
    }
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let n = SegmentName { seq: 3, index: 0x1234 };
        assert_eq!(n.file_name(), "0000000000000003-0000000000001234.wal");
        assert_eq!(SegmentName::parse(&n.file_name()), Some(n));
        assert_eq!(SegmentName::parse("0000000000000003-0000000000001234.wal.broken"), None);
        assert_eq!(SegmentName::parse("3-4.wal"), None);
    }
}
