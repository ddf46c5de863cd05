//! The way in from etcd and the way back. A real etcd (3.4 from Debian,
//! 3.6 from the pinned module) is filled with history, a compaction,
//! leases, users and roles, and an alarm; `etcdctl snapshot save` takes its
//! snapshot, `kvctl snapshot restore` makes a kvd data dir of it, and the
//! same reads, run by the same etcdctl against the source etcd and the
//! restored kvd, must answer alike: every key with its revisions, historical
//! ranges, the compacted revision, leases with their keys, auth, alarms,
//! HashKV, and a watch from a revision taken before the move. Back: a kvd
//! filled the same way is saved, `kvctl snapshot export` writes it as an
//! etcd snapshot, `etcdutl snapshot restore` (3.6) takes it, and the etcd
//! started on it answers like the kvd. Damaged etcd files are refused with
//! what is wrong.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Proc, etcdctl};
use kvd_api::etcdserverpb::watch_request::RequestUnion;
use kvd_api::etcdserverpb::{AuthenticateRequest, PutRequest, WatchCreateRequest};
use serde_json::Value;

const ROOT: &[&str] = &["--user", "root:rootpw"];

fn kvctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ctl(ep: &str, args: &[&str]) -> String {
    let (ok, out, err) = etcdctl(ep, args, None);
    assert!(ok, "etcdctl {args:?} against {ep}: {out}{err}");
    out
}

fn json(ep: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = ctl(ep, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A range's answer without the header fields that name the server.
fn range(ep: &str, args: &[&str]) -> Value {
    let mut all = vec!["get", "", "--prefix"];
    all.extend(args);
    all.extend(ROOT);
    let v = json(ep, &all);
    serde_json::json!({ "revision": v["header"]["revision"], "kvs": v["kvs"], "count": v["count"], "more": v["more"] })
}

/// Fills etcd: history on 20 keys, deletes, leases with keys, a physical
/// compaction, writes after it, users and roles, auth on. Returns the
/// revision the compaction went to and the revision after the last write.
async fn fill(etcd: &Proc) -> (i64, i64) {
    let ep = &etcd.endpoint;
    let mut kv = etcd.kv().await;
    for i in 0..100 {
        // Some values longer than a page: kvd stores them cut in chunks.
        let value = match i % 7 {
            0 => format!("v{i}").repeat(1000 + 300 * i),
            _ => format!("v{i}"),
        };
        let req = PutRequest { key: format!("k/{:02}", i % 20).into(), value: value.into(), ..Default::default() };
        kv.put(req).await.unwrap();
    }
    ctl(ep, &["del", "k/03"]);
    ctl(ep, &["del", "k/04"]);
    let lease = |ttl: &str| -> String {
        let out = ctl(ep, &["lease", "grant", ttl]);
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    let (short, long) = (lease("600"), lease("1200"));
    ctl(ep, &["put", "lease/a", "x", "--lease", &short]);
    ctl(ep, &["put", "lease/b", "y", "--lease", &long]);
    ctl(ep, &["put", "lease/c", "z", "--lease", &long]);
    let compacted = json(ep, &["get", "k/00"])["header"]["revision"].as_i64().unwrap() - 10;
    ctl(ep, &["compact", &compacted.to_string(), "--physical"]);
    ctl(ep, &["put", "k/03", "again"]);
    ctl(ep, &["put", "k/05", "newer"]);
    ctl(ep, &["del", "k/06"]);
    for args in [
        vec!["role", "add", "root"],
        vec!["user", "add", "root:rootpw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "reader"],
        vec!["role", "grant-permission", "reader", "read", "k/", "--prefix"],
        vec!["user", "add", "alice:alicepw"],
        vec!["user", "grant-role", "alice", "reader"],
        vec!["auth", "enable"],
    ] {
        ctl(ep, &args);
    }
    let last = range(ep, &["--limit", "1"])["revision"].as_i64().unwrap();
    (compacted, last)
}

/// Waits until `ep` answers a linearizable read by root.
async fn ready_as_root(ep: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, _, err) = etcdctl(ep, &["get", "ready", "--user", "root:rootpw"], None);
        if ok {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{ep} not ready: {err}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What the two servers must answer alike.
fn compare(etcd: &str, kvd: &str, compacted: i64, last: i64) {
    assert_eq!(range(kvd, &[]), range(etcd, &[]), "every key at the current revision");
    for rev in [compacted, compacted + 3, last - 2, last] {
        let rev = rev.to_string();
        assert_eq!(range(kvd, &["--rev", &rev]), range(etcd, &["--rev", &rev]), "every key at revision {rev}");
    }
    let old = (compacted - 1).to_string();
    for ep in [etcd, kvd] {
        let (ok, _, err) = etcdctl(ep, &["get", "k/00", "--rev", &old, "--user", "root:rootpw"], None);
        assert!(!ok && err.contains("required revision has been compacted"), "{ep}: {err}");
    }
    // Leases, with their granted TTLs and keys (the remaining TTL differs:
    // a restored lease starts its clock again, as in etcd).
    let leases = |ep: &str| -> Vec<Value> {
        let mut all = vec!["lease", "list"];
        all.extend(ROOT);
        let list = ctl(ep, &all);
        let mut out: Vec<Value> = list
            .lines()
            .skip(1)
            .map(|hex| {
                let mut args = vec!["lease", "timetolive", hex.trim(), "--keys"];
                args.extend(ROOT);
                let mut v = json(ep, &args);
                // etcdctl flattens the header here; the members differ.
                let o = v.as_object_mut().unwrap();
                o.retain(|k, _| !["cluster_id", "member_id", "raft_term"].contains(&k.as_str()));
                o.retain(|k, _| !k.eq_ignore_ascii_case("ttl"));
                // etcd lists a lease's keys in its map's order.
                if let Some(Value::Array(keys)) = o.get_mut("keys") {
                    keys.sort_by_key(|k| k.to_string());
                }
                v
            })
            .collect();
        out.sort_by_key(|v| v.to_string());
        out
    };
    let on_etcd = leases(etcd);
    assert_eq!(on_etcd.len(), 2, "{on_etcd:?}");
    assert_eq!(leases(kvd), on_etcd, "leases");
    // Users, roles and the auth state.
    for args in
        [vec!["user", "list"], vec!["role", "list"], vec!["user", "get", "alice"], vec!["role", "get", "reader"]]
    {
        let mut all = args.clone();
        all.extend(ROOT);
        let (a, b) = (json(etcd, &all), json(kvd, &all));
        let strip = |mut v: Value| {
            v.as_object_mut().unwrap().remove("header");
            v
        };
        assert_eq!(strip(b), strip(a), "{args:?}");
    }
    // AuthStatus is new in etcd 3.5.
    let status = |ep: &str| etcdctl(ep, &["auth", "status", "--user", "root:rootpw", "-w", "json"], None);
    let on_kvd: Value = serde_json::from_str(&status(kvd).1).unwrap();
    match status(etcd) {
        (true, out, _) => {
            let on_etcd: Value = serde_json::from_str(&out).unwrap();
            assert!(on_etcd["authRevision"].as_u64() > Some(0), "{on_etcd}");
            assert_eq!(on_kvd["authRevision"], on_etcd["authRevision"], "{on_kvd} {on_etcd}");
            assert_eq!(on_kvd["enabled"], on_etcd["enabled"]);
            assert_eq!(on_kvd["enabled"], true);
        }
        (false, _, err) => assert!(err.contains("Unimplemented") && on_kvd["enabled"] == true, "{err} {on_kvd}"),
    }
    // alice reads k/ and nothing else, on both.
    for ep in [etcd, kvd] {
        let (ok, _, err) = etcdctl(ep, &["get", "lease/a", "--user", "alice:alicepw"], None);
        assert!(!ok && err.contains("permission denied"), "{ep}: {err}");
        let (ok, out, err) = etcdctl(ep, &["get", "k/05", "--user", "alice:alicepw"], None);
        assert!(ok && out.contains("newer"), "{ep}: {out}{err}");
    }
    // HashKV: the rows are etcd's and kvd hashes them as etcd does.
    let hash = |ep: &str| {
        let mut all = vec!["endpoint", "hashkv"];
        all.extend(ROOT);
        let v = json(ep, &all);
        (v[0]["HashKV"]["hash"].clone(), v[0]["HashKV"]["compact_revision"].clone())
    };
    let on_etcd = hash(etcd);
    assert!(on_etcd.0.is_u64() && on_etcd.1.as_i64() == Some(compacted), "{on_etcd:?}");
    assert_eq!(hash(kvd), on_etcd, "HashKV (hash, compact revision)");
}

/// A watch from `from` (taken on etcd before the move) sees the same
/// events on both.
async fn watch_from(etcd: &Proc, kvd: &Proc, from: i64) {
    let mut all = Vec::new();
    for p in [etcd, kvd] {
        let mut auth = kvd_api::etcdserverpb::auth_client::AuthClient::connect(p.endpoint.clone()).await.unwrap();
        let token = auth
            .authenticate(AuthenticateRequest { name: "root".into(), password: "rootpw".into() })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut w = common::watch::WatchStream::open_with_token(&p.endpoint, &token).await;
        let created = w
            .create(WatchCreateRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                start_revision: from,
                ..Default::default()
            })
            .await;
        assert!(created.created, "{created:?}");
        let events: Vec<_> = w
            .drain(std::time::Duration::from_millis(500))
            .await
            .into_iter()
            .flat_map(|r| r.events)
            .map(|e| format!("{:?} {:?} {:?}", e.r#type, e.kv, e.prev_kv))
            .collect();
        w.send(RequestUnion::CancelRequest(Default::default())).await;
        all.push(events);
    }
    assert!(all[0].len() >= 4, "{:?}", all[0]);
    assert_eq!(all[1], all[0], "events from revision {from}");
}

async fn import_from(bin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Proc::etcd_with(bin, &dir.path().join("etcd"), &[]);
    etcd.ready().await;
    let (compacted, last) = fill(&etcd).await;

    let snap = dir.path().join("etcd.db");
    let mut save = vec!["snapshot", "save", snap.to_str().unwrap()];
    save.extend(ROOT);
    ctl(&etcd.endpoint, &save);

    let (ok, out, err) = kvctl(&["snapshot", "status", snap.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["format"], "etcd");
    assert_eq!(st["revision"].as_i64(), Some(last), "{st}");
    assert_eq!(st["keys"], range(&etcd.endpoint, &[])["count"], "{st}");

    let data = dir.path().join("kvd");
    let (ok, out, err) = kvctl(&["snapshot", "restore", snap.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(ok && out.contains(&format!("revision {last}")), "{out}{err}");
    let kvd = Proc::kvd(&data, &[]);
    answers_alike(&etcd, &kvd, compacted, last).await;
}

/// `moved`, started on what was moved from `source`, answers the same
/// reads alike, sees the same watch events from before the move, and goes
/// on from the source's revision.
async fn answers_alike(source: &Proc, moved: &Proc, compacted: i64, last: i64) {
    ready_as_root(&moved.endpoint).await;
    compare(&source.endpoint, &moved.endpoint, compacted, last);
    watch_from(source, moved, compacted + 1).await;
    let mut put = vec!["put", "k/after", "1", "-w", "json"];
    put.extend(ROOT);
    let rev = json(&moved.endpoint, &put)["header"]["revision"].as_i64().unwrap();
    assert_eq!(rev, last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_4_snapshot_restores_with_its_revisions() {
    import_from(Path::new("etcd")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_6_snapshot_restores_with_its_revisions() {
    import_from(&common::etcd36_bin()).await;
}

/// An etcd's NOSPACE alarm comes along (etcd keeps it across a restore;
/// `alarm disarm` clears it), and so does an etcd `db` file copied from a
/// data dir, with --skip-hash-check as etcdutl asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_and_a_copied_db_file_come_along() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Proc::etcd_with(&common::etcd36_bin(), &dir.path().join("etcd"), &["--quota-backend-bytes", "2097152"]);
    etcd.ready().await;
    let mut kv = etcd.kv().await;
    let mut refused = None;
    for i in 0..200 {
        let req = PutRequest { key: format!("big/{i}").into(), value: vec![b'x'; 100_000], ..Default::default() };
        if let Err(e) = kv.put(req).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("etcd never ran out of quota");
    assert!(refused.message().contains("database space exceeded"), "{refused:?}");
    let alarms = |ep: &str| json(ep, &["alarm", "list"])["alarms"].clone();
    let raised = alarms(&etcd.endpoint);
    assert_eq!(raised.as_array().map(Vec::len), Some(1), "{raised}");

    let snap = dir.path().join("etcd.db");
    ctl(&etcd.endpoint, &["snapshot", "save", snap.to_str().unwrap()]);
    let data = dir.path().join("kvd");
    let (ok, _, err) = kvctl(&["snapshot", "restore", snap.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{err}");
    let kvd = Proc::kvd(&data, &[]);
    kvd.ready().await;
    assert_eq!(alarms(&kvd.endpoint), raised);
    let (ok, _, err) = etcdctl(&kvd.endpoint, &["put", "more", "x"], None);
    assert!(!ok && err.contains("database space exceeded"), "{err}");
    ctl(&kvd.endpoint, &["alarm", "disarm"]);
    ctl(&kvd.endpoint, &["put", "more", "x"]);

    // The member's own db file: no SHA-256, so only with the flag.
    drop(etcd);
    let db = dir.path().join("etcd/member/snap/db");
    let (ok, _, err) = kvctl(&["snapshot", "status", db.to_str().unwrap()]);
    assert!(!ok && err.contains("--skip-hash-check"), "{err}");
    let (ok, out, err) = kvctl(&["snapshot", "status", db.to_str().unwrap(), "--skip-hash-check", "-w", "json"]);
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["format"], "etcd");
    assert!(st["keys"].as_u64().unwrap() >= 10, "{st}");
}

/// Damaged etcd snapshots are refused with what is wrong, and leave no
/// data dir behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_etcd_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Proc::etcd_with(&common::etcd36_bin(), &dir.path().join("etcd"), &[]);
    etcd.ready().await;
    let mut kv = etcd.kv().await;
    for i in 0..2000 {
        let req = PutRequest { key: format!("k/{i:05}").into(), value: vec![b'v'; 200], ..Default::default() };
        kv.put(req).await.unwrap();
    }
    let snap = dir.path().join("etcd.db");
    ctl(&etcd.endpoint, &["snapshot", "save", snap.to_str().unwrap()]);
    let good = std::fs::read(&snap).unwrap();
    let page = 4096;
    let data_len = good.len() - 32;
    // A flipped byte with the hash: the hash catches it.
    let mut flipped = good.clone();
    flipped[data_len / 2] ^= 0xff;
    // The same, with the hash fixed up, read with --skip-hash-check: the
    // pages must catch it. Flip a page's id, which every page carries.
    // Every branch and leaf page, so that the tree reaches one of them.
    let mut bad_page = good[..data_len].to_vec();
    for p in 2..data_len / page {
        if matches!(bad_page[p * page + 8], 0x01 | 0x02) && bad_page[p * page + 9] == 0 {
            bad_page[p * page] ^= 0x40;
        }
    }
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), false, "without the SHA-256"),
        ("truncated, unchecked", good[..data_len / 2 / page * page].to_vec(), true, "truncated"),
        ("flipped", flipped, false, "SHA-256 mismatch"),
        ("bad page", bad_page, true, "says it is page"),
        ("empty", Vec::new(), false, "size 0"),
    ];
    for (name, bytes, skip, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let data = dir.path().join(format!("{name}.kvd"));
        let mut args = vec!["snapshot", "restore", path.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
        if skip {
            args.push("--skip-hash-check");
        }
        let (ok, _, err) = kvctl(&args);
        assert!(!ok, "{name}: restored");
        assert!(err.contains(want) && !err.contains("panicked"), "{name}: {err:?} should say {want:?}");
        assert!(!data.join("member").exists(), "{name}: a data dir was left");
    }
}

fn etcdutl(args: &[&str]) -> (bool, String, String) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/etcdutl");
    let out = Command::new(&bin).args(args).output().expect("etcdutl is built into .tools/bin by scripts/install-deps");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// kvd -> etcd: the exported snapshot restores with etcdutl 3.6, and the
/// etcd started on it answers like the kvd it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kvd_snapshot_exported_restores_on_etcd_3_6() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let (compacted, last) = fill(&kvd).await;
    let saved = dir.path().join("kvd.db");
    let mut save = vec!["snapshot", "save", saved.to_str().unwrap()];
    save.extend(ROOT);
    ctl(&kvd.endpoint, &save);

    let exported = dir.path().join("etcd.db");
    let (ok, out, err) = kvctl(&["snapshot", "export", saved.to_str().unwrap(), exported.to_str().unwrap()]);
    assert!(ok && out.contains(&format!("revision {last}")), "{out}{err}");
    // etcdutl reads it as etcd's own.
    let (ok, out, err) = etcdutl(&["snapshot", "status", exported.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{out}{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["revision"].as_i64(), Some(last), "{st}");
    // An etcd snapshot is not exported again.
    let (ok, _, err) =
        kvctl(&["snapshot", "export", exported.to_str().unwrap(), dir.path().join("x").to_str().unwrap()]);
    assert!(!ok && err.contains("etcd snapshot already"), "{err}");

    let data = dir.path().join("etcd");
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let (ok, out, err) = etcdutl(&[
        "snapshot",
        "restore",
        exported.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "etcd0",
        "--initial-cluster",
        &format!("etcd0={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(ok, "etcdutl snapshot restore: {out}{err}");
    let etcd = Proc::etcd_with(&common::etcd36_bin(), &data, &[]);
    answers_alike(&kvd, &etcd, compacted, last).await;
}
