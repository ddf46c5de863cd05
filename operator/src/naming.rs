//! Names of owned objects, labels, and the address scheme of members: every
//! URL the operator or a member uses is built here.

use std::collections::BTreeMap;

/// Client (gRPC and HTTP) port.
pub const CLIENT_PORT: i32 = 2379;
/// Peer (raft) port.
pub const PEER_PORT: i32 = 2380;
/// Plain-HTTP port of `/metrics`, `/readyz` and `/livez` (`--listen-metrics-urls`),
/// for probes and scrapers, which present no client certificate.
pub const METRICS_PORT: i32 = 2381;
/// Where a member's client TLS secret is mounted.
pub const CLIENT_TLS_DIR: &str = "/etc/kvd/tls/client";
/// Where a member's peer TLS secret is mounted.
pub const PEER_TLS_DIR: &str = "/etc/kvd/tls/peer";
/// Data directory inside the member container.
pub const DATA_DIR: &str = "/var/lib/kvd";
/// User and group of the kvd image (distroless `nonroot`, server/Dockerfile);
/// the member pods run as it and own their volume through `fsGroup`.
pub const MEMBER_UID: i64 = 65532;
/// Field manager for server-side apply.
pub const MANAGER: &str = "kvd-operator";
/// Finalizer on KvCluster objects.
pub const FINALIZER: &str = "kvd.io/finalizer";

/// Headless Service that gives members stable DNS names.
pub fn peer_service(cluster: &str) -> String {
    format!("{cluster}-peer")
}

/// ClusterIP Service for clients.
pub fn client_service(cluster: &str) -> String {
    format!("{cluster}-client")
}

/// Address of the client Service (what the maintenance CronJobs dial).
pub fn client_service_url(cluster: &str, ns: &str, tls: bool) -> String {
    format!("{}://{}.{ns}.svc:{CLIENT_PORT}", scheme(tls), client_service(cluster))
}

/// CronJob running `kvctl <task>` ("compact" or "defrag").
pub fn cronjob(cluster: &str, task: &str) -> String {
    format!("{cluster}-{task}")
}

/// ConfigMap holding `initial-cluster` and `initial-cluster-state`.
pub fn config_map(cluster: &str) -> String {
    format!("{cluster}-config")
}

/// PodDisruptionBudget.
pub fn pdb(cluster: &str) -> String {
    cluster.to_string()
}

/// StatefulSet.
pub fn statefulset(cluster: &str) -> String {
    cluster.to_string()
}

/// TLS mode Operator: the cluster's CA (`ca.crt`, `ca.key`).
pub fn ca_secret(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// TLS mode Operator: the members' serving certificate on the client port.
pub fn server_tls_secret(cluster: &str) -> String {
    format!("{cluster}-server-tls")
}

/// TLS mode Operator: the members' peer certificate.
pub fn peer_tls_secret(cluster: &str) -> String {
    format!("{cluster}-peer-tls")
}

/// TLS mode Operator: the client certificate for users and the Jobs.
pub fn client_tls_secret(cluster: &str) -> String {
    format!("{cluster}-client-tls")
}

/// TLS mode Operator: the operator's own client certificate.
pub fn operator_tls_secret(cluster: &str) -> String {
    format!("{cluster}-operator-tls")
}

/// DNS names a member's serving certificate must hold: every member
/// through the peer Service, the client Service in its short and long
/// forms, and localhost for a client inside the pod.
pub fn server_names(cluster: &str, ns: &str) -> Vec<String> {
    let (peer, client) = (peer_service(cluster), client_service(cluster));
    vec![
        format!("*.{peer}.{ns}.svc"),
        format!("*.{peer}.{ns}.svc.cluster.local"),
        client.clone(),
        format!("{client}.{ns}"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        "localhost".into(),
    ]
}

/// DNS names of a member's peer certificate.
pub fn peer_names(cluster: &str, ns: &str) -> Vec<String> {
    let peer = peer_service(cluster);
    vec![format!("*.{peer}.{ns}.svc"), format!("*.{peer}.{ns}.svc.cluster.local")]
}

/// With `spec.auth`: the root user's credentials (`username`, `password`).
pub fn root_secret(cluster: &str) -> String {
    format!("{cluster}-root")
}

/// Member (and pod) name of ordinal `i`.
pub fn member_name(cluster: &str, i: u32) -> String {
    format!("{cluster}-{i}")
}

/// The claim the StatefulSet creates for ordinal `i` (template `data`).
pub fn pvc_name(cluster: &str, i: u32) -> String {
    format!("data-{cluster}-{i}")
}

/// Stable DNS name of ordinal `i` (through the headless peer Service).
pub fn member_host(cluster: &str, ns: &str, i: u32) -> String {
    format!("{}.{}.{ns}.svc", member_name(cluster, i), peer_service(cluster))
}

/// `https` with TLS, else `http`.
pub fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// Peer URL of ordinal `i` (`tls`: the cluster has peer TLS).
pub fn peer_url(cluster: &str, ns: &str, i: u32, tls: bool) -> String {
    format!("{}://{}:{PEER_PORT}", scheme(tls), member_host(cluster, ns, i))
}

/// Client URL of ordinal `i`, as the operator dials it (its client upgrades
/// it to https when the cluster has client TLS).
pub fn client_url(cluster: &str, ns: &str, i: u32) -> String {
    format!("http://{}:{CLIENT_PORT}", member_host(cluster, ns, i))
}

/// The ordinal encoded in a member's peer URL, if it is one of ours.
pub fn ordinal_from_peer_url(cluster: &str, url: &str) -> Option<u32> {
    let host = url.split("://").nth(1)?;
    let pod = host.split('.').next()?;
    ordinal_from_name(cluster, pod)
}

/// The ordinal of a pod, member or claim suffix named `<cluster>-<i>`.
pub fn ordinal_from_name(cluster: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(cluster)?.strip_prefix('-')?;
    rest.parse().ok()
}

/// `--initial-cluster` value for the given ordinals.
pub fn initial_cluster(cluster: &str, ns: &str, ordinals: impl IntoIterator<Item = u32>, tls: bool) -> String {
    ordinals
        .into_iter()
        .map(|i| format!("{}={}", member_name(cluster, i), peer_url(cluster, ns, i, tls)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels that select a cluster's pods.
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kvd".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.to_string()),
    ])
}

/// Labels on every owned object.
pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string());
    l
}

/// Labels of the maintenance CronJobs, their Jobs and pods: not the members'
/// selector (`app.kubernetes.io/name` is `kvctl`), so the PDB and the
/// operator's member pod list never see them.
pub fn maintenance_labels(cluster: &str, task: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kvctl".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.to_string()),
        ("app.kubernetes.io/component".to_string(), task.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
    ])
}

/// The labels that select every maintenance CronJob, Job and pod of `cluster`.
pub fn maintenance_selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), cluster.to_string()),
        ("app.kubernetes.io/name".to_string(), "kvctl".to_string()),
    ])
}

/// `maintenance_selector_labels` as a label selector string.
pub fn maintenance_selector(cluster: &str) -> String {
    maintenance_selector_labels(cluster).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `selector_labels` as a label selector string.
pub fn selector_string(cluster: &str) -> String {
    selector_labels(cluster).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_ordinals() {
        let u = peer_url("demo", "ns1", 3, false);
        assert_eq!(u, "http://demo-3.demo-peer.ns1.svc:2380");
        assert_eq!(ordinal_from_peer_url("demo", &u), Some(3));
        assert_eq!(client_url("demo", "ns1", 0), "http://demo-0.demo-peer.ns1.svc:2379");
        assert_eq!(ordinal_from_peer_url("other", &u), None);
        assert_eq!(ordinal_from_name("demo", "demo-x"), None);
        assert_eq!(ordinal_from_name("demo", "demo-peer-1"), None);
    }

    #[test]
    fn initial_cluster_lists_members() {
        assert_eq!(
            initial_cluster("a", "n", 0..2, false),
            "a-0=http://a-0.a-peer.n.svc:2380,a-1=http://a-1.a-peer.n.svc:2380"
        );
        assert_eq!(selector_string("a"), "app.kubernetes.io/instance=a,app.kubernetes.io/name=kvd");
    }
}
