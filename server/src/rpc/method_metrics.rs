//! go-grpc-prometheus style metrics per gRPC method, resolved once per path.
//!
//! Looking the label sets up in the metric families on every call cost three
//! hashes of owned strings and five allocations per request; the handles for
//! a method are looked up once and shared (prometheus-client's metrics are
//! shared handles, so the registry sees every increment).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{self, GrpcCodeLabels, GrpcLabels};

/// Paths remembered at most (the API has fewer methods than this).
const MAX_PATHS: usize = 256;

/// One method's handles.
pub struct MethodMetrics {
    labels: GrpcLabels,
    started: Counter,
    handling: Histogram,
    /// `grpc_server_handled{grpc_code="OK"}`, by far the most common code.
    handled_ok: Counter,
}

impl MethodMetrics {
    fn new(path: &str) -> Self {
        let path = path.trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let labels = GrpcLabels {
            grpc_type: super::grpc_type(method),
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        };
        let m = metrics::get();
        Self {
            started: m.grpc_started.get_or_create(&labels).clone(),
            handling: m.grpc_handling.get_or_create(&labels).clone(),
            handled_ok: m.grpc_handled.get_or_create(&code_labels(&labels, "OK")).clone(),
            labels,
        }
    }

    /// The handles for `path` (e.g. `/etcdserverpb.KV/Put`), or None when
    /// it names no method of the API: grpc-go answers those Unimplemented
    /// before any interceptor, so etcd never counts them, and counting them
    /// would let a client grow the label sets without bound.
    pub fn for_path(path: &str) -> Option<Arc<MethodMetrics>> {
        static CACHE: OnceLock<RwLock<HashMap<String, Arc<MethodMetrics>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(m) = cache.read().get(path) {
            return Some(m.clone());
        }
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        if !known(service, method) {
            return None;
        }
        let m = Arc::new(MethodMetrics::new(path));
        let mut w = cache.write();
        if w.len() < MAX_PATHS {
            w.entry(path.to_string()).or_insert_with(|| m.clone());
        }
        Some(m)
    }

    pub fn started(&self) {
        self.started.inc();
    }

    /// A call ended after `seconds` with gRPC status `code`.
    pub fn handled(&self, code: &'static str, seconds: f64) {
        self.handling.observe(seconds);
        if code == "OK" {
            self.handled_ok.inc();
        } else {
            metrics::get().grpc_handled.get_or_create(&code_labels(&self.labels, code)).inc();
        }
    }
}

/// Whether `service` has `method`: the API's descriptors, and the health service.
fn known(service: &str, method: &str) -> bool {
    if service == "grpc.health.v1.Health" {
        return matches!(method, "Check" | "Watch");
    }
    let Ok(pool) = super::api_descriptors() else { return false };
    pool.get_service_by_name(service).is_some_and(|s| s.methods().any(|m| m.name() == method))
}

fn code_labels(l: &GrpcLabels, code: &'static str) -> GrpcCodeLabels {
    GrpcCodeLabels {
        grpc_type: l.grpc_type,
        grpc_service: l.grpc_service.clone(),
        grpc_method: l.grpc_method.clone(),
        grpc_code: code,
    }
}
