//! Clusters of real kvd processes on 127.0.0.x: writes through any member,
//! kill -9 of the leader under load, re-election, catch-up, equal HashKV.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcdctl, leader, ready_cluster};
use kvd_api::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_serve_every_client_and_survive_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 31, &[]).await;
    // etcdctl through every member; reads everywhere see every write.
    for (i, m) in members.iter().enumerate() {
        let (ok, _, err) = etcdctl(&m.endpoint, &["put", &format!("via{i}"), &format!("v{i}")], None);
        assert!(ok, "{err}");
    }
    for m in &members {
        let (ok, out, _) = etcdctl(&m.endpoint, &["get", "via", "--prefix", "--print-value-only"], None);
        assert!(ok);
        assert_eq!(out, "v0\nv1\nv2\n");
    }
    let eps = members.iter().map(|m| m.endpoint.clone()).collect::<Vec<_>>().join(",");
    let (ok, table, err) = etcdctl(&eps, &["endpoint", "status", "-w", "table"], None);
    assert!(ok && table.matches("true").count() == 1, "exactly one leader: {table}{err}");

    // move-leader hands leadership to another voter.
    let before = leader(&members).await;
    let target = (before + 1) % 3;
    let (ok, status, err) = etcdctl(&members[target].endpoint, &["endpoint", "status", "-w", "json"], None);
    assert!(ok, "{err}");
    let target_id: serde_json::Value = serde_json::from_str(&status).unwrap();
    let target_hex = format!("{:x}", target_id[0]["Status"]["header"]["member_id"].as_u64().unwrap());
    let (ok, out, err) = etcdctl(&eps, &["move-leader", &target_hex], None);
    assert!(ok && out.contains("Leadership transferred"), "{out}{err}");
    assert_eq!(leader(&members).await, target);
    // MemberList carries every member's client URL (what the --cluster forms
    // of etcdctl use; checked below).
    let mut want: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = etcdctl(&members[0].endpoint, &["member", "list", "-w", "json"], None);
        assert!(ok, "{err}");
        let ml: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut urls: Vec<String> = ml["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["clientURLs"][0].as_str().map(str::to_string))
            .collect();
        urls.sort();
        if urls == want {
            break;
        }
        assert!(Instant::now() < deadline, "member list {urls:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The --cluster forms reach every member through MemberList's client URLs.
    let (ok, out, err) = etcdctl(&members[0].endpoint, &["endpoint", "status", "--cluster", "-w", "json"], None);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut seen: Vec<String> = st.as_array().unwrap().iter().map(|e| e["Endpoint"].as_str().unwrap().into()).collect();
    seen.sort();
    assert_eq!(seen, want);
    let leaders: Vec<u64> = st.as_array().unwrap().iter().map(|e| e["Status"]["leader"].as_u64().unwrap()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "{out}");
    let (ok, out, err) = etcdctl(&members[1].endpoint, &["endpoint", "hashkv", "--cluster", "-w", "json"], None);
    assert!(ok, "{err}");
    let hk: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hashes: Vec<u64> = hk.as_array().unwrap().iter().map(|e| e["HashKV"]["hash"].as_u64().unwrap()).collect();
    assert_eq!(hashes.len(), 3);
    let (ok, out, err) = etcdctl(&members[2].endpoint, &["endpoint", "health", "--cluster"], None);
    assert!(ok && out.matches("is healthy").count() + err.matches("is healthy").count() == 3, "{out}{err}");

    // Writers on every member while the leader is killed.
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, m) in members.iter().enumerate() {
        let mut kv = m.kv().await;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("w{w}/{seq}");
                if let Ok(r) =
                    kv.put(PutRequest { key: key.clone().into(), value: b"x".to_vec(), ..Default::default() }).await
                {
                    acked.lock().unwrap().insert(key, r.into_inner().header.unwrap().revision);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let old = leader(&members).await;
    let killed_at = Instant::now();
    members[old].kill9();
    let new = leader(&members).await;
    assert_ne!(new, old);
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    members[old].restart();
    members[old].ready().await;

    // Every acknowledged write is on every member, and all agree on HashKV.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "too few writes acknowledged: {}", acked.len());
    let mut hashes = Vec::new();
    for m in &members {
        let mut kv = m.kv().await;
        let r = kv
            .range(RangeRequest { key: b"w".to_vec(), range_end: b"x".to_vec(), ..Default::default() })
            .await
            .unwrap();
        let r = r.into_inner();
        let found: BTreeMap<String, i64> =
            r.kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), kv.mod_revision)).collect();
        for (k, rev) in &acked {
            assert_eq!(found.get(k), Some(rev), "{} lost {k}@{rev}", m.endpoint);
        }
        let rev = r.header.unwrap().revision;
        hashes.push((
            rev,
            m.maintenance().await.hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner().hash,
        ));
    }
    let rev = hashes.iter().map(|h| h.0).min().unwrap();
    let mut at_rev = Vec::new();
    for m in &members {
        at_rev.push(m.maintenance().await.hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner().hash);
    }
    assert!(at_rev.windows(2).all(|w| w[0] == w[1]), "HashKV differs at revision {rev}: {at_rev:?}");
    // Peer traffic is visible under etcd's metric names.
    let text = members[new].metrics().await;
    for name in [
        "etcd_network_peer_sent_bytes_total{To=",
        "etcd_network_peer_received_bytes_total{From=",
        "etcd_network_peer_round_trip_time_seconds_bucket{",
        "etcd_network_peer_sent_failures_total{To=",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    eprintln!("cluster: {} writes acknowledged, failover in {failover:?}, HashKV equal at revision {rev}", acked.len());
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");
}

/// Without a quorum a member has no leader: `hasleader=true` requests get
/// etcd's "no leader", and writes fail instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_quorum_says_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 51, &[]).await;
    // Keep the leader, the hard case: it must notice it lost its quorum.
    let l = leader(&members).await;
    for (i, m) in members.iter_mut().enumerate() {
        if i != l {
            m.kill9();
        }
    }
    let mut kv = members[l].kv().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut req =
            tonic::Request::new(RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() });
        req.metadata_mut().insert("hasleader", "true".parse().unwrap());
        match kv.range(req).await {
            Err(s) if s.message() == "etcdserver: no leader" => {
                assert_eq!(s.code(), tonic::Code::Unavailable);
                break;
            }
            other => assert!(Instant::now() < deadline, "still answering without a quorum: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Serializable reads without the metadata still serve local data.
    assert!(kv.range(RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() }).await.is_ok());
    let err = kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// A member that was down while the others purged their logs catches up
/// through a snapshot streamed from the leader, and restarts from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_purged_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5", "--log-level", "info"];
    let mut members = ready_cluster(dir.path(), 3, 61, &flags).await;
    let l = leader(&members).await;
    let lagging = (l + 1) % 3;
    members[lagging].kill9();
    let mut kv = members[l].kv().await;
    for i in 0..200 {
        kv.put(PutRequest { key: format!("k{i:03}").into(), value: vec![b'v'; 100], ..Default::default() })
            .await
            .unwrap();
    }
    // The leader snapshots and purges its log as it applies; wait for a
    // snapshot past the lagging member's log before it comes back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let snapshot_at = |log: &str| -> u64 {
        let indexes = log.lines().filter(|l| l.contains("raft snapshot taken")).filter_map(|l| {
            let i = l.rfind("index: ")? + "index: ".len();
            l[i..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()
        });
        indexes.max().unwrap_or(0)
    };
    while snapshot_at(&members[l].log_text()) < 200 {
        assert!(Instant::now() < deadline, "the leader took no snapshot:\n{}", members[l].log_text());
        kv.put(PutRequest { key: b"more".to_vec(), value: vec![b'v'; 10], ..Default::default() }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    members[lagging].restart();
    members[lagging].ready().await;
    let hash_of = |m: &common::Proc| {
        let ep = m.endpoint.clone();
        async move {
            let ch = tonic::transport::Channel::from_shared(ep).unwrap().connect_lazy();
            let mut mc = kvd_api::etcdserverpb::maintenance_client::MaintenanceClient::new(ch);
            let rev = 201; // 200 puts after the first revision
            mc.hash_kv(HashKvRequest { revision: rev }).await.map(|r| r.into_inner().hash).ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (hash_of(&members[l]).await, hash_of(&members[lagging]).await);
        if a.is_some() && a == b {
            break;
        }
        assert!(Instant::now() < deadline, "the lagging member never caught up: {a:?} vs {b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = members[lagging].log_text();
    assert!(log.contains("installed snapshot from the leader"), "caught up without a snapshot?\n{log}");
    // It serves the data and restarts from the installed snapshot.
    members[lagging].restart();
    members[lagging].ready().await;
    let mut lkv = members[lagging].kv().await;
    let r =
        lkv.range(RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(r.into_inner().kvs.len(), 200);
}

/// Five members: the leader is killed twice in a row (two failures, quorum
/// of three kept), writes go on, the whole cluster is then restarted, and
/// every member has every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_two_leader_kills_and_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 5, 91, &[]).await;
    let mut written = Vec::new();
    for round in 0..2 {
        let l = leader(&members).await;
        members[l].kill9();
        let alive = members.iter().position(|m| m.child.is_some()).unwrap();
        let mut kv = members[alive].kv().await;
        for i in 0..20 {
            let key = format!("r{round}/{i}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match kv.put(PutRequest { key: key.clone().into(), value: b"v".to_vec(), ..Default::default() }).await {
                    Ok(_) => break,
                    Err(e) => assert!(Instant::now() < deadline, "writes stopped after losing a leader: {e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            written.push(key);
        }
    }
    // Full restart: every member killed, then all started again.
    for m in members.iter_mut() {
        m.kill9();
    }
    for m in members.iter_mut() {
        m.restart();
    }
    for m in &members {
        m.ready().await;
        let mut kv = m.kv().await;
        let r = kv
            .range(RangeRequest { key: b"r".to_vec(), range_end: b"s".to_vec(), ..Default::default() })
            .await
            .unwrap();
        let keys: Vec<String> = r.into_inner().kvs.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()).collect();
        let mut want = written.clone();
        want.sort();
        assert_eq!(keys, want, "{} after the full restart", m.endpoint);
    }
}

/// Many writes at once through a follower: each is acknowledged and stored
/// once, and the follower sent them to the leader in fewer batches than
/// writes (`kvd_forward_batch_writes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_are_batched_and_all_land() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let members = ready_cluster(dir.path(), 3, 241, &[]).await;
    let l = leader(&members).await;
    let f = (l + 1) % 3;
    // (The follower forwarded its own attributes when it started.)
    let before = forward_batches(&members[f]).await;
    let kv = members[f].kv().await;
    let puts = (0..N).map(|i| {
        let mut kv = kv.clone();
        tokio::spawn(async move {
            let req = PutRequest { key: format!("fw/{i:03}").into(), value: vec![b'v'; 100], ..Default::default() };
            kv.put(req).await.map(|r| r.into_inner().header.map(|h| h.revision).unwrap_or(0))
        })
    });
    let mut revisions = Vec::new();
    for p in futures::future::join_all(puts).await {
        revisions.push(p.unwrap().unwrap_or_else(|e| panic!("a forwarded put failed: {e}")));
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), N, "each write has a revision of its own");
    let mut on_leader = members[l].kv().await;
    let r = on_leader
        .range(RangeRequest {
            key: b"fw/".to_vec(),
            range_end: b"fw0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().count, N as i64, "each write stored once");
    let after = forward_batches(&members[f]).await;
    let (batches, writes) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(writes, N as f64, "every forwarded write counted once");
    assert!(batches < writes, "{writes} writes in {batches} batches: none shared a batch");
}

/// (batches, writes) a member has forwarded to the leader so far.
async fn forward_batches(p: &common::Proc) -> (f64, f64) {
    let metrics = p.metrics().await;
    let value = |name| common::metric_value(&metrics, name);
    (value("kvd_forward_batch_writes_count"), value("kvd_forward_batch_writes_sum"))
}

/// The Status of `m`: (its leader, the raft term).
async fn leader_and_term(m: &common::Proc) -> (u64, u64) {
    let st = m.maintenance().await.status(kvd_api::etcdserverpb::StatusRequest {}).await.unwrap().into_inner();
    (st.leader, st.raft_term)
}

/// A follower stopped (SIGSTOP) for several election timeouts comes back
/// without deposing the leader: with Pre-Vote it asks first whether it
/// could win, the others still hear from their leader and say no, so it
/// never raises the term. Without it, its higher term made the leader step
/// down and the cluster went 2 s without one (the e2e's failover scenario
/// saw "leader changed" errors right after the pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_pause_does_not_depose_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let members = ready_cluster(dir.path(), 3, 101, &[]).await;
    let l = leader(&members).await;
    let f = (l + 1) % 3;
    let before = leader_and_term(&members[l]).await;
    members[f].signal(libc::SIGSTOP);
    // The election timeout here is 500 ms (common::member_args): 8 of them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The other two go on meanwhile.
    let mut kv = members[l].kv().await;
    kv.put(PutRequest { key: b"during".to_vec(), value: b"pause".to_vec(), ..Default::default() }).await.unwrap();
    members[f].signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The follower caught up and serves, under the same leader and term.
    members[f].ready().await;
    let r = members[f].kv().await.range(RangeRequest { key: b"during".to_vec(), ..Default::default() }).await;
    assert_eq!(r.unwrap().into_inner().kvs.len(), 1);
    for m in &members {
        assert_eq!(leader_and_term(m).await, before, "the leader or the term changed after the pause");
    }
}

/// A leader stopped gracefully (SIGTERM, as kubelet stops a pod on a drain
/// or a rollout) hands leadership to a follower before it exits, as etcd
/// does: the others have a new leader the moment it is gone. Without the
/// hand-over they still followed the stopped member until an election
/// timeout passed (the e2e's drain saw writes fail twice with "leader
/// changed" when the evicted member led).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_by_sigterm_hands_leadership_over_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 131, &[]).await;
    let l = leader(&members).await;
    let (old, old_term) = leader_and_term(&members[l]).await;
    assert!(members[l].stop().is_some_and(|s| s.success()), "the leader did not stop cleanly");
    let mut new = Vec::new();
    for (i, m) in members.iter().enumerate().filter(|(i, _)| *i != l) {
        let (now, term) = leader_and_term(m).await;
        assert!(now != 0 && now != old, "member {i} follows {now:x} right after the leader {old:x} stopped");
        assert!(term > old_term, "member {i} at term {term}, the stopped leader's was {old_term}");
        new.push(now);
    }
    assert_eq!(new[0], new[1], "the two others follow different leaders");
    let mut kv = members[(l + 1) % 3].kv().await;
    kv.put(PutRequest { key: b"after".to_vec(), value: b"stop".to_vec(), ..Default::default() }).await.unwrap();
}
