//! `kvctl backup save|list|fetch|restore` against real kvd clusters: a
//! backup read from a follower of a 3-member cluster (127.0.0.61-63)
//! into a directory, pruned by count, fetched back with its SHA-256
//! checked, and restored into a member that serves the same keys,
//! revisions, history and leases; damaged, truncated and missing backups
//! refused with nothing created. S3 transport, credentials and memory are
//! in `backup_s3.rs`.

mod common;

use std::path::Path;

use common::{Proc, leader, put_retrying, ready_cluster};
use kvd_api::etcdserverpb::{
    CompactionRequest, LeaseGrantRequest, LeaseLeasesRequest, PutRequest, RangeRequest, RangeResponse, StatusRequest,
};
use serde_json::Value;

struct Run {
    ok: bool,
    json: Value,
    stdout: String,
    stderr: String,
}

fn kvctl(args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .args(if ["save", "restore", "verify"].contains(&args[1]) {
            &["--termination-log", "/nonexistent"][..]
        } else {
            &[]
        })
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or(Value::Null);
    Run { ok: out.status.success(), json, stdout, stderr: String::from_utf8_lossy(&out.stderr).to_string() }
}

async fn everything(m: &Proc, revision: i64) -> RangeResponse {
    let req = RangeRequest { key: vec![0], range_end: vec![0], revision, ..Default::default() };
    m.kv().await.range(req).await.unwrap().into_inner()
}

/// Keys with history, deletions, a compaction and a lease.
async fn fill(m: &Proc) -> i64 {
    let mut kv = m.kv().await;
    for i in 0..60 {
        let req =
            PutRequest { key: format!("k/{:02}", i % 15).into(), value: format!("v{i}").into(), ..Default::default() };
        put_retrying(&mut kv, req).await;
    }
    let lease = m.lease().await.lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 }).await.unwrap().into_inner().id;
    put_retrying(&mut kv, PutRequest { key: b"leased".to_vec(), value: b"x".to_vec(), lease, ..Default::default() })
        .await;
    kv.compact(CompactionRequest { revision: 20, physical: true }).await.unwrap();
    lease
}

fn save(eps: &str, to: &str, extra: &[&str]) -> Run {
    let mut args = vec!["backup", "save", "--endpoints", eps, "--to", to, "--cluster", "demo"];
    args.extend(extra);
    let r = kvctl(&args);
    assert!(r.ok, "{}", r.stderr);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_come_from_a_follower_are_pruned_and_restore_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let members = ready_cluster(dir.path(), 3, 61, &[]).await;
    let eps = members.iter().map(|m| m.endpoint.clone()).collect::<Vec<_>>().join(",");
    let lease = fill(&members[0]).await;
    let to = format!("file://{}", dir.path().join("backups").display());

    // Three backups with writes between them; two are kept.
    let mut saved = Vec::new();
    for round in 0..3 {
        put_retrying(
            &mut members[0].kv().await,
            PutRequest { key: b"round".to_vec(), value: vec![round], ..Default::default() },
        )
        .await;
        let r = save(&eps, &to, &["--keep-last", "2"]);
        assert_eq!(r.json["fromLeader"], false, "a follower serves the backup: {} {}", r.json, r.stderr);
        assert_eq!(r.json["membersSkipped"], Value::Array(vec![]), "{}", r.json);
        saved.push(r.json);
    }
    let leader_id = {
        let l = leader(&members).await;
        let st = members[l].maintenance().await.status(StatusRequest {}).await.unwrap().into_inner();
        format!("{:x}", st.header.unwrap().member_id)
    };
    for s in &saved {
        assert_eq!(s["result"], "saved", "{s}");
        assert_ne!(s["memberId"].as_str(), Some(leader_id.as_str()));
        assert_eq!(s["format"], "kvd");
        assert_eq!(s["compression"], "zstd");
        assert!(s["storedSize"].as_u64().unwrap() < s["size"].as_u64().unwrap(), "{s}");
    }
    assert_eq!(saved[0]["pruned"], Value::Array(vec![]));
    assert_eq!(saved[2]["pruned"], Value::Array(vec![saved[0]["key"].clone()]), "the oldest is pruned");
    let listed = kvctl(&["backup", "list", "--from", &to, "--cluster", "demo", "-w", "json"]);
    let keys: Vec<Value> =
        listed.stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["key"].clone()).collect();
    assert_eq!(keys, vec![saved[2]["key"].clone(), saved[1]["key"].clone()], "newest first");

    // The newest, fetched: the same SHA-256 and revision as saved.
    let last = &saved[2];
    let rev = last["revision"].as_i64().unwrap();
    let snap = dir.path().join("fetched.snap");
    let f = kvctl(&["backup", "fetch", "--from", &to, "--cluster", "demo", "--out", snap.to_str().unwrap()]);
    assert!(f.ok, "{}", f.stderr);
    assert_eq!(f.json["key"], last["key"]);
    assert_eq!(f.json["sha256"], last["sha256"]);
    assert_eq!(f.json["size"], last["size"]);
    let st = kvctl(&["snapshot", "status", snap.to_str().unwrap(), "-w", "json"]);
    assert!(st.ok, "{}", st.stderr);
    assert_eq!(st.json["revision"].as_i64(), Some(rev), "the name's revision is the snapshot's");

    // Restored into a new member: the same keys, revisions, history and lease.
    let ip = "127.0.0.64";
    let peer = format!("http://{ip}:{}", common::free_port_on(ip));
    // The data dir exists, as a volume's mount point does (with lost+found).
    let data = dir.path().join("restored");
    std::fs::create_dir_all(data.join("lost+found")).unwrap();
    let restore_args = |extra: &[&str]| {
        let mut a = vec![
            "backup",
            "restore",
            "--from",
            &to,
            "--cluster",
            "demo",
            "--name",
            "r0",
            "--data-dir",
            data.to_str().unwrap(),
            "--initial-advertise-peer-urls",
            &peer,
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = restore_args(&[]);
    let r = kvctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.ok, "{}", r.stderr);
    assert_eq!((r.json["result"].as_str(), r.json["revision"].as_i64()), (Some("restored"), Some(rev)));
    let joining = dir.path().join("joining");
    let j = kvctl(&[
        "backup",
        "restore",
        "--from",
        &to,
        "--cluster",
        "demo",
        "--data-dir",
        joining.to_str().unwrap(),
        "--initial-cluster-state",
        "existing",
    ]);
    assert!(
        j.ok && j.json["result"] == "skipped" && !joining.exists(),
        "a joining member restores nothing: {}",
        j.stderr
    );
    let args = restore_args(&["--skip-if-exists"]);
    let again = kvctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.ok && again.json["result"] == "skipped", "{} {}", again.stdout, again.stderr);
    let ic = format!("r0={peer}");
    let restored = Proc::member(&data, ip, "r0", &peer, &ic, &[]);
    restored.ready().await;
    let source = &members[1];
    assert_eq!(everything(&restored, 0).await.kvs, everything(source, rev).await.kvs);
    assert_eq!(everything(&restored, 30).await.kvs, everything(source, 30).await.kvs, "history kept");
    let err = restored.kv().await.range(RangeRequest { key: b"k/".to_vec(), revision: 19, ..Default::default() }).await;
    assert!(err.unwrap_err().message().contains("compacted"));
    let leases = restored.lease().await.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases;
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![lease]);
    let mut kv = restored.kv().await;
    let put = kv.put(PutRequest { key: b"n".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(put.into_inner().header.unwrap().revision, rev + 1);

    // A follower down: the other one serves, and the result names the one skipped.
    let mut members = members;
    let l = leader(&members).await;
    let down = (l + 1) % 3;
    members[down].kill9();
    let r = save(&eps, &to, &[]);
    assert_eq!(r.json["fromLeader"], false, "{} {}", r.json, r.stderr);
    assert_ne!(r.json["member"], format!("m{down}"), "{}", r.json);
    let skipped = r.json["membersSkipped"].as_array().cloned().unwrap_or_default();
    assert!(skipped.len() == 1 && skipped[0].as_str().unwrap_or("").starts_with(&format!("m{down} ")), "{}", r.json);
}

/// Corrupts the stored object `key` under `root` with `damage`.
fn damaged(root: &Path, key: &str, damage: impl FnOnce(&mut Vec<u8>)) {
    let p = root.join(key);
    let mut b = std::fs::read(&p).unwrap();
    damage(&mut b);
    std::fs::write(&p, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_truncated_and_missing_backups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = Proc::kvd_ready(&dir.path().join("m"), &[]).await;
    fill(&m).await;
    let root = dir.path().join("backups");
    let to = format!("file://{}", root.display());
    let out = dir.path().join("out.snap");
    let fetch = |key: &str| {
        kvctl(&["backup", "fetch", "--from", &to, "--cluster", "demo", "--key", key, "--out", out.to_str().unwrap()])
    };
    for compression in ["none", "gzip", "zstd"] {
        let key = save(&m.endpoint, &to, &["--compression", compression]).json["key"].as_str().unwrap().to_string();
        let good = std::fs::read(root.join(&key)).unwrap();
        // A byte flipped in the middle: decompression or the SHA-256 fails.
        damaged(&root, &key, |b| {
            let i = b.len() / 2;
            b[i] ^= 0x10;
        });
        let r = fetch(&key);
        assert!(!r.ok, "{compression}: a flipped byte is caught");
        let v = kvctl(&["backup", "verify", "--from", &to, "--cluster", "demo", "--key", &key]);
        assert!(!v.ok && v.stderr == r.stderr, "{compression}: verify says what fetch says: {}", v.stderr);
        assert!(
            r.stderr.contains("SHA-256 mismatch") || r.stderr.contains("decompress") || r.stderr.contains("cut short"),
            "{compression}: {}",
            r.stderr
        );
        assert!(!out.exists() && !dir.path().join("out.snap.part").exists(), "{compression}: nothing is left behind");
        // Cut short.
        std::fs::write(root.join(&key), &good[..good.len() * 2 / 3]).unwrap();
        let r = fetch(&key);
        assert!(!r.ok && r.stderr.contains(&key), "{compression}: {}", r.stderr);
        assert!(!out.exists());
        // A restore from it creates no data dir.
        let data = dir.path().join("never");
        let r = kvctl(&[
            "backup",
            "restore",
            "--from",
            &to,
            "--cluster",
            "demo",
            "--key",
            &key,
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(!r.ok && !data.exists(), "{compression}: {}", r.stderr);
        std::fs::write(root.join(&key), &good).unwrap();
        assert!(fetch(&key).ok, "{compression}: the intact object fetches");
        let v = kvctl(&["backup", "verify", "--from", &to, "--cluster", "demo", "--key", &key]);
        assert!(v.ok && v.json["result"] == "valid", "{compression}: {}", v.stderr);
        std::fs::remove_file(&out).unwrap();
    }
    let r = fetch("20200101T000000Z-r1.snap");
    assert!(!r.ok && r.stderr.contains("is not in"), "{}", r.stderr);
    let r = kvctl(&["backup", "fetch", "--from", &to, "--cluster", "other", "--out", out.to_str().unwrap()]);
    assert!(!r.ok && r.stderr.contains("no backup of cluster \"other\""), "{}", r.stderr);
    let r = kvctl(&["backup", "save", "--endpoints", &m.endpoint, "--to", "relative/path"]);
    assert!(!r.ok && r.stderr.contains("absolute"), "{}", r.stderr);
}
