//! `--force-new-cluster`: after a 3-member cluster loses two members (and
//! quorum), the survivor restarts as the only member with all its data,
//! takes writes again, and the cluster grows back by adding fresh members,
//! as etcd's disaster-recovery runbook does.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, etcdctl, leader, ready_cluster};
use kvd_api::etcdserverpb::{MemberListRequest, PutRequest, RangeRequest};

async fn members_of(p: &Proc) -> Vec<kvd_api::etcdserverpb::Member> {
    let ch = tonic::transport::Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy();
    let mut c = kvd_api::etcdserverpb::cluster_client::ClusterClient::new(ch);
    c.member_list(MemberListRequest { linearizable: false }).await.unwrap().into_inner().members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_lost_quorum_restarts_alone_with_its_data_and_grows_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 141, &["--log-level", "info"]).await;
    let l = leader(&members).await;
    let mut kv = members[l].kv().await;
    for i in 0..50 {
        kv.put(PutRequest { key: format!("k{i:02}").into_bytes(), value: b"before".to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
    // A write needs two of three members: wait until the survivor holds all
    // 50 before the others go (else "lost data" would be the test's doing).
    let survivor = (l + 1) % 3;
    let all = RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), serializable: true, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while members[survivor].kv().await.range(all.clone()).await.unwrap().into_inner().count < 50 {
        assert!(Instant::now() < deadline, "the survivor never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Quorum lost: two of three members are gone for good.
    for i in (0..3).filter(|&i| i != survivor) {
        members[i].kill9();
    }
    let (ok, _, err) = etcdctl(&members[survivor].endpoint, &["--command-timeout=2s", "put", "lost", "x"], None);
    assert!(!ok, "a member without quorum took a write");
    eprintln!("without quorum: {}", err.lines().last().unwrap_or_default());

    // Restart the survivor as a new one-member cluster.
    members[survivor].set_flag("--force-new-cluster", "true");
    members[survivor].restart();
    members[survivor].ready().await;
    let s = &members[survivor];
    let list = members_of(s).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let all = RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() };
    assert_eq!(s.kv().await.range(all).await.unwrap().into_inner().count, 50, "the survivor lost data");
    let (ok, _, err) = etcdctl(&s.endpoint, &["put", "after", "recovery"], None);
    assert!(ok, "{err}");
    assert!(s.log_text().contains("--force-new-cluster: this member is now the only member"));

    // Started with the flag again (a forgotten flag): nothing changes.
    members[survivor].restart();
    members[survivor].ready().await;
    assert_eq!(members_of(&members[survivor]).await.len(), 1);
    assert_eq!(members[survivor].log_text().matches("is now the only member").count(), 1);

    // Grow back: a fresh member joins as a learner, catches up, is promoted.
    let ip = "127.0.0.144";
    let peer = format!("http://{ip}:{}", common::free_port_on(ip));
    let via = members[survivor].endpoint.clone();
    let (ok, out, err) = etcdctl(&via, &["member", "add", "n1", &format!("--peer-urls={peer}"), "--learner"], None);
    assert!(ok, "{err}");
    let ic = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\"").map(|v| v.trim_end_matches('"').to_string()))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out}"));
    let joined = Proc::member(
        &dir.path().join("n1"),
        ip,
        "n1",
        &peer,
        &ic,
        &["--initial-cluster-state", "existing", "--log-level", "info"],
    );
    let id = members_of(&members[survivor]).await.iter().find(|m| m.peer_ur_ls.contains(&peer)).unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = etcdctl(&via, &["member", "promote", &format!("{id:x}")], None);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "never promoted: {err}\n{}", joined.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, _) = etcdctl(&joined.endpoint, &["get", "k49", "--print-value-only"], None);
    assert!(ok && out.trim() == "before", "{out}");
    let (ok, _, err) = etcdctl(&joined.endpoint, &["put", "grown", "back"], None);
    assert!(ok, "{err}");
    assert_eq!(members_of(&members[survivor]).await.len(), 2);
}
