//! The real etcdctl (Debian's etcd-client) against a real kvd process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Proc, etcdctl};

fn ok(ep: &str, args: &[&str]) -> String {
    let (success, out, err) = etcdctl(ep, args, None);
    assert!(success, "etcdctl {args:?} failed: {err}");
    out
}

fn json(ep: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    serde_json::from_str(&ok(ep, &a)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_del_txn_compact_status_defrag() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("d"), &[]).await;
    let ep = kvd.endpoint.as_str();

    assert_eq!(ok(ep, &["put", "foo", "bar"]).trim(), "OK");
    assert_eq!(ok(ep, &["put", "foo", "baz", "--prev-kv"]).trim(), "OK\nfoo\nbar");
    assert_eq!(ok(ep, &["get", "foo"]), "foo\nbaz\n");
    let v = json(ep, &["get", "foo"]);
    assert_eq!(v["kvs"][0]["version"], 2);
    assert_eq!(v["kvs"][0]["create_revision"], 2);
    assert_eq!(v["kvs"][0]["mod_revision"], 3);
    assert_eq!(v["header"]["revision"], 3);

    for i in 0..5 {
        ok(ep, &["put", &format!("dir/k{i}"), &format!("v{i}")]);
    }
    assert_eq!(ok(ep, &["get", "dir/", "--prefix", "--keys-only"]).lines().filter(|l| !l.is_empty()).count(), 5);
    let v = json(ep, &["get", "dir/", "--prefix", "--limit", "2"]);
    assert_eq!(
        (v["count"].as_i64(), v["more"].as_bool(), v["kvs"].as_array().unwrap().len()),
        (Some(5), Some(true), 2)
    );
    let v = json(ep, &["get", "dir/", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"]);
    assert_eq!(v["kvs"][0]["value"], "djQ="); // base64("v4")
    let fields = ok(ep, &["get", "dir/", "--prefix", "--keys-only", "-w", "fields"]);
    assert!(fields.contains("\"Count\" : 5"), "{fields}");

    // txn: compare on mod revision, both branches.
    let (s, out, err) = etcdctl(ep, &["txn"], Some("mod(\"foo\") = \"3\"\n\nput foo qux\nget foo\n\nput foo nope\n\n"));
    assert!(s, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n\nfoo\nqux\n");
    let (s, out, _) = etcdctl(ep, &["txn"], Some("value(\"foo\") = \"zzz\"\n\nput foo a\n\nget foo\n\n"));
    assert!(s);
    assert_eq!(out, "FAILURE\n\nfoo\nqux\n");

    assert_eq!(ok(ep, &["del", "dir/", "--prefix"]).trim(), "5");
    assert_eq!(ok(ep, &["get", "dir/", "--prefix"]), "");

    // History, compaction, and the compacted error.
    assert_eq!(ok(ep, &["get", "foo", "--rev", "2"]), "foo\nbar\n");
    let rev = json(ep, &["get", "foo"])["header"]["revision"].as_i64().unwrap();
    assert!(ok(ep, &["compact", &rev.to_string(), "--physical"]).contains(&format!("compacted revision {rev}")));
    let (s, _, err) = etcdctl(ep, &["get", "foo", "--rev", "2"], None);
    assert!(!s && err.contains("etcdserver: mvcc: required revision has been compacted"), "{err}");
    let (s, _, err) = etcdctl(ep, &["get", "foo", "--rev", &(rev + 100).to_string()], None);
    assert!(!s && err.contains("etcdserver: mvcc: required revision is a future revision"), "{err}");

    let st = json(ep, &["endpoint", "status"]);
    let status = &st[0]["Status"];
    assert_eq!(status["version"], "3.6.0");
    assert_eq!(status["leader"], status["header"]["member_id"]);
    assert!(status["dbSize"].as_i64().unwrap() > 0);
    assert_eq!(status["raftIndex"], status["raftAppliedIndex"]);
    let table = ok(ep, &["endpoint", "status", "-w", "table"]);
    assert!(table.contains("true"), "{table}");
    let (s, out, err) = etcdctl(ep, &["endpoint", "health"], None);
    assert!(s && (out + &err).contains("is healthy"));
    assert!(ok(ep, &["defrag"]).contains("Finished defragmenting"));
    assert_eq!(ok(ep, &["get", "foo", "--print-value-only"]).trim(), "qux", "defrag keeps the data");
    assert_eq!(ok(ep, &["alarm", "list"]), "");
    let hk = json(ep, &["endpoint", "hashkv"]);
    assert!(hk[0]["HashKV"]["hash"].as_u64().unwrap() > 0);

    // Snapshot streaming: the saved file ends with the SHA-256 of the rest.
    let snap = dir.path().join("snap.db");
    let out = ok(ep, &["snapshot", "save", snap.to_str().unwrap()]);
    assert!(out.contains("Snapshot saved"), "{out}");
    let bytes = std::fs::read(&snap).unwrap();
    assert_eq!(bytes.len() % 512, 32, "etcd's layout: a multiple of 512 bytes, then the hash");
    use sha2::Digest;
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(sha2::Sha256::digest(body).as_slice(), sum);
}

/// `etcdctl check datascale` writes 10,000 keys and reads the process memory
/// from /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_datascale_passes() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let (ok, out, err) = etcdctl(&kvd.endpoint, &["check", "datascale", "--load=s"], None);
    assert!(ok && out.contains("PASS"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_shrinks_the_backend_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("d"), &[]).await;
    let ep = kvd.endpoint.as_str();
    let mut kv = kvd.kv().await;
    let value = vec![b'x'; 4096];
    for i in 0..2000 {
        kv.put(kvd_api::etcdserverpb::PutRequest {
            key: format!("k{i}").into(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(ok(ep, &["del", "k", "--prefix"]).trim(), "2000");
    let rev = json(ep, &["get", "k"])["header"]["revision"].as_i64().unwrap();
    ok(ep, &["compact", &rev.to_string(), "--physical"]);
    let size = |ep: &str| json(ep, &["endpoint", "status"])[0]["Status"]["dbSize"].as_i64().unwrap();
    let before = size(ep);
    ok(ep, &["defrag"]);
    let after = size(ep);
    assert!(after * 4 < before, "defrag must shrink the file: {before} -> {after} bytes");
    assert_eq!(ok(ep, &["put", "after", "defrag"]).trim(), "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_list_and_disarm() {
    let dir = tempfile::tempdir().unwrap();
    // A quota just above the empty backend's size.
    let kvd = Proc::kvd_ready(&dir.path().join("d"), &["--quota-backend-bytes", "300000"]).await;
    let ep = kvd.endpoint.as_str();
    let value = "x".repeat(20_000);
    let mut refused = None;
    for i in 0..200 {
        let (s, _, err) = etcdctl(ep, &["put", &format!("k{i}"), &value], None);
        if !s {
            refused = Some((i, err));
            break;
        }
    }
    let (n, err) = refused.expect("the quota must stop writes");
    assert!(err.contains("etcdserver: mvcc: database space exceeded"), "{err}");
    assert!(n > 0);
    let alarms = ok(ep, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    // Reads and deletes still work; puts are refused while the alarm is raised.
    assert_eq!(ok(ep, &["get", "k0", "--print-value-only"]).trim(), value);
    let (s, _, err) = etcdctl(ep, &["put", "tiny", "v"], None);
    assert!(!s && err.contains("database space exceeded"), "{err}");
    assert!(!ok(ep, &["del", "k", "--prefix"]).trim().is_empty());
    let status = json(ep, &["endpoint", "status"]);
    assert!(status[0]["Status"]["errors"][0].as_str().unwrap().contains("NOSPACE"));
    // Recovery as etcd documents it: compact, defrag, disarm.
    let rev = json(ep, &["get", "k0"])["header"]["revision"].as_i64().unwrap();
    ok(ep, &["compact", &rev.to_string(), "--physical"]);
    ok(ep, &["defrag"]);
    assert!(ok(ep, &["alarm", "disarm"]).contains("NOSPACE"));
    assert_eq!(ok(ep, &["alarm", "list"]), "");
    assert_eq!(ok(ep, &["put", "after", "ok"]).trim(), "OK");
}

/// Every flag has a KVD_* variable: here --max-txn-ops through KVD_MAX_TXN_OPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_with_env(&dir.path().join("d"), &[], &[("KVD_MAX_TXN_OPS", "2")]);
    kvd.ready().await;
    let ep = kvd.endpoint.as_str();
    let (s, out, err) = etcdctl(ep, &["txn"], Some("\nput a 1\nput b 2\n\n\n"));
    assert!(s, "{err}");
    assert!(out.starts_with("SUCCESS"), "{out}");
    let (s, _, err) = etcdctl(ep, &["txn"], Some("\nput a 1\nput b 2\nput c 3\n\n\n"));
    assert!(!s && err.contains("etcdserver: too many operations in txn request"), "{err}");
}

/// Debian's etcdctl 3.4 with URL endpoints, as etcd's docs write them. Its
/// clientv3 sends the URL as each request's `:authority`
/// (`http://127.0.0.1:port`), which HTTP/2 forbids and etcd takes; kvd
/// mends it (`rpc/conn/authority.rs`). Before, every call failed with
/// RST_STREAM PROTOCOL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_etcdctl_3_4_with_url_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("d"), &[]).await;
    assert!(kvd.endpoint.starts_with("http://"), "{}", kvd.endpoint);
    let ctl = |args: &[&str]| {
        let mut c = Command::new(common::debian_etcdctl_bin());
        c.arg(format!("--endpoints={}", kvd.endpoint)).arg("--command-timeout=10s").args(args);
        c
    };
    let ok = |args: &[&str]| {
        let out = ctl(args).output().expect("Debian's etcd-client is installed by scripts/install-deps");
        assert!(out.status.success(), "etcdctl 3.4 {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(ok(&["put", "k", "v1"]).trim(), "OK");
    assert_eq!(ok(&["put", "k", "v2"]).trim(), "OK");
    assert_eq!(ok(&["get", "k", "--print-value-only"]).trim(), "v2");
    assert_eq!(ok(&["get", "k", "--rev", "2", "--print-value-only"]).trim(), "v1");
    let lease = ok(&["lease", "grant", "60"]);
    let id = lease.split_whitespace().nth(1).expect("lease <id> granted with TTL(60s)");
    assert_eq!(ok(&["put", "leased", "x", "--lease", id]).trim(), "OK");
    assert!(ok(&["lease", "timetolive", id, "--keys"]).contains("leased"));
    assert!(ok(&["endpoint", "status"]).contains(kvd.endpoint.as_str()));
    assert!(ok(&["member", "list"]).contains("started"));
    assert_eq!(ok(&["del", "k"]).trim(), "1");

    // A watch: a stream of its own on the mended connection.
    let mut watch = ctl(&["watch", "k", "--rev", "1"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // A watch that never answers fails the test, not hangs it.
    let lines: Vec<String> =
        std::iter::from_fn(|| rx.recv_timeout(std::time::Duration::from_secs(20)).ok()).take(7).collect();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(lines, ["PUT", "k", "v1", "PUT", "k", "v2", "DELETE"]);
}
