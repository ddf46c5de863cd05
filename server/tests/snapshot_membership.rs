//! A member that catches up by a raft snapshot while the membership changes,
//! then restarts at once, must come back with the membership in effect at
//! the data it holds (issue 23, item 1).
//!
//! The leader's snapshot is its live backend, exported when a follower needs
//! it, so it carries membership changes made after the snapshot was built.
//! Installed with the older metadata, the receiver skipped those entries as
//! already applied and kept their membership only in memory: after a kill -9
//! it counted a removed member as a voter and not the one that replaced it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Proc, etcdctl, leader, put_retrying, ready_cluster};
use kvd_api::etcdserverpb::cluster_client::ClusterClient;
use kvd_api::etcdserverpb::{MemberListRequest, PutRequest};
use tonic::transport::Channel;

fn signal(p: &Proc, sig: i32) {
    let pid = p.child.as_ref().expect("running").id() as i32;
    // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// (voters, learners) by peer URL, as `p`'s raft holds them (MemberList
/// answered from the member's own state, not the leader's).
async fn membership(p: &Proc) -> (BTreeSet<String>, BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ch = Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy();
        match ClusterClient::new(ch).member_list(MemberListRequest { linearizable: false }).await {
            Ok(r) => {
                let (mut voters, mut learners) = (BTreeSet::new(), BTreeSet::new());
                for m in r.into_inner().members {
                    let url = m.peer_ur_ls.first().cloned().unwrap_or_default();
                    if m.is_learner {
                        learners.insert(url)
                    } else {
                        voters.insert(url)
                    };
                }
                return (voters, learners);
            }
            Err(s) => assert!(Instant::now() < deadline, "{}: MemberList: {s}\n{}", p.endpoint, p.log_text()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_value(p: &Proc, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = etcdctl(&p.endpoint, &["get", key, "--consistency=s", "--print-value-only"], None);
        if ok && out.trim() == value {
            return;
        }
        assert!(Instant::now() < deadline, "{} never caught up to {key}:\n{}", p.endpoint, p.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn member_id(via: &str, peer: &str) -> String {
    let (ok, out, err) = etcdctl(via, &["member", "list", "-w", "json"], None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["members"].as_array().unwrap().iter().find(|m| m["peerURLs"][0].as_str() == Some(peer)).unwrap()["ID"]
        .as_u64()
        .unwrap();
    format!("{id:x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_survives_a_restart_after_snapshot_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--snapshot-count", "100", "--experimental-snapshot-catchup-entries", "20", "--log-level", "info"];
    let mut members = ready_cluster(dir.path(), 3, 241, &flags).await;
    let l = leader(&members).await;
    let (paused, removed) = ((l + 1) % 3, (l + 2) % 3);
    let peer_of = |p: &Proc| p.flag("--initial-advertise-peer-urls").unwrap().to_string();
    let peers: Vec<String> = members.iter().map(peer_of).collect();
    let via = members[l].endpoint.clone();

    signal(&members[paused], libc::SIGSTOP);
    let mut kv = members[l].kv().await;
    for i in 0..400 {
        let req = PutRequest { key: format!("k{i:03}").into(), value: b"v".to_vec(), ..Default::default() };
        put_retrying(&mut kv, req).await;
    }

    // A fourth member joins as a learner, is promoted, and the third leaves.
    let ip = "127.0.0.244";
    let peer4 = format!("http://{ip}:{}", common::free_port_on(ip));
    let (ok, _, err) = etcdctl(&via, &["member", "add", "m3", &format!("--peer-urls={peer4}"), "--learner"], None);
    assert!(ok, "{err}");
    let ic = format!("m0={},m1={},m2={},m3={peer4}", peers[0], peers[1], peers[2]);
    let mut extra = flags.to_vec();
    extra.extend(["--initial-cluster-state", "existing"]);
    let m4 = Proc::member(&dir.path().join("m3"), ip, "m3", &peer4, &ic, &extra);
    wait_for_value(&m4, "k399", "v").await;
    let id4 = member_id(&via, &peer4);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = etcdctl(&via, &["member", "promote", &id4], None);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the learner was never promoted: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id3 = member_id(&via, &peers[removed]);
    let (ok, _, err) = etcdctl(&via, &["member", "remove", &id3], None);
    assert!(ok, "{err}");
    members[removed].kill9();
    for i in 0..10 {
        let req = PutRequest { key: format!("after{i}").into(), value: b"v".to_vec(), ..Default::default() };
        put_retrying(&mut kv, req).await;
    }

    // The paused member catches up, by a snapshot, and is killed at once.
    signal(&members[paused], libc::SIGCONT);
    wait_for_value(&members[paused], "after9", "v").await;
    assert!(
        members[paused].log_text().contains("installed snapshot from the leader"),
        "m{paused} caught up without a snapshot:\n{}",
        members[paused].log_text()
    );
    members[paused].kill9();
    members[paused].restart();
    members[paused].ready_serializable().await;

    let want_voters: BTreeSet<String> = [peers[l].clone(), peers[paused].clone(), peer4.clone()].into();
    for (name, p) in [("leader", &members[l]), ("restarted", &members[paused]), ("new", &m4)] {
        let (voters, learners) = membership(p).await;
        assert_eq!(voters, want_voters, "the {name} member's voters (removed: {})", peers[removed]);
        assert!(learners.is_empty(), "the {name} member's learners: {learners:?}");
    }
    // And it still takes part: a write through it commits.
    let mut kv2 = members[paused].kv().await;
    put_retrying(&mut kv2, PutRequest { key: b"last".to_vec(), value: b"v".to_vec(), ..Default::default() }).await;
}
