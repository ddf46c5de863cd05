//! kvd-operator: reconciles `KvCluster` resources (group `kvd.io`) into running
//! kvd clusters. Layout follows kube-rs/controller-rs: `controller` drives
//! `observe` → `planner::plan` (pure) → `act`, one safe step per reconcile.

use std::time::Duration;

pub mod act;
pub mod cache;
pub mod certs;
pub mod controller;
pub mod crd;
pub mod etcd;
pub mod leader;
pub mod maintenance;
pub mod metrics;
pub mod naming;
pub mod observe;
pub mod pki;
pub mod planner;
pub mod quantity;
pub mod recovery;
pub mod resources;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod volumes;

#[cfg(test)]
pub mod fixtures;

/// Everything that can fail while reconciling a `KvCluster`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kube error: {0}")]
    Kube(#[source] kube::Error),
    /// The finalizer helper failed (wraps the reconcile or cleanup error).
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An etcd API call to a member failed.
    #[error("etcd error on {endpoint}: {message}")]
    Etcd { endpoint: String, message: String },
    /// No member endpoint answered.
    #[error("no kvd member reachable: {0}")]
    Unreachable(String),
    /// An object could not be serialized for a patch.
    #[error("serialization error: {0}")]
    Serialization(#[source] serde_json::Error),
    /// The object lacks something the controller needs (namespace, name, ...).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The object caches have not had their first lists (or their watches ended).
    #[error("object caches not ready: {0}")]
    CacheNotReady(String),
    /// The leader election Lease was lost (taken over, or not renewed in time).
    #[error("leadership lost: the lease was not renewed in time or was taken over")]
    LeadershipLost,
}

impl Error {
    /// A short, bounded label for the failures metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(_) => "kube",
            // The error inside the finalizer wrapper that reconcile returns.
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    return e.metric_label();
                }
                _ => "finalizer",
            },
            Error::Etcd { .. } => "etcd",
            Error::Unreachable(_) => "unreachable",
            Error::Serialization(_) => "serialization",
            Error::Invalid(_) => "invalid",
            Error::CacheNotReady(_) => "cache_not_ready",
            Error::LeadershipLost => "leadership_lost",
        }
        .to_string()
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// Result of operator functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a member's pod may fail (crash-loop, unreachable) before the
/// planner treats the member as failed and replaces it, unless the spec's
/// `failedMemberTimeoutSeconds` says otherwise.
pub const FAILED_MEMBER_AFTER: Duration = Duration::from_secs(300);
