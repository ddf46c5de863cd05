//! The Grafana dashboards and alert rules in `dashboards/` read only metrics
//! kvd exports: every PromQL expression is parsed (promql-parser), and each
//! metric name it reads must appear in the /metrics of a live three-member
//! cluster that has served puts, a watch, a defragmentation and an alarm.
//! The operator's names (`kvd_operator_*`) are checked in
//! operator/tests/dashboards.rs.

mod common;

#[path = "../../dashboards/check.rs"]
mod check;

use std::collections::BTreeSet;
use std::time::Duration;

use common::watch::WatchStream;
use common::{cluster, leader, put_retrying};
use kvd_api::etcdserverpb::alarm_request::AlarmAction;
use kvd_api::etcdserverpb::{
    AlarmRequest, AlarmType, DefragmentRequest, PutRequest, RangeRequest, StatusRequest, WatchCreateRequest,
};

const DASHBOARDS: &[&str] = &["kvd-cluster.json", "kvd-operator.json"];

/// The checker itself finds a name in `rate(foo_bar[5m])` and reports a
/// dashboard that reads a metric nobody exports.
#[test]
fn checker_finds_names_and_reports_missing_ones() {
    check::self_test();
}

/// Structure: every panel has a unique id, a title and a query; every rule is
/// an alert with severity and annotations; every expression parses.
#[test]
fn dashboards_and_rules_are_well_formed() {
    let queries = check::all_queries(DASHBOARDS);
    let used = check::names_used(&queries, |_| true);
    assert!(used.len() > 30, "too few metrics used: {:?}", used.keys());
    // The operator dashboard shows the operator only.
    let op = check::all_queries(&["kvd-operator.json"]);
    let op: Vec<_> = op.into_iter().filter(|q| q.source.starts_with("kvd-operator.json")).collect();
    let stray: Vec<_> = check::names_used(&op, |n| !n.starts_with(check::OPERATOR_PREFIX)).into_keys().collect();
    assert!(stray.is_empty(), "kvd-operator.json reads non-operator metrics: {stray:?}");
}

/// The body of GET /metrics: HTTP header lines are not samples.
async fn scrape(p: &common::Proc) -> String {
    let response = p.metrics().await;
    response.split_once("\r\n\r\n").map_or(response.as_str(), |(_, b)| b).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kvd_metric_in_dashboards_and_alerts_is_exported() {
    let queries = check::all_queries(DASHBOARDS);
    let used = check::names_used(&queries, |n| !n.starts_with(check::OPERATOR_PREFIX));

    let dir = tempfile::tempdir().unwrap();
    let mut members = cluster(dir.path(), 3, 171);
    let l = leader(&members).await;
    let p = &members[l];

    // A watch stays open during the scrape; puts reach it.
    let mut w = WatchStream::open(&p.endpoint).await;
    w.create(WatchCreateRequest { key: b"dash/".to_vec(), range_end: b"dash0".to_vec(), ..Default::default() }).await;
    let mut kv = p.kv().await;
    for i in 0..50 {
        put_retrying(
            &mut kv,
            PutRequest { key: format!("dash/{i}").into(), value: b"v".to_vec(), ..Default::default() },
        )
        .await;
    }
    kv.range(RangeRequest { key: b"dash/".to_vec(), range_end: b"dash0".to_vec(), ..Default::default() })
        .await
        .unwrap();
    // A failed RPC (a range past the current revision) so grpc_code!="OK" has a series.
    let _ = kv.range(RangeRequest { key: b"dash/".to_vec(), revision: 1 << 40, ..Default::default() }).await;
    assert!(w.next(Duration::from_secs(5)).await.is_some(), "the watch saw no event");
    let mut mt = p.maintenance().await;
    mt.defragment(DefragmentRequest {}).await.unwrap();
    // An alarm, so etcd_debugging_server_alarms has a sample.
    let id = mt.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
    let nospace =
        |action: AlarmAction| AlarmRequest { action: action as i32, member_id: id, alarm: AlarmType::Nospace as i32 };
    mt.alarm(nospace(AlarmAction::Activate)).await.unwrap();

    // Every member's scrape: peer metrics are labelled per peer.
    let mut exported = BTreeSet::new();
    let mut texts = Vec::new();
    for m in &members {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = scrape(m).await;
            if text.contains("etcd_debugging_server_alarms{") || std::time::Instant::now() > deadline {
                exported.extend(check::scraped_names(&text));
                texts.push(text);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    mt.alarm(nospace(AlarmAction::Deactivate)).await.unwrap();

    // Sends to a dead follower fail: etcd_network_peer_sent_failures_total.
    // The leader is asked again (on a busy machine it may have moved since
    // the start), and every live member is scraped (whoever leads sends).
    let l = leader(&members).await;
    let dead = (l + 1) % 3;
    members[dead].kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    'scrapes: loop {
        for (i, m) in members.iter().enumerate().filter(|(i, _)| *i != dead) {
            let text = scrape(m).await;
            if text.contains("etcd_network_peer_sent_failures_total{") {
                exported.extend(check::scraped_names(&text));
                eprintln!("member {i} counted failed sends to the dead follower");
                break 'scrapes;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no failed peer send counted after a follower died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Label values the queries test for equality must occur in the scrapes
    // (grpc_type="unary", grpc_method!="Defragment", alarm_type="NOSPACE" ...).
    let labels: BTreeSet<_> = texts.iter().flat_map(|t| check::scraped_labels(t)).collect();
    let matchers = check::matchers_used(&queries, |n| !n.starts_with(check::OPERATOR_PREFIX));
    let bad_labels = check::missing_label_values(&matchers, &labels);
    assert!(bad_labels.is_empty(), "label values no kvd sample carries:\n{}", bad_labels.join("\n"));

    let missing = check::missing(&used, &exported);
    assert!(
        missing.is_empty(),
        "metrics read by dashboards/ that kvd does not export:\n{}\n\nleader's scrape:\n{}",
        missing.join("\n"),
        texts[l]
    );
}
