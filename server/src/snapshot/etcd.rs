//! etcd's snapshots and backend files (bbolt, see [`super::bbolt`]) read as
//! kvd's tables, so that `kvctl snapshot status|restore` take a snapshot
//! from etcd 3.4, 3.5 or 3.6 with its revisions.
//!
//! etcd's buckets and what becomes of them:
//! - `key`: revision key -> mvccpb.KeyValue, the same encoding as kvd's
//!   [`Table::Key`], copied as it is (each row checked);
//! - `meta`: the compaction revisions are kept (etcd stores them as
//!   revision keys, kvd as 8-byte integers); the consistent index, term,
//!   conf state and storage version are raft's and start afresh, as
//!   `etcdutl snapshot restore` rewrites them;
//! - `lease`: id -> leasepb.Lease becomes id -> TTL; the keys' `lease`
//!   fields attach them again when kvd loads;
//! - `auth` (enabled, revision) goes to [`Table::Meta`] under the same
//!   names; `authUsers` and `authRoles` (authpb) are copied;
//! - `alarm`: a marshalled AlarmMember key becomes kvd's `member ‖ type`;
//! - `members`, `members_removed` and `cluster` are the old membership,
//!   which a restore replaces, as etcdutl's does.

use prost::Message;

use super::bbolt::{Bolt, BoltError};
use super::hex;
use crate::backend::Table;

/// etcd's leasepb.Lease.
#[derive(Clone, PartialEq, prost::Message)]
struct Lease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// The `meta` bucket's keys that a restore keeps.
const KEPT_META: [&[u8]; 2] = [crate::mvcc::meta::SCHEDULED_COMPACT_REV, crate::mvcc::meta::FINISHED_COMPACT_REV];

/// What etcd 3.6 records as its storage version, if the file has one.
pub const STORAGE_VERSION: &[u8] = b"storageVersion";

/// Reads an etcd backend (the first `len` bytes of `file`), calling `f`
/// with each row as kvd stores it. Rows that do not decode are refused,
/// naming the bucket and key.
pub fn read(file: &std::fs::File, len: u64, mut f: impl FnMut(Table, &[u8], &[u8])) -> Result<Summary, BoltError> {
    let bolt = Bolt::open(file, len)?;
    let mut summary = Summary::default();
    bolt.for_each(|bucket, k, v| {
        match bucket {
            b"key" => {
                if crate::mvcc::Revision::from_key(k).is_none() {
                    return Err(format!("{} is not a revision", hex(k)));
                }
                kvd_api::mvccpb::KeyValue::decode(v)
                    .map_err(|e| format!("the value at revision {} is not a mvccpb.KeyValue: {e}", hex(k)))?;
                f(Table::Key, k, v);
            }
            b"meta" => {
                if KEPT_META.contains(&k) {
                    // etcd keeps these as revision keys (main ‖ '_' ‖ sub).
                    let (rev, _) = crate::mvcc::Revision::from_key(v)
                        .ok_or_else(|| format!("{} is not a revision: {}", show(k), hex(v)))?;
                    f(Table::Meta, k, &crate::mvcc::meta::encode(rev.main as u64));
                } else if k == STORAGE_VERSION {
                    summary.storage_version = Some(String::from_utf8_lossy(v).into_owned());
                }
            }
            b"lease" => {
                let id: [u8; 8] = k.try_into().map_err(|_| format!("lease id {} is not 8 bytes", hex(k)))?;
                let lease = Lease::decode(v).map_err(|e| format!("lease {}: not a leasepb.Lease: {e}", hex(k)))?;
                if lease.id != i64::from_be_bytes(id) {
                    return Err(format!("lease {} holds the id {}", hex(k), lease.id));
                }
                f(Table::Lease, k, &lease.ttl.to_be_bytes());
            }
            b"auth" => match k {
                crate::auth::AUTH_ENABLED => {
                    if v.len() != 1 {
                        return Err(format!("authEnabled is {} bytes, not 1", v.len()));
                    }
                    f(Table::Meta, k, v);
                }
                crate::auth::AUTH_REVISION => {
                    crate::mvcc::meta::decode(v).ok_or("authRevision is not 8 bytes")?;
                    f(Table::Meta, k, v);
                }
                _ => {}
            },
            b"authUsers" => {
                kvd_api::authpb::User::decode(v).map_err(|e| format!("user {}: {e}", show(k)))?;
                f(Table::AuthUser, k, v);
            }
            b"authRoles" => {
                kvd_api::authpb::Role::decode(v).map_err(|e| format!("role {}: {e}", show(k)))?;
                f(Table::AuthRole, k, v);
            }
            b"alarm" => {
                let a = kvd_api::etcdserverpb::AlarmMember::decode(k)
                    .map_err(|e| format!("{} is not an AlarmMember: {e}", hex(k)))?;
                let mut key = a.member_id.to_be_bytes().to_vec();
                key.extend_from_slice(&(a.alarm as u32).to_be_bytes());
                f(Table::Alarm, &key, &[]);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(summary)
}

/// What the reader learnt besides the rows.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// etcd 3.6's `storageVersion` (3.4 and 3.5 have none).
    pub storage_version: Option<String>,
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// etcd's storage and cluster version that an exported file declares: the
/// schema etcd 3.6 writes (3.5 ignores it).
pub const EXPORT_VERSION: &str = "3.6.0";

/// Writes kvd's rows as `rows` produces them (a table's rows together and
/// in key order, as kvd's snapshots hold them) to `out` as an etcd
/// snapshot: a bbolt file with etcd's buckets, then its SHA-256, which
/// `etcdutl snapshot restore` takes. The reverse of [`read`]: the consistent
/// index and term are kept (etcdutl rewrites them), the storage and cluster
/// version say 3.6, and the membership buckets are empty (a restore writes
/// the new cluster's). Returns the file's size.
pub fn export(
    out: &std::path::Path,
    rows: impl FnOnce(&mut dyn FnMut(Table, &[u8], &[u8])) -> Result<(), super::SnapshotError>,
) -> Result<u64, super::SnapshotError> {
    // Written beside `out` and renamed when whole; a failure leaves neither.
    let part = out.with_extension("part");
    export_to(out, &part, rows).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })
}

fn export_to(
    out: &std::path::Path,
    part: &std::path::Path,
    rows: impl FnOnce(&mut dyn FnMut(Table, &[u8], &[u8])) -> Result<(), super::SnapshotError>,
) -> Result<u64, super::SnapshotError> {
    use std::collections::BTreeMap;

    use super::bbolt::Writer;
    let fail = |e: BoltError| super::SnapshotError::Io { path: out.to_path_buf(), msg: e.to_string() };
    let file = std::fs::File::create(part).map_err(|e| super::io(part, e))?;
    let mut w = Writer::create(file).map_err(fail)?;
    // Streamed: the large tables. Gathered: the small ones, which map to
    // other buckets or other orders.
    let streamed = |t: Table| match t {
        Table::Key => Some(b"key".as_slice()),
        Table::Lease => Some(b"lease".as_slice()),
        Table::AuthUser => Some(b"authUsers".as_slice()),
        Table::AuthRole => Some(b"authRoles".as_slice()),
        Table::Meta | Table::Alarm | Table::KeyMeta | Table::KeyChunk => None,
    };
    let mut small: BTreeMap<&[u8], BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
    for name in [b"alarm".as_slice(), b"auth", b"cluster", b"members", b"members_removed", b"meta"] {
        small.insert(name, BTreeMap::new());
    }
    let (mut open, mut written, mut err) = (None, Vec::new(), None::<String>);
    rows(&mut |t, k, v| {
        if err.is_some() {
            return;
        }
        let res = (|| -> Result<(), String> {
            if let Some(bucket) = streamed(t) {
                if open != Some(t) {
                    w.bucket(bucket).map_err(|e| e.to_string())?;
                    open = Some(t);
                    written.push(bucket);
                }
                let lease;
                let v = if t == Table::Lease {
                    let (id, ttl) = (<[u8; 8]>::try_from(k), <[u8; 8]>::try_from(v));
                    let (Ok(id), Ok(ttl)) = (id, ttl) else { return Err(format!("lease row {}", hex(k))) };
                    let (id, ttl) = (i64::from_be_bytes(id), i64::from_be_bytes(ttl));
                    lease = Lease { id, ttl, remaining_ttl: 0 }.encode_to_vec();
                    &lease[..]
                } else {
                    v
                };
                return w.put(k, v).map_err(|e| e.to_string());
            }
            let meta = crate::mvcc::meta::decode(v);
            match (t, k) {
                (Table::Meta, crate::mvcc::meta::CONSISTENT_INDEX | crate::mvcc::meta::CONSISTENT_TERM) => {
                    small.get_mut(b"meta".as_slice()).expect("meta").insert(k.to_vec(), v.to_vec());
                }
                (Table::Meta, _) if KEPT_META.contains(&k) => {
                    let rev = meta.ok_or_else(|| format!("{} is not 8 bytes", show(k)))?;
                    let key = crate::mvcc::Revision::new(rev as i64, 0).to_key(false);
                    small.get_mut(b"meta".as_slice()).expect("meta").insert(k.to_vec(), key);
                }
                (Table::Meta, crate::auth::AUTH_ENABLED | crate::auth::AUTH_REVISION) => {
                    small.get_mut(b"auth".as_slice()).expect("auth").insert(k.to_vec(), v.to_vec());
                }
                (Table::Alarm, _) => {
                    if k.len() != 12 {
                        return Err(format!("alarm row {}", hex(k)));
                    }
                    let member = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                    let alarm = u32::from_be_bytes(k[8..].try_into().expect("4 bytes"));
                    let a = kvd_api::etcdserverpb::AlarmMember { member_id: member, alarm: alarm as i32 };
                    small.get_mut(b"alarm".as_slice()).expect("alarm").insert(a.encode_to_vec(), Vec::new());
                }
                // Raft's own rows (applied index, membership, snapshot
                // metadata) stay behind, as etcd's snapshots carry none.
                _ => {}
            }
            Ok(())
        })();
        err = res.err();
    })?;
    if let Some(e) = err {
        return Err(super::SnapshotError::Corrupt { path: out.to_path_buf(), reason: e });
    }
    for name in [b"key".as_slice(), b"lease", b"authUsers", b"authRoles"] {
        if !written.contains(&name) {
            w.bucket(name).map_err(fail)?;
        }
    }
    let version = EXPORT_VERSION.as_bytes().to_vec();
    small.get_mut(b"meta".as_slice()).expect("meta").insert(STORAGE_VERSION.to_vec(), version.clone());
    small.get_mut(b"meta".as_slice()).expect("meta").insert(b"confState".to_vec(), br#"{"auto_leave":false}"#.to_vec());
    small.get_mut(b"cluster".as_slice()).expect("cluster").insert(b"clusterVersion".to_vec(), version);
    for (name, rows) in small {
        w.bucket(name).map_err(fail)?;
        for (k, v) in rows {
            w.put(&k, &v).map_err(fail)?;
        }
    }
    let len = w.finish().map_err(fail)?;
    // The SHA-256 etcdctl snapshot save appends.
    let file = std::fs::OpenOptions::new().read(true).append(true).open(part).map_err(|e| super::io(part, e))?;
    let sha = super::sha256_of(part, &file, len)?;
    std::io::Write::write_all(&mut &file, &sha).map_err(|e| super::io(part, e))?;
    file.sync_all().map_err(|e| super::io(part, e))?;
    std::fs::rename(part, out).map_err(|e| super::io(out, e))?;
    Ok(len + sha.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row that cannot be written as etcd's stops the export and leaves
    /// no file behind, finished or not.
    #[test]
    fn a_failed_export_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("etcd.db");
        let err = export(&out, |f| {
            f(Table::Key, &crate::mvcc::Revision::new(2, 0).to_key(false), b"");
            f(Table::Lease, b"short", b"ttl");
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("lease row"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// What export writes, read reads back as the same rows (the raft
    /// rows aside, which etcd's snapshots do not carry).
    #[test]
    fn export_and_read_agree() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("etcd.db");
        let kv = kvd_api::mvccpb::KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"v".to_vec(),
            lease: 7,
        };
        let rows: Vec<(Table, Vec<u8>, Vec<u8>)> = vec![
            (Table::Key, crate::mvcc::Revision::new(2, 0).to_key(false), kv.encode_to_vec()),
            (Table::Meta, crate::mvcc::meta::FINISHED_COMPACT_REV.to_vec(), 1u64.to_be_bytes().to_vec()),
            (Table::Meta, b"raft_membership".to_vec(), b"x".to_vec()),
            (Table::Alarm, [5u64.to_be_bytes().as_slice(), &1u32.to_be_bytes()].concat(), Vec::new()),
            (Table::Lease, 7i64.to_be_bytes().to_vec(), 60i64.to_be_bytes().to_vec()),
        ];
        let len = export(&out, |f| {
            rows.iter().for_each(|(t, k, v)| f(*t, k, v));
            Ok(())
        })
        .unwrap();
        let file = std::fs::File::open(&out).unwrap();
        assert_eq!(file.metadata().unwrap().len(), len);
        let mut back = Vec::new();
        let summary = read(&file, len - 32, |t, k, v| back.push((t, k.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(summary.storage_version.as_deref(), Some(EXPORT_VERSION));
        let mut want: Vec<_> = rows.into_iter().filter(|(_, k, _)| k != b"raft_membership").collect();
        want.sort();
        back.sort();
        assert_eq!(back, want);
    }
}
