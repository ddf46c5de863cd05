//! HTTP endpoints and metrics on the client port, scraped from a real kvd.

mod common;

use common::{Proc, etcdctl};

fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The etcd metric names this issue's layers export (REFERENCE §6).
const METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_is_learner",
    "etcd_server_id",
    "etcd_server_quota_backend_bytes",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_debugging_mvcc_keys_total",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(&dir.path().join("d"), &[]).await;
    let (ok, _, err) = etcdctl(&kvd.endpoint, &["put", "k", "v"], None);
    assert!(ok, "{err}");
    // grpc.health.v1 on the client port.
    let ch = tonic::transport::Channel::from_shared(kvd.endpoint.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let st = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(st.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let p = kvd.client_port;
    assert_eq!(get(p, "/health"), (200, r#"{"health":"true","reason":""}"#.to_string()));
    assert_eq!(get(p, "/livez").0, 200);
    assert_eq!(get(p, "/readyz").0, 200);
    let (code, v) = get(p, "/version");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["etcdserver"], "3.6.0");
    let (code, text) = get(p, "/metrics");
    assert_eq!(code, 200);
    for m in METRICS {
        assert!(text.lines().any(|l| l.starts_with(m)), "metric {m} missing from /metrics");
    }
    let value = |name| common::metric_value(&text, name);
    assert_eq!(value("etcd_server_has_leader"), 1.0);
    assert_eq!(value("etcd_server_is_leader"), 1.0);
    assert_eq!(value("etcd_debugging_mvcc_keys_total"), 1.0);
    assert!(value("etcd_server_proposals_applied_total") >= 2.0);
    assert!(value("etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(value("etcd_network_client_grpc_sent_bytes_total") > 0.0);
    // The standard process metrics, from /proc.
    let rss = value("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 4e9, "resident memory {rss}");
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_start_time_seconds") > 1.7e9);
    assert!(
        text.lines().any(|l| l.starts_with("grpc_server_handled_total")
            && l.contains("grpc_method=\"Put\"")
            && l.contains("grpc_code=\"OK\"")),
        "the Put is counted as handled"
    );
}
