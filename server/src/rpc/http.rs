//! HTTP endpoints on the client (or metrics) port: `/health`, `/livez`,
//! `/readyz`, `/metrics` and `/version`, answered as etcd answers them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kvd_api::etcdserverpb::RangeRequest;

use crate::etcdserver::EtcdServer;
use crate::etcdserver::kv::Credentials;
use crate::etcdserver::maintenance::ETCD_API_VERSION;
use crate::metrics;

pub fn router(server: Arc<EtcdServer>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/version", get(version))
        .with_state(server)
}

/// etcd's health: a leader, no alarm, and a linearizable read within 2 s.
async fn check_health(s: &EtcdServer) -> Result<(), String> {
    let alarms = s.status().errors;
    if !alarms.is_empty() {
        return Err(format!("ALARM {}", alarms.join(", ")));
    }
    if !s.has_leader() {
        return Err("RAFT NO LEADER".into());
    }
    let probe = RangeRequest { key: b"health".to_vec(), ..Default::default() };
    match tokio::time::timeout(Duration::from_secs(2), s.range(probe, &Credentials::internal())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("QGET ERROR: {e}")),
        Err(_) => Err("QGET TIMEOUT".into()),
    }
}

async fn health(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    let (code, body) = match check_health(&s).await {
        Ok(()) => (StatusCode::OK, serde_json::json!({"health": "true", "reason": ""})),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": reason})),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Ready: the member has published its attributes (etcd serves no client
/// before that), a leader exists and a linearizable read succeeds (alarms do
/// not make a member unready).
async fn readyz(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    let probe = RangeRequest { key: b"health".to_vec(), ..Default::default() };
    let ok = s.is_published()
        && s.has_leader()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), s.range(probe, &Credentials::internal())).await,
            Ok(Ok(_))
        );
    if ok { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

async fn metrics_text(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    s.refresh_gauges();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics::get().encode())
}

async fn version() -> impl IntoResponse {
    let body = serde_json::json!({
        "etcdserver": ETCD_API_VERSION,
        "etcdcluster": ETCD_API_VERSION,
        "kvd": crate::VERSION,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}
