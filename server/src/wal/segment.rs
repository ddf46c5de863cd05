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

/// Segment files made ahead of time, as etcd's file pipeline: a thread
/// preallocates and syncs the next file while the current segment fills,
/// so that a cut only writes the head, fdatasyncs it and renames
/// ([`Pipeline::cut_to`]). Made on the write path, the 64 MB fallocate and
/// fsync took up to ~300 ms on a disk busy with the backend's commits, and
/// every write waited for it. The files are `spare-PID-N.wal.tmp`, which a
/// WAL's open removes like any unfinished segment.
pub struct Pipeline {
    dir: std::path::PathBuf,
    /// The thread's files; `None` if it could not start (then cuts make
    /// their file inline).
    rx: Option<std::sync::mpsc::Receiver<io::Result<(std::path::PathBuf, File)>>>,
}

impl Pipeline {
    pub fn start(dir: &Path) -> Pipeline {
        // A rendezvous: one file made and waiting, the next made once it is taken.
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let at = dir.to_path_buf();
        let spawned = std::thread::Builder::new().name("kvd-wal-pipeline".into()).spawn(move || {
            // Unique in the process: a closed WAL's thread may still be
            // finishing its file when the same dir is opened again.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            loop {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = at.join(format!("spare-{}-{n}.wal.tmp", std::process::id()));
                let made = spare(&path);
                if tx.send(made.map(|f| (path.clone(), f))).is_err() {
                    // The WAL is closed: nobody takes it.
                    let _ = std::fs::remove_file(&path);
                    return;
                }
            }
        });
        Pipeline { dir: dir.to_path_buf(), rx: spawned.ok().map(|_| rx) }
    }

    /// Turns the next spare file into segment `name` with `head` written
    /// and durable, as [`create_segment`] does.
    pub fn cut_to(&self, name: SegmentName, head: &[u8]) -> io::Result<File> {
        let taken = self.rx.as_ref().and_then(|rx| rx.recv().ok());
        let Some(made) = taken else { return create_segment(&self.dir, name, head) };
        let (path, file) = made?;
        file.write_all_at(head, 0)?;
        // The allocation was synced when the file was made.
        file.sync_data()?;
        std::fs::rename(&path, self.dir.join(name.file_name()))?;
        sync_dir(&self.dir)?;
        Ok(file)
    }
}

/// A zero-filled file of [`SEGMENT_SIZE`] bytes, synced.
fn spare(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    preallocate(&file, SEGMENT_SIZE)?;
    file.sync_all()?;
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

#[cfg(test)]
mod pipeline_tests {
    use super::*;

    fn spares(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("spare-"))
            .count()
    }

    /// A cut takes the spare file: the segment has its name, its full size
    /// and the head; the pipeline makes the next one, and removes it when
    /// the WAL goes away.
    #[test]
    fn cuts_take_made_files_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pipeline::start(dir.path());
        for (i, head) in [b"first".as_slice(), b"second"].into_iter().enumerate() {
            let name = SegmentName { seq: i as u64 + 1, index: 10 * i as u64 };
            let f = p.cut_to(name, head).unwrap();
            assert_eq!(f.metadata().unwrap().len(), SEGMENT_SIZE);
            let on_disk = std::fs::read(dir.path().join(name.file_name())).unwrap();
            assert_eq!(&on_disk[..head.len()], head);
            assert!(on_disk[head.len()..].iter().all(|&b| b == 0));
        }
        let names: Vec<_> = list_segments(dir.path()).unwrap().into_iter().map(|s| s.0.seq).collect();
        assert_eq!(names, vec![1, 2]);
        drop(p);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while spares(dir.path()) > 0 {
            assert!(std::time::Instant::now() < deadline, "a spare file was left");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
