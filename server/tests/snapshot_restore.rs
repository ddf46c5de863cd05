//! Backup and restore: `etcdctl snapshot save` against kvd, then
//! `kvctl snapshot status|restore`, and a member started on the restored data
//! dir serves exactly the snapshot's data. Damaged files are refused.

mod common;

use std::process::Command;

use common::{Proc, etcdctl};
use kvd_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse};

fn kvctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn everything(kvd: &Proc) -> RangeResponse {
    let mut kv = kvd.kv().await;
    kv.range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_status_restore_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("src"), &[]).await;
    let mut kv = kvd.kv().await;
    for i in 0..200 {
        kv.put(PutRequest {
            key: format!("k{:03}", i % 50).into(),
            value: format!("v{i}").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    kv.delete_range(DeleteRangeRequest { key: b"k010".to_vec(), range_end: b"k020".to_vec(), ..Default::default() })
        .await
        .unwrap();
    kv.compact(CompactionRequest { revision: 150, physical: true }).await.unwrap();
    let before = everything(&kvd).await;
    let rev = before.header.as_ref().unwrap().revision;

    let snap = dir.path().join("backup.db");
    let (ok, out, err) = etcdctl(&kvd.endpoint, &["snapshot", "save", snap.to_str().unwrap()], None);
    assert!(ok && out.contains("Snapshot saved"), "{out}{err}");

    let (ok, out, err) = kvctl(&["snapshot", "status", snap.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["revision"].as_i64(), Some(rev));
    assert_eq!(st["keys"].as_u64(), Some(40));
    assert_eq!(st["size"].as_u64(), Some(std::fs::metadata(&snap).unwrap().len()));
    let (ok, table, _) = kvctl(&["snapshot", "status", snap.to_str().unwrap()]);
    assert!(ok && table.contains("REVISION") && table.contains(&rev.to_string()), "{table}");

    let restored = dir.path().join("restored");
    let (ok, out, err) =
        kvctl(&["snapshot", "restore", snap.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("revision {rev}")), "{out}");
    let (ok, _, err) =
        kvctl(&["snapshot", "restore", snap.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "restoring over a data dir is refused: {err}");

    // Restored without a token, started with one: as etcd, the restored
    // data dir decides the member and cluster, and the flag is ignored.
    let copy = Proc::kvd_ready(&restored, &["--initial-cluster-token", "x", "--log-level", "info"]).await;
    assert!(copy.log_text().contains("--initial-cluster-token and --initial-cluster-state are ignored"));
    // The restore wrote the keyMeta rows: the first start reads them.
    let log = copy.log_text();
    assert!(
        !log.contains(kvd::mvcc::kvstore::KEY_META_MISMATCH),
        "the first start rebuilt the keyMeta rows:
{log}"
    );
    let after = everything(&copy).await;
    assert_eq!(after.kvs, before.kvs, "the restored member serves exactly the snapshot's data");
    assert_eq!(after.header.unwrap().revision, rev);
    // History before the compaction stays compacted; new writes continue the revisions.
    let mut ckv = copy.kv().await;
    let err = ckv.range(RangeRequest { key: b"k001".to_vec(), revision: 100, ..Default::default() }).await.unwrap_err();
    assert!(err.message().contains("compacted"), "{err:?}");
    let put = ckv.put(PutRequest { key: b"new".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(put.into_inner().header.unwrap().revision, rev + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("src"), &[]).await;
    kvd.kv().await.put(PutRequest { key: b"a".to_vec(), value: vec![7; 3000], ..Default::default() }).await.unwrap();
    let snap = dir.path().join("backup.db");
    let (ok, _, err) = etcdctl(&kvd.endpoint, &["snapshot", "save", snap.to_str().unwrap()], None);
    assert!(ok, "{err}");
    let good = std::fs::read(&snap).unwrap();

    let flipped = dir.path().join("flipped.db");
    let mut bytes = good.clone();
    bytes[100] ^= 0x40;
    std::fs::write(&flipped, &bytes).unwrap();
    let (ok, _, err) = kvctl(&["snapshot", "status", flipped.to_str().unwrap()]);
    assert!(!ok && err.contains("SHA-256 mismatch"), "{err}");

    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    let target = dir.path().join("t");
    let (ok, _, err) =
        kvctl(&["snapshot", "restore", truncated.to_str().unwrap(), "--data-dir", target.to_str().unwrap()]);
    assert!(!ok && err.contains("truncated"), "{err}");
    assert!(!target.exists(), "a refused restore creates nothing");
}

/// `kvctl snapshot restore` for each member of a new 3-member cluster: the
/// restored cluster serves exactly the snapshot's data on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_three_member_cluster_serves_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let src = Proc::kvd_ready(&dir.path().join("src"), &[]).await;
    let mut kv = src.kv().await;
    for i in 0..100 {
        kv.put(PutRequest {
            key: format!("k{:03}", i % 30).into(),
            value: format!("v{i}").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let before = everything(&src).await;
    let snap = dir.path().join("backup.db");
    let (ok, _, err) = etcdctl(&src.endpoint, &["snapshot", "save", snap.to_str().unwrap()], None);
    assert!(ok, "{err}");

    let peers: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            let ip = format!("127.0.0.{}", 101 + i);
            let port = common::free_port_on(&ip);
            (format!("r{i}"), ip.clone(), format!("http://{ip}:{port}"))
        })
        .collect();
    let ic = peers.iter().map(|(n, _, u)| format!("{n}={u}")).collect::<Vec<_>>().join(",");
    let mut members = Vec::new();
    for (name, ip, peer) in &peers {
        let data = dir.path().join(name);
        let (ok, _, err) = kvctl(&[
            "snapshot",
            "restore",
            snap.to_str().unwrap(),
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--initial-cluster",
            &ic,
            "--initial-advertise-peer-urls",
            peer,
        ]);
        assert!(ok, "{err}");
        members.push(Proc::member(&data, ip, name, peer, &ic, &[]));
    }
    for m in &members {
        m.ready().await;
        let after = everything(m).await;
        assert_eq!(after.kvs, before.kvs, "{} serves the snapshot's data", m.endpoint);
    }
    // The restored cluster takes writes, replicated to all.
    let mut mkv = members[0].kv().await;
    mkv.put(PutRequest { key: b"new".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    for m in &members {
        let r = m.kv().await.range(RangeRequest { key: b"new".to_vec(), ..Default::default() }).await.unwrap();
        assert_eq!(r.into_inner().kvs.len(), 1);
    }
}
