//! What kvd does with the TCP connections it accepts: each gets TCP
//! keepalive (15 s idle, as Go sets on etcd's), so a client or peer that
//! vanishes without closing is dropped instead of kept, with its watchers,
//! for good. Read from the kernel with `ss`.

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
