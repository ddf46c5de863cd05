//! Leases against the real etcd (etcdctl output, errors, TTL rules, keys
//! deleted in one revision on revoke and on expiry), across a restart, and
//! across a leader change with keep-alives sent to followers.

mod common;

use std::time::{Duration, Instant};

use common::watch::WatchStream;
use common::{Proc, etcdctl};
use kvd_api::etcdserverpb::lease_client::LeaseClient;
use kvd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, WatchCreateRequest,
};
use tonic::transport::Channel;

fn lease_client(p: &Proc) -> LeaseClient<Channel> {
    LeaseClient::new(Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy())
}

/// etcdctl's answer with the lease id (random per server) masked.
fn masked(out: &str, id: &str) -> String {
    out.replace(id, "ID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands_and_errors_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let mut seen: Vec<Vec<String>> = Vec::new();
    for p in [&kvd, &etcd] {
        let ep = p.endpoint.as_str();
        let mut out = Vec::new();
        let run = |args: &[&str]| {
            let (ok, o, e) = etcdctl(ep, args, None);
            let e = e.lines().filter(|l| !l.contains("retrying of unary invoker")).collect::<Vec<_>>().join("\n");
            (ok, o, e)
        };
        // The minimum TTL: ceil(1.5 × election timeout) = 2 s with the defaults.
        let (ok, o, e) = run(&["lease", "grant", "1"]);
        assert!(ok, "{e}");
        let id = o.split_whitespace().nth(1).unwrap().to_string();
        out.push(masked(&o, &id));
        let (ok, _, e) = run(&["put", "--lease", &id, "lk", "lv"]);
        assert!(ok, "{e}");
        let (_, o, _) = run(&["lease", "keep-alive", "--once", &id]);
        out.push(masked(&o, &id));
        let (_, o, _) = run(&["lease", "timetolive", &id, "--keys"]);
        // remaining() may be 1 or 2 by now.
        out.push(masked(&o, &id).replace("remaining(2s)", "remaining(1s)"));
        let (_, o, _) = run(&["lease", "list"]);
        out.push(masked(&o, &id));
        let (ok, o, e) = run(&["lease", "revoke", &id]);
        out.push(format!("{ok} {} {e}", masked(&o, &id)));
        let (_, o, _) = run(&["get", "lk"]);
        out.push(o);
        for args in [
            &["lease", "revoke", "1234"][..],
            &["lease", "timetolive", "1234"],
            &["lease", "keep-alive", "--once", "1234"],
            &["lease", "grant", "9000000001"],
            &["put", "--lease", "1234", "k", "v"],
        ] {
            let (ok, o, e) = run(args);
            out.push(format!("{args:?}: {ok} {o} {e}"));
        }
        // Explicit ids, a duplicate, and TTL/keys through the API.
        let mut lc = lease_client(p);
        lc.lease_grant(LeaseGrantRequest { id: 77, ttl: 60 }).await.unwrap();
        let dup = lc.lease_grant(LeaseGrantRequest { id: 77, ttl: 60 }).await.unwrap_err();
        out.push(format!("{:?} {}", dup.code(), dup.message()));
        let leases = lc.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner();
        out.push(format!("{:?}", leases.leases.iter().map(|l| l.id).collect::<Vec<_>>()));
        seen.push(out);
    }
    assert_eq!(seen[0], seen[1]);
}

/// Revoking a lease deletes its keys in one revision; expiry does the same,
/// by itself, after the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_expiry_delete_the_keys_in_one_revision_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let mut seen = Vec::new();
    for p in [&kvd, &etcd] {
        let mut lc = lease_client(p);
        let mut kv = p.kv().await;
        let mut w = WatchStream::open(&p.endpoint).await;
        w.create(WatchCreateRequest { key: b"l/".to_vec(), range_end: b"l0".to_vec(), ..Default::default() }).await;
        lc.lease_grant(LeaseGrantRequest { id: 5, ttl: 100 }).await.unwrap();
        lc.lease_grant(LeaseGrantRequest { id: 6, ttl: 2 }).await.unwrap();
        for (k, l) in [("l/a", 5), ("l/b", 5), ("l/c", 6), ("l/d", 6), ("l/e", 0)] {
            kv.put(PutRequest { key: k.into(), value: b"v".to_vec(), lease: l, ..Default::default() }).await.unwrap();
        }
        // Moving a key to another lease detaches it from the first.
        kv.put(PutRequest { key: "l/b".into(), value: b"v2".to_vec(), lease: 6, ..Default::default() }).await.unwrap();
        let ttl = lc.lease_time_to_live(LeaseTimeToLiveRequest { id: 5, keys: true }).await.unwrap().into_inner();
        let keys5 = ttl.keys.clone();
        lc.lease_revoke(LeaseRevokeRequest { id: 5 }).await.unwrap();
        let started = Instant::now();
        // Lease 6 expires on its own.
        loop {
            let r = kv.range(RangeRequest { key: b"l/".to_vec(), range_end: b"l0".to_vec(), ..Default::default() });
            let n = r.await.unwrap().into_inner().kvs.len();
            if n == 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "lease 6 never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let expired_after = started.elapsed();
        let ttl6 = lc.lease_time_to_live(LeaseTimeToLiveRequest { id: 6, keys: true }).await.unwrap().into_inner();
        let evs: Vec<(i32, Vec<u8>, i64)> = w
            .drain(Duration::from_millis(500))
            .await
            .into_iter()
            .flat_map(|r| r.events)
            .map(|e| {
                let kv = e.kv.unwrap();
                (e.r#type, kv.key, kv.mod_revision)
            })
            .collect();
        seen.push((keys5, evs, ttl6.ttl, ttl6.keys));
        assert!(expired_after < Duration::from_secs(5), "expired after {expired_after:?}");
    }
    assert_eq!(seen[0], seen[1]);
    let (_, evs, ttl, _) = &seen[0];
    assert_eq!(*ttl, -1, "an expired lease is gone");
    // Revoking 5 deletes l/a (l/b moved to lease 6); 6 expires with l/b, l/c, l/d.
    let deletes: Vec<(&[u8], i64)> = evs.iter().filter(|e| e.0 == 1).map(|e| (e.1.as_slice(), e.2)).collect();
    assert_eq!(deletes.iter().map(|d| d.0).collect::<Vec<_>>(), [&b"l/a"[..], b"l/b", b"l/c", b"l/d"]);
    assert!(deletes[1].1 == deletes[2].1 && deletes[2].1 == deletes[3].1, "expiry: one revision {deletes:?}");
    assert!(deletes[0].1 < deletes[1].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let mut lc = lease_client(&kvd);
    lc.lease_grant(LeaseGrantRequest { id: 42, ttl: 30 }).await.unwrap();
    lc.lease_grant(LeaseGrantRequest { id: 43, ttl: 30 }).await.unwrap();
    let mut kv = kvd.kv().await;
    kv.put(PutRequest { key: b"r".to_vec(), value: b"v".to_vec(), lease: 42, ..Default::default() }).await.unwrap();
    // More keys than one page of the restart's scan, around unleased ones.
    for batch in 0..15 {
        let ops = (0..100)
            .map(|i| kvd_api::etcdserverpb::RequestOp {
                request: Some(kvd_api::etcdserverpb::request_op::Request::RequestPut(PutRequest {
                    key: format!("many/{batch:02}/{i:03}").into_bytes(),
                    value: b"v".to_vec(),
                    lease: if i % 10 == 0 { 0 } else { 42 },
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(kvd_api::etcdserverpb::TxnRequest { success: ops, ..Default::default() }).await.unwrap();
    }
    lc.lease_revoke(LeaseRevokeRequest { id: 43 }).await.unwrap();
    kvd.restart();
    kvd.ready().await;
    let mut lc = lease_client(&kvd);
    let ttl = lc.lease_time_to_live(LeaseTimeToLiveRequest { id: 42, keys: true }).await.unwrap().into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert_eq!(ttl.keys.len(), 1 + 15 * 90, "every leased key is attached again");
    assert!(ttl.keys.contains(&b"r".to_vec()) && !ttl.keys.contains(&b"many/00/000".to_vec()));
    assert!(ttl.ttl > 20, "{ttl:?}");
    let leases = lc.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner();
    assert_eq!(leases.leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![42]);
    lc.lease_revoke(LeaseRevokeRequest { id: 42 }).await.unwrap();
    let mut kv = kvd.kv().await;
    assert!(
        kv.range(RangeRequest { key: b"r".to_vec(), ..Default::default() }).await.unwrap().into_inner().kvs.is_empty()
    );
    let left =
        RangeRequest { key: b"many/".to_vec(), range_end: b"many0".to_vec(), count_only: true, ..Default::default() };
    assert_eq!(kv.range(left).await.unwrap().into_inner().count, 150, "only the unleased keys are left");
}

/// Keep-alives sent to a follower reach the leader; the lease outlives its
/// TTL while they go on, survives the leader's death, and expires once they stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_through_followers_and_a_leader_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = common::cluster(dir.path(), 3, 151);
    for m in &members {
        m.ready().await;
    }
    let l = common::leader(&members).await;
    let f = (l + 1) % 3;
    let mut lc = lease_client(&members[f]);
    let granted = lc.lease_grant(LeaseGrantRequest { id: 0, ttl: 3 }).await.unwrap().into_inner();
    assert!(granted.id > 0 && granted.ttl == 3, "{granted:?}");
    let id = granted.id;
    members[f]
        .kv()
        .await
        .put(PutRequest { key: b"alive".to_vec(), value: b"1".to_vec(), lease: id, ..Default::default() })
        .await
        .unwrap();
    let keepalive = |ep: String, for_: Duration| async move {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut lc = LeaseClient::new(Channel::from_shared(ep).unwrap().connect_lazy());
        let sender = tokio::spawn(async move {
            let until = Instant::now() + for_;
            while Instant::now() < until {
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let mut resp = lc.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut ttls = Vec::new();
        loop {
            match resp.message().await {
                Ok(Some(r)) => ttls.push(r.ttl),
                Ok(None) => break,
                Err(s) => panic!("keep-alive failed after {ttls:?}: {s:?}"),
            }
        }
        sender.await.unwrap();
        ttls
    };
    let ttls = keepalive(members[f].endpoint.clone(), Duration::from_secs(5)).await;
    assert!(!ttls.is_empty() && ttls.iter().all(|t| *t == 3), "{ttls:?}");
    members[l].kill9();
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    // Through the new leader's election: the lease is still there (the new
    // leader restarted its clock), and keep-alives through a follower go on.
    let ttls = keepalive(members[rest[1]].endpoint.clone(), Duration::from_secs(6)).await;
    assert!(ttls.iter().filter(|t| **t == 3).count() >= 5, "{ttls:?}");
    let mut kv = members[rest[0]].kv().await;
    let alive = kv.range(RangeRequest { key: b"alive".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(alive.kvs.len(), 1, "the key outlived its TTL while kept alive");
    // Stop: gone within the TTL plus the revoke's round trip.
    let stopped = Instant::now();
    loop {
        let r = kv.range(RangeRequest { key: b"alive".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        if r.kvs.is_empty() {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "lease never expired after keep-alives stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lc = lease_client(&members[rest[1]]);
    let ttl = lc.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.unwrap().into_inner();
    assert_eq!(ttl.ttl, -1);
}
