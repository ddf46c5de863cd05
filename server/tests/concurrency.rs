//! Lock and Election: etcdctl `lock` and `elect` (with `-l`), lock handover
//! on lease expiry and on a waiter giving up, and the Election API's answers
//! and errors compared with the real etcd.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::lease_client::LeaseClient;
use kvd_api::etcdserverpb::{LeaseGrantRequest, RangeRequest};
use kvd_api::v3electionpb::election_client::ElectionClient;
use kvd_api::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest};
use kvd_api::v3lockpb::lock_client::LockClient;
use kvd_api::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

fn channel(p: &Proc) -> Channel {
    Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy()
}

async fn grant(p: &Proc, id: i64, ttl: i64) {
    LeaseClient::new(channel(p)).lease_grant(LeaseGrantRequest { id, ttl }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_serializes_holders() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let log = dir.path().join("holders.log");
    let holders: Vec<_> = (0..4)
        .map(|i| {
            let script = format!("echo start {i} >> {0}; sleep 0.3; echo end {i} >> {0}", log.display());
            Command::new(common::etcdctl_bin())
                .args([&format!("--endpoints={}", kvd.endpoint), "lock", "L", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut h in holders {
        assert!(h.wait().unwrap().success());
    }
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    for pair in lines.chunks(2) {
        let i = pair[0].strip_prefix("start ").expect("a holder starts");
        assert_eq!(pair[1], format!("end {i}"), "holders overlapped: {lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_passes_on_when_its_lease_expires_or_a_waiter_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    grant(&kvd, 0xa, 2).await;
    grant(&kvd, 0xb, 60).await;
    grant(&kvd, 0xc, 60).await;
    let mut lc = LockClient::new(channel(&kvd));
    let a = lc.lock(LockRequest { name: b"L".to_vec(), lease: 0xa }).await.unwrap().into_inner();
    assert_eq!(a.key, b"L/a");
    // A waiter that gives up leaves no key behind.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), lc.lock(LockRequest { name: b"L".to_vec(), lease: 0xc }));
    assert!(gave_up.await.is_err(), "the lock is held");
    // B waits until A's lease (not kept alive) expires.
    let started = Instant::now();
    let b = lc.lock(LockRequest { name: b"L".to_vec(), lease: 0xb }).await.unwrap().into_inner();
    assert_eq!(b.key, b"L/b");
    assert!(started.elapsed() > Duration::from_millis(500) && started.elapsed() < Duration::from_secs(6));
    let mut kv = kvd.kv().await;
    let keys = kv.range(RangeRequest {
        key: b"L/".to_vec(),
        range_end: b"L0".to_vec(),
        keys_only: true,
        ..Default::default()
    });
    let keys: Vec<Vec<u8>> = keys.await.unwrap().into_inner().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, vec![b"L/b".to_vec()]);
    lc.unlock(UnlockRequest { key: b.key }).await.unwrap();
    let c =
        tokio::time::timeout(Duration::from_secs(3), lc.lock(LockRequest { name: b"L".to_vec(), lease: 0xc })).await;
    assert_eq!(c.expect("free after unlock").unwrap().into_inner().key, b"L/c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_observe() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let ep = format!("--endpoints={}", kvd.endpoint);
    let spawn = |args: &[&str]| {
        Command::new(common::etcdctl_bin())
            .arg(&ep)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let observer = spawn(&["elect", "-l", "E"]);
    std::thread::sleep(Duration::from_millis(500));
    let alice = spawn(&["elect", "E", "alice"]);
    std::thread::sleep(Duration::from_millis(700));
    let bob = spawn(&["elect", "E", "bob"]);
    std::thread::sleep(Duration::from_millis(700));
    // SIGINT: etcdctl resigns, and bob takes over.
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe { libc::kill(alice.id() as i32, libc::SIGINT) };
    let alice = alice.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&alice.stdout).contains("alice"));
    std::thread::sleep(Duration::from_millis(1000));
    for c in [&observer, &bob] {
        // SAFETY: as above.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    }
    let bob = bob.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&bob.stdout).contains("bob"), "bob led after alice resigned");
    let seen = String::from_utf8_lossy(&observer.wait_with_output().unwrap().stdout).to_string();
    let values: Vec<&str> = seen.lines().filter(|l| !l.starts_with("E/")).collect();
    assert_eq!(values, ["alice", "bob"], "observer saw: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_answers_and_errors_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let mut seen = Vec::new();
    for p in [&kvd, &etcd] {
        let mut out: Vec<String> = Vec::new();
        grant(p, 0x1, 60).await;
        grant(p, 0x2, 60).await;
        let mut ec = ElectionClient::new(channel(p));
        let err = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        out.push(err(ec.leader(LeaderRequest { name: b"E".to_vec() }).await.unwrap_err()));
        let c = ec.campaign(CampaignRequest { name: b"E".to_vec(), lease: 1, value: b"a".to_vec() }).await.unwrap();
        let leader = c.into_inner().leader.unwrap();
        out.push(format!("{leader:?}"));
        let now = ec.leader(LeaderRequest { name: b"E".to_vec() }).await.unwrap().into_inner().kv.unwrap();
        out.push(format!("{now:?}"));
        ec.proclaim(ProclaimRequest { leader: Some(leader.clone()), value: b"b".to_vec() }).await.unwrap();
        let now = ec.leader(LeaderRequest { name: b"E".to_vec() }).await.unwrap().into_inner().kv.unwrap();
        out.push(format!("{now:?}"));
        let stale = LeaderKey { rev: leader.rev + 100, ..leader.clone() };
        out.push(err(ec.proclaim(ProclaimRequest { leader: Some(stale), value: b"x".to_vec() }).await.unwrap_err()));
        out.push(err(ec.proclaim(ProclaimRequest { leader: None, value: b"x".to_vec() }).await.unwrap_err()));
        // A second candidate waits; the first resigns; the second leads.
        let mut ec2 = ec.clone();
        let second = tokio::spawn(async move {
            ec2.campaign(CampaignRequest { name: b"E".to_vec(), lease: 2, value: b"c".to_vec() }).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished());
        ec.resign(ResignRequest { leader: Some(leader) }).await.unwrap();
        let l2 = second.await.unwrap().unwrap().into_inner().leader.unwrap();
        out.push(format!("{l2:?}"));
        let now = ec.leader(LeaderRequest { name: b"E".to_vec() }).await.unwrap().into_inner().kv.unwrap();
        out.push(format!("{now:?}"));
        seen.push(out);
    }
    assert_eq!(seen[0], seen[1]);
}
