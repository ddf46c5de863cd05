//! Periodic auto-compaction: the leader keeps the last retention period of
//! history and compacts what is older.

mod common;

use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::{PutRequest, RangeRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_keeps_the_retention_period_of_history() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(
        &dir.path().join("kvd"),
        &["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"],
    )
    .await;
    let mut kv = kvd.kv().await;
    let started = Instant::now();
    let mut revs = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        let r = kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
        revs.push((started.elapsed(), r.into_inner().header.unwrap().revision));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = |rev: i64| {
        let mut kv = kv.clone();
        async move { kv.range(RangeRequest { key: b"k".to_vec(), revision: rev, ..Default::default() }).await }
    };
    // The first second's revisions are more than a period old: compacted.
    let old = revs.iter().find(|(t, _)| *t > Duration::from_millis(500)).unwrap().1;
    let err = at(old).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    // The last second's are within the period: still readable.
    let recent = revs.iter().find(|(t, _)| *t > Duration::from_millis(4000)).unwrap().1;
    assert_eq!(at(recent).await.unwrap().into_inner().kvs[0].mod_revision, recent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retention_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut kvd = Proc::kvd(
        &dir.path().join("kvd"),
        &["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
    );
    let st = kvd.wait_exit(Duration::from_secs(10)).expect("kvd exits");
    assert!(!st.success());
    assert!(kvd.log_text().contains("auto-compaction-retention"), "{}", kvd.log_text());
}
