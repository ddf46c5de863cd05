//! `kvd-operator`: runs the KvCluster controller and an HTTP server with
//! `/metrics`, `/health`, `/ready` and diagnostics on `/`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kvd_operator::controller::{self, State};
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "kvd-operator", version, about = "Kubernetes operator for kvd clusters")]
struct Args {
    /// Port of the HTTP server (metrics, health, readiness).
    #[arg(long, env = "KVD_OPERATOR_PORT", default_value_t = 8080)]
    port: u16,
    /// Log filter when RUST_LOG is unset.
    #[arg(long, env = "KVD_OPERATOR_LOG", default_value = "info,kube=warn")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "KVD_OPERATOR_LOG_JSON")]
    log_json: bool,
    /// Timeout of each etcd API call to a member, in seconds.
    #[arg(long, env = "KVD_OPERATOR_ETCD_TIMEOUT", default_value_t = 3)]
    etcd_timeout: u64,
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics())
}

async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn diagnostics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    axum::Json(state.diagnostics().await)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _telemetry = match kvd_operator::telemetry::init(&args.log, args.log_json) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kvd-operator: telemetry: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "no Kubernetes client configuration");
            return std::process::ExitCode::FAILURE;
        }
    };
    let state = State::default();
    let app = Router::new()
        .route("/", get(diagnostics))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(health))
        .with_state(state.clone());
    let addr = SocketAddr::from(([0, 0, 0, 0], args.port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, %addr, "cannot bind");
            return std::process::ExitCode::FAILURE;
        }
    };
    info!(%addr, "serving metrics and health");
    let server = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    let ctrl = controller::run(state, client, Duration::from_secs(args.etcd_timeout));
    tokio::select! {
        r = ctrl => match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "controller stopped (is the CRD installed?)");
                std::process::ExitCode::FAILURE
            }
        },
        r = server.into_future() => match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "HTTP server failed");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
