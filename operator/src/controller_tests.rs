//! Controller scenarios against the `fixtures` API-server stand-in.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use serde_json::{Value, json};

use crate::resources::Task;

use super::*;
use crate::fixtures::{Expect, Reply, as_json, empty_list, finalized, finish, kvcluster};

const NS: &str = "/apis/kvd.io/v1alpha1/namespaces/ns/kvclusters";
const BATCH: &str = "/apis/batch/v1/namespaces/ns";
/// The maintenance Jobs' and pods' label selector, URL-encoded.
const KVCTL: &str = "app.kubernetes.io%2Finstance%3Ddemo%2Capp.kubernetes.io%2Fname%3Dkvctl";

#[tokio::test]
async fn new_kvcluster_gets_a_finalizer() {
    let (ctx, server) = Context::test();
    let kc = kvcluster("demo", 3);
    let done = server.run(vec![Expect {
        reply: Reply::Json(as_json(&finalized(kc.clone()))),
        ..Expect::patch(format!("{NS}/demo?"), &["\"add\"", "kvd.io/finalizer"])
    }]);
    reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    finish(done).await;
}

#[tokio::test]
async fn first_reconcile_bootstraps_and_writes_status() {
    let (ctx, server) = Context::test();
    let kc = finalized(kvcluster("demo", 3));
    let core = "/api/v1/namespaces/ns";
    let done = server.run(vec![
        Expect::get("/apis/apps/v1/namespaces/ns/statefulsets/demo", Reply::NotFound),
        Expect::get(format!("{core}/pods?&labelSelector=app.kubernetes.io%2Finstance%3Ddemo"), empty_list()),
        Expect::get(format!("{core}/persistentvolumeclaims?&labelSelector="), empty_list()),
        Expect::get(format!("{core}/services/demo-peer"), Reply::NotFound),
        Expect::get(format!("{core}/services/demo-client"), Reply::NotFound),
        Expect::get(format!("{core}/configmaps/demo-config"), Reply::NotFound),
        Expect::get("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo", Reply::NotFound),
        Expect::get(format!("{BATCH}/cronjobs?&labelSelector={KVCTL}"), empty_list()),
        Expect::get(format!("{BATCH}/jobs?&labelSelector={KVCTL}"), empty_list()),
        Expect::get(format!("{core}/pods?&labelSelector={KVCTL}"), empty_list()),
        Expect::patch(
            format!("{core}/configmaps/demo-config?&force=true&fieldManager=kvd-operator"),
            &["\"initial-cluster-state\":\"new\"", "demo-2=http://demo-2.demo-peer.ns.svc:2380"],
        ),
        Expect::patch(format!("{core}/services/demo-peer?"), &["\"publishNotReadyAddresses\":true"]),
        Expect::patch(format!("{core}/services/demo-client?"), &["\"port\":2379"]),
        Expect::patch("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo?", &["\"minAvailable\":2"]),
        Expect::patch(
            "/apis/apps/v1/namespaces/ns/statefulsets/demo?",
            &["\"replicas\":3", "\"podManagementPolicy\":\"Parallel\"", "\"kind\":\"KvCluster\""],
        ),
        Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["Bootstrapping"]),
        Expect {
            reply: Reply::Json(as_json(&kc)),
            ..Expect::patch(
                format!("{NS}/demo/status?&force=true&fieldManager=kvd-operator"),
                &["\"phase\":\"Creating\"", "\"type\":\"Progressing\""],
            )
        },
    ]);
    let requeue = reconcile(Arc::new(kc), ctx.clone()).await.expect("reconcile");
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(5)));
    finish(done).await;
    let metrics = ctx.metrics.encode().expect("metrics");
    assert!(metrics.contains(r#"kvd_operator_reconcile_actions_total{action="bootstrap"} 1"#), "{metrics}");
}

#[tokio::test]
async fn deleted_kvcluster_runs_cleanup_and_drops_the_finalizer() {
    let (ctx, server) = Context::test();
    let mut kc = finalized(kvcluster("demo", 3));
    kc.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    let mut gone = kc.clone();
    gone.meta_mut().finalizers = None;
    let done = server.run(vec![
        Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["DeleteRequested"]),
        Expect { reply: Reply::Json(as_json(&gone)), ..Expect::patch(format!("{NS}/demo?"), &["\"remove\""]) },
    ]);
    reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    finish(done).await;
}

/// Everything exists, but no member answers (DNS names do not resolve here).
/// The ConfigMap says `new` until the cluster has formed.
fn existing_objects(kc: &KvCluster) -> Vec<Expect> {
    let formed = kc.status.as_ref().is_some_and(|s| s.formed);
    let core = "/api/v1/namespaces/ns";
    let mut sts = serde_json::to_value(crate::resources::statefulset(kc, 3, None)).expect("sts");
    sts["status"] = serde_json::json!({ "replicas": 3, "updateRevision": "r1" });
    let json = |v: &dyn erased::Ser| Reply::Json(v.value());
    vec![
        Expect::get("/apis/apps/v1/namespaces/ns/statefulsets/demo", Reply::Json(sts)),
        Expect::get(format!("{core}/pods?"), empty_list()),
        Expect::get(format!("{core}/persistentvolumeclaims?"), empty_list()),
        Expect::get(format!("{core}/services/demo-peer"), json(&crate::resources::peer_service(kc))),
        Expect::get(format!("{core}/services/demo-client"), json(&crate::resources::client_service(kc))),
        Expect::get(
            format!("{core}/configmaps/demo-config"),
            json(&crate::resources::config_map(kc, &[0, 1, 2], !formed)),
        ),
        Expect::get("/apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo", json(&crate::resources::pdb(kc, 3))),
    ]
}

/// The maintenance objects: the CronJobs the spec asks for exist as built
/// (those in `stale` with an old spec hash), and `jobs`/`pods` are the Jobs and pods found.
fn maintenance_objects(kc: &KvCluster, stale: &[Task], jobs: Vec<Value>, pods: Vec<Value>) -> Vec<Expect> {
    let list =
        |items: Vec<Value>| Reply::Json(json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items }));
    let crons = Task::SCHEDULED
        .into_iter()
        .filter_map(|task| Some((task, crate::resources::cronjob(kc, task)?)))
        .map(|(task, mut cj)| {
            if stale.contains(&task) {
                cj.metadata.annotations = Some([(crate::resources::SPEC_HASH.to_string(), "old".to_string())].into());
            }
            serde_json::to_value(cj).expect("json")
        })
        .collect();
    vec![
        Expect::get(format!("{BATCH}/cronjobs?&labelSelector={KVCTL}"), list(crons)),
        Expect::get(format!("{BATCH}/jobs?&labelSelector={KVCTL}"), list(jobs)),
        Expect::get(format!("/api/v1/namespaces/ns/pods?&labelSelector={KVCTL}"), list(pods)),
    ]
}

mod erased {
    /// Lets `existing_objects` serialize objects of different types.
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("json")
        }
    }
}

#[tokio::test]
async fn unreachable_members_of_a_forming_cluster_mean_wait() {
    let (ctx, server) = Context::test();
    let kc = finalized(kvcluster("demo", 3));
    let mut calls = existing_objects(&kc);
    calls.extend(maintenance_objects(&kc, &[], vec![], vec![]));
    calls.push(Expect {
        reply: Reply::Json(as_json(&kc)),
        ..Expect::patch(format!("{NS}/demo/status?"), &["\"phase\":\"Creating\"", "\"reason\":\"Bootstrapping\""])
    });
    let done = server.run(calls);
    let requeue = reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(10)));
    finish(done).await;
}

#[tokio::test]
async fn unreachable_members_of_a_formed_cluster_mean_quorum_lost() {
    let (ctx, server) = Context::test();
    let mut kc = finalized(kvcluster("demo", 3));
    kc.status = Some(crate::crd::KvClusterStatus { formed: true, ..Default::default() });
    let mut calls = existing_objects(&kc);
    calls.extend(maintenance_objects(&kc, &[], vec![], vec![]));
    calls.push(Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["QuorumLost", "\"type\":\"Warning\""]));
    calls.push(Expect {
        reply: Reply::Json(as_json(&kc)),
        ..Expect::patch(format!("{NS}/demo/status?"), &["\"phase\":\"Degraded\"", "\"reason\":\"QuorumLost\""])
    });
    let done = server.run(calls);
    let requeue = reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(30)));
    finish(done).await;
}

#[test]
fn requeue_depends_on_the_step() {
    assert_eq!(requeue_after(&Action::Idle), Duration::from_secs(60));
    assert_eq!(requeue_after(&Action::DisarmNospace), Duration::from_secs(5));
}

/// A whole reconcile against the stand-in API server and a fake member: one voter of three
/// wanted, so MemberAdd as learner for ordinal 1; `pods` listed, `then` after the ConfigMap.
async fn add_learner_scenario(pods: Reply, then: Vec<Expect>) {
    let (ctx, server) = Context::test();
    let (endpoint, fake) =
        crate::etcd::tests::serve_with(0x10, 0x10, vec![crate::etcd::tests::member(0, false)], vec![]).await;
    let etcd = ctx.etcd.clone().with_overrides([(crate::naming::client_url("demo", "ns", 0), endpoint)].into());
    let ctx = Arc::new(Context { etcd, ..(*ctx).clone() });
    let mut kc = finalized(kvcluster("demo", 3));
    kc.status = Some(crate::crd::KvClusterStatus { formed: true, ..Default::default() });
    let mut calls = existing_objects(&kc);
    let mut sts = crate::resources::statefulset(&kc, 1, None);
    sts.status =
        Some(serde_json::from_value(serde_json::json!({ "replicas": 1, "updateRevision": "r1" })).expect("st"));
    calls[0] = Expect::get(
        "/apis/apps/v1/namespaces/ns/statefulsets/demo",
        Reply::Json(serde_json::to_value(&sts).expect("sts")),
    );
    calls[1] = Expect::get("/api/v1/namespaces/ns/pods?", pods);
    calls.extend(maintenance_objects(&kc, &[], vec![], vec![]));
    calls.push(Expect::patch(
        "/api/v1/namespaces/ns/configmaps/demo-config?",
        &["\"initial-cluster-state\":\"existing\"", "demo-1=http://demo-1.demo-peer.ns.svc:2380"],
    ));
    calls.extend(then);
    calls.push(Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["MemberAdded"]));
    calls.push(Expect {
        reply: Reply::Json(as_json(&kc)),
        ..Expect::patch(format!("{NS}/demo/status?"), &["\"phase\":\"Scaling\"", "\"leader\":\"demo-0\""])
    });
    let done = server.run(calls);
    reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    finish(done).await;
    let asked = fake.calls.lock().expect("lock").clone();
    assert_eq!(
        asked,
        vec!["alarm 0 0 0".to_string(), "add http://demo-1.demo-peer.ns.svc:2380 learner=true".to_string()]
    );
}

#[tokio::test]
async fn scale_up_adds_a_learner_through_the_etcd_api() {
    add_learner_scenario(empty_list(), vec![]).await;
}

/// The new learner's pod is there already, not ready (a recycled member in
/// CrashLoopBackOff): it is restarted so that it joins at once.
#[tokio::test]
async fn a_waiting_pod_of_a_new_learner_is_restarted() {
    let pod = json!({ "metadata": { "name": "demo-1" },
                      "status": { "conditions": [ { "type": "Ready", "status": "False" } ] } });
    let list = json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": [pod] });
    add_learner_scenario(Reply::Json(list), vec![Expect::delete("/api/v1/namespaces/ns/pods/demo-1?", &[])]).await;
}

/// A KvCluster with both maintenance schedules.
fn scheduled() -> KvCluster {
    let mut kc = finalized(kvcluster("demo", 3));
    kc.spec.version = Some("1.2.3".into());
    kc.spec.compaction = Some(crate::crd::CompactionSpec {
        schedule: "*/5 * * * *".into(),
        retention_revisions: None,
        retention_duration: Some("1h".into()),
    });
    kc.spec.defrag = Some(crate::crd::DefragSpec { schedule: "0 3 * * *".into(), free_threshold: 0.3 });
    kc
}

fn status_patch(kc: &KvCluster, contains: &[&str]) -> Expect {
    Expect { reply: Reply::Json(as_json(kc)), ..Expect::patch(format!("{NS}/demo/status?"), contains) }
}

#[tokio::test]
async fn cronjobs_are_created_with_the_spec() {
    let (ctx, server) = Context::test();
    let kc = scheduled();
    let mut calls = existing_objects(&kc);
    calls.extend(maintenance_objects(&kvcluster("demo", 3), &[], vec![], vec![]));
    calls.push(Expect::patch(
        format!("{BATCH}/cronjobs/demo-compact?&force=true&fieldManager=kvd-operator"),
        &[
            "\"schedule\":\"*/5 * * * *\"",
            "\"concurrencyPolicy\":\"Forbid\"",
            "\"image\":\"ghcr.io/kvd-io/kvd:1.2.3\"",
            "\"command\":[\"kvctl\"]",
            "\"args\":[\"compact\",\"--endpoints\",\"http://demo-client.ns.svc:2379\",\"--retain-duration\",\"1h\"]",
            "\"terminationMessagePolicy\":\"FallbackToLogsOnError\"",
            "\"restartPolicy\":\"Never\"",
            "\"kind\":\"KvCluster\"",
            "\"app.kubernetes.io/name\":\"kvctl\"",
        ],
    ));
    calls.push(Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["CronJobApplied", "demo-compact"]));
    calls.push(status_patch(&kc, &["\"type\":\"Progressing\""]));
    let done = server.run(calls);
    let requeue = reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(5)));
    finish(done).await;
}

#[tokio::test]
async fn cronjobs_are_updated_when_the_spec_changes() {
    let (ctx, server) = Context::test();
    let kc = scheduled();
    let mut calls = existing_objects(&kc);
    // The compact CronJob is current, the defrag one was built from an older spec.
    calls.extend(maintenance_objects(&kc, &[Task::Defrag], vec![], vec![]));
    calls.push(Expect::patch(
        format!("{BATCH}/cronjobs/demo-defrag?&force=true&fieldManager=kvd-operator"),
        &["\"args\":[\"defrag\",\"--endpoints\",\"http://demo-client.ns.svc:2379\",\"--rolling\",\"--skip-if-free-below\",\"0.3\"]"],
    ));
    calls.push(Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["CronJobApplied", "demo-defrag"]));
    calls.push(status_patch(&kc, &["\"type\":\"Progressing\""]));
    let done = server.run(calls);
    reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    finish(done).await;
}

#[tokio::test]
async fn cronjobs_are_deleted_when_their_schedule_goes() {
    let (ctx, server) = Context::test();
    let mut kc = scheduled();
    let mut calls = existing_objects(&kc);
    calls.extend(maintenance_objects(&kc, &[], vec![], vec![]));
    kc.spec.compaction = None;
    calls.push(Expect::delete(format!("{BATCH}/cronjobs/demo-compact?"), &["\"propagationPolicy\":\"Background\""]));
    calls.push(Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["CronJobDeleted"]));
    calls.push(status_patch(&kc, &["\"type\":\"Progressing\""]));
    let done = server.run(calls);
    reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    finish(done).await;
}

#[tokio::test]
async fn status_records_the_finished_jobs_termination_messages() {
    let (ctx, server) = Context::test();
    let kc = scheduled();
    let mut calls = existing_objects(&kc);
    let job = |task: &str, uid: &str, done: &str| {
        json!({ "apiVersion": "batch/v1", "kind": "Job",
                "metadata": { "name": format!("demo-{task}-{uid}"), "uid": uid,
                              "labels": crate::naming::maintenance_labels("demo", task) },
                "status": { "succeeded": 1, "completionTime": done } })
    };
    let pod = |uid: &str, message: &str| {
        json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": format!("p-{uid}"),
                              "ownerReferences": [ { "apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": uid } ] },
                "status": { "containerStatuses": [ { "name": "kvctl", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": { "terminated": { "exitCode": 0, "message": message } } } ] } })
    };
    let compact =
        r#"{"compactedRevision":1234,"targetRevision":1234,"currentRevision":1300,"time":"2026-01-01T10:00:00Z"}"#;
    let defrag = r#"{"members":[{"name":"demo-1","id":"a","bytesFreed":700},{"name":"demo-0","id":"b","bytesFreed":300}],"skipped":[],"leaderMovedTo":"demo-1","time":"2026-01-01T10:05:00Z"}"#;
    calls.extend(maintenance_objects(
        &kc,
        &[],
        vec![
            job("compact", "c1", "2026-01-01T10:00:01Z"),
            job("defrag", "d1", "2026-01-01T10:05:01Z"),
            job("defrag", "d0", "2026-01-01T09:05:01Z"),
        ],
        vec![pod("c1", compact), pod("d1", defrag), pod("d0", "not json at all")],
    ));
    calls.push(status_patch(
        &kc,
        &[
            // (key order depends on serde_json's preserve_order, which another crate may turn on)
            "\"lastCompaction\":{",
            "\"revision\":1234",
            "\"time\":\"2026-01-01T10:00:00Z\"",
            "\"lastDefrag\":{",
            "\"bytesFreed\":1000",
            "\"member\":\"demo-1,demo-0\"",
            "\"time\":\"2026-01-01T10:05:00Z\"",
        ],
    ));
    let done = server.run(calls);
    reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    finish(done).await;
}

/// Quorum lost for an hour with `quorumLossRecovery` on, one member of three answering: the
/// ConfigMap gets the force key, then the survivor's pod goes; the status says QuorumRecovery.
#[tokio::test]
async fn a_long_quorum_loss_forces_the_survivor_when_asked() {
    let (ctx, server) = Context::test();
    let members = (0..3).map(|o| crate::etcd::tests::member(o, false)).collect();
    let (endpoint, _fake) = crate::etcd::tests::serve_with(0x11, 0, members, vec![]).await;
    let etcd = ctx.etcd.clone().with_overrides([(crate::naming::client_url("demo", "ns", 1), endpoint)].into());
    let ctx = Arc::new(Context { etcd, ..(*ctx).clone() });
    let mut kc = finalized(kvcluster("demo", 3));
    kc.spec.quorum_loss_recovery = true;
    let since = Some(Time(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)));
    kc.status = Some(crate::crd::KvClusterStatus { formed: true, quorum_lost_since: since, ..Default::default() });
    let mut calls = existing_objects(&kc);
    calls.extend(maintenance_objects(&kc, &[], vec![], vec![]));
    calls.push(Expect::patch(
        "/api/v1/namespaces/ns/configmaps/demo-config?",
        &["\"force-new-cluster-member\":\"demo-1/00001111-", "\"force-new-cluster-since\":"],
    ));
    calls.push(Expect::delete("/api/v1/namespaces/ns/pods/demo-1?", &[]));
    calls.push(Expect::post("/apis/events.k8s.io/v1/namespaces/ns/events?", &["QuorumRecovery", "demo-1"]));
    calls.push(Expect {
        reply: Reply::Json(as_json(&kc)),
        ..Expect::patch(
            format!("{NS}/demo/status?"),
            &["\"phase\":\"Recovering\"", "\"reason\":\"QuorumRecovery\"", "\"quorumLossBestIndex\""],
        )
    });
    let done = server.run(calls);
    let requeue = reconcile(Arc::new(kc), ctx).await.expect("reconcile");
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(5)));
    finish(done).await;
}

/// Status writes do not trigger a reconcile; spec, annotations, finalizers
/// and deletion do.
#[test]
fn only_intent_changes_trigger() {
    let kc = finalized(kvcluster("demo", 3));
    let base = super::intent(&kc);
    let mut st = kc.clone();
    st.status = Some(crate::crd::KvClusterStatus { phase: Some("Running".into()), ..Default::default() });
    assert_eq!(super::intent(&st), base, "status alone");
    let mut spec = kc.clone();
    spec.metadata.generation = Some(2);
    assert_ne!(super::intent(&spec), base, "a new generation");
    let mut ann = kc.clone();
    ann.metadata.annotations = Some([("kvd.io/backup-now".to_string(), "t".to_string())].into());
    assert_ne!(super::intent(&ann), base, "an annotation");
    let mut del = kc.clone();
    del.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    assert_ne!(super::intent(&del), base, "deletion");
}

#[test]
fn errors_back_off_per_cluster_and_carry_their_kind() {
    let secs: Vec<u64> = (1..=8).map(|n| super::backoff(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
    let inner = crate::Error::Unreachable("x".into());
    let wrapped = crate::Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(inner)));
    assert_eq!(wrapped.metric_label(), "unreachable", "the error inside the finalizer wrapper");
    let bare = crate::Error::Finalizer(Box::new(kube::runtime::finalizer::Error::UnnamedObject));
    assert_eq!(bare.metric_label(), "finalizer");
}

#[test]
fn the_scope_is_the_namespaces_named_or_the_whole_cluster() {
    assert_eq!(Scope::of(&[]), Scope::Cluster);
    assert_eq!(Scope::of(&[String::new(), " ".into()]), Scope::Cluster, "KVD_OPERATOR_NAMESPACES set empty");
    let named: Vec<String> = ["prod", " db", "prod"].iter().map(|s| s.to_string()).collect();
    assert_eq!(Scope::of(&named), Scope::Namespaces(vec!["db".into(), "prod".into()]));
}
