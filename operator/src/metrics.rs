//! Operator metrics (prometheus-client): reconciles, failures by error label,
//! reconcile duration (recorded by a guard on drop) and actions taken by
//! kind; per cluster with backups, the last successful backup's time, the
//! schedule's period, since when backups are configured, and failed backup
//! Jobs (the chart's PrometheusRule alerts from them); and how many
//! reconciles read their objects from the caches or the API server.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::Error;
use crate::crd::{KvCluster, KvClusterStatus};
use crate::observe::Observation;
use crate::planner::Action;

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub instance: String,
    pub error: String,
}

/// Labels of a taken action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

/// Where a reconcile read its Kubernetes objects (`cache::Source`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Labels of a cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub cluster: String,
}

type Seconds = Family<ClusterLabels, Gauge<f64, AtomicU64>>;

/// Labels of a cluster's state-set series (`phase` or `action`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterStateLabels {
    pub namespace: String,
    pub cluster: String,
    pub state: String,
}

/// The phases `kubectl get kvc` shows.
pub const PHASES: [&str; 7] = ["Creating", "Running", "Scaling", "Upgrading", "Degraded", "Recovering", "Remediating"];

/// All operator metrics, registered in one registry.
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub actions: Family<ActionLabels, Counter>,
    pub observe: Family<SourceLabels, Counter>,
    pub backup_last_success: Seconds,
    pub backup_period: Seconds,
    pub backup_configured: Seconds,
    pub backup_failures: Family<ClusterLabels, Counter>,
    /// 1 for the cluster's phase, 0 for the others.
    pub cluster_phase: Family<ClusterStateLabels, Gauge>,
    pub cluster_members: Family<ClusterLabels, Gauge>,
    pub cluster_members_ready: Family<ClusterLabels, Gauge>,
    /// 1 while the cluster has a leader and a quorum (condition Available).
    pub cluster_quorum: Family<ClusterLabels, Gauge>,
    /// 1 for the kind of the last step planned (one series per cluster).
    pub cluster_last_action: Family<ClusterStateLabels, Gauge>,
    last_actions: std::sync::Mutex<std::collections::HashMap<ClusterLabels, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kvd_operator");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register("reconcile_runs", "reconciliations", reconciles.clone());
        registry.register("reconcile_failures", "reconciliation errors", failures.clone());
        registry.register_with_unit("reconcile_duration", "reconcile duration", Unit::Seconds, duration.clone());
        registry.register("reconcile_actions", "planned steps taken, by kind", actions.clone());
        let observe = Family::<SourceLabels, Counter>::default();
        registry.register(
            "observe",
            "reconciles by where they read Kubernetes objects: the caches, or the API server after a step",
            observe.clone(),
        );
        let (backup_last_success, backup_period, backup_configured) =
            (Seconds::default(), Seconds::default(), Seconds::default());
        let backup_failures = Family::<ClusterLabels, Counter>::default();
        registry.register_with_unit(
            "backup_last_success_timestamp",
            "when the newest successful backup was taken (0: none yet)",
            Unit::Seconds,
            backup_last_success.clone(),
        );
        registry.register_with_unit(
            "backup_schedule_period",
            "time between two scheduled backups",
            Unit::Seconds,
            backup_period.clone(),
        );
        registry.register_with_unit(
            "backup_configured_timestamp",
            "since when backups are scheduled (the backup CronJob's creation)",
            Unit::Seconds,
            backup_configured.clone(),
        );
        registry.register("backup_failures", "backup Jobs that failed", backup_failures.clone());
        let cluster_phase = Family::<ClusterStateLabels, Gauge>::default();
        let (cluster_members, cluster_members_ready, cluster_quorum) =
            (Family::<ClusterLabels, Gauge>::default(), Family::default(), Family::default());
        let cluster_last_action = Family::<ClusterStateLabels, Gauge>::default();
        registry.register(
            "cluster_phase",
            "1 for the KvCluster's phase (label state), 0 for the others",
            cluster_phase.clone(),
        );
        registry.register("cluster_members", "voting members the cluster reports", cluster_members.clone());
        registry.register("cluster_members_ready", "member pods that are ready", cluster_members_ready.clone());
        registry.register("cluster_quorum", "1 while the cluster has a leader and a quorum", cluster_quorum.clone());
        registry.register(
            "cluster_last_action",
            "1 for the kind of the last step planned (label state)",
            cluster_last_action.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            reconciles,
            failures,
            duration,
            actions,
            observe,
            backup_last_success,
            backup_period,
            backup_configured,
            backup_failures,
            cluster_phase,
            cluster_members,
            cluster_members_ready,
            cluster_quorum,
            cluster_last_action,
            last_actions: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed reconcile of `kc`.
    pub fn reconcile_failure(&self, kc: &KvCluster, e: &Error) {
        let instance = kube::ResourceExt::name_any(kc);
        self.failures.get_or_create(&ErrorLabels { instance, error: e.metric_label() }).inc();
    }

    /// Counts a reconcile; the returned guard records its duration when dropped.
    pub fn count_and_measure(&self) -> ReconcileMeasurer {
        self.reconciles.inc();
        ReconcileMeasurer { start: Instant::now(), metric: self.duration.clone() }
    }

    /// Counts an action by its kind.
    pub fn action(&self, a: &Action) {
        self.actions.get_or_create(&ActionLabels { action: action_kind(a).into() }).inc();
    }

    /// Counts a reconcile's read of its objects from `source`.
    pub fn observed(&self, source: crate::cache::Source) {
        self.observe.get_or_create(&SourceLabels { source: source.as_str().into() }).inc();
    }

    /// The backup gauges of `kc` from its new status: set while backups
    /// are scheduled, removed otherwise; a failure newer than `prev`'s counted.
    pub fn backups(&self, kc: &KvCluster, prev: &KvClusterStatus, st: &KvClusterStatus, obs: &Observation) {
        let labels = cluster_labels(kc);
        if st.last_backup_failure.is_some() && st.last_backup_failure != prev.last_backup_failure {
            self.backup_failures.get_or_create(&labels).inc();
        }
        let period = kc.spec.backup.as_ref().and_then(|b| crate::maintenance::schedule_period(&b.schedule, obs.now));
        let (Some(period), Some(since)) = (period, obs.backup_since) else {
            for f in [&self.backup_last_success, &self.backup_period, &self.backup_configured] {
                f.remove(&labels);
            }
            return;
        };
        let secs = |t: jiff::Timestamp| t.as_millisecond() as f64 / 1000.0;
        self.backup_period.get_or_create(&labels).set(period.as_secs_f64());
        self.backup_configured.get_or_create(&labels).set(secs(since));
        self.backup_last_success.get_or_create(&labels).set(st.last_backup.as_ref().map_or(0.0, |b| secs(b.time.0)));
    }

    /// The cluster gauges of `kc` from its new status and the step planned.
    pub fn cluster(&self, kc: &KvCluster, st: &KvClusterStatus, action: &Action) {
        let labels = cluster_labels(kc);
        let state = |s: &str| ClusterStateLabels {
            namespace: labels.namespace.clone(),
            cluster: labels.cluster.clone(),
            state: s.to_string(),
        };
        let phase = st.phase.as_deref().unwrap_or_default();
        for p in PHASES {
            self.cluster_phase.get_or_create(&state(p)).set(i64::from(p == phase));
        }
        self.cluster_members.get_or_create(&labels).set(i64::from(st.replicas));
        self.cluster_members_ready.get_or_create(&labels).set(i64::from(st.ready_replicas));
        let quorum = st.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True");
        self.cluster_quorum.get_or_create(&labels).set(i64::from(quorum));
        let kind = action_kind(action).to_string();
        let mut last = self.last_actions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = last.insert(labels.clone(), kind.clone()).filter(|o| *o != kind) {
            self.cluster_last_action.remove(&state(&old));
        }
        self.cluster_last_action.get_or_create(&state(&kind)).set(1);
    }

    /// Forgets a deleted cluster's gauges.
    pub fn forget(&self, kc: &KvCluster) {
        let labels = cluster_labels(kc);
        for f in [&self.backup_last_success, &self.backup_period, &self.backup_configured] {
            f.remove(&labels);
        }
        self.backup_failures.remove(&labels);
        for f in [&self.cluster_members, &self.cluster_members_ready, &self.cluster_quorum] {
            f.remove(&labels);
        }
        let state = |s: &str| ClusterStateLabels {
            namespace: labels.namespace.clone(),
            cluster: labels.cluster.clone(),
            state: s.to_string(),
        };
        for p in PHASES {
            self.cluster_phase.remove(&state(p));
        }
        let old = self.last_actions.lock().unwrap_or_else(|e| e.into_inner()).remove(&labels);
        if let Some(old) = old {
            self.cluster_last_action.remove(&state(&old));
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)?;
        Ok(s)
    }
}

fn cluster_labels(kc: &KvCluster) -> ClusterLabels {
    ClusterLabels {
        namespace: kube::ResourceExt::namespace(kc).unwrap_or_default(),
        cluster: kube::ResourceExt::name_any(kc),
    }
}

/// Bounded label for an action.
pub fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Bootstrap { .. } => "bootstrap",
        Action::EnsureObjects { .. } => "ensure_objects",
        Action::MarkExisting => "mark_existing",
        Action::UpdateStatefulSet => "update_statefulset",
        Action::ResizeStatefulSet { .. } => "resize_statefulset",
        Action::AddLearner { .. } => "add_learner",
        Action::PromoteLearner { .. } => "promote_learner",
        Action::RemoveMember { .. } => "remove_member",
        Action::MoveLeader { .. } => "move_leader",
        Action::RecycleMember { .. } => "recycle_member",
        Action::RestartPod { .. } => "restart_pod",
        Action::ForceNewCluster { .. } => "force_new_cluster",
        Action::EndRecovery { .. } => "end_recovery",
        Action::Compact { .. } => "compact",
        Action::Defragment { .. } => "defragment",
        Action::DisarmNospace => "disarm_nospace",
        Action::EnsureCronJob { .. } => "ensure_cronjob",
        Action::DeleteCronJob { .. } => "delete_cronjob",
        Action::CheckBackup => "check_backup",
        Action::BackupNow { .. } => "backup_now",
        Action::SetAuth { .. } => "set_auth",
        Action::ExpandClaim { .. } => "expand_claim",
        Action::UpgradeBackup { .. } => "upgrade_backup",
        Action::Wait { .. } => "wait",
        Action::Degraded { .. } => "degraded",
        Action::Idle => "idle",
    }
}

/// Records the reconcile duration when dropped.
pub struct ReconcileMeasurer {
    start: Instant,
    metric: Histogram,
}

impl Drop for ReconcileMeasurer {
    fn drop(&mut self) {
        self.metric.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_records_and_encodes() {
        let m = Metrics::default();
        drop(m.count_and_measure());
        m.action(&Action::Idle);
        m.reconcile_failure(&crate::fixtures::kvcluster("demo", 3), &Error::Unreachable("x".into()));
        let text = m.encode().expect("encode");
        assert!(text.contains("kvd_operator_reconcile_runs_total 1"), "{text}");
        assert!(text.contains("kvd_operator_reconcile_duration_seconds_count 1"), "{text}");
        assert!(text.contains(r#"kvd_operator_reconcile_actions_total{action="idle"} 1"#), "{text}");
        assert!(text.contains(r#"error="unreachable""#), "{text}");
    }

    #[test]
    fn cluster_gauges_follow_the_status_and_go_with_the_cluster() {
        let m = Metrics::default();
        let kc = crate::fixtures::kvcluster("demo", 3);
        let mut st =
            KvClusterStatus { phase: Some("Scaling".into()), replicas: 3, ready_replicas: 2, ..Default::default() };
        st.conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Available".into(),
            status: "True".into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            message: String::new(),
            observed_generation: None,
            reason: "QuorumHealthy".into(),
        });
        m.cluster(&kc, &st, &Action::AddLearner { ordinal: 3 });
        m.cluster(&kc, &st, &Action::PromoteLearner { id: 1, ordinal: 3 });
        let text = m.encode().expect("encode");
        let l = r#"namespace="ns",cluster="demo""#;
        for want in [
            format!("kvd_operator_cluster_phase{{{l},state=\"Scaling\"}} 1"),
            format!("kvd_operator_cluster_phase{{{l},state=\"Running\"}} 0"),
            format!("kvd_operator_cluster_members_ready{{{l}}} 2"),
            format!("kvd_operator_cluster_quorum{{{l}}} 1"),
            format!("kvd_operator_cluster_last_action{{{l},state=\"promote_learner\"}} 1"),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        assert!(!text.contains("add_learner"), "one last action per cluster: {text}");
        m.forget(&kc);
        assert!(!m.encode().expect("encode").contains("cluster=\"demo\""), "forgotten");
    }
}
