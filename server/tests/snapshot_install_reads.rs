//! Reads on a member while it installs a raft snapshot see the content
//! before the install or after it, never a mix (issue 23, item 4): the
//! backend's new content used to be committed before the index was rebuilt
//! from it, and a serializable read in between got "mvcc: corrupt value" or
//! values of two contents at once. The member is down (kill -9) while the
//! leader moves on past its log, and read from as soon as it serves again.
//! (It used to be stopped with SIGSTOP instead; with Pre-Vote it no longer
//! forces an election when it resumes, and the leader, whose replication to
//! it never broke off, kept the entries it needed: no snapshot.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{leader, ready_cluster};
use kvd_api::etcdserverpb::request_op::Request as Op;
use kvd_api::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

const KEYS: usize = 400;

/// One txn that sets every key to `round` (padded to 2 KiB): any one
/// content of the store has the same value under every key.
fn round_txn(round: usize) -> TxnRequest {
    let value = format!("{round:08}").into_bytes().into_iter().cycle().take(2048).collect::<Vec<u8>>();
    let success = (0..KEYS)
        .map(|i| RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: format!("k{i:04}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })),
        })
        .collect();
    TxnRequest { success, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_a_snapshot_install_see_one_content() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--snapshot-count",
        "20",
        "--experimental-snapshot-catchup-entries",
        "5",
        "--max-txn-ops",
        "1000",
        "--log-level",
        "info",
    ];
    let mut members = ready_cluster(dir.path(), 3, 251, &flags).await;
    let l = leader(&members).await;
    let f = (l + 1) % 3;
    let mut kv = members[l].kv().await;
    kv.txn(round_txn(0)).await.unwrap();
    // The follower has the keys; then it falls behind the leader's log.
    let mut fkv = members[f].kv().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fkv
        .range(RangeRequest { key: b"k0000".to_vec(), serializable: true, ..Default::default() })
        .await
        .map_or(true, |r| r.into_inner().kvs.is_empty())
    {
        assert!(Instant::now() < deadline, "the follower never got the first round");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let its backend commit the first round (commits are batched): a
    // member restarted by kill -9 serves serializable reads from its backend
    // before it has re-applied the WAL's later entries, which would be an
    // older content than this test compares with.
    tokio::time::sleep(Duration::from_secs(1)).await;
    members[f].kill9();
    let rounds = 40;
    let mut last = 0;
    for r in 1..=rounds {
        last = kv.txn(round_txn(r)).await.unwrap().into_inner().header.unwrap().revision;
    }
    // Compacted: the revisions the follower's index holds are gone from
    // the snapshot's data.
    kv.compact(CompactionRequest { revision: last, physical: true }).await.unwrap();

    // Readers on the follower, from the moment it serves, while it catches
    // up by a snapshot (refused connections before that do not count).
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(Vec::<String>::new())));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (stop, reads, bad) = (stop.clone(), reads.clone(), bad.clone());
        let mut kv = members[f].kv().await;
        readers.push(tokio::spawn(async move {
            let mut served = false;
            while !stop.load(Ordering::Relaxed) {
                let req = RangeRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    serializable: true,
                    ..Default::default()
                };
                match tokio::time::timeout(Duration::from_secs(10), kv.range(req)).await {
                    Ok(Err(s)) if !served && s.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    Ok(Ok(r)) => {
                        served = true;
                        let r = r.into_inner();
                        let first = r.kvs.first().map(|kv| kv.value.clone());
                        if r.count as usize != KEYS
                            || r.kvs.len() != KEYS
                            || r.kvs.iter().any(|kv| Some(&kv.value) != first.as_ref())
                        {
                            let values: std::collections::BTreeSet<String> =
                                r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value[..8]).to_string()).collect();
                            bad.lock().unwrap().push(format!("count {} with values of rounds {values:?}", r.count));
                        }
                    }
                    Ok(Err(s)) => bad.lock().unwrap().push(format!("{:?}: {}", s.code(), s.message())),
                    Err(_) => bad.lock().unwrap().push("a read took over 10 s".to_string()),
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    members[f].restart();
    let want = format!("{rounds:08}").into_bytes();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = fkv.range(RangeRequest { key: b"k0000".to_vec(), serializable: true, ..Default::default() }).await;
        if r.is_ok_and(|r| r.into_inner().kvs.first().is_some_and(|kv| kv.value.starts_with(&want))) {
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up:\n{}", members[f].log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new content is served from the swap on; the install logs its end
    // after the compaction it carries and the reloads (alarms, leases,
    // auth, members): a second or more in a debug build.
    while !members[f].log_text().contains("installed snapshot from the leader") {
        assert!(Instant::now() < deadline, "the follower caught up without a snapshot:\n{}", members[f].log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} of {} reads during the install were wrong; the first: {:?}",
        bad.len(),
        reads.load(Ordering::Relaxed),
        &bad[..bad.len().min(5)]
    );
    assert!(reads.load(Ordering::Relaxed) > 10, "too few reads to tell");
}
