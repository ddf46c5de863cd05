//! `EtcdClient` against a real kvd process: the wire assumptions the operator
//! makes (Status fields, MemberList, learner add/promote/remove, compact,
//! defragment, alarms). Needs a kvd binary: `KVD_BIN`, or the workspace's
//! `target/debug/kvd`, which scripts/test builds before the tests run
//! (`cargo build -p kvd --bin kvd` by hand).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvd_api::etcdserverpb::PutRequest;
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_operator::etcd::EtcdClient;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn kvd_bin() -> std::path::PathBuf {
    let bin = std::env::var_os("KVD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kvd"));
    assert!(bin.exists(), "no kvd binary at {}: build it (cargo build -p kvd --bin kvd) or set KVD_BIN", bin.display());
    bin
}

#[tokio::test]
async fn operator_calls_work_against_kvd() {
    let bin = kvd_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args([
            "--name=demo-0".to_string(),
            format!("--data-dir={}", dir.path().display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=demo-0={peer_url}"),
            "--initial-cluster-state=new".to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvd");
    let _kill = Kill(child);
    let etcd = EtcdClient::new("demo", Duration::from_secs(2));
    let eps = vec![client_url.clone()];
    let start = Instant::now();
    let status = loop {
        match etcd.status(&client_url).await {
            Ok(s) if s.leader != 0 => break s,
            _ if start.elapsed() > Duration::from_secs(30) => panic!("kvd did not elect itself"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let me = status.header.as_ref().map(|h| h.member_id).expect("header");
    assert_eq!(status.leader, me);

    let mut kv = KvClient::connect(client_url.clone()).await.expect("kv");
    for i in 0..20 {
        let req = PutRequest { key: format!("k{i}").into_bytes(), value: vec![b'x'; 100], ..PutRequest::default() };
        kv.put(req).await.expect("put");
    }

    let view = etcd.view(&eps).await;
    let members = view.members.expect("MemberList answered");
    assert_eq!(members.len(), 1);
    let h = members[0].health.as_ref().expect("Status answered");
    assert_eq!(h.leader, me);
    assert!(h.revision >= 21 && h.raft_index > 0 && h.db_size > 0, "{h:?}");
    assert!(view.alarms.is_empty());

    etcd.compact(&eps, h.revision - 1).await.expect("compact");
    etcd.compact(&eps, h.revision - 5).await.expect("compacting below the compacted revision counts as done");
    etcd.defragment(&client_url).await.expect("defragment");
    etcd.disarm_nospace(&eps, me).await.expect("disarm without an alarm");

    // A learner that never starts: listed, unhealthy, refused promotion with
    // the error string `act` retries on, then removable.
    let learner_peer = format!("http://127.0.0.1:{}", free_port());
    let id = etcd.add_learner(&eps, &learner_peer).await.expect("MemberAdd learner");
    let view = etcd.view(&eps).await;
    let learner = view.members.expect("members").into_iter().find(|m| m.id == id).expect("learner listed");
    assert!(learner.is_learner && learner.health.is_none());
    let err = etcd.promote(&eps, id).await.expect_err("a learner that is not in sync cannot be promoted");
    assert!(err.to_string().contains("in sync"), "{err}");
    etcd.remove(&eps, id).await.expect("MemberRemove");
    assert_eq!(etcd.view(&eps).await.members.map(|m| m.len()), Some(1));
}
