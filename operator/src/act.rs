//! Executes one planned `Action`: server-side apply of owned objects (field
//! manager "kvd-operator", the maintenance CronJobs included), etcd API calls
//! through `EtcdClient`, deletes of pods, claims and CronJobs, the
//! ConfigMap's recovery keys, and an Event for every change.

use std::fmt::Debug;

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::crd::{CompactionRecord, DefragRecord, ExpansionRefusal, KvCluster};
use crate::etcd::EtcdClient;
use crate::naming::{self, MANAGER};
use crate::observe::{AlarmKind, Observation, Owned};
use crate::planner::{Action, RemoveReason};
use crate::recovery::RecoveryEnd;
use crate::resources::{self, ForceKey};
use crate::{Error, Result};

/// etcd's root user and role.
const ROOT: &str = "root";

/// What an action changed that the status must remember.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub last_compaction: Option<CompactionRecord>,
    pub last_defrag: Option<DefragRecord>,
    /// The member just defragmented, and its db size afterwards.
    pub defragged: Option<(u64, i64)>,
    /// The API server refused to expand a claim.
    pub expansion_refused: Option<ExpansionRefusal>,
}

/// Everything `act` needs.
pub struct Actor<'a> {
    pub client: &'a Client,
    pub etcd: &'a EtcdClient,
    pub recorder: &'a Recorder,
}

struct Target<'a> {
    kc: &'a KvCluster,
    name: String,
    ns: String,
}

impl Target<'_> {
    fn endpoints(&self, obs: &Observation) -> Vec<String> {
        let n = obs.statefulset.as_ref().map(|s| s.replicas).unwrap_or(0);
        (0..n).map(|i| naming::client_url(&self.name, &self.ns, i)).collect()
    }

    fn member_endpoint(&self, obs: &Observation, id: u64) -> Result<String> {
        let o = obs.members.iter().flatten().find(|m| m.id == id).and_then(|m| m.ordinal);
        let o = o.ok_or_else(|| Error::Invalid(format!("member {id:x} has no ordinal")))?;
        Ok(naming::client_url(&self.name, &self.ns, o))
    }

    fn member_ordinals(&self, obs: &Observation) -> Vec<u32> {
        obs.members.iter().flatten().filter_map(|m| m.ordinal).collect()
    }

    /// Members' ordinals if MemberList answered, else the StatefulSet's.
    fn known_ordinals(&self, obs: &Observation) -> Vec<u32> {
        match &obs.members {
            Some(_) => self.member_ordinals(obs),
            None => (0..obs.statefulset.as_ref().map(|s| s.replicas).unwrap_or(0)).collect(),
        }
    }
}

/// Server-side apply of one namespaced object.
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await?;
    Ok(())
}

/// Creates `job`; one already there under its name is the same request.
async fn create_job(client: &Client, ns: &str, job: &Job) -> Result<()> {
    let api = Api::<Job>::namespaced(client.clone(), ns);
    match api.create(&kube::api::PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Actor<'_> {
    async fn event(&self, kc: &KvCluster, type_: EventType, reason: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &kc.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    /// The root user's password, from the Secret `<name>-root`, which is
    /// made with a random one if missing. It is owned by the KvCluster only
    /// when the claims go with it (`whenDeleted: Delete`): retained data
    /// keeps its password.
    async fn root_password(&self, kc: &KvCluster) -> Result<String> {
        use k8s_openapi::api::core::v1::Secret;
        let (name, ns) = (naming::root_secret(&kc.name_any()), kc.namespace().unwrap_or_default());
        let api = Api::<Secret>::namespaced(self.client.clone(), &ns);
        if let Some(s) = api.get_opt(&name).await? {
            let pw =
                s.data.as_ref().and_then(|d| d.get("password")).map(|b| String::from_utf8_lossy(&b.0).into_owned());
            return pw
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::Invalid(format!("secret {ns}/{name} has no password")));
        }
        let password = crate::pki::random_password().map_err(|e| Error::Invalid(format!("random password: {e}")))?;
        let mut meta = resources::meta(kc, name.clone());
        if kc.spec.storage.when_deleted != crate::crd::Retention::Delete {
            meta.owner_references = None;
        }
        let secret = Secret {
            metadata: meta,
            type_: Some("kubernetes.io/basic-auth".into()),
            string_data: Some(
                [("username".to_string(), ROOT.to_string()), ("password".to_string(), password.clone())].into(),
            ),
            ..Secret::default()
        };
        let pp = kube::api::PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        match api.create(&pp, &secret).await {
            Ok(_) => Ok(password),
            // Made meanwhile (another replica, a retry): use what is there.
            Err(kube::Error::Api(s)) if s.code == 409 => Box::pin(self.root_password(kc)).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Services, PDB and the optional monitor: applied on every structural step.
    async fn apply_static(&self, t: &Target<'_>, members: u32) -> Result<()> {
        apply(self.client, &t.ns, &resources::peer_service(t.kc)).await?;
        apply(self.client, &t.ns, &resources::client_service(t.kc)).await?;
        apply(self.client, &t.ns, &resources::pdb(t.kc, members)).await?;
        if let Some((ar, obj)) = resources::monitor(t.kc) {
            let api = Api::<kube::api::DynamicObject>::namespaced_with(self.client.clone(), &t.ns, &ar);
            api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj)).await?;
        }
        Ok(())
    }

    /// Deletes `name`; with the `uid` it had when observed, only that object:
    /// one created since under the same name (a StatefulSet's new pod or
    /// claim) is left alone, since the plan was made without it.
    async fn delete<K>(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let preconditions = uid.map(|u| Preconditions { uid: Some(u.to_string()), resource_version: None });
        let dp = DeleteParams { preconditions, ..DeleteParams::default() };
        match Api::<K>::namespaced(self.client.clone(), ns).delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(%name, ?uid, "not deleted: it was replaced since the observation");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Asks claim `ordinal` for `spec.storage.size`; a refusal of the API
    /// server (the StorageClass does not allow expansion, the volume was not
    /// dynamically provisioned) is returned for the status, not as an error.
    async fn expand_claim(&self, t: &Target<'_>, ordinal: u32) -> Result<Option<ExpansionRefusal>> {
        let claim = naming::pvc_name(&t.name, ordinal);
        let size = t.kc.spec.storage.size.clone();
        let patch = serde_json::json!({ "spec": { "resources": { "requests": { "storage": size } } } });
        let api = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &t.ns);
        match api.patch(&claim, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                let note = format!("claim {claim} asked for {size}; the member keeps running while it grows");
                self.event(t.kc, EventType::Normal, "VolumeExpansion", note).await;
                Ok(None)
            }
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                let note = format!("claim {claim} cannot grow to {size}: {}", e.message);
                self.event(t.kc, EventType::Warning, "VolumeExpansionRefused", note).await;
                Ok(Some(ExpansionRefusal { size, claim, message: e.message, time: Time(Timestamp::now()) }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `action`; returns what the status must record.
    pub async fn act(&self, kc: &KvCluster, obs: &Observation, action: &Action) -> Result<Outcome> {
        let ns = kc.namespace().ok_or_else(|| Error::Invalid("KvCluster without namespace".into()))?;
        let t = Target { kc, name: kc.name_any(), ns };
        let sts_replicas = obs.statefulset.as_ref().map(|s| s.replicas).unwrap_or(0);
        // An existing StatefulSet keeps its claim template (it cannot change).
        let claim_size = obs.statefulset.as_ref().and_then(|s| s.claim_size.as_deref());
        let eps = t.endpoints(obs);
        let mut out = Outcome::default();
        match action {
            Action::Bootstrap { replicas } => {
                let ordinals: Vec<u32> = (0..*replicas).collect();
                apply(self.client, &t.ns, &resources::config_map(kc, &ordinals, true)).await?;
                self.apply_static(&t, *replicas).await?;
                apply(self.client, &t.ns, &resources::statefulset(kc, *replicas, claim_size)).await?;
                self.event(kc, EventType::Normal, "Bootstrapping", format!("creating {replicas} members")).await;
            }
            Action::EnsureObjects { missing } => {
                if missing.contains(&Owned::ConfigMap) {
                    let cm = match &obs.members {
                        Some(_) => resources::config_map(kc, &t.member_ordinals(obs), false),
                        None => resources::config_map(kc, &(0..sts_replicas).collect::<Vec<_>>(), !obs.bootstrapped),
                    };
                    apply(self.client, &t.ns, &cm).await?;
                }
                self.apply_static(&t, sts_replicas).await?;
                self.event(kc, EventType::Normal, "ObjectsRestored", format!("re-created {missing:?}")).await;
            }
            Action::EnsureCronJob { task } => {
                let cj = resources::cronjob(kc, *task)
                    .ok_or_else(|| Error::Invalid(format!("no {} schedule in the spec", task.as_str())))?;
                apply(self.client, &t.ns, &cj).await?;
                let note = format!("{} runs kvctl {} on {:?} (UTC)", cj.name_any(), task.as_str(), cj.spec.schedule);
                self.event(kc, EventType::Normal, "CronJobApplied", note).await;
            }
            Action::DeleteCronJob { task } => {
                let name = naming::cronjob(&t.name, task.as_str());
                let api = Api::<CronJob>::namespaced(self.client.clone(), &t.ns);
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                let note = format!("{name} deleted: no {} schedule in the spec", task.as_str());
                self.event(kc, EventType::Normal, "CronJobDeleted", note).await;
            }
            Action::CheckBackup => {
                let job = resources::restore_check_job(kc)
                    .ok_or_else(|| Error::Invalid("no spec.bootstrap.fromBackup".into()))?;
                create_job(self.client, &t.ns, &job).await?;
                let note = format!("{} checks the backup to start from before anything is created", job.name_any());
                self.event(kc, EventType::Normal, "CheckingBackup", note).await;
            }
            Action::SetAuth { enable: true } => {
                let password = self.root_password(kc).await?;
                self.etcd.ensure_user(&eps, ROOT, Some(&password), ROOT).await?;
                let users = crate::tls::certificate_users(self.client, kc).await.map_err(Error::Invalid)?;
                for user in &users {
                    self.etcd.ensure_user(&eps, user, None, ROOT).await?;
                }
                self.etcd.set_auth(&eps, true).await?;
                let note = format!(
                    "authentication on: users {ROOT} (password in Secret {}) and {} (by certificate), role {ROOT}",
                    naming::root_secret(&t.name),
                    users.join(", ")
                );
                self.event(kc, EventType::Normal, "AuthEnabled", note).await;
            }
            Action::SetAuth { enable: false } => {
                self.etcd.set_auth(&eps, false).await?;
                self.event(kc, EventType::Normal, "AuthDisabled", "authentication off".into()).await;
            }
            Action::ExpandClaim { ordinal } => out.expansion_refused = self.expand_claim(&t, *ordinal).await?,
            Action::UpgradeBackup { token } | Action::BackupNow { token } => {
                let job =
                    resources::backup_now_job(kc, token).ok_or_else(|| Error::Invalid("no spec.backup".into()))?;
                create_job(self.client, &t.ns, &job).await?;
                let (reason, note) = match action {
                    Action::UpgradeBackup { .. } => (
                        "UpgradeBackup",
                        format!("{} takes a backup before the members move to {}", job.name_any(), kc.spec.image()),
                    ),
                    _ => (
                        "BackupRequested",
                        format!("{} takes a backup now (kvd.io/backup-now {token:?})", job.name_any()),
                    ),
                };
                self.event(kc, EventType::Normal, reason, note).await;
            }
            Action::UpdateStatefulSet => {
                self.apply_static(&t, sts_replicas).await?;
                apply(self.client, &t.ns, &resources::statefulset(kc, sts_replicas, claim_size)).await?;
                self.event(kc, EventType::Normal, "TemplateUpdated", "pods restart one at a time".into()).await;
            }
            Action::ResizeStatefulSet { replicas } => {
                if *replicas > sts_replicas {
                    apply(self.client, &t.ns, &resources::config_map(kc, &t.member_ordinals(obs), false)).await?;
                }
                apply(self.client, &t.ns, &resources::statefulset(kc, *replicas, claim_size)).await?;
                self.apply_static(&t, *replicas).await?;
                let note = format!("StatefulSet {sts_replicas} -> {replicas}");
                self.event(kc, EventType::Normal, "Resized", note).await;
            }
            Action::AddLearner { ordinal } => {
                let id = self
                    .etcd
                    .add_learner(&eps, &naming::peer_url(&t.name, &t.ns, *ordinal, kc.tls().peer_tls()))
                    .await?;
                let mut ordinals = t.member_ordinals(obs);
                ordinals.push(*ordinal);
                apply(self.client, &t.ns, &resources::config_map(kc, &ordinals, false)).await?;
                // A pod already there and not ready (a recycled member, after
                // a recovery or a failure) may be in CrashLoopBackOff, up to
                // minutes: restart it now that it can join. It is no member yet.
                let pod = naming::member_name(&t.name, *ordinal);
                if obs.pods.get(ordinal).is_some_and(|p| !p.ready) {
                    self.delete::<Pod>(&t.ns, &pod, pod_uid(obs, *ordinal)).await?;
                }
                let note = format!("added {pod} as learner {id:x}");
                self.event(kc, EventType::Normal, "MemberAdded", note).await;
            }
            Action::PromoteLearner { id, ordinal } => match self.etcd.promote(&eps, *id).await {
                Ok(()) => {
                    let note = format!("promoted {}", naming::member_name(&t.name, *ordinal));
                    self.event(kc, EventType::Normal, "MemberPromoted", note).await;
                }
                Err(Error::Etcd { message, .. }) if message.contains("in sync") || message.contains("not ready") => {
                    info!(member = %format!("{id:x}"), %message, "learner not ready for promotion; retrying");
                }
                Err(e) => return Err(e),
            },
            Action::RemoveMember { id, ordinal, reason } => {
                self.etcd.remove(&eps, *id).await?;
                let (type_, why) = match reason {
                    RemoveReason::ScaleDown => (EventType::Normal, "scale down"),
                    RemoveReason::Failed => (EventType::Warning, "failed; it will be re-added with a fresh volume"),
                };
                self.event(kc, type_, "MemberRemoved", format!("removed member {id:x} (ordinal {ordinal:?}): {why}"))
                    .await;
            }
            Action::MoveLeader { from, to, why } => {
                self.etcd.move_leader(&t.member_endpoint(obs, *from)?, *to).await?;
                self.event(kc, EventType::Normal, "LeaderMoved", format!("{from:x} -> {to:x} ({why:?})")).await;
            }
            Action::RecycleMember { ordinal } => {
                let claim_uid = obs.claim_uids.get(ordinal).map(String::as_str);
                self.delete::<PersistentVolumeClaim>(&t.ns, &naming::pvc_name(&t.name, *ordinal), claim_uid).await?;
                self.delete::<Pod>(&t.ns, &naming::member_name(&t.name, *ordinal), pod_uid(obs, *ordinal)).await?;
                let mut note = format!("{} restarts with a fresh volume", naming::member_name(&t.name, *ordinal));
                if obs.recovery.is_some() {
                    note.push_str(" (it held the cluster's data from before the quorum-loss recovery)");
                }
                self.event(kc, EventType::Warning, "VolumeRecycled", note).await;
            }
            Action::ForceNewCluster { ordinal, token, since } => {
                // The key first: it is the record of the recovery, and the
                // pod must find it when it starts again.
                let member = naming::member_name(&t.name, *ordinal);
                let key = ForceKey { member: member.clone(), token: token.clone(), since: *since };
                apply(self.client, &t.ns, &resources::recovery_config_map(kc, &t.known_ordinals(obs), &key)).await?;
                self.delete::<Pod>(&t.ns, &member, pod_uid(obs, *ordinal)).await?;
                let index = obs.members.iter().flatten().find(|m| m.ordinal == Some(*ordinal));
                let index = index.and_then(|m| m.health.as_ref()).map(|h| h.raft_index);
                warn!(member = %member, token = %token, raft_index = ?index, "quorum lost: forcing a new cluster");
                let note = format!(
                    "quorum lost: restarting {member} (raft index {index:?}, the most advanced member that answers) \
                     as the only member of a new cluster with its data (token {token}); the others follow with fresh volumes"
                );
                self.event(kc, EventType::Warning, "QuorumRecovery", note).await;
            }
            Action::MarkExisting => {
                apply(self.client, &t.ns, &resources::config_map(kc, &t.member_ordinals(obs), false)).await?;
                info!("cluster formed: members now start with --initial-cluster-state existing");
            }
            Action::EndRecovery { ordinal, outcome } => {
                let ordinals = match outcome {
                    RecoveryEnd::Recovered => vec![*ordinal],
                    RecoveryEnd::Disabled | RecoveryEnd::QuorumBack => t.known_ordinals(obs),
                };
                apply(self.client, &t.ns, &resources::config_map(kc, &ordinals, false)).await?;
                let member = naming::member_name(&t.name, *ordinal);
                let (type_, reason, note) = match outcome {
                    RecoveryEnd::Recovered => (
                        EventType::Normal,
                        "QuorumRecovered",
                        format!("{member} leads a new cluster alone; the others are added back as learners"),
                    ),
                    RecoveryEnd::Disabled => (
                        EventType::Warning,
                        "QuorumRecoveryStopped",
                        format!("quorumLossRecovery was turned off: {member} is no longer to be forced"),
                    ),
                    RecoveryEnd::QuorumBack => (
                        EventType::Normal,
                        "QuorumRecoveryStopped",
                        format!("quorum came back before {member} was forced; recovery called off"),
                    ),
                };
                info!(member = %member, ?outcome, "quorum-loss recovery ended");
                self.event(kc, type_, reason, note).await;
            }
            Action::RestartPod { ordinal } => {
                self.delete::<Pod>(&t.ns, &naming::member_name(&t.name, *ordinal), pod_uid(obs, *ordinal)).await?;
                let note = format!("{} restarts with the new template", naming::member_name(&t.name, *ordinal));
                self.event(kc, EventType::Normal, "PodRestarted", note).await;
            }
            Action::Compact { revision, why } => {
                if *revision > obs.last_compacted_revision {
                    self.etcd.compact(&eps, *revision).await?;
                }
                // The record never goes backwards (a run may have nothing to compact).
                let recorded = (*revision).max(obs.last_compacted_revision);
                out.last_compaction = Some(CompactionRecord { revision: recorded, time: Time(Timestamp::now()) });
                self.event(kc, EventType::Normal, "Compacted", format!("revision {revision} ({why:?})")).await;
            }
            Action::Defragment { id, ordinal, why } => {
                let ep = t.member_endpoint(obs, *id)?;
                let before = obs.members.iter().flatten().find(|m| m.id == *id).and_then(|m| m.health.as_ref());
                let before = before.map(|h| h.db_size).unwrap_or(0);
                self.etcd.defragment(&ep).await?;
                let after = self.etcd.status(&ep).await.map(|s| s.db_size).unwrap_or(before);
                let member = ordinal.map(|o| naming::member_name(&t.name, o)).unwrap_or_else(|| format!("{id:x}"));
                let freed = (before - after).max(0);
                let note = format!("{member}: freed {freed} bytes ({why:?})");
                out.last_defrag = Some(DefragRecord { member, time: Time(Timestamp::now()), bytes_freed: freed });
                out.defragged = Some((*id, after));
                self.event(kc, EventType::Normal, "Defragmented", note).await;
            }
            Action::DisarmNospace => {
                for a in obs.alarms.iter().filter(|a| a.kind == AlarmKind::Nospace) {
                    self.etcd.disarm_nospace(&eps, a.member_id).await?;
                }
                self.event(kc, EventType::Normal, "AlarmDisarmed", "NOSPACE cleared".into()).await;
            }
            Action::Degraded { reason, message } => {
                self.event(kc, EventType::Warning, reason, message.clone()).await;
            }
            Action::Wait { .. } | Action::Idle => {}
        }
        Ok(out)
    }
}

/// The uid of the pod at `ordinal` when observed.
fn pod_uid(obs: &Observation, ordinal: u32) -> Option<&str> {
    obs.pods.get(&ordinal).and_then(|p| p.uid.as_deref())
}
