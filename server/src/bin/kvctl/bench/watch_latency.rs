//! `kvctl bench watch-latency`, after etcd's benchmark of the same name:
//! watchers on one key, puts at a fixed rate, and for every (put, watcher)
//! the time from sending the put to receiving its event. Beyond etcd's:
//! - `--keys K` spreads the watchers over K keys (watcher j on key j mod
//!   K) and the puts over the same keys in turn, as many objects each
//!   watched by a few clients;
//! - `--prefix-watchers P` adds P watchers of the keys' common prefix,
//!   which see every put (as kube-apiserver's watch of a resource);
//! - `--slow-streams S` adds S streams of prefix watchers whose client
//!   never reads, each on its own connection: a server that lets them hold
//!   the others back shows it in the others' latencies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use kvd::etcdserver::prefix_end;
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::watch_client::WatchClient;
use kvd_api::etcdserverpb::watch_request::RequestUnion;
use kvd_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::{Common, Conn, Report, connections, key_for};

#[derive(Args, Clone)]
pub struct WatchLatencyArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Watch streams (spread over --conns connections).
    #[arg(long, default_value_t = 10)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// Puts to the watched keys.
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Puts per second.
    #[arg(long, default_value_t = 100)]
    put_rate: u64,
    /// Keys the watchers and puts are spread over.
    #[arg(long, default_value_t = 1)]
    keys: u64,
    /// Watchers of the keys' prefix (on streams of their own, 10 to a stream).
    #[arg(long, default_value_t = 0)]
    prefix_watchers: usize,
    /// Streams of 10 prefix watchers each whose events are never read.
    #[arg(long, default_value_t = 0)]
    slow_streams: usize,
}

/// A watcher's range: its key, and its range end (empty for the key alone).
type Watched = (Vec<u8>, Vec<u8>);

/// Watchers per stream of the prefix watchers and of the slow streams.
const PREFIX_PER_STREAM: usize = 10;

/// A watch stream whose watchers (each of `key`..`end`) all exist.
async fn open(
    ch: Conn,
    watchers: &[Watched],
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), String> {
    // The requests go first: etcd (grpc-go) sends a stream's response
    // headers with its first message, so the call returns only then.
    let (tx, rx) = mpsc::channel(watchers.len() + 1);
    for (key, range_end) in watchers {
        let c = WatchCreateRequest { key: key.clone(), range_end: range_end.clone(), ..Default::default() };
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) })
            .await
            .map_err(|_| "watch: stream closed".to_string())?;
    }
    let mut client = WatchClient::new(ch);
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("watch: {}", e.message()))?
        .into_inner();
    let mut created = 0;
    while created < watchers.len() {
        match stream.message().await {
            Ok(Some(r)) => created += r.created as usize,
            other => return Err(format!("watch stream ended before its watchers were created: {other:?}")),
        }
    }
    Ok((tx, stream))
}

pub(super) async fn watch_latency(a: &WatchLatencyArgs) -> Result<Report, String> {
    let chans = connections(&a.common).await?;
    let prefix = if a.common.key_prefix.is_empty() { "watch-latency/" } else { &a.common.key_prefix };
    let nkeys = a.keys.max(1);
    let key = |k: u64| [prefix.as_bytes(), &key_for(k, a.common.key_size)].concat();
    // Puts to key k: i = k, k + K, ... below put_total.
    let puts_to = |k: u64| (a.put_total + nkeys - 1 - k) / nkeys;
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..a.put_total).map(|_| AtomicU64::new(0)).collect());
    let base = Instant::now();
    let wps = a.watchers_per_stream.max(1);
    let whole = (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()));
    // Each stream: its watchers, the events they are to see, and whether
    // they watch the prefix.
    let mut streams: Vec<(Vec<Watched>, u64, bool)> = (0..a.streams.max(1))
        .map(|s| {
            let ks: Vec<u64> = (0..wps).map(|w| (s * wps + w) as u64 % nkeys).collect();
            (ks.iter().map(|k| (key(*k), Vec::new())).collect(), ks.iter().map(|k| puts_to(*k)).sum(), false)
        })
        .collect();
    for p in (0..a.prefix_watchers).step_by(PREFIX_PER_STREAM) {
        let n = PREFIX_PER_STREAM.min(a.prefix_watchers - p);
        streams.push((vec![whole.clone(); n], a.put_total * n as u64, true));
    }
    let mut readers = Vec::new();
    for (s, (watchers, want, on_prefix)) in streams.into_iter().enumerate() {
        let (tx, mut stream) = open(chans[s % chans.len()].clone(), &watchers).await?;
        let sent = sent.clone();
        readers.push(tokio::spawn(async move {
            let _keep = tx;
            let mut lat = Vec::new();
            while (lat.len() as u64) < want {
                let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await else {
                    break;
                };
                let now = base.elapsed().as_nanos() as u64;
                for e in r.events {
                    let i: Option<usize> =
                        e.kv.and_then(|kv| String::from_utf8(kv.value).ok()?.trim_start_matches('v').parse().ok());
                    if let Some(t) = i.and_then(|i| sent.get(i)).map(|t| t.load(Ordering::Acquire)) {
                        lat.push(Duration::from_nanos(now.saturating_sub(t)));
                    }
                }
            }
            (on_prefix, lat)
        }));
    }
    // Streams nobody reads, kept open until the end, each on a connection
    // of its own, as a client of its own: unread, a stream holds its
    // connection's flow-control window, and every stream sharing it waits.
    let mut slow = Vec::new();
    if a.slow_streams > 0 {
        let own = Common { conns: a.slow_streams, ..a.common.clone() };
        for ch in connections(&own).await? {
            slow.push(open(ch, &vec![whole.clone(); PREFIX_PER_STREAM]).await?);
        }
    }
    let start = Instant::now();
    let mut kv = KvClient::new(chans[0].clone());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..a.put_total {
        if a.put_rate > 0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / a.put_rate as f64)).into()).await;
        }
        sent[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        let put = PutRequest { key: key(i % nkeys), value: format!("v{i}").into_bytes(), ..Default::default() };
        if let Err(s) = kv.put(put).await {
            *errors.entry(format!("{:?}: {}", s.code(), s.message())).or_default() += 1;
        }
    }
    let (mut lat, mut of_keys, mut of_prefix) = (Vec::new(), Vec::new(), Vec::new());
    for r in readers {
        let (on_prefix, l) = r.await.map_err(|e| e.to_string())?;
        if on_prefix { &mut of_prefix } else { &mut of_keys }.extend(l.iter().copied());
        lat.extend(l);
    }
    drop(slow);
    lat.sort();
    let p99 = |mut l: Vec<Duration>| {
        l.sort();
        l.get((l.len() * 99).div_ceil(100).max(1) - 1).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let extra = if a.keys > 1 || a.prefix_watchers > 0 || a.slow_streams > 0 {
        vec![("key_watchers_p99_ms", p99(of_keys)), ("prefix_watchers_p99_ms", p99(of_prefix))]
    } else {
        Vec::new()
    };
    // Events are not answers to requests: no gaps between them are measured.
    Ok(Report { took: start.elapsed(), lat, answered_at: Vec::new(), errors, extra })
}
