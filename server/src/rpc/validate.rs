//! Request checks done before anything else, as etcd's v3rpc does them
//! (`checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`, `checkIntervals`).

use std::collections::HashSet;

use kvd_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// Errors of request validation (etcd's rpctypes that v3rpc returns directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

pub fn check_range(r: &RangeRequest) -> Result {
    if r.key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(ValidationError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result {
    if r.key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ValidationError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ValidationError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result {
    if r.key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    Ok(())
}

/// Checks a txn's size and ops, then that no put overlaps another put or a
/// delete within one branch.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result {
    check_txn_ops(r, max_txn_ops as i64, 0)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// Deepest txn nesting accepted. etcd has no explicit bound; kvd needs one so
/// that an accepted request always decodes again inside its raft entry
/// (prost's recursion limit is 100 levels of messages).
pub const MAX_TXN_DEPTH: usize = 32;

fn check_txn_ops(r: &TxnRequest, max_ops: i64, depth: usize) -> Result {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops || depth > MAX_TXN_DEPTH {
        return Err(ValidationError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ValidationError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - opc, depth)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64, depth: usize) -> Result {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(p)) => check_put(p),
        Some(Request::RequestDeleteRange(d)) => check_delete(d),
        Some(Request::RequestTxn(t)) => check_txn_ops(t, max_ops, depth + 1),
        None => Err(ValidationError::KeyNotFound),
    }
}

/// Delete intervals with etcd's "affine string" bounds: `[begin, end)`, where
/// an empty end is +infinity.
#[derive(Default)]
struct Deletes(Vec<(Vec<u8>, Vec<u8>)>);

impl Deletes {
    fn insert(&mut self, d: &DeleteRangeRequest) {
        let end = if d.range_end.is_empty() {
            let mut e = d.key.clone();
            e.push(0);
            e
        } else {
            d.range_end.clone()
        };
        self.0.push((d.key.clone(), end));
    }

    fn contains(&self, k: &[u8]) -> bool {
        self.0.iter().any(|(b, e)| b.as_slice() <= k && (e.is_empty() || k < e.as_slice()))
    }
}

fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes)> {
    let mut dels = Deletes::default();
    for op in reqs {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            dels.insert(d);
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(ValidationError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // Then and else are exclusive: the same key in both is fine.
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.contains(&k) {
                return Err(ValidationError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || dels.contains(&p.key) {
            return Err(ValidationError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { success, failure, ..Default::default() }
    }

    #[test]
    fn duplicate_puts_and_overlapping_deletes() {
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), Err(ValidationError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128), Err(ValidationError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![del("a", "c"), put("c")], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![del("a", ""), del("a", "")], vec![]), 128), Ok(()));
        // "\0" as a delete's end is compared as a plain string, as etcd does.
        assert_eq!(check_txn(&txn(vec![del("a", "\0"), put("b")], vec![]), 128), Ok(()));
        // then/else of one nested txn may write the same key.
        let nested = RequestOp { request: Some(Request::RequestTxn(txn(vec![put("x")], vec![put("x")]))) };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![nested, put("x")], vec![]), 128), Err(ValidationError::DuplicateKey));
    }

    #[test]
    fn nesting_is_bounded() {
        fn nest(depth: usize) -> TxnRequest {
            let mut t = txn(vec![put("k")], vec![]);
            for _ in 0..depth {
                t = txn(vec![RequestOp { request: Some(Request::RequestTxn(t)) }], vec![]);
            }
            t
        }
        assert_eq!(check_txn(&nest(MAX_TXN_DEPTH), 1000), Ok(()));
        assert_eq!(check_txn(&nest(MAX_TXN_DEPTH + 1), 1000), Err(ValidationError::TooManyOps));
        // What is accepted still decodes inside a raft entry.
        use prost::Message;
        let req = kvd_api::etcdserverpb::InternalRaftRequest { txn: Some(nest(MAX_TXN_DEPTH)), ..Default::default() };
        assert!(kvd_api::etcdserverpb::InternalRaftRequest::decode(req.encode_to_vec().as_slice()).is_ok());
    }

    #[test]
    fn op_limits_and_empty_ops() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(many, vec![]), 128), Err(ValidationError::TooManyOps));
        assert_eq!(check_txn(&txn(vec![RequestOp { request: None }], vec![]), 128), Err(ValidationError::KeyNotFound));
        assert_eq!(
            check_put(&PutRequest {
                key: b"k".to_vec(),
                ignore_value: true,
                value: b"v".to_vec(),
                ..Default::default()
            }),
            Err(ValidationError::ValueProvided)
        );
    }
}
