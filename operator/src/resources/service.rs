//! The headless peer Service (stable member DNS, published before readiness so
//! members can find each other while forming) and the client Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta;
use crate::crd::KvCluster;
use crate::naming::{self, CLIENT_PORT, METRICS_PORT, PEER_PORT};

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(port)),
        ..ServicePort::default()
    }
}

/// Label telling the two Services apart (the ServiceMonitor picks `client`).
pub const SERVICE_ROLE: &str = "kvd.io/service";

fn svc_meta(kc: &KvCluster, name: String, role: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut m = meta(kc, name);
    m.labels.get_or_insert_default().insert(SERVICE_ROLE.into(), role.into());
    m
}

/// Headless Service behind `<pod>.<cluster>-peer.<ns>.svc`.
pub fn peer_service(kc: &KvCluster) -> Service {
    let name = kc.name_any();
    Service {
        metadata: svc_meta(kc, naming::peer_service(&name), "peer"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(naming::selector_labels(&name)),
            ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// ClusterIP Service for clients (ready members only).
pub fn client_service(kc: &KvCluster) -> Service {
    let name = kc.name_any();
    Service {
        metadata: svc_meta(kc, naming::client_service(&name), "client"),
        spec: Some(ServiceSpec {
            selector: Some(naming::selector_labels(&name)),
            ports: Some(vec![port("client", CLIENT_PORT), port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn peer_service_is_headless_and_publishes_not_ready() {
        let spec = peer_service(&kvcluster("demo", 3)).spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.ports.expect("ports").len(), 2);
        let c = client_service(&kvcluster("demo", 3));
        assert_eq!(c.metadata.name.as_deref(), Some("demo-client"));
        assert_eq!(c.spec.expect("spec").cluster_ip, None);
    }
}
