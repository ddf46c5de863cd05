//! The scheduler: there is one node, so every Pending pod without a node is
//! bound to it through the `pods/binding` subresource (which also sets the
//! PodScheduled condition). Node selectors, affinity and taints are not
//! considered.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

/// Binds each unscheduled pod in `pods` to `node`.
pub async fn bind_pending(client: &Client, pods: &[Pod], node: &str) {
    for pod in pods {
        let spec = pod.spec.as_ref();
        let unbound = spec.and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty);
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
        if !unbound || !pending || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta { name: Some(pod.name_any()), namespace: Some(ns.clone()), ..Default::default() },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.into()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let r: Result<serde_json::Value, _> =
            api.create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding).await;
        match r {
            Ok(_) => info!(pod = %format!("{ns}/{}", pod.name_any()), node, "bound"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => warn!(error = %e, pod = pod.name_any(), "binding"),
        }
    }
}
