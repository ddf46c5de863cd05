//! Snapshot files: what `Maintenance.Snapshot` streams (and `etcdctl snapshot
//! save` stores), and what `kvctl snapshot status|restore` reads.
//!
//! Layout (integers big-endian, fixed width):
//! - records `table u8 ‖ key_len u32 ‖ key ‖ value_len u32 ‖ value`, taken
//!   from one redb read transaction after the write buffer was committed;
//! - an end byte `0xFF`;
//! - zeros up to a multiple of 512 bytes;
//! - the SHA-256 of everything before it (32 bytes).
//!
//! As with etcd's snapshots, size % 512 == 32, which is how etcdctl
//! recognises the trailing hash.
//!
//! `status` and `restore` also take etcd's snapshots and backend files
//! (bbolt: [`bbolt`] reads the format, [`etcd`] maps etcd's buckets to
//! kvd's tables); the first bytes say which format a file is in.

pub mod bbolt;
pub mod etcd;

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendError, Table};

/// Marks the end of the records.
const END: u8 = 0xFF;
const HASH_LEN: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn io(path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io { path: path.to_path_buf(), msg: e.to_string() }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

/// The snapshot of `be`, encoded: every committed row as a record, read in
/// one read transaction after the write buffer is committed, then the end
/// byte, padding and SHA-256. `observe` sees each row. Records are written
/// straight into one buffer (and hashed there); `flush` is handed it
/// whenever it holds `chunk` bytes or more and at the end (`true`), takes
/// what it wants, and returns false to stop. Returns the size, or `None`
/// if `flush` stopped it.
fn encode(
    be: &Backend,
    chunk: usize,
    mut observe: impl FnMut(Table, &[u8], &[u8]),
    mut flush: impl FnMut(&mut BytesMut, bool) -> bool,
) -> Result<Option<u64>, SnapshotError> {
    let (mut sha, mut written, mut stopped) = (Sha256::new(), 0u64, false);
    let mut out = BytesMut::with_capacity(chunk + 4096);
    be.commit()?;
    be.scan_all_committed(|t, k, v| {
        observe(t, k, v);
        let start = out.len();
        encode_record(t, k, v, &mut out);
        sha.update(&out[start..]);
        written += (out.len() - start) as u64;
        if out.len() >= chunk {
            stopped = !flush(&mut out, false);
            // A buffer split off and handed over leaves none: take a whole
            // chunk's now (the old one back if it came back), rather than
            // growing to it from BytesMut's default by copying doubles.
            out.reserve(chunk + 4096);
        }
        !stopped
    })?;
    if stopped {
        return Ok(None);
    }
    let tail = tail(written);
    sha.update(&tail);
    out.extend_from_slice(&tail);
    out.extend_from_slice(&sha.finalize());
    Ok(flush(&mut out, true).then_some(written + tail.len() as u64 + HASH_LEN))
}

/// Writes a consistent snapshot of `be` to `path`, showing `observe` every
/// record written, so that a caller can learn what the file holds (raft's
/// applied log id, say) from the same read as the file itself; returns its
/// size.
pub fn write_observed(
    be: &Backend,
    path: &Path,
    observe: impl FnMut(Table, &[u8], &[u8]),
) -> Result<u64, SnapshotError> {
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut out = Paced { file, written: 0, flushed: 0 };
    let mut io_res = Ok(());
    let len = encode(be, 1 << 20, observe, |b, _| {
        io_res = out.write_all(b);
        b.clear();
        io_res.is_ok()
    })?;
    io_res.map_err(|e| io(path, e))?;
    // Complete, but not synced: the file is read back by this process (a
    // raft snapshot for a peer) and then deleted, and a crash makes it
    // worthless anyway.
    out.flush().map_err(|e| io(path, e))?;
    Ok(len.expect("writing went on to the end"))
}

/// One record: `table u8 ‖ key_len u32 ‖ key ‖ value_len u32 ‖ value`.
fn encode_record(t: Table, k: &[u8], v: &[u8], out: &mut BytesMut) {
    out.reserve(9 + k.len() + v.len());
    out.put_u8(t as u8);
    out.put_u32(k.len() as u32);
    out.put_slice(k);
    out.put_u32(v.len() as u32);
    out.put_slice(v);
}

/// What follows `written` bytes of records: the end byte and zeros to a
/// multiple of 512 bytes (the SHA-256 comes after).
fn tail(written: u64) -> Vec<u8> {
    let mut tail = vec![END];
    tail.resize((512 - (written + 1) % 512) as usize % 512 + 1, 0);
    tail
}

/// A piece of a streamed snapshot ([`stream`]); `last` on the final one.
pub struct Piece {
    pub data: bytes::Bytes,
    pub last: bool,
}

/// A consistent snapshot of `be`, byte for byte what [`write_observed`] writes,
/// streamed from one read transaction in pieces of about `chunk` bytes as
/// the receiver takes them (a thread reads ahead by two pieces), without
/// a file: writing a gigabyte to a temporary file and deleting it held up
/// the WAL's fdatasync on the same disk for a quarter of a second.
/// Dropping the receiver stops the read.
pub fn stream(be: std::sync::Arc<Backend>, chunk: usize) -> tokio::sync::mpsc::Receiver<Result<Piece, SnapshotError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let producer = tx.clone();
    let spawned = std::thread::Builder::new().name("kvd-snapshot".into()).spawn(move || {
        let res = encode(
            &be,
            chunk,
            |_, _, _| {},
            |buf, last| producer.blocking_send(Ok(Piece { data: buf.split().freeze(), last })).is_ok(),
        );
        if let Err(e) = res {
            let _ = producer.blocking_send(Err(e));
        }
    });
    if let Err(e) = spawned {
        let _ = tx.try_send(Err(SnapshotError::Io { path: PathBuf::from("<stream>"), msg: e.to_string() }));
    }
    rx
}

/// Bytes a snapshot file may hold unwritten to the disk (see [`Paced`]).
const PACE_BYTES: u64 = 8 << 20;

/// A snapshot file written out to the disk as it grows, [`PACE_BYTES`] at a
/// time. With a gigabyte left dirty in the page cache, the file system's
/// next journal commit (the WAL's fdatasync makes one) had to write it all
/// first: puts and reads stalled for 0.2-0.3 s during a snapshot save.
struct Paced {
    file: std::fs::File,
    written: u64,
    flushed: u64,
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= PACE_BYTES {
            use std::os::unix::io::AsRawFd;
            // SAFETY: sync_file_range only reads its arguments; the fd is ours.
            // A hint: a file system without it writes the file back itself.
            let _ = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
            self.flushed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A snapshot file's format, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// kvd's own (this module's layout).
    Kvd,
    /// etcd's: a bbolt file, with or without the SHA-256 `etcdctl snapshot
    /// save` appends.
    Etcd,
}

/// A checked snapshot file: its format, and the SHA-256 of its data (the
/// bytes before the trailer; the trailer itself if it has none).
pub struct Checked {
    pub format: Format,
    /// Bytes of data, without the trailing hash.
    pub data_len: u64,
    pub sha: [u8; 32],
}

/// Finds the file's format and checks it as `etcdutl snapshot restore`
/// does: a trailing SHA-256 must match; a bbolt file without one (a `db`
/// copied from a data dir) is read only with `skip_hash_check`.
pub fn check(path: &Path, skip_hash_check: bool) -> Result<Checked, SnapshotError> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    let mut head = [0u8; 32];
    let n = std::io::Read::read(&mut (&file), &mut head).map_err(|e| io(path, e))?;
    if !bbolt::looks_like_bbolt(&head[..n]) {
        let sha = verify(path)?;
        return Ok(Checked { format: Format::Kvd, data_len: len - HASH_LEN, sha });
    }
    let has_hash = len % 512 == HASH_LEN;
    let data_len = if has_hash { len - HASH_LEN } else { len };
    if !has_hash && !skip_hash_check {
        return Err(corrupt(
            path,
            format!(
                "an etcd backend of {len} bytes without the SHA-256 that etcdctl snapshot save appends (a db file \
                 copied from a data dir, or a truncated snapshot); pass --skip-hash-check to read it anyway"
            ),
        ));
    }
    let sha = if has_hash && !skip_hash_check {
        hashed(path, &file, data_len, "the etcd snapshot was damaged (or truncated)")?
    } else {
        sha256_of(path, &file, data_len)?
    };
    Ok(Checked { format: Format::Etcd, data_len, sha })
}

/// The SHA-256 of the file's first `len` bytes, which must match the 32
/// bytes after them; `damaged` says what a mismatch means.
fn hashed(path: &Path, file: &std::fs::File, len: u64, damaged: &str) -> Result<[u8; 32], SnapshotError> {
    let got = sha256_of(path, file, len)?;
    let mut want = [0u8; 32];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut want, len).map_err(|e| io(path, e))?;
    if got != want {
        return Err(corrupt(path, format!("SHA-256 mismatch: {damaged}")));
    }
    Ok(got)
}

fn sha256_of(path: &Path, file: &std::fs::File, len: u64) -> Result<[u8; 32], SnapshotError> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], off).map_err(|e| io(path, e))?;
        sha.update(&buf[..n]);
        off += n as u64;
    }
    Ok(sha.finalize().into())
}

/// Checks the file ([`check`]), then calls `f` for every row it holds,
/// as kvd's tables hold them, whichever its format.
pub fn read_any(
    path: &Path,
    skip_hash_check: bool,
    f: impl FnMut(Table, &[u8], &[u8]),
) -> Result<Checked, SnapshotError> {
    let checked = check(path, skip_hash_check)?;
    read_checked(path, &checked, f)?;
    Ok(checked)
}

/// The rows of a file [`check`] found whole, as [`read_any`] gives them.
fn read_checked(path: &Path, checked: &Checked, mut f: impl FnMut(Table, &[u8], &[u8])) -> Result<(), SnapshotError> {
    match checked.format {
        Format::Kvd => read_records(path, &mut f)?,
        Format::Etcd => {
            let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
            etcd::read(&file, checked.data_len, f).map_err(|e| match e {
                bbolt::BoltError::Io { what, err } => {
                    SnapshotError::Io { path: path.to_path_buf(), msg: format!("{what}: {err}") }
                }
                bbolt::BoltError::Corrupt(reason) => corrupt(path, format!("not a readable etcd backend: {reason}")),
            })?;
        }
    }
    Ok(())
}

/// Writes the kvd snapshot `input` as an etcd snapshot at `out` (see
/// [`etcd::export`]), for `etcdutl snapshot restore`; returns the status of
/// what it wrote, read back.
pub fn export_etcd(input: &Path, out: &Path) -> Result<Status, SnapshotError> {
    let checked = check(input, false)?;
    if checked.format != Format::Kvd {
        return Err(SnapshotError::Io {
            path: input.to_path_buf(),
            msg: "is an etcd snapshot already; etcdutl snapshot restore takes it as it is".into(),
        });
    }
    etcd::export(out, |f| read_records(input, f))?;
    status(out, false)
}

/// Checks the file's size and SHA-256 without interpreting the records.
pub fn verify(path: &Path) -> Result<[u8; 32], SnapshotError> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    if len < 512 + HASH_LEN || len % 512 != HASH_LEN {
        return Err(corrupt(path, format!("size {len} is not a multiple of 512 plus a 32-byte hash (truncated?)")));
    }
    hashed(path, &file, len - HASH_LEN, "the file was damaged or is not a kvd snapshot")
}

/// Verifies a kvd snapshot file, then calls `f` for every record in order.
pub fn read(path: &Path, mut f: impl FnMut(Table, &[u8], &[u8])) -> Result<(), SnapshotError> {
    verify(path)?;
    read_records(path, &mut f)
}

/// What a reader calls with each row: table, key, value.
type Row<'f> = dyn FnMut(Table, &[u8], &[u8]) + 'f;

/// The records of a verified kvd snapshot file.
fn read_records(path: &Path, f: &mut Row) -> Result<(), SnapshotError> {
    let len = std::fs::metadata(path).map_err(|e| io(path, e))?.len();
    let mut r = BufReader::new(std::fs::File::open(path).map_err(|e| io(path, e))?);
    let mut pos = 0u64;
    let u32_at = |r: &mut BufReader<std::fs::File>, pos: &mut u64| -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|e| io(path, e))?;
        *pos += 4;
        Ok(u32::from_be_bytes(b))
    };
    loop {
        let mut t = [0u8; 1];
        r.read_exact(&mut t).map_err(|e| io(path, e))?;
        pos += 1;
        if t[0] == END {
            return Ok(());
        }
        let table =
            Table::from_u8(t[0]).ok_or_else(|| corrupt(path, format!("unknown table {} at {}", t[0], pos - 1)))?;
        let klen = u32_at(&mut r, &mut pos)? as usize;
        if pos + klen as u64 > len {
            return Err(corrupt(path, format!("a key of {klen} bytes at {pos} runs past the end")));
        }
        let mut key = vec![0u8; klen];
        r.read_exact(&mut key).map_err(|e| io(path, e))?;
        pos += klen as u64;
        let vlen = u32_at(&mut r, &mut pos)? as usize;
        if pos + vlen as u64 > len {
            return Err(corrupt(path, format!("a value of {vlen} bytes at {pos} runs past the end")));
        }
        let mut value = vec![0u8; vlen];
        r.read_exact(&mut value).map_err(|e| io(path, e))?;
        pos += vlen as u64;
        f(table, &key, &value);
    }
}

/// What a snapshot holds, as `kvctl snapshot status` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// The first 8 bytes of the SHA-256 of its data, in hex.
    pub hash: String,
    /// The store's revision: the highest MVCC revision, or the compacted
    /// revision if that is higher (a compaction can remove the newest
    /// tombstones).
    pub revision: i64,
    /// Keys that exist at that revision.
    pub keys: usize,
    /// Revisions stored (including history and tombstones).
    pub revisions: usize,
    pub size: u64,
    pub format: Format,
}

/// Verifies and summarises a snapshot file of either format ([`check`]).
pub fn status(path: &Path, skip_hash_check: bool) -> Result<Status, SnapshotError> {
    let mut summary = Summary::default();
    let checked = read_any(path, skip_hash_check, |t, k, v| {
        summary.observe(t, k, v);
    })?;
    summary.finish(path, &checked)
}

/// What [`status`] counts, row by row.
#[derive(Default)]
struct Summary {
    index: crate::mvcc::index::TreeIndex,
    revision: i64,
    revisions: usize,
    /// The first row that does not decode.
    bad: Option<String>,
}

impl Summary {
    /// Counts one row; returns a `key` row's record, decoded.
    fn observe(&mut self, t: Table, k: &[u8], v: &[u8]) -> Option<kvd_api::mvccpb::KeyValue> {
        use prost::Message;
        if self.bad.is_some() {
            return None;
        }
        if t == Table::Meta && k == crate::mvcc::meta::SCHEDULED_COMPACT_REV {
            self.revision = self.revision.max(crate::mvcc::meta::decode(v).unwrap_or(0) as i64);
        }
        if t != Table::Key {
            return None;
        }
        match (crate::mvcc::Revision::from_key(k), kvd_api::mvccpb::KeyValue::decode(v)) {
            (Some((rev, tomb)), Ok(kv)) => {
                self.index.restore(&kv.key, rev, kv.create_revision, kv.version, tomb);
                self.revision = self.revision.max(rev.main);
                self.revisions += 1;
                Some(kv)
            }
            _ => {
                self.bad = Some(format!("undecodable MVCC record {}", hex(k)));
                None
            }
        }
    }

    fn finish(self, path: &Path, checked: &Checked) -> Result<Status, SnapshotError> {
        if let Some(reason) = self.bad {
            return Err(corrupt(path, reason));
        }
        let size = std::fs::metadata(path).map_err(|e| io(path, e))?.len();
        Ok(Status {
            hash: hex(&checked.sha[..8]),
            revision: self.revision,
            keys: self.index.live_keys(),
            revisions: self.revisions,
            size,
            format: checked.format,
        })
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates a member's backend from a snapshot file of either format, as
/// `etcdutl snapshot restore` does: the MVCC data, leases, auth, alarms
/// and compaction revisions are kept; raft state (applied index,
/// membership, snapshot metadata) is not: the member starts a new cluster
/// on its first start.
///
/// `identity` (member id, cluster id) goes into the new WAL's metadata and
/// `members` (the restored cluster's initial members) into the backend: on
/// its first start the member bootstraps raft with them, and its bootstrap
/// flags are ignored, as etcd's.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    identity: crate::wal::Metadata,
    members: &std::collections::BTreeMap<u64, crate::raft::Member>,
    skip_hash_check: bool,
) -> Result<Status, SnapshotError> {
    // The hash first: a damaged file creates nothing.
    let checked = check(path, skip_hash_check)?;
    let member = data_dir.join("member");
    if member.exists() {
        return Err(SnapshotError::Io {
            path: member.clone(),
            msg: "already exists; restore needs a new data dir".into(),
        });
    }
    let made = if data_dir.exists() { member.clone() } else { data_dir.to_path_buf() };
    std::fs::create_dir_all(&member).map_err(|e| io(&member, e))?;
    // A restore that fails (a row that does not decode, the disk) leaves
    // nothing it made behind.
    restore_into(path, &checked, &member, identity, members).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&made);
    })
}

fn restore_into(
    path: &Path,
    checked: &Checked,
    member: &Path,
    identity: crate::wal::Metadata,
    members: &std::collections::BTreeMap<u64, crate::raft::Member>,
) -> Result<Status, SnapshotError> {
    let (wal, _) = crate::wal::Wal::open(&member.join("wal"), identity)
        .map_err(|e| SnapshotError::Io { path: member.join("wal"), msg: e.to_string() })?;
    wal.close();
    let be = Backend::open(&member.join("db.redb"), usize::MAX, 64 << 20)?;
    let keep_meta = [
        crate::mvcc::meta::SCHEDULED_COMPACT_REV,
        crate::mvcc::meta::FINISHED_COMPACT_REV,
        crate::auth::AUTH_ENABLED,
        crate::auth::AUTH_REVISION,
    ];
    let (mut n, mut err, mut summary) = (0usize, None, Summary::default());
    // One pass: the rows are counted for the status as they are written.
    read_checked(path, checked, |t, k, v| {
        let kv = summary.observe(t, k, v);
        let keep = match t {
            Table::Meta => keep_meta.contains(&k),
            Table::Key | Table::Alarm | Table::Lease | Table::AuthUser | Table::AuthRole => true,
            // Never in a snapshot: written below, with each `key` row, and
            // by the backend as it stores a long one.
            Table::KeyMeta | Table::KeyChunk => false,
        };
        if keep && err.is_none() {
            be.write(|b| {
                b.put(t, k.to_vec(), bytes::Bytes::copy_from_slice(v));
                // The `keyMeta` row that a write of this record would have
                // made, so that the first start need not rebuild them all.
                if let Some(kv) = &kv {
                    b.put(Table::KeyMeta, k.to_vec(), crate::mvcc::key_meta::encode(kv));
                }
            });
            n += 1;
            if n.is_multiple_of(10_000) {
                err = be.commit().err();
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    let st = summary.finish(path, checked)?;
    be.write(|b| b.put(Table::Meta, crate::raft::BOOTSTRAP_MEMBERS.to_vec(), crate::raft::encode(members)));
    be.commit()?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(be: &Backend, k: &str, v: &[u8]) {
        be.write(|b| b.put(Table::Key, k.as_bytes().to_vec(), bytes::Bytes::copy_from_slice(v)));
    }

    fn collect(mut rx: tokio::sync::mpsc::Receiver<Result<Piece, SnapshotError>>) -> (Vec<u8>, usize) {
        let (mut all, mut pieces) = (Vec::new(), 0);
        while let Some(p) = rx.blocking_recv() {
            let p = p.unwrap();
            all.extend_from_slice(&p.data);
            pieces += 1;
            if p.last {
                assert!(rx.blocking_recv().is_none(), "nothing after the last piece");
                break;
            }
        }
        (all, pieces)
    }

    /// The stream is byte for byte the file `write` writes, in pieces of
    /// about the chunk, and it is the state when it started: writes made
    /// while it is read are not in it.
    #[test]
    fn a_streamed_snapshot_is_the_file_as_of_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let be = Backend::open(&dir.path().join("db.redb"), 100, 1 << 20).unwrap();
        for i in 0..2000 {
            put(&be, &format!("k{i:05}"), &vec![b'v'; 100 + i % 300]);
        }
        let file = dir.path().join("snap.db");
        let len = write_observed(&be, &file, |_, _, _| {}).unwrap();
        let mut rx = stream(be.clone(), 4096);
        // Once the first piece is out, the read transaction is open: what
        // is written now is after it.
        let first = rx.blocking_recv().unwrap().unwrap();
        assert!(!first.last);
        put(&be, "k00000", b"changed");
        put(&be, "zz-new", b"new");
        be.commit().unwrap();
        let (rest, pieces) = collect(rx);
        let streamed = [&first.data[..], &rest[..]].concat();
        assert_eq!(streamed.len() as u64, len);
        assert!(streamed == std::fs::read(&file).unwrap(), "the stream differs from the file");
        assert!(pieces > len as usize / 8192, "{pieces} pieces for {len} bytes in 4 KiB chunks");
        // And it is a valid snapshot file.
        let again = dir.path().join("streamed.db");
        std::fs::write(&again, &streamed).unwrap();
        verify(&again).unwrap();
    }

    /// A receiver that goes away stops the reader (its read transaction
    /// would otherwise pin the file's pages).
    #[test]
    fn dropping_the_receiver_stops_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let be = Backend::open(&dir.path().join("db.redb"), 100, 1 << 20).unwrap();
        for i in 0..500 {
            put(&be, &format!("k{i:05}"), &[b'v'; 512]);
        }
        let mut rx = stream(be.clone(), 1024);
        assert!(rx.blocking_recv().unwrap().is_ok());
        drop(rx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The thread holds a clone of the backend until it ends.
        while std::sync::Arc::strong_count(&be) > 1 {
            assert!(std::time::Instant::now() < deadline, "the reader is still running");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
