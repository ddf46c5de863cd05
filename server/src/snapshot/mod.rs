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

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

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

/// Writes a consistent snapshot of `be` to `path`; returns its size.
pub fn write(be: &Backend, path: &Path) -> Result<u64, SnapshotError> {
    write_observed(be, path, |_, _, _| {})
}

/// [`write`], showing `observe` every record written, so that a caller can
/// learn what the file holds (raft's applied log id, say) from the same
/// read as the file itself.
pub fn write_observed(
    be: &Backend,
    path: &Path,
    mut observe: impl FnMut(Table, &[u8], &[u8]),
) -> Result<u64, SnapshotError> {
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, Paced { file, written: 0, flushed: 0 });
    let mut sha = Sha256::new();
    let mut written = 0u64;
    let mut io_res = Ok(());
    be.commit()?;
    be.scan_all_committed(|t, k, v| {
        observe(t, k, v);
        let mut rec = Vec::with_capacity(9 + k.len() + v.len());
        rec.push(t as u8);
        rec.extend_from_slice(&(k.len() as u32).to_be_bytes());
        rec.extend_from_slice(k);
        rec.extend_from_slice(&(v.len() as u32).to_be_bytes());
        rec.extend_from_slice(v);
        sha.update(&rec);
        written += rec.len() as u64;
        io_res = out.write_all(&rec);
        io_res.is_ok()
    })?;
    io_res.map_err(|e| io(path, e))?;
    let mut tail = vec![END];
    tail.resize((512 - (written + 1) % 512) as usize % 512 + 1, 0);
    sha.update(&tail);
    out.write_all(&tail).map_err(|e| io(path, e))?;
    out.write_all(&sha.finalize()).map_err(|e| io(path, e))?;
    // Complete, but not synced: the file is read back by this process (a
    // snapshot stream, a raft snapshot for a peer) and then deleted, and a
    // crash makes it worthless anyway.
    out.flush().map_err(|e| io(path, e))?;
    Ok(written + tail.len() as u64 + HASH_LEN)
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

/// Checks the file's size and SHA-256 without interpreting the records.
pub fn verify(path: &Path) -> Result<[u8; 32], SnapshotError> {
    let len = std::fs::metadata(path).map_err(|e| io(path, e))?.len();
    if len < 512 + HASH_LEN || len % 512 != HASH_LEN {
        return Err(corrupt(path, format!("size {len} is not a multiple of 512 plus a 32-byte hash (truncated?)")));
    }
    let mut r = BufReader::new(std::fs::File::open(path).map_err(|e| io(path, e))?);
    let mut sha = Sha256::new();
    let mut left = len - HASH_LEN;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n]).map_err(|e| io(path, e))?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    r.read_exact(&mut want).map_err(|e| io(path, e))?;
    let got: [u8; 32] = sha.finalize().into();
    if got != want {
        return Err(corrupt(path, "SHA-256 mismatch: the file was damaged or is not a kvd snapshot"));
    }
    Ok(got)
}

/// Verifies the file, then calls `f` for every record in order.
pub fn read(path: &Path, mut f: impl FnMut(Table, &[u8], &[u8])) -> Result<(), SnapshotError> {
    verify(path)?;
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
        let mut key = vec![0u8; klen];
        r.read_exact(&mut key).map_err(|e| io(path, e))?;
        pos += klen as u64;
        let vlen = u32_at(&mut r, &mut pos)? as usize;
        let mut value = vec![0u8; vlen];
        r.read_exact(&mut value).map_err(|e| io(path, e))?;
        pos += vlen as u64;
        f(table, &key, &value);
    }
}

/// What a snapshot holds, as `kvctl snapshot status` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// The first 8 bytes of the SHA-256, in hex.
    pub hash: String,
    /// The highest MVCC revision.
    pub revision: i64,
    /// Keys that exist at that revision.
    pub keys: usize,
    /// Revisions stored (including history and tombstones).
    pub revisions: usize,
    pub size: u64,
}

/// Verifies and summarises a snapshot file.
pub fn status(path: &Path) -> Result<Status, SnapshotError> {
    use prost::Message;
    let sha = verify(path)?;
    let mut index = crate::mvcc::index::TreeIndex::default();
    let (mut revision, mut revisions, mut bad) = (0i64, 0usize, None);
    read(path, |t, k, v| {
        if t != Table::Key || bad.is_some() {
            return;
        }
        match (crate::mvcc::Revision::from_key(k), kvd_api::mvccpb::KeyValue::decode(v)) {
            (Some((rev, tomb)), Ok(kv)) => {
                index.restore(&kv.key, rev, kv.create_revision, kv.version, tomb);
                revision = revision.max(rev.main);
                revisions += 1;
            }
            _ => bad = Some(format!("undecodable MVCC record {}", hex(k))),
        }
    })?;
    if let Some(reason) = bad {
        return Err(corrupt(path, reason));
    }
    let size = std::fs::metadata(path).map_err(|e| io(path, e))?.len();
    Ok(Status { hash: hex(&sha[..8]), revision, keys: index.live_keys(), revisions, size })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates a member's backend from a snapshot file, as `etcdutl snapshot
/// restore` does: the MVCC data, leases, auth and compaction revisions are kept; raft
/// state (applied index, membership, snapshot metadata) and alarms are not:
/// the member starts a new cluster on its first start.
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
) -> Result<Status, SnapshotError> {
    let st = status(path)?;
    let member = data_dir.join("member");
    if member.exists() {
        return Err(SnapshotError::Io {
            path: member.clone(),
            msg: "already exists; restore needs a new data dir".into(),
        });
    }
    std::fs::create_dir_all(&member).map_err(|e| io(&member, e))?;
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
    let mut n = 0usize;
    let mut err = None;
    read(path, |t, k, v| {
        let keep = match t {
            Table::Key => true,
            Table::Meta => keep_meta.contains(&k),
            Table::Alarm => false,
            Table::Lease | Table::AuthUser | Table::AuthRole => true,
        };
        if keep && err.is_none() {
            be.write(|b| b.put(t, k.to_vec(), bytes::Bytes::copy_from_slice(v)));
            n += 1;
            if n.is_multiple_of(10_000) {
                err = be.commit().err();
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    be.write(|b| b.put(Table::Meta, crate::raft::BOOTSTRAP_MEMBERS.to_vec(), crate::raft::encode(members)));
    be.commit()?;
    Ok(st)
}
