//! The gRPC API layer: one thin file per etcd service, request validation,
//! the error table, and the listener that serves gRPC and HTTP on one port.

mod auth;
mod cluster;
pub mod coalesce;
mod concurrency;
pub mod conn;
mod counted;
mod dispatch;
mod gateway;
pub mod grpc_frame;
mod http;
mod kv;
mod lease;
mod maintenance;
mod method_metrics;
mod peer;
pub mod status;
pub mod validate;
mod watch;

use std::sync::Arc;

pub use dispatch::{ClientService, Grpc};
use tonic::Request;

use crate::etcdserver::EtcdServer;
use crate::etcdserver::kv::Credentials;

/// The API's descriptors: the JSON gateway's schema, and which methods exist
/// (for the call metrics).
pub(crate) fn api_descriptors() -> Result<&'static prost_reflect::DescriptorPool, String> {
    use prost_reflect::DescriptorPool;
    static POOL: std::sync::OnceLock<Result<DescriptorPool, String>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(kvd_api::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| format!("API descriptors: {e}"))
}

/// gRPC receive limit over the request limit, as etcd's.
pub(crate) const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The auth token carried in the `token` metadata, for the preflight hook.
pub(crate) fn auth_info<T>(req: &Request<T>) -> Credentials {
    Credentials {
        // etcd reads the token from `token`, or `authorization` (its gateway's).
        token: ["token", "authorization"]
            .iter()
            .find_map(|k| req.metadata().get(*k))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        common_name: req
            .extensions()
            .get::<axum::extract::ConnectInfo<crate::tls::TlsAddr>>()
            .and_then(|c| c.0.common_name.clone()),
        internal: false,
    }
}

/// The client port: gRPC services (see [`dispatch`]), the HTTP endpoints,
/// and the JSON gateway, which runs each call through the same gRPC side.
pub fn client_service(server: Arc<EtcdServer>) -> ClientService {
    let grpc = Grpc::new(server.clone());
    let mut gw = axum::Router::new();
    for path in gateway::paths() {
        let g = grpc.clone();
        gw = gw.route(path, axum::routing::post(move |req: axum::extract::Request| gateway::handle(g.clone(), req)));
    }
    ClientService { grpc, http: http::router(server).merge(gw) }
}

pub use peer::{PeerPort, peer_port};

/// Only the HTTP endpoints (for `--listen-metrics-urls`).
pub fn metrics_router(server: Arc<EtcdServer>) -> axum::Router {
    http::router(server)
}

fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" | "RangeStream" => "server_stream",
        _ => "unary",
    }
}
