//! Every operator metric (`kvd_operator_*`) read by dashboards/kvd-operator.json
//! and by the operator alerts in dashboards/kvd-alerts.yaml is in the text the
//! operator's registry encodes once each metric has a sample.

#[path = "../../dashboards/check.rs"]
mod check;

use kvd_operator::metrics::{ErrorLabels, Metrics};
use kvd_operator::planner::Action;

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
    let text = m.encode().expect("encode");
    let missing = check::missing(&used, &check::scraped_names(&text));
    assert!(
        missing.is_empty(),
        "operator metrics the dashboards read but the operator does not export:\n{}\n\n{text}",
        missing.join("\n")
    );
}
