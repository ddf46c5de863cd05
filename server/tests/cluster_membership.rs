//! Membership changes on clusters of real kvd processes on 127.0.0.x:
//! learners added, caught up (by log or snapshot), promoted and removed
//! with etcdctl; the strict reconfiguration check; restarts that ignore
//! bootstrap flags, as etcd's; which leader Status names after restarts.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl, leader, ready_cluster};
use kvd_api::etcdserverpb::PutRequest;

/// etcdctl member add --learner / promote / remove, through a follower, with
/// a new member joining with --initial-cluster-state existing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_join_promote_and_remove_with_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let members = ready_cluster(dir.path(), 3, 81, &[]).await;
    let l = leader(&members).await;
    let via = &members[(l + 1) % 3].endpoint;
    let (ok, _, err) = etcdctl(via, &["put", "before", "join"], None);
    assert!(ok, "{err}");
    let list = |ep: &str| {
        let (ok, out, err) = etcdctl(ep, &["member", "list", "-w", "json"], None);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["members"].as_array().cloned().unwrap_or_default()
    };
    // Every member publishes its name and client URLs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while list(via).iter().any(|m| m["clientURLs"].as_array().is_none_or(|a| a.is_empty())) {
        assert!(Instant::now() < deadline, "attributes never published: {:?}", list(via));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ip = "127.0.0.84";
    let peer = format!("http://{ip}:{}", common::free_port_on(ip));
    let (ok, out, err) = etcdctl(via, &["member", "add", "m3", &format!("--peer-urls={peer}"), "--learner"], None);
    assert!(ok, "{err}");
    assert!(out.contains("added as learner to cluster"), "{out}");
    let (ok, _, err) = etcdctl(via, &["member", "add", "dup", &format!("--peer-urls={peer}")], None);
    assert!(!ok && err.contains("etcdserver: Peer URLs already exists"), "{err}");

    let initial: Vec<String> = list(via)
        .iter()
        .filter(|m| m["peerURLs"][0].as_str() != Some(peer.as_str()))
        .map(|m| format!("{}={}", m["name"].as_str().unwrap(), m["peerURLs"][0].as_str().unwrap()))
        .collect();
    let ic = format!("{},m3={peer}", initial.join(","));
    let mut joined =
        common::Proc::member(&dir.path().join("m3"), ip, "m3", &peer, &ic, &["--initial-cluster-state", "existing"]);
    joined.ready_serializable().await;
    // A learner serves serializable reads (once it has caught up) and nothing else.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, _) = etcdctl(&joined.endpoint, &["get", "before", "--consistency=s", "--print-value-only"], None);
        if ok && out.trim() == "join" {
            break;
        }
        assert!(Instant::now() < deadline, "the learner never caught up: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, _, err) = etcdctl(&joined.endpoint, &["put", "k", "v"], None);
    assert!(!ok && err.contains("etcdserver: rpc not supported for learner"), "{err}");

    let id =
        list(via).iter().find(|m| m["peerURLs"][0].as_str() == Some(peer.as_str())).unwrap()["ID"].as_u64().unwrap();
    let hex = format!("{id:x}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = etcdctl(via, &["member", "promote", &hex], None);
        if ok {
            assert!(out.contains("promoted"), "{out}");
            break;
        }
        assert!(err.contains("in sync with leader"), "{err}");
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _, err) = etcdctl(via, &["member", "promote", &hex], None);
    assert!(!ok && err.contains("etcdserver: can only promote a learner member"), "{err}");
    // The promoted member takes writes.
    let (ok, _, err) = etcdctl(&joined.endpoint, &["put", "after", "promote"], None);
    assert!(ok, "{err}");

    // Remove one of the original members (not the one we talk through).
    let victim = (l + 2) % 3;
    let gone =
        list(via).into_iter().find(|m| m["clientURLs"][0].as_str() == Some(members[victim].endpoint.as_str())).unwrap();
    let vid = gone["ID"].as_u64().unwrap();
    let purl = gone["peerURLs"][0].as_str().unwrap().to_string();
    let (ok, _, err) = etcdctl(via, &["member", "remove", &format!("{vid:x}")], None);
    assert!(ok, "{err}");
    let (ok, _, err) = etcdctl(via, &["member", "remove", &format!("{vid:x}")], None);
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");
    let after = list(via);
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|m| m["isLearner"].as_bool() != Some(true)));
    let (ok, out, _) = etcdctl(&joined.endpoint, &["get", "after", "--print-value-only"], None);
    assert!(ok && out.trim() == "promote");

    // Adding the removed member's peer URLs again makes a new member with a
    // new id, as in etcd: the old incarnation can never pass for it.
    let (ok, out, err) = etcdctl(via, &["member", "add", "again", &format!("--peer-urls={purl}"), "--learner"], None);
    assert!(ok, "{err}");
    let again = list(via).iter().find(|m| m["peerURLs"][0].as_str() == Some(purl.as_str())).unwrap()["ID"].as_u64();
    assert!(again.is_some_and(|id| id != vid), "re-added member reuses the removed id {vid:x}: {out}");
    joined.kill9();
}

/// etcd's strict reconfiguration check refuses a voter that would leave the
/// started members without quorum; removing the leader itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfig_check_and_removing_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 111, &[]).await;
    let l = leader(&members).await;
    // One follower down: 2 of 3 started. Adding a voter makes 4 voters (quorum 3): refused.
    let down = (l + 1) % 3;
    members[down].kill9();
    // Past an election timeout (500 ms here) without heartbeats, it no longer counts as started.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ok, _, err) =
        etcdctl(&members[l].endpoint, &["member", "add", "x", "--peer-urls=http://127.0.0.119:2380"], None);
    assert!(!ok && err.contains("etcdserver: re-configuration failed due to not enough started members"), "{err}");
    // A learner does not change the quorum: allowed.
    let (ok, _, err) = etcdctl(
        &members[l].endpoint,
        &["member", "add", "x", "--peer-urls=http://127.0.0.119:2380", "--learner"],
        None,
    );
    assert!(ok, "{err}");
    members[down].restart();
    members[down].ready().await;

    // Remove the leader through itself; the others elect a new one and go on.
    let (ok, out, err) = etcdctl(&members[l].endpoint, &["endpoint", "status", "-w", "json"], None);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let leader_hex = format!("{:x}", st[0]["Status"]["header"]["member_id"].as_u64().unwrap());
    let (ok, _, err) = etcdctl(&members[l].endpoint, &["member", "remove", &leader_hex], None);
    assert!(ok, "{err}");
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, _, _) = etcdctl(&members[rest[0]].endpoint, &["put", "after-removal", "ok"], None);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no writes after removing the leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, _) = etcdctl(&members[rest[1]].endpoint, &["member", "list"], None);
    assert!(ok && !out.contains(&leader_hex), "{out}");
}

/// A learner added after the log was purged catches up through a snapshot;
/// a member restarted with other bootstrap flags starts as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_learner_catches_up_by_snapshot_and_restarts_ignore_bootstrap_flags() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5"];
    let mut members = ready_cluster(dir.path(), 3, 121, &flags).await;
    let l = leader(&members).await;
    let mut kv = members[l].kv().await;
    for i in 0..100 {
        kv.put(PutRequest { key: format!("k{i:03}").into(), value: b"v".to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
    let ip = "127.0.0.124";
    let peer = format!("http://{ip}:{}", common::free_port_on(ip));
    let (ok, _, err) =
        etcdctl(&members[l].endpoint, &["member", "add", "m3", &format!("--peer-urls={peer}"), "--learner"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = etcdctl(&members[l].endpoint, &["member", "list", "-w", "json"], None);
    assert!(ok, "{err}");
    let ml: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ic = ml["members"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // A name is empty until its member has started (the learner) or
            // published it (possibly not yet, for the others).
            let url = m["peerURLs"][0].as_str().unwrap();
            let name = if url == peer { "m3".to_string() } else { format!("other{i}") };
            format!("{name}={url}")
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut extra = flags.to_vec();
    extra.extend(["--initial-cluster-state", "existing", "--log-level", "info"]);
    let learner = common::Proc::member(&dir.path().join("m3"), ip, "m3", &peer, &ic, &extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = etcdctl(&learner.endpoint, &["get", "k099", "--consistency=s", "--print-value-only"], None);
        if ok && out.trim() == "v" {
            break;
        }
        assert!(Instant::now() < deadline, "the learner never caught up:\n{}", learner.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(learner.log_text().contains("installed snapshot from the leader"), "caught up without a snapshot?");

    // A member restarted with other bootstrap flags (another token, the
    // longer --initial-cluster of a scale-up, state "new"): as etcd, its
    // initialized data dir decides who it is, and the flags are ignored.
    let victim = (l + 1) % 3;
    members[victim].kill9();
    let longer = format!("{},m3={peer}", members[victim].flag("--initial-cluster").unwrap());
    members[victim].set_flag("--initial-cluster-token", "another-cluster");
    members[victim].set_flag("--initial-cluster", &longer);
    members[victim].set_flag("--initial-cluster-state", "new");
    members[victim].restart();
    members[victim].ready().await;
    let log = members[victim].log_text();
    assert!(log.contains("the data dir is initialized: --initial-cluster"), "{log}");
    let (ok, out, err) = etcdctl(&members[victim].endpoint, &["get", "k099", "--print-value-only"], None);
    assert!(ok && out.trim() == "v", "{out} {err}");
    let (ok, _, err) = etcdctl(&members[victim].endpoint, &["put", "after-restart", "v"], None);
    assert!(ok, "{err}");
}

/// Status names a leader only once this member has heard from it in the
/// current term, as etcd does: a member restarted while the old leader is
/// dead reports none (raft restores the vote, whose leader is gone), and
/// names the new leader once one is elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_no_dead_leader_after_a_restart() {
    use kvd_api::etcdserverpb::StatusRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 231, &[]).await;
    let l = leader(&members).await;
    let (ok, _, err) = etcdctl(&members[l].endpoint, &["put", "k", "v"], None);
    assert!(ok, "{err}");
    for m in members.iter_mut() {
        m.kill9();
    }
    let f = (l + 1) % 3;
    members[f].restart();
    members[f].ready_serializable().await;
    async fn status(p: &common::Proc) -> kvd_api::etcdserverpb::StatusResponse {
        let st = p.maintenance().await.status(StatusRequest {}).await;
        st.unwrap_or_else(|e| panic!("{e}; log:\n{}", p.log_text())).into_inner()
    }
    for _ in 0..5 {
        let st = status(&members[f]).await;
        assert_eq!(st.leader, 0, "a lone restarted member names leader {:x}", st.leader);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let g = (l + 2) % 3;
    members[g].restart();
    members[g].ready_serializable().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (status(&members[f]).await.leader, status(&members[g]).await.leader);
        if a != 0 && a == b {
            assert_ne!(a, 0);
            break;
        }
        assert!(Instant::now() < deadline, "no common leader: {a:x} {b:x}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
