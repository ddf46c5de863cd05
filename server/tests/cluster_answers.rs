//! What a cluster answers where kvd differed from etcd (issue 23, item 6):
//! writes a follower forwards to a leader that is gone get etcd's
//! Unavailable errors, which clients retry; Status's `raft_index` is the
//! committed index, not the last index of the log.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, leader, ready_cluster};
use kvd_api::etcdserverpb::{PutRequest, StatusRequest};

fn signal(p: &Proc, sig: i32) {
    let pid = p.child.as_ref().expect("running").id() as i32;
    // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// etcd's answers to a proposal that did not reach a leader.
const RETRIED: [&str; 3] = ["etcdserver: leader changed", "etcdserver: no leader", "etcdserver: request timed out"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_to_a_dead_leader_get_etcds_unavailable_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 21, &[]).await;
    let l = leader(&members).await;
    let f = (l + 1) % 3;
    let mut kv = members[f].kv().await;
    kv.put(PutRequest { key: b"before".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    members[l].kill9();
    // The follower still names the dead leader for an election timeout:
    // these writes are forwarded to it and fail.
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut kv = members[f].kv().await;
        calls.push(tokio::spawn(async move {
            let put = PutRequest { key: format!("k{i}").into_bytes(), value: b"v".to_vec(), ..Default::default() };
            kv.put(put).await.map(drop)
        }));
    }
    let mut failed = Vec::new();
    for c in calls {
        if let Err(s) = c.await.unwrap() {
            failed.push((s.code(), s.message().to_string()));
        }
    }
    assert!(!failed.is_empty(), "no write through the follower failed while its leader was dead");
    for (code, msg) in &failed {
        assert!(*code == tonic::Code::Unavailable && RETRIED.contains(&msg.as_str()), "{code:?}: {msg}");
    }
    // A retry goes through once a new leader is elected.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let put = PutRequest { key: b"after".to_vec(), value: b"v".to_vec(), ..Default::default() };
        match kv.put(put).await {
            Ok(_) => break,
            Err(s) => {
                assert!(s.code() == tonic::Code::Unavailable && RETRIED.contains(&s.message()), "{s:?}");
                assert!(Instant::now() < deadline, "no new leader");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_raft_index_is_the_committed_index() {
    let dir = tempfile::tempdir().unwrap();
    let members = ready_cluster(dir.path(), 3, 26, &[]).await;
    let l = leader(&members).await;
    let mut kv = members[l].kv().await;
    kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    let mut m = members[l].maintenance().await;
    // Quiet: everything in the log is committed and applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = m.status(StatusRequest {}).await.unwrap().into_inner();
        if st.raft_index == st.raft_applied_index {
            break;
        }
        assert!(Instant::now() < deadline, "a quiet leader: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With both followers paused, the leader's new entries are in its log
    // but not committed.
    for i in (0..3).filter(|i| *i != l) {
        signal(&members[i], libc::SIGSTOP);
    }
    let before = m.status(StatusRequest {}).await.unwrap().into_inner();
    let writer = tokio::spawn(async move {
        let put = PutRequest { key: b"uncommitted".to_vec(), value: b"v".to_vec(), ..Default::default() };
        let _ = tokio::time::timeout(Duration::from_secs(3), kv.put(put)).await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = m.status(StatusRequest {}).await.unwrap().into_inner();
    for i in (0..3).filter(|i| *i != l) {
        signal(&members[i], libc::SIGCONT);
    }
    writer.await.unwrap();
    assert_eq!(during.raft_index, before.raft_index, "the committed index moved without a quorum: {during:?}");
    assert_eq!(during.raft_applied_index, before.raft_applied_index);
}
