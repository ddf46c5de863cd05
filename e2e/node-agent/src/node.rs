//! The Node: registered at start (Ready, capacity, InternalIP on the pod
//! bridge), then kept alive the way kubelet does, by renewing its Lease in
//! `kube-node-lease` and posting status heartbeats, so the node lifecycle
//! controller of kube-controller-manager never marks it NotReady.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::Result;

/// The node's address (the bridge's), reported as hostIP and InternalIP.
pub const HOST_IP: &str = "10.244.0.1";

const LEASE_SECONDS: i32 = 40;

fn conditions(now: Timestamp) -> Vec<NodeCondition> {
    let c = |t: &str, s: &str, reason: &str| NodeCondition {
        type_: t.into(),
        status: s.into(),
        reason: Some(reason.into()),
        message: Some("kvd-node-agent".into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    vec![
        c("Ready", "True", "KubeletReady"),
        c("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        c("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        c("PIDPressure", "False", "KubeletHasSufficientPID"),
    ]
}

fn memory_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

fn status(now: Timestamp) -> NodeStatus {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(memory_bytes().to_string())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ]);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions(now)),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: HOST_IP.into() },
            NodeAddress { type_: "Hostname".into(), address: "e2e-node".into() },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            operating_system: "linux".into(),
            os_image: "kvd e2e".into(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
            container_runtime_version: "kvd-node-agent://0.1.0".into(),
            kubelet_version: "v1.36.3".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates (or takes over) the Node and its Lease.
pub async fn register(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now();
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), std::env::consts::ARCH.to_string()),
    ]);
    let node = Node {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..Default::default() },
        status: Some(status(now)),
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    heartbeat(client, name).await
}

/// Renews the Lease and posts the Node's status.
pub async fn heartbeat(client: &Client, name: &str) -> Result<()> {
    let now = Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status(now) }))).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let spec = LeaseSpec {
        holder_identity: Some(name.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    match leases.patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, spec: Some(spec) };
            leases.create(&PostParams::default(), &lease).await.map(|_| ()).map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}
