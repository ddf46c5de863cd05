//! Quota: is there room in the backend for this request? The cost model is
//! etcd's: Put = 256 + key + value, Txn = its larger branch (recursively),
//! LeaseGrant = 64, everything else 0.

use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};

/// Per-key overhead etcd charges for a put.
const KV_OVERHEAD: u64 = 256;
/// What a lease grant costs.
pub const LEASE_GRANT_COST: u64 = 64;

pub fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

fn branch_cost(ops: &[RequestOp]) -> u64 {
    ops.iter()
        .map(|op| match &op.request {
            Some(Request::RequestPut(p)) => put_cost(p),
            Some(Request::RequestTxn(t)) => txn_cost(t),
            _ => 0,
        })
        .sum()
}

pub fn txn_cost(t: &TxnRequest) -> u64 {
    branch_cost(&t.success).max(branch_cost(&t.failure))
}

/// The backend quota. A negative configured quota disables it; zero means the default.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    limit: Option<u64>,
}

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 << 30;

impl Quota {
    pub fn new(configured: i64) -> Self {
        let limit = match configured {
            q if q < 0 => None,
            0 => Some(DEFAULT_QUOTA_BYTES as u64),
            q => Some(q as u64),
        };
        Self { limit }
    }

    /// The effective limit in bytes (0 when disabled), for Status and metrics.
    pub fn limit(&self) -> u64 {
        self.limit.unwrap_or(0)
    }

    /// True if a request of `cost` fits next to `backend_size`.
    pub fn available(&self, backend_size: u64, cost: u64) -> bool {
        match self.limit {
            _ if cost == 0 => true,
            None => true,
            Some(l) => backend_size + cost < l,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvd_api::etcdserverpb::request_op::Request;

    fn put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest { key: k.into(), value: v.into(), ..Default::default() })),
        }
    }

    #[test]
    fn txn_cost_takes_larger_branch_recursively() {
        let inner = TxnRequest { success: vec![put("a", "1"), put("b", "22")], ..Default::default() };
        let t = TxnRequest {
            success: vec![put("k", "v")],
            failure: vec![RequestOp { request: Some(Request::RequestTxn(inner)) }],
            ..Default::default()
        };
        assert_eq!(txn_cost(&t), (256 + 2) + (256 + 3));
    }

    #[test]
    fn quota_limits() {
        let q = Quota::new(1000);
        assert!(q.available(500, 499));
        assert!(!q.available(500, 500));
        assert!(q.available(5000, 0));
        assert!(Quota::new(-1).available(u64::MAX / 2, 10));
        assert_eq!(Quota::new(0).limit(), 2 << 30);
    }
}
