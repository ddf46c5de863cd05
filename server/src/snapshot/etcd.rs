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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}
