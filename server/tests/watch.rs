//! Watch against the real etcd: the same writes and the same watchers on both
//! must produce the same event streams; plus compaction, progress, slow
//! consumers, scale, and every member of a cluster.

mod common;

use std::time::{Duration, Instant};

use common::Proc;
use common::watch::WatchStream;
use kvd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kvd_api::etcdserverpb::request_op::Request as Op;
use kvd_api::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchResponse,
};
use kvd_api::mvccpb::Event;
use rand::{Rng, SeedableRng};

/// The watchers each side gets: single key, prefix, range, everything,
/// filters, prev_kv, and historical start revisions.
fn specs(now: i64) -> Vec<WatchCreateRequest> {
    let w = |key: &[u8], end: &[u8]| WatchCreateRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    };
    vec![
        w(b"a", b""),
        w(b"a", b"b"),
        w(b"b", b"d"),
        WatchCreateRequest { prev_kv: true, ..w(b"\0", b"\0") },
        WatchCreateRequest { filters: vec![0], ..w(b"a", b"b") },
        WatchCreateRequest { filters: vec![1], prev_kv: true, ..w(b"b", b"\0") },
        WatchCreateRequest { start_revision: 2, prev_kv: true, ..w(b"\0", b"\0") },
        WatchCreateRequest { start_revision: now - 3, ..w(b"c", b"") },
        WatchCreateRequest { start_revision: now + 5, ..w(b"a", b"z") },
    ]
}

fn key(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    const KEYS: &[&str] = &["a", "ab", "abc", "b", "b/1", "b/2", "c", "cd", "d", "z"];
    KEYS[rng.random_range(0..KEYS.len())].as_bytes().to_vec()
}

fn random_op(rng: &mut rand::rngs::StdRng, i: usize) -> RequestOp {
    let put =
        |k: Vec<u8>| Op::RequestPut(PutRequest { key: k, value: format!("v{i}").into_bytes(), ..Default::default() });
    let request = match rng.random_range(0..10) {
        0..=5 => put(key(rng)),
        6 => Op::RequestDeleteRange(DeleteRangeRequest { key: key(rng), ..Default::default() }),
        7 => {
            let (a, b) = (key(rng), key(rng));
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            Op::RequestDeleteRange(DeleteRangeRequest { key: a, range_end: b, ..Default::default() })
        }
        _ => {
            let (a, b) = (key(rng), key(rng));
            let cmp = Compare {
                key: a.clone(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Greater as i32,
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            };
            let ops = if a == b {
                vec![RequestOp { request: Some(put(a)) }]
            } else {
                vec![
                    RequestOp { request: Some(put(a)) },
                    RequestOp {
                        request: Some(Op::RequestDeleteRange(DeleteRangeRequest { key: b, ..Default::default() })),
                    },
                ]
            };
            Op::RequestTxn(TxnRequest {
                compare: vec![cmp],
                success: ops.clone(),
                failure: ops.into_iter().take(1).collect(),
            })
        }
    };
    RequestOp { request: Some(request) }
}

async fn run(p: &Proc, op: &RequestOp) {
    let mut kv = p.kv().await;
    let res = match op.request.clone().unwrap() {
        Op::RequestPut(r) => kv.put(r).await.map(|_| ()),
        Op::RequestDeleteRange(r) => kv.delete_range(r).await.map(|_| ()),
        Op::RequestTxn(r) => kv.txn(r).await.map(|_| ()),
        Op::RequestRange(_) => unreachable!(),
    };
    res.unwrap();
}

/// Events as comparable tuples (headers differ between servers).
fn events(resps: &[WatchResponse]) -> Vec<(i64, Vec<Event>)> {
    let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
    for r in resps.iter().filter(|r| !r.events.is_empty()) {
        match out.last_mut() {
            Some((id, evs)) if *id == r.watch_id => evs.extend(r.events.clone()),
            _ => out.push((r.watch_id, r.events.clone())),
        }
    }
    let mut per: std::collections::BTreeMap<i64, Vec<Event>> = Default::default();
    for (id, evs) in out {
        per.entry(id).or_default().extend(evs);
    }
    per.into_iter().collect()
}

async fn current_rev(p: &Proc) -> i64 {
    let r = p.kv().await.range(kvd_api::etcdserverpb::RangeRequest { key: b"x".to_vec(), ..Default::default() }).await;
    r.unwrap().into_inner().header.unwrap().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_event_streams_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    for seed in 1..=2u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // History before the watchers exist, for the historical ones.
        for i in 0..40 {
            let op = random_op(&mut rng, i);
            run(&kvd, &op).await;
            run(&etcd, &op).await;
        }
        let now = current_rev(&kvd).await;
        assert_eq!(now, current_rev(&etcd).await);
        let mut streams = Vec::new();
        for p in [&kvd, &etcd] {
            let mut s = WatchStream::open(&p.endpoint).await;
            for c in specs(now) {
                let created = s.create(c).await;
                assert!(created.created && !created.canceled, "{created:?}");
            }
            streams.push(s);
        }
        for i in 0..300 {
            let op = random_op(&mut rng, 1000 + i);
            run(&kvd, &op).await;
            run(&etcd, &op).await;
        }
        let got_kvd = events(&streams[0].drain(Duration::from_millis(1500)).await);
        let got_etcd = events(&streams[1].drain(Duration::from_millis(1500)).await);
        assert_eq!(got_kvd.len(), specs(now).len(), "every watcher saw events (seed {seed})");
        for ((id_k, ev_k), (id_e, ev_e)) in got_kvd.iter().zip(&got_etcd) {
            assert_eq!(id_k, id_e);
            assert_eq!(ev_k, ev_e, "watcher {id_k} (seed {seed})");
        }
        assert_eq!(got_kvd.len(), got_etcd.len());
        // Within a watcher, revisions never go back and no event repeats.
        for (_, evs) in &got_kvd {
            let revs: Vec<(i64, Vec<u8>)> =
                evs.iter().map(|e| (e.kv.as_ref().unwrap().mod_revision, e.kv.as_ref().unwrap().key.clone())).collect();
            assert!(revs.windows(2).all(|w| w[0].0 <= w[1].0), "in revision order");
            let unique: std::collections::HashSet<_> = revs.iter().collect();
            assert_eq!(unique.len(), revs.len(), "no event twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_cancel_progress_and_cancel_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let mut seen = Vec::new();
    for p in [&kvd, &etcd] {
        let mut kv = p.kv().await;
        for i in 0..10 {
            kv.put(PutRequest { key: b"k".to_vec(), value: vec![b'0' + i], ..Default::default() }).await.unwrap();
        }
        kv.compact(CompactionRequest { revision: 8, physical: true }).await.unwrap();
        let mut s = WatchStream::open(&p.endpoint).await;
        // Below the compaction point: created, then canceled with the compaction revision.
        let created =
            s.create(WatchCreateRequest { key: b"k".to_vec(), start_revision: 3, ..Default::default() }).await;
        let compacted = s.next(Duration::from_secs(3)).await.expect("a compacted response");
        // At the compaction point: the history from there.
        let at = s.create(WatchCreateRequest { key: b"k".to_vec(), start_revision: 8, ..Default::default() }).await;
        let history = s.next(Duration::from_secs(3)).await.expect("history from the compaction revision");
        // A progress request once every watcher is synced.
        s.progress().await;
        let progress = s.next(Duration::from_secs(3)).await.expect("a progress response");
        s.cancel(at.watch_id).await;
        let canceled = s.next(Duration::from_secs(3)).await.expect("a cancel response");
        seen.push((created, compacted, history, progress, canceled));
    }
    let strip = |r: &WatchResponse| WatchResponse { header: None, ..r.clone() };
    let (k, e) = (&seen[0], &seen[1]);
    assert_eq!(strip(&k.0), strip(&e.0), "created");
    assert_eq!(strip(&k.1), strip(&e.1), "compacted");
    assert!(k.1.canceled && k.1.compact_revision == 8, "{:?}", k.1);
    assert_eq!(strip(&k.2), strip(&e.2), "history");
    assert_eq!(k.2.events.len(), 4);
    assert_eq!(strip(&k.3), strip(&e.3), "progress");
    assert_eq!(k.3.header.as_ref().unwrap().revision, e.3.header.as_ref().unwrap().revision);
    assert_eq!(strip(&k.4), strip(&e.4), "canceled");
}

/// RSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// A stream that never reads must not hold up writers or a reading watcher,
/// nor make kvd buffer without bound; once it reads, it gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_blocks_nobody_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    // A small backend page cache and a short raft log in memory, so neither
    // filling up is mistaken for buffered events.
    let kvd = Proc::kvd_ready(
        &dir.path().join("kvd"),
        &[
            "--backend-cache-size",
            "4194304",
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "100",
        ],
    )
    .await;
    let pid = kvd.child.as_ref().unwrap().id();
    let mut stalled = WatchStream::open(&kvd.endpoint).await;
    stalled.create(WatchCreateRequest { key: b"s/".to_vec(), range_end: b"s0".to_vec(), ..Default::default() }).await;
    let mut live = WatchStream::open(&kvd.endpoint).await;
    live.create(WatchCreateRequest { key: b"s/".to_vec(), range_end: b"s0".to_vec(), ..Default::default() }).await;
    let before = rss_kib(pid);
    const N: usize = 3000;
    let value = vec![b'v'; 16 << 10];
    let mut kv = kvd.kv().await;
    let mut worst = Duration::ZERO;
    let mut live_seen = 0usize;
    for i in 0..N {
        let t = Instant::now();
        kv.put(PutRequest { key: format!("s/{i:05}").into_bytes(), value: value.clone(), ..Default::default() })
            .await
            .unwrap();
        // The live watcher sees each write promptly, whatever the stalled one does.
        while live_seen <= i {
            let r = live.next(Duration::from_secs(5)).await.expect("live watcher starved");
            live_seen += r.events.len();
        }
        worst = worst.max(t.elapsed());
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("stalled watcher: {N} puts of 16 KiB, worst put+delivery {worst:?}, kvd RSS grew {grown_mib} MiB");
    assert!(worst < Duration::from_secs(2), "a write waited {worst:?}");
    // 3000 × 16 KiB = 47 MiB of events: buffering them for the stalled stream
    // would pass the bound. Without any stalled watcher kvd grows ~23 MiB here
    // (the page cache, the allocator); when the catch-up task re-read a window
    // of events for the full stream every round, 60 MiB.
    assert!(grown_mib < 40, "kvd grew by {grown_mib} MiB with a stalled watcher");
    let mut got = Vec::new();
    while got.len() < N {
        let r = stalled.next(Duration::from_secs(10)).await.expect("stalled watcher never caught up");
        got.extend(r.events.into_iter().map(|e| e.kv.unwrap().key));
    }
    let want: Vec<Vec<u8>> = (0..N).map(|i| format!("s/{i:05}").into_bytes()).collect();
    assert_eq!(got, want, "every event once, in order");
}

/// 10,000 watchers on one stream and 1,000 streams: one write reaches every
/// watcher; memory per watcher is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_and_a_thousand_streams() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let pid = kvd.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let mut one = WatchStream::open(&kvd.endpoint).await;
    for i in 0..10_000 {
        let c = WatchCreateRequest { key: format!("m/{}", i % 100).into_bytes(), ..Default::default() };
        one.send(kvd_api::etcdserverpb::watch_request::RequestUnion::CreateRequest(c)).await;
    }
    let mut created = 0;
    while created < 10_000 {
        let r = one.next(Duration::from_secs(10)).await.expect("created responses");
        created += r.created as usize;
    }
    let mid = rss_kib(pid);
    let mut streams = Vec::new();
    let channels: Vec<tonic::transport::Channel> =
        (0..10).map(|_| tonic::transport::Channel::from_shared(kvd.endpoint.clone()).unwrap().connect_lazy()).collect();
    for i in 0..1000 {
        let mut s = WatchStream::open_on(channels[i % 10].clone()).await;
        s.create(WatchCreateRequest { key: b"m/7".to_vec(), ..Default::default() }).await;
        streams.push(s);
    }
    let after = rss_kib(pid);
    kvd.kv().await.put(PutRequest { key: b"m/7".to_vec(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    let mut n = 0;
    while n < 100 {
        let r = one.next(Duration::from_secs(10)).await.expect("events on the big stream");
        n += r.events.len();
    }
    for s in &mut streams {
        let r = s.next(Duration::from_secs(10)).await.expect("an event on every stream");
        assert_eq!(r.events.len(), 1);
    }
    let per_watcher = (mid.saturating_sub(before) * 1024) / 10_000;
    let per_stream = (after.saturating_sub(mid) * 1024) / 1000;
    eprintln!("watch scale: ~{per_watcher} B per watcher, ~{per_stream} B per stream (RSS {before} -> {after} KiB)");
    assert!(per_watcher < 16 * 1024, "{per_watcher} B per watcher");
    assert!(per_stream < 256 * 1024, "{per_stream} B per stream");
}

/// Watchers on every member of a cluster see the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_delivers_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let members = common::cluster(dir.path(), 3, 141);
    for m in &members {
        m.ready().await;
    }
    let mut streams = Vec::new();
    for m in &members {
        let mut s = WatchStream::open(&m.endpoint).await;
        s.create(WatchCreateRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await;
        streams.push(s);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..200 {
        let op = random_op(&mut rng, i);
        run(&members[i % 3], &op).await;
    }
    let mut all = Vec::new();
    for s in &mut streams {
        all.push(events(&s.drain(Duration::from_millis(1500)).await));
    }
    assert!(!all[0].is_empty() && !all[0][0].1.is_empty());
    assert_eq!(all[0], all[1]);
    assert_eq!(all[0], all[2]);
}

/// `etcdctl watch` with --rev, --prefix and --prev-kv prints the same on kvd and etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_as_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let mut seen = Vec::new();
    for p in [&kvd, &etcd] {
        for (k, v) in [("p/a", "1"), ("p/b", "2"), ("q", "3"), ("p/a", "4")] {
            let (ok, _, err) = common::etcdctl(&p.endpoint, &["put", k, v], None);
            assert!(ok, "{err}");
        }
        let (ok, _, err) = common::etcdctl(&p.endpoint, &["del", "p/b"], None);
        assert!(ok, "{err}");
        let out = std::process::Command::new("timeout")
            .arg("2")
            .arg(common::etcdctl_bin())
            .args([&format!("--endpoints={}", p.endpoint), "watch", "--rev=1", "--prefix", "--prev-kv", "p/"])
            .output()
            .unwrap();
        seen.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    assert_eq!(seen[0], seen[1]);
    assert!(seen[0].starts_with("PUT\np/a\n1\n"), "{}", seen[0]);
    assert_eq!(seen[0].matches("DELETE").count(), 1);
}

/// Watchers that ask for progress notifications get them every
/// `--experimental-watch-progress-notify-interval`, with the current revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let kvd =
        Proc::kvd_ready(&dir.path().join("kvd"), &["--experimental-watch-progress-notify-interval", "500ms"]).await;
    let mut kv = kvd.kv().await;
    kv.put(PutRequest { key: b"x".to_vec(), value: b"1".to_vec(), ..Default::default() }).await.unwrap();
    let mut s = WatchStream::open(&kvd.endpoint).await;
    let c = s.create(WatchCreateRequest { key: b"y".to_vec(), progress_notify: true, ..Default::default() }).await;
    let quiet = s.create(WatchCreateRequest { key: b"z".to_vec(), ..Default::default() }).await;
    let rev = current_rev(&kvd).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = s.next(Duration::from_secs(3)).await.expect("a progress notification");
        assert!(r.events.is_empty());
        assert_ne!(r.watch_id, quiet.watch_id, "only watchers that asked get them");
        got.push((r.watch_id, r.header.unwrap().revision));
    }
    assert!(got.iter().all(|(id, r)| *id == c.watch_id && *r == rev), "{got:?}");
}

/// A history larger than --max-request-bytes plus gRPC's overhead reaches a
/// `fragment` watcher in pieces, as etcd sends it, and a plain watcher whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_arrive_in_fragments_as_etcd_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--max-request-bytes", "8192"];
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &flags).await;
    let mut seen = Vec::new();
    for p in [&kvd, &etcd] {
        // 200 × 4 KB = 800 KB of history, over 8 KiB + 512 KiB.
        let mut kv = p.kv().await;
        for i in 0..200 {
            let put =
                PutRequest { key: format!("f/{i:03}").into_bytes(), value: vec![b'x'; 4000], ..Default::default() };
            kv.put(put).await.unwrap();
        }
        let mut s = WatchStream::open(&p.endpoint).await;
        let all = |fragment| WatchCreateRequest {
            key: b"f/".to_vec(),
            range_end: b"f0".to_vec(),
            start_revision: 1,
            fragment,
            ..Default::default()
        };
        s.create(all(true)).await;
        let mut got: Vec<(i64, usize, bool)> = s
            .drain(Duration::from_millis(800))
            .await
            .iter()
            .map(|r| (r.watch_id, r.events.len(), r.fragment))
            .collect();
        s.create(all(false)).await;
        got.extend(s.drain(Duration::from_millis(800)).await.iter().map(|r| (r.watch_id, r.events.len(), r.fragment)));
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1]);
    assert!(seen[0].iter().filter(|(id, _, f)| *id == 0 && *f).count() >= 1, "fragmented: {:?}", seen[0]);
    assert!(seen[0].contains(&(1, 200, false)), "whole for a plain watcher: {:?}", seen[0]);
}

/// A watcher catching up on history gets, in every response, the store's
/// current revision in the header, as etcd's syncWatchers sends it, also
/// when kvd reads the history in windows of 1,000 revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_responses_carry_the_current_revision_as_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    for p in [&kvd, &etcd] {
        let mut kv = p.kv().await;
        for i in 0..1500 {
            let put = kvd_api::etcdserverpb::PutRequest {
                key: format!("c/{}", i % 7).into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            kv.put(put).await.unwrap();
        }
    }
    let now = current_rev(&kvd).await;
    assert_eq!(now, current_rev(&etcd).await);
    for (name, p) in [("kvd", &kvd), ("etcd", &etcd)] {
        let mut s = WatchStream::open(&p.endpoint).await;
        let spec = WatchCreateRequest {
            key: b"c/".to_vec(),
            range_end: b"c0".to_vec(),
            start_revision: 2,
            ..Default::default()
        };
        assert!(s.create(spec).await.created);
        let resps = s.drain(Duration::from_millis(1500)).await;
        let events: usize = resps.iter().map(|r| r.events.len()).sum();
        assert_eq!(events as i64, now - 1, "{name}: every revision since 2");
        for r in resps.iter().filter(|r| !r.events.is_empty()) {
            let last = r.events.last().unwrap().kv.as_ref().unwrap().mod_revision;
            assert_eq!(
                r.header.as_ref().unwrap().revision,
                now,
                "{name}: a catch-up response up to revision {last} names the store's revision"
            );
        }
    }
}
