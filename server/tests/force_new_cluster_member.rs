//! `--force-new-cluster-member NAME/TOKEN` (here through its environment
//! variable, as the operator passes it): a value naming another member does
//! nothing; naming the survivor of a lost quorum, it restarts it alone with
//! its data; and once the cluster has grown back, a restart with the same
//! stale value leaves the membership alone.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, etcdctl, leader, ready_cluster};
use kvd_api::etcdserverpb::{MemberListRequest, PutRequest, RangeRequest};

const ENV: &str = "KVD_FORCE_NEW_CLUSTER_MEMBER";
const FORCED: &str = "is now the only member";

async fn members_of(p: &Proc) -> Vec<kvd_api::etcdserverpb::Member> {
    let ch = tonic::transport::Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy();
    let mut c = kvd_api::etcdserverpb::cluster_client::ClusterClient::new(ch);
    c.member_list(MemberListRequest { linearizable: false }).await.unwrap().into_inner().members
}

async fn count_keys(p: &Proc) -> i64 {
    count_keys_as(p, false).await
}

async fn count_keys_as(p: &Proc, serializable: bool) -> i64 {
    let all = RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), serializable, ..Default::default() };
    p.kv().await.range(all).await.unwrap().into_inner().count
}

/// Adds a learner through `via`, starts it, and promotes it once caught up.
async fn grow(via: &Proc, dir: &std::path::Path, name: &str, ip: &str) -> Proc {
    let peer = format!("http://{ip}:{}", common::free_port_on(ip));
    let (ok, out, err) =
        etcdctl(&via.endpoint, &["member", "add", name, &format!("--peer-urls={peer}"), "--learner"], None);
    assert!(ok, "{err}");
    let ic = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\"").map(|v| v.trim_end_matches('"').to_string()))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out}"));
    let extra = ["--initial-cluster-state", "existing", "--log-level", "info"];
    let joined = Proc::member(&dir.join(name), ip, name, &peer, &ic, &extra);
    let id = members_of(via).await.iter().find(|m| m.peer_ur_ls.contains(&peer)).unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = etcdctl(&via.endpoint, &["member", "promote", &format!("{id:x}")], None);
        if ok {
            return joined;
        }
        assert!(Instant::now() < deadline, "never promoted: {err}\n{}", joined.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_named_survivor_is_forced_once_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 181, &["--log-level", "info"]).await;
    let l = leader(&members).await;
    let mut kv = members[l].kv().await;
    for i in 0..30 {
        let req = PutRequest { key: format!("k{i:02}").into_bytes(), value: b"before".to_vec(), ..Default::default() };
        kv.put(req).await.unwrap();
    }
    let s = (l + 1) % 3;
    let name = format!("m{s}");
    // A write needs only two of three: wait until the survivor has them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_keys_as(&members[s], true).await != 30 {
        assert!(Instant::now() < deadline, "m{s} never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in (0..3).filter(|&i| i != s) {
        members[i].kill9();
    }

    // A value naming another member changes nothing: still no quorum.
    members[s].set_env(ENV, Some("m9/t1"));
    members[s].restart();
    members[s].ready_serializable().await;
    let (ok, _, _) = etcdctl(&members[s].endpoint, &["--command-timeout=2s", "put", "lost", "x"], None);
    assert!(!ok, "a member without quorum took a write");
    assert_eq!(members_of(&members[s]).await.len(), 3);
    assert!(!members[s].log_text().contains(FORCED));
    let record = members[s].data_dir.join("member/force-new-cluster-token");
    assert!(!record.exists(), "a value for another member was recorded");

    // Naming the survivor: it restarts alone, with its data, and records the token.
    members[s].set_env(ENV, Some(&format!("{name}/t1")));
    members[s].restart();
    members[s].ready().await;
    assert_eq!(members_of(&members[s]).await.len(), 1);
    assert_eq!(count_keys(&members[s]).await, 30, "the survivor lost data");
    let (ok, _, err) = etcdctl(&members[s].endpoint, &["put", "after", "recovery"], None);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), "t1");
    assert_eq!(members[s].log_text().matches(FORCED).count(), 1);

    // Grown back to two voters, then restarted with the same stale value:
    // the membership stays, and so does the quorum of two.
    let joined = grow(&members[s], dir.path(), "n1", "127.0.0.186").await;
    assert_eq!(members_of(&members[s]).await.len(), 2);
    members[s].restart();
    members[s].ready().await;
    assert_eq!(members_of(&members[s]).await.len(), 2, "a stale token reset the membership");
    assert_eq!(members[s].log_text().matches(FORCED).count(), 1);
    let (ok, _, err) = etcdctl(&joined.endpoint, &["put", "k99", "grown"], None);
    assert!(ok, "{err}");
    assert_eq!(count_keys(&members[s]).await, 31);

    // A new token for the same member forces it again (a second recovery,
    // after losing the other member).
    drop(joined);
    members[s].set_env(ENV, Some(&format!("{name}/t2")));
    members[s].restart();
    members[s].ready().await;
    assert_eq!(members_of(&members[s]).await.len(), 1);
    assert_eq!(members[s].log_text().matches(FORCED).count(), 2);
    assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), "t2");
}
