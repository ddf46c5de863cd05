//! A power cut on a member whose WAL fdatasync lags its apply (issue 23,
//! item 3). A leader applies an entry once a quorum of the others holds it,
//! before its own fdatasync covers it; the backend used to commit such
//! entries every 100 ms regardless, so a power cut left it ahead of the WAL
//! and the member refused to start ("WAL records were lost").
//!
//! kvd runs with `KVD_POWER_CUT_SIM=1` (the `failpoints` build: its WAL and
//! backend writes stay in memory until their fdatasync, so a kill -9 loses
//! what a power cut would) and a slow disk (`wal_before_fsync=sleep(300)`).

mod common;

use std::time::{Duration, Instant};

use common::{leader, put_retrying, ready_cluster};
use kvd_api::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_mid_fsync_recovers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 161, &["--log-level", "info"]).await;
    for m in members.iter_mut() {
        m.set_env("KVD_POWER_CUT_SIM", Some("1"));
        m.restart();
    }
    for m in &members {
        m.ready().await;
    }
    // The member on a slow disk (each fdatasync takes 300 ms) leads: the
    // two others commit every write before its own WAL holds it.
    let f = (leader(&members).await + 1) % 3;
    members[f].set_env("FAILPOINTS", Some("wal_before_fsync=sleep(300)"));
    members[f].restart();
    members[f].ready().await;
    let id =
        members[f].maintenance().await.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = leader(&members).await;
        if l == f {
            break;
        }
        let _ = common::etcdctl(&members[l].endpoint, &["move-leader", &format!("{id:x}")], None);
        assert!(Instant::now() < deadline, "leadership never moved to the slow member");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let l = (f + 1) % 3;
    // Writes go on through the slow leader while it loses power.
    let leader_ep = members[f].endpoint.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = writer(leader_ep, "k".into(), stop.clone(), Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Power cut: what the member did not fdatasync is gone.
    members[f].kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 100, "only {} writes", acked.len());
    let log_before = members[f].log_text();
    members[f].set_env("FAILPOINTS", None);
    members[f].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = members[f].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let log = members[f].log_text();
            panic!("the member did not start after the power cut ({st}):\n{}", &log[log_before.len()..]);
        }
        let mut kv = members[f].kv().await;
        let last = acked.last().unwrap().as_bytes().to_vec();
        let r = kv.range(RangeRequest { key: last, serializable: true, ..Default::default() }).await;
        if r.is_ok_and(|r| r.into_inner().count == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the member never caught up after the power cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every acknowledged write is there, on every member, and they agree.
    let mut kv = members[f].kv().await;
    let all = kv
        .range(RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), serializable: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let have: std::collections::HashSet<Vec<u8>> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_bytes())).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let mut lkv = members[l].kv().await;
    let rev = put_retrying(&mut lkv, PutRequest { key: b"last".to_vec(), ..Default::default() }).await;
    let rev = rev.header.unwrap().revision;
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let hashes = common::hashes_at(&endpoints, rev).await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members differ after the power cut: {hashes:?}");
}

/// A single member on a slow disk loses power while writes are in flight:
/// it restarts, and every write it acknowledged is there (its backend
/// never commits past its WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_cut_off_mid_fsync_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut kvd = common::Proc::kvd_with_env(
        &data,
        &[],
        &[("KVD_POWER_CUT_SIM", "1"), ("FAILPOINTS", "wal_before_fsync=sleep(200)")],
    );
    kvd.ready().await;
    let ep = kvd.endpoint.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        writers.push(writer(ep.clone(), format!("w{w}/"), stop.clone(), Duration::from_secs(2)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    kvd.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 20, "only {} writes", acked.len());
    kvd.set_env("FAILPOINTS", None);
    kvd.restart();
    kvd.ready().await;
    let all = kvd
        .kv()
        .await
        .range(RangeRequest { key: b"w".to_vec(), range_end: b"x".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let have: std::collections::HashSet<Vec<u8>> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_bytes())).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// Puts `<prefix><n>` one after another on `ep` until `stop`; returns the
/// keys whose puts were acknowledged (a put unanswered within `timeout`
/// is not).
fn writer(
    ep: String,
    prefix: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    timeout: Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let ch = tonic::transport::Channel::from_shared(ep).unwrap().connect_lazy();
        let mut kv = kvd_api::etcdserverpb::kv_client::KvClient::new(ch);
        let (mut acked, mut i) = (Vec::new(), 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let key = format!("{prefix}{i:05}");
            let req = PutRequest { key: key.as_bytes().to_vec(), value: b"v".to_vec(), ..Default::default() };
            if let Ok(Ok(_)) = tokio::time::timeout(timeout, kv.put(req)).await {
                acked.push(key);
            }
            i += 1;
        }
        acked
    })
}
