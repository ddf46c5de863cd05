//! Operator metrics (prometheus-client): reconciles, failures by error label,
//! reconcile duration (recorded by a guard on drop) and actions taken by kind.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::Error;
use crate::crd::KvCluster;
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

/// All operator metrics, registered in one registry.
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub actions: Family<ActionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kvd_operator_reconcile");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register("runs", "reconciliations", reconciles.clone());
        registry.register("failures", "reconciliation errors", failures.clone());
        registry.register_with_unit("duration", "reconcile duration", Unit::Seconds, duration.clone());
        registry.register("actions", "planned steps taken, by kind", actions.clone());
        Metrics { registry: Arc::new(registry), reconciles, failures, duration, actions }
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

    /// Text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)?;
        Ok(s)
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
}
