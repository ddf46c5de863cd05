//! `kvd-operator run` (also with no subcommand): the KvCluster controller and
//! an HTTP server with `/metrics`, `/health`, `/healthz`, `/ready` and
//! diagnostics on `/`. `kvd-operator crd`: prints the CRD as YAML.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Parser, Subcommand};
use kvd_operator::controller::{self, State};
use kvd_operator::leader;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "kvd-operator", version, about = "Kubernetes operator for kvd clusters")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: `run` with these flags.
    #[command(flatten)]
    run: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(Args),
    /// Print the KvCluster CRD as YAML (what crds/kvcluster.yaml holds).
    Crd,
}

#[derive(clap::Args)]
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
    /// Run the controller only while holding a coordination Lease, so that
    /// several replicas can run and one reconciles.
    #[arg(long, env = "KVD_OPERATOR_LEADER_ELECT", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "KVD_OPERATOR_LEADER_ELECT_LEASE", default_value = "kvd-operator")]
    leader_elect_lease: String,
    /// Namespace of the Lease (default: the pod's, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the pod's name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only these namespaces (comma-separated), with a Role in each
    /// instead of a ClusterRole; empty: every namespace.
    #[arg(long, env = "KVD_OPERATOR_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
}

/// The namespace a pod runs in, from its service-account mount.
fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// A unique enough identity outside a pod: host name and process id.
fn host_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => match kvd_operator::crd::crd_yaml() {
            Ok(y) => {
                print!("{y}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvd-operator: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

async fn run(args: Args) -> std::process::ExitCode {
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
        .route("/healthz", get(health))
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
    let elector = args.leader_elect.then(|| leader::Elector {
        api: kube::Api::namespaced(client.clone(), &args.leader_elect_namespace.clone().unwrap_or_else(own_namespace)),
        name: args.leader_elect_lease.clone(),
        identity: args.identity.clone().unwrap_or_else(host_identity),
        timing: leader::Timing::default(),
    });
    // Leading: reconcile until the Lease is lost, then exit so that the pod
    // restarts as a candidate (a stale leader must not keep acting).
    let lead = async {
        if let Some(e) = &elector {
            e.acquire().await;
        }
        let scope = controller::Scope::of(&args.namespaces);
        let ctrl = controller::run(state, client, Duration::from_secs(args.etcd_timeout), scope);
        match &elector {
            Some(e) => tokio::select! {
                r = ctrl => {
                    e.release().await;
                    r
                },
                () = e.keep() => Err(kvd_operator::Error::LeadershipLost),
            },
            None => ctrl.await,
        }
    };
    tokio::select! {
        r = lead => match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e @ kvd_operator::Error::LeadershipLost) => {
                error!(error = %e, "stopping: another replica may lead now");
                std::process::ExitCode::FAILURE
            }
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
