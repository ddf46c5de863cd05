//! Quorum-loss recovery against real kvd processes: the planner decides on
//! observations of a real cluster (MemberList and Status through
//! `EtcdClient`, the survivor asked directly as `observe` does), and this
//! test performs each step as `act` and the kubelet would: the ConfigMap's
//! key becomes the env var of a restarted process, a recycled member loses
//! its data dir, learners are started when added. Five members lose three
//! (one of the two survivors lags behind); the operator's steps force the
//! most advanced survivor, recycle the rest and grow back to five voters
//! with every write kept. Needs a kvd binary, as `kvd_member.rs` does.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::{PutRequest, RangeRequest};
use kvd_operator::act::Outcome;
use kvd_operator::crd::KvCluster;
use kvd_operator::etcd::EtcdClient;
use kvd_operator::observe::{Desired, Observation, PodObs, StsObs};
use kvd_operator::planner::{Action, plan};
use kvd_operator::recovery::{self, RecoveryEnd};
use kvd_operator::resources::{FORCE_ENV, ForceKey, recovery_config_map};
use kvd_operator::status;

const N: u32 = 5;
/// `failedMemberTimeoutSeconds`, shortened: quorum lost this long starts a recovery.
const AFTER: Duration = Duration::from_secs(2);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn kvd_bin() -> PathBuf {
    let bin = std::env::var_os("KVD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kvd"));
    assert!(bin.exists(), "no kvd binary at {}: build it (cargo build -p kvd --bin kvd) or set KVD_BIN", bin.display());
    bin
}

fn kvcluster() -> KvCluster {
    let spec = serde_json::from_value(serde_json::json!({ "replicas": N, "quorumLossRecovery": true })).expect("spec");
    let mut kc = KvCluster::new("demo", spec);
    kc.metadata.namespace = Some("ns".into());
    kc
}

/// The ordinal of the member that says it leads.
async fn leader(w: &World) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (o, m) in w.members.iter().filter(|(_, m)| m.child.is_some()) {
            if let Ok(s) = w.etcd.status(&m.client).await
                && s.header.as_ref().is_some_and(|h| h.member_id == s.leader)
            {
                return *o;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A KV client that connects when first used (the member may be starting).
fn client(endpoint: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::new(tonic::transport::Channel::from_shared(endpoint.to_string()).expect("endpoint").connect_lazy())
}

async fn put(endpoint: &str, key: &str, value: &str) {
    let mut kv = client(endpoint);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = PutRequest { key: key.into(), value: value.into(), ..PutRequest::default() };
        match kv.put(req).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("put {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

/// Keys under `k`, or -1 when the member does not answer.
async fn count(endpoint: &str, serializable: bool) -> i64 {
    let mut kv = client(endpoint);
    let req = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        serializable,
        count_only: true,
        ..RangeRequest::default()
    };
    kv.range(req).await.map(|r| r.into_inner().count).unwrap_or(-1)
}

/// One member "pod": a kvd process, its URLs and data dir.
struct Member {
    child: Option<Child>,
    client: String,
    peer: String,
    dir: PathBuf,
    initial_cluster: String,
    state: &'static str,
}

impl Member {
    fn new(root: &Path, o: u32, initial_cluster: String, state: &'static str, peer: String) -> Member {
        let client = format!("http://127.0.0.1:{}", free_port());
        Member { child: None, client, peer, dir: root.join(format!("demo-{o}")), initial_cluster, state }
    }

    fn start(&mut self, o: u32, force: Option<&str>) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).expect("log");
        let mut cmd = Command::new(kvd_bin());
        cmd.args([
            format!("--name=demo-{o}"),
            format!("--data-dir={}", self.dir.display()),
            format!("--listen-client-urls={}", self.client),
            format!("--advertise-client-urls={}", self.client),
            format!("--listen-peer-urls={}", self.peer),
            format!("--initial-advertise-peer-urls={}", self.peer),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={}", self.state),
            "--initial-cluster-token=ns-demo".into(),
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ]);
        // As the kubelet does with an optional ConfigMap key: set or absent.
        match force {
            Some(v) => cmd.env(FORCE_ENV, v),
            None => cmd.env_remove(FORCE_ENV),
        };
        let child = cmd.stdout(log.try_clone().expect("log")).stderr(log).stdin(Stdio::null()).spawn().expect("kvd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The world the operator sees: the processes, when each "pod" and "claim"
/// was created, and the ConfigMap's recovery key.
struct World {
    root: PathBuf,
    members: BTreeMap<u32, Member>,
    created: BTreeMap<u32, Timestamp>,
    key: Option<ForceKey>,
    etcd: EtcdClient,
    /// The KvCluster, with the status each step writes.
    kc: KvCluster,
}

impl World {
    fn endpoints(&self) -> Vec<String> {
        self.members.values().filter(|m| m.child.is_some()).map(|m| m.client.clone()).collect()
    }

    /// What `observe::gather` would build (ordinals from the test's own map
    /// of peer URLs, since these are not the StatefulSet's DNS names).
    async fn observe(&self) -> Observation {
        let view = self.etcd.view(&self.endpoints()).await;
        let by_peer: HashMap<&str, u32> = self.members.iter().map(|(o, m)| (m.peer.as_str(), *o)).collect();
        let members: Option<Vec<_>> = view.members.map(|ms| {
            ms.into_iter()
                .map(|mut m| {
                    m.ordinal = by_peer.get(m.peer_url.as_str()).copied();
                    m
                })
                .collect()
        });
        let mut recovery = None;
        if let Some(key) = &self.key {
            // Through the ConfigMap the operator writes and the parser `gather` uses.
            let data = recovery_config_map(&kvcluster(), &[], key).data.unwrap_or_default();
            let mut r = recovery::from_config("demo", &data).expect("the recovery keys parse");
            r.survivor = recovery::ask_survivor(&self.etcd, &self.members[&r.ordinal].client).await;
            let others: Vec<String> =
                self.members.iter().filter(|(o, _)| **o != r.ordinal).map(|(_, m)| m.client.clone()).collect();
            r.others = recovery::ask_others(&self.etcd, &others).await;
            recovery = Some(r);
        }
        // What the last reconcile wrote into the status (quorumLostSince and the best raft index).
        let status = self.kc.status.clone().unwrap_or_default();
        Observation {
            desired: Desired {
                replicas: N,
                quorum_loss_recovery: true,
                failed_member_after: AFTER,
                ..Desired::default()
            },
            statefulset: Some(StsObs { replicas: N, template_hash: Some("h1".into()), claim_size: None }),
            pods: (0..N)
                .map(|o| (o, PodObs { ready: true, created: Some(self.created[&o]), ..PodObs::default() }))
                .collect(),
            pvcs: (0..N).collect(),
            claims_created: self.created.clone(),
            members,
            alarms: view.alarms,
            bootstrapped: true,
            now: Timestamp::now(),
            uid: "5eed-cafe".into(),
            quorum_lost_since: status.quorum_lost_since.map(|t| t.0),
            quorum_loss_best: status.quorum_loss_best_index,
            recovery,
            ..Observation::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_recovers_a_lost_quorum_from_its_most_advanced_survivor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let peers: Vec<String> = (0..N).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
    let ic = (0..N).map(|o| format!("demo-{o}={}", peers[o as usize])).collect::<Vec<_>>().join(",");
    let before = Timestamp::now() - SignedDuration::from_secs(3600);
    let mut w = World {
        root: root.clone(),
        members: (0..N).map(|o| (o, Member::new(&root, o, ic.clone(), "new", peers[o as usize].clone()))).collect(),
        created: (0..N).map(|o| (o, before)).collect(),
        key: None,
        etcd: EtcdClient::new("demo", Duration::from_secs(2)),
        kc: kvcluster(),
    };
    for (o, m) in w.members.iter_mut() {
        m.start(*o, None);
    }
    let eps = w.endpoints();
    for i in 0..20 {
        put(&eps[0], &format!("k{i:02}"), "first").await;
    }
    // Follower `b` (0 or 1) stops; the rest take 20 more writes; then all
    // but follower `a` (3 or 4: ordinal above `b`, so the tie-break alone
    // would pick `b`) are lost for good, the leader among them, and `b`
    // comes back: two of five answer, `a` ahead, and no leader left to
    // bring `b` up to date.
    let l = leader(&w).await;
    let b = (0..N).find(|o| *o != l).expect("b");
    w.members.get_mut(&b).expect("b").kill();
    let eps = w.endpoints();
    for i in 20..40 {
        put(&eps[0], &format!("k{i:02}"), "second").await;
    }
    let l = leader(&w).await;
    let a = (0..N).rev().find(|o| *o != l && *o != b).expect("a");
    // A write needs three of five: wait until `a` has them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&w.members[&a].client, true).await != 40 {
        assert!(Instant::now() < deadline, "demo-{a} never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for o in (0..N).filter(|o| *o != a && *o != b) {
        w.members.get_mut(&o).expect("member").kill();
    }
    w.members.get_mut(&b).expect("b").start(b, None);
    // Both survivors answer Status before the operator looks; `b` lags.
    let index = |o: u32| {
        let (etcd, ep) = (w.etcd.clone(), w.members[&o].client.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match etcd.status(&ep).await {
                    Ok(s) => return s.raft_index,
                    Err(e) => assert!(Instant::now() < deadline, "demo-{o} does not answer: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (lagging, ahead) = (index(b).await, index(a).await);
    assert!(lagging < ahead, "demo-{b} at {lagging} is not behind demo-{a} at {ahead}");

    let mut steps: Vec<Action> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(Instant::now() < deadline, "no convergence; steps {steps:#?}");
        let obs = w.observe().await;
        let action = plan(&obs);
        w.kc.status = Some(status::build(&w.kc, &obs, &action, &Outcome::default()));
        match &action {
            Action::Idle => break,
            Action::Wait { .. } => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            // Before the timeout, or a view that raced a restart or an
            // election: look again. A second force would fail the test below.
            Action::Degraded { reason: "QuorumLost", message } => {
                eprintln!("still: {message}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Action::ForceNewCluster { ordinal, token, since } => {
                // act: the key first, then the pod; the kubelet starts it with the key.
                let member = format!("demo-{ordinal}");
                w.key = Some(ForceKey { member: member.clone(), token: token.clone(), since: *since });
                let m = w.members.get_mut(ordinal).expect("survivor");
                m.kill();
                m.start(*ordinal, Some(&format!("{member}/{token}")));
                w.created.insert(*ordinal, Timestamp::now() + SignedDuration::from_secs(1));
            }
            Action::RecycleMember { ordinal } => {
                let mut m = w.members.remove(ordinal).expect("recycled member");
                m.kill();
                std::fs::remove_dir_all(&m.dir).ok();
                // The StatefulSet re-creates pod and claim; the fresh pod
                // cannot join before it is added (the test starts it then).
                w.created.insert(*ordinal, Timestamp::now() + SignedDuration::from_secs(1));
            }
            Action::EndRecovery { .. } => w.key = None,
            Action::AddLearner { ordinal } => {
                let peer = format!("http://127.0.0.1:{}", free_port());
                w.etcd.add_learner(&w.endpoints(), &peer).await.expect("MemberAdd learner");
                let mut ic: Vec<String> = w.members.iter().map(|(o, m)| format!("demo-{o}={}", m.peer)).collect();
                ic.push(format!("demo-{ordinal}={peer}"));
                let mut m = Member::new(&w.root, *ordinal, ic.join(","), "existing", peer);
                m.start(*ordinal, None);
                w.members.insert(*ordinal, m);
            }
            Action::PromoteLearner { id, .. } => {
                if let Err(e) = w.etcd.promote(&w.endpoints(), *id).await {
                    eprintln!("promote {id:x}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
            other => panic!("unexpected step {other:?} after {steps:#?}\non {obs:#?}"),
        }
        let seen: Vec<_> = obs
            .members
            .iter()
            .flatten()
            .map(|m| (m.ordinal, m.health.as_ref().map(|h| (h.raft_index, h.leader))))
            .collect();
        eprintln!("step: {action:?} on {seen:?}");
        steps.push(action);
    }

    // The planner forced `a` (ahead of `b`), recycled everyone
    // else, ended the recovery, and the usual path grew the cluster back.
    assert!(matches!(steps[0], Action::ForceNewCluster { ordinal, .. } if ordinal == a), "a={a} {steps:#?}");
    let recycled: Vec<u32> = steps
        .iter()
        .filter_map(|s| if let Action::RecycleMember { ordinal } = s { Some(*ordinal) } else { None })
        .collect();
    assert_eq!(recycled, (0..N).filter(|o| *o != a).collect::<Vec<_>>(), "{steps:#?}");
    let end = steps.iter().position(|s| *s == Action::EndRecovery { ordinal: a, outcome: RecoveryEnd::Recovered });
    let first_add = steps.iter().position(|s| matches!(s, Action::AddLearner { .. }));
    assert!(end.is_some() && end < first_add, "{steps:#?}");
    let forces = steps.iter().filter(|s| matches!(s, Action::ForceNewCluster { .. })).count();
    assert_eq!(forces, 1, "forced more than once: {steps:#?}");
    let adds = steps.iter().filter(|s| matches!(s, Action::AddLearner { .. })).count();
    assert_eq!(adds, 4, "{steps:#?}");

    let list = w.etcd.member_list(&w.endpoints()).await.expect("MemberList");
    assert_eq!(list.iter().filter(|m| !m.is_learner).count(), N as usize, "{list:?}");
    let survivor = w.members[&a].client.clone();
    assert_eq!(count(&survivor, false).await, 40, "writes lost");
    put(&survivor, "k99", "after").await;
    for (o, m) in &w.members {
        let deadline = Instant::now() + Duration::from_secs(20);
        while count(&m.client, true).await != 41 {
            assert!(Instant::now() < deadline, "demo-{o} did not catch up:\n{}", m.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let log = w.members[&a].log();
    assert_eq!(log.matches("is now the only member").count(), 1, "{log}");
}
