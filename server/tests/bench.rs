//! `kvctl bench`: each workload runs against a real kvd and reports what it
//! did; the writes it reports are the writes kvd has.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::RangeRequest;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl")).arg("bench").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn count(p: &Proc) -> i64 {
    let r = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
    p.kv().await.range(r).await.unwrap().into_inner().count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let ep = kvd.endpoint.as_str();
    let base = ["--endpoints", ep, "--clients", "4", "--val-size", "16"];

    let put = bench(
        &[&["put"], &base[..], &["--total", "200", "--key-space-size", "50", "--sequential-keys", "--key-size", "8"]]
            .concat(),
    );
    assert_eq!((put["ok"].as_u64(), put["errors"].as_object().map(|e| e.len())), (Some(200), Some(0)), "{put}");
    assert_eq!(count(&kvd).await, 50, "50 distinct keys written");

    // 20 txns of 5 puts over sequential keys: 100 new keys.
    let t = bench(
        &[
            &["txn-put"],
            &base[..],
            &["--total", "20", "--txn-ops", "5", "--key-space-size", "1000000", "--sequential-keys", "--key-size", "9"],
        ]
        .concat(),
    );
    assert_eq!(t["ok"], 20, "{t}");
    assert_eq!(count(&kvd).await, 150);

    for consistency in ["l", "s"] {
        let r = bench(
            &[&["range", "0", "g"], &base[..], &["--total", "100", "--consistency", consistency, "--count-only"]]
                .concat(),
        );
        assert_eq!((r["ok"].as_u64(), r["workload"].as_str()), (Some(100), Some("range")), "{r}");
    }
    let m =
        bench(&[&["txn-mixed"], &base[..], &["--total", "100", "--rw-ratio", "3", "--key-space-size", "50"]].concat());
    assert_eq!(m["ok"], 100, "{m}");

    // --duration and --rate: 1 s at 40 requests/s is about 40 requests.
    let started = Instant::now();
    let d = bench(&[&["put"], &base[..], &["--duration", "1s", "--rate", "40"]].concat());
    assert!(started.elapsed() >= Duration::from_secs(1));
    let n = d["ok"].as_u64().unwrap();
    assert!((30..=50).contains(&n), "{d}");

    // Every put reaches every watcher once: 20 puts × 3 streams × 4 watchers.
    let w = bench(
        &[
            &["watch-latency"],
            &base[..],
            &["--conns", "2", "--streams", "3", "--watchers-per-stream", "4", "--put-total", "20", "--put-rate", "100"],
        ]
        .concat(),
    );
    assert_eq!((w["ok"].as_u64(), w["workload"].as_str()), (Some(240), Some("watch-latency")), "{w}");
    assert!(w["p99_ms"].as_f64().unwrap() > 0.0);

    // Watchers spread over keys, prefix watchers that see every put, and a
    // stream nobody reads: 6 key watchers on 3 keys see 10 puts each, the
    // 2 prefix watchers all 30.
    let w = bench(
        &[
            &["watch-latency"],
            &base[..],
            &["--streams", "2", "--watchers-per-stream", "3", "--keys", "3", "--prefix-watchers", "2"],
            &["--slow-streams", "1", "--put-total", "30", "--put-rate", "100"],
        ]
        .concat(),
    );
    assert_eq!(w["ok"].as_u64(), Some(6 * 10 + 2 * 30), "{w}");
    assert!(w["key_watchers_p99_ms"].as_f64().unwrap() > 0.0 && w["prefix_watchers_p99_ms"].as_f64().unwrap() > 0.0);

    // One lease per client, each renewed over its own stream; the leases are
    // revoked at the end.
    let k = bench(&[&["lease-keepalive"], &base[..], &["--total", "100"]].concat());
    assert_eq!((k["ok"].as_u64(), k["workload"].as_str()), (Some(100), Some("lease-keepalive")), "{k}");
    let (ok, out, err) = common::etcdctl(ep, &["lease", "list"], None);
    assert!(ok && out.contains("found 0 leases"), "{out}{err}");

    // A reply longer than one HTTP/2 frame (16 KiB; here 20 values of 4 KiB
    // and the keys before them) is gathered whole before it is decoded.
    let fill = ["--endpoints", ep, "--total", "20", "--key-space-size", "20", "--sequential-keys", "--key-size", "3"];
    let p = bench(&[&["put"], &fill[..], &["--val-size", "4096"]].concat());
    assert_eq!(p["ok"], 20, "{p}");
    // The range holds them all (so its reply is over 80 KiB).
    let (ok, out, err) = common::etcdctl(ep, &["get", "0", "g", "--count-only", "--write-out=fields"], None);
    let count = out.lines().find_map(|l| l.strip_prefix("\"Count\" : ")).and_then(|n| n.trim().parse::<u64>().ok());
    assert!(ok && count >= Some(20), "{out}{err}");
    let r = bench(&["range", "0", "g", "--endpoints", ep, "--clients", "2", "--total", "10"]);
    assert_eq!((r["ok"].as_u64(), r["errors"].as_object().map(|e| e.len())), (Some(10), Some(0)), "{r}");

    // A refused request is counted by its code and message, not as a success
    // (kvd answers it with the status alone, in the reply's headers).
    let big = bench(&["put", "--endpoints", ep, "--clients", "2", "--total", "6", "--val-size", "1600000"]);
    assert_eq!(big["ok"], 0, "{big}");
    assert_eq!(big["errors"]["InvalidArgument: etcdserver: request is too large"], 6, "{big}");

    // Kubernetes-shaped keys, and LISTs of them in pages as kube-apiserver
    // sends them: 1,234 objects are 3 pages of 500 (500, 500, 234), so 6
    // pages are 2 whole LISTs; unpaginated, each request is one.
    let objects = bench(
        &[
            &["put"],
            &base[..],
            &["--total", "1234", "--key-space-size", "1234", "--sequential-keys", "--key-prefix", "/registry/pods/ns/"],
        ]
        .concat(),
    );
    assert_eq!(objects["ok"], 1234, "{objects}");
    let (ok, out, err) =
        common::etcdctl(ep, &["get", "/registry/pods/", "--prefix", "--count-only", "-w", "fields"], None);
    let count = out.lines().find_map(|l| l.strip_prefix("\"Count\" : ")).and_then(|n| n.trim().parse::<u64>().ok());
    assert!(ok && count == Some(1234), "{out}{err}");
    let paged = bench(&["list", "/registry/pods/", "--endpoints", ep, "--limit", "500", "--total", "6"]);
    assert_eq!((paged["ok"].as_u64(), paged["lists"].as_f64()), (Some(6), Some(2.0)), "{paged}");
    assert!(paged["keys_per_second"].as_f64().unwrap() * paged["seconds"].as_f64().unwrap() > 2467.0, "{paged}");
    let whole = bench(&["list", "/registry/pods/", "--endpoints", ep, "--limit", "0", "--total", "3"]);
    assert_eq!((whole["ok"].as_u64(), whole["lists"].as_f64()), (Some(3), Some(3.0)), "{whole}");

    // --target-leader finds the (only) member through Status.
    let l = bench(&[&["put"], &base[..], &["--total", "10", "--target-leader"]].concat());
    assert_eq!(l["ok"], 10);
}
