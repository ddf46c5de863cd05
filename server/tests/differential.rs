//! Differential test: the same seeded random workload, error cases included,
//! through the same gRPC client to a real etcd and to kvd; every normalised
//! response (or error code and message) must be equal.

mod common;

use common::Proc;
use kvd_api::etcdserverpb::compare::{CompareTarget, TargetUnion};
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::response_op::Response;
use kvd_api::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// Keys: few enough (<= 12 live) that etcd's sort of ties stays stable, so
/// responses compare exactly.
const KEYS: &[&str] = &["a", "a/1", "a/2", "a/3", "b", "b/x", "c", "c/y/z", "d", "e"];

#[derive(Debug, Clone)]
enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

struct Gen {
    rng: StdRng,
    /// etcd before 3.5 accepts unknown sort options; 3.5+ refuses them, as kvd does.
    invalid_sort: bool,
    /// An upper bound on the current revision (for picking revisions).
    rev: i64,
}

impl Gen {
    fn key(&mut self) -> Vec<u8> {
        if self.rng.random_ratio(1, 50) {
            return Vec::new(); // empty key: an error case
        }
        KEYS[self.rng.random_range(0..KEYS.len())].as_bytes().to_vec()
    }

    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.random_range(0..6) {
            0 | 1 => Vec::new(),
            2 => vec![0],
            3 => {
                // prefix end
                let mut e = key.to_vec();
                if let Some(last) = e.last_mut() {
                    *last += 1;
                }
                e
            }
            _ => self.key(),
        }
    }

    fn revision(&mut self) -> i64 {
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(0..=self.rev + 2),
            _ => 0,
        }
    }

    /// Mostly a few bytes; one value in twenty longer than a page, which
    /// the backend stores cut in chunks of 16,350 and 4,060 bytes: within
    /// 100 bytes of 1 to 4 of either. The longer ones repeat the bytes of
    /// the shorter with no more draws: etcd 3.4 panics on some txns whose
    /// puts keep a missing key's value or lease (`unexpected error during
    /// txn: key not found`), and these seeds' workloads, kept as they were,
    /// make none.
    fn value(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..20) {
            0 => {
                let (m, off): (usize, usize) = (self.rng.random_range(1..5), self.rng.random_range(0..200));
                let v = self.bytes(m * 4060 + off - 100);
                match off % 2 {
                    0 => v,
                    _ => v.iter().copied().cycle().take(m * 16_350 + off - 100).collect(),
                }
            }
            _ => {
                let n = self.rng.random_range(0..6);
                self.bytes(n)
            }
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b"xyz01"[self.rng.random_range(0..5)]).collect()
    }

    fn range(&mut self) -> RangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        let mut r = RangeRequest {
            key,
            range_end,
            revision: self.revision(),
            limit: if self.rng.random_ratio(1, 3) { self.rng.random_range(0..4) } else { 0 },
            keys_only: self.rng.random_ratio(1, 5),
            count_only: self.rng.random_ratio(1, 8),
            serializable: self.rng.random_ratio(1, 4),
            ..Default::default()
        };
        if self.rng.random_ratio(1, 3) {
            r.sort_order = self.rng.random_range(0..3);
            r.sort_target = self.rng.random_range(0..5);
            if self.invalid_sort && self.rng.random_ratio(1, 30) {
                r.sort_order = 7; // invalid sort option
            }
        }
        if self.rng.random_ratio(1, 6) {
            let lim = self.rng.random_range(0..=self.rev.max(1));
            match self.rng.random_range(0..4) {
                0 => r.min_mod_revision = lim,
                1 => r.max_mod_revision = lim,
                2 => r.min_create_revision = lim,
                _ => r.max_create_revision = lim,
            }
        }
        r
    }

    fn put(&mut self) -> PutRequest {
        let mut p = PutRequest {
            key: self.key(),
            value: self.value(),
            prev_kv: self.rng.random_ratio(1, 2),
            ..Default::default()
        };
        match self.rng.random_range(0..20) {
            0 => {
                p.ignore_value = true;
                if self.rng.random_ratio(3, 4) {
                    p.value.clear();
                }
            }
            1 => {
                p.ignore_lease = true;
                if self.rng.random_ratio(1, 3) {
                    p.lease = 7;
                }
            }
            2 => p.lease = 12345, // unknown lease
            _ => {}
        }
        p
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        DeleteRangeRequest { range_end: self.range_end(&key), key, prev_kv: self.rng.random_ratio(1, 2) }
    }

    fn compare(&mut self) -> Compare {
        let key = self.key();
        let range_end = if self.rng.random_ratio(1, 4) { self.range_end(&key) } else { Vec::new() };
        let target = self.rng.random_range(0..5);
        let union = match self.rng.random_range(0..6) {
            0 => TargetUnion::Value(self.value()),
            1 => TargetUnion::Version(self.rng.random_range(0..4)),
            2 => TargetUnion::CreateRevision(self.rng.random_range(0..=self.rev)),
            3 => TargetUnion::ModRevision(self.rng.random_range(0..=self.rev)),
            4 => TargetUnion::Lease(0),
            // Match the union to the target most of the time.
            _ => match CompareTarget::try_from(target).unwrap() {
                CompareTarget::Value => TargetUnion::Value(self.value()),
                CompareTarget::Version => TargetUnion::Version(self.rng.random_range(0..4)),
                CompareTarget::Create => TargetUnion::CreateRevision(self.rng.random_range(0..=self.rev)),
                CompareTarget::Mod => TargetUnion::ModRevision(self.rng.random_range(0..=self.rev)),
                CompareTarget::Lease => TargetUnion::Lease(0),
            },
        };
        Compare { result: self.rng.random_range(0..4), target, key, range_end, target_union: Some(union) }
    }

    fn request_op(&mut self, depth: u32) -> RequestOp {
        let request = match self.rng.random_range(0..if depth < 2 { 8 } else { 7 }) {
            0 | 1 => Some(Request::RequestRange(self.range())),
            2..=4 => Some(Request::RequestPut(self.put())),
            5 => Some(Request::RequestDeleteRange(self.delete())),
            6 if self.rng.random_ratio(1, 15) => None, // empty op
            6 => Some(Request::RequestRange(self.range())),
            _ => Some(Request::RequestTxn(self.txn(depth + 1))),
        };
        RequestOp { request }
    }

    fn txn(&mut self, depth: u32) -> TxnRequest {
        let n_ops = |g: &mut Gen| if g.rng.random_ratio(1, 60) { 129 } else { g.rng.random_range(0..4) };
        let nc = self.rng.random_range(0..3);
        let ns = n_ops(self);
        let nf = n_ops(self);
        TxnRequest {
            compare: (0..nc).map(|_| self.compare()).collect(),
            success: (0..ns).map(|_| self.request_op(depth)).collect(),
            failure: (0..nf).map(|_| self.request_op(depth)).collect(),
        }
    }

    fn op(&mut self) -> Op {
        match self.rng.random_range(0..100) {
            0..=29 => Op::Range(self.range()),
            30..=59 => Op::Put(self.put()),
            60..=69 => Op::Delete(self.delete()),
            70..=98 => Op::Txn(self.txn(0)),
            _ => Op::Compact(CompactionRequest {
                revision: self.rng.random_range(0..=self.rev + 1),
                physical: self.rng.random_ratio(1, 2),
            }),
        }
    }
}

/// Only the revision of a header is comparable across servers.
fn norm_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        *h = ResponseHeader { revision: h.revision, ..Default::default() };
    }
}

fn norm_txn(t: &mut TxnResponse) {
    norm_header(&mut t.header);
    for ResponseOp { response } in &mut t.responses {
        match response {
            Some(Response::ResponseRange(r)) => norm_header(&mut r.header),
            Some(Response::ResponsePut(r)) => norm_header(&mut r.header),
            Some(Response::ResponseDeleteRange(r)) => norm_header(&mut r.header),
            Some(Response::ResponseTxn(r)) => norm_txn(r),
            None => {}
        }
    }
}

async fn run(kv: &mut KvClient<Channel>, op: &Op) -> String {
    fn err(s: tonic::Status) -> String {
        format!("ERR {:?} {}", s.code(), s.message())
    }
    match op.clone() {
        Op::Range(r) => match kv.range(r).await {
            Ok(resp) => {
                let mut r = resp.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Put(p) => match kv.put(p).await {
            Ok(resp) => {
                let mut r = resp.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Delete(d) => match kv.delete_range(d).await {
            Ok(resp) => {
                let mut r = resp.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Txn(t) => match kv.txn(t).await {
            Ok(resp) => {
                let mut r = resp.into_inner();
                norm_txn(&mut r);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Compact(c) => match kv.compact(c).await {
            Ok(resp) => {
                let mut r = resp.into_inner();
                norm_header(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
    }
}

/// True when the installed etcd is 3.5 or newer.
fn etcd_at_least_3_5() -> bool {
    let out = std::process::Command::new("etcd").arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.lines().find_map(|l| l.strip_prefix("etcd Version: ")).unwrap_or("0.0");
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (3, 5)
}

fn header_rev(s: &str) -> Option<i64> {
    let i = s.find("revision: ")? + "revision: ".len();
    s[i..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

async fn differential(seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    differential_against(&dir, &kvd, seed, ops).await;
}

/// Runs the workload on a fresh etcd and on `kvd` (any member of a cluster).
async fn differential_against(dir: &tempfile::TempDir, kvd: &Proc, seed: u64, ops: usize) {
    let etcd = Proc::etcd(&dir.path().join("etcd"), &[]);
    etcd.ready().await;
    let mut a = etcd.kv().await;
    let mut b = kvd.kv().await;
    let mut g = Gen { rng: StdRng::seed_from_u64(seed), invalid_sort: etcd_at_least_3_5(), rev: 1 };
    let mut errors = 0;
    for i in 0..ops {
        let op = g.op();
        let ra = run(&mut a, &op).await;
        let rb = run(&mut b, &op).await;
        assert_eq!(ra, rb, "seed {seed}, op #{i} differs:\n  op:   {op:?}\n  etcd: {ra}\n  kvd:  {rb}");
        if ra.starts_with("ERR") {
            errors += 1;
        } else if let Some(r) = header_rev(&ra) {
            g.rev = g.rev.max(r);
        }
    }
    // HashKV is etcd's bit for bit: the same history hashes the same, at
    // the current revision and at older ones (or is refused alike).
    let mut ma =
        kvd_api::etcdserverpb::maintenance_client::MaintenanceClient::connect(etcd.endpoint.clone()).await.unwrap();
    let mut mb = kvd.maintenance().await;
    let mut hashed = 0;
    for revision in [0, g.rev / 2, g.rev * 3 / 4, g.rev - 1] {
        let req = kvd_api::etcdserverpb::HashKvRequest { revision };
        let show = |r: Result<tonic::Response<kvd_api::etcdserverpb::HashKvResponse>, tonic::Status>| match r {
            Ok(r) => format!("hash {} compact {}", r.get_ref().hash, r.get_ref().compact_revision),
            Err(s) => format!("ERR {:?} {}", s.code(), s.message()),
        };
        let (ha, hb) = (show(ma.hash_kv(req).await), show(mb.hash_kv(req).await));
        assert_eq!(ha, hb, "seed {seed}: HashKV at revision {revision}");
        hashed += ha.starts_with("hash") as usize;
    }
    assert!(hashed >= 1, "no HashKV answered");
    // The workload must have exercised both success and error paths.
    assert!(errors > ops / 50, "only {errors} errors in {ops} ops");
    assert!(g.rev > (ops / 10) as i64, "only {} revisions in {ops} ops", g.rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_matches_etcd_seed_1() {
    differential(1, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_matches_etcd_seed_2() {
    differential(2, 1500).await;
}

/// The same workload through a follower of a 3-member cluster: forwarded
/// writes, ReadIndex reads, and every response still equal to etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_through_a_follower_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let members = common::cluster(dir.path(), 3, 41);
    for m in &members {
        m.ready().await;
    }
    let l = common::leader(&members).await;
    let follower = &members[(l + 1) % 3];
    differential_against(&dir, follower, 4, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_matches_etcd_seed_3() {
    differential(3, 2000).await;
}

/// Size limits: a request over --max-request-bytes but under the gRPC limit gets
/// etcd's error; one over the gRPC limit is refused by the transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limits_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let mut a = etcd.kv().await;
    let mut b = kvd.kv().await;
    for size in [1_000_000usize, 1_600_000] {
        let op = Op::Put(PutRequest { key: b"big".to_vec(), value: vec![b'v'; size], ..Default::default() });
        let (ra, rb) = (run(&mut a, &op).await, run(&mut b, &op).await);
        assert_eq!(ra, rb, "put of {size} bytes");
    }
    let op = Op::Put(PutRequest { key: b"huge".to_vec(), value: vec![b'v'; 3 << 20], ..Default::default() });
    let (ra, rb) = (run(&mut a, &op).await, run(&mut b, &op).await);
    assert!(ra.starts_with("ERR ResourceExhausted") && rb.starts_with("ERR ResourceExhausted"), "{ra} / {rb}");
    // Nothing was lost or half-written by the refused requests.
    let get = Op::Range(RangeRequest { key: b"big".to_vec(), keys_only: true, ..Default::default() });
    assert_eq!(run(&mut a, &get).await, run(&mut b, &get).await);
}
