//! `kvctl bench list`: Kubernetes' LIST, as kube-apiserver sends it to etcd.
//! Each client lists every key under a prefix in pages of `--limit` keys:
//! the first page a linearizable Range of the prefix, each next one a Range
//! from just after the last key returned, at the first page's revision (the
//! continue token's key and resource version), until the response says
//! there is no more; then it lists again. With `--limit 0` a LIST is one
//! unpaginated Range of the whole prefix. Every page is one request of the
//! report; the report also counts whole LISTs and the keys read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Args;
use kvd::etcdserver::prefix_end;
use kvd_api::etcdserverpb::{RangeRequest, RangeResponse};
use tonic::Status;
use tonic::codegen::http::Uri;

use super::unary::{UnaryConn, unary_connections};
use super::{Caller, Common, Report, drive};

#[derive(Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// The prefix to list (every key that starts with it).
    pub(super) prefix: String,
    /// Keys per page, as kube-apiserver's `limit` (0: one Range of everything).
    #[arg(long, default_value_t = 500)]
    pub(super) limit: i64,
}

/// What the clients have read, over all of them.
#[derive(Default)]
struct Counts {
    lists: AtomicU64,
    keys: AtomicU64,
}

/// One client's LIST in progress: where its next page starts, and at which
/// revision (0 before the first page).
struct Lister {
    conn: UnaryConn,
    range: Uri,
    prefix: Vec<u8>,
    end: Vec<u8>,
    limit: i64,
    next: Option<(Vec<u8>, i64)>,
    counts: Arc<Counts>,
}

impl Caller for Lister {
    async fn call(&mut self, _: &mut u64, _: u64) -> Result<(), Status> {
        let (key, revision) = self.next.take().unwrap_or_else(|| (self.prefix.clone(), 0));
        let req = RangeRequest { key, range_end: self.end.clone(), limit: self.limit, revision, ..Default::default() };
        let resp: RangeResponse = self.conn.call(&self.range, &req).await?;
        self.counts.keys.fetch_add(resp.kvs.len() as u64, Ordering::Relaxed);
        match resp.kvs.last() {
            Some(last) if resp.more => {
                // The continue token: just after the last key, at the LIST's revision.
                let mut from = last.key.clone();
                from.push(0);
                let rev = if revision == 0 { resp.header.map_or(0, |h| h.revision) } else { revision };
                self.next = Some((from, rev));
            }
            _ => {
                self.counts.lists.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

pub(super) async fn list(a: &ListArgs) -> Result<Report, String> {
    let counts = Arc::new(Counts::default());
    let prefix = a.prefix.clone().into_bytes();
    let end = prefix_end(&prefix);
    let callers = unary_connections(&a.common)
        .await?
        .into_iter()
        .cycle()
        .take(a.common.clients.max(1))
        .map(|conn| Lister {
            range: conn.method("/etcdserverpb.KV/Range"),
            conn,
            prefix: prefix.clone(),
            end: end.clone(),
            limit: a.limit,
            next: None,
            counts: counts.clone(),
        })
        .collect();
    let mut report = drive(&a.common, callers).await?;
    let secs = report.took.as_secs_f64().max(1e-9);
    let (lists, keys) = (counts.lists.load(Ordering::Relaxed), counts.keys.load(Ordering::Relaxed));
    report.extra = vec![
        ("lists", lists as f64),
        ("lists_per_second", lists as f64 / secs),
        ("keys_per_second", keys as f64 / secs),
    ];
    Ok(report)
}
