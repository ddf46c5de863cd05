//! Optional Prometheus Operator PodMonitor or ServiceMonitor scraping each
//! member's `/metrics` on its plain-HTTP metrics port (also with TLS).

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::meta;
use crate::crd::{KvCluster, MonitorKind};
use crate::naming;

/// The monitor object and its API resource, if the spec asks for one.
pub fn monitor(kc: &KvCluster) -> Option<(ApiResource, DynamicObject)> {
    let name = kc.name_any();
    let (kind, endpoints_key, port, target_labels) = match kc.spec.metrics.monitor {
        MonitorKind::None => return None,
        MonitorKind::PodMonitor => ("PodMonitor", "podMetricsEndpoints", "metrics", "podTargetLabels"),
        MonitorKind::ServiceMonitor => ("ServiceMonitor", "endpoints", "metrics", "targetLabels"),
    };
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind));
    let mut obj = DynamicObject::new(&name, &ar);
    obj.metadata = meta(kc, name.clone());
    let mut labels = naming::selector_labels(&name);
    if kc.spec.metrics.monitor == MonitorKind::ServiceMonitor {
        // Pods carry no such label; Services do, and only the client one should be scraped.
        labels.insert(super::SERVICE_ROLE.into(), "client".into());
    }
    // Every member's series carry job="kvd" (the alerts select it) and the
    // cluster's name as `app_kubernetes_io_instance` (they count members per cluster).
    obj.data = json!({
        "spec": {
            "selector": { "matchLabels": labels },
            "jobLabel": "app.kubernetes.io/name",
            target_labels: ["app.kubernetes.io/instance"],
            endpoints_key: [ { "port": port, "path": "/metrics" } ],
        }
    });
    Some((ar, obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn monitor_only_when_asked() {
        let mut kc = kvcluster("demo", 3);
        assert!(monitor(&kc).is_none());
        kc.spec.metrics.monitor = MonitorKind::PodMonitor;
        let (ar, obj) = monitor(&kc).expect("monitor");
        assert_eq!(ar.kind, "PodMonitor");
        assert_eq!(obj.data["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
        assert_eq!(obj.data["spec"]["jobLabel"], "app.kubernetes.io/name");
        assert_eq!(obj.data["spec"]["podTargetLabels"][0], "app.kubernetes.io/instance");
        kc.spec.metrics.monitor = MonitorKind::ServiceMonitor;
        let (_, obj) = monitor(&kc).expect("monitor");
        assert_eq!(obj.data["spec"]["selector"]["matchLabels"]["kvd.io/service"], "client");
        assert_eq!(obj.data["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(obj.data["spec"]["targetLabels"][0], "app.kubernetes.io/instance");
    }
}
