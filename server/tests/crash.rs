//! Durability: many clients write while kvd is SIGKILLed mid-stream, again
//! and again; after every restart each acknowledged write is found, with its
//! value and at least its acknowledged revision.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Proc;
use kvd_api::etcdserverpb::request_op::Request;
use kvd_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::{Rng, SeedableRng};

/// key -> (value, revision the write was acknowledged at)
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

const WRITERS: usize = 16;
const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut kvd = Proc::kvd_ready(&dir.path().join("d"), &[]).await;
    let acked: Acked = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut attempted = 0usize;
    for round in 0..ROUNDS {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut kv = kvd.kv().await;
            let acked = acked.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("r{round}/w{w}/{seq}");
                    let value = format!("v{seq}");
                    n += 1;
                    // Alternate plain puts and txns so both apply paths are crashed.
                    let rev = if seq.is_multiple_of(2) {
                        kv.put(PutRequest {
                            key: key.clone().into(),
                            value: value.clone().into(),
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.into_inner().header.unwrap().revision)
                    } else {
                        let op = RequestOp {
                            request: Some(Request::RequestPut(PutRequest {
                                key: key.clone().into(),
                                value: value.clone().into(),
                                ..Default::default()
                            })),
                        };
                        kv.txn(TxnRequest { success: vec![op], ..Default::default() })
                            .await
                            .map(|r| r.into_inner().header.unwrap().revision)
                    };
                    match rev {
                        Ok(rev) => {
                            acked.lock().unwrap().insert(key, (value, rev));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                n
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        kvd.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            attempted += t.await.unwrap();
        }
        kvd.restart();
        kvd.ready().await;
        verify(&kvd, &acked, round).await;
    }
    let n = acked.lock().unwrap().len();
    assert!(n > ROUNDS * WRITERS, "too few acknowledged writes to mean anything: {n}");
    // Every start after a kill found the backend's allocator state recorded
    // (no repair of the whole file) and the keyMeta rows matching the key
    // rows (the index rebuilt from them).
    let log = kvd.log_text();
    assert!(!log.contains(kvd::backend::REPAIRING), "a start repaired the backend file:\n{log}");
    assert!(!log.contains(kvd::mvcc::kvstore::KEY_META_MISMATCH), "a start rebuilt the keyMeta rows:\n{log}");
    eprintln!("crash test: {ROUNDS} kills, {attempted} writes attempted, {n} acknowledged, 0 lost");
}

async fn verify(kvd: &Proc, acked: &Acked, round: usize) {
    let mut kv = kvd.kv().await;
    let resp = kv
        .range(RangeRequest { key: b"r".to_vec(), range_end: b"s".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let found: BTreeMap<String, (String, i64)> = resp
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), (String::from_utf8(kv.value).unwrap(), kv.mod_revision)))
        .collect();
    let acked = acked.lock().unwrap();
    let max_acked = acked.values().map(|(_, r)| *r).max().unwrap_or(0);
    assert!(resp.header.unwrap().revision >= max_acked, "round {round}: revision went backwards");
    for (k, (v, rev)) in acked.iter() {
        match found.get(k) {
            Some((fv, frev)) => {
                assert_eq!(fv, v, "round {round}: {k} has the wrong value");
                assert_eq!(frev, rev, "round {round}: {k} has the wrong revision");
            }
            None => panic!("round {round}: acknowledged write {k}@{rev} lost after kill -9"),
        }
    }
}
