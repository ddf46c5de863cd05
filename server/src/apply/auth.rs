//! Auth at apply: the entry's user (from its header) must be allowed to do
//! what the entry does, checked against the auth store as it is now, so a
//! permission revoked after the request was proposed is already in force.
//! Entries without a header are the server's own (lease expiry, alarms,
//! compaction) and are not checked.

use kvd_api::authpb::permission::Type;
use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::{InternalRaftRequest, TxnRequest};

use crate::auth::{AuthError, AuthInfo, AuthStore, is_auth_change};
use crate::lease::Lessor;

/// Checks the entry's permissions.
pub fn check(store: &AuthStore, leases: &Lessor, r: &InternalRaftRequest) -> Result<(), AuthError> {
    let Some(h) = &r.header else { return Ok(()) };
    if !store.enabled() && r.auth_enable.is_none() {
        return Ok(());
    }
    let info = AuthInfo { username: h.username.clone(), revision: h.auth_revision };
    if is_auth_change(r) && r.authenticate.is_none() {
        return store.check_admin(&info);
    }
    if let Some(p) = &r.put {
        store.check_range(&info, &p.key, &[], Type::Write)?;
        check_lease_keys(store, leases, &info, p.lease)?;
    }
    if let Some(d) = &r.delete_range {
        store.check_range(&info, &d.key, &d.range_end, Type::Write)?;
        if d.prev_kv {
            store.check_range(&info, &d.key, &d.range_end, Type::Read)?;
        }
    }
    if let Some(t) = &r.txn {
        check_txn(store, leases, &info, t)?;
    }
    if let Some(l) = &r.lease_revoke {
        check_lease_keys(store, leases, &info, l.id)?;
    }
    Ok(())
}

/// A txn needs read on every compare and on both branches' ranges, write on
/// their puts and deletes, recursively, as etcd's checkTxnAuth.
pub fn check_txn(store: &AuthStore, leases: &Lessor, info: &AuthInfo, t: &TxnRequest) -> Result<(), AuthError> {
    for c in &t.compare {
        store.check_range(info, &c.key, &c.range_end, Type::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => store.check_range(info, &r.key, &r.range_end, Type::Read)?,
            Some(Request::RequestPut(p)) => {
                store.check_range(info, &p.key, &[], Type::Write)?;
                check_lease_keys(store, leases, info, p.lease)?;
            }
            Some(Request::RequestDeleteRange(d)) => {
                store.check_range(info, &d.key, &d.range_end, Type::Write)?;
                if d.prev_kv {
                    store.check_range(info, &d.key, &d.range_end, Type::Read)?;
                }
            }
            Some(Request::RequestTxn(nested)) => check_txn(store, leases, info, nested)?,
            None => {}
        }
    }
    Ok(())
}

/// Using or revoking a lease needs write permission on every key attached
/// to it (whoever could not delete them must not make them go away).
fn check_lease_keys(store: &AuthStore, leases: &Lessor, info: &AuthInfo, lease: i64) -> Result<(), AuthError> {
    if lease == 0 || store.check_admin(info).is_ok() {
        return Ok(());
    }
    for k in leases.keys(lease) {
        store.check_range(info, &k, &[], Type::Write)?;
    }
    Ok(())
}
