//! What kvd does with the TCP connections it accepts: each gets TCP
//! keepalive (15 s idle, as Go sets on etcd's), so a client or peer that
//! vanishes without closing is dropped instead of kept, with its watchers,
//! for good (read from the kernel with `ss`); and at SIGTERM they drain:
//! every write kvd began is answered, so a failed write never landed.

mod common;

use std::process::Command;

use common::Proc;
use kvd_api::etcdserverpb::RangeRequest;
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::kvdpeerpb::ClusterInfoRequest;
use kvd_api::kvdpeerpb::peer_client::PeerClient;
use tonic::transport::Channel;

/// The keepalive timers (seconds left) of the established connections whose
/// local port is `port`; None for a connection without one. The kernel
/// shows a connection's retransmission timer instead while data it sent is
/// unacknowledged (a delayed ACK), so this waits up to 5 s for that to pass.
async fn keepalive_timers(port: u16) -> (Vec<Option<u64>>, String) {
    let filter = format!("( sport = :{port} )");
    let mut tries = 0;
    loop {
        let out = Command::new("ss").args(["-tnoH", "state", "established", &filter]).output().expect("ss (iproute2)");
        assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        tries += 1;
        if text.contains("timer:(on,") && tries < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        let timers = text
            .lines()
            .map(|l| {
                let rest = l.split("timer:(keepalive,").nth(1)?;
                let left = rest.split(',').next().unwrap_or_default();
                Some(timer_secs(left).unwrap_or_else(|| panic!("unreadable keepalive timer {left:?} in:\n{text}")))
            })
            .collect();
        return (timers, text);
    }
}

/// Whole seconds of an `ss` timer: "14sec", "1min59sec", or "867ms" (0).
fn timer_secs(t: &str) -> Option<u64> {
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(|_| 0);
    }
    let t = t.strip_suffix("sec")?;
    match t.split_once("min") {
        Some((m, s)) => Some(m.parse::<u64>().ok()? * 60 + s.parse::<u64>().ok()?),
        None => t.parse().ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_client_and_peer_connections_have_tcp_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let client = Channel::from_shared(kvd.endpoint.clone()).unwrap().connect().await.unwrap();
    KvClient::new(client.clone()).range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap();
    let peer_url = kvd.flag("--listen-peer-urls").expect("a peer URL").to_string();
    let peer_port: u16 = peer_url.rsplit(':').next().unwrap().parse().unwrap();
    let peer = Channel::from_shared(peer_url).unwrap().connect().await.unwrap();
    PeerClient::new(peer.clone()).cluster_info(ClusterInfoRequest {}).await.unwrap();

    for (port, what) in [(kvd.client_port, "client"), (peer_port, "peer")] {
        let (timers, text) = keepalive_timers(port).await;
        assert!(!timers.is_empty(), "no established connection on the {what} port {port}");
        for t in timers {
            let t = t.unwrap_or_else(|| panic!("a connection on the {what} port has no TCP keepalive:\n{text}"));
            assert!(t <= 15, "keepalive on the {what} port fires in {t} s, not within 15 s:\n{text}");
        }
    }
    drop((client, peer));
}

/// Writers on their own connections put until kvd stops answering; kvd gets
/// SIGTERM while they run. Each put either succeeded, or failed without
/// being applied: the connection drains (GOAWAY, the calls under way
/// answered) before raft stops. Cut off abruptly instead, a put that was
/// already in the WAL fails with a reset connection, yet is there after the
/// restart: a client cannot know its write happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_every_write_it_began() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use kvd_api::etcdserverpb::PutRequest;

    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::kvd_ready(&dir.path().join("d"), &[]).await;
    // key -> whether its put was acknowledged.
    let outcome = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let ch = Channel::from_shared(p.endpoint.clone()).unwrap().connect().await.unwrap();
        let (mut kv, outcome) = (KvClient::new(ch), outcome.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w/{w}/{i:06}").into_bytes();
                let put = PutRequest { key: key.clone(), value: b"v".to_vec(), ..Default::default() };
                let ok = tokio::time::timeout(Duration::from_secs(10), kv.put(put)).await.is_ok_and(|r| r.is_ok());
                outcome.lock().unwrap().insert(key, ok);
                if !ok {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = tokio::task::spawn_blocking(move || {
        let st = p.stop();
        (p, st)
    });
    let (mut p, st) = st.await.unwrap();
    assert!(st.is_some_and(|s| s.success()), "kvd did not stop cleanly: {st:?}\n{}", p.log_text());
    for t in tasks {
        t.await.unwrap();
    }
    p.restart();
    p.ready().await;
    let mut kv = p.kv().await;
    let outcome = std::mem::take(&mut *outcome.lock().unwrap());
    let (mut acked, mut failed) = (0, 0);
    for (key, ok) in &outcome {
        let got = kv.range(RangeRequest { key: key.clone(), ..Default::default() }).await.unwrap().into_inner();
        let present = got.count == 1;
        let k = String::from_utf8_lossy(key);
        if *ok {
            acked += 1;
            assert!(present, "acknowledged put {k} lost");
        } else {
            failed += 1;
            assert!(!present, "put {k} failed, yet it was applied");
        }
    }
    assert!(acked > 100 && failed == 8, "{acked} acknowledged, {failed} failed");
    eprintln!("{acked} acknowledged before the stop, {failed} refused and not applied");
}
