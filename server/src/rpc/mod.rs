//! The gRPC API layer: one thin file per etcd service, request validation,
//! the error table, and the listener that serves gRPC and HTTP on one port.

mod auth;
mod cluster;
pub mod coalesce;
mod concurrency;
mod gateway;
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
use std::time::Instant;

use axum::extract::Request as HttpRequest;
use axum::middleware::Next;
use kvd_api::etcdserverpb::kv_server::KvServer;
use kvd_api::etcdserverpb::maintenance_server::MaintenanceServer;
use tonic::Request;

use crate::etcdserver::EtcdServer;
use crate::etcdserver::kv::Credentials;
use crate::metrics;

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

/// Builds the client-facing router: gRPC services, health, and HTTP endpoints.
pub fn client_router(server: Arc<EtcdServer>) -> axum::Router {
    let limit = server.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let kv = KvServer::new(kv::KvService { server: server.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let maint = MaintenanceServer::new(maintenance::MaintenanceService { server: server.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let cluster =
        kvd_api::etcdserverpb::cluster_server::ClusterServer::new(cluster::ClusterService { server: server.clone() });
    let watch = kvd_api::etcdserverpb::watch_server::WatchServer::new(watch::WatchService { server: server.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let lease = kvd_api::etcdserverpb::lease_server::LeaseServer::new(lease::LeaseService { server: server.clone() })
        .max_decoding_message_size(limit);
    let lock = kvd_api::v3lockpb::lock_server::LockServer::new(concurrency::LockService { server: server.clone() });
    let election = kvd_api::v3electionpb::election_server::ElectionServer::new(concurrency::ElectionService {
        server: server.clone(),
    });
    let auth = kvd_api::etcdserverpb::auth_server::AuthServer::new(auth::AuthService { server: server.clone() });
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        reporter.set_serving::<KvServer<kv::KvService>>().await;
        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    });
    let grpc = tonic::service::Routes::new(kv)
        .add_service(maint)
        .add_service(cluster)
        .add_service(watch)
        .add_service(lease)
        .add_service(lock)
        .add_service(election)
        .add_service(auth)
        .add_service(health)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(server.clone(), grpc_layer));
    // The JSON gateway runs each call through the same gRPC router.
    let mut gw = axum::Router::new();
    for path in gateway::paths() {
        let g = grpc.clone();
        gw = gw.route(path, axum::routing::post(move |req: HttpRequest| gateway::handle(g.clone(), req)));
    }
    grpc.merge(http::router(server)).merge(gw)
}

pub use peer::peer_router;

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

fn code_name(code: i32) -> &'static str {
    use tonic::Code;
    match Code::from_i32(code) {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// tonic refuses an oversized message with OutOfRange; Go's gRPC (and so etcd)
/// answers ResourceExhausted "grpc: received message larger than max (N vs. M)".
/// Clients check the code, so answer as etcd does.
fn oversized_as_go_grpc(resp: &mut axum::response::Response) {
    let h = resp.headers();
    if h.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(msg) = h.get("grpc-message").and_then(|v| v.to_str().ok()) else { return };
    let msg = percent_encoding::percent_decode_str(msg).decode_utf8_lossy();
    let Some(rest) = msg.strip_prefix("Error, decoded message length too large: found ") else { return };
    let nums: Vec<&str> = rest.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).collect();
    if let [found, limit, ..] = nums[..] {
        let text = format!("grpc: received message larger than max ({found} vs. {limit})");
        let h = resp.headers_mut();
        h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            h.insert("grpc-message", v);
        }
    }
}

/// A body that adds the size of every data frame to a counter.
struct Counted<B> {
    inner: B,
    counter: &'static prometheus_client::metrics::counter::Counter,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn counted(body: axum::body::Body, counter: &'static prometheus_client::metrics::counter::Counter) -> axum::body::Body {
    axum::body::Body::new(Counted { inner: body, counter })
}

/// Around every gRPC call: `hasleader=true` metadata is refused while there is
/// no leader, as etcd does; go-grpc-prometheus style counters and latency; and
/// etcd's client traffic byte counters.
async fn grpc_layer(
    axum::extract::State(server): axum::extract::State<Arc<EtcdServer>>,
    req: HttpRequest,
    next: Next,
) -> axum::response::Response {
    let is_grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return next.run(req).await;
    }
    if req.headers().get("hasleader").is_some_and(|v| v.as_bytes() == b"true") && !server.has_leader() {
        return tonic::Status::unavailable("etcdserver: no leader").into_http();
    }
    // A learner serves Status, MemberList and (serializable) Range only; the
    // KV handler checks the serializable part.
    const LEARNER_RPCS: &[&str] = &[
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.KV/Range",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ];
    if !LEARNER_RPCS.contains(&req.uri().path()) && server.is_learner() {
        return tonic::Status::failed_precondition("etcdserver: rpc not supported for learner").into_http();
    }
    // A token issued through another member is known here once this member
    // has applied its Authenticate entry: catch up before judging it.
    let token = req.headers().get("token").or_else(|| req.headers().get("authorization"));
    if let Some(t) = token.and_then(|v| v.to_str().ok())
        && !server.token_known(t)
    {
        let _ = server.linearizable_read_notify().await;
    }
    let calls = method_metrics::MethodMetrics::for_path(req.uri().path());
    let m = metrics::get();
    calls.started();
    let start = Instant::now();
    let req = req.map(|b| counted(b, &m.client_grpc_received_bytes));
    let mut resp = next.run(req).await.map(|b| counted(b, &m.client_grpc_sent_bytes));
    oversized_as_go_grpc(&mut resp);
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .unwrap_or(0);
    calls.handled(code_name(code), start.elapsed().as_secs_f64());
    resp
}
