//! Observation: plain data describing what exists (Kubernetes objects,
//! including the maintenance CronJobs and their Jobs) and what the members
//! themselves report (MemberList, Status, alarms), with a quorum-loss
//! recovery under way (`recovery.rs`). `gather` turns the objects read
//! (`cache.rs`) and the members' answers into one; the planner only ever
//! sees an `Observation`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;

use crate::cache::Objects;
use crate::crd::KvCluster;
use crate::etcd::{ClusterView, EtcdClient};
use crate::maintenance::{self, JobObs};
use crate::naming;
use crate::recovery::{self, RecoveryObs};
use crate::resources::{self, SPEC_HASH, TEMPLATE_HASH, Task};
use crate::{Error, Result};

/// Owned objects besides the StatefulSet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owned {
    PeerService,
    ClientService,
    ConfigMap,
    Pdb,
}

/// The spec, reduced to what the planner needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub replicas: u32,
    /// Hash of the pod template the StatefulSet should carry.
    pub template_hash: String,
    pub allow_even: bool,
    pub auto_remediate: bool,
    pub quorum_loss_recovery: bool,
    /// A member whose pod fails this long is replaced.
    pub failed_member_after: Duration,
    pub quota_bytes: i64,
    /// Spec hash of each maintenance CronJob the spec asks for.
    pub cronjobs: BTreeMap<Task, String>,
    /// Revisions kept below the current one when compacting for NOSPACE.
    pub retention_revisions: i64,
    /// Why the client TLS secret cannot be used, if it cannot (set by the
    /// controller, which reads it).
    pub tls_problem: Option<String>,
    /// Why the spec's TLS cannot be applied to the formed cluster.
    pub tls_conflict: Option<String>,
    /// The member image the spec asks for.
    pub image: String,
    /// With `spec.backup`: the token of the backup taken before moving to
    /// `image`, and the name of its Job.
    pub upgrade_backup: Option<(String, String)>,
    /// `spec.auth.enabled`, if `spec.auth` is set.
    pub auth: Option<bool>,
    /// Clients (the operator among them) use TLS.
    pub client_tls: bool,
    /// `spec.backup` is set.
    pub backup_configured: bool,
    /// `spec.bootstrap.fromBackup` is set.
    pub from_backup: bool,
    /// `spec.storage.size`, and its value in bytes (None if it is no quantity).
    pub storage_size: String,
    pub storage_bytes: Option<u64>,
}

impl Default for Desired {
    fn default() -> Self {
        Desired {
            replicas: 3,
            template_hash: "h1".into(),
            allow_even: false,
            auto_remediate: true,
            quorum_loss_recovery: false,
            failed_member_after: crate::FAILED_MEMBER_AFTER,
            quota_bytes: crate::crd::DEFAULT_QUOTA_BYTES,
            cronjobs: BTreeMap::new(),
            retention_revisions: 0,
            tls_problem: None,
            tls_conflict: None,
            image: "r/kvd:0.1.0".into(),
            upgrade_backup: None,
            auth: None,
            client_tls: false,
            backup_configured: false,
            from_backup: false,
            storage_size: "1Gi".into(),
            storage_bytes: Some(1 << 30),
        }
    }
}

/// The StatefulSet as it is.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StsObs {
    pub replicas: u32,
    pub template_hash: Option<String>,
    /// The size its claim template asks for (claim templates never change).
    pub claim_size: Option<String>,
}

/// One member's claim, in bytes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ClaimObs {
    /// `spec.resources.requests.storage`.
    pub requested: Option<u64>,
    /// `status.capacity.storage`: what the volume has.
    pub capacity: Option<u64>,
}

/// One member pod.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodObs {
    pub ready: bool,
    /// How long the pod has been not ready (crash-looping, unreachable, pending).
    pub failing_for: Option<Duration>,
    /// The pod runs an older template than the StatefulSet's update revision.
    pub outdated: bool,
    /// When the pod was created (API server time).
    pub created: Option<jiff::Timestamp>,
    /// Its uid: a delete names it, so a pod created since under the same
    /// name is never deleted on an older observation.
    pub uid: Option<String>,
    /// Being deleted already (it has a deletion timestamp).
    pub terminating: bool,
    /// The image of its kvd container.
    pub image: Option<String>,
}

/// What one member reports about itself through Status.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MemberHealth {
    /// Member id of the leader this member knows (0 = none).
    pub leader: u64,
    pub revision: i64,
    pub raft_index: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
}

/// One member from MemberList, merged with its own Status.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MemberObs {
    pub id: u64,
    pub name: String,
    pub ordinal: Option<u32>,
    pub peer_url: String,
    pub client_url: String,
    pub is_learner: bool,
    /// None when the member did not answer Status.
    pub health: Option<MemberHealth>,
}

/// Alarm types the planner acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmKind {
    Nospace,
    Corrupt,
}

/// One raised alarm.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmObs {
    pub member_id: u64,
    pub kind: AlarmKind,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Observation {
    pub desired: Desired,
    pub statefulset: Option<StsObs>,
    pub missing: Vec<Owned>,
    pub pods: BTreeMap<u32, PodObs>,
    pub pvcs: BTreeSet<u32>,
    /// Each member claim's requested and actual size.
    pub claim_sizes: BTreeMap<u32, ClaimObs>,
    /// The last refused expansion (`status.volumeExpansionRefused`).
    pub expansion_refused: Option<crate::crd::ExpansionRefusal>,
    /// None when no member answered MemberList.
    pub members: Option<Vec<MemberObs>>,
    pub alarms: Vec<AlarmObs>,
    /// The cluster has had a leader before (`status.formed`).
    pub bootstrapped: bool,
    pub last_compacted_revision: i64,
    /// The maintenance CronJobs that exist, with their spec hash.
    pub cronjobs: BTreeMap<Task, Option<String>>,
    /// The Jobs they left (CronJob history), with their termination messages.
    pub jobs: Vec<JobObs>,
    /// Members this operator defragmented, with their db size right after.
    /// A file keeps some slack no defragmentation removes, so a member is not
    /// defragmented again for NOSPACE until its size has changed.
    pub defragged: BTreeMap<u64, i64>,
    /// When this observation was made (the operator's clock).
    pub now: jiff::Timestamp,
    /// The KvCluster's uid.
    pub uid: String,
    /// When the operator first saw this loss of quorum (`status.quorumLostSince`).
    pub quorum_lost_since: Option<jiff::Timestamp>,
    /// The highest raft index a voter reported since then, which member,
    /// and its claim's creation then (`status.quorumLossBestIndex`).
    pub quorum_loss_best: Option<crate::crd::RaftIndexRecord>,
    /// When each member's claim was created.
    pub claims_created: BTreeMap<u32, jiff::Timestamp>,
    /// Each member's claim's uid (deletes name it, as they do pods').
    pub claim_uids: BTreeMap<u32, String>,
    /// A quorum-loss recovery under way (the ConfigMap holds its keys).
    pub recovery: Option<RecoveryObs>,
    /// The ConfigMap still says `initial-cluster-state: new`.
    pub initial_state_new: bool,
    /// The `kvd.io/backup-now` annotation's value.
    pub backup_token: Option<String>,
    /// Whether authentication is on (asked only with `spec.auth` set).
    pub auth_enabled: Option<bool>,
    /// Mode Operator: when the first issued certificate expires (set by
    /// the controller, which keeps them).
    pub certs_not_after: Option<jiff::Timestamp>,
    /// Mode CertManager: the certificates cert-manager has not issued yet.
    pub certs_pending: Option<String>,
    /// The last token acted on (`status.backupRequest`).
    pub backup_request: Option<String>,
    /// The checked backup the cluster starts from (`status.restoredFrom`).
    pub restored_from: Option<crate::crd::BackupRecord>,
    /// When the backup CronJob was created (backups expected since).
    pub backup_since: Option<jiff::Timestamp>,
    /// The newest successful backup's key (`status.lastBackup`).
    pub last_backup_key: Option<String>,
}

/// Turns the Kubernetes objects read for `kc` (from the caches or the API
/// server: `cache::Objects`) and what its members answer into an
/// Observation; never fails because a member is down (that is data for the
/// planner).
pub async fn gather(kc: &KvCluster, objects: Objects, etcd: &EtcdClient) -> Result<Observation> {
    let ns = kc.namespace().ok_or_else(|| Error::Invalid("KvCluster without namespace".into()))?;
    let name = kc.name_any();
    let Objects { statefulset: sts, pods, claims: pvcs, config_map: cm, cronjobs, jobs, job_pods, .. } = objects;
    let missing = [
        (objects.peer_service, Owned::PeerService),
        (objects.client_service, Owned::ClientService),
        (cm.is_some(), Owned::ConfigMap),
        (objects.pdb, Owned::Pdb),
    ]
    .into_iter()
    .filter_map(|(present, o)| (!present).then_some(o))
    .collect();
    let (mut view, mut auth_enabled) = (None, None);
    if let Some(s) = &sts {
        let n = s.spec.replicas.unwrap_or(0).max(0) as u32;
        let endpoints: Vec<String> = (0..n).map(|i| naming::client_url(&name, &ns, i)).collect();
        view = Some(etcd.view(&endpoints).await);
        if kc.spec.auth.is_some() {
            auth_enabled = etcd.auth_enabled(&endpoints).await.ok();
        }
    }
    let now = jiff::Timestamp::now();
    let mut obs = build(kc, sts.as_ref(), &pods, &pvcs, missing, view.as_ref(), now);
    obs.auth_enabled = auth_enabled;
    obs.recovery = cm.as_ref().and_then(|c| recovery::from_config(&name, c.data.as_ref()?));
    obs.initial_state_new =
        cm.as_ref().and_then(|c| c.data.as_ref()?.get(resources::INITIAL_CLUSTER_STATE)).is_some_and(|s| s == "new");
    if let Some(r) = obs.recovery.as_mut() {
        r.survivor = recovery::ask_survivor(etcd, &naming::client_url(&name, &ns, r.ordinal)).await;
        let n = obs.statefulset.as_ref().map(|s| s.replicas).unwrap_or(0);
        let others: Vec<String> =
            (0..n).filter(|o| *o != r.ordinal).map(|o| naming::client_url(&name, &ns, o)).collect();
        r.others = recovery::ask_others(etcd, &others).await;
    }
    (obs.cronjobs, obs.jobs) = maintenance::observe(&cronjobs, &jobs, &job_pods);
    obs.backup_since = cronjobs
        .iter()
        .find(|c| c.labels().get("app.kubernetes.io/component").map(String::as_str) == Some(Task::Backup.as_str()))
        .and_then(|c| c.creation_timestamp())
        .map(|t| t.0);
    // Only the check of the current fromBackup counts (the Job is named after it).
    let check = resources::restore_check_job(kc).map(|j| j.name_any());
    obs.jobs.retain(|j| j.task != Task::RestoreCheck || Some(&j.name) == check.as_ref());
    Ok(obs)
}

/// Pure part of `gather`: turns the fetched objects into an `Observation`.
pub fn build(
    kc: &KvCluster,
    sts: Option<&StatefulSet>,
    pods: &[Pod],
    pvcs: &[PersistentVolumeClaim],
    missing: Vec<Owned>,
    view: Option<&ClusterView>,
    now: jiff::Timestamp,
) -> Observation {
    let name = kc.name_any();
    let status = kc.status.clone().unwrap_or_default();
    let desired = desired(kc);
    let statefulset = sts.map(|s| StsObs {
        replicas: s.spec.replicas.unwrap_or(0).max(0) as u32,
        template_hash: s.metadata.annotations.as_ref().and_then(|a| a.get(TEMPLATE_HASH)).cloned(),
        claim_size: s
            .spec
            .volume_claim_templates
            .as_ref()
            .and_then(|t| t.first()?.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").cloned())
            .map(|q| q.0),
    });
    let update_revision = sts.and_then(|s| s.status.as_ref()).and_then(|s| s.update_revision.clone());
    let pods = pods
        .iter()
        .filter_map(|p| {
            Some((naming::ordinal_from_name(&name, &p.name_any())?, pod_obs(p, update_revision.as_deref(), now)))
        })
        .collect();
    let claims: Vec<(u32, Option<jiff::Timestamp>, Option<String>, ClaimObs)> = pvcs
        .iter()
        .filter_map(|p| {
            let ordinal = naming::ordinal_from_name(&name, p.name_any().strip_prefix("data-")?)?;
            Some((ordinal, p.creation_timestamp().map(|t| t.0), p.uid(), claim_obs(p)))
        })
        .collect();
    let members = view.and_then(|v| v.members.clone());
    let last_compaction = status.last_compaction.as_ref();
    Observation {
        desired,
        statefulset,
        missing,
        pods,
        pvcs: claims.iter().map(|(o, ..)| *o).collect(),
        claims_created: claims.iter().filter_map(|(o, t, ..)| Some((*o, (*t)?))).collect(),
        claim_uids: claims.iter().filter_map(|(o, _, u, _)| Some((*o, u.clone()?))).collect(),
        claim_sizes: claims.iter().map(|(o, .., c)| (*o, c.clone())).collect(),
        expansion_refused: status.volume_expansion_refused.clone(),
        members,
        alarms: view.map(|v| v.alarms.clone()).unwrap_or_default(),
        bootstrapped: status.formed,
        last_compacted_revision: last_compaction.map(|l| l.revision).unwrap_or(0),
        cronjobs: BTreeMap::new(),
        jobs: Vec::new(),
        defragged: BTreeMap::new(),
        now,
        uid: kc.uid().unwrap_or_default(),
        quorum_lost_since: status.quorum_lost_since.as_ref().map(|t| t.0),
        quorum_loss_best: status.quorum_loss_best_index.clone(),
        recovery: None,
        initial_state_new: false,
        backup_token: kc.annotations().get(resources::BACKUP_NOW).filter(|t| !t.is_empty()).cloned(),
        certs_not_after: None,
        certs_pending: None,
        auth_enabled: None,
        backup_request: status.backup_request.clone(),
        restored_from: status.restored_from.clone(),
        backup_since: None,
        last_backup_key: status.last_backup.as_ref().map(|b| b.key.clone()),
    }
}

/// The spec as the planner needs it.
pub fn desired(kc: &KvCluster) -> Desired {
    let spec = &kc.spec;
    Desired {
        replicas: spec.replicas.max(0) as u32,
        template_hash: resources::template_hash(kc),
        allow_even: spec.allow_even_replicas,
        auto_remediate: spec.alarms.auto_remediate,
        quorum_loss_recovery: spec.quorum_loss_recovery,
        failed_member_after: spec
            .failed_member_timeout_seconds
            .map_or(crate::FAILED_MEMBER_AFTER, |s| Duration::from_secs(s.into())),
        quota_bytes: spec.quota_bytes(),
        cronjobs: Task::SCHEDULED
            .into_iter()
            .filter_map(|t| {
                let cj = resources::cronjob(kc, t)?;
                Some((t, cj.metadata.annotations?.get(SPEC_HASH)?.clone()))
            })
            .collect(),
        retention_revisions: spec.compaction.as_ref().and_then(|c| c.retention_revisions).unwrap_or(0),
        tls_problem: None,
        tls_conflict: kc.tls_conflict(),
        image: spec.image(),
        upgrade_backup: spec.backup.as_ref().map(|_| {
            let token = crate::upgrade::backup_token(&spec.image());
            let job = resources::backup_now_name(kc, &token);
            (token, job)
        }),
        auth: spec.auth.as_ref().map(|a| a.enabled),
        client_tls: kc.tls().client_tls(),
        backup_configured: spec.backup.is_some(),
        from_backup: spec.bootstrap.as_ref().is_some_and(|b| b.from_backup.is_some()),
        storage_size: spec.storage.size.clone(),
        storage_bytes: crate::quantity::bytes(&spec.storage.size),
    }
}

fn claim_obs(p: &PersistentVolumeClaim) -> ClaimObs {
    let requested = p.spec.as_ref().and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
    let capacity = p.status.as_ref().and_then(|s| s.capacity.as_ref()?.get("storage").cloned());
    ClaimObs {
        requested: requested.and_then(|q| crate::quantity::bytes(&q.0)),
        capacity: capacity.and_then(|q| crate::quantity::bytes(&q.0)),
    }
}

fn pod_obs(p: &Pod, update_revision: Option<&str>, now: jiff::Timestamp) -> PodObs {
    let ready_cond =
        p.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_cond.is_some_and(|c| c.status == "True");
    let failing_for = if ready {
        None
    } else {
        let since = ready_cond
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .or(p.creation_timestamp().map(|t| t.0));
        since.map(|s| Duration::from_secs(now.duration_since(s).as_secs().max(0) as u64))
    };
    let rev = p.labels().get("controller-revision-hash").map(String::as_str);
    let outdated = matches!((rev, update_revision), (Some(r), Some(u)) if r != u);
    PodObs {
        ready,
        failing_for,
        outdated,
        created: p.creation_timestamp().map(|t| t.0),
        uid: p.uid(),
        terminating: p.metadata.deletion_timestamp.is_some(),
        image: p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::crd::{CompactionRecord, CompactionSpec, KvClusterStatus};
    use crate::fixtures::kvcluster;

    fn now() -> jiff::Timestamp {
        "2026-01-01T12:30:00Z".parse().expect("ts")
    }

    fn ago(mins: i64) -> Time {
        Time(now() - jiff::SignedDuration::from_mins(mins))
    }

    fn pod(name: &str, ready: bool, since_mins: i64, hash: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "controller-revision-hash": hash },
                          "creationTimestamp": ago(since_mins + 5) },
            "status": { "conditions": [ { "type": "Ready", "status": if ready { "True" } else { "False" },
                                           "lastTransitionTime": ago(since_mins) } ] }
        }))
        .expect("pod")
    }

    #[test]
    fn builds_pods_claims_and_schedules() {
        let mut kc = kvcluster("demo", 3);
        kc.spec.compaction = Some(CompactionSpec {
            schedule: "0 * * * *".into(),
            retention_revisions: None,
            retention_duration: Some("1h".into()),
        });
        kc.status = Some(KvClusterStatus {
            last_compaction: Some(CompactionRecord { revision: 10, time: ago(90) }),
            quorum_lost_since: Some(ago(7)),
            ..KvClusterStatus::default()
        });
        let mut sts = resources::statefulset(&kc, 3, None);
        sts.status = Some(serde_json::from_value(json!({ "replicas": 3, "updateRevision": "r1" })).expect("status"));
        let pods = [pod("demo-0", true, 60, "r1"), pod("demo-1", false, 10, "r0"), pod("other-0", true, 1, "r1")];
        let pvcs: Vec<PersistentVolumeClaim> = vec![
            serde_json::from_value(json!({
                "metadata": { "name": "data-demo-4", "creationTimestamp": ago(30) },
                "spec": { "resources": { "requests": { "storage": "8Gi" } } },
                "status": { "capacity": { "storage": "4Gi" } }
            }))
            .expect("pvc"),
        ];
        let obs = build(&kc, Some(&sts), &pods, &pvcs, vec![Owned::Pdb], None, now());
        assert_eq!(
            obs.statefulset,
            Some(StsObs {
                replicas: 3,
                template_hash: Some(obs.desired.template_hash.clone()),
                claim_size: Some("8Gi".into())
            })
        );
        let claim = ClaimObs { requested: Some(8 << 30), capacity: Some(4 << 30) };
        assert_eq!(obs.claim_sizes, BTreeMap::from([(4, claim)]));
        assert_eq!((obs.desired.storage_size.as_str(), obs.desired.storage_bytes), ("8Gi", Some(8 << 30)));
        assert_eq!(obs.pods.len(), 2);
        let want = PodObs { ready: true, created: Some(ago(65).0), ..PodObs::default() };
        assert_eq!(obs.pods[&0], want);
        assert_eq!(obs.pods[&1].failing_for, Some(Duration::from_secs(600)));
        assert!(obs.pods[&1].outdated);
        assert_eq!(obs.pvcs, BTreeSet::from([4]));
        assert_eq!(obs.claims_created, BTreeMap::from([(4, ago(30).0)]));
        assert_eq!((obs.now, obs.uid.as_str(), obs.quorum_lost_since), (now(), "0000-1111", Some(ago(7).0)));
        assert_eq!(obs.recovery, None, "recovery comes from the ConfigMap, read by gather");
        assert_eq!(obs.missing, vec![Owned::Pdb]);
        assert_eq!(obs.last_compacted_revision, 10);
        assert!(!obs.bootstrapped && obs.members.is_none());
        // The spec schedules compaction only.
        assert_eq!(obs.desired.cronjobs.keys().copied().collect::<Vec<_>>(), vec![Task::Compact]);
    }
}
