//! Every operator metric (`kvd_operator_*`) read by dashboards/kvd-operator.json
//! and by the operator alerts in dashboards/kvd-alerts.yaml is in the text the
//! operator's registry encodes once each metric has a sample.

#[path = "../../dashboards/check.rs"]
mod check;

use std::collections::BTreeSet;

use kvd_operator::crd::KvClusterStatus;
use kvd_operator::metrics::{ClusterLabels, ErrorLabels, Metrics, action_kind};
use kvd_operator::observe::Owned;
use kvd_operator::planner::{Action, RemoveReason, Why};
use kvd_operator::recovery::RecoveryEnd;
use kvd_operator::resources::Task;

#[test]
fn checker_finds_names_and_reports_missing_ones() {
    check::self_test();
}

#[test]
fn every_operator_metric_in_dashboards_and_alerts_is_exported() {
    let queries = check::all_queries(&["kvd-operator.json"]);
    let used = check::names_used(&queries, |n| n.starts_with(check::OPERATOR_PREFIX));
    for want in ["runs_total", "failures_total", "duration_seconds_bucket", "actions_total"] {
        let name = format!("{}reconcile_{want}", check::OPERATOR_PREFIX);
        assert!(used.contains_key(&name), "no dashboard or alert reads {name}");
    }

    let m = Metrics::default();
    drop(m.count_and_measure());
    m.action(&Action::Idle);
    m.failures.get_or_create(&ErrorLabels { instance: "demo".into(), error: "unreachable".into() }).inc();
    let cluster = ClusterLabels { namespace: "ns".into(), cluster: "demo".into() };
    for g in [&m.backup_last_success, &m.backup_period, &m.backup_configured] {
        g.get_or_create(&cluster).set(1.0);
    }
    m.backup_failures.get_or_create(&cluster).inc();
    let spec = serde_json::from_value(serde_json::json!({ "replicas": 3 })).expect("spec");
    let mut kc = kvd_operator::crd::KvCluster::new("demo", spec);
    kc.metadata.namespace = Some("ns".into());
    let status: KvClusterStatus = serde_json::from_value(serde_json::json!({
        "phase": "Running", "replicas": 3, "readyReplicas": 3,
        "conditions": [{"type": "Available", "status": "True", "reason": "Quorum", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    }))
    .expect("status");
    m.cluster(&kc, &status, &Action::Idle);
    let text = m.encode().expect("encode");
    let missing = check::missing(&used, &check::scraped_names(&text));
    assert!(
        missing.is_empty(),
        "operator metrics the dashboards read but the operator does not export:\n{}\n\n{text}",
        missing.join("\n")
    );

    // Equality matchers on operator metrics name label values it emits.
    let matchers = check::matchers_used(&queries, |n| n.starts_with(check::OPERATOR_PREFIX));
    let bad = check::missing_label_values(&matchers, &check::scraped_labels(&text));
    assert!(bad.is_empty(), "label values the operator never emits:\n{}", bad.join("\n"));
}

/// Every `action` the dashboards and alerts filter on is a kind the operator counts.
#[test]
fn action_filters_name_real_action_kinds() {
    let why = Why::Nospace;
    let kinds: BTreeSet<&str> = [
        Action::Bootstrap { replicas: 3 },
        Action::EnsureObjects { missing: vec![Owned::Pdb] },
        Action::UpdateStatefulSet,
        Action::ResizeStatefulSet { replicas: 3 },
        Action::AddLearner { ordinal: 3 },
        Action::PromoteLearner { id: 1, ordinal: 3 },
        Action::RemoveMember { id: 1, ordinal: None, reason: RemoveReason::Failed },
        Action::MoveLeader { from: 1, to: 2, why },
        Action::RecycleMember { ordinal: 1 },
        Action::RestartPod { ordinal: 1 },
        Action::ForceNewCluster { ordinal: 1, token: "t".into(), since: jiff::Timestamp::UNIX_EPOCH },
        Action::EndRecovery { ordinal: 1, outcome: RecoveryEnd::Recovered },
        Action::Compact { revision: 1, why },
        Action::Defragment { id: 1, ordinal: None, why },
        Action::DisarmNospace,
        Action::EnsureCronJob { task: Task::Compact },
        Action::DeleteCronJob { task: Task::Defrag },
        Action::CheckBackup,
        Action::BackupNow { token: "t".into() },
        Action::Wait { reason: "r", message: String::new() },
        Action::Degraded { reason: "r", message: String::new() },
        Action::Idle,
    ]
    .iter()
    .map(action_kind)
    .collect();
    let queries = check::all_queries(&["kvd-operator.json"]);
    let used = check::matchers_used(&queries, |n| n.starts_with(check::OPERATOR_PREFIX));
    let mut seen = 0;
    for (m, at) in used.iter().filter(|(m, _)| m.label == "action") {
        for v in m.value.split('|') {
            assert!(kinds.contains(v), "{at}: action {v:?} is not one of {kinds:?}");
            seen += 1;
        }
    }
    assert!(seen > 0, "no query filters on action");
}
