//! Crashes at kvd's failpoints (server/src/failpoints.rs): kvd started with
//! `FAILPOINTS` ends itself at the named point, is restarted without it, and
//! must have kept every acknowledged write, a consistent store and a usable
//! data dir:
//! - before and after the WAL's fdatasync, and after apply but before the
//!   backend commit, under concurrent writers;
//! - in the middle of a defragmentation (after the copy; after the rename);
//! - in the middle of a paced compaction, with a simulated power cut;
//! - in the middle of installing a leader's snapshot on a lagging member.
//!
//! Built only with the `failpoints` feature (scripts/test turns it on).
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::{
    CompactionRequest, DefragmentRequest, DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest,
};

/// kvd's exit status at a crash point (kvd::failpoints::CRASH_EXIT_CODE).
const CRASHED: i32 = 97;

/// Waits for `p` to end at its crash point.
fn expect_crash(p: &mut Proc, point: &str) {
    let st = p.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| panic!("kvd never reached {point}"));
    assert_eq!(st.code(), Some(CRASHED), "kvd did not end at {point}: {st:?}\n{}", p.log_text());
    assert!(p.log_text().contains(&format!("failpoint {point}: crashing")), "{}", p.log_text());
}

/// Every key's value, read linearizably from `p`.
async fn contents(p: &Proc, prefix: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut end = prefix.to_vec();
    *end.last_mut().unwrap() += 1;
    let r = p.kv().await.range(RangeRequest { key: prefix.to_vec(), range_end: end, ..Default::default() }).await;
    r.unwrap().into_inner().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// Every key under `k/` with its revisions and value, read at `rev`.
async fn at(p: &Proc, rev: i64) -> Vec<(Vec<u8>, i64, i64, i64, Vec<u8>)> {
    let r = RangeRequest { key: b"k/".to_vec(), range_end: b"k0".to_vec(), revision: rev, ..Default::default() };
    let kvs = p.kv().await.range(r).await.unwrap().into_inner().kvs;
    kvs.into_iter().map(|kv| (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value)).collect()
}

/// Four writers put distinct keys until kvd stops answering; returns what
/// was acknowledged.
async fn write_until_down(p: &Proc) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (mut kv, acked) = (p.kv().await, acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let (key, value) = (format!("w/{w}/{i:06}").into_bytes(), format!("{w}:{i}").into_bytes());
                let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                match tokio::time::timeout(Duration::from_secs(5), kv.put(put)).await {
                    Ok(Ok(_)) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    _ => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    std::mem::take(&mut *acked.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_around_the_wal_fsync_and_the_backend_commit_lose_no_acknowledged_write() {
    for point in ["wal_before_fsync", "wal_after_fsync", "backend_before_commit"] {
        let dir = tempfile::tempdir().unwrap();
        // Let a few hundred writes through first, so there is history to keep.
        let spec = format!("{point}=200*off->return");
        let mut p = Proc::kvd_with_env(&dir.path().join("d"), &[], &[("FAILPOINTS", &spec)]);
        p.ready().await;
        let acked = write_until_down(&p).await;
        expect_crash(&mut p, point);
        assert!(!acked.is_empty(), "{point}: nothing was acknowledged before the crash");

        p.set_env("FAILPOINTS", None);
        p.restart();
        p.ready().await;
        let have = contents(&p, b"w/").await;
        for (k, v) in &acked {
            assert_eq!(have.get(k), Some(v), "{point}: acknowledged {} lost", String::from_utf8_lossy(k));
        }
        // Unacknowledged writes may have landed; nothing else may have.
        for (k, v) in &have {
            let (w, i) = String::from_utf8_lossy(k)
                .trim_start_matches("w/")
                .split_once('/')
                .map(|(w, i)| (w.to_string(), i.parse::<u64>().unwrap()))
                .unwrap();
            assert_eq!(
                v,
                &format!("{w}:{i}").into_bytes(),
                "{point}: {} has a value nobody wrote",
                String::from_utf8_lossy(k)
            );
        }
        // Revisions count every write once: one per key, from revision 2.
        let r = p
            .kv()
            .await
            .range(RangeRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.header.unwrap().revision, 1 + r.count, "{point}: revisions and keys disagree");
        p.kv()
            .await
            .put(PutRequest { key: b"after".to_vec(), value: b"crash".to_vec(), ..Default::default() })
            .await
            .unwrap();
        eprintln!("{point}: {} acknowledged, {} present after restart", acked.len(), have.len());
    }
}

/// A compaction's steps are durable only every 100 ms: a power cut in the
/// middle loses the others' removals, and the compaction runs again at
/// start. Nothing else may change: the same keys and values at the
/// compacted revision and after it, and keyMeta rows that match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_in_the_middle_of_a_compaction_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::kvd_with_env(
        &dir.path().join("d"),
        &["--log-level", "info"],
        &[("KVD_POWER_CUT_SIM", "1"), ("FAILPOINTS", "compaction_step=6*off->return")],
    );
    p.ready().await;
    let mut kv = p.kv().await;
    // 12,000 revisions of 300 keys: a compaction of a dozen steps of 1,000 rows.
    for i in 0..12_000 {
        let put = PutRequest {
            key: format!("k/{:03}", i % 300).into_bytes(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        };
        kv.put(put).await.unwrap();
    }
    let rev = kv.range(RangeRequest { key: b"k/".to_vec(), ..Default::default() }).await.unwrap();
    let rev = rev.into_inner().header.unwrap().revision - 100;
    let before = contents(&p, b"k/").await;
    let history = [at(&p, rev).await, at(&p, rev + 50).await];

    let compact = kv.compact(CompactionRequest { revision: rev, physical: true }).await;
    assert!(compact.is_err(), "the compaction answered although kvd crashed in it");
    expect_crash(&mut p, "compaction_step");

    p.set_env("FAILPOINTS", None);
    p.restart();
    p.ready().await;
    assert_eq!(contents(&p, b"k/").await, before, "the data changed");
    assert_eq!([at(&p, rev).await, at(&p, rev + 50).await], history, "the history kept changed");
    let old =
        p.kv().await.range(RangeRequest { key: b"k/000".to_vec(), revision: rev - 1, ..Default::default() }).await;
    assert!(old.unwrap_err().message().contains("compacted"), "the compaction finished at start");
    let log = p.log_text();
    assert!(!log.contains(kvd::mvcc::kvstore::KEY_META_MISMATCH), "keyMeta rows did not match:\n{log}");
    assert!(!log.contains(kvd::backend::REPAIRING), "the backend needed a repair:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_in_the_middle_of_a_defrag_keep_the_data() {
    for point in ["defrag_mid_copy", "defrag_after_rename"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        let mut p = Proc::kvd_with_env(&data, &[], &[("FAILPOINTS", &format!("{point}=return"))]);
        p.ready().await;
        let mut kv = p.kv().await;
        for i in 0..2000 {
            let put =
                PutRequest { key: format!("k/{i:05}").into_bytes(), value: vec![b'x'; 1024], ..Default::default() };
            kv.put(put).await.unwrap();
        }
        kv.delete_range(DeleteRangeRequest { key: b"k/0".to_vec(), range_end: b"k/1".to_vec(), ..Default::default() })
            .await
            .unwrap();
        let rev = kv
            .range(RangeRequest { key: b"k/".to_vec(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
        kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
        let before = contents(&p, b"k/").await;
        let hash = p.maintenance().await.hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner().hash;

        let defrag = p.maintenance().await.defragment(DefragmentRequest {}).await;
        assert!(defrag.is_err(), "{point}: defrag answered although kvd crashed in it");
        expect_crash(&mut p, point);

        p.set_env("FAILPOINTS", None);
        p.restart();
        p.ready().await;
        assert_eq!(contents(&p, b"k/").await, before, "{point}: the data changed");
        let again = p.maintenance().await.hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner().hash;
        assert_eq!(again, hash, "{point}: HashKV changed");
        // The data dir is whole: a defrag now finishes and leaves no leftover.
        p.maintenance().await.defragment(DefragmentRequest {}).await.unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(data.join("member"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".defrag"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: leftover files {leftovers:?}");
        assert_eq!(contents(&p, b"k/").await, before, "{point}: the data changed after a defrag");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_snapshot_install_recovers_and_converges() {
    crash_in_a_snapshot_install("snapshot_install_mid", 131).await;
}

/// The backend holds the installed snapshot, the WAL not yet its record (the
/// purge openraft asks for next): the member must start and record it, not
/// take the WAL for one that lost entries. The fault harness found this
/// with a power cut right after an install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_snapshot_install_recovers_and_converges() {
    crash_in_a_snapshot_install("snapshot_installed", 135).await;
}

async fn crash_in_a_snapshot_install(point: &str, base: u8) {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5", "--log-level", "info"];
    let mut members = common::cluster_with(dir.path(), 3, base, &flags);
    for m in &members {
        m.ready().await;
    }
    let l = common::leader(&members).await;
    let lagging = (l + 1) % 3;
    members[lagging].kill9();
    let mut kv = members[l].kv().await;
    for i in 0..200 {
        kv.put(PutRequest { key: format!("s/{i:03}").into_bytes(), value: b"v".to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
    // The lagging member is now behind the purged log: it needs a snapshot,
    // and crashes while installing it.
    members[lagging].set_env("FAILPOINTS", Some(&format!("{point}=return")));
    members[lagging].restart();
    expect_crash(&mut members[lagging], point);

    members[lagging].set_env("FAILPOINTS", None);
    members[lagging].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut kv = members[lagging].kv().await;
        let r = kv.range(RangeRequest { key: b"s/199".to_vec(), serializable: true, ..Default::default() }).await;
        if r.is_ok_and(|r| r.into_inner().count == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the lagging member never caught up:\n{}", members[lagging].log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Caught up by the snapshot: installed again after the crash in the
    // middle; after the crash past it, the one in the backend, recorded.
    let proof = match point {
        "snapshot_installed" => "the WAL lacks the record of the snapshot the backend holds; recording it",
        _ => "installed snapshot from the leader",
    };
    assert!(members[lagging].log_text().contains(proof), "caught up without a snapshot?");
    let rev = kv
        .range(RangeRequest { key: b"s/".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let hashes = common::hashes_at(&endpoints, rev).await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members differ at {rev}: {hashes:?}");
}

/// GET `path` over plain HTTP from the member's client URL; the status code.
fn http_status(p: &Proc, path: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = p.endpoint.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return 0 };
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The name member `id` has in `p`'s member list ("" while unstarted).
async fn listed_name(p: &Proc, id: u64) -> String {
    let req = kvd_api::etcdserverpb::MemberListRequest { linearizable: true };
    let list = p.cluster().member_list(req).await.unwrap();
    list.into_inner().members.into_iter().find(|m| m.id == id).map(|m| m.name).unwrap_or_default()
}

/// A member whose publish of its name and client URLs keeps failing (as
/// when its proposals find no leader) serves linearizable reads, but is not
/// ready: clients (and a Service) must not be sent to a member that the
/// member list still calls unstarted. It becomes ready once it has
/// published. Found by the e2e, where a TLS cluster was Available with one
/// member unstarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_not_ready_before_it_has_published_its_attributes() {
    let dir = tempfile::tempdir().unwrap();
    // 40 failed attempts, 100 ms apart: about 4 s unpublished.
    let members = common::cluster_with_env(dir.path(), 3, 201, &[], |i| {
        if i == 0 { vec![("FAILPOINTS", "publish_attributes=40*return")] } else { vec![] }
    });
    for m in &members {
        m.ready().await;
    }
    let id = members[0].maintenance().await.status(kvd_api::etcdserverpb::StatusRequest {}).await.unwrap();
    let id = id.into_inner().header.unwrap().member_id;
    let (mut unpublished, deadline) = (0, Instant::now() + Duration::from_secs(30));
    loop {
        // Readiness first, then the list: a publish in between only makes
        // the member look published while unready, which is allowed.
        let code = http_status(&members[0], "/readyz");
        let name = listed_name(&members[1], id).await;
        if name.is_empty() {
            unpublished += 1;
            assert_ne!(code, 200, "m0 is ready while the member list calls it unstarted");
        } else {
            assert_eq!(name, "m0");
            break;
        }
        assert!(Instant::now() < deadline, "m0 never published:\n{}", members[0].log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unpublished > 0, "m0 published before it was first observed; the failpoint did not hold it back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(&members[0], "/readyz") != 200 {
        assert!(Instant::now() < deadline, "m0 published but never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member's first publish lost (a proposal a leader took and lost with
/// its term, as a cluster forming under load showed): the member serves
/// but the member list shows it with no name or client URLs until it tries
/// again. It tries again after two election timeouts (at least a second),
/// not after the request timeout (5 s and two election timeouts), which
/// left `kvctl backup save` passing over a healthy follower in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_publish_is_tried_again_within_two_election_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let members = common::cluster_with_env(dir.path(), 3, 246, &[], |i| {
        if i == 0 { vec![("FAILPOINTS", "propose_lost=1*return")] } else { vec![] }
    });
    for m in &members {
        m.ready().await;
    }
    let id = members[0].maintenance().await.status(kvd_api::etcdserverpb::StatusRequest {}).await.unwrap();
    let id = id.into_inner().header.unwrap().member_id;
    let deadline = started + Duration::from_secs(30);
    while listed_name(&members[1], id).await.is_empty() {
        assert!(Instant::now() < deadline, "m0 never published:\n{}", members[0].log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From the start of the processes: the lost attempt's 1 s (the election
    // timeout here is 500 ms), an election and a commit. The request
    // timeout alone is 6 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "m0 published {took:?} after the start");
}

/// A keep-alive or TimeToLive that a follower forwards to the leader, cut
/// off on the way (what the follower sees when the leader is killed with the
/// call in flight: hyper's "operation was canceled"), is tried again at the
/// leader until the request timeout, as etcd's LeaseRenew does; the client
/// gets its answer, not the follower's broken call. Found by CI, where
/// `lease::keepalives_through_followers_and_a_leader_change` got
/// Cancelled right after the leader's kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_lease_call_cut_off_on_its_way_is_tried_again() {
    use kvd_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest};
    let dir = tempfile::tempdir().unwrap();
    // The leader fails the first forwarded call it answers (the keep-alive)
    // and the third (the TimeToLive): each one's first try.
    let members = common::cluster_with_env(dir.path(), 3, 56, &[], |_| {
        vec![("FAILPOINTS", "forwarded_lease_call=1*return->1*off->1*return")]
    });
    for m in &members {
        m.ready().await;
    }
    let f = (common::leader(&members).await + 1) % 3;
    let mut lc = members[f].lease().await;
    let id = lc.lease_grant(LeaseGrantRequest { id: 0, ttl: 30 }).await.unwrap().into_inner().id;

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = lc.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let ttl = answers.message().await.unwrap_or_else(|s| panic!("keep-alive through a follower failed: {s:?}"));
    assert_eq!(ttl.map(|r| (r.id, r.ttl)), Some((id, 30)));

    let ttl = lc.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await;
    let ttl = ttl.unwrap_or_else(|s| panic!("TimeToLive through a follower failed: {s:?}")).into_inner();
    assert_eq!((ttl.id, ttl.granted_ttl), (id, 30));
    assert!(ttl.ttl > 0 && ttl.ttl <= 30, "{ttl:?}");
}

/// Members that predate the replication stream (AppendStream answers
/// Unimplemented, as on a member of an older kvd in a rolling upgrade) are
/// sent AppendEntries one call at a time: writes commit, and every member
/// holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_the_replication_stream_are_sent_appends_one_by_one() {
    use kvd_api::etcdserverpb::{PutRequest, RangeRequest};
    let dir = tempfile::tempdir().unwrap();
    let members = common::cluster_with_env(dir.path(), 3, 66, &["--log-level", "info"], |_| {
        vec![("FAILPOINTS", "append_stream=return")]
    });
    for m in &members {
        m.ready().await;
    }
    let l = common::leader(&members).await;
    let mut kv = members[l].kv().await;
    for i in 0..20 {
        let put = PutRequest { key: format!("k{i}").into_bytes(), value: b"v".to_vec(), ..Default::default() };
        kv.put(put).await.unwrap_or_else(|s| panic!("put {i} failed: {s:?}"));
    }
    for (i, m) in members.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let get = RangeRequest { key: b"k19".to_vec(), serializable: true, ..Default::default() };
            let found = m.kv().await.range(get).await.map(|r| r.into_inner().count).unwrap_or(0);
            if found == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "member {i} never got the writes:\n{}", m.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let leader_log = members[l].log_text();
    assert!(leader_log.contains("predates the replication stream"), "the leader never fell back:\n{leader_log}");
}
