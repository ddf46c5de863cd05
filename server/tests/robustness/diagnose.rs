//! When a check fails: what each member holds, to tell a wrong answer from a
//! diverged replica. Finds the first revision at which the members' HashKV
//! differ, and shows the watched events and each member's view of a key
//! around the revisions involved.

use std::fmt::Write;

use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kvd_api::etcdserverpb::{HashKvRequest, RangeRequest};
use tonic::transport::Channel;

use crate::watch_check::Seen;

async fn hash_at(endpoint: &str, rev: i64) -> Option<u32> {
    let mut m = MaintenanceClient::new(Channel::from_shared(endpoint.to_string()).unwrap().connect_lazy());
    m.hash_kv(HashKvRequest { revision: rev }).await.ok().map(|r| r.into_inner().hash)
}

/// The first revision in `lo..=hi` where the members' hashes differ.
async fn first_divergence(endpoints: &[String], mut lo: i64, mut hi: i64) -> Option<i64> {
    let differ = |rev: i64| async move {
        let mut hs = Vec::new();
        for e in endpoints {
            hs.push(hash_at(e, rev).await);
        }
        hs.windows(2).any(|w| w[0] != w[1])
    };
    if !differ(hi).await {
        return None;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if differ(mid).await {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// Each member's value of `key` at `rev`, serializable.
async fn views(endpoints: &[String], key: &[u8], rev: i64) -> String {
    let mut out = String::new();
    for (i, e) in endpoints.iter().enumerate() {
        let mut kv = KvClient::new(Channel::from_shared(e.clone()).unwrap().connect_lazy());
        let req = RangeRequest { key: key.to_vec(), revision: rev, serializable: true, ..Default::default() };
        let got = match kv.range(req).await {
            Ok(r) => match r.into_inner().kvs.into_iter().next() {
                Some(kv) => format!("{} @{}", String::from_utf8_lossy(&kv.value), kv.mod_revision),
                None => "absent".into(),
            },
            Err(s) => format!("error {}", s.message()),
        };
        let _ = write!(out, " m{i}: {got};");
    }
    out
}

/// A report for a failed run: divergence, events and views around `revs`.
pub async fn report(endpoints: &[String], seen: &[Seen], key: &[u8], revs: &[i64], first: i64, last: i64) -> String {
    let mut out = String::new();
    match first_divergence(endpoints, first, last).await {
        Some(r) => {
            let _ = writeln!(out, "members' HashKV first differ at revision {r}");
            let _ = writeln!(
                out,
                "  watched around it: {:?}",
                seen.iter().filter(|s| (s.rev - r).abs() <= 3).collect::<Vec<_>>()
            );
        }
        None => {
            let _ = writeln!(out, "members' HashKV agree at every revision up to {last}");
        }
    }
    for &r in revs {
        let _ = writeln!(out, "revision {r}:");
        let near: Vec<&Seen> = seen.iter().filter(|s| (s.rev - r).abs() <= 3).collect();
        let _ = writeln!(out, "  watched: {near:?}");
        for at in [r - 1, r, r + 1] {
            let _ = writeln!(out, "  key at {at}:{}", views(endpoints, key, at).await);
        }
    }
    out
}
