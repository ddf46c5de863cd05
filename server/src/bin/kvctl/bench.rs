//! `kvctl bench`: load generators over the etcd v3 API, after etcd's
//! `tools/benchmark` (same workload names and flags). Every workload shares
//! one runner: `--clients` tasks over `--conns` connections, each with one
//! request in flight, until `--total` requests or `--duration`, optionally
//! paced to `--rate` requests/s; then requests/s, a latency histogram,
//! percentiles and errors by code (or one JSON object with `--json`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kvd_api::etcdserverpb::request_op::Request as Op;
use kvd_api::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, StatusRequest, TxnRequest, TxnResponse,
};
use tonic::Status;
use tonic::transport::Channel;

mod conn;
mod lease_keepalive;
mod list;
mod unary;
mod watch_latency;
pub(crate) use conn::{Conn, connection_urls, connections};
use lease_keepalive::lease_keepalive;
use list::{ListArgs, list};
use tonic::codegen::http::Uri;
use unary::{UnaryConn, unary_connections};
use watch_latency::{WatchLatencyArgs, watch_latency};

#[derive(Subcommand)]
pub enum Workload {
    /// Puts of fixed-size keys and values.
    Put(Common),
    /// Ranges over a key or `[key, end)`.
    Range(RangeArgs),
    /// Txns of `--txn-ops` puts each.
    TxnPut(TxnPutArgs),
    /// Txns that read (a range) or write (a put), `--rw-ratio` reads per write.
    TxnMixed(TxnMixedArgs),
    /// Time from a put to its event at every watcher of one key.
    WatchLatency(WatchLatencyArgs),
    /// Keep-alives of one lease per client, each on its own stream.
    LeaseKeepalive(Common),
    /// Kubernetes' paginated LIST of every key under a prefix (not in etcd's tool).
    List(ListArgs),
}

#[derive(Args, Clone)]
pub struct Common {
    /// Comma-separated endpoints (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// gRPC connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients (each with one request in flight).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Run for this long instead of --total requests ("30s", "2m").
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Requests per second over all clients (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Put before each key (e.g. "/registry/pods/default/", for keys shaped
    /// as Kubernetes' objects); --key-size is the part after it.
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Keys are drawn from this many (1 = always the same key).
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Write keys in order instead of at random.
    #[arg(long)]
    sequential_keys: bool,
    /// Send everything to the leader (found with Status on the endpoints).
    #[arg(long)]
    target_leader: bool,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
pub struct RangeArgs {
    #[command(flatten)]
    common: Common,
    /// The key (or range start) to read.
    key: String,
    /// Range end (exclusive); empty reads the key alone.
    end: Option<String>,
    /// l (linearizable) or s (serializable).
    #[arg(long, default_value = "l")]
    consistency: String,
    #[arg(long, default_value_t = 0)]
    limit: i64,
    #[arg(long)]
    count_only: bool,
    #[arg(long)]
    keys_only: bool,
}

#[derive(Args, Clone)]
pub struct TxnPutArgs {
    #[command(flatten)]
    common: Common,
    /// Puts per txn.
    #[arg(long, default_value_t = 1)]
    txn_ops: usize,
}

#[derive(Args, Clone)]
pub struct TxnMixedArgs {
    #[command(flatten)]
    common: Common,
    /// Reads per write.
    #[arg(long, default_value_t = 1.0)]
    rw_ratio: f64,
    /// l (linearizable) or s (serializable) reads.
    #[arg(long, default_value = "l")]
    consistency: String,
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn endpoint_url(e: &str) -> String {
    if e.contains("://") { e.to_string() } else { format!("http://{e}") }
}

/// The `n`th key, as lowercase hex padded with zeros to `size` bytes.
pub(crate) fn key_for(n: u64, size: usize) -> Vec<u8> {
    let size = size.max(1);
    let s = format!("{n:0>size$x}");
    s.as_bytes()[s.len() - size..].to_vec()
}

/// A small deterministic generator for key choice (xorshift).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What one request is, given the client's random state and the request number.
type MakeOp = Arc<dyn Fn(&mut u64, u64) -> Request + Send + Sync>;

enum Request {
    Put(PutRequest),
    Range(RangeRequest),
    Txn(TxnRequest),
}

fn pick_key(c: &Common, rng: &mut u64, n: u64) -> Vec<u8> {
    let space = c.key_space_size.max(1);
    let k = if c.sequential_keys { n % space } else { next_rand(rng) % space };
    let mut key = c.key_prefix.clone().into_bytes();
    key.extend(key_for(k, c.key_size));
    key
}

pub async fn run(w: Workload) -> Result<(), String> {
    let (name, common, op): (&str, Common, MakeOp) = match w {
        Workload::WatchLatency(a) => {
            let report = watch_latency(&a).await?;
            report.print("watch-latency", &a.common);
            return Ok(());
        }
        Workload::LeaseKeepalive(c) => {
            let report = lease_keepalive(&c).await?;
            report.print("lease-keepalive", &c);
            return Ok(());
        }
        Workload::List(a) => {
            let report = list(&a).await?;
            report.print("list", &a.common);
            return Ok(());
        }
        Workload::Put(c) => {
            let value = vec![b'v'; c.val_size];
            let cc = c.clone();
            let op: MakeOp = Arc::new(move |rng, n| {
                Request::Put(PutRequest { key: pick_key(&cc, rng, n), value: value.clone(), ..Default::default() })
            });
            ("put", c, op)
        }
        Workload::Range(r) => {
            let req = RangeRequest {
                key: r.key.clone().into_bytes(),
                range_end: r.end.clone().unwrap_or_default().into_bytes(),
                serializable: r.consistency == "s",
                limit: r.limit,
                count_only: r.count_only,
                keys_only: r.keys_only,
                ..Default::default()
            };
            let op: MakeOp = Arc::new(move |_, _| Request::Range(req.clone()));
            ("range", r.common, op)
        }
        Workload::TxnPut(t) => {
            let value = vec![b'v'; t.common.val_size];
            let cc = t.common.clone();
            let ops = t.txn_ops.max(1);
            let op: MakeOp = Arc::new(move |rng, n| {
                // Distinct keys within a txn (etcd refuses duplicates).
                let mut keys: Vec<Vec<u8>> = (0..ops).map(|j| pick_key(&cc, rng, n * ops as u64 + j as u64)).collect();
                keys.sort();
                keys.dedup();
                let success = keys
                    .into_iter()
                    .map(|key| RequestOp {
                        request: Some(Op::RequestPut(PutRequest { key, value: value.clone(), ..Default::default() })),
                    })
                    .collect();
                Request::Txn(TxnRequest { success, ..Default::default() })
            });
            ("txn-put", t.common, op)
        }
        Workload::TxnMixed(t) => {
            let value = vec![b'v'; t.common.val_size];
            let cc = t.common.clone();
            let read_share = t.rw_ratio.max(0.0) / (t.rw_ratio.max(0.0) + 1.0);
            let serializable = t.consistency == "s";
            let op: MakeOp = Arc::new(move |rng, n| {
                let key = pick_key(&cc, rng, n);
                let read = (next_rand(rng) % 10_000) as f64 / 10_000.0 < read_share;
                let request = if read {
                    Op::RequestRange(RangeRequest { key, serializable, ..Default::default() })
                } else {
                    Op::RequestPut(PutRequest { key, value: value.clone(), ..Default::default() })
                };
                Request::Txn(TxnRequest { success: vec![RequestOp { request: Some(request) }], ..Default::default() })
            });
            ("txn-mixed", t.common, op)
        }
    };
    let callers = unary_connections(&common)
        .await?
        .into_iter()
        .cycle()
        .take(common.clients.max(1))
        .map(|conn| KvCaller {
            put: conn.method("/etcdserverpb.KV/Put"),
            range: conn.method("/etcdserverpb.KV/Range"),
            txn: conn.method("/etcdserverpb.KV/Txn"),
            conn,
            op: op.clone(),
        })
        .collect();
    let report = drive(&common, callers).await?;
    report.print(name, &common);
    Ok(())
}

/// One client of a workload: issues request `n` and waits for its answer.
pub(crate) trait Caller: Send + 'static {
    fn call(&mut self, rng: &mut u64, n: u64) -> impl Future<Output = Result<(), Status>> + Send;
}

/// A KV client that sends what `op` makes.
struct KvCaller {
    conn: UnaryConn,
    put: Uri,
    range: Uri,
    txn: Uri,
    op: MakeOp,
}

impl Caller for KvCaller {
    async fn call(&mut self, rng: &mut u64, n: u64) -> Result<(), Status> {
        match (self.op)(rng, n) {
            Request::Put(r) => self.conn.call::<_, PutResponse>(&self.put, &r).await.map(|_| ()),
            Request::Range(r) => self.conn.call::<_, RangeResponse>(&self.range, &r).await.map(|_| ()),
            Request::Txn(r) => self.conn.call::<_, TxnResponse>(&self.txn, &r).await.map(|_| ()),
        }
    }
}

/// The endpoint of the leader, asking each endpoint's Status.
async fn leader_endpoint(c: &Common) -> Result<String, String> {
    for e in &c.endpoints {
        let url = endpoint_url(e);
        let Ok(ch) = Channel::from_shared(url.clone()).map_err(|e| e.to_string())?.connect().await else { continue };
        if let Ok(st) = MaintenanceClient::new(ch).status(StatusRequest {}).await {
            let st = st.into_inner();
            if st.header.is_some_and(|h| h.member_id == st.leader) {
                return Ok(url);
            }
        }
    }
    Err("no endpoint is the leader".into())
}

pub(crate) struct Report {
    pub(crate) took: Duration,
    pub(crate) lat: Vec<Duration>,
    /// When each answered request was answered, from the start.
    pub(crate) answered_at: Vec<Duration>,
    pub(crate) errors: BTreeMap<String, u64>,
    /// Figures particular to the workload, by name.
    pub(crate) extra: Vec<(&'static str, f64)>,
}

/// Runs `callers` (one per client) until the workload's end.
pub(crate) async fn drive<C: Caller>(c: &Common, callers: Vec<C>) -> Result<Report, String> {
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = (!c.json).then(|| {
        let (done, total, duration) = (done.clone(), c.total, c.duration);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let n = done.load(Ordering::Relaxed);
                match duration {
                    Some(d) => {
                        eprint!("\r{:>5.1}s / {:.0}s, {n} requests", start.elapsed().as_secs_f64(), d.as_secs_f64())
                    }
                    None => eprint!("\r{n} / {total} ({:.0}%)", n as f64 * 100.0 / total.max(1) as f64),
                }
            }
        })
    });
    let mut tasks = Vec::new();
    for (i, mut caller) in callers.into_iter().enumerate() {
        let (issued, done, c) = (issued.clone(), done.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut answered_at) = (Vec::new(), Vec::new());
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let over = match c.duration {
                    Some(d) => start.elapsed() >= d,
                    None => n >= c.total,
                };
                if over {
                    break;
                }
                if c.rate > 0 {
                    // Request n goes out no earlier than n / rate seconds in.
                    let at = start + Duration::from_secs_f64(n as f64 / c.rate as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                let t = Instant::now();
                match caller.call(&mut rng, n).await {
                    Ok(()) => {
                        lat.push(t.elapsed());
                        answered_at.push(start.elapsed());
                    }
                    Err(s) => *errors.entry(format!("{:?}: {}", s.code(), s.message())).or_default() += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, answered_at, errors)
        }));
    }
    let mut report = Report {
        took: Duration::ZERO,
        lat: Vec::new(),
        answered_at: Vec::new(),
        errors: BTreeMap::new(),
        extra: Vec::new(),
    };
    for t in tasks {
        let (l, a, e) = t.await.map_err(|e| e.to_string())?;
        report.lat.extend(l);
        report.answered_at.extend(a);
        for (k, v) in e {
            *report.errors.entry(k).or_default() += v;
        }
    }
    report.took = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    report.lat.sort();
    report.answered_at.sort();
    Ok(report)
}

impl Report {
    fn pct(&self, p: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        self.lat[((self.lat.len() as f64 * p).ceil() as usize).clamp(1, self.lat.len()) - 1]
    }

    /// The longest time between two answers (a stall of the server shows
    /// here even when few requests wait through it).
    fn longest_gap(&self) -> Duration {
        self.answered_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    fn print(&self, workload: &str, c: &Common) {
        let rps = self.lat.len() as f64 / self.took.as_secs_f64().max(1e-9);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let max = self.lat.last().copied().unwrap_or_default();
        let gap = self.longest_gap();
        if c.json {
            let mut v = serde_json::json!({
                "workload": workload, "clients": c.clients, "conns": c.conns, "total": c.total,
                "ok": self.lat.len(), "seconds": self.took.as_secs_f64(), "requests_per_second": rps,
                "p50_ms": ms(self.pct(0.5)), "p90_ms": ms(self.pct(0.9)), "p99_ms": ms(self.pct(0.99)),
                "p999_ms": ms(self.pct(0.999)), "max_ms": ms(max), "longest_gap_ms": ms(gap), "errors": self.errors,
            });
            for (name, x) in &self.extra {
                v[*name] = serde_json::json!(x);
            }
            println!("{v}");
            return;
        }
        println!("Summary:");
        println!("  Total:\t{:.4} secs.", self.took.as_secs_f64());
        println!("  Requests/sec:\t{rps:.1}");
        println!(
            "  Latency p50/p90/p99/p99.9/max (ms): {:.3} / {:.3} / {:.3} / {:.3} / {:.3}",
            ms(self.pct(0.5)),
            ms(self.pct(0.9)),
            ms(self.pct(0.99)),
            ms(self.pct(0.999)),
            ms(max)
        );
        println!("  Longest gap between two answers (ms): {:.3}", ms(gap));
        for (name, x) in &self.extra {
            println!("  {name}:\t{x:.1}");
        }
        // A histogram in ten buckets between the fastest and slowest request.
        if let (Some(lo), Some(hi)) = (self.lat.first(), self.lat.last()) {
            println!("\nResponse time histogram (ms):");
            let (lo, hi) = (ms(*lo), ms(*hi));
            let step = ((hi - lo) / 10.0).max(1e-6);
            let mut counts = [0u64; 10];
            for l in &self.lat {
                counts[(((ms(*l) - lo) / step) as usize).min(9)] += 1;
            }
            let most = counts.iter().copied().max().unwrap_or(1).max(1);
            for (i, n) in counts.iter().enumerate() {
                let bar = "∎".repeat((n * 40 / most) as usize);
                println!("  {:>9.3} [{n:>8}]\t|{bar}", lo + step * (i + 1) as f64);
            }
        }
        if !self.errors.is_empty() {
            println!("\nErrors:");
            for (e, n) in &self.errors {
                println!("  {e}: {n}");
            }
        }
    }
}
