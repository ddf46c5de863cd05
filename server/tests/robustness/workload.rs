//! Concurrent clients that run a random mix of etcd operations on a few keys
//! and record every call and answer with its times. Values are unique; each
//! lease is granted for one put. A client whose member fails moves on to the
//! next member; a write whose answer it did not get is recorded as Unknown.

use std::time::{Duration, Instant};

use kvd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::lease_client::LeaseClient;
use kvd_api::etcdserverpb::request_op::Request as Req;
use kvd_api::etcdserverpb::response_op::Response as Resp;
use kvd_api::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::checker::Operation;
use super::model::{Input, Output};

pub type KvOp = Operation<Input, Output>;

/// One recorded operation and the key it touched.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub key: usize,
    /// The member the client sent it to.
    pub member: usize,
    pub op: KvOp,
}

pub fn key_name(k: usize) -> Vec<u8> {
    format!("rb/{k:02}").into_bytes()
}

pub fn parse_value(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// Nanoseconds since the run's start.
fn now(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

struct Client {
    id: usize,
    endpoints: Vec<String>,
    at: usize,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    seq: u64,
    /// Leases this client attached to a put, not yet revoked: (lease, key).
    leases: Vec<(i64, usize)>,
    /// The value this client last saw per key: what its compare-and-swaps expect.
    seen: Vec<Option<u64>>,
}

fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

impl Client {
    fn new(id: usize, endpoints: Vec<String>, keys: usize) -> Client {
        let at = id % endpoints.len();
        let ch = channel(&endpoints[at]);
        let (kv, lease) = (KvClient::new(ch.clone()), LeaseClient::new(ch));
        Client { id, at, kv, lease, endpoints, seq: 0, leases: vec![], seen: vec![None; keys] }
    }

    /// After an error: the next member.
    fn next_member(&mut self) {
        self.at = (self.at + 1) % self.endpoints.len();
        let ch = channel(&self.endpoints[self.at]);
        self.kv = KvClient::new(ch.clone());
        self.lease = LeaseClient::new(ch);
    }

    fn value(&mut self) -> u64 {
        self.seq += 1;
        ((self.id as u64) << 32) | self.seq
    }

    /// Runs one random operation; returns what to record, if anything.
    async fn one(&mut self, rng: &mut impl Rng, keys: usize, start: Instant) -> Option<Recorded> {
        let key = rng.random_range(0..keys);
        let k = key_name(key);
        let roll = rng.random_range(0..100);
        let call = now(start);
        let (input, res): (Input, Result<Output, tonic::Status>) = match roll {
            0..30 => {
                let serializable = std::env::var("KVD_ROBUSTNESS_SERIALIZABLE_READS").is_ok();
                let r = self.kv.range(RangeRequest { key: k, serializable, ..Default::default() }).await;
                let out = r.map(|r| {
                    let kv = r.into_inner().kvs.into_iter().next();
                    Output::Get {
                        value: kv.as_ref().map(|kv| parse_value(&kv.value)),
                        mod_rev: kv.map_or(0, |kv| kv.mod_revision),
                    }
                });
                // A failed read has no effect: nothing to record.
                let Ok(output) = out else {
                    self.next_member();
                    return None;
                };
                if let Output::Get { value, .. } = output {
                    self.seen[key] = value;
                }
                return Some(Recorded { key, member: self.at, op: self.op(call, now(start), Input::Get, output) });
            }
            30..55 => {
                let value = self.value();
                let r = self
                    .kv
                    .put(PutRequest { key: k, value: value.to_string().into_bytes(), ..Default::default() })
                    .await;
                (Input::Put { value, lease: 0 }, r.map(|r| Output::Put { rev: rev(r.into_inner().header) }))
            }
            55..75 => {
                let expect = self.seen[key];
                let value = self.value();
                let compare = match expect {
                    None => Compare {
                        key: k.clone(),
                        target: CompareTarget::Create as i32,
                        result: CompareResult::Equal as i32,
                        target_union: Some(TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    },
                    Some(v) => Compare {
                        key: k.clone(),
                        target: CompareTarget::Value as i32,
                        result: CompareResult::Equal as i32,
                        target_union: Some(TargetUnion::Value(v.to_string().into_bytes())),
                        ..Default::default()
                    },
                };
                let put = Req::RequestPut(PutRequest {
                    key: k.clone(),
                    value: value.to_string().into_bytes(),
                    ..Default::default()
                });
                let get = Req::RequestRange(RangeRequest { key: k, ..Default::default() });
                let txn = TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp { request: Some(put) }],
                    failure: vec![RequestOp { request: Some(get) }],
                };
                let r = self.kv.txn(txn).await.map(|r| {
                    let r = r.into_inner();
                    let seen = r.responses.into_iter().find_map(|op| match op.response {
                        Some(Resp::ResponseRange(rr)) => {
                            rr.kvs.into_iter().next().map(|kv| (parse_value(&kv.value), kv.mod_revision))
                        }
                        _ => None,
                    });
                    Output::Cas { succeeded: r.succeeded, rev: rev(r.header), seen }
                });
                (Input::Cas { expect, value }, r)
            }
            75..85 => {
                let r = self.kv.delete_range(DeleteRangeRequest { key: k, ..Default::default() }).await;
                (
                    Input::Delete,
                    r.map(|r| {
                        let r = r.into_inner();
                        Output::Delete { deleted: r.deleted > 0, rev: rev(r.header) }
                    }),
                )
            }
            85..93 => {
                // A lease for this one put (long enough never to expire in a run).
                let lease = match self.lease.lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 }).await {
                    Ok(r) => r.into_inner().id,
                    Err(_) => {
                        self.next_member();
                        return None;
                    }
                };
                let value = self.value();
                let call = now(start);
                let r = self
                    .kv
                    .put(PutRequest { key: k, value: value.to_string().into_bytes(), lease, ..Default::default() })
                    .await;
                self.leases.push((lease, key));
                let out = r.map(|r| Output::Put { rev: rev(r.into_inner().header) });
                return Some(self.finish(key, call, start, Input::Put { value, lease }, out));
            }
            _ => {
                if self.leases.is_empty() {
                    return None;
                }
                let (lease, key) = self.leases.swap_remove(rng.random_range(0..self.leases.len()));
                let call = now(start);
                let r = self.lease.lease_revoke(LeaseRevokeRequest { id: lease }).await;
                let out = r.map(|r| Output::Revoke { rev: rev(r.into_inner().header) });
                return Some(self.finish(key, call, start, Input::Revoke { lease }, out));
            }
        };
        Some(self.finish(key, call, start, input, res))
    }

    fn op(&self, call: u64, ret: u64, input: Input, output: Output) -> KvOp {
        KvOp { client: self.id, call, ret, input, output }
    }

    /// Records a write: answered, or Unknown (and the client moves on).
    fn finish(
        &mut self,
        key: usize,
        call: u64,
        start: Instant,
        input: Input,
        r: Result<Output, tonic::Status>,
    ) -> Recorded {
        match r {
            Ok(output) => {
                match (&input, &output) {
                    (Input::Put { value, .. }, _) => self.seen[key] = Some(*value),
                    (Input::Cas { value, .. }, Output::Cas { succeeded: true, .. }) => self.seen[key] = Some(*value),
                    (Input::Cas { .. }, Output::Cas { seen, .. }) => self.seen[key] = seen.map(|(v, _)| v),
                    (Input::Delete, _) => self.seen[key] = None,
                    _ => {}
                }
                Recorded { key, member: self.at, op: self.op(call, now(start), input, output) }
            }
            Err(_) => {
                let member = self.at;
                self.next_member();
                Recorded { key, member, op: self.op(call, u64::MAX, input, Output::Unknown) }
            }
        }
    }
}

fn rev(h: Option<kvd_api::etcdserverpb::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision)
}

/// Runs `clients` clients over `keys` keys until `until`; returns the history.
pub async fn run(endpoints: Vec<String>, clients: usize, keys: usize, start: Instant, until: Instant) -> Vec<Recorded> {
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let mut c = Client::new(id + 1, endpoints, keys);
                let mut rng = rand::rngs::StdRng::from_os_rng();
                let mut out = Vec::new();
                while Instant::now() < until {
                    if let Some(r) = c.one(&mut rng, keys, start).await {
                        out.push(r);
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

/// After the faults: one linearizable read of every key, retried until a member answers.
pub async fn final_reads(endpoints: &[String], keys: usize, start: Instant) -> Vec<Recorded> {
    let mut c = Client::new(0, endpoints.to_vec(), keys);
    let mut out = Vec::new();
    for key in 0..keys {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let call = now(start);
            match c.kv.range(RangeRequest { key: key_name(key), ..Default::default() }).await {
                Ok(r) => {
                    let kv = r.into_inner().kvs.into_iter().next();
                    let output = Output::Get {
                        value: kv.as_ref().map(|kv| parse_value(&kv.value)),
                        mod_rev: kv.map_or(0, |kv| kv.mod_revision),
                    };
                    out.push(Recorded { key, member: c.at, op: c.op(call, now(start), Input::Get, output) });
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "no member answers a read after the faults: {e}");
                    c.next_member();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    out
}
