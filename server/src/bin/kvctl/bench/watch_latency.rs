//! `kvctl bench watch-latency`, after etcd's benchmark of the same name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvd_api::etcdserverpb::PutRequest;
use kvd_api::etcdserverpb::kv_client::KvClient;

use clap::Args;

use super::{Common, Report, connections, key_for};

#[derive(Args, Clone)]
pub struct WatchLatencyArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// Watch streams (spread over --conns connections).
    #[arg(long, default_value_t = 10)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// Puts to the watched key.
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Puts per second.
    #[arg(long, default_value_t = 100)]
    put_rate: u64,
}

/// etcd's watch-latency: watchers on one key, puts at a fixed rate, and for
/// every (put, watcher) the time from sending the put to receiving its event.
pub(super) async fn watch_latency(a: &WatchLatencyArgs) -> Result<Report, String> {
    use kvd_api::etcdserverpb::watch_client::WatchClient;
    use kvd_api::etcdserverpb::watch_request::RequestUnion;
    use kvd_api::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let chans = connections(&a.common).await?;
    let key = key_for(0, a.common.key_size).into_iter().chain(*b"-watch-latency").collect::<Vec<u8>>();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..a.put_total).map(|_| AtomicU64::new(0)).collect());
    let base = Instant::now();
    let mut readers = Vec::new();
    for s in 0..a.streams.max(1) {
        let (tx, rx) = tokio::sync::mpsc::channel(a.watchers_per_stream.max(1) + 1);
        for _ in 0..a.watchers_per_stream.max(1) {
            let c = WatchCreateRequest { key: key.clone(), ..Default::default() };
            let _ = tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) }).await;
        }
        let mut client = WatchClient::new(chans[s % chans.len()].clone());
        let mut stream = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("watch: {}", e.message()))?
            .into_inner();
        // Wait until every watcher of the stream exists.
        let mut created = 0;
        while created < a.watchers_per_stream.max(1) {
            match stream.message().await {
                Ok(Some(r)) => created += r.created as usize,
                other => return Err(format!("watch stream ended before its watchers were created: {other:?}")),
            }
        }
        let (sent, want) = (sent.clone(), a.put_total * a.watchers_per_stream.max(1) as u64);
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
            lat
        }));
    }
    let start = Instant::now();
    let mut kv = KvClient::new(chans[0].clone());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..a.put_total {
        if a.put_rate > 0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / a.put_rate as f64)).into()).await;
        }
        sent[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        let put = PutRequest { key: key.clone(), value: format!("v{i}").into_bytes(), ..Default::default() };
        if let Err(s) = kv.put(put).await {
            *errors.entry(format!("{:?}: {}", s.code(), s.message())).or_default() += 1;
        }
    }
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.await.map_err(|e| e.to_string())?);
    }
    lat.sort();
    // Events are not answers to requests: no gaps between them are measured.
    Ok(Report { took: start.elapsed(), lat, answered_at: Vec::new(), errors })
}
