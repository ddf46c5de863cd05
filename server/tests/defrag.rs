//! Online defragmentation: kvd rewrites its backend while writes and reads go
//! on, loses nothing, survives kill -9 right after, and cleans up a rewrite
//! that a crash interrupted.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::{
    CompactionRequest, DefragmentRequest, DeleteRangeRequest, PutRequest, RangeRequest, StatusRequest,
};

/// Every key under `prefix` with its value, read linearizably.
async fn contents(p: &Proc, prefix: &str) -> BTreeMap<String, String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let r = RangeRequest { key: prefix.into(), range_end: end, ..Default::default() };
    let kvs = p.kv().await.range(r).await.unwrap().into_inner().kvs;
    kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap())).collect()
}

async fn db_sizes(p: &Proc) -> (i64, i64) {
    let st = p.maintenance().await.status(StatusRequest {}).await.unwrap().into_inner();
    (st.db_size, st.db_size_in_use)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_under_writes_loses_nothing_and_survives_kill9() {
    let dir = tempfile::tempdir().unwrap();
    // Short batch intervals: many backend commits land while the copy runs.
    let mut kvd = Proc::kvd_ready(&dir.path().join("d"), &["--backend-batch-interval", "5ms"]).await;
    let mut kv = kvd.kv().await;
    // 3,000 keys of 4 KiB, two thirds deleted and compacted away: free pages.
    let big = "x".repeat(4096);
    for i in 0..3000 {
        kv.put(PutRequest { key: format!("old/{i:05}").into(), value: big.clone().into(), ..Default::default() })
            .await
            .unwrap();
    }
    for i in (0..3000).filter(|i| i % 3 != 0) {
        kv.delete_range(DeleteRangeRequest { key: format!("old/{i:05}").into(), ..Default::default() }).await.unwrap();
    }
    let rev = kv.range(RangeRequest { key: b"old/".to_vec(), ..Default::default() }).await.unwrap();
    let rev = rev.into_inner().header.unwrap().revision;
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
    let before = contents(&kvd, "old/").await;
    assert_eq!(before.len(), 1000);
    let (size_before, _) = db_sizes(&kvd).await;

    // Four writers put unique keys and overwrite a shared set while three
    // defragmentations run back to back; every acknowledged write is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (stop, mut kv) = (stop.clone(), kvd.kv().await);
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut worst = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = if n.is_multiple_of(2) {
                    (format!("new/{w}/{n:06}"), format!("v{w}-{n}"))
                } else {
                    (format!("new/shared/{w}/{}", n % 7), format!("s{w}-{n}"))
                };
                let t = Instant::now();
                kv.put(PutRequest { key: key.clone().into(), value: value.clone().into(), ..Default::default() })
                    .await
                    .unwrap();
                worst = worst.max(t.elapsed());
                acked.insert(key, value);
                n += 1;
            }
            (acked, worst)
        }));
    }
    let mut m = kvd.maintenance().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        m.defragment(DefragmentRequest {}).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    let mut worst = Duration::ZERO;
    for w in writers {
        let (a, t) = w.await.unwrap();
        acked.extend(a);
        worst = worst.max(t);
    }
    assert!(acked.len() > 50, "the writers made progress during the defragmentations: {}", acked.len());
    eprintln!("{} writes during 3 defragmentations, slowest put {worst:?}", acked.len());

    let (size_after, in_use) = db_sizes(&kvd).await;
    assert!(size_after * 2 < size_before, "defrag shrinks the file: {size_before} -> {size_after} bytes");
    assert!(in_use <= size_after, "in use {in_use} <= size {size_after}");
    assert_eq!(contents(&kvd, "old/").await, before, "the old keys are intact");
    assert_eq!(contents(&kvd, "new/").await, acked, "every acknowledged write is there, latest value wins");

    // The new file is durable: kill -9 right away and start again.
    kvd.restart();
    kvd.ready().await;
    assert_eq!(contents(&kvd, "old/").await, before);
    assert_eq!(contents(&kvd, "new/").await, acked);
    let (size_restarted, _) = db_sizes(&kvd).await;
    assert!(size_restarted * 2 < size_before, "the compact file is the one kvd opens: {size_restarted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_interrupted_by_a_crash_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut kvd = Proc::kvd_ready(&data, &[]).await;
    kvd.kv().await.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    kvd.stop();
    // What a crash in the middle of a copy leaves: a partial new file.
    let leftover = data.join("member").join("db.redb.defrag");
    std::fs::write(&leftover, vec![0xAB; 64 * 1024]).unwrap();
    kvd.restart();
    kvd.ready().await;
    assert!(!leftover.exists(), "the unfinished file is removed");
    assert!(kvd.log_text().contains("interrupted defragmentation"), "and the log says so");
    assert_eq!(contents(&kvd, "k").await.get("k").map(String::as_str), Some("v"));
}
