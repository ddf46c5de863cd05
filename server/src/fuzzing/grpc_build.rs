//! Requests for the `grpc_requests` fuzz target (grpc.rs), built field by
//! field from the input's chunks, so that mutations reach past the decoder
//! into each method's checks.

use kvd_api::etcdserverpb as pb;
use kvd_api::v3electionpb as el;
use kvd_api::v3lockpb as lk;
use prost::Message;

/// Field values taken from the input, in order; zeros once it runs out.
struct Fields<'a>(Vec<&'a [u8]>);

impl Fields<'_> {
    fn bytes(&mut self) -> Vec<u8> {
        if self.0.is_empty() { Vec::new() } else { self.0.remove(0).to_vec() }
    }
    fn string(&mut self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
    fn int(&mut self) -> i64 {
        let b = self.bytes();
        let mut v = [0u8; 8];
        v[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
        // Small values most of the time: they name leases, revisions, ids
        // that exist.
        let n = i64::from_le_bytes(v);
        if b.len() <= 1 { n % 16 } else { n }
    }
    fn flag(&mut self) -> bool {
        self.int() & 1 == 1
    }
}

fn range(f: &mut Fields) -> pb::RangeRequest {
    pb::RangeRequest {
        key: f.bytes(),
        range_end: f.bytes(),
        limit: f.int(),
        revision: f.int(),
        sort_order: f.int() as i32,
        sort_target: f.int() as i32,
        serializable: f.flag(),
        keys_only: f.flag(),
        count_only: f.flag(),
        min_mod_revision: f.int(),
        max_mod_revision: f.int(),
        min_create_revision: f.int(),
        max_create_revision: f.int(),
    }
}

fn put(f: &mut Fields) -> pb::PutRequest {
    pb::PutRequest {
        key: f.bytes(),
        value: f.bytes(),
        lease: f.int(),
        prev_kv: f.flag(),
        ignore_value: f.flag(),
        ignore_lease: f.flag(),
    }
}

fn op(f: &mut Fields, depth: u32) -> pb::RequestOp {
    use pb::request_op::Request as R;
    let r = match f.int() % 4 {
        0 => R::RequestRange(range(f)),
        1 => R::RequestPut(put(f)),
        2 => R::RequestDeleteRange(pb::DeleteRangeRequest { key: f.bytes(), range_end: f.bytes(), prev_kv: f.flag() }),
        _ if depth < 3 => R::RequestTxn(txn(f, depth + 1)),
        _ => R::RequestRange(range(f)),
    };
    pb::RequestOp { request: Some(r) }
}

fn txn(f: &mut Fields, depth: u32) -> pb::TxnRequest {
    use pb::compare::TargetUnion as T;
    let compares = (0..f.int().rem_euclid(3))
        .map(|_| pb::Compare {
            result: f.int() as i32,
            target: f.int() as i32,
            key: f.bytes(),
            range_end: f.bytes(),
            target_union: Some(match f.int() % 5 {
                0 => T::Version(f.int()),
                1 => T::CreateRevision(f.int()),
                2 => T::ModRevision(f.int()),
                3 => T::Value(f.bytes()),
                _ => T::Lease(f.int()),
            }),
        })
        .collect();
    let success = (0..f.int().rem_euclid(3)).map(|_| op(f, depth)).collect();
    let failure = (0..f.int().rem_euclid(3)).map(|_| op(f, depth)).collect();
    pb::TxnRequest { compare: compares, success, failure }
}

fn permission(f: &mut Fields) -> Option<kvd_api::authpb::Permission> {
    Some(kvd_api::authpb::Permission { perm_type: f.int() as i32, key: f.bytes(), range_end: f.bytes() })
}

/// A request for the method at `path`, built from `chunks` and encoded (one
/// frame per message for streams).
pub fn build(path: &str, chunks: Vec<&[u8]>) -> Vec<Vec<u8>> {
    let f = &mut Fields(chunks);
    use pb::watch_request::RequestUnion as W;
    let one = |msg: &dyn Fn(&mut Fields) -> Vec<u8>, f: &mut Fields| vec![msg(f)];
    match path.rsplit('/').next().unwrap_or_default() {
        "Range" => one(&|f| range(f).encode_to_vec(), f),
        "RangeStream" => one(&|f| range(f).encode_to_vec(), f),
        "Put" => one(&|f| put(f).encode_to_vec(), f),
        "DeleteRange" => {
            vec![pb::DeleteRangeRequest { key: f.bytes(), range_end: f.bytes(), prev_kv: f.flag() }.encode_to_vec()]
        }
        "Txn" => vec![txn(f, 0).encode_to_vec()],
        "Compact" => vec![pb::CompactionRequest { revision: f.int(), physical: f.flag() }.encode_to_vec()],
        "Watch" => (0..f.int().rem_euclid(4) + 1)
            .map(|_| {
                let r = match f.int() % 3 {
                    0 => W::CreateRequest(pb::WatchCreateRequest {
                        key: f.bytes(),
                        range_end: f.bytes(),
                        start_revision: f.int(),
                        progress_notify: f.flag(),
                        filters: vec![f.int() as i32],
                        prev_kv: f.flag(),
                        watch_id: f.int(),
                        fragment: f.flag(),
                    }),
                    1 => W::CancelRequest(pb::WatchCancelRequest { watch_id: f.int() }),
                    _ => W::ProgressRequest(pb::WatchProgressRequest {}),
                };
                pb::WatchRequest { request_union: Some(r) }.encode_to_vec()
            })
            .collect(),
        "LeaseGrant" => vec![pb::LeaseGrantRequest { ttl: f.int(), id: f.int() }.encode_to_vec()],
        "LeaseRevoke" => vec![pb::LeaseRevokeRequest { id: f.int() }.encode_to_vec()],
        "LeaseKeepAlive" => {
            (0..f.int().rem_euclid(3) + 1).map(|_| pb::LeaseKeepAliveRequest { id: f.int() }.encode_to_vec()).collect()
        }
        "LeaseTimeToLive" => vec![pb::LeaseTimeToLiveRequest { id: f.int(), keys: f.flag() }.encode_to_vec()],
        "MemberAdd" => {
            vec![pb::MemberAddRequest { peer_ur_ls: vec![f.string()], is_learner: f.flag() }.encode_to_vec()]
        }
        "MemberRemove" => vec![pb::MemberRemoveRequest { id: f.int() as u64 }.encode_to_vec()],
        "MemberUpdate" => {
            vec![pb::MemberUpdateRequest { id: f.int() as u64, peer_ur_ls: vec![f.string()] }.encode_to_vec()]
        }
        "MemberList" => vec![pb::MemberListRequest { linearizable: f.flag() }.encode_to_vec()],
        "MemberPromote" => vec![pb::MemberPromoteRequest { id: f.int() as u64 }.encode_to_vec()],
        "Alarm" => vec![
            pb::AlarmRequest { action: f.int() as i32, member_id: f.int() as u64, alarm: f.int() as i32 }
                .encode_to_vec(),
        ],
        "HashKV" => vec![pb::HashKvRequest { revision: f.int() }.encode_to_vec()],
        "MoveLeader" => vec![pb::MoveLeaderRequest { target_id: f.int() as u64 }.encode_to_vec()],
        "Downgrade" => vec![pb::DowngradeRequest { action: f.int() as i32, version: f.string() }.encode_to_vec()],
        "Authenticate" => vec![pb::AuthenticateRequest { name: f.string(), password: f.string() }.encode_to_vec()],
        "UserAdd" => vec![
            pb::AuthUserAddRequest {
                name: f.string(),
                password: f.string(),
                options: Some(kvd_api::authpb::UserAddOptions { no_password: f.flag() }),
                hashed_password: f.string(),
            }
            .encode_to_vec(),
        ],
        "UserGet" => vec![pb::AuthUserGetRequest { name: f.string() }.encode_to_vec()],
        "UserDelete" => vec![pb::AuthUserDeleteRequest { name: f.string() }.encode_to_vec()],
        "UserChangePassword" => vec![
            pb::AuthUserChangePasswordRequest { name: f.string(), password: f.string(), hashed_password: f.string() }
                .encode_to_vec(),
        ],
        "UserGrantRole" => vec![pb::AuthUserGrantRoleRequest { user: f.string(), role: f.string() }.encode_to_vec()],
        "UserRevokeRole" => vec![pb::AuthUserRevokeRoleRequest { name: f.string(), role: f.string() }.encode_to_vec()],
        "RoleAdd" => vec![pb::AuthRoleAddRequest { name: f.string() }.encode_to_vec()],
        "RoleGet" => vec![pb::AuthRoleGetRequest { role: f.string() }.encode_to_vec()],
        "RoleDelete" => vec![pb::AuthRoleDeleteRequest { role: f.string() }.encode_to_vec()],
        "RoleGrantPermission" => {
            vec![pb::AuthRoleGrantPermissionRequest { name: f.string(), perm: permission(f) }.encode_to_vec()]
        }
        "RoleRevokePermission" => vec![
            pb::AuthRoleRevokePermissionRequest { role: f.string(), key: f.bytes(), range_end: f.bytes() }
                .encode_to_vec(),
        ],
        "Campaign" => vec![el::CampaignRequest { name: f.bytes(), lease: f.int(), value: f.bytes() }.encode_to_vec()],
        "Proclaim" => vec![el::ProclaimRequest { leader: Some(leader_key(f)), value: f.bytes() }.encode_to_vec()],
        "Leader" | "Observe" => vec![el::LeaderRequest { name: f.bytes() }.encode_to_vec()],
        "Resign" => vec![el::ResignRequest { leader: Some(leader_key(f)) }.encode_to_vec()],
        "Lock" => vec![lk::LockRequest { name: f.bytes(), lease: f.int() }.encode_to_vec()],
        "Unlock" => vec![lk::UnlockRequest { key: f.bytes() }.encode_to_vec()],
        // Methods whose requests have no fields.
        _ => vec![Vec::new()],
    }
}

fn leader_key(f: &mut Fields) -> el::LeaderKey {
    el::LeaderKey { name: f.bytes(), key: f.bytes(), rev: f.int(), lease: f.int() }
}
