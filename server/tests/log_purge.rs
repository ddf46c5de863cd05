//! Raft snapshots bound the log: after --snapshot-count entries the backend is
//! made durable, the log is purged behind it (keeping the catch-up entries),
//! and whole WAL segments are deleted. The member restarts from what is left.

mod common;

use std::time::Duration;

use common::Proc;
use kvd_api::etcdserverpb::{PutRequest, RangeRequest};

/// The WAL segment file names, oldest first.
fn segments(data: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_wal_and_restart_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let flags = ["--snapshot-count", "40", "--experimental-snapshot-catchup-entries", "10"];
    let mut kvd = Proc::kvd_ready(&data, &flags).await;
    let mut kv = kvd.kv().await;
    // About 126 MB of entries: two 64 MB segments.
    let n = 300;
    for i in 0..n {
        kv.put(PutRequest {
            key: format!("k{i:04}").into(),
            value: vec![(i % 251) as u8; 420 * 1024],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // 300 entries of 420 KiB fill 2 segments; snapshots every 40 entries purge
    // all but the last 10 entries, so only the segments holding those remain.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let segs = segments(&data);
        if segs.len() <= 2 && !segs[0].starts_with("0000000000000000-") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "old WAL segments were never purged: {segs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let check = |kvd: &Proc| {
        let kvd_ep = kvd.endpoint.clone();
        async move {
            let ch = tonic::transport::Channel::from_shared(kvd_ep).unwrap().connect_lazy();
            let mut kv = kvd_api::etcdserverpb::kv_client::KvClient::new(ch).max_decoding_message_size(usize::MAX);
            for i in [0, n / 2, n - 1] {
                let r = kv.range(RangeRequest { key: format!("k{i:04}").into(), ..Default::default() }).await.unwrap();
                let kvs = r.into_inner().kvs;
                assert_eq!(kvs.len(), 1, "k{i:04} missing");
                assert_eq!(kvs[0].value[0], (i % 251) as u8);
                assert_eq!(kvs[0].value.len(), 420 * 1024);
            }
        }
    };
    // A clean restart, then a kill -9 restart, both from the purged log.
    assert!(kvd.stop().unwrap().success());
    kvd = Proc::kvd_ready(&data, &flags).await;
    check(&kvd).await;
    kvd.kv()
        .await
        .put(PutRequest { key: b"after".to_vec(), value: b"1".to_vec(), ..Default::default() })
        .await
        .unwrap();
    kvd.restart();
    kvd.ready().await;
    check(&kvd).await;
    // The backend can no longer be rebuilt from this WAL: refused, with the reason.
    assert!(kvd.stop().unwrap().success());
    std::fs::remove_file(data.join("member/db.redb")).unwrap();
    let mut kvd = Proc::kvd(&data, &flags);
    let st = kvd.wait_exit(Duration::from_secs(20)).expect("must refuse to start");
    assert!(!st.success());
    assert!(kvd.log_text().contains("the entries in between are gone"), "{}", kvd.log_text());
}
