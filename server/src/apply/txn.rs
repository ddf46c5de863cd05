//! Put, DeleteRange and Txn as etcd applies them: compares decide the branch
//! (nested txns included), every op of the chosen path is checked before any
//! runs, then the ops run in order, each seeing the ones before it.

use kvd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::response_op::Response;
use kvd_api::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseRevokeResponse, PutRequest, PutResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use kvd_api::mvccpb::KeyValue;

use super::ApplyError;
use super::range::{check_range, execute_range};
use super::view::{View, WriteView};
use crate::lease::Lessor;
use crate::mvcc::{RangeEnd, RangeOptions};

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: rev, ..Default::default() })
}

/// The lease a put names must exist.
fn check_lease(leases: &Lessor, p: &PutRequest) -> Result<(), ApplyError> {
    if p.lease != 0 && !leases.exists(p.lease) {
        return Err(ApplyError::LeaseNotFound);
    }
    Ok(())
}

fn prev_kv(view: &dyn View, p: &PutRequest) -> Result<Option<KeyValue>, ApplyError> {
    if !(p.ignore_value || p.ignore_lease || p.prev_kv) {
        return Ok(None);
    }
    let rr = view.range(&p.key, RangeEnd::Single, RangeOptions::default())?;
    let prev = rr.kvs.into_iter().next();
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(ApplyError::KeyNotFound);
    }
    Ok(prev)
}

fn check_put(view: &dyn View, leases: &Lessor, p: &PutRequest) -> Result<(), ApplyError> {
    check_lease(leases, p)?;
    prev_kv(view, p).map(|_| ())
}

/// Applies a Put.
pub fn put(w: &mut dyn WriteView, leases: &Lessor, p: &PutRequest) -> Result<PutResponse, ApplyError> {
    check_lease(leases, p)?;
    let prev = prev_kv(w, p)?;
    Ok(put_checked(w, leases, p, prev))
}

fn put_checked(w: &mut dyn WriteView, leases: &Lessor, p: &PutRequest, prev: Option<KeyValue>) -> PutResponse {
    let value = match (&prev, p.ignore_value) {
        (Some(kv), true) => kv.value.as_slice(),
        _ => p.value.as_slice(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(kv), true) => kv.lease,
        _ => p.lease,
    };
    let rev = w.put(&p.key, value, lease);
    leases.attach(&p.key, lease);
    PutResponse { header: header(rev), prev_kv: if p.prev_kv { prev } else { None } }
}

/// Applies a DeleteRange.
pub fn delete_range(
    w: &mut dyn WriteView,
    leases: &Lessor,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ApplyError> {
    let end = RangeEnd::from_request(&d.range_end);
    let prev_kvs = if d.prev_kv { w.range(&d.key, end, RangeOptions::default())?.kvs } else { Vec::new() };
    let deleted = w.delete_range(&d.key, end);
    for k in &deleted {
        leases.detach(k);
    }
    Ok(DeleteRangeResponse { header: header(w.rev()), deleted: deleted.len() as i64, prev_kvs })
}

/// Applies a LeaseRevoke: the lease's keys are deleted in one revision.
pub fn lease_revoke(w: &mut dyn WriteView, leases: &Lessor, id: i64) -> Result<LeaseRevokeResponse, ApplyError> {
    let mut keys = leases.revoke(id).map_err(|_| ApplyError::LeaseNotFound)?;
    keys.sort();
    for k in keys {
        w.delete_range(&k, RangeEnd::Single);
    }
    Ok(LeaseRevokeResponse { header: header(w.rev()) })
}

/// True when no op (recursively) writes.
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// True when the txn only reads, serializably.
pub fn is_serializable(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| matches!(&op.request, Some(Request::RequestRange(r)) if r.serializable))
}

/// Evaluates the compares of `t` and of the nested txns on the chosen branches,
/// depth first, as etcd's compareToPath.
fn compare_path(view: &dyn View, t: &TxnRequest, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| apply_compare(view, c));
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(Request::RequestTxn(nested)) = &op.request {
            compare_path(view, nested, path);
        }
    }
}

fn apply_compare(view: &dyn View, c: &Compare) -> bool {
    let Ok(rr) = view.range(&c.key, RangeEnd::from_request(&c.range_end), RangeOptions::default()) else {
        return false;
    };
    if rr.kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            // A missing key has no value to compare.
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let num = |want: Option<i64>, have: i64| have.cmp(&want.unwrap_or(0));
    let ord: Ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => num(
            match c.target_union {
                Some(TargetUnion::CreateRevision(r)) => Some(r),
                _ => None,
            },
            kv.create_revision,
        ),
        Ok(CompareTarget::Mod) => num(
            match c.target_union {
                Some(TargetUnion::ModRevision(r)) => Some(r),
                _ => None,
            },
            kv.mod_revision,
        ),
        Ok(CompareTarget::Version) => num(
            match c.target_union {
                Some(TargetUnion::Version(r)) => Some(r),
                _ => None,
            },
            kv.version,
        ),
        Ok(CompareTarget::Lease) => num(
            match c.target_union {
                Some(TargetUnion::Lease(r)) => Some(r),
                _ => None,
            },
            kv.lease,
        ),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

/// Which ops a checking pass looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

/// Checks the ops on the chosen path before anything runs: etcd 3.5 checks
/// every put first (lease, ignore_* on a missing key), then every range
/// (compacted or future revision).
fn check_path(
    view: &dyn View,
    leases: &Lessor,
    t: &TxnRequest,
    path: &[bool],
    pass: Check,
) -> Result<usize, ApplyError> {
    let mut used = 0;
    let ops = if path[0] { &t.success } else { &t.failure };
    let mut rest = &path[1..];
    for op in ops {
        match &op.request {
            Some(Request::RequestRange(r)) if pass == Check::Ranges => check_range(view, r)?,
            Some(Request::RequestPut(p)) if pass == Check::Puts => check_put(view, leases, p)?,
            Some(Request::RequestTxn(nested)) => {
                let n = check_path(view, leases, nested, rest, pass)?;
                used += n + 1;
                rest = &rest[n + 1..];
            }
            _ => {}
        }
    }
    Ok(used)
}

/// Runs a validated txn. `w` is a write view for txns that write; read-only
/// txns may pass a view whose writes are never called.
pub fn txn(w: &mut dyn WriteView, leases: &Lessor, t: &TxnRequest) -> Result<TxnResponse, ApplyError> {
    let mut path = Vec::new();
    compare_path(w, t, &mut path);
    check_path(w, leases, t, &path, Check::Puts)?;
    check_path(w, leases, t, &path, Check::Ranges)?;
    let mut resp = TxnResponse::default();
    execute(w, leases, t, &path, &mut resp)?;
    // Only the outermost response carries the revision (nested ones stay zero, as in etcd).
    resp.header = header(w.rev());
    Ok(resp)
}

fn execute(
    w: &mut dyn WriteView,
    leases: &Lessor,
    t: &TxnRequest,
    path: &[bool],
    resp: &mut TxnResponse,
) -> Result<usize, ApplyError> {
    let succeeded = path[0];
    let ops: &[RequestOp] = if succeeded { &t.success } else { &t.failure };
    let mut rest = &path[1..];
    let mut used = 0;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let r = match &op.request {
            Some(Request::RequestRange(r)) => Some(Response::ResponseRange(execute_range(w, r)?)),
            Some(Request::RequestPut(p)) => {
                let prev = prev_kv(w, p)?;
                Some(Response::ResponsePut(put_checked(w, leases, p, prev)))
            }
            Some(Request::RequestDeleteRange(d)) => Some(Response::ResponseDeleteRange(delete_range(w, leases, d)?)),
            Some(Request::RequestTxn(nested)) => {
                let mut nr = TxnResponse::default();
                let n = execute(w, leases, nested, rest, &mut nr)?;
                used += n + 1;
                rest = &rest[n + 1..];
                Some(Response::ResponseTxn(nr))
            }
            None => None,
        };
        responses.push(ResponseOp { response: r });
    }
    resp.succeeded = succeeded;
    resp.responses = responses;
    resp.header = Some(ResponseHeader::default());
    Ok(used)
}
